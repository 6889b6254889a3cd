"""Training data for the GAN scripts: a dataset decoded once into one uint8 tensor, batches cut from it.

A folder of images is decoded once, a thread per core, and cached as a .npy file that later starts
memory-map: in ~/.cache/gan-scripts/ ($XDG_CACHE_HOME/gan-scripts/), or where that cannot be written, in
the data folder's .gan-cache/. Deleting them frees the space; the next start decodes again. Data that fits a
quarter of a CUDA device's free memory lives on the device; larger data stays in host memory and each
batch is copied over on its own (GAN_DEVICE_DATA_BUDGET_MB sets the share in MB; 0: always the host)."""
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.datasets.utils import check_integrity
from torchvision.transforms.functional import center_crop, resize

from common import UserError

try:   # torchvision 0.29 deprecates its decoders for torchcodec's: until they go, they spare PIL's Python overhead
    from torchvision.io import ImageReadMode, decode_image
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision.io.image")
except ImportError:   # gone: PIL decodes everything
    decode_image = None

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
GREY_MODES = ("L", "1", "I;16", "I")
CACHE_FOLDER = ".gan-cache"
CACHE_VERSION = 1   # part of the key: a change in how images are decoded makes old caches stale


class ImageData:
    """All images as one uint8 tensor (N, C, H, W) and int64 labels (N,): on the device when they fit
    its share of memory (device_budget), else in host memory, where each batch is cut and copied over."""

    def __init__(self, images, labels, class_names, device):
        self.device, self.class_names = torch.device(device), list(class_names)
        self.n_classes, self.shape = len(class_names), tuple(images.shape[1:])   # shape: (C, H, W)
        self.budget = device_budget(self.device)
        self.on_host = images.nbytes > self.budget
        where = torch.device("cpu") if self.on_host else self.device
        self.images, self.labels = images.to(where), labels.to(where)
        self.pinned = self.on_host and self.device.type == "cuda"   # only pinned memory copies without waiting

    def __str__(self):
        where = (f"; in host memory ({self.images.nbytes / 2**20:,.0f} MB, over the device's share of "
                 f"{self.budget / 2**20:,.1f} MB)" if self.on_host else "")
        return (f"{len(self.images):,} images, {self.n_classes} class{'es' * (self.n_classes != 1)}, "
                f"{self.shape[0]} channel(s), {self.shape[1]} px{where}")

    def steps_per_epoch(self, batch_size):
        return len(self.images) // batch_size   # the short last batch is dropped, every epoch alike

    def batches(self, batch_size, epoch, seed, skip=0):
        """Yield (images in [-1, 1], labels) for one epoch. The order depends only on (seed, epoch), so a
        resumed run sees the batches an uninterrupted one would; `skip` passes over those already seen."""
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        order = order.to(self.images.device)
        for i in range(skip, self.steps_per_epoch(batch_size)):
            index = order[i * batch_size:(i + 1) * batch_size]
            images, labels = self._host_batch(index) if self.on_host else (self.images[index], self.labels[index])
            yield images.float().div_(127.5).sub_(1), labels

    def _host_batch(self, index):
        """The batch cut on the host into (pinned) memory, then sent without waiting: the copy overlaps
        the device's work. The caching host allocator keeps a buffer until its copy has finished."""
        images = torch.empty((len(index), *self.shape), dtype=torch.uint8, pin_memory=self.pinned)
        labels = torch.empty(len(index), dtype=torch.long, pin_memory=self.pinned)
        torch.index_select(self.images, 0, index, out=images)
        torch.index_select(self.labels, 0, index, out=labels)
        return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def device_budget(device):
    """Bytes of data that may live on `device`. GAN_DEVICE_DATA_BUDGET_MB, when set; else a quarter of
    a CUDA device's free memory: the networks, their gradients and optimiser moments, the activations
    and the allocator's cache need the rest, and the device may be shared. The CPU (and MPS, whose
    memory is the host's) keep everything: the data is in host memory either way."""
    given = os.environ.get("GAN_DEVICE_DATA_BUDGET_MB")
    if given is not None:
        try:
            return max(0.0, float(given)) * 2**20
        except ValueError:
            raise UserError(f"GAN_DEVICE_DATA_BUDGET_MB={given!r} is not a number of megabytes")
    return torch.cuda.mem_get_info(device)[0] / 4 if device.type == "cuda" else math.inf


def load_data(args, device, train=True):
    """The dataset named by the flags, resized once to --img-size, as an ImageData for `device`."""
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


