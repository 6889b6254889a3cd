"""What the GAN scripts share: flags, data (decoded once, batches cut on the device), grids and small file helpers.
No network, loss or training step lives here, and nothing runs the loop: each script's main() writes its own."""
import argparse, glob, hashlib, importlib, inspect, json, math, os, random, re, signal, sys  # noqa: E401
from contextlib import contextmanager, suppress
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps
from torchvision.transforms.functional import center_crop, resize as resize_image
fcntl = None if os.name == "nt" else importlib.import_module("fcntl")   # for run folders' locks; Windows: none


class UserError(ValueError):
    """A mistake in the command line or in the files it names: one line on stderr and exit code 2."""


def run_main(main, argv=None):
    """main(argv): a mistake, a file that cannot be read or written or memory refused is one line and exit code 2."""
    try:
        main(argv)
    except (KeyboardInterrupt, Exception) as error:
        if KeyboardInterrupt in (type(error), type(error.__context__)):   # torch.save turns one mid-write into its own
            print(f"\n{Path(sys.argv[0]).name}: interrupted; the last checkpoint, if any, is kept", file=sys.stderr)
            sys.exit(130)
        if re.search(r"out of memory|can't allocate memory", str(error)):   # CUDA's words, or the CPU allocator's
            error = UserError("not enough memory: make --batch-size, --img-size, --latent-dim, --generate N, and "
                              "--width or --blocks where the script has them smaller")
        elif not isinstance(error, (OSError, UserError)):
            raise
        where = f"{error.filename}: " if getattr(error, "filename", None) else ""   # a full disk has no file
        print(f"{Path(sys.argv[0]).name}: error: {where}{error.strerror if where else error}", file=sys.stderr)
        sys.exit(2)


# --- Flags -------------------------------------------------------------------------------------
def _number(kind, ok, rule):   # an argparse type: a bad value gets argparse's one-line error (NaN fails every test)
    def parse(text):
        with suppress(ValueError):
            if ok(value := kind(text)):
                return value
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
    parser.set_defaults(script=script, conditional=conditional, default_epochs=epochs, default_lr=lr, default_lr_d=lr_d)
    add, path = parser.add_argument, os.path.expanduser   # a quoted ~/runs is in the home folder too
    add("--dataset", default=datasets[0], choices=datasets, help="training data ('fake': made up, no files)")
    add("--data-root", type=path, help="where datasets live, in torchvision's layout (None: data); --dataset folder: "
        "your images, " + ("in trainA/ and trainB/" if script == "cyclegan" else "a sub-folder per class or all in it"))
    add("--img-size", type=positive_int, default=img_size, help="images are resized to this square size")
    add("--batch-size", type=positive_int if script == "cyclegan" else batch, default=batch_size,   # InstanceNorm: 1
        help="images per step")
    add("--epochs", type=positive_int, default=epochs, help="passes over the data")
    add("--lr", type=positive_float, default=argparse.SUPPRESS, help="learning rate of G's optimiser, and of D's "
        f"without --lr-d (default: {lr})")
    add("--lr-d", type=positive_float, default=argparse.SUPPRESS, metavar="LR", help="learning rate of D's (the "
        f"critic's) optimiser (default: --lr if given, else {lr_d or lr})")
    add("--lr-decay", action=argparse.BooleanOptionalAction, default=lr_decay, help=f"rates fall linearly to 0 by a "
        f"{epochs}-epoch run's end (a shorter run is its start)" if script != "cyclegan" else "over the second half")
    if latent_dim:   # not cyclegan's
        add("--ema", type=fraction, default=ema, metavar="DECAY", help="grids, snapshots, samples: G's moving average")
        add("--latent-dim", type=positive_int, default=latent_dim, help="size of the noise vector z")
    add("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:N or mps")
    add("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the networks (GPUs)")
    add("--amp", action=argparse.BooleanOptionalAction, default=False, help="bfloat16 products (GPUs from Ampere on)")
    add("--seed", type=seed, default=0, help="the same seed gives the same numbers on the same CPU (not on CUDA)")
    add("--out", type=path, default=f"runs/{script}", help="run folder; a taken one gives the next free name (-2, ...)")
    add("--log-every", type=positive_int, default=100, help="progress line and losses.csv row every N steps")
    add("--snapshot-every", type=positive_int, default=5, metavar="K", help="keep G of epoch 1, each K-th and the last")
    add("--checkpoint-every", type=positive_float, default=5.0, metavar="MIN", help="checkpoint.pt every MIN minutes")
    add("--max-steps", type=positive_int, help="stop once the run has made N steps, counted from its start")
    add("--resume", type=path, nargs="?", const="last", metavar="CKPT", help="continue CKPT, or the run trained last")
    add("--generate", type=positive_int, metavar="N", help="no training: N samples from --resume CKPT or the last run")
    if conditional:
        add("--label", type=int, metavar="K", help="with --generate: only class K (None: every class in turn)")
    if smoothing:
        add("--label-smoothing", type=fraction, default=0.0, metavar="S", help="D's real targets drawn from [1-S, 1]")
    add("--label-exchange", type=probability, default=0.0, metavar="P", help="chance that a D step swaps real and fake")
    return parser


