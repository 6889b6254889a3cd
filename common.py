"""What the GAN scripts share: flags, data (decoded once, batches cut on the device), grids and small file
helpers. No network, loss or training step lives here, and nothing runs the loop: each script's main() writes
out its own."""
import argparse, glob, hashlib, json, math, os, platform, random, re, signal, sys, tempfile, time  # noqa: E401
import warnings
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.datasets.utils import check_integrity
from torchvision.transforms.functional import center_crop, resize as resize_image
from torchvision.utils import save_image

try:   # a lock the OS lets go of when the process ends, even on kill -9
    import fcntl
except ImportError:   # Windows
    import msvcrt


class UserError(ValueError):
    """A mistake in the command line or in the files it names: one line on stderr and exit code 2."""


def run_main(main, argv=None):
    try:
        main(argv)
    except KeyboardInterrupt:   # before training, or a second Ctrl-C
        print(f"\n{Path(sys.argv[0]).name}: interrupted; the last checkpoint, if any, is kept", file=sys.stderr)
        sys.exit(130)
    except UserError as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as error:   # an allocation refused (CUDA's words, or the CPU allocator's) is one line too
        if not re.search(r"out of memory|can't allocate memory", str(error)):
            raise
        print(f"{Path(sys.argv[0]).name}: error: not enough memory ({str(error).splitlines()[0][:60]}): make "
              "--batch-size, --img-size, --latent-dim, --generate N, and --width or --blocks where the script has "
              "them smaller",
              file=sys.stderr)
        sys.exit(2)


# --- Flags -------------------------------------------------------------------------------------
def _number(kind, ok, rule):
    def parse(text):   # an argparse type: a bad value gets argparse's own one-line error (NaN fails every test)
        try:
            if ok(value := kind(text)):
                return value
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(f"{text!r} is not {rule}")
    return parse


positive_int = _number(int, lambda v: 0 < v < 2**31, "a positive integer below 2**31")   # larger: overflows in torch
positive_float = _number(float, lambda v: 0 < v < math.inf, "a positive number")
non_negative_int = _number(int, lambda v: 0 <= v < 2**31, "a whole number >= 0, below 2**31")
non_negative_float = _number(float, lambda v: 0 <= v < math.inf, "a number >= 0")
probability = _number(float, lambda v: 0 <= v <= 1, "a probability in [0, 1]")
fraction = _number(float, lambda v: 0 <= v < 1, "in [0, 1)")
seed = _number(int, lambda v: 0 <= v < 2**32, "a whole number from 0 to 4294967295")   # numpy's range
batch = _number(int, lambda v: v > 1, "2 or more (BatchNorm takes its statistics from the batch)")


