"""acgan.py: one-batch runs on fake and MNIST-format data and at full size (64x64 RGB, two classes,
width 128), the networks and their init, the class loss on logits, label tricks that spare the class
targets, class-ordered grids, --generate with labels and --label, resume exactness, the direction
of learning, and bad input."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import acgan
import common
from conftest import (call_train_step, learning_directions, load, run_inprocess, state_tensors, to_uint8,
                      write_image_folder)

# Small width and batch: the tests exercise the code, not the quality of the samples.
FAST = ["--dataset", "fake", "--width", "8", "--batch-size", "32", "--log-every", "1"]
SN = "parametrizations.weight.original"   # a spectrally normalised layer keeps its raw weight here


def test_one_batch_on_fake_data_trains_both_networks_and_saves_a_class_ordered_grid(tmp_path):
    out = tmp_path / "run"
    assert run_inprocess(acgan.main, FAST + ["--max-steps", "1", "--out", out]) == 0
    checkpoint = load(out / "checkpoint.pt")
    assert checkpoint["step"] == 1 and checkpoint["script"] == "acgan" and checkpoint["n_classes"] == 10
    assert checkpoint["image_shape"] == (1, 32, 32)   # the default --img-size
    common.seed_everything(0)
    fresh_g = acgan.Generator(100, 10, (1, 32, 32), 8)
    fresh_d = acgan.Discriminator(10, (1, 32, 32), 8, 0.0, spectral_norm=True)   # the defaults
    for fresh, name, keys in ((fresh_g, "generator", ("project.weight", "label_embedding.weight")),
                              (fresh_d, "discriminator", (f"net.0.{SN}", f"realness_head.{SN}",
                                                          f"class_head.{SN}"))):
        for key in keys:
            assert not torch.equal(fresh.state_dict()[key], checkpoint[name][key]), (name, key)
    rows = (out / "losses.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,loss_d,loss_g,d_real,d_fake,acc_real,acc_fake" and len(rows) == 2
    values = [float(v) for v in rows[1].split(",")[2:]]
    assert all(np.isfinite(values)) and all(0 <= v <= 1 for v in values[2:])
    assert torch.equal(checkpoint["fixed_noise"][90:100], checkpoint["fixed_noise"][:10])


def test_networks_shapes_heads_and_initialisation():
    torch.manual_seed(0)
    generator = acgan.Generator(100, 10, (1, 32, 32), 32)
    discriminator = acgan.Discriminator(10, (1, 32, 32), 32, 0.3, spectral_norm=False)   # the paper's D
    convs = [m for m in generator.net if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(256, 128), (128, 64), (64, 32), (32, 1)]
    assert all(m.kernel_size == (4, 4) and m.stride == (2, 2) and m.padding == (1, 1) for m in convs)
    convs = [m for m in discriminator.net if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(1, 32), (32, 64), (64, 128), (128, 256)]
    # BatchNorm on all D layers but the first
    norms = [m.num_features for m in discriminator.net if isinstance(m, nn.BatchNorm2d)]
    assert norms == [64, 128, 256]
    assert not isinstance(discriminator.net[1], nn.BatchNorm2d)
    # Dropout after each convolution's activation (--d-dropout P; 0 by default)
    assert [m.p for m in discriminator.net if isinstance(m, nn.Dropout)] == [0.3] * 4
    assert acgan.parse_args([])[0].d_dropout == 0
    # Init: conv/linear weights N(0, 0.02), biases 0, BatchNorm weights 1
    for module in [*generator.modules(), *discriminator.modules()]:
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            assert abs(module.weight.std().item() - 0.02) < 0.004 and torch.all(module.bias == 0)
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0) and module.eps == 1e-5
    # Two parallel heads on raw logits: no Sigmoid or Softmax anywhere in D
    assert not any(isinstance(m, (nn.Sigmoid, nn.Softmax, nn.LogSoftmax)) for m in discriminator.modules())
    generator.eval()
    with torch.no_grad():
        z = torch.randn(6, 100)
        images = generator(z, torch.arange(6))
        assert images.shape == (6, 1, 32, 32) and images.abs().max() <= 1
        assert not torch.allclose(images, generator(z, torch.full((6,), 9)))   # the label matters
        realness, classes = discriminator(images)
    assert realness.shape == (6, 1) and classes.shape == (6, 10)
    assert (classes < 0).any()   # raw logits, not probabilities (a softmax would be all positive)


def test_spectral_norm_replaces_d_s_batchnorm_and_bounds_each_layer():
    """The default D: every conv and linear layer divided by its largest singular value (estimated by
    power iteration, one step per forward pass in training), no BatchNorm; --no-spectral-norm gives
    the paper's BatchNorm D."""
    assert acgan.parse_args([])[0].spectral_norm and not acgan.parse_args(["--no-spectral-norm"])[0].spectral_norm
    torch.manual_seed(0)
    discriminator = acgan.Discriminator(10, (1, 32, 32), 8, 0.0, spectral_norm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in discriminator.modules())
    layers = [m for m in discriminator.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 6 and all(nn.utils.parametrize.is_parametrized(m, "weight") for m in layers)
    for _ in range(50):   # power iteration converges on the largest singular value
        discriminator(torch.randn(4, 1, 32, 32))
    for layer in layers:
        raw = layer.parametrizations.weight.original
        assert abs(raw.std().item() - 0.02) < 0.006   # initialised N(0, 0.02) before normalising
        largest = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2).item()
        assert largest == pytest.approx(1.0, abs=0.05) and torch.linalg.matrix_norm(raw.flatten(1), ord=2) < 0.9
    plain = acgan.Discriminator(10, (1, 32, 32), 8, 0.0, spectral_norm=False)
    assert [m.num_features for m in plain.modules() if isinstance(m, nn.BatchNorm2d)] == [16, 32, 64]


