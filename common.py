"""Plumbing shared by the GAN scripts: flags, data, checkpoints, --generate, and class Run (the run's
folder and bookkeeping around the training step). No model and no training step lives here."""
import argparse
import math
import os
import random
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.datasets.utils import check_integrity
from torchvision.transforms.functional import center_crop, pil_to_tensor, resize
from torchvision.utils import save_image


class UserError(Exception):
    """A mistake in the command line or in the files it names: one line on stderr, exit code 2."""


def run_main(main, argv=None):
    try:
        main(argv)
    except UserError as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        sys.exit(2)


# --- Flags -------------------------------------------------------------------------------------
def _number(kind, ok, rule):
    def parse(text):   # an argparse type: a bad value gets argparse's own one-line error
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):   # NaN fails every comparison, so it is refused too
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}")
        return value
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
positive_float = _number(float, lambda v: 0 < v < math.inf, "a positive number")
non_negative_int = _number(int, lambda v: v >= 0, "a whole number >= 0")
non_negative_float = _number(float, lambda v: 0 <= v < math.inf, "a number >= 0")
probability = _number(float, lambda v: 0 <= v <= 1, "a probability in [0, 1]")
fraction = _number(float, lambda v: 0 <= v < 1, "in [0, 1)")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):   # "(default: ...)" only where there is a default
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser(script, description, *, img_size, batch_size, epochs, lr, latent_dim=100, ema=0.999,
                 lr_decay="linear", smoothing=True, conditional=False,
                 datasets=("mnist", "fashion-mnist", "cifar10", "folder", "fake")):
    """The flags every script shares, each with its default in --help; the script adds its own."""
    parser = argparse.ArgumentParser(prog=f"{script}.py", description=description, allow_abbrev=False,
                                     formatter_class=_HelpFormatter)
    parser.set_defaults(script=script, conditional=conditional)
    add = parser.add_argument
    add("--dataset", default=datasets[0], choices=datasets,
        help="training data ('folder': the images in --data-root; 'fake': made up, no files)")
    add("--data-root", default="data", help="where datasets live (torchvision's layout)")
    add("--img-size", type=positive_int, default=img_size, help="images are resized to this square size")
    add("--batch-size", type=positive_int, default=batch_size, help="images per step")
    add("--epochs", type=positive_int, default=epochs, help="passes over the data (the lr schedule ends with them)")
    add("--lr", type=positive_float, default=lr, help="learning rate of both optimisers")
    add("--lr-decay", choices=("linear", "half", "none"), default=lr_decay,
        help="linear: to 0 at the last step; half: constant, then linear to 0 over the second half; none: constant")
    add("--ema", type=fraction, default=ema, metavar="DECAY",
        help="grids, snapshots and --generate use a moving average of G's weights (0: G itself)")
    add("--latent-dim", type=positive_int, default=latent_dim, help="size of the noise vector z")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (auto picks cuda when present)")
    add("--seed", type=int, default=0, help="same seed and device give the same numbers")
    add("--out", default=f"runs/{script}", help="run folder; a taken one gives the next free name (-2, -3, ...)")
    add("--log-every", type=positive_int, default=100, help="progress line and losses.csv row every N steps")
    add("--sample-every", type=positive_int, help="also save a grid every N steps")
    add("--snapshot-every", type=positive_int, default=5, metavar="K",
        help="keep the sampling G of epoch 1, every K-th epoch and the last (generator_epoch_*.pt)")
    add("--checkpoint-every", type=positive_float, default=5.0, metavar="MIN",
        help="write checkpoint.pt every MIN minutes of training, besides each epoch's end")
    add("--max-steps", type=positive_int, help="stop once the run has made N steps, counted from its start")
    add("--resume", nargs="?", const="latest", metavar="CKPT", help="continue CKPT, or without one the newest run")
    add("--generate", type=positive_int, metavar="N",
        help="no training: write N samples from the newest run, or from --resume CKPT or a snapshot")
    if conditional:
        add("--label", type=int, metavar="K", help="with --generate: only class K (default: every class in turn)")
    if smoothing:
        add("--label-smoothing", type=fraction, default=0.0, metavar="S",
            help="one-sided: real targets drawn uniformly from [1-S, 1] each step; fake targets stay 0")
    add("--label-exchange", type=probability, default=0.0, metavar="P", help="chance that a D step swaps real and fake")
    return parser