def build_parser(script, description, *, img_size, batch_size, epochs, lr, lr_d=None, latent_dim=100, ema=0.999,
                 lr_decay=True, smoothing=True, conditional=False,
                 datasets=("mnist", "fashion-mnist", "cifar10", "folder", "fake")):
    """The flags every script shares, each with its default in --help; the script adds its own."""
    parser = argparse.ArgumentParser(prog=f"{script}.py", description=description, allow_abbrev=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.set_defaults(script=script, conditional=conditional, default_epochs=epochs)
    add = parser.add_argument
    add("--dataset", default=datasets[0], choices=datasets, help="training data ('fake': made up, no files)")
    add("--data-root", help="where datasets live, in torchvision's layout (None: data); --dataset folder: your "
        "images, " + ("in trainA/ and trainB/" if script == "cyclegan" else "a sub-folder per class or all in one"))
    add("--img-size", type=positive_int, default=img_size, help="images are resized to this square size")
    add("--batch-size", type=positive_int if script == "cyclegan" else batch, default=batch_size,   # InstanceNorm: 1
        help="images per step")
    add("--epochs", type=positive_int, default=epochs, help="passes over the data")
    add("--lr", type=positive_float, default=lr, help="learning rate of G's optimiser, and of D's without --lr-d")
    add("--lr-d", type=positive_float, default=lr_d, metavar="LR", help="learning rate of D's (the critic's) optimiser "
        "(None: --lr)")
    add("--lr-decay", action=argparse.BooleanOptionalAction, default=lr_decay, help="the rates fall linearly to 0 at "
        f"the end of a {epochs}-epoch run or a longer one: a shorter run is its start" if script != "cyclegan" else
        "the rates are constant, then fall linearly to 0 over the second half of the run")
    if ema is not None:
        add("--ema", type=fraction, default=ema, metavar="DECAY",
            help="grids, snapshots and --generate use a moving average of G's weights (0: G itself)")
    if latent_dim is not None:
        add("--latent-dim", type=positive_int, default=latent_dim, help="size of the noise vector z")
    add("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:N or mps")
    add("--compile", action="store_true", help="torch.compile the networks (for GPUs; the first steps wait for it)")
    add("--amp", action=argparse.BooleanOptionalAction, default=False, help="bfloat16 autocast: products in "
        "bfloat16, weights and optimisers in float32 (CPUs with bfloat16 instructions; GPUs from Ampere on)")
    add("--seed", type=seed, default=0, help="the same seed gives the same numbers on the same CPU (not on CUDA)")
    add("--out", default=f"runs/{script}", help="run folder; a taken one gives the next free name (-2, -3, ...)")
    add("--log-every", type=positive_int, default=100, help="progress line and losses.csv row every N steps")
    add("--snapshot-every", type=positive_int, default=5, metavar="K",
        help="keep the sampling G of epoch 1, every K-th epoch and the last (generator_epoch_*.pt)")
    add("--checkpoint-every", type=positive_float, default=5.0, metavar="MIN",
        help="write checkpoint.pt every MIN minutes of training, besides each epoch's end")
    add("--max-steps", type=positive_int, help="stop once the run has made N steps, counted from its start")
    add("--resume", nargs="?", const="last", metavar="CKPT", help="continue CKPT, or the run trained last")
    add("--generate", type=positive_int, metavar="N", help="no training: N samples from --resume CKPT or the last run")
    if conditional:
        add("--label", type=int, metavar="K", help="with --generate: only class K (None: every class in turn)")
    if smoothing:
        add("--label-smoothing", type=fraction, default=0.0, metavar="S",
            help="one-sided: real targets drawn uniformly from [1-S, 1] each step; fake targets stay 0")
    add("--label-exchange", type=probability, default=0.0, metavar="P", help="chance that a D step swaps real and fake")
    return parser


def parse_args(parser, argv=None):
    """(args, checkpoint or None). With --resume or --generate: the run's flags, but for those that may change."""
    args = parser.parse_args(argv)
    if getattr(args, "label", None) is not None and not args.generate:
        raise UserError("--label K chooses the class of generated samples: use it with --generate N")
    if args.resume is None and args.generate is None:
        return args, None
    path = last_run(Path(args.out), args.script) if args.resume in (None, "last") else Path(args.resume)
    path = path / "checkpoint.pt" if path.is_dir() else path
    checkpoint = load_checkpoint(path, args.script)
    saved = checkpoint["args"]   # argparse fills in a default only where the namespace has no value
    keep = {k: v for k, v in saved.items() if k not in ("resume", "generate", "out", "max_steps", "label")}
    flags = {action.dest for action in parser._actions}   # flags added since a run began keep its behaviour
    keep = {**{k: v for k, v in (("lr_d", None), ("reuse_fakes", False)) if k in flags}, **keep}
    args = parser.parse_args(argv, namespace=argparse.Namespace(**keep))
    may_change = {"epochs", "max_steps", "device", "compile", "amp", "log_every", "snapshot_every", "checkpoint_every",
                  "resume", "generate", "out", "label", *(["seed", "data_root"] if args.generate else [])}
    for name, value in vars(args).items():   # a changed --lr would otherwise be silently ignored
        if name in saved and name not in may_change and saved[name] != value:
            raise UserError(f"--{name.replace('_', '-')} cannot change when resuming (the run used {saved[name]!r})")
    if "step" not in checkpoint and not args.generate:
        raise UserError(f"{path} is a generator snapshot: resume from the run's checkpoint.pt, or use --generate N")
    beside = [p for p in (path.with_name("checkpoint.pt"), path.with_name("losses.csv")) if p.exists()]
    if beside and path.name != "checkpoint.pt" and not args.generate:   # a copy: its run would replace them
        raise UserError(f"resumed, {path} would replace {beside[0]}: copy it alone into a new folder, resume there")
    if args.resume not in (None, "last") and args.out != parser.get_default("out") and (
            Path(args.out).resolve() != path.parent.resolve()):   # a run's files stay in its folder
        raise UserError(f"--out: a resumed run (and --generate's samples) stays in its folder, {path.parent}")
    if getattr(args, "label", None) is not None and not 0 <= args.label < checkpoint["n_classes"]:
        raise UserError(f"--label {args.label}: the run's classes are 0 to {checkpoint['n_classes'] - 1}")
    args.resume, args.out, step = str(path), str(path.parent), checkpoint.get("step")   # a snapshot: an epoch's end
    print(f"{'generating from' if args.generate else 'resuming'} {path}: {saved['dataset']}, "
          f"{'' if step is None else f'step {step}, '}{checkpoint['epoch']} of {saved['epochs']} epochs complete")
    return args, checkpoint


def last_run(out, script):
    """The run trained last among `out`, out-2, ...; it must have a checkpoint to go on from."""
    runs = [p for p in out.parent.glob("*") if re.fullmatch(re.escape(out.name) + r"(-\d+)?", p.name) and p.is_dir()]
    if not runs:
        raise UserError(f"no {script} run at {out} or {out.name}-2, ... (train first, or give --resume CKPT)")
    last = max(runs, key=lambda p: max((f.stat().st_mtime_ns for f in (p / "losses.csv", p / "checkpoint.pt")
                                        if f.exists()), default=p.stat().st_mtime_ns))   # not --generate's files
    if not (last / "checkpoint.pt").is_file():
        raise UserError(f"{last}, the {script} run trained last, has no checkpoint (it stopped in its first epoch), "
                        "so it cannot go on: start it again, or continue another run with --resume FOLDER")
    return last


def pick_device(name):
    try:
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError):   # a name torch does not know, or a device this machine lacks
        raise UserError(f"--device {name} is not available here (use auto, cpu, cuda, cuda:N or mps)") from None
    torch.backends.cudnn.benchmark = True   # CUDA: the shapes never change, so cuDNN times its kernels once
    torch.backends.cuda.matmul.allow_tf32 = True   # Linear layers on tensor cores, as cuDNN's convolutions already are
    return device