def test_class_loss_is_cross_entropy_on_logits():
    labels = torch.tensor([0, 3, 9, 3])
    perfect = 30.0 * nn.functional.one_hot(labels, 10).float()   # very confident and right
    assert acgan.class_loss(perfect, labels).item() < 1e-6
    # A Softmax before CrossEntropyLoss (softmax applied twice) could not get below log(1 + 9/e) for this batch.
    assert acgan.class_loss(perfect.softmax(1), labels).item() > 1.4
    wrong = 30.0 * nn.functional.one_hot((labels + 1) % 10, 10).float()
    assert acgan.class_loss(wrong, labels).item() > 20
    uniform = torch.zeros(4, 10)
    assert abs(acgan.class_loss(uniform, labels).item() - np.log(10)) < 1e-5


@pytest.mark.parametrize("fake_class_loss", [False, True])
def test_label_tricks_change_the_realness_targets_only(tmp_path, monkeypatch, fake_class_loss):
    """With label exchange certain and smoothing on, D's BCE targets are swapped and smoothed,
    while the class targets stay the real batch's labels and the labels G was given. D's class
    head learns from G's images only with --fake-class-loss (the paper's loss)."""
    bce_targets, class_targets, generated, order = [], [], [], []
    bce, class_loss, g_forward = acgan.bce, acgan.class_loss, acgan.Generator.forward

    def record_bce(logits, targets):
        bce_targets.append(targets.clone())
        order.append("bce")
        return bce(logits, targets)

    def record_class_loss(logits, labels):
        class_targets.append(labels.clone())
        order.append("class")
        return class_loss(logits, labels)

    def record_g(self, z, labels):
        generated.append(labels.clone())
        return g_forward(self, z, labels)

    monkeypatch.setattr(acgan, "bce", record_bce)
    monkeypatch.setattr(acgan, "class_loss", record_class_loss)
    monkeypatch.setattr(acgan.Generator, "forward", record_g)
    flags = ["--fake-class-loss"] if fake_class_loss else []
    assert run_inprocess(acgan.main, FAST + flags + ["--max-steps", "1", "--label-exchange", "1",
                                                     "--label-smoothing", "0.5", "--out", tmp_path / "run"]) == 0
    args = acgan.parse_args(["--dataset", "fake"])[0]
    _, real_labels = next(common.load_data(args, torch.device("cpu")).batches(32, epoch=0, seed=0))
    fake_labels = generated[0]
    # D step: real (swapped to 0), fake (swapped to smoothed reals); G step: target 1.
    assert len(bce_targets) == 3
    assert torch.all(bce_targets[0] == 0)
    assert torch.all((bce_targets[1] >= 0.5) & (bce_targets[1] <= 1)) and bce_targets[1].std() > 0
    assert torch.all(bce_targets[2] == 1)
    # Class targets: the true labels of the real batch, the labels the fakes were made from
    # (in D's step only with --fake-class-loss; always in G's step).
    d_step = ["bce", "class", "bce"] + (["class"] if fake_class_loss else [])
    assert order == d_step + ["bce", "class"]
    assert len(class_targets) == (3 if fake_class_loss else 2)
    assert torch.equal(class_targets[0], real_labels) and class_targets[0].dtype == torch.long
    assert all(torch.equal(targets, fake_labels) for targets in class_targets[1:])


