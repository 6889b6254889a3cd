"""Plumbing shared by the GAN scripts: flags, checkpoints, --generate, and class Run (the run's folder
and bookkeeping around the training step); data loading is in imagedata.py. No model and no training
step lives here."""
import argparse
import copy
import ctypes
import math
import os
import platform
import random
import re
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import save_image


class UserError(ValueError):
    """A mistake in the command line or in the files it names: one line on stderr, exit code 2 (in a script;
    imported, an ordinary ValueError)."""


class MissingFile(UserError, FileNotFoundError):
    """A file the command names does not exist (imported: a FileNotFoundError)."""


OUT_OF_MEMORY = re.compile(r"out of memory|can't allocate memory")   # CUDA's words, and the CPU allocator's


def run_main(main, argv=None):
    try:
        main(argv)
    except (UserError, RuntimeError) as error:   # a RuntimeError only when it is an allocation refused
        if not isinstance(error, UserError) and not OUT_OF_MEMORY.search(str(error)):
            raise
        print(f"{Path(sys.argv[0]).name}: error: {error if isinstance(error, UserError) else too_large(error)}",
              file=sys.stderr)
        sys.exit(2)


def too_large(error, kept=""):
    """An allocation the machine refused (the sizes asked for), as one line naming the flags that set them."""
    asked = re.search(r"[Tt]ried to allocate ([\d.]+ \w+)", str(error))
    what = ("CUDA out of memory" if "CUDA" in str(error) else "the allocator refused") + (
        f", {asked[1]} asked for at once" if asked else "")
    return UserError(f"not enough memory ({what}): make the networks or the batch smaller with --batch-size, "
                     f"--img-size, --latent-dim, and --width or --blocks where the script has them{kept}")


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
# numpy's range; torch's ends at 2**64, and the batch order's seed * 100_003 must stay inside it
seed = _number(int, lambda v: 0 <= v < 2**32, "a whole number from 0 to 4294967295")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):   # "(default: ...)" only where there is a default
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser(script, description, *, img_size, batch_size, epochs, lr, latent_dim=100, ema=0.999,
                 lr_decay="linear", smoothing=True, conditional=False,
                 datasets=("mnist", "fashion-mnist", "cifar10", "folder", "fake")):
    """The flags every script shares, each with its default in --help; the script adds its own."""
    parser = argparse.ArgumentParser(prog=f"{script}.py", description=description, allow_abbrev=False,
                                     formatter_class=_HelpFormatter)
    parser.set_defaults(script=script, conditional=conditional, default_epochs=epochs)
    add = parser.add_argument
    add("--dataset", default=datasets[0], choices=datasets,
        help="training data ('folder': the images in --data-root; 'fake': made up, no files)")
    add("--data-root", default="data", help="where datasets live (torchvision's layout)")
    add("--img-size", type=positive_int, default=img_size, help="images are resized to this square size")
    add("--batch-size", type=positive_int, default=batch_size, help="images per step")
    add("--epochs", type=positive_int, default=epochs, help="passes over the data (--lr-decay linear: see there)")
    add("--lr", type=positive_float, default=lr, help="learning rate of both optimisers")
    add("--lr-decay", choices=("linear", "half", "none"), default=lr_decay,
        help=f"linear: to 0 at the end of a {epochs}-epoch run (or of a longer run), so a shorter run is its start; "
             "half: constant, then linear to 0 over the second half; none: constant")
    add("--ema", type=fraction, default=ema, metavar="DECAY",
        help="grids, snapshots and --generate use a moving average of G's weights (0: G itself)")
    add("--latent-dim", type=positive_int, default=latent_dim, help="size of the noise vector z")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (auto picks cuda when present)")
    add("--compile", nargs="?", const="default", choices=("default", "reduce-overhead", "max-autotune"),
        help="torch.compile the networks (the first steps wait for the compiler; reduce-overhead: CUDA graphs)")
    add("--amp", action=argparse.BooleanOptionalAction, default=False, help="bfloat16 autocast: convolutions and "
        "matrix products in bfloat16; weights, gradients and optimisers stay float32 (a CPU without bfloat16 "
        "instructions may run it slower: docs/speed.md)")
    add("--seed", type=seed, default=0, help="same seed and device give the same numbers")
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
    may_change = {"epochs", "max_steps", "device", "compile", "amp", "log_every", "sample_every", "data_root",
                  "snapshot_every", "checkpoint_every", "resume", "generate", "out", "label",
                  *(["seed"] if args.generate else [])}
    for name, value in vars(args).items():   # a changed --lr would otherwise be silently ignored
        if name in saved and name not in may_change and saved[name] != value:
            raise UserError(f"--{name.replace('_', '-')} cannot change when resuming (the run used {saved[name]!r})")
    if "step" not in checkpoint and not args.generate:
        raise UserError(f"{path} is a generator snapshot: resume from the run's checkpoint.pt, or use --generate N")
    if getattr(args, "label", None) is not None and not 0 <= args.label < checkpoint["n_classes"]:
        raise UserError(f"--label {args.label}: the run's classes are 0 to {checkpoint['n_classes'] - 1} "
                        f"({', '.join(checkpoint['class_names'])})")
    args.resume, args.out = str(path), str(path.parent)
    step = f"step {checkpoint['step']}, " if "step" in checkpoint else ""   # a snapshot is an epoch's end
    print(f"{'generating from' if args.generate else 'resuming'} {path}: {saved['dataset']}, "
          f"{step}{checkpoint['epoch']} of {saved['epochs']} epochs complete", flush=True)
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