def parse_args(parser, argv=None):
    """(args, checkpoint or None). With --resume or --generate: the run's flags, but for those that may change."""
    args, checkpoint = parser.parse_args(argv), None
    if args.resume or args.generate:
        path = last_run(Path(args.out), args.script) if args.resume in (None, "last") else Path(args.resume)
        path = path / "checkpoint.pt" if path.is_dir() else path
        checkpoint = load_checkpoint(path, args.script)
        saved = checkpoint["args"]   # argparse fills in a default only where the namespace has no value
        keep = {k: v for k, v in saved.items() if k not in ("resume", "generate", "out", "max_steps", "label")}
        args = parser.parse_args(argv, namespace=argparse.Namespace(**keep))
        may_change = {"epochs", "max_steps", "device", "compile", "amp", "log_every", "snapshot_every", "data_root",
                      "checkpoint_every", "resume", "generate", "out", "label", *(["seed"] if args.generate else [])}
        for name, value in vars(args).items():   # a changed --lr would otherwise be silently ignored
            if name in saved and name not in may_change and saved[name] != value:
                raise UserError(f"--{name.replace('_', '-')} cannot change when resuming (the run used {saved[name]})")
        if not args.generate and ("step" not in checkpoint or path.name != "checkpoint.pt"):   # a copy: over its run
            raise UserError(f"{path} cannot be resumed, a run's checkpoint.pt can (a snapshot is for --generate N; a "
                            "copied checkpoint goes into a new folder, as checkpoint.pt)")
        args.resume, args.out, step = str(path), str(path.parent), checkpoint.get("step")   # a snapshot: epoch's end
        print(f"{'generating from' if args.generate else 'resuming'} {path}: {saved['dataset']}, "
              f"{'' if step is None else f'step {step}, '}{checkpoint['epoch']} of {saved['epochs']} epochs complete")
    if getattr(args, "label", None) is not None and not (args.generate and 0 <= args.label < checkpoint["n_classes"]):
        raise UserError(f"--label {args.label}: the run's classes are 0 to {checkpoint['n_classes'] - 1}" if
                        args.generate else "--label K chooses the class of generated samples: use it with --generate N")
    if not hasattr(args, "lr_d"):   # a new run: D's rate is a given --lr, else the script's own
        args.lr_d = getattr(args, "lr", args.default_lr_d or args.default_lr)
    args.lr = getattr(args, "lr", args.default_lr)
    if args.data_root or args.dataset != "folder":   # a whole path: the run resumes from any working folder
        args.data_root = str(Path(args.data_root or "data").resolve())
    return args, checkpoint


def last_run(out, script):
    """The run trained last among `out`, out-2, ...; it must have a checkpoint to go on from."""
    runs = [p for p in out.parent.glob("*") if re.fullmatch(re.escape(out.name) + r"(-\d+)?", p.name) and p.is_dir()]
    trained = lambda p: max((f.stat().st_mtime_ns for f in (p / "losses.csv", p / "checkpoint.pt") if f.exists()),
                            default=p.stat().st_mtime_ns)   # by the run's own files, not --generate's
    last = max(runs, key=trained, default=None)
    if last is None or not (last / "checkpoint.pt").is_file():
        raise UserError(f"{last}, the {script} run trained last, has no checkpoint (it stopped in its first epoch), "
                        "so it cannot go on: start it again, or continue another run with --resume FOLDER" if last else
                        f"no {script} run at {out} or {out.name}-2, ... (train first, or give --resume CKPT)")
    return last