@pytest.mark.parametrize("flags, low", [([], 0.9), (["--label-smoothing", "0"], 1.0)])
def test_real_targets_are_smoothed_by_0_1_by_default(tmp_path, monkeypatch, flags, low):
    """acgan's default smooths D's real targets into [0.9, 1] (measured better, see the README);
    --label-smoothing 0 gives the plain 1. Fake targets stay 0 either way."""
    bce_targets = []
    bce = acgan.bce

    def record_bce(logits, targets):
        bce_targets.append(targets.clone())
        return bce(logits, targets)

    monkeypatch.setattr(acgan, "bce", record_bce)
    assert run_inprocess(acgan.main, FAST + flags + ["--max-steps", "1", "--out", tmp_path / "run"]) == 0
    real_targets, fake_targets = bce_targets[0], bce_targets[1]
    assert torch.all((real_targets >= low) & (real_targets <= 1))
    assert (real_targets.min() < 0.93) if low < 1 else torch.all(real_targets == 1)
    assert torch.all(fake_targets == 0)
    assert load(tmp_path / "run" / "checkpoint.pt")["args"]["label_smoothing"] == (0.1 if low < 1 else 0.0)


def test_resume_gives_exactly_the_uninterrupted_weights(tmp_path):
    flags = ["--dataset", "fake", "--width", "8", "--epochs", "2", "--label-smoothing", "0.2",
             "--label-exchange", "0.3"]
    assert run_inprocess(acgan.main, flags + ["--out", tmp_path / "whole"]) == 0
    # Stop mid-epoch (step 5 of 8 in epoch 1), then resume to the end across an epoch boundary.
    assert run_inprocess(acgan.main, flags + ["--out", tmp_path / "parts", "--max-steps", "5"]) == 0
    assert load(tmp_path / "parts" / "checkpoint.pt")["step"] == 5
    assert run_inprocess(acgan.main, ["--resume", tmp_path / "parts" / "checkpoint.pt"]) == 0
    whole, parts = load(tmp_path / "whole" / "checkpoint.pt"), load(tmp_path / "parts" / "checkpoint.pt")
    assert whole["step"] == parts["step"] == 16
    for name, tensor in state_tensors(whole).items():
        assert torch.equal(tensor, state_tensors(parts)[name]), name
    assert torch.equal(whole["opt_g"]["state"][0]["exp_avg"], parts["opt_g"]["state"][0]["exp_avg"])
    rows = (tmp_path / "parts" / "losses.csv").read_text().splitlines()
    assert rows[-1] == (tmp_path / "whole" / "losses.csv").read_text().splitlines()[-1]


