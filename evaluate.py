"""Score a trained GAN: how close its samples are to the real data, in the eyes of a small CNN
classifier trained once on the dataset's training set.

For N generated images (default 10000) it prints:
- FD, the Frechet distance between the generated images and the 10000 test images, in the
  classifier's 128-d penultimate features (FID's recipe, with a network trained on this dataset
  instead of Inception), beside the real-data floor: N training images against the same test set,
  what a perfect generator would score with that many samples. Lower is better.
- class accuracy (cgan, acgan): how often the classifier names the class each image was asked for;
  the classifier's accuracy on the test set is the ceiling.
- coverage: the entropy of the predicted-class histogram / log(n_classes); 1.0: every class equally
  present, near 0: a collapsed generator.
- confidence: the mean of the classifier's largest softmax probability (real test images: reference).

    python evaluate.py runs/gan                          # samples drawn now from the run's generator
    python evaluate.py runs/acgan --curve                # one row per snapshot, the best marked
    python evaluate.py runs/acgan/generator_epoch_005.pt --json
    python evaluate.py my_samples.npz --dataset mnist    # images uint8 (N, C, H, W), labels (N,)

Samples from a run are drawn in memory (seeded by --seed) from the generator the run's grids show;
nothing is written beside the run. The classifier (MNIST and Fashion-MNIST: for other datasets
there is no yardstick here) comes with the repository for MNIST, weights/evaluate_classifier_mnist.pt
(99.19% test accuracy), used when the training set under --data-root is the one it learnt from (the
SHA-256 of its images and labels, recorded in the file, matches), so every user's FD is measured by the
same network. Otherwise it trains on first use, seeded (6 minutes on one CPU core), and is cached as
<data-root>/evaluate_classifier_<dataset>.pt. To retrain the shipped one (the same weights, bit for bit):
    rm -f weights/evaluate_classifier_mnist.pt data/evaluate_classifier_mnist.pt
    python evaluate.py runs/gan && cp data/evaluate_classifier_mnist.pt weights/

Images of another size (a run with --img-size 32) are resized to 28x28 with antialiasing, and the real
images make the same 28 -> 32 -> 28 round trip.
"""
import argparse
import hashlib
import importlib
import json
import math
import re
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
SHIPPED = SCRIPT_DIR / "weights"   # classifiers trained on the real datasets, used where the data matches


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="evaluate.py", allow_abbrev=False,
        description="Score a GAN's samples: Frechet distance, class accuracy, coverage, confidence.")
    add = parser.add_argument
    add("source", metavar="RUN_OR_FILE",
        help="a run folder, its checkpoint.pt, a generator_epoch_*.pt snapshot, or an .npz of samples "
             "(images uint8 (N, C, H, W), labels (N,) if conditional)")
    add("--dataset", choices=("mnist", "fashion-mnist", "cifar10", "folder", "fake"), default=None,
        help="the data the run trained on (default: the run's own, else mnist)")
    add("--data-root", default=None,
        help="where the dataset lives; the classifier is cached there (default: the run's own, else data)")
    add("--n", type=common.positive_int, default=10000, help="how many generated images to score (default: 10000)")
    add("--device", default="auto", help="auto (the default: cuda when present), cpu, cuda, cuda:N or mps")
    add("--seed", type=common.seed, default=0, help="seed of the noise the samples are drawn from (default: 0)")
    add("--curve", action="store_true", help="score every generator_epoch_*.pt snapshot of the run, a row each")
    add("--json", action="store_true", help="print JSON instead of the table")
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


def data_sha256(data):
    """The fingerprint of a training set (a common.Data): a classifier serves only the data it learnt from."""
    digest = hashlib.sha256(data.images.cpu().numpy().tobytes())
    digest.update(data.labels.cpu().numpy().tobytes())
    return digest.hexdigest()