# --- Folders: decoded once, in parallel, into a cache that later starts memory-map ----------------
def folder_images(root, size):
    """A folder whose sub-folders are the classes, or whose images are one class: uint8 (N, C, size, size)
    (grey only if every image is), labels (N,), class names. Read from the cache when it matches the
    folder's files (names, sizes, modification times) and `size`; else decoded and cached."""
    if not root.is_dir():
        raise UserError(f"--data-root {root} is not a folder")
    with os.scandir(root) as entries:
        folders = sorted(e.name for e in entries if e.is_dir() and e.name != CACHE_FOLDER)
    listed = [(c, found) for c in folders if (found := _image_names(root / c))]
    loose = _image_names(root)
    if listed and loose:
        raise UserError(f"{root} holds class sub-folders and, beside them, {len(loose)} image(s) that would be "
                        "ignored; move those into a sub-folder (a class) of their own")
    if not listed and not loose:
        raise UserError(f"{root} holds no images (expected class sub-folders of .png/.jpg files)")
    classes = [c for c, _ in listed] or [root.name]
    names = [f"{c}/{name}" for c, found in listed for name in found] or loose
    counts = [len(found) for _, found in listed] or [len(loose)]
    key = hashlib.sha256(json.dumps([CACHE_VERSION, size, len(names)]).encode() + "\0".join(names).encode()
                         + _sizes_and_times(root, names).tobytes()).hexdigest()[:16]
    places = _cache_places(root, size)
    images = next((found for folder, stem in places
                   if (found := _read_cache(folder / f"{stem}-{key}", len(names), size)) is not None), None)
    if images is None:
        images = _decode_and_cache(root, names, size, places, key, classes, counts)
    return torch.from_numpy(images), torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)), classes