def test_generate_cycles_through_the_classes_or_gives_one_with_label(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_inprocess(acgan.main, FAST + ["--max-steps", "2", "--out", out]) == 0
    checkpoint = load(out / "checkpoint.pt")

    def expected(n, labels, seed):
        # Rebuilt by hand: eval-mode BatchNorm, the seed's noise, the given labels.
        generator = acgan.Generator(100, 10, (1, 32, 32), 8)
        generator.load_state_dict(checkpoint["sampler"])   # G's moving average
        generator.eval()
        common.seed_everything(seed)
        with torch.no_grad():
            return to_uint8(generator(torch.randn(n, 100), labels))

    assert run_inprocess(acgan.main, ["--generate", "23", "--resume", out / "checkpoint.pt", "--seed", "5"]) == 0
    with np.load(out / "generated.npz") as npz:
        images, labels = npz["images"], npz["labels"]
    assert images.shape == (23, 1, 32, 32) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [k % 10 for k in range(23)]
    assert np.array_equal(images, expected(23, torch.arange(23) % 10, 5))
    assert run_inprocess(acgan.main, ["--generate", "4", "--resume", out / "checkpoint.pt", "--label", "9"]) == 0
    with np.load(out / "generated-2.npz") as npz:
        assert npz["labels"].tolist() == [9] * 4
        assert np.array_equal(npz["images"], expected(4, torch.full((4,), 9), 0))
    capsys.readouterr()
    for label in ("10", "-2"):
        code = run_inprocess(acgan.main, ["--generate", "4", "--resume", out / "checkpoint.pt", "--label", label])
        err = capsys.readouterr().err
        assert code == 2 and f"--label {label}: the run's classes are 0 to 9" in err


def test_img_size_must_be_a_multiple_of_16(tmp_path, capsys):
    for size in ("28", "40", "8"):
        out = tmp_path / "run"
        code = run_inprocess(acgan.main, ["--dataset", "fake", "--img-size", size, "--out", out])
        err = capsys.readouterr().err
        assert code == 2 and f"--img-size {size} is not a multiple of 16" in err and "Traceback" not in err
        assert not out.exists()


def test_a_folder_with_one_class_is_refused(tmp_path, capsys):
    root = write_image_folder(tmp_path / "one", classes=("cats",), size=32)
    out = tmp_path / "run"
    code = run_inprocess(acgan.main, ["--dataset", "folder", "--data-root", root, "--batch-size", "4",
                                      "--out", out])
    err = capsys.readouterr().err
    assert code == 2 and "holds a single class" in err and "Traceback" not in err
    assert not out.exists()


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert run_inprocess(acgan.main, FAST + ["--max-steps", "2", "--out", out]) == 0
    good = (out / "checkpoint.pt").read_bytes()
    forward = acgan.Discriminator.forward
    monkeypatch.setattr(acgan.Discriminator, "forward",
                        lambda self, x: tuple(t * float("nan") for t in forward(self, x)))
    code = run_inprocess(acgan.main, ["--resume", out / "checkpoint.pt", "--max-steps", "3"])
    assert code == 1 and "NaN" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == good


BAD_INPUTS = [
    (["--width", "0"], "--width"),
    (["--label", "3"], "use it with --generate"),
    (["--label-exchange", "-0.1"], "--label-exchange"),
    (["--batch-size", "100000"], "fewer than --batch-size"),
]


@pytest.mark.parametrize("argv,expected", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, argv, expected):
    out = tmp_path / "run"
    code = run_inprocess(acgan.main, ["--dataset", "fake", "--out", out, *argv])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert not out.exists()


def test_a_step_moves_d_and_g_in_the_direction_of_the_game():
    """D's update raises its real-minus-fake margin; G's update raises D's realness score of G's
    images. Flipping G's target or swapping D's targets reverses one of them."""
    for seed in range(3):
        moved = learning_directions(acgan, seed=seed)
        assert moved["d_margin"][1] > moved["d_margin"][0] + 0.02, moved
        assert moved["g_score"][1] > moved["g_score"][0] + 0.002, moved


def test_d_steps_teach_the_class_head_the_classes_of_real_images():
    args = acgan.parse_args(["--dataset", "fake", "--width", "8"])[0]
    data = common.load_data(args, torch.device("cpu"))
    real_images, real_labels = next(data.batches(64, epoch=0, seed=0))
    common.seed_everything(0)
    nets = acgan.build(args, data.shape, data.n_classes, torch.device("cpu"))

    def class_accuracy():
        torch.manual_seed(5)   # the same dropout masks each time
        with torch.no_grad():
            return (nets[1](real_images)[1].argmax(1) == real_labels).float().mean().item()
    before = class_accuracy()
    for step in range(20):
        call_train_step(acgan, nets, real_images, real_labels, args, step)
    assert before < 0.2 and class_accuracy() > 0.8