def pick_device(name, amp=False):
    try:   # as a tensor names it: cpu:0 is cpu (batches are copied only between devices), cuda is cuda:0
        probe = torch.empty(0, device=name if name != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    except (RuntimeError, AssertionError):   # a name torch does not know, or a device this machine lacks
        raise UserError(f"--device {name} is not available here (use auto, cpu, cuda, cuda:N or mps)") from None
    if amp and probe.is_cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise UserError(f"--amp: {torch.cuda.get_device_name(probe.device)}: no bfloat16 (GPUs have it from Ampere on)")
    torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = True   # CUDA: fixed shapes; TF32 Linear
    return probe.device


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state():   # the CPU's: a resumed CUDA run draws its noise anew from --seed (CUDA's kernels are not exact)
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(rng):
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])


@torch.no_grad()
def update_average(average, network, decay, n):
    """The average's n-th update (from 0), decay (1 + n) / (10 + n) up to `decay`; its weight a host float (no sync)."""
    weight = 1.0 if n == 0 else 1 - min(decay, (1 + n) / (10 + n))
    pairs = [(mine, theirs) for mine, theirs in zip([*average.parameters(), *average.buffers()],
             [*network.parameters(), *network.buffers()]) if mine.is_floating_point()]   # not BatchNorm's batch count
    torch._foreach_lerp_([mine for mine, _ in pairs], [theirs for _, theirs in pairs], weight)


@contextmanager
def stop_requests():
    """In the block, Ctrl-C and SIGTERM land in the list it gives (the loop stops after its step); a second stops."""
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
    if images_per_s:   # the time left in hours and minutes: a run may take days
        minutes = round((last_step - step) * args.batch_size / images_per_s / 60)
        line += f"  {images_per_s:,.0f} img/s  {minutes // 60}:{minutes % 60:02d} left"
    print(line, flush=True)


# --- Data --------------------------------------------------------------------------------------
class Data:
    """uint8 images (N, C, H, W) and labels (N,), on the device when they fit a quarter of its free memory."""

    def __init__(self, images, labels, class_names, device):
        self.device, self.class_names, self.n_classes = device, class_names, len(class_names)
        self.shape = tuple(images.shape[1:])   # (C, H, W)
        fits = device.type != "cuda" or images.nbytes < torch.cuda.mem_get_info(device)[0] / 4
        self.images, self.labels = (images.to(device), labels.to(device)) if fits else (images, labels)

    def __str__(self):
        k = self.n_classes
        return f"{len(self.images):,} images, {k} class{'es' * (k > 1)}, {self.shape[0]} channel(s), {self.shape[1]} px"

    def batches(self, batch_size, epoch, seed, skip=0):
        """An epoch of (images in [-1, 1], labels), in an order of (seed, epoch) alone: resumed, `skip` those seen."""
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        order = order.to(self.images.device)   # once an epoch: a copy to a GPU waits for it
        for i in range(skip, len(order) // batch_size):
            index = order[i * batch_size:(i + 1) * batch_size]
            images, labels = self.images[index], self.labels[index]
            if images.device != self.device:   # from pinned memory, the copy overlaps the GPU's work
                images, labels = (t.pin_memory().to(self.device, non_blocking=True) for t in (images, labels))
            yield images.float().div_(127.5).sub_(1), labels


def load_data(args, device, checkpoint=None, train=True):
    """The dataset the flags name, resized once to --img-size; resumed, it must be the run's own."""
    root, size = Path(args.data_root or "data"), args.img_size
    if checkpoint and args.dataset != "fake" and not root.is_dir():   # moved since the run began
        raise UserError(f"the run's data was in {root}, which is gone: if it moved, give --data-root DIR")
    if args.dataset == "fake":   # grey noise with a bright square whose place is the class
        labels, classes = torch.arange(512) % 10, [str(k) for k in range(10)]
        images = torch.randint(0, 40, (512, 1, 32, 32), generator=torch.Generator().manual_seed(args.seed)).byte()
        for k in range(10):
            images[labels == k, :, k // 4 * 8:k // 4 * 8 + 8, k % 4 * 8:k % 4 * 8 + 8] = 255
    elif args.dataset == "folder":
        if not args.data_root:
            raise UserError("--dataset folder: give --data-root DIR, the folder of your images")
        images, labels, classes = folder_images(root, size)
    else:
        kind = {"mnist": torchvision.datasets.MNIST, "fashion-mnist": torchvision.datasets.FashionMNIST,
                "cifar10": torchvision.datasets.CIFAR10}[args.dataset]
        try:
            dataset = kind(str(root), train=train, download=True)
        except Exception as error:   # no network, or a damaged file (which torchvision downloads again)
            where = f"cifar-10-python.tar.gz in {root}" if args.dataset == "cifar10" else (
                f"the four *-ubyte.gz files in {root / kind.__name__ / 'raw'}")
            raise UserError(f"could not load {args.dataset} ({type(error).__name__}); without a network, put {where}")
        images, labels, classes = torch.as_tensor(dataset.data), torch.as_tensor(dataset.targets), dataset.classes
        images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2).contiguous()   # (N, C, H, W)
    if len(images) < args.batch_size:
        raise UserError(f"the dataset has {len(images)} images, fewer than --batch-size {args.batch_size}")
    data = Data(resize(images, size), labels, classes, device)
    if checkpoint and checkpoint.get("data", str(data)) != str(data):   # a folder changed (older runs: no record)
        raise UserError(f"the data is {data}; the run trained on {checkpoint['data']}")
    return data


def resize(images, size):
    """uint8 (N, C, H, W) -> (N, C, size, size), antialiased, in chunks (in float, CIFAR-10 at 128 px takes 10 GB)."""
    if images.shape[-2:] == (size, size):   # a folder's images are decoded at their size: no copy
        return images
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8, device=images.device)
    for part, chunk in zip(out.split(1000), images.split(1000)):
        part.copy_(resize_image(chunk, [size, size], antialias=True))
    return out