def save_classifier(path, classifier, dataset, test_accuracy, sha256=None):
    """Atomic, like the checkpoints: an interrupted write never leaves a half cache behind."""
    path = Path(path)
    state = {"format": CACHE_FORMAT, "dataset": dataset, "channels": classifier.body[0].in_channels,
             "n_classes": classifier.head.out_features, "test_accuracy": float(test_accuracy),
             "state_dict": classifier.state_dict(), **({"data_sha256": sha256} if sha256 else {})}
    common.save_atomically(state, path)


def load_classifier(path, dataset, channels, n_classes, device, sha256=None):
    """The cached classifier and its test accuracy, or None when there is no usable cache (none
    yet, another format, another dataset, other training data, or an unreadable file)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if (state.get("format"), state.get("dataset"), state.get("channels"), state.get("n_classes")) != (
                CACHE_FORMAT, dataset, channels, n_classes):
            raise ValueError("made for something else")
        if state.get("data_sha256", sha256) != sha256:   # a cache from before fingerprints is trusted, as it was
            raise ValueError(f"trained on another {dataset} than the one under --data-root")
        classifier = Classifier(channels, n_classes)
        classifier.load_state_dict(state["state_dict"])
    except Exception as error:
        note(f"ignoring the cached classifier {path} ({type(error).__name__}: {error})")
        return None
    return classifier.to(device).eval(), state["test_accuracy"]


def accuracy(probabilities, labels):
    return probabilities.argmax(1).eq(torch.as_tensor(labels).cpu()).double().mean().item()


def get_classifier(dataset, data_root, train, test, device):
    """The dataset's classifier: the shipped one if it learnt from this data, else the cache under data_root,
    else trained now and cached."""
    path, sha256 = classifier_path(data_root, dataset), data_sha256(train)
    cached = (load_classifier(SHIPPED / path.name, dataset, train.shape[0], train.n_classes, device, sha256)
              or load_classifier(path, dataset, train.shape[0], train.n_classes, device, sha256))
    if cached:
        return cached
    note(f"training the {dataset} classifier (once; 6 minutes on one CPU core) ...")
    start = time.perf_counter()
    classifier = train_classifier(train.images, train.labels, train.n_classes)
    test_accuracy = accuracy(classify(classifier, test.images)[1], test.labels)
    note(f"classifier: {test_accuracy:.2%} test accuracy after {time.perf_counter() - start:.0f} s")
    if test_accuracy < YARDSTICKS.get(dataset, 0):
        note(f"warning: below the {YARDSTICKS[dataset]:.0%} this yardstick should reach; its numbers are rough")
    try:
        save_classifier(path, classifier, dataset, test_accuracy, sha256)
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
    return abs((share * share.log()).sum().item()) / math.log(n_classes)   # abs: not -0.0 for one class


def confidence(probabilities):
    return probabilities.max(1).values.mean().item()


# ---------------------------------------------------------------------------------------------
# Finding the samples: a run folder, a checkpoint or snapshot, or an npz
# ---------------------------------------------------------------------------------------------
def read_run(path):
    """(script, the run's flags) of a checkpoint.pt or snapshot written by one of the scripts."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise common.UserError(f"{path} cannot be read ({type(error).__name__}); is it a complete .pt file?")
    if not isinstance(saved, dict) or not isinstance(saved.get("script"), str):
        raise common.UserError(f"{path} is not a checkpoint written by one of the GAN scripts")
    if not (SCRIPT_DIR / f"{saved['script']}.py").is_file():
        raise common.UserError(f"{path} was written by {saved['script']}.py, which is not in {SCRIPT_DIR}")
    if "sampler" not in saved:
        raise common.UserError(f"{path} was written by an older version of {saved['script']}.py: train the run again")
    return saved["script"], dict(saved.get("args") or {})


def find_sources(source, curve):
    """What to score, without reading it yet: [(epoch or None, path)], plus (script, run flags)."""
    source = Path(source)
    if not source.exists():
        raise common.UserError(f"{source} does not exist")
    if source.suffix == ".npz" and not curve:   # a checkpoint beside it says which script and data made it
        beside = source.parent / "checkpoint.pt"
        return [(None, source)], read_run(beside) if beside.is_file() else (None, {})
    run_dir = source if source.is_dir() else source.parent
    if curve:   # in epoch order (1000 sorts after 999), every snapshot checked before any is drawn
        snapshots = sorted((int(match[1]), p) for p in run_dir.glob("generator_epoch_*.pt")
                           if (match := re.fullmatch(r"generator_epoch_(\d+)\.pt", p.name)))
        if not snapshots:
            raise common.UserError(f"{run_dir} holds no generator_epoch_*.pt snapshots to draw a curve from")
        runs = [read_run(path) for _, path in snapshots]
        return snapshots, runs[-1]
    path = source / "checkpoint.pt" if source.is_dir() else source
    if source.is_file() and source.suffix != ".pt":
        raise common.UserError(f"{source}: a {source.suffix or 'suffix-less'} file; give a run folder, a .pt "
                               "checkpoint or an .npz of samples")
    if not path.is_file():
        raise common.UserError(f"{source} holds no checkpoint.pt: not a run folder")
    return [(None, path)], read_run(path)


def draw_samples(script, path, n, seed, device):
    """n images (uint8 (n, C, H, W) on the CPU) and labels ((n,) or None) from the generator of a
    checkpoint or snapshot: the one its run's grids show, in eval mode, in memory."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    generator = importlib.import_module(script).load_generator(path, device)
    common.seed_everything(seed)
    images, labels = common.sample(generator, n, argparse.Namespace(**saved["args"]), saved["n_classes"])
    images = images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu()
    return images, None if labels is None else labels.cpu()


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


def find_data_root(given, run_root):
    """--data-root, else the run's own: as given, or relative to this repository when run elsewhere."""
    root = Path(given or run_root or "data")
    if not given and not root.is_absolute() and not root.exists() and (SCRIPT_DIR / root).exists():
        return SCRIPT_DIR / root
    return root


def check_images(images, labels, test, where):
    channels, height, width = images.shape[1:]
    if channels != test.shape[0]:
        raise common.UserError(f"{where}: the images have {channels} channel(s), the dataset's have {test.shape[0]}")
    if height != width:
        raise common.UserError(f"{where}: the images are {height}x{width}; the scripts make square images")
    if labels is not None and (labels.min() < 0 or labels.max() >= test.n_classes):
        raise common.UserError(f"{where}: labels run from {labels.min()} to {labels.max()}, "
                               f"but the dataset has classes 0..{test.n_classes - 1}")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device)
    sources, (script, run_args) = find_sources(args.source, args.curve)
    run_dataset = run_args.get("dataset")
    if args.dataset and run_dataset and args.dataset != run_dataset:
        raise common.UserError(f"the run trained on {run_dataset}, not --dataset {args.dataset}")
    dataset = args.dataset or {"thin2thick": "mnist"}.get(run_dataset, run_dataset) or "mnist"
    if dataset not in YARDSTICKS:
        raise common.UserError(f"no yardstick for {dataset} here: the classifier these numbers need exists for "
                               f"{' and '.join(YARDSTICKS)} only, and any other would give numbers that mean nothing")
    if script == "cyclegan":
        return print(translation_scores(args, sources, run_args, dataset, device))
    # Every source is read (or drawn) and checked before anything is written (the classifier's cache)
    samples = [(epoch, path, *(read_npz(path, args.n) if path.suffix == ".npz" else
                               draw_samples(script, path, args.n, args.seed, device))) for epoch, path in sources]
    data_root = find_data_root(args.data_root, run_args.get("data_root"))
    data_flags = argparse.Namespace(dataset=dataset, data_root=data_root, img_size=CLASSIFIER_SIZE, batch_size=1,
                                    seed=0)
    test = common.load_data(data_flags, device, train=False)
    train = common.load_data(data_flags, device, train=True)
    for epoch, path, images, labels in samples:
        check_images(images, labels, test, path)
    classifier, _ = get_classifier(dataset, data_root, train, test, device)
    test_features, test_probabilities = classify(classifier, test.images)
    results, real = [], {}
    for epoch, path, images, labels in samples:
        results.append({"source": str(path), "script": script, "dataset": dataset, "epoch": epoch,
                        **scores(images, labels, classifier, test, train, real, test_probabilities)})
    if args.curve:
        best = min(results, key=lambda r: r["fd"])
        print(json.dumps({"best_epoch": best["epoch"], "snapshots": results}) if args.json
              else curve_table(results, best))
    else:
        print(json.dumps(results[0]) if args.json else table(results[0]))


