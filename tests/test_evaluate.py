"""evaluate.py: the Frechet distance against closed forms, the metrics on tiny MNIST-format data
with a tiny classifier, its cache, run folders scored from their generators drawn in memory (every
script, seeds, snapshots and --curve), where the data root is found, and bad input."""
import importlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import common
import evaluate
import gan
from conftest import load, run_as_command, run_inprocess, run_subprocess, to_uint8, write_idx_dataset


# ---------------------------------------------------------------------------------------------
# Frechet distance
# ---------------------------------------------------------------------------------------------
def diagonal_closed_form(mean1, var1, mean2, var2):
    """FD between N(mean1, diag(var1)) and N(mean2, diag(var2))."""
    return float(((mean1 - mean2) ** 2).sum() + (var1 + var2 - 2 * np.sqrt(var1 * var2)).sum())


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    mean1, mean2 = rng.normal(size=16), rng.normal(size=16)
    var1, var2 = rng.uniform(0.1, 4, size=16), rng.uniform(0.1, 4, size=16)
    got = evaluate.frechet_distance(mean1, np.diag(var1), mean2, np.diag(var2))
    assert got == pytest.approx(diagonal_closed_form(mean1, var1, mean2, var2), rel=1e-10)
    # The same Gaussians seen in a rotated basis: the distance does not depend on the basis.
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    got = evaluate.frechet_distance(rotation @ mean1, rotation @ np.diag(var1) @ rotation.T,
                                    rotation @ mean2, rotation @ np.diag(var2) @ rotation.T)
    assert got == pytest.approx(diagonal_closed_form(mean1, var1, mean2, var2), rel=1e-9)


def test_frechet_distance_of_non_commuting_covariances_is_the_closed_form():
    """In 2-d, tr(sqrt(M)) = sqrt(tr(M) + 2 sqrt(det(M))) for M = cov1 cov2 (eigenvalues >= 0)."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.normal(size=(2, 2)), rng.normal(size=(2, 2))
        cov1, cov2 = a @ a.T + 0.01 * np.eye(2), b @ b.T + 0.01 * np.eye(2)
        mean1, mean2 = rng.normal(size=2), rng.normal(size=2)
        product = cov1 @ cov2
        trace_root = math.sqrt(np.trace(product) + 2 * math.sqrt(np.linalg.det(product)))
        expected = ((mean1 - mean2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * trace_root
        assert evaluate.frechet_distance(mean1, cov1, mean2, cov2) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_frechet_distance_handles_singular_covariances():
    """A point mass against N(m, S): |m|^2 + tr(S). Rank-deficient inputs are what dead ReLU
    features give; nothing may turn into NaN."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=(8, 3))
    cov = a @ a.T                                    # rank 3 of 8
    mean = rng.normal(size=8)
    assert evaluate.frechet_distance(np.zeros(8), np.zeros((8, 8)), mean, cov) == pytest.approx(
        (mean ** 2).sum() + np.trace(cov), rel=1e-10)
    assert evaluate.frechet_distance(mean, cov, mean, cov) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_of_samples_estimates_the_population_value():
    rng = np.random.default_rng(3)
    mean1, mean2 = np.zeros(8), np.full(8, 0.5)
    var1, var2 = rng.uniform(0.5, 2, size=8), rng.uniform(0.5, 2, size=8)
    x = rng.normal(size=(20000, 8)) * np.sqrt(var1) + mean1
    y = rng.normal(size=(20000, 8)) * np.sqrt(var2) + mean2
    expected = diagonal_closed_form(mean1, var1, mean2, var2)
    assert evaluate.frechet_distance_of(x, y) == pytest.approx(expected, rel=0.05)
    assert evaluate.frechet_distance_of(x, y) == pytest.approx(evaluate.frechet_distance_of(y, x), rel=1e-9)
    mean, cov = evaluate.gaussian_statistics(torch.from_numpy(x))
    assert mean.dtype == cov.dtype == torch.float64
    assert np.allclose(cov.numpy(), np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)


