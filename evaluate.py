"""Score a trained GAN: how close its samples are to the real data, in the eyes of a small CNN
classifier trained once on the dataset's training set.

For N generated images (default 10000) it prints:
- FD, the Frechet distance between the generated images and the 10000 test images, measured in
  the classifier's 128-d penultimate features (FID's recipe, with a network trained on this
  dataset instead of Inception), and beside it the real-data floor: N training images against
  the same test set, what a perfect generator would score with that many samples. Lower is better.
- class accuracy (conditional runs: cgan, acgan): how often the classifier names the class each
  image was conditioned on; the classifier's accuracy on the test set is the ceiling.
- coverage: the entropy of the predicted-class histogram divided by log(n_classes); 1.0 means
  every class is equally present, a collapsed generator scores near 0.
- confidence: the mean of the classifier's largest softmax probability (how digit-like the
  images look to it); real test images give the reference.

    python evaluate.py runs/gan                          # a run folder: its generated.npz, else
                                                         #   10000 samples from its checkpoint.pt
    python evaluate.py runs/cgan --n 10000 --json        # one JSON object instead of the table
    python evaluate.py runs/gan/generated.npz --dataset mnist --data-root data

A run folder's samples come from `python <script>.py --generate N --resume RUN/checkpoint.pt`,
run for you when generated.npz is missing, holds fewer than N images, or is older than the
checkpoint. The classifier (MNIST and Fashion-MNIST only: for other datasets there is no
yardstick here) trains on first use, seeded, in 1-2 minutes on 2 CPU cores, and is cached as
<data-root>/evaluate_classifier_<dataset>.pt. Images of another size (a run with --img-size 32)
are resized to 28x28 with antialiasing, and the real images get the same 28 -> 32 -> 28 round
trip, so the resizing's blur counts for neither side.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

# Datasets with a yardstick, and the test accuracy its classifier must reach to be trusted.
YARDSTICKS = {"mnist": 0.99, "fashion-mnist": 0.90}
CLASSIFIER_SIZE = 28     # the classifier sees 28x28 images, the native size of both datasets
CACHE_FORMAT = 1         # bump when the classifier or its training changes: old caches retrain
SCRIPT_DIR = Path(__file__).resolve().parent


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Score a GAN's samples: Frechet distance, class accuracy, coverage, confidence.")
    add = parser.add_argument
    add("source", metavar="RUN_DIR_OR_NPZ",
        help="a run folder, a generated.npz (images uint8 (N, C, H, W), labels (N,) if conditional) or a checkpoint.pt")
    add("--dataset", choices=("mnist", "fashion-mnist", "cifar10", "folder", "fake"), default=None,
        help="the data the run trained on (default: the run's own, else mnist)")
    add("--data-root", default=None,
        help="where the dataset lives; the classifier is cached there (default: the run's own, else data)")
    add("--n", type=common.positive_int, default=10000, help="how many generated images to score (default: 10000)")
    add("--device", default="auto",
        help="auto (the default: cuda when present), cpu, cuda, cuda:N or mps; also passed to --generate")
    add("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.n < 2:
        raise common.UserError("--n must be at least 2 (a covariance needs two samples)")
    return args


def note(text):
    """Progress notes go to stderr, so that stdout holds only the table or the JSON."""
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The yardstick: a small CNN classifier
# ---------------------------------------------------------------------------------------------
class Classifier(nn.Module):
    """image (B, C, S, S) in [-1, 1] -> class logits (B, n_classes); features() gives the
    feature_dim-wide penultimate activations the Frechet distance is measured in."""

    def __init__(self, channels, n_classes, image_size=CLASSIFIER_SIZE, width=32, feature_dim=128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),        # (B, W, S, S)
            nn.MaxPool2d(2),                                             # (B, W, S/2, S/2)
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),       # (B, 2W, S/2, S/2)
            nn.MaxPool2d(2),                                             # (B, 2W, S/4, S/4)
            nn.Flatten(),
            nn.Linear(2 * width * (image_size // 4) ** 2, feature_dim), nn.ReLU(),   # (B, feature_dim)
        )
        self.head = nn.Linear(feature_dim, n_classes)                   # (B, n_classes)

    def features(self, images):
        return self.body(images)

    def forward(self, images):
        return self.head(self.body(images))


def to_unit_range(images):
    """uint8 [0, 255] -> float [-1, 1], the range the GANs' images and the classifier live in."""
    return images.float().div(127.5).sub(1)