def translation_scores(args, sources, run_args, dataset, device):
    """A cyclegan run on thin2thick: does G(test A) keep its digit and look thickened, does F(test B)
    keep its digit and look thin, and how closely does each come back? Returns the table (or JSON)."""
    if args.curve or run_args.get("dataset") != "thin2thick":
        raise common.UserError("evaluate.py scores a cyclegan run trained on thin2thick, one checkpoint at a time "
                               "(MNIST's classifier knows the digits; for other image sets there is no yardstick)")
    cyclegan = importlib.import_module("cyclegan")
    path = sources[0][1]
    translator = cyclegan.load_generator(path, device)
    data_root = find_data_root(args.data_root, run_args.get("data_root"))
    flags = argparse.Namespace(dataset="mnist", data_root=data_root, img_size=CLASSIFIER_SIZE, batch_size=1, seed=0)
    test, train = common.load_data(flags, device, train=False), common.load_data(flags, device, train=True)
    n, size = min(args.n, len(test.images)), run_args["img_size"]
    thin, labels = test.images[:n].cpu(), test.labels[:n].cpu()
    thick = cyclegan.thicken(thin)
    a_to_b = cyclegan.translate(translator.g_ab, common.resize(thin, size))     # what the run was given: its own size
    b_to_a = cyclegan.translate(translator.g_ba, common.resize(thick, size))
    a_back, b_back = cyclegan.translate(translator.g_ba, a_to_b), cyclegan.translate(translator.g_ab, b_to_a)
    classifier, _ = get_classifier(dataset, data_root, train, test, device)
    pick = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(0))[:n]
    floor_thin = common.resize(common.resize(train.images[pick.to(train.images.device)].cpu(), size),
                               CLASSIFIER_SIZE)
    real_thin, real_thick = (common.resize(common.resize(images, size), CLASSIFIER_SIZE) for images in (thin, thick))

    def fd(images, reference):
        features = classify(classifier, common.resize(images, CLASSIFIER_SIZE))[0]
        return frechet_distance_of(features, classify(classifier, reference)[0])

    def agreement(images):
        return accuracy(classify(classifier, common.resize(images, CLASSIFIER_SIZE))[1], labels)

    def cycle_error(images, back):
        return (common.resize(back, size).float() - common.resize(images, size).float()).abs().mean().item() / 255
    result = {"source": str(path), "script": "cyclegan", "dataset": "thin2thick", "n": n, "image_size": size,
              "a_to_b_class_accuracy": agreement(a_to_b), "b_to_a_class_accuracy": agreement(b_to_a),
              "thick_class_accuracy": agreement(real_thick), "thin_class_accuracy": agreement(real_thin),
              "a_to_b_fd": fd(a_to_b, real_thick), "a_to_b_fd_floor": fd(cyclegan.thicken(floor_thin), real_thick),
              "b_to_a_fd": fd(b_to_a, real_thin), "b_to_a_fd_floor": fd(floor_thin, real_thin),
              "a_to_b_unchanged_fd": fd(thin, real_thick),
              "cycle_error_a": cycle_error(common.resize(thin, size), a_back),
              "cycle_error_b": cycle_error(common.resize(thick, size), b_back)}
    if args.json:
        return json.dumps(result)
    r = result
    return "\n".join([
        f"{r['source']}: cyclegan.py, the first {n} MNIST test images translated both ways ({size}x{size})", "",
        f"{'':26}{'A -> B':>9}  {'B -> A':>9}",
        f"{'class accuracy':26}{r['a_to_b_class_accuracy']:>9.4f}  {r['b_to_a_class_accuracy']:>9.4f}   the "
        f"digit kept; real thick / thin: {r['thick_class_accuracy']:.4f} / {r['thin_class_accuracy']:.4f}",
        f"{'FD against the target set':26}{r['a_to_b_fd']:>9.3f}  {r['b_to_a_fd']:>9.3f}   floor (real training "
        f"images): {r['a_to_b_fd_floor']:.3f} / {r['b_to_a_fd_floor']:.3f}; "
        f"untranslated A: {r['a_to_b_unchanged_fd']:.3f}",
        f"{'cycle error':26}{r['cycle_error_a']:>9.4f}  {r['cycle_error_b']:>9.4f}   mean |F(G(a)) - a|, |G(F(b)) - b| "
        "per pixel, 0 to 1",
    ])