def parse_args(parser, argv=None):
    """Parse the flags. With --resume or --generate, load that checkpoint and take its run's flags,
    overridden only by the flags given here. Returns (args, checkpoint or None)."""
    args = parser.parse_args(argv)
    if getattr(args, "label", None) is not None and not args.generate:
        raise UserError("--label K chooses the class of generated samples: use it with --generate N")
    if args.resume is None and args.generate is None:
        return args, None
    path = find_checkpoint(args.out, args.script) if args.resume in (None, "latest") else Path(args.resume)
    path = path / "checkpoint.pt" if path.is_dir() else path
    checkpoint = load_checkpoint(path, args.script)
    saved = checkpoint["args"]   # argparse fills in a default only where the namespace has no value
    keep = {k: v for k, v in saved.items() if k not in ("resume", "generate", "out", "max_steps", "label")}
    args = parser.parse_args(argv, namespace=argparse.Namespace(**keep))
    may_change = {"epochs", "max_steps", "device", "log_every", "sample_every", "data_root", "snapshot_every",
                  "checkpoint_every", "resume", "generate", "out", "label"} | ({"seed"} if args.generate else set())
    for name, value in vars(args).items():   # a changed --lr would otherwise be silently ignored
        if name in saved and name not in may_change and saved[name] != value:
            raise UserError(f"--{name.replace('_', '-')} cannot change when resuming (the run used {saved[name]!r})")
    if "step" not in checkpoint and not args.generate:
        raise UserError(f"{path} is a generator snapshot: resume from the run's checkpoint.pt, or use --generate N")
    if getattr(args, "label", None) is not None and not 0 <= args.label < checkpoint["n_classes"]:
        raise UserError(f"--label {args.label}: the run's classes are 0 to {checkpoint['n_classes'] - 1} "
                        f"({', '.join(checkpoint['class_names'])})")
    args.resume, args.out = str(path), str(path.parent)
    print(f"{'generating from' if args.generate else 'resuming'} {path}: {saved['dataset']}, "
          f"epoch {checkpoint['epoch']} of {saved['epochs']}", flush=True)
    return args, checkpoint


# --- Device, seeds, files ----------------------------------------------------------------------
def pick_device(name):
    """auto picks cuda when present, else cpu; a device this machine lacks is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    present = {"cpu": lambda i: True, "mps": lambda i: torch.backends.mps.is_available(),
               "cuda": lambda i: torch.cuda.is_available() and (i or 0) < torch.cuda.device_count()}
    match = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", name)
    if not match or not present[match[1]](int(match[2] or 0)):
        raise UserError(f"--device {name} is not available on this machine (use auto, cpu, cuda, cuda:N or mps)")
    return torch.device(name)


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def check_writable(folder):
    """Refuse a folder we cannot write in, before any work is done that would then be lost."""
    try:
        tempfile.TemporaryFile(dir=folder).close()
        for name in ("checkpoint.pt", "losses.csv"):
            if (Path(folder) / name).exists() and not os.access(Path(folder) / name, os.W_OK):
                raise PermissionError(0, f"{name} is read-only")
    except OSError as error:
        raise UserError(f"cannot write in {folder} ({error.strerror or error}); nothing was changed")


def free_path(folder, stem, suffix=""):
    """folder/stem, else stem-2, stem-3, ...: a name nothing uses yet (an empty folder counts as free)."""
    path, number = Path(folder) / f"{stem}{suffix}", 1
    while path.exists() and (not path.is_dir() or any(path.iterdir())):
        number += 1
        path = Path(folder) / f"{stem}-{number}{suffix}"
    return path


def find_checkpoint(out, script):
    """The checkpoint of the newest run among `out`, `out-2`, ... (the runs of this script)."""
    base = Path(out)
    runs = [p / "checkpoint.pt" for p in base.parent.glob(base.name + "*")
            if re.fullmatch(re.escape(base.name) + r"(-\d+)?", p.name) and (p / "checkpoint.pt").is_file()]
    if not runs:
        raise UserError(f"no {script} run with a checkpoint.pt in {base.parent}/ (train first, or give --resume CKPT)")
    return max(runs, key=lambda p: p.stat().st_mtime)


def save_atomically(obj, path):
    torch.save(obj, f"{path}.tmp")   # a crash or a kill mid-write leaves the previous file intact
    os.replace(f"{path}.tmp", path)


def load_checkpoint(path, script):
    """A checkpoint.pt or generator snapshot written by `script`, loaded safely (weights only)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist")
    except Exception as error:
        raise UserError(f"checkpoint {path} cannot be read ({type(error).__name__}); is it a complete .pt file?")
    owner = checkpoint.get("script") if isinstance(checkpoint, dict) else None
    if owner != script:
        raise UserError(f"checkpoint {path} was written by {owner or 'something else'}, not {script}.py")
    return checkpoint