def train_classifier(images, labels, n_classes, epochs=3, batch_size=128, lr=3e-3, seed=0,
                     max_steps=None):
    """Train a Classifier on uint8 images (N, C, S, S) and int64 labels (N,), on their device.

    Seeded: the same data and seed give the same weights. Adam with a one-cycle schedule (warm
    up, then anneal): three epochs give 99.2% on MNIST, 91.1% on Fashion-MNIST. max_steps cuts
    training short (tests)."""
    device = images.device
    torch.manual_seed(seed)
    classifier = Classifier(images.shape[1], n_classes, image_size=images.shape[-1]).to(device)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    optimiser = torch.optim.Adam(classifier.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=total)
    shuffle = torch.Generator().manual_seed(seed)
    step = 0
    classifier.train()
    while step < total:
        order = torch.randperm(len(images), generator=shuffle).to(device)
        for index in order.split(batch_size):
            loss = F.cross_entropy(classifier(to_unit_range(images[index])), labels[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            step += 1
            if step >= total:
                break
    return classifier.eval()


@torch.no_grad()
def classify(classifier, images, batch_size=1000):
    """uint8 images (N, C, S, S) -> (features float64 (N, D) on the CPU, softmax probabilities (N, K))."""
    device = next(classifier.parameters()).device
    features, probabilities = [], []
    for chunk in images.split(batch_size):
        hidden = classifier.features(to_unit_range(chunk.to(device)))
        features.append(hidden.double().cpu())
        probabilities.append(classifier.head(hidden).softmax(1).double().cpu())
    return torch.cat(features), torch.cat(probabilities)


def classifier_path(data_root, dataset):
    return Path(data_root) / f"evaluate_classifier_{dataset}.pt"


def save_classifier(path, classifier, dataset, test_accuracy):
    """Atomic, like the checkpoints: an interrupted write never leaves a half cache behind."""
    path = Path(path)
    state = {"format": CACHE_FORMAT, "dataset": dataset, "channels": classifier.body[0].in_channels,
             "n_classes": classifier.head.out_features, "test_accuracy": float(test_accuracy),
             "state_dict": classifier.state_dict()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_classifier(path, dataset, channels, n_classes, device):
    """The cached classifier and its test accuracy, or None when there is no usable cache (none
    yet, another format, another dataset, or an unreadable file): then it is trained again."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if (state.get("format"), state.get("dataset"), state.get("channels"), state.get("n_classes")) != (
                CACHE_FORMAT, dataset, channels, n_classes):
            raise ValueError("made for something else")
        classifier = Classifier(channels, n_classes)
        classifier.load_state_dict(state["state_dict"])
    except Exception as error:
        note(f"ignoring the cached classifier {path} ({type(error).__name__}: {error}); training a new one")
        return None
    return classifier.to(device).eval(), state["test_accuracy"]


def accuracy(probabilities, labels):
    return probabilities.argmax(1).eq(torch.as_tensor(labels).cpu()).double().mean().item()


def get_classifier(dataset, data_root, train, test, device):
    """The dataset's classifier: from the cache under data_root, else trained now and cached."""
    path = classifier_path(data_root, dataset)
    cached = load_classifier(path, dataset, train.shape[0], train.n_classes, device)
    if cached:
        return cached
    note(f"training the {dataset} classifier (once; 1-2 minutes on 2 CPU cores) ...")
    start = time.perf_counter()
    classifier = train_classifier(train.images, train.labels, train.n_classes)
    test_accuracy = accuracy(classify(classifier, test.images)[1], test.labels)
    note(f"classifier: {test_accuracy:.2%} test accuracy after {time.perf_counter() - start:.0f} s")
    if test_accuracy < YARDSTICKS.get(dataset, 0):
        note(f"warning: below the {YARDSTICKS[dataset]:.0%} this yardstick should reach; its numbers are rough")
    try:
        save_classifier(path, classifier, dataset, test_accuracy)
        note(f"cached as {path}")
    except OSError as error:
        note(f"could not cache the classifier as {path} ({error.strerror or error}); it will train again next time")
    return classifier, test_accuracy


# ---------------------------------------------------------------------------------------------
# Frechet distance (float64, numpy/torch only)
# ---------------------------------------------------------------------------------------------
def gaussian_statistics(features):
    """Mean (D,) and covariance (D, D), unbiased, in float64, of samples (N, D)."""
    x = torch.as_tensor(features, dtype=torch.float64)
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / (len(x) - 1)


def frechet_distance(mean1, cov1, mean2, cov2):
    """Frechet distance between N(mean1, cov1) and N(mean2, cov2):
    |mean1 - mean2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)).

    cov1 cov2 has the eigenvalues of sqrt(cov1) cov2 sqrt(cov1), which is symmetric PSD, so
    tr((cov1 cov2)^(1/2)) is the sum of the square roots of that matrix's eigenvalues: a symmetric
    eigensolver gives them stably, where a general matrix square root (scipy's sqrtm) can return
    complex round-off. Round-off negatives of PSD eigenvalues are clamped to 0."""
    mean1, cov1, mean2, cov2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mean1, cov1, mean2, cov2))
    values, vectors = torch.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (vectors * values.clamp(min=0).sqrt()) @ vectors.T     # sqrt(cov1), symmetric
    middle = root1 @ cov2 @ root1
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_root
    return max(distance.item(), 0.0)   # a distance: round-off below 0 means 0


def frechet_distance_of(features1, features2):
    """The Frechet distance between the Gaussians fitted to two feature samples (N1, D), (N2, D)."""
    return frechet_distance(*gaussian_statistics(features1), *gaussian_statistics(features2))


def coverage(probabilities, n_classes):
    """Entropy of the predicted-class histogram / log(n_classes): 1 = all classes equally often."""
    counts = torch.bincount(probabilities.argmax(1), minlength=n_classes).double()
    share = counts / counts.sum()
    share = share[share > 0]
    return (-(share * share.log()).sum() / math.log(n_classes)).item()


def confidence(probabilities):
    return probabilities.max(1).values.mean().item()


# ---------------------------------------------------------------------------------------------
# Finding the samples: a run folder, an npz or a checkpoint
# ---------------------------------------------------------------------------------------------
def read_run(checkpoint_path):
    """(script, the run's flags) from a checkpoint written by one of the scripts."""
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise common.UserError(f"checkpoint {checkpoint_path} cannot be read ({type(error).__name__}); "
                               "is it a complete .pt file?")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("script"), str):
        raise common.UserError(f"{checkpoint_path} is not a checkpoint written by one of the GAN scripts")
    return checkpoint["script"], dict(checkpoint.get("args") or {})