def scores(images, labels, classifier, test, train, real, test_probabilities):
    """The numbers of one set of samples. `real` caches the real images' statistics per image size."""
    n, size = len(images), images.shape[-1]
    if size not in real:
        if size != CLASSIFIER_SIZE:
            note(f"resizing the {size}x{size} samples to {CLASSIFIER_SIZE}x{CLASSIFIER_SIZE}; the real images "
                 f"go {CLASSIFIER_SIZE} -> {size} -> {CLASSIFIER_SIZE} alike")
        # Real images take the samples' detour (28 -> run size -> 28): the blur of resizing is on both sides.
        # The floor uses as many training images as there are samples: an FD of few samples is biased upwards.
        pick = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(0))[:n]
        round_trip = lambda images: common.resize(common.resize(images, size), CLASSIFIER_SIZE)   # noqa: E731
        test_statistics = gaussian_statistics(classify(classifier, round_trip(test.images))[0])
        floor_features = classify(classifier, round_trip(train.images[pick.to(train.images.device)]))[0]
        real[size] = test_statistics, frechet_distance(*gaussian_statistics(floor_features), *test_statistics)
    test_statistics, fd_floor = real[size]
    features, probabilities = classify(classifier, common.resize(images, CLASSIFIER_SIZE))
    return {"n": n, "image_size": size, "n_test": len(test.images), "n_floor": min(n, len(train.images)),
            "fd": frechet_distance(*gaussian_statistics(features), *test_statistics), "fd_floor": fd_floor,
            "class_accuracy": accuracy(probabilities, labels) if labels is not None else None,
            "accuracy_ceiling": accuracy(test_probabilities, test.labels),
            "coverage": coverage(probabilities, test.n_classes),
            "coverage_real": coverage(test_probabilities, test.n_classes),
            "confidence": confidence(probabilities), "confidence_real": confidence(test_probabilities)}


