"""Plumbing for the GAN scripts (flags, data, device, seeds, run folders, checkpoints, grids, log); no model."""
import argparse
import math
import os
import random
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.transforms.functional import center_crop, pil_to_tensor, resize
from torchvision.utils import save_image


class UserError(Exception):
    """A mistake in the command line or in the files it names: one line on stderr, exit code 2."""


def run_main(main, argv=None):
    """Call main(argv); report a UserError as argparse does (one line, exit 2), never a traceback."""
    try:
        main(argv)
    except UserError as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        sys.exit(2)


# --- Flags -------------------------------------------------------------------------------------
def _number(kind, ok, rule):
    """An argparse type: kind(text) must satisfy ok(value), else argparse reports `rule`."""
    def parse(text):
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
probability = _number(float, lambda v: 0 <= v <= 1, "a probability in [0, 1]")
smoothing_amount = _number(float, lambda v: 0 <= v < 1, "in [0, 1)")


def build_parser(script, description, *, img_size=28, batch_size=64, epochs=50, lr=2e-4, latent_dim=100,
                 smoothing=True):
    """The flags every script shares; the script adds its own before parsing."""
    parser = argparse.ArgumentParser(prog=f"{script}.py", description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.set_defaults(script=script)
    add = parser.add_argument
    add("--dataset", default="mnist", choices=("mnist", "fashion-mnist", "cifar10", "folder", "fake"),
        help="training data ('folder': class sub-folders of images; 'fake': made up, no files)")
    add("--data-root", default="data", help="where datasets live (torchvision's layout)")
    add("--img-size", type=positive_int, default=img_size, help="images are resized to this square size")
    add("--batch-size", type=positive_int, default=batch_size)
    add("--epochs", type=positive_int, default=epochs)
    add("--lr", type=positive_float, default=lr, help="learning rate of both optimisers")
    add("--latent-dim", type=positive_int, default=latent_dim, help="size of the noise vector z")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (auto picks cuda when present)")
    add("--seed", type=int, default=0, help="same seed and device give the same numbers")
    add("--out", default=f"runs/{script}", help="run folder; a taken one gives the next free name (-2, -3, ...)")
    add("--sample-every", type=positive_int, help="also save a grid every N steps")
    add("--log-every", type=positive_int, default=100, help="progress line and losses.csv row every N steps")
    add("--max-steps", type=positive_int, help="stop after N optimisation steps (a checkpoint is kept)")
    add("--resume", nargs="?", const="latest", metavar="CKPT", help="continue CKPT, or without one the newest run")
    add("--generate", type=positive_int, metavar="N", help="no training: write N samples to generated.npz")
    if smoothing:
        add("--label-smoothing", type=smoothing_amount, default=0.0, metavar="S",
            help="one-sided: real targets drawn uniformly from [1-S, 1] each step; fake targets stay 0")
    add("--label-exchange", type=probability, default=0.0, metavar="P", help="chance that a D step swaps real and fake")
    return parser


def parse_args(parser, argv=None, generate_may_change=()):
    """Parse the flags. With --resume or --generate, load that checkpoint and take its run's flags,
    overridden only by the flags given on this command line. Returns (args, checkpoint or None)."""
    args = parser.parse_args(argv)
    if args.resume is None and args.generate is None:
        return args, None
    path = find_checkpoint(args.out, args.script) if args.resume in (None, "latest") else Path(args.resume)
    checkpoint = load_checkpoint(path, args.script)
    saved = checkpoint["args"]
    # argparse fills in a default only where the namespace has no value: saved flags stay unless given
    keep = {k: v for k, v in saved.items() if k not in ("resume", "generate", "out", "max_steps")}
    args = parser.parse_args(argv, namespace=argparse.Namespace(**keep))
    # any other flag given again must match the run's own: a changed --lr would be silently ignored
    may_change = {"epochs", "max_steps", "device", "sample_every", "log_every", "data_root"}
    may_change |= {"seed", *generate_may_change} if args.generate else set()
    for name, value in vars(args).items():
        if name in saved and name not in may_change | {"resume", "generate", "out"} and saved[name] != value:
            raise UserError(f"--{name.replace('_', '-')} cannot change when resuming (the run used {saved[name]!r})")
    args.out = str(path if path.is_dir() else path.parent)
    return args, checkpoint


# --- Device, seeding, run folders --------------------------------------------------------------
def pick_device(name):
    """auto picks cuda when present, else cpu; a device this machine lacks is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    present = {"cpu": True, "mps": torch.backends.mps.is_available(),
               "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()}
    if not present.get(device.type, False):
        raise UserError(f"--device {name} is not available on this machine (use auto, cpu, cuda, cuda:N or mps)")
    return device


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda, "python": random.getstate()}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def new_run_folder(out):
    """Create the run folder: `out` itself if free, else the next free `out-2`, `out-3`, ..."""
    candidate, number = Path(out), 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        candidate, number = Path(f"{out}-{number + 1}"), number + 1
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def find_checkpoint(out, script):
    """The checkpoint of the newest run among `out`, `out-2`, ... (the runs of this script)."""
    base = Path(out)
    runs = [p / "checkpoint.pt" for p in base.parent.glob(base.name + "*")
            if re.fullmatch(re.escape(base.name) + r"(-\d+)?", p.name) and (p / "checkpoint.pt").is_file()]
    if not runs:
        raise UserError(f"no {script} run with a checkpoint.pt in {base.parent}/ (train first, or give --resume CKPT)")
    return max(runs, key=lambda p: p.stat().st_mtime)


# --- Checkpoints -------------------------------------------------------------------------------
def save_checkpoint(path, state):
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    torch.save({**state, "rng": rng_state()}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, script):
    path = Path(path) / "checkpoint.pt" if Path(path).is_dir() else Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"checkpoint {path} cannot be read ({type(error).__name__}); is it a complete .pt file?")
    owner = checkpoint.get("script") if isinstance(checkpoint, dict) else None
    if owner != script:
        raise UserError(f"checkpoint {path} was written by {owner or 'something else'}, not {script}.py")
    return checkpoint


def load_weights(module, state, what):
    """load_state_dict with a one-line message when the flags give a network of another shape."""
    try:
        module.load_state_dict(state)
    except RuntimeError:
        raise UserError(f"the checkpoint's {what} does not fit the network these flags build (a size flag differs)")


# --- Data: decoded once into uint8, batches cut on the training device -------------------------
class ImageData:
    """All images as one uint8 tensor (N, C, H, W) and int64 labels (N,), kept on the device."""

    def __init__(self, images, labels, class_names, device):
        self.images, self.labels, self.device = images.to(device), labels.to(device), device
        self.class_names, self.n_classes = list(class_names), len(class_names)
        self.shape = tuple(images.shape[1:])   # (C, H, W)

    def steps_per_epoch(self, batch_size):
        return len(self.images) // batch_size   # the short last batch is dropped, every epoch alike

    def batches(self, batch_size, epoch, seed, skip=0):
        """Yield (images in [-1, 1], labels) for one epoch. The order depends only on (seed, epoch), so a
        resumed run sees the batches an uninterrupted one would; `skip` passes over those already seen."""
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        order = order.to(self.device)
        for i in range(skip, self.steps_per_epoch(batch_size)):
            index = order[i * batch_size:(i + 1) * batch_size]
            yield self.images[index].float().div_(127.5).sub_(1), self.labels[index]


def load_data(args, device, train=True):
    """The dataset named by the flags, resized to --img-size, as an ImageData on `device`."""
    root = Path(args.data_root)
    if args.dataset == "fake":
        images, labels, classes = _fake_images(args.img_size, seed=args.seed)
    elif args.dataset == "folder":
        images, labels, classes = _folder_images(root, args.img_size)
    else:
        images, labels, classes = _torchvision_images(args.dataset, root, train)
    if images.shape[-2:] != (args.img_size, args.img_size):   # resized once, here, not per batch
        images = F.interpolate(images.float(), size=(args.img_size,) * 2, mode="bilinear", antialias=True)
        images = images.round().clamp(0, 255).to(torch.uint8)
    if len(images) < args.batch_size:
        raise UserError(f"the dataset has {len(images)} images, fewer than --batch-size {args.batch_size}")
    return ImageData(images, labels, classes, device)


def _torchvision_images(name, root, train):
    cls = {"mnist": torchvision.datasets.MNIST, "fashion-mnist": torchvision.datasets.FashionMNIST,
           "cifar10": torchvision.datasets.CIFAR10}[name]
    try:
        dataset = cls(str(root), train=train, download=True)
    except Exception as error:  # no network, a refused connection, a bad mirror: all end alike
        where = (f"cifar-10-python.tar.gz in {root}/" if name == "cifar10" else
                 f"the four *-ubyte.gz files (train/t10k images and labels) in {root / cls.__name__ / 'raw'}/")
        raise UserError(f"could not load {name} ({type(error).__name__}); without a network, put {where}")
    images = torch.as_tensor(np.asarray(dataset.data))
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)  # (N, C, H, W)
    return images.contiguous(), torch.as_tensor(np.asarray(dataset.targets)).long(), dataset.classes


def _folder_images(root, size):
    """An image folder: each sub-folder is a class; images directly in the root form one class."""
    if not root.is_dir():
        raise UserError(f"--data-root {root} is not a folder")
    def images_in(folder):
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"))
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and images_in(p))
    files = [(p, i) for i, c in enumerate(classes) for p in images_in(root / c)] or [(p, 0) for p in images_in(root)]
    if not files:
        raise UserError(f"--data-root {root} holds no images (expected class sub-folders of .png/.jpg files)")
    def read(path, mode=None):   # one file open at a time: a folder may hold 200k faces
        with Image.open(path) as picture:
            return picture.mode if mode is None else pil_to_tensor(picture.convert(mode))
    try:   # grey only if every image is grey (headers only), then decode, resize and crop each once
        mode = "L" if all(read(p) in ("L", "1", "I;16", "I") for p, _ in files) else "RGB"
        tensors = [center_crop(resize(read(p, mode), size, antialias=True), size) for p, _ in files]
    except OSError as error:
        raise UserError(f"an image under {root} cannot be read ({error})")
    return torch.stack(tensors), torch.tensor([label for _, label in files]), classes or [root.name]


def _fake_images(size, seed, n=512, n_classes=10):
    """Grey images with a bright square whose place depends on the class: something to learn."""
    labels = torch.arange(n) % n_classes
    images = torch.randint(0, 40, (n, 1, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    side = max(size // 4, 1)
    for k in range(n_classes):   # the square's place is the class: rows of 4 squares
        images[labels == k, :, k // 4 * side:k // 4 * side + side, k % 4 * side:k % 4 * side + side] = 255
    return images, labels, [str(k) for k in range(n_classes)]


# --- Images ------------------------------------------------------------------------------------
def save_grid(images, path, nrow=8):
    """Save images in [-1, 1] as one PNG grid."""
    save_image(images.detach().float().cpu(), path, nrow=nrow, normalize=True, value_range=(-1, 1), padding=2)


def save_progress_gif(run_dir):
    """Put the per-epoch grids together into progress.gif."""
    first, *rest = [Image.open(p) for p in sorted(Path(run_dir).glob("epoch_*.png"))]
    first.save(Path(run_dir) / "progress.gif", save_all=True, append_images=rest, duration=400, loop=0)


def save_generated(run_dir, images, labels=None, nrow=10):
    """generated.npz: images uint8 (N, C, H, W) and, for conditional models, labels (N,)."""
    path = Path(run_dir) / "generated.npz"
    arrays = {"images": images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy().astype(np.int64)
    note = " (replacing the earlier one: samples are reproducible from the checkpoint and --seed)" * path.exists()
    np.savez_compressed(path, **arrays)
    save_grid(images[:100], Path(run_dir) / "generated.png", nrow=nrow)
    print(f"wrote {len(images)} samples to {path} and a grid to {Path(run_dir) / 'generated.png'}{note}")


# --- Progress: losses summed on the device each step, read back only at log points -------------
class LossLog:
    """Averages named scalars between log points, prints one progress line, appends losses.csv.
    update() only adds tensors on the device (no host sync); write() syncs once per log point."""

    def __init__(self, run_dir, names, first_step, last_step, batch_size):
        self.path = Path(run_dir) / "losses.csv"
        self.names, self.total_steps, self.batch_size = list(names), last_step, batch_size
        self.sum, self.count = None, 0
        self.start_clock(first_step)
        if not self.path.exists():   # a resumed run appends to its own file
            self.path.write_text(",".join(["step", "epoch", *self.names]) + "\n")

    def update(self, *values):
        stacked = torch.stack([v.detach().float() for v in values])
        self.sum = stacked if self.sum is None else self.sum + stacked
        self.count += 1

    def write(self, step, epoch, epochs):
        """Log the means since the last call; NaN ends the run (exit 1) before the next checkpoint."""
        if self.count == 0:
            return
        means, self.sum, self.count = (self.sum / self.count).tolist(), None, 0
        rate = (step - self.clock_step) * self.batch_size / max(time.perf_counter() - self.clock, 1e-9)
        self.start_clock(step)
        with open(self.path, "a") as f:
            f.write(",".join([str(step), str(epoch), *(f"{m:.5f}" for m in means)]) + "\n")
        eta = time.strftime("%H:%M:%S", time.gmtime((self.total_steps - step) * self.batch_size / rate))
        losses = "  ".join(f"{n} {m:.4f}" for n, m in zip(self.names, means))
        print(f"epoch {epoch + 1}/{epochs}  step {step}/{self.total_steps}  {losses}  {rate:,.0f} img/s  {eta} left",
              flush=True)
        if not all(math.isfinite(m) for m in means):
            print(f"a loss became NaN or infinite by step {step}: stopped; the last good checkpoint "
                  f"(if any) is {self.path.parent / 'checkpoint.pt'}", file=sys.stderr)
            sys.exit(1)

    def start_clock(self, step):   # also after saving grids and checkpoints: not training time
        self.clock, self.clock_step = time.perf_counter(), step


class StopRequest:
    """Ctrl-C stops the loop at the end of a step, so its checkpoint is consistent; a second one at once."""

    def __init__(self):
        self.requested, self._previous = False, signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to abort)", flush=True)

    def close(self):
        signal.signal(signal.SIGINT, self._previous)