def count_images(npz_path):
    try:
        with np.load(npz_path) as npz:
            return len(npz["images"]) if "images" in npz.files else 0
    except Exception:
        return 0   # unreadable: read_npz says why if it is still the one to use


def script_file(script, checkpoint_path):
    path = SCRIPT_DIR / f"{script}.py"
    if not path.is_file():
        raise common.UserError(f"{checkpoint_path} was written by {script}.py, which is not in {SCRIPT_DIR}")
    return path


def generate(script, checkpoint_path, n, device):
    """Write RUN/generated.npz with n samples by running the script's own --generate."""
    script_path = script_file(script, checkpoint_path)
    command = [sys.executable, str(script_path), "--generate", str(n), "--resume", str(checkpoint_path),
               "--device", device]
    note(f"running: python {script}.py --generate {n} --resume {checkpoint_path} --device {device}")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        said = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        raise common.UserError(f"{script}.py --generate failed (exit code {result.returncode}): {said}")
    if not (Path(checkpoint_path).parent / "generated.npz").is_file():
        raise common.UserError(f"{script}.py --generate ran but wrote no generated.npz beside {checkpoint_path}")


def find_samples(source, n):
    """Resolve the command line's source, generating nothing yet. Returns (npz path, script or
    None, the run's flags, why the npz must be generated first or None, the checkpoint to generate from)."""
    source = Path(source)
    if not source.exists():
        raise common.UserError(f"{source} does not exist")
    if source.is_file() and source.suffix == ".npz":
        # An npz is scored as it is; a checkpoint beside it only says which script and data made it.
        beside = source.parent / "checkpoint.pt"
        script, run_args = read_run(beside) if beside.is_file() else (None, {})
        return source, script, run_args, None, None
    # A run folder, or a checkpoint.pt standing for its run folder (--generate writes beside it).
    run_dir, checkpoint_path = (source, source / "checkpoint.pt") if source.is_dir() else (source.parent, source)
    npz_path = run_dir / "generated.npz"
    if not checkpoint_path.is_file():
        if not npz_path.is_file():
            raise common.UserError(f"{source} holds neither generated.npz nor checkpoint.pt: not a run folder")
        return npz_path, None, {}, None, None
    script, run_args = read_run(checkpoint_path)
    if not npz_path.is_file():
        return npz_path, script, run_args, "is not there yet", checkpoint_path
    if npz_path.stat().st_mtime < checkpoint_path.stat().st_mtime:
        return npz_path, script, run_args, "is older than checkpoint.pt", checkpoint_path
    held = count_images(npz_path)
    if held < n:
        return npz_path, script, run_args, f"holds {held} images, fewer than --n {n}", checkpoint_path
    return npz_path, script, run_args, None, None