def test_a_sample_scored_against_itself_is_zero_and_noise_is_far():
    rng = np.random.default_rng(4)
    features = np.maximum(rng.normal(size=(300, 128)) @ rng.normal(size=(128, 128)), 0)
    features[:, :20] = 0                              # dead units: a singular covariance
    assert evaluate.frechet_distance_of(features, features) < 1e-8
    other = np.maximum(rng.normal(size=(300, 128)) @ rng.normal(size=(128, 128)), 0)
    assert evaluate.frechet_distance_of(features, other) > 1


def test_coverage_and_confidence():
    eye = torch.eye(10, dtype=torch.float64)
    balanced = eye.repeat(5, 1)                       # every class 5 times, fully confident
    assert evaluate.coverage(balanced, 10) == pytest.approx(1.0)
    assert evaluate.confidence(balanced) == pytest.approx(1.0)
    one_class = eye[[3] * 50]
    assert evaluate.coverage(one_class, 10) == pytest.approx(0.0, abs=1e-12)
    two_classes = eye[[3, 7] * 25]
    assert evaluate.coverage(two_classes, 10) == pytest.approx(math.log(2) / math.log(10))
    unsure = torch.full((50, 10), 0.1, dtype=torch.float64)
    assert evaluate.confidence(unsure) == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------