def compile_networks(args, device, *networks):
    """--compile: each network's forward and backward become fused kernels, compiled in place (a
    checkpoint keeps its names). The first step of each shape waits for the compiler (docs/speed.md)."""
    if args.compile:
        torch.backends.cudnn.benchmark = device.type == "cuda"   # shapes never change: time cuDNN's kernels once
        for network in networks:
            network.compile(mode=None if args.compile == "default" else args.compile)


def check_bfloat16(device):
    """--amp where bfloat16 autocast cannot run: one clear line, not a float32 run saved as --amp."""
    with warnings.catch_warnings(record=True) as caught:   # autocast warns and turns itself off
        warnings.simplefilter("always")
        torch.autocast(device.type, torch.bfloat16)
    if caught:
        raise UserError(f"--amp on {device}: {str(caught[0].message).splitlines()[0]}; drop --amp")


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def keep_freed_memory():
    """Linux (glibc): memory a training step frees stays in the process for the next step. By default
    glibc returns large freed blocks to the system (from 128 KiB, adapting, not far enough for dcgan), and
    the next step faults that activation's pages in and zeroes them again: a fifth of dcgan's CPU step."""
    if platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD: blocks up to 32 MiB come from the heap, to be reused
        libc.mallopt(-1, 1 << 30)    # M_TRIM_THRESHOLD: the heap's free top goes back to the system past 1 GiB


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
    """folder/stem, else stem-2, stem-3, ...: a name nothing uses yet."""
    path, number = Path(folder) / f"{stem}{suffix}", 1
    while path.exists():
        number += 1
        path = Path(folder) / f"{stem}-{number}{suffix}"
    return path