def table(r):
    made_by = f"{r['script']}.py, " if r["script"] else ""
    accuracy_row = (f"{r['class_accuracy']:>10.4f}  {r['accuracy_ceiling']:>10.4f}   against the labels they were "
                    "conditioned on; real: the test set" if r["class_accuracy"] is not None else
                    f"{'-':>10}  {r['accuracy_ceiling']:>10.4f}   no labels (an unconditional run)")
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


def curve_table(results, best):
    first = results[0]
    lines = [f"{Path(first['source']).parent}: {first['script']}.py, {first['n']} samples per snapshot, scored on "
             f"{first['dataset']}; real data: FD {first['fd_floor']:.3f} (floor), class accuracy "
             f"{first['accuracy_ceiling']:.4f} (ceiling), coverage {first['coverage_real']:.4f}",
             "", f"{'epoch':>5} {'FD':>9} {'class acc':>10} {'coverage':>9} {'confidence':>11}"]
    for r in results:
        accuracy_cell = f"{r['class_accuracy']:.4f}" if r["class_accuracy"] is not None else "-"
        lines.append(f"{r['epoch']:>5} {r['fd']:>9.3f} {accuracy_cell:>10} {r['coverage']:>9.4f} "
                     f"{r['confidence']:>11.4f}" + ("   <- best FD" if r is best else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    common.run_main(main)