def read_npz(path, n):
    """The first n images (uint8 tensor (n, C, H, W)) and labels ((n,) int64 or None) of an npz."""
    try:
        with np.load(path) as npz:
            if "images" not in npz.files:
                raise common.UserError(f"{path} has no 'images' array (it has: {', '.join(npz.files) or 'nothing'}); "
                                       "write it with a script's --generate N")
            images = npz["images"]
            labels = npz["labels"] if "labels" in npz.files else None
    except common.UserError:
        raise
    except Exception as error:
        raise common.UserError(f"{path} cannot be read as an .npz ({type(error).__name__})")
    if images.dtype != np.uint8 or images.ndim != 4:
        raise common.UserError(f"{path}: images must be uint8 (N, C, H, W) as --generate writes them, "
                               f"not {images.dtype} {tuple(images.shape)}")
    if len(images) < n:
        raise common.UserError(f"{path} holds {len(images)} images, fewer than --n {n} "
                               f"(pass --n {len(images)}, or generate more with a script's --generate {n})")
    if labels is not None:
        if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
            raise common.UserError(f"{path}: labels must be integers (N,) matching the {len(images)} images, "
                                   f"not {labels.dtype} {tuple(labels.shape)}")
        labels = torch.from_numpy(labels[:n].astype(np.int64))
    return torch.from_numpy(images[:n].copy()), labels