def folder_images(root, size):
    """Class sub-folders of images (or images: one class) as uint8 (N, C, size, size), decoded once: cached."""
    opens = tuple(suffix for suffix, kind in Image.registered_extensions().items() if kind in Image.OPEN)   # PIL's
    images_in = lambda folder: sorted(   # names (not macOS's ._x.jpg shadows); strings: a folder may hold 200,000
        e.name for e in os.scandir(folder) if e.name.lower().endswith(opens) and e.name[0] != "." and e.is_file())
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and e.name[0] != ".")   # not .ipynb_checkpoints
    listed = {name: found for name in folders if (found := images_in(root / name))}   # class: its images
    loose, classes = images_in(root), list(listed) or [root.name]
    if listed and loose or not listed and not loose:
        raise UserError(f"{root} holds class sub-folders and, beside them, {len(loose)} image(s): move those into a "
                        "sub-folder (a class)" if loose else f"{root} holds no images")
    names = [f"{name}/{file}" for name, found in listed.items() for file in found] or loose
    labels = torch.tensor([k for k, found in enumerate(listed.values()) for _ in found] or [0] * len(names))
    sizes_and_times = [(s.st_size, s.st_mtime_ns) for s in map(os.stat, [f"{root}/{name}" for name in names])]
    key = json.dumps([names, sizes_and_times, inspect.getsource(decode)])   # a new decode() decodes them again
    stem = f"{root.name}-{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]}-{size}px"   # this folder, size
    cache = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gan-scripts"
             / f"{stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy")
    with suppress(OSError, ValueError):   # none yet, or damaged: decoded again
        return torch.from_numpy(np.load(cache, mmap_mode="c")), labels, classes   # copy-on-write: the file stays
    print(f"decoding {len(names):,} images in {root}, once: later starts read them from {cache}", file=sys.stderr)
    images, colour, pool = np.empty((len(names), 3, size, size), np.uint8), False, ThreadPoolExecutor()
    try:   # threads: the decoders let go of the GIL
        for i, pixels in enumerate(pool.map(decode, [root / name for name in names], [size] * len(names))):
            images[i], colour = pixels, colour or not (pixels[:1] == pixels[1:]).all()
    finally:   # after an error or a Ctrl-C, the images not yet begun are not decoded
        pool.shutdown(cancel_futures=True)
    images = images if colour else np.ascontiguousarray(images[:, :1])   # grey unless one image has colour
    try:   # a cache that cannot be written (a full disk, a read-only home) must not stop the run
        cache.parent.mkdir(parents=True, exist_ok=True)
        for old in cache.parent.glob(f"{glob.escape(stem)}-*.npy"):   # this folder's caches of earlier contents
            old.unlink(missing_ok=True)
        save_atomically(images, cache)
    except OSError as error:
        print(f"no cache written ({error}): the images are decoded at every start", file=sys.stderr)
    return torch.from_numpy(images), labels, classes