def autocast(device, enabled):
    """--amp: bfloat16 autocast, with no cast cache (the step changes the weights between its passes)."""
    if enabled and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise UserError(f"--amp: {torch.cuda.get_device_name(device)} has no bfloat16 (GPUs have it from Ampere on)")
    if enabled and device.type == "cpu" and platform.machine().lower() in ("x86_64", "amd64") and not (
            torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):   # measured: 12x slower
        raise UserError("--amp: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX) and would emulate them, "
                        "far slower than float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # where autocast cannot run bfloat16, it warns and turns itself off
        try:
            return torch.autocast(device.type, torch.bfloat16, enabled=enabled, cache_enabled=False)
        except UserWarning as warning:
            raise UserError(f"--amp on {device}: {str(warning).splitlines()[0]}") from None


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state(device):
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "cuda": cuda}


def set_rng_state(rng, device):
    """A checkpoint's random generators; the GPU's where the checkpoint and this run both have one (older
    checkpoints kept every GPU's), so a checkpoint moves between CPU and GPU and between machines."""
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    cuda, index = rng["cuda"], device.index or 0
    cuda = (cuda[index] if index < len(cuda) else None) if isinstance(cuda, list) else cuda
    if device.type == "cuda" and torch.is_tensor(cuda):
        torch.cuda.set_rng_state(cuda, device)


