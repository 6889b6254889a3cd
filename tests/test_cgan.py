"""cgan.py: one-batch runs on fake and MNIST-format data, the networks' layers, fakes judged
with their own labels, class-ordered grids, --generate with labels and --label, resume
exactness, bad input, and NaN handling."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import cgan
import common
from conftest import learning_directions, load, run_inprocess, state_tensors, to_uint8, write_image_folder

FAST = ["--dataset", "fake", "--batch-size", "64", "--log-every", "1"]


def test_one_batch_on_fake_data_trains_both_networks_and_saves_a_class_ordered_grid(tmp_path):
    out = tmp_path / "run"
    assert run_inprocess(cgan.main, FAST + ["--max-steps", "1", "--out", out]) == 0
    checkpoint = load(out / "checkpoint.pt")
    assert checkpoint["step"] == 1 and checkpoint["script"] == "cgan" and checkpoint["n_classes"] == 10
    # One step moved both networks (embeddings included) away from the seeded initial weights.
    common.seed_everything(0)
    fresh_g, fresh_d = cgan.Generator(100, 10, (1, 28, 28)), cgan.Discriminator(10, (1, 28, 28))
    for fresh, name in ((fresh_g, "generator"), (fresh_d, "discriminator")):
        for key in ("net.0.weight", "label_embedding.weight"):
            assert not torch.equal(fresh.state_dict()[key], checkpoint[name][key]), (name, key)
    rows = (out / "losses.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,loss_d,loss_g,d_real,d_fake" and len(rows) == 2
    assert all(np.isfinite(float(v)) for v in rows[1].split(",")[2:])
    # Grid: row k is class k, ten columns, each column one noise vector drawn as every class.
    noise = checkpoint["fixed_noise"]   # the labels are arange(10) repeated: nothing to save
    assert noise.shape == (100, 100) and torch.equal(noise[30:40], noise[:10])
    from PIL import Image
    assert Image.open(out / "step_0000001.png").size == (10 * 30 + 2, 10 * 30 + 2)


def test_one_batch_on_mnist_format_files(tmp_path, mnist_root):
    out = tmp_path / "run"
    assert run_inprocess(cgan.main, ["--data-root", mnist_root, "--max-steps", "1", "--out", out]) == 0
    checkpoint = load(out / "checkpoint.pt")
    assert checkpoint["image_shape"] == (1, 28, 28) and checkpoint["n_classes"] == 10
    assert checkpoint["class_names"][0].startswith("0")   # torchvision's "0 - zero"


def test_networks_have_the_intended_layers():
    generator, discriminator = cgan.Generator(100, 10, (1, 28, 28)), cgan.Discriminator(10, (1, 28, 28))
    # G: Linear, LeakyReLU(0.2), then BatchNorm with PyTorch momentum 0.2 (Keras' 0.8), default eps.
    kinds = [type(m) for m in generator.net]
    assert kinds == [nn.Linear, nn.LeakyReLU, nn.BatchNorm1d] * 3 + [nn.Linear, nn.Tanh]
    assert [m.out_features for m in generator.net if isinstance(m, nn.Linear)] == [256, 512, 1024, 784]
    assert all(m.momentum == 0.2 and m.eps == 1e-5 for m in generator.net if isinstance(m, nn.BatchNorm1d))
    # The label multiplies (does not widen) the input: G's first layer takes latent_dim, D's the pixels.
    assert generator.net[0].in_features == 100 and generator.label_embedding.weight.shape == (10, 100)
    assert discriminator.net[0].in_features == 784 and discriminator.label_embedding.weight.shape == (10, 784)
    kinds = [type(m) for m in discriminator.net]
    assert kinds == [nn.Linear, nn.LeakyReLU, nn.Linear, nn.LeakyReLU, nn.Dropout,
                     nn.Linear, nn.LeakyReLU, nn.Dropout, nn.Linear]
    assert [m.p for m in discriminator.net if isinstance(m, nn.Dropout)] == [0.4, 0.4]
    # Outputs: images in [-1, 1] that depend on the label; one logit per image.
    generator.eval()
    z = torch.randn(4, 100)
    with torch.no_grad():
        threes, sevens = generator(z, torch.full((4,), 3)), generator(z, torch.full((4,), 7))
        assert threes.shape == (4, 1, 28, 28) and threes.abs().max() <= 1
        assert not torch.allclose(threes, sevens)
        assert discriminator(threes, torch.full((4,), 3)).shape == (4, 1)


def test_fakes_are_judged_with_the_labels_they_were_generated_with(tmp_path, monkeypatch):
    generated, judged = [], []
    g_forward, d_forward = cgan.Generator.forward, cgan.Discriminator.forward

    def record_g(self, z, labels):
        generated.append(labels.clone())
        return g_forward(self, z, labels)

    def record_d(self, images, labels):
        judged.append(labels.clone())
        return d_forward(self, images, labels)

    monkeypatch.setattr(cgan.Generator, "forward", record_g)
    monkeypatch.setattr(cgan.Discriminator, "forward", record_d)
    assert run_inprocess(cgan.main, FAST + ["--max-steps", "1", "--out", tmp_path / "run"]) == 0
    args = cgan.parse_args(["--dataset", "fake"])[0]
    _, real_labels = next(common.load_data(args, torch.device("cpu")).batches(64, epoch=0, seed=0))
    # One training step: G once; D on real and fake images with their labels in one pass (D's step), then
    # on the fakes with their labels (G's step).
    fake_labels = generated[0]
    assert len(judged) == 2 and torch.equal(judged[0], torch.cat([real_labels, fake_labels]))
    assert torch.equal(judged[1], fake_labels)
    assert not torch.equal(fake_labels, real_labels)   # drawn on their own, not the real batch's
    assert set(fake_labels.tolist()) == set(range(10))  # uniform over the classes (64 draws)


def test_resume_gives_exactly_the_uninterrupted_weights(tmp_path):
    flags = ["--dataset", "fake", "--epochs", "2", "--label-smoothing", "0.2", "--label-exchange", "0.3"]
    assert run_inprocess(cgan.main, flags + ["--out", tmp_path / "whole"]) == 0
    # Stop mid-epoch (step 5 of 8 in epoch 1), then resume to the end across an epoch boundary.
    assert run_inprocess(cgan.main, flags + ["--out", tmp_path / "parts", "--max-steps", "5"]) == 0
    assert load(tmp_path / "parts" / "checkpoint.pt")["step"] == 5
    assert run_inprocess(cgan.main, ["--resume", tmp_path / "parts" / "checkpoint.pt"]) == 0
    whole, parts = load(tmp_path / "whole" / "checkpoint.pt"), load(tmp_path / "parts" / "checkpoint.pt")
    assert whole["step"] == parts["step"] == 16
    for name, tensor in state_tensors(whole).items():
        assert torch.equal(tensor, state_tensors(parts)[name]), name
    assert torch.equal(whole["opt_d"]["state"][0]["exp_avg"], parts["opt_d"]["state"][0]["exp_avg"])
    assert torch.equal(whole["fixed_noise"], parts["fixed_noise"])


def test_generate_cycles_through_the_classes_or_gives_one_with_label(tmp_path):
    out = tmp_path / "run"
    assert run_inprocess(cgan.main, FAST + ["--max-steps", "3", "--out", out]) == 0
    checkpoint = load(out / "checkpoint.pt")

    def expected(n, labels, seed):
        # Rebuilt by hand: eval-mode BatchNorm, the seed's noise, the given labels.
        generator = cgan.Generator(100, 10, (1, 28, 28))
        generator.load_state_dict(checkpoint["sampler"])   # G's moving average
        generator.eval()
        common.seed_everything(seed)
        with torch.no_grad():
            return to_uint8(generator(torch.randn(n, 100), labels))

    assert run_inprocess(cgan.main, ["--generate", "25", "--resume", out / "checkpoint.pt", "--seed", "7"]) == 0
    with np.load(out / "generated.npz") as npz:
        images, labels = npz["images"], npz["labels"]
    assert images.shape == (25, 1, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [k % 10 for k in range(25)]
    assert np.array_equal(images, expected(25, torch.arange(25) % 10, 7))
    assert run_inprocess(cgan.main, ["--generate", "12", "--resume", out / "checkpoint.pt", "--label", "3"]) == 0
    with np.load(out / "generated-2.npz") as npz:   # beside the first samples, never over them
        images, labels = npz["images"], npz["labels"]
    assert labels.tolist() == [3] * 12
    assert np.array_equal(images, expected(12, torch.full((12,), 3), 0))
    assert (out / "generated.png").is_file() and (out / "generated-2.png").is_file()


def test_label_is_checked_against_the_runs_classes(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_inprocess(cgan.main, FAST + ["--max-steps", "1", "--out", out]) == 0
    capsys.readouterr()
    for label in ("10", "-1"):
        code = run_inprocess(cgan.main, ["--generate", "5", "--resume", out / "checkpoint.pt", "--label", label])
        err = capsys.readouterr().err
        assert code == 2 and f"--label {label}: the run's classes are 0 to 9" in err
        assert "Traceback" not in err
    assert not (out / "generated.npz").exists()
    code = run_inprocess(cgan.main, ["--dataset", "fake", "--label", "3", "--out", tmp_path / "other"])
    assert code == 2 and "use it with --generate" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    code = run_inprocess(cgan.main, ["--resume", out / "checkpoint.pt", "--label", "3"])
    assert code == 2 and "use it with --generate" in capsys.readouterr().err


def test_a_folder_with_one_class_is_refused(tmp_path, capsys):
    one_class = write_image_folder(tmp_path / "one", classes=("cats",), size=28, mode="L")
    loose = tmp_path / "loose"
    write_image_folder(loose, classes=(".",), size=28, mode="L")   # images directly in the root
    for root in (one_class, loose):
        out = tmp_path / "run"
        code = run_inprocess(cgan.main, ["--dataset", "folder", "--data-root", root, "--batch-size", "4",
                                         "--out", out])
        err = capsys.readouterr().err
        assert code == 2 and "holds a single class" in err and "Traceback" not in err
        assert not out.exists()


def test_a_folder_with_two_classes_trains(tmp_path, capsys):
    root = write_image_folder(tmp_path / "pets", classes=("cats", "dogs"), size=28, mode="L")
    out = tmp_path / "run"
    assert run_inprocess(cgan.main, ["--dataset", "folder", "--data-root", root, "--batch-size", "8",
                                     "--max-steps", "1", "--out", out]) == 0
    checkpoint = load(out / "checkpoint.pt")
    assert checkpoint["n_classes"] == 2 and checkpoint["class_names"] == ["cats", "dogs"]
    assert checkpoint["discriminator"]["label_embedding.weight"].shape == (2, 784)
    from PIL import Image
    assert Image.open(out / "step_0000001.png").size == (10 * 30 + 2, 2 * 30 + 2)   # 2 rows of 10
    # --data-root may change on resume (the data moved), but not the data: here it gains a class.
    more = write_image_folder(tmp_path / "zoo", classes=("cats", "dogs", "owls"), size=28, mode="L")
    code = run_inprocess(cgan.main, ["--resume", out / "checkpoint.pt", "--data-root", more, "--max-steps", "2"])
    assert code == 2 and "the data is 24 images, 3 classes, 1 channel(s), 28 px; the run trained on 16 images, " \
                         "2 classes" in capsys.readouterr().err
    write_image_folder(root, classes=("cats", "dogs", "owls"), size=28, mode="L")
    code = run_inprocess(cgan.main, ["--resume", out / "checkpoint.pt", "--max-steps", "2"])
    assert code == 2 and "the data is 24 images, 3 classes" in capsys.readouterr().err
    assert load(out / "checkpoint.pt")["step"] == 1


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert run_inprocess(cgan.main, ["--dataset", "fake", "--epochs", "1", "--out", out]) == 0
    good = (out / "checkpoint.pt").read_bytes()
    forward = cgan.Discriminator.forward
    monkeypatch.setattr(cgan.Discriminator, "forward", lambda self, x, y: forward(self, x, y) * float("nan"))
    code = run_inprocess(cgan.main, ["--resume", out / "checkpoint.pt", "--epochs", "2"])
    assert code == 1 and "NaN" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == good


BAD_INPUTS = [
    (["--epochs", "0"], "--epochs"),
    (["--label-smoothing", "1"], "--label-smoothing"),
    (["--label-exchange", "1.5"], "--label-exchange"),
    (["--label", "two", "--generate", "3"], "--label"),
    (["--batch-size", "100000"], "fewer than --batch-size"),
]


@pytest.mark.parametrize("argv,expected", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, argv, expected):
    out = tmp_path / "run"
    code = run_inprocess(cgan.main, ["--dataset", "fake", "--out", out, *argv])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert not out.exists()


def test_a_step_moves_d_and_g_in_the_direction_of_the_game():
    """D's update raises its real-minus-fake margin (images judged with their labels); G's update
    raises D's score of G's images. Flipping G's target or swapping D's targets reverses one of them."""
    for seed in range(3):
        moved = learning_directions(cgan, seed=seed)
        assert moved["d_margin"][1] > moved["d_margin"][0] + 0.03, moved
        assert moved["g_score"][1] > moved["g_score"][0], moved
