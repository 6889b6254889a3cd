"""Shared test helpers: tiny datasets written on the spot (never a download) and ways to run a
script in-process (fast) or as a real subprocess (exit codes, stderr, signals)."""
import gzip
import inspect
import os
import struct
import runpy
import subprocess
import sys
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402


torch.set_num_threads(1)   # tiny test networks: threads cost more than they give
SCRIPTS = ("gan", "cgan", "acgan", "wgan", "wgan_gp", "dcgan", "cyclegan")


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Folder caches go to a temporary folder, in-process and in subprocesses: the tests
    never write into the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


def write_idx_dataset(folder, n_train=128, n_test=64, size=28, seed=0, compress=False):
    """A tiny dataset in MNIST's raw idx format (what torchvision's MNIST reader parses): grey
    images with a bright bar whose position is the class. Returns (train_images, train_labels)."""
    rng = np.random.default_rng(seed)
    raw = Path(folder) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    result = None
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 30, size=(n, size, size), dtype=np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 + 2 * k:4 + 2 * k, 4:size - 4] = 250
        files = {f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, n, size, size) + images.tobytes(),
                 f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, n) + labels.tobytes()}
        for name, payload in files.items():
            if compress:
                (raw / (name + ".gz")).write_bytes(gzip.compress(payload))
            else:
                (raw / name).write_bytes(payload)
        if prefix == "train":
            result = (images, labels)
    return result


def write_image_folder(root, classes=("cats", "dogs"), per_class=8, size=40, mode="RGB", seed=0):
    """Class sub-folders of small PNGs (an image-folder dataset)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            channels = 3 if mode == "RGB" else 1
            pixels = rng.integers(0, 255, size=(size, size, channels), dtype=np.uint8)
            pixels[:, : size // 2] = 60 * k
            Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(folder / f"{i}.png")
    return Path(root)


@pytest.fixture
def mnist_root(tmp_path):
    """A data root holding a tiny MNIST in torchvision's layout (uncompressed raw files)."""
    root = tmp_path / "data"
    write_idx_dataset(root / "MNIST")
    return root


def run_inprocess(main, argv, capsys=None):
    """Run a script's main(argv) through common.run_main; returns the exit code (0 if none)."""
    try:
        common.run_main(main, [str(a) for a in argv])
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else 1
    return 0


def run_as_command(script, *args, monkeypatch):
    """`python script args...` in this process (runpy, as __main__): the exit code; stderr goes to capsys."""
    monkeypatch.setattr(sys, "argv", [str(ROOT / script), *map(str, args)])
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else 1
    return 0


def run_subprocess(script, *args, cwd=None, timeout=240):
    """Run `python script args...` as a user would; returns the CompletedProcess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def to_uint8(images):
    """What --generate stores: images in [-1, 1] as uint8 (a numpy array)."""
    return images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def state_tensors(checkpoint):
    """Every network tensor of a checkpoint (the moving average included), named "<network>.<parameter>"."""
    nets = [net for net in ("generator", "discriminator", "critic", "ema", "sampler") if net in checkpoint]
    return {f"{net}.{k}": v for net in nets for k, v in checkpoint[net].items() if torch.is_tensor(v)}


def losses(out):
    """losses.csv as a list of {column: float} rows."""
    header, *rows = (Path(out) / "losses.csv").read_text().splitlines()
    return [dict(zip(header.split(","), map(float, row.split(",")))) for row in rows]


@contextmanager
def optimizer_steps():
    """Record every optimizer step taken inside the block, in order: "D" for the critic's or
    discriminator's optimizer (its first weight reads 28*28 pixels), "G" for the generator's (z of 100)."""
    calls = []

    def record(optimizer, args, kwargs):
        first = optimizer.param_groups[0]["params"][0]
        calls.append({784: "D", 100: "G"}[first.shape[-1]])

    handle = register_optimizer_step_post_hook(record)
    try:
        yield calls
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------
# The direction of learning: one call of a script's train_step on a fixed batch
# ---------------------------------------------------------------------------------------------
def step_settings(train_step, args):
    """train_step's named settings (latent_dim, label_smoothing, ...) from the flags of the same names."""
    return {name: getattr(args, name) for name, parameter in inspect.signature(train_step).parameters.items()
            if parameter.kind == parameter.KEYWORD_ONLY}


def call_train_step(module, nets, real_images, real_labels, args, step=0):
    """module.train_step with the arguments its main() gives it, matched by name."""
    generator, discriminator, opt_g, opt_d = nets
    given = {"real_images": real_images, "real_labels": real_labels, "generator": generator,
             "discriminator": discriminator, "critic": discriminator, "opt_g": opt_g, "opt_d": opt_d,
             "update_g": (step + 1) % getattr(args, "n_critic", 1) == 0}
    positional = [name for name, parameter in inspect.signature(module.train_step).parameters.items()
                  if parameter.kind != parameter.KEYWORD_ONLY]
    return module.train_step(**{name: given[name] for name in positional}, **step_settings(module.train_step, args))


def mean_score(discriminator, images, labels):
    """D's mean realness (logit or critic score) of images, as in training: train mode (BatchNorm on
    this batch), the same dropout masks for every call, on a copy so nothing in D changes."""
    torch.manual_seed(1234)
    copy = deepcopy(discriminator).train()
    with torch.no_grad():
        scores = copy(images, labels) if "labels" in inspect.signature(copy.forward).parameters else copy(images)
    return (scores[0] if isinstance(scores, tuple) else scores).mean().item()


def learning_directions(module, flags=(), step=0, seed=0, amp=False):
    """Build the script's networks (its build()) and take one train_step on a batch of fake data (with
    amp, under bfloat16 autocast, as --amp runs it). Returns D's margin mean D(real) - mean D(fake) on
    fixed fakes of the old G, before and after the step, and the new D's mean score of G's images
    before and after G's update."""
    args = module.parse_args(["--dataset", "fake", *map(str, flags)])[0]
    data = common.load_data(args, torch.device("cpu"))
    real_images, real_labels = next(data.batches(64, epoch=0, seed=seed))
    common.seed_everything(seed)
    nets = module.build(args, data.shape, data.n_classes, torch.device("cpu"))
    generator, discriminator = nets[0], nets[1]
    z, z_labels = torch.randn(256, args.latent_dim), torch.arange(256) % data.n_classes
    old_generator = deepcopy(generator)
    with torch.no_grad():
        old_fakes = (old_generator(z, z_labels) if args.conditional else old_generator(z))
    margin_before = mean_score(discriminator, real_images, real_labels) - mean_score(discriminator, old_fakes, z_labels)
    with torch.autocast("cpu", torch.bfloat16, enabled=amp, cache_enabled=False):
        call_train_step(module, nets, real_images, real_labels, args, step)
    with torch.no_grad():
        new_fakes = generator(z, z_labels) if args.conditional else generator(z)
    margin_after = mean_score(discriminator, real_images, real_labels) - mean_score(discriminator, old_fakes, z_labels)
    return {"d_margin": (margin_before, margin_after),
            "g_score": (mean_score(discriminator, old_fakes, z_labels), mean_score(discriminator, new_fakes, z_labels))}