def lr_factor(schedule, total_steps):
    """LambdaLR's factor after `step` steps of `total_steps`, for --lr-decay `schedule`."""
    start = {"linear": 0, "half": total_steps // 2, "none": total_steps}[schedule]   # where the fall begins
    return lambda step: 1.0 if step < start else max(0.0, 1 - (step - start) / max(1, total_steps - start))


def ema_with_warmup(decay):
    """AveragedModel's multi_avg_fn: an exponential moving average whose decay grows from 0.1 to `decay`
    as (1 + n) / (10 + n) after n updates, so the average soon forgets G's random start."""
    @torch.no_grad()
    def update(averaged, current, n_averaged):
        weight = 1 - torch.clamp((1 + n_averaged) / (10 + n_averaged), max=decay)   # on the device: no sync
        for mean, value in zip(averaged, current):
            mean.lerp_(value, weight.to(mean.dtype)) if mean.is_floating_point() else mean.copy_(value)
    return update


# --- Data: decoded once into uint8, batches cut on the training device -------------------------
class ImageData:
    """All images as one uint8 tensor (N, C, H, W) and int64 labels (N,), kept on the device."""

    def __init__(self, images, labels, class_names, device):
        self.images, self.labels, self.class_names = images.to(device), labels.to(device), list(class_names)
        self.n_classes, self.shape = len(class_names), tuple(images.shape[1:])   # shape: (C, H, W)

    def __str__(self):
        return f"{len(self.images):,} images, {self.n_classes} classes, {self.shape[0]} channel(s), {self.shape[1]} px"

    def steps_per_epoch(self, batch_size):
        return len(self.images) // batch_size   # the short last batch is dropped, every epoch alike

    def batches(self, batch_size, epoch, seed, skip=0):
        """Yield (images in [-1, 1], labels) for one epoch. The order depends only on (seed, epoch), so a
        resumed run sees the batches an uninterrupted one would; `skip` passes over those already seen."""
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        order = order.to(self.images.device)
        for i in range(skip, self.steps_per_epoch(batch_size)):
            index = order[i * batch_size:(i + 1) * batch_size]
            yield self.images[index].float().div_(127.5).sub_(1), self.labels[index]


def load_data(args, device, train=True):
    """The dataset named by the flags, resized once to --img-size, as an ImageData on `device`."""
    if args.dataset == "fake":   # grey noise with a bright square whose place is the class
        labels, classes = torch.arange(512) % 10, [str(k) for k in range(10)]
        images = torch.randint(0, 40, (512, 1, 32, 32), generator=torch.Generator().manual_seed(args.seed),
                               dtype=torch.uint8)
        for k in range(10):
            images[labels == k, :, k // 4 * 8:k // 4 * 8 + 8, k % 4 * 8:k % 4 * 8 + 8] = 255
    elif args.dataset == "folder":
        images, labels, classes = folder_images(Path(args.data_root), args.img_size)
    else:
        images, labels, classes = _torchvision_images(args.dataset, Path(args.data_root), train)
    if images.shape[-2:] != (args.img_size, args.img_size):
        images = F.interpolate(images.float(), size=(args.img_size,) * 2, mode="bilinear", antialias=True)
        images = images.round().clamp(0, 255).to(torch.uint8)
    if len(images) < args.batch_size:
        raise UserError(f"the dataset has {len(images)} images, fewer than --batch-size {args.batch_size}")
    return ImageData(images, labels, classes, device)


def _torchvision_images(name, root, train):
    cls = {"mnist": torchvision.datasets.MNIST, "fashion-mnist": torchvision.datasets.FashionMNIST,
           "cifar10": torchvision.datasets.CIFAR10}[name]
    raw = root / cls.__name__ / "raw"
    for file, md5 in getattr(cls, "resources", []):   # torchvision would take a damaged .gz for a missing one
        if (raw / file).is_file() and not (raw / file[:-3]).is_file() and not check_integrity(raw / file, md5):
            raise UserError(f"{raw / file} is damaged or incomplete (not the {name} file); replace it")
    made = [p for p in (root, root / cls.__name__, raw) if not p.exists()]
    try:
        dataset = cls(str(root), train=train, download=True)
    except Exception as error:  # no network, a refused connection, a damaged file: all end in one line
        for folder in reversed(made):   # torchvision made these before it failed: leave nothing behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        where = (f"cifar-10-python.tar.gz in {root}/" if name == "cifar10" else
                 f"the four *-ubyte.gz files (train/t10k images and labels) in {raw}/")
        if any(raw.glob("*-ubyte")):
            where = f"undamaged files in {raw}/ (one there cannot be read)"
        raise UserError(f"could not load {name} ({type(error).__name__}); without a network, put {where}")
    images = torch.as_tensor(np.asarray(dataset.data))
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)  # (N, C, H, W)
    return images.contiguous(), torch.as_tensor(np.asarray(dataset.targets)).long(), dataset.classes