def _image_names(folder):
    """The names of the image files directly in `folder`, sorted."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file())


def _sizes_and_times(root, names):
    """int64 (N, 2): each file's size and modification time in ns. A thread per core stats the files (a
    stat releases the GIL), as git does for its index: one thread takes seconds for 200,000 files."""
    def stat(chunk):
        try:
            return [(info.st_size, info.st_mtime_ns) for info in map(os.stat, chunk)]
        except OSError as error:   # removed or unreadable since the listing
            raise UserError(f"{error.filename} cannot be read ({error.strerror})") from None
    prefix = f"{root}{os.sep}"
    paths = [prefix + name for name in names]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        rows = [row for part in pool.map(stat, [paths[i:i + 4096] for i in range(0, len(paths), 4096)]) for row in part]
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def _cache_places(root, size):
    """Where a folder's cache may live, in order: the user's cache folder, under a name that tells folders
    apart (inside the data, torchvision's ImageFolder would take it for a class and fail), else inside
    the data folder (no room or no home)."""
    user = Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "gan-scripts"
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    return [(user, f"{root.resolve().name}-{tag}-{size}px"), (root / CACHE_FOLDER, f"{size}px")]


def _sample_crc(path):
    """A CRC of 65 blocks spread over the file: a truncated, zeroed or swapped file is caught in
    milliseconds, where checksumming all of a 10 GB file would cost every start its seconds."""
    length, crc = os.path.getsize(path), 0
    with open(path, "rb") as f:
        for i in range(65):
            f.seek(max(0, length - 4096) * i // 64)
            crc = zlib.crc32(f.read(4096), crc)
    return crc


def _index_checksum(index):
    return hashlib.sha256(json.dumps({k: v for k, v in index.items() if k != "checksum"}, sort_keys=True)
                          .encode()).hexdigest()[:16]


def _read_cache(base, count, size):
    """The cached images (memory-mapped) if base.json and base.npy exist and agree; None otherwise."""
    index_path, array_path = Path(f"{base}.json"), Path(f"{base}.npy")
    if not index_path.is_file():
        return None
    try:
        index = json.loads(index_path.read_text())
        images = np.load(array_path, mmap_mode="c")   # copy-on-write: torch gets a writable array, the file stays
        if (index["checksum"] == _index_checksum(index) and images.dtype == np.uint8
                and images.shape == (count, index["channels"], size, size)
                and array_path.stat().st_size == index["npy_bytes"] and _sample_crc(array_path) == index["crc"]):
            print(f"images: {count:,} from the cache {array_path} ({index['npy_bytes'] / 2**20:,.1f} MB)",
                  file=sys.stderr, flush=True)
            return images
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    print(f"the cache {array_path} is damaged or incomplete: decoding the images again", file=sys.stderr)
    return None


def _decode_and_cache(root, names, size, places, key, classes, counts):
    """Decode every image into a new .npy in the first cache folder that takes it (else into memory); its
    index (.json) is written last, so a cache cut short is never read. Stale caches of the folder go."""
    try:
        with Image.open(root / names[0]) as first:
            grey = first.mode in GREY_MODES   # a colour image among grey ones starts the decoding again
    except Exception as error:
        raise UserError(f"{root / names[0]} cannot be read ({error}); replace or remove it")
    for _ in range(2):
        shape = (len(names), 1 if grey else 3, size, size)
        images, tmp, folder, stem, why = _new_array(places, shape)
        try:
            if _decode(root, names, size, grey, images):
                break
        except BaseException:
            del images
            if tmp:
                tmp.unlink()
                if folder.name == CACHE_FOLDER and not any(folder.iterdir()):   # made for nothing: it goes
                    folder.rmdir()
            raise
        del images
        tmp and tmp.unlink(missing_ok=True)
        print("colour images among grey ones: decoding again in colour", file=sys.stderr)
        grey = False
    if tmp is None:
        print(f"no cache could be written ({why}): the images are decoded at every start", file=sys.stderr)
        return images
    images.flush()
    del images
    base = folder / f"{stem}-{key}"
    os.replace(tmp, f"{base}.npy")
    index = {"version": CACHE_VERSION, "key": key, "folder": str(root), "images": len(names), "size": size,
             "channels": shape[1], "mode": "L" if grey else "RGB", "classes": classes, "counts": counts,
             "npy_bytes": os.path.getsize(f"{base}.npy"), "crc": _sample_crc(f"{base}.npy")}
    index["checksum"] = _index_checksum(index)
    Path(f"{base}.json.tmp").write_text(json.dumps(index))
    os.replace(f"{base}.json.tmp", f"{base}.json")
    for old in folder.glob(f"{stem}-*"):   # ours: an older key of this folder and size, or a killed run's
        if not old.name.startswith(base.name) and (not old.name.endswith(".tmp") or
                                                   time.time() - old.stat().st_mtime > 3600):
            old.unlink(missing_ok=True)
    remove = folder if folder.name == CACHE_FOLDER else f"{base}.npy and .json"   # the user cache holds others too
    print(f"images: {len(names):,} decoded and cached in {base}.npy ({index['npy_bytes'] / 2**20:,.1f} MB), "
          f"read from there on later starts; delete {remove} to free the space", file=sys.stderr, flush=True)
    return np.load(f"{base}.npy", mmap_mode="c")


def _decode(root, names, size, grey, images):
    """Decode the images into `images`, a thread per core (the decoders let go of the GIL), with
    a progress line every 5 s. False when a colour image turns up in a set taken for grey."""
    def work(start):
        for i in range(start, min(start + 256, len(names))):
            try:
                pixels = _read(root / names[i], size, grey)
            except Exception as error:   # truncated, not an image, too large: the file is named
                raise UserError(f"{root / names[i]} cannot be read ({error}); replace or remove it") from None
            if pixels is None:
                return None
            images[i] = pixels
        return min(256, len(names) - start)

    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    began = last = time.monotonic()
    done = 0
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(work, start) for start in range(0, len(names), 256)]
        try:
            for future in as_completed(futures):
                if (count := future.result()) is None:
                    return False
                done, now = done + count, time.monotonic()
                if now - last >= 5:
                    rate, last = done / (now - began), now
                    print(f"decoding {root}: {done:,} of {len(names):,} images, {rate:,.0f} img/s, "
                          f"{time.strftime('%H:%M:%S', time.gmtime((len(names) - done) / rate))} left",
                          file=sys.stderr, flush=True)
        finally:
            for future in futures:   # after an error or a colour image, the rest need not run
                future.cancel()
    return True


def _read(path, size, grey):
    """One image as uint8 (C, size, size): its shorter side resized to size (antialiased bilinear), then its
    centre square; None for a colour image in a set taken for grey. torchvision decodes PNG and JPEG
    (C++); PIL the rest, and what torchvision refuses, with errors that say what is wrong."""
    data = path.read_bytes()
    image = None
    if decode_image and data.startswith((b"\x89PNG", b"\xff\xd8")):
        try:
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.UNCHANGED)
        except RuntimeError:
            pass
    if image is None or image.dtype != torch.uint8 or image.shape[0] not in (1, 3):   # 16 bits, alpha, damage
        with Image.open(path) as picture:
            picture = picture.convert("L" if picture.mode in GREY_MODES else "RGB")
            image = torch.from_numpy(np.array(picture)).reshape(*picture.size[::-1], -1).permute(2, 0, 1)
    if image.shape[0] != 1 and grey:
        return None
    image = image.expand(1 if grey else 3, -1, -1)   # a grey image in a colour set: its value in each channel
    if image.shape[-2:] != (size, size):
        image = center_crop(resize(image, size, antialias=True), size)
    return image.numpy()


def _new_array(places, shape):
    """(array, its .npy.tmp file, folder, stem, None) in the first writable cache folder; else an
    in-memory array and (None, None, None, why)."""
    errors = []
    for folder, stem in places:
        tmp = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=folder, prefix=f"{stem}-", suffix=".npy.tmp")
            os.close(handle)
            umask = os.umask(0o22)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)   # as open() would make it: mkstemp's 0600 would hide the cache from others
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            with open(tmp, "r+b") as f:   # claim the space now: a full disk under a memory map is a crash
                try:
                    os.posix_fallocate(f.fileno(), 0, os.path.getsize(tmp))
                except OSError as error:
                    if error.errno not in (95, 22):   # not supported here: fine; out of space: next place
                        raise
            return array, Path(tmp), folder, stem, None
        except OSError as error:
            tmp and Path(tmp).unlink(missing_ok=True)
            errors.append(f"{folder}: {error.strerror or error}")
    return np.empty(shape, dtype=np.uint8), None, None, None, "; ".join(errors)