# The classifier and the metrics on tiny MNIST-format data
# ---------------------------------------------------------------------------------------------
N_TEST = 200


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A data root with a tiny MNIST (bars whose position is the class) and a classifier for it,
    trained for a few dozen steps and put where evaluate.py caches its classifier."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    train_images, train_labels = write_idx_dataset(root / "MNIST", n_train=256, n_test=N_TEST, seed=0)
    images = torch.from_numpy(train_images).unsqueeze(1)
    classifier = evaluate.train_classifier(images, torch.from_numpy(train_labels).long(), 10, epochs=6,
                                           batch_size=64)
    test = np.frombuffer((root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").read_bytes()[16:], np.uint8)
    test = torch.from_numpy(test.reshape(N_TEST, 1, 28, 28).copy())
    test_labels = torch.arange(N_TEST) % 10
    accuracy = evaluate.accuracy(evaluate.classify(classifier, test)[1], test_labels)
    evaluate.save_classifier(evaluate.classifier_path(root, "mnist"), classifier, "mnist", accuracy)
    return {"root": root, "test": test, "labels": test_labels, "train": images, "accuracy": accuracy}


def write_npz(path, images, labels=None):
    arrays = {"images": np.asarray(images)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    np.savez(path, **arrays)
    return path


def score(source, root, capsys, *flags):
    """evaluate.py --json in-process: its JSON object, plus what it said on stderr as "_stderr".
    root None: no --data-root (a run's own is used)."""
    capsys.readouterr()
    code = run_inprocess(evaluate.main, [source, *(["--data-root", root] if root else []), "--json", *flags])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    return {**json.loads(printed.out), "_stderr": printed.err}


def test_the_tiny_classifier_learns_and_training_is_seeded(tiny):
    assert tiny["accuracy"] >= 0.95   # bars are easy: the yardstick in the tests below works
    labels = torch.arange(256) % 10
    first = evaluate.train_classifier(tiny["train"], labels, 10, max_steps=3, batch_size=32)
    again = evaluate.train_classifier(tiny["train"], labels, 10, max_steps=3, batch_size=32)
    other = evaluate.train_classifier(tiny["train"], labels, 10, max_steps=3, batch_size=32, seed=1)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    assert not torch.equal(first.state_dict()["head.weight"], other.state_dict()["head.weight"])
    features, probabilities = evaluate.classify(first, tiny["test"][:7])
    assert features.shape == (7, 128) and features.dtype == torch.float64
    assert probabilities.shape == (7, 10) and torch.allclose(probabilities.sum(1), torch.ones(7, dtype=torch.float64))


def test_test_images_score_zero_and_noise_scores_far_above_the_floor(tiny, tmp_path, capsys):
    real = score(write_npz(tmp_path / "test.npz", tiny["test"], tiny["labels"]), tiny["root"], capsys,
                 "--n", N_TEST)
    assert real["fd"] < 1e-6                          # the test set against itself
    assert real["class_accuracy"] == real["accuracy_ceiling"] == pytest.approx(tiny["accuracy"])
    assert real["coverage"] == pytest.approx(real["coverage_real"]) and real["coverage"] > 0.95
    assert real["confidence"] == pytest.approx(real["confidence_real"])
    assert real["dataset"] == "mnist" and real["n"] == N_TEST and real["script"] is None
    assert real["n_test"] == N_TEST and real["n_floor"] == N_TEST and real["fd_floor"] > 0

    # Training images are real data too: close to the floor (both are training vs test).
    train = score(write_npz(tmp_path / "train.npz", tiny["train"][:N_TEST]), tiny["root"], capsys, "--n", N_TEST)
    assert train["class_accuracy"] is None and train["n"] == N_TEST

    rng = np.random.default_rng(0)
    noise = score(write_npz(tmp_path / "noise.npz", rng.integers(0, 256, (N_TEST, 1, 28, 28), dtype=np.uint8)),
                  tiny["root"], capsys, "--n", N_TEST)
    assert noise["fd"] > 20 * max(noise["fd_floor"], train["fd"])
    assert train["fd"] < 3 * train["fd_floor"]


def test_class_accuracy_follows_the_labels_and_coverage_sees_a_collapse(tiny, tmp_path, capsys):
    shifted = score(write_npz(tmp_path / "shifted.npz", tiny["test"], (tiny["labels"] + 1) % 10), tiny["root"],
                    capsys, "--n", N_TEST)
    assert shifted["class_accuracy"] < 0.1 < 0.9 < shifted["accuracy_ceiling"]
    threes = tiny["test"][tiny["labels"] == 3]
    collapsed = score(write_npz(tmp_path / "threes.npz", threes, np.full(len(threes), 3)), tiny["root"], capsys,
                      "--n", len(threes))
    assert collapsed["coverage"] < 0.1 and collapsed["class_accuracy"] > 0.9
    # --n takes the first n images
    first = score(write_npz(tmp_path / "more.npz", tiny["test"], tiny["labels"]), tiny["root"], capsys, "--n", 30)
    assert first["n"] == 30 and first["n_floor"] == 30


def test_images_of_another_size_are_resized_like_the_real_ones(tiny, tmp_path, capsys):
    """A run with --img-size 32 trained on MNIST resized to 32: its own test images at 32x32,
    resized back, must match the test set that went through the same round trip."""
    test32 = common.resize(tiny["test"], 32)
    assert test32.shape == (N_TEST, 1, 32, 32) and test32.dtype == torch.uint8
    result = score(write_npz(tmp_path / "test32.npz", test32, tiny["labels"]), tiny["root"], capsys, "--n", N_TEST)
    assert result["image_size"] == 32 and result["fd"] < 1e-6
    assert "resizing the 32x32 samples to 28x28" in result["_stderr"]


def test_the_floor_reports_the_training_images_it_used(tiny, tmp_path, capsys):
    """--n past the training set's size: the floor uses all 256 training images, and says so (not --n)."""
    images = np.repeat(tiny["train"].numpy(), 2, axis=0)[:300]
    result = score(write_npz(tmp_path / "many.npz", images), tiny["root"], capsys, "--n", "300", "--dataset", "mnist")
    assert result["n"] == 300 and result["n_floor"] == 256


def test_the_table_shows_every_number(tiny, tmp_path, capsys):
    npz = write_npz(tmp_path / "test.npz", tiny["test"], tiny["labels"])
    assert run_inprocess(evaluate.main, [npz, "--data-root", tiny["root"], "--n", 100]) == 0
    out = capsys.readouterr().out
    for row in ("FD", "class accuracy", "coverage", "confidence", "100 generated images", "mnist"):
        assert row in out, row


def test_the_classifier_trains_on_first_use_then_comes_from_the_cache(tmp_path, capsys, monkeypatch):
    root = tmp_path / "data"
    write_idx_dataset(root / "MNIST", n_train=64, n_test=40)
    npz = write_npz(tmp_path / "s.npz", np.zeros((20, 1, 28, 28), np.uint8))
    assert run_inprocess(evaluate.main, [npz, "--data-root", root, "--n", 20]) == 0
    assert "training the mnist classifier" in capsys.readouterr().err
    cache = evaluate.classifier_path(root, "mnist")
    state = torch.load(cache, weights_only=True)
    assert state["dataset"] == "mnist" and 0 <= state["test_accuracy"] <= 1 and "state_dict" in state
    written = cache.read_bytes()

    def refuse(*args, **kwargs):
        raise AssertionError("trained again although the cache was there")
    monkeypatch.setattr(evaluate, "train_classifier", refuse)
    assert run_inprocess(evaluate.main, [npz, "--data-root", root, "--n", 20]) == 0
    assert "training" not in capsys.readouterr().err and cache.read_bytes() == written
    monkeypatch.undo()

    cache.write_bytes(b"half a file")                 # an unreadable cache is trained afresh
    assert run_inprocess(evaluate.main, [npz, "--data-root", root, "--n", 20]) == 0
    assert "ignoring the cached classifier" in capsys.readouterr().err
    assert torch.load(cache, weights_only=True)["dataset"] == "mnist"


def test_the_shipped_mnist_classifier_is_the_one_evaluate_uses_on_mnist(tiny, tmp_path, capsys, monkeypatch):
    shipped = torch.load(evaluate.SHIPPED / "evaluate_classifier_mnist.pt", map_location="cpu", weights_only=True)
    assert shipped["dataset"] == "mnist" and shipped["test_accuracy"] >= evaluate.YARDSTICKS["mnist"]
    assert len(shipped["data_sha256"]) == 64   # it serves only the MNIST it learnt from
    # Tests never read MNIST: the tiny one poses as it, so evaluate.py must pass over the tiny cache too.
    monkeypatch.setattr(evaluate, "data_sha256", lambda data: shipped["data_sha256"])

    def refuse(*args, **kwargs):
        raise AssertionError("trained although the shipped classifier serves this data")
    monkeypatch.setattr(evaluate, "train_classifier", refuse)
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (N_TEST, 1, 28, 28), dtype=np.uint8))
    result = score(write_npz(tmp_path / "noise.npz", noise), tiny["root"], capsys, "--n", N_TEST)
    expected = {}
    for name, state in (("shipped", shipped), ("tiny", load(evaluate.classifier_path(tiny["root"], "mnist")))):
        classifier = evaluate.Classifier(1, 10)
        classifier.load_state_dict(state["state_dict"])
        features = [evaluate.classify(classifier.eval(), images)[0] for images in (noise, tiny["test"])]
        expected[name] = evaluate.frechet_distance_of(*features)
    assert math.isclose(result["fd"], expected["shipped"], rel_tol=1e-9), (result["fd"], expected)
    assert not math.isclose(expected["tiny"], expected["shipped"], rel_tol=1e-3)   # the check tells them apart


# ---------------------------------------------------------------------------------------------
# Run folders: samples drawn in memory from the generator the run's grids show
# ---------------------------------------------------------------------------------------------
CPU = torch.device("cpu")
CONDITIONAL = {"cgan", "acgan"}
NARROW = {"dcgan": ["--width", "8"], "acgan": ["--width", "8"]}   # the convolutional ones, made cheap


def files_of(folder):
    """Every file and folder under `folder` with its size and modification time: "nothing written"."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).rglob("*"))


def numbers(result):
    """A result without what names its source: the scores alone."""
    return {k: v for k, v in result.items() if k not in ("source", "_stderr")}


@pytest.fixture(scope="module")
def gan_run(tiny, tmp_path_factory):
    """A finished gan run on the tiny MNIST: 3 epochs of 4 steps, snapshots of epochs 1, 2 and 3."""
    run = tmp_path_factory.mktemp("finished") / "run"
    flags = ["--data-root", tiny["root"], "--epochs", 3, "--batch-size", 64, "--snapshot-every", 2, "--out", run]
    assert run_inprocess(gan.main, flags) == 0
    assert sorted(p.name for p in run.glob("generator_epoch_*.pt")) == [f"generator_epoch_00{e}.pt" for e in (1, 2, 3)]
    return run


@pytest.fixture(scope="module")
def short_run(tiny, tmp_path_factory):
    """A gan run stopped after one step, mid-epoch: a checkpoint.pt and no snapshot."""
    run = tmp_path_factory.mktemp("short") / "run"
    assert run_inprocess(gan.main, ["--data-root", tiny["root"], "--max-steps", 1, "--out", run]) == 0
    assert (run / "checkpoint.pt").is_file() and not list(run.glob("generator_epoch_*.pt"))
    return run


def test_a_gan_run_folder_end_to_end_from_the_command_line(short_run):
    before = files_of(short_run)
    # No --data-root: the run's own (absolute) is used, and the classifier cached there.
    result = run_subprocess("evaluate.py", short_run, "--n", "50", "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["script"] == "gan" and scores["n"] == 50 and scores["class_accuracy"] is None
    assert scores["source"] == str(short_run / "checkpoint.pt") and scores["epoch"] is None
    assert scores["fd"] > scores["fd_floor"]          # one step of training: far from the data
    assert "training the" not in result.stderr
    assert files_of(short_run) == before              # nothing written beside the run


def test_the_samples_are_the_run_s_sampling_generator_s_in_eval_mode(gan_run):
    images, labels = evaluate.draw_samples("gan", gan_run / "checkpoint.pt", 16, 5, CPU)
    assert labels is None and images.dtype == torch.uint8 and images.shape == (16, 1, 28, 28)
    checkpoint = load(gan_run / "checkpoint.pt")
    generator = gan.Generator(100, (1, 28, 28))
    # The moving average in eval mode with seed 5's noise; G's own last weights give other images.
    for weights, same in ((checkpoint["sampler"], True), (checkpoint["generator"], False)):
        generator.load_state_dict(weights)
        generator.eval()
        common.seed_everything(5)
        with torch.no_grad():
            made = to_uint8(generator(torch.randn(16, 100)))
        assert np.array_equal(images.numpy(), made) == same


@pytest.mark.parametrize("script", ["cgan", "acgan", "wgan", "wgan_gp", "dcgan"])
def test_every_script_s_run_folder_is_scored(script, tiny, tmp_path, capsys):
    module = importlib.import_module(script)
    run = tmp_path / "run"
    flags = ["--data-root", tiny["root"], "--max-steps", "1", "--batch-size", "16", "--out", run]
    assert run_inprocess(module.main, flags + NARROW.get(script, [])) == 0
    before = files_of(run)
    result = score(run, None, capsys, "--n", "20", "--device", "cpu")
    assert result["script"] == script and result["n"] == 20 and result["dataset"] == "mnist"
    assert result["image_size"] == load(run / "checkpoint.pt")["args"]["img_size"]   # 32 (resized) for acgan, dcgan
    assert (result["class_accuracy"] is not None) == (script in CONDITIONAL)
    assert "training the" not in result["_stderr"]    # the run's data root, with its cached classifier
    assert files_of(run) == before
    images, labels = evaluate.draw_samples(script, run / "checkpoint.pt", 12, 0, CPU)
    assert images.dtype == torch.uint8 and len(images) == 12
    if script in CONDITIONAL:
        assert labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    else:
        assert labels is None


def test_the_seed_fixes_the_samples_and_the_checkpoint_matches_the_last_snapshot(gan_run, capsys):
    before = files_of(gan_run)
    first = score(gan_run, None, capsys, "--n", 60)
    again = score(gan_run, None, capsys, "--n", 60, "--seed", 0)
    other = score(gan_run, None, capsys, "--n", 60, "--seed", 1)
    last = score(gan_run / "generator_epoch_003.pt", None, capsys, "--n", 60)
    earlier = score(gan_run / "generator_epoch_001.pt", None, capsys, "--n", 60)
    assert numbers(again) == numbers(first)
    assert other["fd"] != first["fd"] and other["fd_floor"] == first["fd_floor"]   # other noise, same real data
    assert numbers(last) == numbers(first)            # the last snapshot holds the checkpoint's sampler
    assert last["source"] == str(gan_run / "generator_epoch_003.pt")
    assert earlier["fd"] != first["fd"]               # and an earlier one another generator
    assert files_of(gan_run) == before


def test_curve_scores_every_snapshot_in_epoch_order_and_marks_the_best(gan_run, capsys):
    curve = score(gan_run / "checkpoint.pt", None, capsys, "--curve", "--n", 60)   # a file in the run: its folder
    snapshots = curve["snapshots"]
    epochs, fds = [s["epoch"] for s in snapshots], [s["fd"] for s in snapshots]
    assert epochs == [1, 2, 3] and len(set(fds)) == 3  # three generators, three distances
    assert curve["best_epoch"] == epochs[fds.index(min(fds))]
    assert [s["source"] for s in snapshots] == [str(gan_run / f"generator_epoch_00{e}.pt") for e in epochs]
    assert all(s["script"] == "gan" and s["n"] == 60 and s["class_accuracy"] is None for s in snapshots)
    # Each row is what the snapshot alone scores
    alone = score(gan_run / "generator_epoch_002.pt", None, capsys, "--n", 60)
    assert numbers(alone) == {**numbers(snapshots[1]), "epoch": None}

    assert run_inprocess(evaluate.main, [gan_run, "--curve", "--n", 60]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line[:5].strip().isdigit()]
    assert [int(row[0]) for row in rows] == [1, 2, 3]
    assert [float(row[1]) for row in rows] == pytest.approx(fds, abs=5e-4)
    marked = [int(row[0]) for row in rows if "<-" in row]
    assert marked == [curve["best_epoch"]] and sum("<- best FD" in line for line in lines) == 1


def test_curve_on_a_folder_without_snapshots_is_a_one_line_error(short_run, capsys):
    for source in (short_run, short_run / "checkpoint.pt"):
        capsys.readouterr()
        code = run_inprocess(evaluate.main, [source, "--curve"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert f"{short_run} holds no generator_epoch_*.pt snapshots" in err


def test_curve_orders_snapshots_by_epoch_past_999_and_skips_other_names(gan_run, tmp_path, capsys):
    run = tmp_path / "long_run"
    run.mkdir()
    for epoch, name in ((1, "generator_epoch_100.pt"), (2, "generator_epoch_1000.pt"), (3, "generator_epoch_999.pt")):
        shutil.copy(gan_run / f"generator_epoch_00{epoch}.pt", run / name)
    shutil.copy(gan_run / "generator_epoch_001.pt", run / "generator_epoch_best.pt")   # not a snapshot's name
    snapshots = score(run, None, capsys, "--curve", "--n", 20)["snapshots"]
    assert [s["epoch"] for s in snapshots] == [100, 999, 1000]
    assert [Path(s["source"]).name for s in snapshots] == [f"generator_epoch_{e}.pt" for e in (100, 999, 1000)]


# ---------------------------------------------------------------------------------------------
# Where the data is: the run's own data root, found from anywhere
# ---------------------------------------------------------------------------------------------
def test_a_run_is_scored_from_another_directory(gan_run, monkeypatch, capsys):
    """The run trained with an absolute --data-root; evaluate.py runs elsewhere, given a relative path."""
    before = files_of(gan_run.parent)
    monkeypatch.chdir(gan_run.parent)
    capsys.readouterr()
    assert run_inprocess(evaluate.main, [gan_run.name, "--curve", "--n", "40", "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert [line.split()[0] for line in lines if line[:5].strip().isdigit()] == ["1", "2", "3"]
    assert sum("<- best FD" in line for line in lines) == 1 and "training the" not in printed.err
    assert files_of(gan_run.parent) == before         # neither in the run nor in the current directory


def test_a_relative_data_root_missing_here_is_looked_for_in_the_repository(tiny, tmp_path, monkeypatch, capsys):
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    shutil.copytree(tiny["root"], repo / "data")       # the tiny MNIST and its cached classifier
    (repo / "mydata").mkdir()
    elsewhere.mkdir()
    monkeypatch.setattr(evaluate, "SCRIPT_DIR", repo)
    monkeypatch.chdir(elsewhere)
    assert evaluate.find_data_root(None, "mydata") == repo / "mydata"
    assert evaluate.find_data_root(None, None) == repo / "data"             # the default root alike
    assert evaluate.find_data_root(None, "nowhere") == Path("nowhere")      # in neither place: as it was
    assert evaluate.find_data_root("mydata", "other") == Path("mydata")     # --data-root is taken as given
    (elsewhere / "mydata").mkdir()
    assert evaluate.find_data_root(None, "mydata") == Path("mydata")        # here first
    # End to end: an npz scored from elsewhere without --data-root uses the repository's data.
    write_npz(elsewhere / "test.npz", tiny["test"], tiny["labels"])
    result = score("test.npz", None, capsys, "--n", N_TEST)
    assert result["fd"] < 1e-6 and "training the" not in result["_stderr"]
    assert not (elsewhere / "data").exists()


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, and nothing written
# ---------------------------------------------------------------------------------------------
def refused(argv, capsys):
    """Run evaluate.py in-process on argv, expecting a one-line error; returns that line."""
    capsys.readouterr()
    code = run_inprocess(evaluate.main, argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, (argv, err)
    assert len(err.strip().splitlines()) == 1, (argv, err)
    return err


def test_bad_input_is_refused_before_the_classifier_is_trained_or_cached(tmp_path, capsys):
    root = tmp_path / "fresh"
    write_idx_dataset(root / "MNIST", n_train=64, n_test=40)
    cache = evaluate.classifier_path(root, "mnist")
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (30, 1, 28, 28), dtype=np.uint8)
    cases = {"rgb": (write_npz(tmp_path / "rgb.npz", rng.integers(0, 256, (30, 3, 28, 28), dtype=np.uint8)),
                     "3 channel(s)"),
             "labels": (write_npz(tmp_path / "labels.npz", grey, np.arange(30) % 11), "labels run from 0 to 10"),
             "oblong": (write_npz(tmp_path / "oblong.npz", grey[..., :20]), "28x20")}
    for npz, expected in cases.values():
        err = refused([npz, "--data-root", root, "--n", 30], capsys)
        assert expected in err and "training the" not in err, err
        assert not cache.exists() and sorted(p.name for p in root.iterdir()) == ["MNIST"]
    # The same root with good input: the classifier is trained and cached there
    assert run_inprocess(evaluate.main, [write_npz(tmp_path / "grey.npz", grey), "--data-root", root, "--n", 30]) == 0
    assert cache.is_file()


def test_bad_input_gives_one_line_and_exit_2(tiny, gan_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (30, 1, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "no_images.npz", samples=grey)
    write_npz(tmp_path / "rgb.npz", rng.integers(0, 256, (30, 3, 28, 28), dtype=np.uint8))
    write_npz(tmp_path / "oblong.npz", rng.integers(0, 256, (30, 1, 28, 20), dtype=np.uint8))
    write_npz(tmp_path / "float.npz", grey.astype(np.float32) / 255)
    write_npz(tmp_path / "flat.npz", grey.reshape(30, 784))
    write_npz(tmp_path / "grey.npz", grey)
    write_npz(tmp_path / "bad_labels.npz", grey, np.arange(30) + 5)
    write_npz(tmp_path / "short_labels.npz", grey, np.arange(10))
    (tmp_path / "corrupt.npz").write_bytes(b"not an npz")
    (tmp_path / "corrupt_run").mkdir()
    (tmp_path / "corrupt_run" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "corrupt_run" / "generator_epoch_001.pt").write_bytes(b"not a snapshot")
    (tmp_path / "alien_run").mkdir()
    torch.save({"script": "stylegan", "args": {"dataset": "mnist"}, "sampler": {}},
               tmp_path / "alien_run" / "checkpoint.pt")
    (tmp_path / "old_run").mkdir()
    torch.save({"script": "gan", "args": {"dataset": "mnist"}, "generator": {}}, tmp_path / "old_run" / "checkpoint.pt")
    (tmp_path / "other_run").mkdir()
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other_run" / "checkpoint.pt")
    (tmp_path / "damaged_curve").mkdir()                 # a good last snapshot, a damaged earlier one
    shutil.copy(gan_run / "generator_epoch_003.pt", tmp_path / "damaged_curve")
    (tmp_path / "damaged_curve" / "generator_epoch_001.pt").write_bytes(b"cut short")
    fake_run = tmp_path / "fake_run"
    assert run_inprocess(gan.main, ["--dataset", "fake", "--max-steps", "1", "--out", fake_run]) == 0
    fake_files = files_of(fake_run)
    # --data-root everywhere: a case that got as far as loading data must not load the real MNIST
    root = ["--data-root", tiny["root"]]
    cases = [
        ([tmp_path / "missing"], "does not exist"),
        ([tmp_path / "empty"], f"{tmp_path / 'empty'} holds no checkpoint.pt: not a run folder"),
        ([tmp_path / "empty", "--curve"], "holds no generator_epoch_*.pt snapshots"),
        ([tmp_path / "no_images.npz"], "has no 'images' array"),
        ([tmp_path / "corrupt.npz", "--n", "30"], "cannot be read as an .npz"),
        ([tmp_path / "rgb.npz", "--n", "30"], "3 channel(s)"),
        ([tmp_path / "oblong.npz", "--n", "30"], "28x20"),
        ([tmp_path / "float.npz", "--n", "30"], "must be uint8"),
        ([tmp_path / "flat.npz", "--n", "30"], "must be uint8 (N, C, H, W)"),
        ([tmp_path / "grey.npz"], "holds 30 images, fewer than --n 10000"),
        ([tmp_path / "grey.npz", "--n", "31"], "fewer than --n 31"),
        ([tmp_path / "grey.npz", "--n", "1"], "--n must be at least 2"),
        ([tmp_path / "bad_labels.npz", "--n", "30"], "labels run from 5 to 34"),
        ([tmp_path / "short_labels.npz", "--n", "30"], "labels must be integers (N,)"),
        ([tmp_path / "grey.npz", "--n", "30", "--dataset", "cifar10"], "no yardstick for cifar10"),
        ([fake_run], "no yardstick for fake"),
        ([fake_run, "--dataset", "mnist"], "the run trained on fake, not --dataset mnist"),
        ([tmp_path / "corrupt_run"], "checkpoint.pt cannot be read"),
        ([tmp_path / "corrupt_run" / "generator_epoch_001.pt"], "generator_epoch_001.pt cannot be read"),
        ([tmp_path / "corrupt_run", "--curve"], "generator_epoch_001.pt cannot be read"),
        ([tmp_path / "damaged_curve", "--curve"], "generator_epoch_001.pt cannot be read"),
        ([tmp_path / "alien_run", "--n", "5"], "was written by stylegan.py, which is not in"),
        ([tmp_path / "old_run"], "written by an older version of gan.py"),
        ([tmp_path / "other_run"], "is not a checkpoint written by one of the GAN scripts"),
        ([tmp_path / "grey.npz", "--device", "tpu"], "tpu"),
    ]
    for argv, expected in cases:
        err = refused([*argv, *root], capsys)
        assert expected in err, (argv, err)
    assert files_of(fake_run) == fake_files           # refused before anything was drawn or written


def test_bad_input_from_the_command_line_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    assert run_as_command("evaluate.py", tmp_path / "nothing", monkeypatch=monkeypatch) == 2
    assert capsys.readouterr().err.strip() == f"evaluate.py: error: {tmp_path / 'nothing'} does not exist"