def folder_images(root, size):
    """A folder whose sub-folders are the classes, or whose images are one class: uint8 (N, C, size, size)
    (grey only if every image is), labels (N,), class names. One file is open at a time."""
    def files(folder):
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"))

    def read(path, mode=None):
        with Image.open(path) as picture:
            return picture.mode if mode is None else pil_to_tensor(picture.convert(mode))
    if not root.is_dir():
        raise UserError(f"--data-root {root} is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and files(p))
    if classes and files(root):
        raise UserError(f"{root} holds class sub-folders and, beside them, {len(files(root))} image(s) that would be "
                        "ignored; move those into a sub-folder (a class) of their own")
    paths = [(p, k) for k, c in enumerate(classes) for p in files(root / c)] or [(p, 0) for p in files(root)]
    if not paths:
        raise UserError(f"{root} holds no images (expected class sub-folders of .png/.jpg files)")
    try:
        mode = "L" if all(read(p) in ("L", "1", "I;16", "I") for p, _ in paths) else "RGB"   # headers only
        images = torch.stack([center_crop(resize(read(p, mode), size, antialias=True), size) for p, _ in paths])
    except OSError as error:
        raise UserError(f"an image under {root} cannot be read ({error})")
    return images, torch.tensor([k for _, k in paths]), classes or [root.name]


# --- Samples -----------------------------------------------------------------------------------
def save_grid(images, path, nrow=8):
    save_image(images.detach().float().cpu(), path, nrow=nrow, normalize=True, value_range=(-1, 1), padding=2)


@torch.no_grad()
def sample(generator, n, args, n_classes, label=None):
    """n images in [-1, 1] from G, and for a conditional G their labels: all `label`, else 0, 1, ..., K-1, 0, ..."""
    device = next(generator.parameters()).device
    z = torch.randn(n, args.latent_dim, device=device)
    if not args.conditional:
        return torch.cat([generator(chunk) for chunk in z.split(1000)]), None
    labels = torch.arange(n, device=device) % n_classes if label is None else torch.full((n,), label, device=device)
    return torch.cat([generator(zs, ys) for zs, ys in zip(z.split(1000), labels.split(1000))]), labels


def generate(generator, args, checkpoint):
    """--generate N: N samples to a new generated*.npz (images uint8 (N, C, H, W); labels (N,) for a
    conditional G) with a grid beside it. Earlier samples are never replaced."""
    check_writable(args.out)
    seed_everything(args.seed)   # the same --seed gives the same samples
    images, labels = sample(generator, args.generate, args, checkpoint["n_classes"], getattr(args, "label", None))
    path = free_path(args.out, "generated", ".npz")
    arrays = {"images": images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy()
    np.savez_compressed(path, **arrays)
    k = checkpoint["n_classes"]   # a conditional grid has a column per class (or two, or three ...)
    save_grid(images[:100], path.with_suffix(".png"), nrow=k * max(1, 10 // k) if args.conditional else 10)
    print(f"wrote {len(images)} samples to {path} and a grid to {path.with_suffix('.png')}")


# --- The run's bookkeeping ---------------------------------------------------------------------
class Run:
    """A training run's folder and what surrounds its training step: exact resume, the progress log
    (values summed on the device, read back only at log points), grids, checkpoints, snapshots, and
    a stop at a step boundary on Ctrl-C or SIGTERM. `state` names what checkpoint.pt holds: modules,
    optimisers, schedulers (by state_dict) and tensors. Grids and snapshots show `sampler`."""

    def __init__(self, args, data, checkpoint, state, sampler, grid_inputs, nrow=8):
        self.args, self.data, self.state, self.sampler, self.grid_inputs, self.nrow = (
            args, data, state, sampler, grid_inputs, nrow)
        self.steps_per_epoch = data.steps_per_epoch(args.batch_size)
        self.last_step, self.step = min(args.max_steps or math.inf, self.steps_per_epoch * args.epochs), 0
        if checkpoint:   # exact: weights, optimiser moments, schedules, fixed noise, step and RNG
            if checkpoint["n_classes"] != data.n_classes:
                raise UserError(f"the data has {data.n_classes} classes; the run trained on {checkpoint['n_classes']}")
            check_writable(args.out)
            for name, thing in state.items():
                thing.copy_(checkpoint[name]) if torch.is_tensor(thing) else thing.load_state_dict(checkpoint[name])
            self.step, rng = checkpoint["step"], checkpoint["rng"]
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        self.dir = Path(args.out) if checkpoint else free_path(Path(args.out).parent, Path(args.out).name)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the run folder {self.dir} ({error.strerror or error}); "
                            "choose another --out")
        self.meta = {"script": args.script, "args": vars(args), "image_shape": data.shape,
                     "n_classes": data.n_classes, "class_names": data.class_names}
        self.trained, self.sums, self.count, self.stop_signal = False, None, 0, None
        print(f"run folder: {self.dir}\ndata: {args.dataset}, {data}", flush=True)

    def __enter__(self):   # Ctrl-C and SIGTERM ask the loop to stop after the current step
        self.handlers = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        self.last_save = time.monotonic()
        self._start_clock()
        return self

    def __exit__(self, kind, error, trace):
        for signum, handler in self.handlers.items():
            signal.signal(signum, handler)
        if kind is None and self.trained:
            print(f"done: {self.step} steps; grids, losses.csv, snapshots and checkpoint.pt in {self.dir}")
        elif kind is None:
            flag, value = ("--max-steps", self.args.max_steps) if self.last_step == self.args.max_steps else \
                ("--epochs", self.args.epochs)
            print(f"nothing left to train: the run has made {self.step} steps and {flag} {value} ends it at step "
                  f"{self.last_step} (counted from its start); to train on: python {self.args.script}.py --resume "
                  f"{self.dir / 'checkpoint.pt'} {flag} N (more)")

    def _request_stop(self, signum, frame):
        if self.stop_signal is not None:   # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.stop_signal = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint", flush=True)

    def epochs(self):
        while self.step < self.last_step:   # none when the run is finished
            self.trained = True
            yield self.step // self.steps_per_epoch

    def batches(self, epoch):
        return self.data.batches(self.args.batch_size, epoch, self.args.seed, skip=self.step % self.steps_per_epoch)

    def end_step(self, epoch, logged):
        """Count the step, add up its logged values (a dict of tensors); log, grid and checkpoint when
        due. True when the loop must stop (--max-steps, Ctrl-C, SIGTERM)."""
        self.step, self.count, self.names = self.step + 1, self.count + 1, list(logged)
        values = torch.stack([value.detach().float() for value in logged.values()])
        self.sums = values if self.sums is None else self.sums + values
        if self.step % self.args.log_every == 0:
            self.write_log(epoch)
        if self.args.sample_every and self.step % self.args.sample_every == 0:
            self.save_grid(f"step_{self.step:07d}.png")
        if time.monotonic() - self.last_save > 60 * self.args.checkpoint_every:
            self.write_log(epoch)   # never checkpoint past a NaN
            self.save_checkpoint()
        return self.step >= self.last_step or self.stop_signal is not None

    def end_epoch(self, epoch):
        """Log, grid, snapshot (epoch 1, every K-th and the one the run ends on) and checkpoint; after a
        stop signal, the command that continues the run, and exit code 130 (Ctrl-C) or 143 (SIGTERM)."""
        self.write_log(epoch)   # stops the run on NaN, before the checkpoint
        complete = self.step % self.steps_per_epoch == 0
        self.save_grid(f"epoch_{epoch + 1:03d}.png" if complete else f"step_{self.step:07d}.png")
        if complete:
            grids = [Image.open(p) for p in sorted(self.dir.glob("epoch_*.png"))]
            grids[0].save(self.dir / "progress.gif", save_all=True, append_images=grids[1:], duration=400, loop=0)
            ends_run = self.step >= self.last_step or self.stop_signal is not None
            if epoch == 0 or (epoch + 1) % self.args.snapshot_every == 0 or ends_run:
                save_atomically({**self.meta, "epoch": epoch + 1, "sampler": self.sampler.state_dict()},
                                self.dir / f"generator_epoch_{epoch + 1:03d}.pt")
        self.save_checkpoint()
        if self.stop_signal is not None:
            print(f"stopped at step {self.step}; continue with: python {self.args.script}.py --resume "
                  f"{self.dir / 'checkpoint.pt'}", flush=True)
            sys.exit(128 + self.stop_signal)

    def save_checkpoint(self):
        rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        state = {name: thing if torch.is_tensor(thing) else thing.state_dict() for name, thing in self.state.items()}
        save_atomically({**self.meta, **state, "sampler": self.sampler.state_dict(), "step": self.step,
                         "epoch": self.step // self.steps_per_epoch, "rng": rng}, self.dir / "checkpoint.pt")
        self.last_save = time.monotonic()
        self._start_clock()   # saving is not training time

    @torch.no_grad()
    def save_grid(self, name):
        self.sampler.eval()   # BatchNorm uses its running statistics, not this batch's
        save_grid(self.sampler(*self.grid_inputs), self.dir / name, nrow=self.nrow)
        self.sampler.train()
        self._start_clock()

    def write_log(self, epoch):
        """The means since the last log point as a progress line and a losses.csv row (one host sync).
        A NaN ends the run (exit 1) before a checkpoint could keep it."""
        if self.count == 0:
            return
        means, self.sums, self.count = (self.sums / self.count).tolist(), None, 0
        rate = (self.step - self.clock_step) * self.args.batch_size / max(time.perf_counter() - self.clock, 1e-9)
        self._start_clock()
        with open(self.dir / "losses.csv", "a") as f:
            f.write(",".join(["step", "epoch", *self.names]) + "\n" if f.tell() == 0 else "")
            f.write(",".join([str(self.step), str(epoch + 1), *(f"{m:.5f}" for m in means)]) + "\n")
        eta = time.strftime("%H:%M:%S", time.gmtime((self.last_step - self.step) * self.args.batch_size / rate))
        print(f"epoch {epoch + 1}/{self.args.epochs}  step {self.step}/{self.last_step}  "
              + "  ".join(f"{n} {m:.4f}" for n, m in zip(self.names, means)) + f"  {rate:,.0f} img/s  {eta} left",
              flush=True)
        if not all(math.isfinite(m) for m in means):
            print(f"a loss became NaN or infinite by step {self.step}: stopped; the last good checkpoint "
                  f"(if any) is {self.dir / 'checkpoint.pt'}", file=sys.stderr)
            sys.exit(1)

    def _start_clock(self):
        self.clock, self.clock_step = time.perf_counter(), self.step