def resize(images, size):
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size), antialiased bilinear: how common.load_data
    resizes a dataset for --img-size, so a round trip here mirrors what the run trained on."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device)
    npz_path, script, run_args, regenerate, checkpoint_path = find_samples(args.source, args.n)

    run_dataset = run_args.get("dataset")
    if args.dataset and run_dataset and args.dataset != run_dataset:
        raise common.UserError(f"the run trained on {run_dataset}, not --dataset {args.dataset}")
    dataset = args.dataset or run_dataset or "mnist"
    if dataset not in YARDSTICKS:
        raise common.UserError(f"no yardstick for {dataset} here: the classifier these numbers need exists for "
                               f"{' and '.join(YARDSTICKS)} only, and any other would give numbers that mean nothing")
    data_root = args.data_root or run_args.get("data_root") or "data"

    if regenerate:
        script_file(script, checkpoint_path)   # before the note: a missing script is the one line said
        note(f"{npz_path} {regenerate}: generating {args.n} samples")
        generate(script, checkpoint_path, args.n, args.device)
    images, labels = read_npz(npz_path, args.n)
    n, channels, height, width = images.shape
    data_flags = argparse.Namespace(dataset=dataset, data_root=data_root, img_size=CLASSIFIER_SIZE,
                                    batch_size=1, seed=0)
    test = common.load_data(data_flags, device, train=False)
    train = common.load_data(data_flags, device, train=True)
    if channels != test.shape[0]:
        raise common.UserError(f"{npz_path}: the images have {channels} channel(s), {dataset}'s have {test.shape[0]}")
    if height != width:
        raise common.UserError(f"{npz_path}: the images are {height}x{width}; the scripts make square images")
    if labels is not None and (labels.min() < 0 or labels.max() >= test.n_classes):
        raise common.UserError(f"{npz_path}: labels run from {labels.min()} to {labels.max()}, "
                               f"but {dataset} has classes 0..{test.n_classes - 1}")

    classifier, _ = get_classifier(dataset, data_root, train, test, device)

    # Real images take the generated images' detour (28 -> run size -> 28), so the blur of
    # resizing is on both sides of every comparison.
    real_test, real_train = test.images, train.images
    if height != CLASSIFIER_SIZE:
        note(f"resizing the {height}x{height} samples to {CLASSIFIER_SIZE}x{CLASSIFIER_SIZE}; the real images "
             f"go {CLASSIFIER_SIZE} -> {height} -> {CLASSIFIER_SIZE} alike")
        images = resize(images, CLASSIFIER_SIZE)
        real_test = resize(resize(real_test, height), CLASSIFIER_SIZE)
    # The floor uses as many training images as there are samples: the FD of a finite sample is
    # biased upwards, more so the fewer the samples, and the two numbers must share that bias.
    pick = torch.randperm(len(real_train), generator=torch.Generator().manual_seed(0))[:n]
    real_train = resize(resize(real_train[pick.to(real_train.device)], height), CLASSIFIER_SIZE)

    test_features, test_probabilities = classify(classifier, real_test)
    train_features, _ = classify(classifier, real_train)
    fake_features, fake_probabilities = classify(classifier, images)
    test_statistics = gaussian_statistics(test_features)
    result = {
        "source": str(npz_path), "script": script, "dataset": dataset, "n": n,
        "image_size": height, "n_test": len(real_test), "n_floor": len(real_train),
        "fd": frechet_distance(*gaussian_statistics(fake_features), *test_statistics),
        "fd_floor": frechet_distance(*gaussian_statistics(train_features), *test_statistics),
        "class_accuracy": accuracy(fake_probabilities, labels) if labels is not None else None,
        "accuracy_ceiling": accuracy(test_probabilities, test.labels),
        "coverage": coverage(fake_probabilities, test.n_classes),
        "coverage_real": coverage(test_probabilities, test.n_classes),
        "confidence": confidence(fake_probabilities),
        "confidence_real": confidence(test_probabilities),
        "classifier": str(classifier_path(data_root, dataset)),
    }
    print(json.dumps(result) if args.json else table(result))


def table(r):
    made_by = f"{r['script']}.py, " if r["script"] else ""
    accuracy_row = (f"{r['class_accuracy']:>10.4f}  {r['accuracy_ceiling']:>10.4f}   against the labels they were "
                    "conditioned on; real: the test set" if r["class_accuracy"] is not None else
                    f"{'-':>10}  {r['accuracy_ceiling']:>10.4f}   no labels in the npz (an unconditional run)")
    return "\n".join([
        f"{r['source']}: {made_by}{r['n']} generated images ({r['image_size']}x{r['image_size']}), "
        f"scored on {r['dataset']}",
        "",
        f"{'':16}{'generated':>10}  {'real':>10}",
        f"{'FD':16}{r['fd']:>10.3f}  {r['fd_floor']:>10.3f}   against the {r['n_test']} test images; "
        f"real: {r['n_floor']} training images (the floor). Lower is better",
        f"{'class accuracy':16}{accuracy_row}",
        f"{'coverage':16}{r['coverage']:>10.4f}  {r['coverage_real']:>10.4f}   entropy of the predicted classes "
        "/ log(n_classes): 1 = all equally present",
        f"{'confidence':16}{r['confidence']:>10.4f}  {r['confidence_real']:>10.4f}   mean max softmax; "
        "real: the test set",
    ])


if __name__ == "__main__":
    common.run_main(main)