def claim_folder(out):
    """A new run's folder: `out` if new or empty, else out-2, out-3, ...; claimed by creating its losses.csv
    exclusively, so two runs started at once never share one (an empty folder alone would look free)."""
    if out.is_file():
        raise UserError(f"--out {out} is a file, not a folder; choose another --out")
    for path in (out if number == 1 else out.parent / f"{out.name}-{number}" for number in range(1, sys.maxsize)):
        try:
            path.mkdir(parents=True, exist_ok=True)
            if not any(path.iterdir()):   # empty: ours, unless another run creates its losses.csv first
                os.close(os.open(path / "losses.csv", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return path
        except FileExistsError:   # a file of that name, or another run claimed the folder first
            continue
        except OSError as error:   # an unwritable parent, or an unwritable (immutable) empty folder
            why = error.strerror or error
            raise UserError(f"cannot write in {path} ({why}); nothing was changed" if path.is_dir() else
                            f"cannot create the run folder {path} ({why}); choose another --out")


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
        raise MissingFile(f"checkpoint {path} does not exist")
    except Exception as error:
        raise UserError(f"checkpoint {path} cannot be read ({type(error).__name__}); is it a complete .pt file?")
    owner = checkpoint.get("script") if isinstance(checkpoint, dict) else None
    if owner != script:
        raise UserError(f"checkpoint {path} was written by {owner or 'something else'}, not {script}.py")
    return checkpoint


def lr_factor(args, total_steps, default_steps):
    """LambdaLR's factor after `step` of a run of `total_steps`, for --lr-decay. linear: the rate falls to 0
    at the last step of the default run (`default_steps`: a run of the script's default --epochs), or of
    this run if it is longer. A shorter run is then the default run's start, step for step, and ends
    exactly where the default run is at the same epoch. half: constant, then linear to 0 over the run's
    second half. none: constant."""
    if args.lr_decay == "linear":
        horizon = max(total_steps, default_steps)
        return lambda step: max(0.0, 1 - step / max(1, horizon))
    start = total_steps // 2 if args.lr_decay == "half" else total_steps   # where the fall begins
    return lambda step: 1.0 if step < start else max(0.0, 1 - (step - start) / max(1, total_steps - start))


class EMA(torch.nn.Module):
    """A moving average of a network's weights and buffers (`module`), for grids, snapshots and --generate.
    Its decay grows as (1 + n) / (10 + n) after n updates, up to `decay`, so the average soon forgets G's
    random start (0: the network itself). One fused update per step, its weight computed on the host:
    nothing is read back from the device or copied to it (torch's AveragedModel does both every step)."""

    def __init__(self, network, decay):
        super().__init__()
        self.module, self.decay, self.n = copy.deepcopy(network).requires_grad_(False), decay, 0

    def get_extra_state(self):
        return {"n": self.n}

    def set_extra_state(self, state):
        self.n = state["n"]

    def load_state_dict(self, state, strict=True):   # runs saved with torch's AveragedModel resume too
        if "n_averaged" in state:
            state = {**state, "_extra_state": {"n": int(state["n_averaged"])}}
            del state["n_averaged"]
        return super().load_state_dict(state, strict)

    @torch.no_grad()
    def update_parameters(self, network):
        weight = 1.0 if self.n == 0 else 1 - min(self.decay, (1 + self.n) / (10 + self.n))   # a Python float
        mine, theirs = [*self.module.parameters(), *self.module.buffers()], [*network.parameters(), *network.buffers()]
        floats = [i for i, tensor in enumerate(mine) if tensor.is_floating_point()]
        counts = [i for i, tensor in enumerate(mine) if not tensor.is_floating_point()]   # BatchNorm's batch count
        torch._foreach_lerp_([mine[i] for i in floats], [theirs[i] for i in floats], weight)
        if counts:
            torch._foreach_copy_([mine[i] for i in counts], [theirs[i] for i in counts])
        self.n += 1


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
        keep_freed_memory()   # after loading the data, whose temporary buffers may go back to the system
        if args.amp:
            check_bfloat16(next(sampler.parameters()).device)
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
        self.dir = Path(args.out) if checkpoint else claim_folder(Path(args.out))
        self.meta = {"script": args.script, "args": vars(args), "image_shape": data.shape,
                     "n_classes": data.n_classes, "class_names": data.class_names}
        self.trained, self.sums, self.count, self.stop_signal = False, None, 0, None
        self.saved_step = checkpoint["step"] if checkpoint else None   # the step checkpoint.pt holds
        print(f"run folder: {self.dir}\ndata: {args.dataset}, {data}", flush=True)

    def __enter__(self):   # Ctrl-C and SIGTERM ask the loop to stop after the current step
        self.handlers = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        self.last_save = time.monotonic()
        self._start_clock()
        return self

    def __exit__(self, kind, error, trace):
        for signum, handler in self.handlers.items():
            signal.signal(signum, handler)
        if isinstance(error, RuntimeError) and OUT_OF_MEMORY.search(str(error)):   # the run's checkpoint is named
            kept = f"{self.dir / 'checkpoint.pt'} (step {self.saved_step})"
            raise too_large(error, "; no checkpoint was written yet" if self.saved_step is None else
                            f"; the last checkpoint is kept: {kept}") from error
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
        self.last_save, self.saved_step = time.monotonic(), self.step
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