def decode(path, size):
    """One image as uint8 (3, size, size): its shorter side resized to size (antialiased), then its centre square."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)   # a phone's photo stands as it was taken
            if image.mode in ("I", "F") or image.mode.startswith("I;16"):   # 16-bit PNGs and TIFFs, float images
                values = np.asarray(image, np.float64)   # 0..65535 (a 16-bit type always), 0..255, or floats 0..1
                scale = 1 / 257 if "16" in image.mode or values.max() > 255 else 255 if values.max() <= 1 else 1
                image = Image.fromarray((values * scale).clip(0, 255).round().astype(np.uint8))
            if "A" in image.getbands() or "transparency" in image.info:   # transparent: white, as viewers show it
                image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
            pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)   # (3, H, W)
    except Exception as error:   # truncated, not an image, too large: the file is named
        raise UserError(f"{path} cannot be read ({error}); replace or remove it") from None
    return center_crop(resize_image(pixels, size, antialias=True), size).numpy()


# --- Grids, samples and files ------------------------------------------------------------------
def save_grid(images, folder, name, nrow=8):
    """A grid of images in [-1, 1]; an epoch's grid joins progress.gif as well."""
    torchvision.utils.save_image(images.float().cpu(), folder / name, nrow=nrow, normalize=True, value_range=(-1, 1))
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
    path = next(p for n in range(1, sys.maxsize) if not (p := out / f"generated{f'-{n}' * (n > 1)}.npz").exists())
    np.savez_compressed(path, **{name: array.cpu().numpy() for name, array in arrays.items()})
    save_grid(grid, out, path.with_suffix(".png").name, nrow)
    n = len(next(iter(arrays.values())))
    print(f"wrote {n} sample{'s' * (n > 1)} to {path} and a grid to {path.with_suffix('.png')}")


@contextmanager
def claim_folder(out, resume_step=None):
    """The run's folder, locked in the block: a new run's is `out` if new or empty, else out-2, ...; resumed: its own"""
    if resume_step is None and out.name in ("", ".."):   # --out . would take a name beside the current folder
        raise UserError(f"--out {out} names no folder of its own: name one, such as --out runs/NAME")
    taken = lambda path: path.is_file() or path.is_dir() and any(   # a file, or another run's folder (not what
        f.name not in ("lock", ".DS_Store", "Thumbs.db", "desktop.ini") for f in path.iterdir())   # Finder leaves)
    for path in (out.with_name(f"{out.name}-{n}") if n > 1 else out for n in range(1, sys.maxsize)):
        if resume_step is None and taken(path):
            continue
        path.mkdir(parents=True, exist_ok=True)
        with open(path / "lock", "w") as lock:   # the OS lets go of it when the process ends, even on kill -9
            try:
                fcntl and fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:   # another process trains it
                if resume_step is not None:
                    raise UserError(f"{path} is being trained by another process: let it finish, or stop it") from None
                continue
            except OSError:   # network and FUSE mounts without locks (Colab's Google Drive): trained unlocked
                pass
            if resume_step is not None and (path / "losses.csv").is_file():   # a killed run logged past its checkpoint
                header, *rows = (path / "losses.csv").read_text().splitlines(keepends=True) or [""]
                kept = [row for row in rows if row.split(",")[0].isdigit() and int(row.split(",")[0]) <= resume_step]
                (path / "losses.csv").write_text(header + "".join(kept))
            yield path
            return


def save_atomically(obj, path):
    """Write a .tmp file, then rename: a crash, a kill, a full disk or a second Ctrl-C leaves the old file whole."""
    tmp = Path(f"{path}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, obj) if isinstance(obj, np.ndarray) else torch.save(obj, f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path, script):
    """A checkpoint.pt (a run folder's) or generator snapshot written by `script`, loaded safely (weights only)."""
    path = Path(path) / "checkpoint.pt" if Path(path).is_dir() else Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:   # not a checkpoint (a .npz, say) or cut short; missing: the OSError's own line
        raise error if isinstance(error, OSError) else UserError(
            f"{path} is not a whole checkpoint ({type(error).__name__}): give a .pt file or a run folder") from None
    if (owner := checkpoint.get("script") if isinstance(checkpoint, dict) else None) != script:
        raise UserError(f"checkpoint {path} was written by {owner or 'something else'}, not {script}.py")
    return checkpoint