@torch.no_grad()
def update_average(average, network, decay, n):
    """The moving average's n-th update (n from 0); its decay grows as (1 + n) / (10 + n) up to `decay`, so it
    soon forgets G's random start. One fused update, its weight a host float: nothing is read from the device."""
    weight = 1.0 if n == 0 else 1 - min(decay, (1 + n) / (10 + n))
    pairs = list(zip([*average.parameters(), *average.buffers()], [*network.parameters(), *network.buffers()]))
    floats, counts = [p for p in pairs if p[0].is_floating_point()], [p for p in pairs if not p[0].is_floating_point()]
    torch._foreach_lerp_([mine for mine, _ in floats], [theirs for _, theirs in floats], weight)
    if counts:   # BatchNorm's batch count
        torch._foreach_copy_([mine for mine, _ in counts], [theirs for _, theirs in counts])


@contextmanager
def stop_requests():
    """In the block, Ctrl-C and SIGTERM land in the list it gives (the loop stops after its step); a second one
    stops at once."""
    def request(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)
        print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint", flush=True)
    signals = {signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", signal.SIGINT)}   # SIGBREAK: Windows
    requested, before = [], {s: signal.signal(s, request) for s in signals}
    try:
        yield requested
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def log(folder, means, step, epoch, args, last_step, images_per_s):
    """A progress line, and its row of losses.csv (the header first)."""
    with open(folder / "losses.csv", "a") as f:
        f.write(",".join(["step", "epoch", *means]) + "\n" if f.tell() == 0 else "")
        f.write(",".join([str(step), str(epoch + 1), *(f"{m:.5f}" for m in means.values())]) + "\n")
    line = f"epoch {epoch + 1}/{args.epochs}  step {step}/{last_step}  " + "  ".join(
        f"{name} {mean:.4f}" for name, mean in means.items())
    if images_per_s:   # the time left counts days: runs may be long
        left = (last_step - step) * args.batch_size / images_per_s
        line += f"  {images_per_s:,.0f} img/s  " + (f"{left // 86400:.0f} d " if left >= 86400 else "") + time.strftime(
            "%H:%M:%S left", time.gmtime(left))
    print(line, flush=True)


# --- Data --------------------------------------------------------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class Data:
    """Images as one uint8 tensor (N, C, H, W) and labels (N,): on the device when they fit a quarter of its free
    memory (the networks need the rest), else in host memory, each batch copied over."""

    def __init__(self, images, labels, class_names, device):
        self.device, self.class_names, self.n_classes = device, class_names, len(class_names)
        self.shape = tuple(images.shape[1:])   # (C, H, W)
        fits = device.type != "cuda" or images.nbytes < torch.cuda.mem_get_info(device)[0] / 4
        self.images, self.labels = (images.to(device), labels.to(device)) if fits else (images, labels)

    def __str__(self):
        k = self.n_classes
        return f"{len(self.images):,} images, {k} class{'es' * (k > 1)}, {self.shape[0]} channel(s), {self.shape[1]} px"

    def batches(self, batch_size, epoch, seed, skip=0):
        """An epoch of (images in [-1, 1], labels), ordered by (seed, epoch) alone, so a resumed run sees the
        batches an unbroken one would; `skip`: those already seen. The short last batch is dropped."""
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        order = order.to(self.images.device)   # once an epoch: a copy to a GPU waits for it
        for i in range(skip, len(order) // batch_size):
            index = order[i * batch_size:(i + 1) * batch_size]
            images, labels = self.images[index], self.labels[index]
            if images.device != self.device:   # from pinned memory, the copy overlaps the GPU's work
                images, labels = (t.pin_memory().to(self.device, non_blocking=True) for t in (images, labels))
            yield images.float().div_(127.5).sub_(1), labels


def load_data(args, device, checkpoint=None, train=True):
    """The dataset the flags name, resized once to --img-size."""
    root, size = Path(args.data_root or "data"), args.img_size
    if args.dataset == "fake":   # grey noise with a bright square whose place is the class
        labels, classes = torch.arange(512) % 10, [str(k) for k in range(10)]
        images = torch.randint(0, 40, (512, 1, 32, 32), generator=torch.Generator().manual_seed(args.seed),
                               dtype=torch.uint8)
        for k in range(10):
            images[labels == k, :, k // 4 * 8:k // 4 * 8 + 8, k % 4 * 8:k % 4 * 8 + 8] = 255
    elif args.dataset == "folder":
        if not args.data_root:
            raise UserError("--dataset folder: give --data-root DIR, the folder of your images")
        images, labels, classes = folder_images(root, size)
    else:
        images, labels, classes = torchvision_images(args.dataset, root, train)
    if len(images) < args.batch_size:
        raise UserError(f"the dataset has {len(images)} images, fewer than --batch-size {args.batch_size}")
    if checkpoint and checkpoint["n_classes"] != len(classes):   # a folder changed since the run began
        raise UserError(f"the data has {len(classes)} classes; the run trained on {checkpoint['n_classes']}")
    return Data(resize(images, size), labels, classes, device)


def resize(images, size):
    """uint8 (N, C, H, W) -> (N, C, size, size), antialiased bilinear, a chunk at a time (a float copy of a whole
    dataset takes four times its bytes: CIFAR-10 at 128 px, 10 GB)."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8, device=images.device)
    for part, chunk in zip(out.split(1000), images.split(1000)):
        part.copy_(F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True).round_())
    return out


def torchvision_images(name, root, train):
    kind = {"mnist": torchvision.datasets.MNIST, "fashion-mnist": torchvision.datasets.FashionMNIST,
            "cifar10": torchvision.datasets.CIFAR10}[name]
    raw = root / kind.__name__ / "raw"
    for file, md5 in getattr(kind, "resources", []):   # torchvision would take a damaged .gz for a missing one
        if (raw / file).is_file() and not (raw / file[:-3]).is_file() and not check_integrity(raw / file, md5):
            raise UserError(f"{raw / file} is damaged or incomplete (not the {name} file); replace it")
    made = [p for p in (root, root / kind.__name__, raw) if not p.exists()]
    try:
        dataset = kind(str(root), train=train, download=True)
    except Exception as error:   # no network, a damaged file: one line, and no empty folders left behind
        for folder in reversed(made):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        where = (f"undamaged files in {raw}/ (one there cannot be read)" if any(raw.glob("*-ubyte")) else
                 f"cifar-10-python.tar.gz in {root}/" if name == "cifar10" else
                 f"the four *-ubyte.gz files (train/t10k images and labels) in {raw}/")
        raise UserError(f"could not load {name} ({type(error).__name__}); without a network, put {where}")
    images = torch.as_tensor(dataset.data)
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2).contiguous()   # (N, C, H, W)
    return images, torch.as_tensor(dataset.targets), dataset.classes


def folder_images(root, size):
    """Class sub-folders of images (or images: one class) as uint8 (N, C, size, size), each image's centre square
    resized; grey unless an image has colour. Decoded once, a thread per core, and cached in ~/.cache/gan-scripts
    under a key of the files' names, sizes and times, and of `size`."""
    if not root.is_dir():
        raise UserError(f"--data-root {root} is not a folder")
    def images_in(folder):   # names, sorted (not macOS's ._x.jpg shadows); strings: a folder may hold 200,000
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if e.name.lower().endswith(IMAGE_SUFFIXES) and e.name[0] != "."
                          and e.is_file())
    with os.scandir(root) as entries:
        folders = sorted(e.name for e in entries if e.is_dir() and e.name[0] != ".")   # not .ipynb_checkpoints
    listed = {name: found for name in folders if (found := images_in(root / name))}   # class: its images
    loose, classes = images_in(root), list(listed) or [root.name]
    if listed and loose or not listed and not loose:
        raise UserError(f"{root} holds class sub-folders and, beside them, {len(loose)} image(s): move those into a "
                        "sub-folder (a class)" if loose else f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    names = [f"{name}/{file}" for name, found in listed.items() for file in found] or loose
    counts = [len(found) for found in listed.values()] or [len(names)]
    labels = torch.arange(len(classes)).repeat_interleave(torch.tensor(counts))
    try:
        sizes_and_times = [(s.st_size, s.st_mtime_ns) for s in map(os.stat, [f"{root}/{name}" for name in names])]
    except OSError as error:   # gone since the listing
        raise UserError(f"{error.filename} cannot be read ({error.strerror})") from None
    stem = f"{root.name}-{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]}-{size}px"
    cache = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gan-scripts"
             / f"{stem}-{hashlib.sha256(json.dumps([names, sizes_and_times]).encode()).hexdigest()[:16]}.npy")
    try:
        images = np.load(cache, mmap_mode="c")   # copy-on-write: writable, and the file stays as it is
        print(f"images: {len(names):,} from the cache {cache}", file=sys.stderr)
        return torch.from_numpy(images), labels, classes
    except (OSError, ValueError) as error:
        if not isinstance(error, FileNotFoundError):
            print(f"the cache {cache} cannot be read: decoding the images again", file=sys.stderr)
    print(f"decoding {len(names):,} images in {root}, once: later starts read them from a cache", file=sys.stderr)
    images, colour, pool = np.empty((len(names), 3, size, size), np.uint8), False, ThreadPoolExecutor()
    try:   # threads: the decoders let go of the GIL
        for i, pixels in enumerate(pool.map(decode, [root / name for name in names], [size] * len(names))):
            images[i], colour = pixels, colour or not (pixels[:1] == pixels[1:]).all()
    finally:   # after an error or a Ctrl-C, the images not yet begun are not decoded
        pool.shutdown(cancel_futures=True)
    images = images if colour else np.ascontiguousarray(images[:, :1])
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        for old in cache.parent.glob(f"{glob.escape(stem)}-*.npy"):   # this folder's stale caches
            old.unlink(missing_ok=True)
        save_atomically(images, cache)
        print(f"images cached in {cache} ({images.nbytes / 2**20:,.1f} MB); delete it to free the space",
              file=sys.stderr)
    except OSError as error:
        print(f"no cache written ({error.strerror or error}): the images are decoded at every start", file=sys.stderr)
    return torch.from_numpy(images), labels, classes


def decode(path, size):
    """One image as uint8 (3, size, size): its shorter side resized to size (antialiased), then its centre square."""
    try:
        with Image.open(path) as image:
            pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)   # (3, H, W)
    except Exception as error:   # truncated, not an image, too large, gone: the file is named
        raise UserError(f"{path} cannot be read ({error}); replace or remove it") from None
    return center_crop(resize_image(pixels, size, antialias=True), size).numpy()


# --- Grids, samples and files ------------------------------------------------------------------
def save_grid(images, folder, name, nrow=8):
    """A grid of images in [-1, 1]; an epoch's grid joins progress.gif as well."""
    save_image(images.float().cpu(), folder / name, nrow=nrow, normalize=True, value_range=(-1, 1), padding=2)
    if name.startswith("epoch_"):
        grids = [Image.open(p) for p in sorted(folder.glob("epoch_*.png"))]
        grids[0].save(folder / "progress.gif", save_all=True, append_images=grids[1:], duration=400, loop=0)


@torch.no_grad()
def sample(generator, n, args, n_classes, label=None):
    """n images in [-1, 1] from G, and for a conditional G their labels: all `label`, else 0, 1, ..., K-1, 0, ..."""
    z = torch.randn(n, args.latent_dim, device=next(generator.parameters()).device)
    if not args.conditional:   # to the host a chunk at a time: N may be larger than the device's memory
        return torch.cat([generator(chunk).cpu() for chunk in z.split(1000)]), None
    labels = torch.arange(n, device=z.device) % n_classes if label is None else torch.full((n,), label, device=z.device)
    return torch.cat([generator(zs, ys).cpu() for zs, ys in zip(z.split(1000), labels.split(1000))]), labels.cpu()


def generate(generator, args, n_classes):
    """--generate N: N samples from G (uint8 images, and labels) with the same --seed giving the same ones."""
    seed_everything(args.seed)
    images, labels = sample(generator, args.generate, args, n_classes, getattr(args, "label", None))
    arrays = {"images": images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)}
    nrow = n_classes * max(1, 10 // n_classes) if args.conditional else 10   # conditional: a column per class
    save_samples(Path(args.out), images[:100], nrow, **arrays, **({} if labels is None else {"labels": labels}))


def save_samples(out, grid, nrow, **arrays):
    """Arrays (images, labels, ...) to a new generated*.npz, never over an earlier one, and a grid beside it."""
    writable(out)
    path = next(p for n in range(1, sys.maxsize) if not (p := out / f"generated{f'-{n}' * (n > 1)}.npz").exists())
    np.savez_compressed(path, **{name: array.cpu().numpy() for name, array in arrays.items()})
    save_grid(grid, out, path.with_suffix(".png").name, nrow)
    n = len(next(iter(arrays.values())))
    print(f"wrote {n} sample{'s' * (n > 1)} to {path} and a grid to {path.with_suffix('.png')}")


def writable(folder):
    try:   # refused before any work is done that would then be lost
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise UserError(f"cannot write in {folder} ({error.strerror or error}); nothing was changed")


@contextmanager
def claim_folder(out, resume_step=None):
    """The run's folder, locked while the block runs (the OS lets go if the process dies), so that two processes
    never train one run: a new run takes `out` if it is new or empty, else out-2, out-3, ...; a resumed run its
    own, its losses.csv cut back to the checkpoint's step (a killed run may have logged past it)."""
    out = out.resolve() if out.name in ("", "..") else out
    if out.is_file():
        raise UserError(f"--out {out} is a file, not a folder; choose another --out")
    taken = lambda path: path.is_dir() and any(   # another run's (not what Finder and Explorer leave there)
        f.name not in ("lock", ".DS_Store", "Thumbs.db", "desktop.ini") for f in path.iterdir())
    for path in (out.with_name(f"{out.name}-{n}") if n > 1 else out for n in range(1, sys.maxsize)):
        if resume_step is None and taken(path):
            continue
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the run folder {path} ({error.strerror}); choose another --out") from None
        writable(path)
        lock = open(path / "lock", "a+")
        try:   # Windows: a byte far past the process number, which others may then read
            lock.seek(1 << 20)
            msvcrt.locking(lock.fileno(), msvcrt.LK_NBLCK, 1) if os.name == "nt" else fcntl.flock(
                lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if isinstance(error, BlockingIOError) or os.name == "nt" and error.errno in (13, 36):   # held
                if resume_step is not None:
                    raise UserError(f"{path} is being trained by process {lock.seek(0) or lock.read().strip()}: let "
                                    "it finish, or stop it") from None
                lock.close()
                continue
            print(f"{path} cannot be locked here ({error.strerror}): train it from one process only", file=sys.stderr)
        if resume_step is not None or not taken(path):   # still empty, now that it is ours
            lock.truncate(0)
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            if resume_step is not None and (path / "losses.csv").is_file():
                header, *rows = (path / "losses.csv").read_text().splitlines(keepends=True) or [""]
                kept = [row for row in rows if row.split(",")[0].isdigit() and int(row.split(",")[0]) <= resume_step]
                (path / "losses.csv").write_text(header + "".join(kept))
            try:
                yield path
            finally:
                if os.name == "nt":   # Windows frees a lock left on a closed file only "eventually"
                    lock.seek(1 << 20)
                    msvcrt.locking(lock.fileno(), msvcrt.LK_UNLCK, 1)
                lock.close()
            return
        lock.close()


def save_atomically(obj, path):
    """Write to a .tmp file, then rename: a crash, a kill or a second Ctrl-C mid-write leaves the old file whole."""
    tmp = Path(f"{path}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, obj) if isinstance(obj, np.ndarray) else torch.save(obj, f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path, script):
    """A checkpoint.pt or generator snapshot written by `script`, loaded safely (weights only)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except Exception as error:
        raise UserError(f"checkpoint {path} cannot be read ({type(error).__name__}); is it a complete .pt file?")
    owner = checkpoint.get("script") if isinstance(checkpoint, dict) else None
    if owner != script:
        raise UserError(f"checkpoint {path} was written by {owner or 'something else'}, not {script}.py")
    return checkpoint
