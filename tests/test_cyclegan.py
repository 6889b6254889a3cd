"""cyclegan.py: one-batch runs on fake data, thin2thick and a folder of trainA/ and trainB/, the
thin2thick halves and thicken(), the losses by hand, the image pool, the learning-rate schedule,
resume exactness, the direction of learning, --generate, evaluate.py's translation scores, and bad
input."""
import argparse
import json
import random
from copy import deepcopy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

import common
import cyclegan
from conftest import load, run_inprocess, step_settings, to_uint8, write_idx_dataset, write_image_folder

# Tiny networks: the tests exercise the code, not the quality of the translations.
SMALL = ["--width", "4", "--blocks", "1", "--log-every", "1"]
FAST = ["--dataset", "fake", *SMALL, "--batch-size", "8"]
CPU = torch.device("cpu")


def tiny_mnist(root):
    """A data root holding a tiny MNIST (128 training images, 64 test images)."""
    return write_idx_dataset(root / "MNIST", n_train=128, n_test=64)


def mnist_images(root, train):
    """The tiny MNIST's images and labels as torchvision's reader gives them."""
    flags = argparse.Namespace(dataset="mnist", data_root=root, img_size=28, batch_size=1, seed=0)
    data = common.load_data(flags, CPU, train=train)
    return data.images, data.labels


def networks(checkpoint):
    """The four networks' weights in a checkpoint: {"g_ab", "g_ba", "d_a", "d_b"} -> state dict."""
    generators = {side: {k[5:]: v for k, v in checkpoint["sampler"].items() if k.startswith(side + ".")}
                  for side in ("g_ab", "g_ba")}
    return {**generators, "d_a": checkpoint["d_a"], "d_b": checkpoint["d_b"]}


def seeded_networks(checkpoint):
    """The networks a run with this checkpoint's flags starts from: seed, then build()."""
    args = argparse.Namespace(**checkpoint["args"])
    common.seed_everything(args.seed)
    translator, d_a, d_b, *_ = cyclegan.build(args, checkpoint["image_shape"], checkpoint["n_classes"], CPU)
    return networks({"sampler": translator.state_dict(), "d_a": d_a.state_dict(), "d_b": d_b.state_dict()})


def tile(grid, row, column, size=28):
    """One image of a save_grid PNG (2 px padding), channel 0, as uint8 (size, size)."""
    top, left = 2 + row * (size + 2), 2 + column * (size + 2)
    return torch.from_numpy(np.asarray(grid)[top:top + size, left:left + size, 0].copy())


# ---------------------------------------------------------------------------------------------
# 1. One batch
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["fake", "thin2thick"])
def test_one_batch_trains_all_four_networks_logs_and_draws_a_six_row_grid(tmp_path, dataset):
    """One step moves every network away from its seeded start, each weight by at most lr (Adam's first
    step is lr * g / (|g| + eps)): so the start really is the seeded build() and the step happened.
    The grid's rows 0 and 3 are the first 8 images of A and of B; 6 rows of 8, 28 px."""
    root = tmp_path / "data"
    tiny_mnist(root)
    out = tmp_path / "run"
    flags = ["--dataset", dataset, "--data-root", root, *SMALL, "--batch-size", "8"]
    assert run_inprocess(cyclegan.main, flags + ["--max-steps", "1", "--out", out]) == 0
    checkpoint = load(out / "checkpoint.pt")
    assert checkpoint["step"] == 1 and checkpoint["script"] == "cyclegan" and checkpoint["image_shape"] == (1, 28, 28)
    trained, fresh = networks(checkpoint), seeded_networks(checkpoint)
    for net in ("g_ab", "g_ba", "d_a", "d_b"):
        assert set(trained[net]) == set(fresh[net]) and len(trained[net]) > 0, net
        moved = max((trained[net][k] - fresh[net][k]).abs().max().item() for k in fresh[net])
        assert 0 < moved <= 2e-4 * 1.001 + 1e-7, (net, moved)
        first = next(k for k in fresh[net] if k.endswith("weight"))
        assert (trained[net][first] != fresh[net][first]).float().mean() > 0.5, (net, first)
    assert checkpoint["pool_a"]["_extra_state"]["count"] == checkpoint["pool_b"]["_extra_state"]["count"] == 8
    rows = (out / "losses.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,loss_d,loss_g,gan,cycle,identity" and len(rows) == 2
    values = [float(v) for v in rows[1].split(",")]
    assert values[:2] == [1, 1] and all(np.isfinite(values)) and all(v > 0 for v in values[2:])
    grid = Image.open(out / "step_0000001.png")
    assert grid.size == (8 * 30 + 2, 6 * 30 + 2)   # 8 columns, rows a, G(a), F(G(a)), b, F(b), G(F(b))
    args = cyclegan.parse_args([str(flag) for flag in flags])[0]
    data = cyclegan.load_unpaired(args, CPU)
    for column in range(8):
        assert torch.equal(tile(grid, 0, column), data.a.images[column, 0]), column
        assert torch.equal(tile(grid, 3, column), data.b.images[column, 0]), column


# ---------------------------------------------------------------------------------------------
# 2. thin2thick: two halves, B thickened
# ---------------------------------------------------------------------------------------------
def test_thicken_is_a_3x3_maximum_filter():
    image = torch.zeros(1, 1, 4, 5, dtype=torch.uint8)
    image[0, 0, 1, 1], image[0, 0, 3, 4] = 255, 7
    expected = torch.tensor([[255, 255, 255, 0, 0],
                             [255, 255, 255, 0, 0],
                             [255, 255, 255, 7, 7],
                             [0, 0, 0, 7, 7]], dtype=torch.uint8)
    thick = cyclegan.thicken(image)
    assert thick.dtype == torch.uint8 and thick.shape == (1, 1, 4, 5)
    assert torch.equal(thick[0, 0], expected)
    # and on random images, against the maximum of each in-image 3x3 neighbourhood
    images = torch.randint(0, 256, (2, 1, 6, 7), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    by_hand = torch.zeros_like(images)
    for n in range(2):
        for y in range(6):
            for x in range(7):
                by_hand[n, 0, y, x] = images[n, 0, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].max()
    assert torch.equal(cyclegan.thicken(images), by_hand)


def test_thin2thick_a_is_the_first_half_b_the_second_half_thickened(tmp_path):
    root = tmp_path / "data"
    train_images, train_labels = tiny_mnist(root)
    images, labels = torch.from_numpy(train_images).unsqueeze(1), torch.from_numpy(train_labels).long()
    args = cyclegan.parse_args(["--dataset", "thin2thick", "--data-root", str(root)])[0]
    data = cyclegan.load_unpaired(args, CPU)
    assert data.shape == (1, 28, 28) and data.n_classes == 10
    assert torch.equal(data.a.images, images[:64]) and torch.equal(data.a.labels, labels[:64])
    assert torch.equal(data.b.images, cyclegan.thicken(images[64:])) and torch.equal(data.b.labels, labels[64:])
    # no image in both: no B is the thickening of any A
    thick_a = cyclegan.thicken(data.a.images).flatten(1)
    assert not (data.b.images.flatten(1)[:, None] == thick_a[None]).all(-1).any()
    assert not torch.equal(data.b.images, cyclegan.thicken(data.a.images))
    # the test sets: MNIST's test images as they are and thickened
    test_images, test_labels = mnist_images(root, train=False)
    test = cyclegan.load_unpaired(args, CPU, train=False)
    assert torch.equal(test.a.images, test_images) and torch.equal(test.b.images, cyclegan.thicken(test_images))
    assert torch.equal(test.a.labels, test_labels) and torch.equal(test.b.labels, test_labels)
    # fake: the two halves of 512 made-up images, B thickened
    fake = cyclegan.load_unpaired(cyclegan.parse_args(["--dataset", "fake"])[0], CPU)
    assert len(fake.a.images) == len(fake.b.images) == 256
    all_fake = common.load_data(argparse.Namespace(dataset="fake", data_root=None, img_size=28, batch_size=1, seed=0), CPU)
    assert torch.equal(fake.a.images, all_fake.images[:256])
    assert torch.equal(fake.b.images, cyclegan.thicken(all_fake.images[256:]))


# ---------------------------------------------------------------------------------------------
# 3. The losses
# ---------------------------------------------------------------------------------------------
def test_gan_and_cycle_losses_by_hand():
    scores = torch.tensor([[[[0.5, 1.0], [0.0, 2.0]]]])                       # (1, 1, 2, 2) patch scores
    one, zero = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)
    assert cyclegan.gan_loss(scores, one).item() == pytest.approx((0.25 + 0 + 1 + 1) / 4)
    assert cyclegan.gan_loss(scores, zero).item() == pytest.approx((0.25 + 1 + 0 + 4) / 4)
    # a target per image, broadcast over that image's patches
    two = torch.tensor([[[[1.0, 3.0]]], [[[0.0, 2.0]]]])                      # (2, 1, 1, 2)
    targets = torch.tensor([1.0, 0.0]).view(2, 1, 1, 1)
    assert cyclegan.gan_loss(two, targets).item() == pytest.approx((0 + 4 + 0 + 4) / 4)
    images = torch.tensor([[[[0.5, -1.0]]]])                                  # 2 pixels
    back = torch.tensor([[[[0.0, 1.0]]]])
    assert cyclegan.cycle_loss(images, back).item() == pytest.approx((0.5 + 2.0) / 2)
    assert cyclegan.cycle_loss(images, images).item() == 0


def test_train_step_logs_its_parts_and_the_g_loss_adds_them_with_the_lambdas():
    """Every logged value recomputed from copies of the networks made before the step; D's loss
    uses the fakes G made before its update (the pool is still filling, so it shows them)."""
    args = cyclegan.parse_args(["--dataset", "fake", *SMALL, "--lambda-cycle", "3", "--lambda-identity", "0.2"])[0]
    data = cyclegan.load_unpaired(args, CPU)
    a, b = next(data.batches(8, epoch=0, seed=0))
    common.seed_everything(0)
    translator, d_a, d_b, pool_a, pool_b, opt_g, opt_d = cyclegan.build(args, data.shape, data.n_classes, CPU)
    g, f, old_d_a, old_d_b = deepcopy(translator.g_ab), deepcopy(translator.g_ba), deepcopy(d_a), deepcopy(d_b)
    logged = cyclegan.train_step(a, b, translator, d_a, d_b, pool_a, pool_b, opt_g, opt_d, **step_settings(cyclegan.train_step, args))
    assert set(logged) == {"loss_d", "loss_g", "gan", "cycle", "identity"}
    with torch.no_grad():
        fake_b, fake_a = g(a), f(b)
        gan = F.mse_loss(old_d_b(fake_b), torch.ones_like(old_d_b(fake_b))) + \
            F.mse_loss(old_d_a(fake_a), torch.ones_like(old_d_a(fake_a)))
        cycle = (f(fake_b) - a).abs().mean() + (g(fake_a) - b).abs().mean()
        identity = (g(b) - b).abs().mean() + (f(a) - a).abs().mean()
        loss_d = 0.5 * (old_d_b(b).sub(1).square().mean() + old_d_b(fake_b).square().mean()
                        + old_d_a(a).sub(1).square().mean() + old_d_a(fake_a).square().mean())
    for name, expected in (("gan", gan), ("cycle", cycle), ("identity", identity), ("loss_d", loss_d)):
        assert logged[name].item() == pytest.approx(expected.item(), rel=1e-5), name
    parts = {name: logged[name].item() for name in ("gan", "cycle", "identity")}
    assert logged["loss_g"].item() == pytest.approx(parts["gan"] + 3 * (parts["cycle"] + 0.2 * parts["identity"]),
                                                    rel=1e-6)
    assert parts["identity"] > 0.1 and parts["cycle"] > 0.1   # the weights matter in the sum


# ---------------------------------------------------------------------------------------------
# 4. The image pool
# ---------------------------------------------------------------------------------------------
def numbered(*ids):
    """Images (len(ids), 1, 2, 2), each filled with its number."""
    return torch.tensor(ids, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()


def ids(images):
    return images[:, 0, 0, 0].tolist()


def test_the_image_pool_fills_then_shows_an_older_image_half_the_time():
    """Size 0 shows the input; the first `size` images are shown and stored; once full, each new
    image is shown, or half the time an older one from the pool is shown and the new one takes its
    slot. The count never passes the size, and a state_dict keeps images and count."""
    fakes = torch.randn(3, 1, 2, 2)
    assert torch.equal(cyclegan.ImagePool(0, (1, 2, 2))(fakes), fakes)
    pool = cyclegan.ImagePool(5, (1, 2, 2))
    assert ids(pool(numbered(0, 1, 2))) == [0, 1, 2] and pool.count == 3
    assert ids(pool.images[:3]) == [0, 1, 2]
    half_full = cyclegan.ImagePool(5, (1, 2, 2))
    half_full.load_state_dict(pool.state_dict())
    assert half_full.count == 3 and torch.equal(half_full.images, pool.images)
    assert ids(pool(numbered(3, 4))) == [3, 4] and pool.count == 5 and ids(pool.images) == [0, 1, 2, 3, 4]

    random.seed(0)
    older, seen = 0, set(range(5))
    for new in range(5, 2005):
        before = ids(pool.images)
        shown = ids(pool(numbered(new)))
        after = ids(pool.images)
        assert pool.count == 5 and len(after) == 5
        if shown == [new]:
            assert after == before                              # shown, not kept
        else:
            older += 1
            assert shown[0] in before and shown[0] in seen      # an earlier fake from the pool...
            slot = before.index(shown[0])
            assert after == before[:slot] + [new] + before[slot + 1:]   # ...whose slot the new one takes
        seen.add(new)
    assert abs(older / 2000 - 0.5) < 0.04, older
    batch = pool(numbered(*range(3000, 3016)))
    assert batch.shape == (16, 1, 2, 2) and pool.count == 5 and not batch.requires_grad
    # a full pool's state_dict: a fresh pool gets the images and the count, and then acts alike
    fresh = cyclegan.ImagePool(5, (1, 2, 2))
    fresh.load_state_dict(pool.state_dict())
    assert fresh.count == 5 and torch.equal(fresh.images, pool.images)
    random.seed(1)
    one = pool(numbered(*range(4000, 4010)))
    random.seed(1)
    assert torch.equal(fresh(numbered(*range(4000, 4010))), one) and torch.equal(fresh.images, pool.images)


def test_a_run_without_a_pool_trains(tmp_path):
    """--pool-size 0 ("none") shows D the new fakes, which must be detached from G's graph (G's
    backward has already freed it) so that D's loss backpropagates into D only."""
    out = tmp_path / "run"
    assert run_inprocess(cyclegan.main, FAST + ["--pool-size", "0", "--max-steps", "2", "--out", out]) == 0
    assert load(out / "checkpoint.pt")["step"] == 2


# ---------------------------------------------------------------------------------------------
# 5. The learning-rate schedule
# ---------------------------------------------------------------------------------------------
def test_lr_half_is_constant_for_half_the_steps_then_falls_linearly_to_zero(tmp_path):
    """2 epochs of 4 steps (256 images per set, batch 64): the lr after each step, read from
    checkpoints stopped with --max-steps and resumed."""
    assert cyclegan.parse_args([])[0].lr_decay is True and cyclegan.parse_args([])[0].lr == 2e-4
    out = tmp_path / "half"
    flags = ["--dataset", "fake", *SMALL, "--img-size", "16", "--batch-size", "64", "--epochs", "2", "--log-every", "100"]
    assert run_inprocess(cyclegan.main, flags + ["--max-steps", "2", "--out", out]) == 0
    for step, expected in ((2, 2e-4), (4, 2e-4), (6, 1e-4), (8, 0.0)):
        if step > 2:
            assert run_inprocess(cyclegan.main, ["--resume", out / "checkpoint.pt", "--max-steps", step]) == 0
        checkpoint = load(out / "checkpoint.pt")
        assert checkpoint["step"] == step
        for optimiser in ("opt_g", "opt_d"):
            lr = checkpoint[optimiser]["param_groups"][0]["lr"]
            assert lr == pytest.approx(expected, abs=1e-12), (step, optimiser)
    assert run_inprocess(cyclegan.main, flags + ["--no-lr-decay", "--out", tmp_path / "constant"]) == 0
    checkpoint = load(tmp_path / "constant" / "checkpoint.pt")
    assert checkpoint["step"] == 8 and checkpoint["opt_g"]["param_groups"][0]["lr"] == 2e-4 == \
        checkpoint["opt_d"]["param_groups"][0]["lr"]


# ---------------------------------------------------------------------------------------------
# 6. Exact resume
# ---------------------------------------------------------------------------------------------
def test_resume_across_an_epoch_boundary_gives_exactly_the_uninterrupted_run(tmp_path):
    """A pool of 5 (full after the first step, so its coins are drawn every step), smoothed and exchanged
    targets: all of it must continue where the stopped run left off."""
    flags = ["--dataset", "fake", *SMALL, "--img-size", "16", "--batch-size", "64", "--epochs", "2",
             "--log-every", "100", "--pool-size", "5", "--label-smoothing", "0.1", "--label-exchange", "0.2"]
    assert run_inprocess(cyclegan.main, flags + ["--out", tmp_path / "whole"]) == 0
    # stop at step 3 of 4 in epoch 1, then resume to the end (8 steps)
    assert run_inprocess(cyclegan.main, flags + ["--out", tmp_path / "parts", "--max-steps", "3"]) == 0
    assert load(tmp_path / "parts" / "checkpoint.pt")["step"] == 3
    assert run_inprocess(cyclegan.main, ["--resume", tmp_path / "parts" / "checkpoint.pt"]) == 0
    whole, parts = load(tmp_path / "whole" / "checkpoint.pt"), load(tmp_path / "parts" / "checkpoint.pt")
    assert whole["step"] == parts["step"] == 8
    for net in ("sampler", "d_a", "d_b", "pool_a", "pool_b"):
        assert set(whole[net]) == set(parts[net]), net
        for name, value in whole[net].items():
            if torch.is_tensor(value):
                assert torch.equal(value, parts[net][name]), (net, name)
            else:
                assert value == parts[net][name], (net, name)
    assert whole["pool_a"]["_extra_state"] == {"count": 5}
    for optimiser in ("opt_g", "opt_d"):
        assert whole[optimiser]["state"].keys() == parts[optimiser]["state"].keys()
        for index, moments in whole[optimiser]["state"].items():
            for name, tensor in moments.items():
                assert torch.equal(tensor, parts[optimiser]["state"][index][name]), (optimiser, index, name)
    assert whole["schedule_g"] == parts["schedule_g"] and whole["schedule_d"] == parts["schedule_d"]
    assert (tmp_path / "parts" / "losses.csv").read_text().splitlines()[-1] == \
        (tmp_path / "whole" / "losses.csv").read_text().splitlines()[-1]


# ---------------------------------------------------------------------------------------------
# 7. The direction of learning
# ---------------------------------------------------------------------------------------------
def mean_score(discriminator, images):
    with torch.no_grad():
        return discriminator(images).mean().item()


def learning_directions(seed, flags=()):
    """One train_step on a fixed batch of fake data (with these extra flags). Returns, for D_B and D_A, the margin mean
    D(real) - mean D(fake) on the fakes of the old G (before, after the step), and the old D's mean
    score of the old G's and the new G's translations (G's update was made against the old D)."""
    args = cyclegan.parse_args(["--dataset", "fake", *SMALL, *flags])[0]
    data = cyclegan.load_unpaired(args, CPU)
    a, b = next(data.batches(16, epoch=0, seed=seed))
    common.seed_everything(seed)
    translator, d_a, d_b, pool_a, pool_b, opt_g, opt_d = cyclegan.build(args, data.shape, data.n_classes, CPU)
    old_d_a, old_d_b = deepcopy(d_a), deepcopy(d_b)
    with torch.no_grad():
        old_fake_b, old_fake_a = translator.g_ab(a), translator.g_ba(b)
    cyclegan.train_step(a, b, translator, d_a, d_b, pool_a, pool_b, opt_g, opt_d, **step_settings(cyclegan.train_step, args))
    with torch.no_grad():
        new_fake_b, new_fake_a = translator.g_ab(a), translator.g_ba(b)
    moved = {}
    for side, real, old_fake, new_fake, old_d, new_d in (("B", b, old_fake_b, new_fake_b, old_d_b, d_b),
                                                         ("A", a, old_fake_a, new_fake_a, old_d_a, d_a)):
        moved[f"d_{side}_margin"] = (mean_score(old_d, real) - mean_score(old_d, old_fake),
                                     mean_score(new_d, real) - mean_score(new_d, old_fake))
        moved[f"d_{side}_score_of_g"] = (mean_score(old_d, old_fake), mean_score(old_d, new_fake))
    return moved


def test_a_step_moves_both_discriminators_and_both_generators_in_the_direction_of_the_game():
    """D_B's and D_A's updates raise their real-minus-fake margins; G's and F's updates raise the
    score the D_B and D_A they were made against give their translations: clearly when the
    adversarial loss acts alone (cycle weight near 0, no identity loss), and still with the
    default, heavier cycle and identity terms. Flipping G's target or swapping D's targets
    reverses one of them."""
    for seed in range(3):
        moved = learning_directions(seed)
        alone = learning_directions(seed, ["--lambda-cycle", "1e-6", "--lambda-identity", "0"])
        for side in "BA":
            before, after = moved[f"d_{side}_margin"]
            assert after > before + 0.003, (seed, side, moved)
            before, after = alone[f"d_{side}_score_of_g"]
            assert after > before + 0.01, (seed, side, alone)
            before, after = moved[f"d_{side}_score_of_g"]
            assert after > before, (seed, side, moved)


# ---------------------------------------------------------------------------------------------
# 8. --generate, and 10. evaluate.py, on a 1-epoch tiny thin2thick run
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def thin2thick_run(tmp_path_factory):
    """A finished 1-epoch thin2thick run on a tiny MNIST (64 images per set, batch 16: 4 steps)."""
    base = tmp_path_factory.mktemp("thin2thick")
    root = base / "data"
    tiny_mnist(root)
    out = base / "run"
    assert run_inprocess(cyclegan.main, ["--dataset", "thin2thick", "--data-root", root, *SMALL, "--batch-size", "16",
                                         "--epochs", "1", "--out", out]) == 0
    return {"root": root, "run": out}


def listing(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_generate_translates_test_images_both_ways_and_never_replaces_earlier_output(thin2thick_run):
    run, root = thin2thick_run["run"], thin2thick_run["root"]
    assert run_inprocess(cyclegan.main, ["--generate", "10", "--resume", run / "checkpoint.pt"]) == 0
    first = (run / "generated.npz").read_bytes()
    with np.load(run / "generated.npz") as npz:
        arrays = {name: npz[name] for name in npz.files}
    assert sorted(arrays) == sorted(["a", "a_to_b", "a_to_b_to_a", "b", "b_to_a", "b_to_a_to_b",
                                     "labels_a", "labels_b"])
    for name in ("a", "a_to_b", "a_to_b_to_a", "b", "b_to_a", "b_to_a_to_b"):
        assert arrays[name].shape == (10, 1, 28, 28) and arrays[name].dtype == np.uint8, name
    assert arrays["labels_a"].shape == arrays["labels_b"].shape == (10,)
    # By hand: the test images, thickened for B; each translation by the run's generators in eval mode
    test_images, test_labels = mnist_images(root, train=False)
    assert np.array_equal(arrays["a"], test_images[:10].numpy())
    assert np.array_equal(arrays["b"], cyclegan.thicken(test_images[:10]).numpy())
    assert np.array_equal(arrays["labels_a"], test_labels[:10].numpy())
    assert np.array_equal(arrays["labels_b"], test_labels[:10].numpy())
    translator = cyclegan.Translator(1, 4, 1)
    translator.load_state_dict(load(run / "checkpoint.pt")["sampler"])

    def by_hand(generator, images):
        with torch.no_grad():
            return to_uint8(generator(torch.from_numpy(images).float() / 127.5 - 1))
    assert np.array_equal(arrays["a_to_b"], by_hand(translator.g_ab, arrays["a"]))
    assert np.array_equal(arrays["a_to_b_to_a"], by_hand(translator.g_ba, arrays["a_to_b"]))
    assert np.array_equal(arrays["b_to_a"], by_hand(translator.g_ba, arrays["b"]))
    assert np.array_equal(arrays["b_to_a_to_b"], by_hand(translator.g_ab, arrays["b_to_a"]))
    assert not np.array_equal(arrays["a_to_b"], arrays["a"])
    assert Image.open(run / "generated.png").size == (10 * 30 + 2, 6 * 30 + 2)
    loaded = cyclegan.load_generator(run / "checkpoint.pt")
    assert not loaded.training and isinstance(loaded, cyclegan.Translator)
    # A second --generate: generated-2.npz, the first untouched
    assert run_inprocess(cyclegan.main, ["--generate", "3", "--resume", run / "checkpoint.pt"]) == 0
    assert (run / "generated.npz").read_bytes() == first
    with np.load(run / "generated-2.npz") as npz:
        assert npz["a_to_b"].shape == (3, 1, 28, 28) and np.array_equal(npz["a_to_b"], arrays["a_to_b"][:3])
    # The epoch-1 snapshot generates too (the run's only epoch: the same generators)
    snapshot = run / "generator_epoch_001.pt"
    assert "opt_g" not in load(snapshot)
    assert run_inprocess(cyclegan.main, ["--generate", "5", "--resume", snapshot]) == 0
    with np.load(run / "generated-3.npz") as npz:
        assert npz["b_to_a"].shape == (5, 1, 28, 28) and np.array_equal(npz["b_to_a"], arrays["b_to_a"][:5])
    assert (run / "generated.npz").read_bytes() == first


def test_evaluate_scores_a_thin2thick_run_and_writes_nothing_in_it(thin2thick_run, capsys, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])   # never the network
    import evaluate
    run, root = thin2thick_run["run"], thin2thick_run["root"]
    before = listing(run)
    capsys.readouterr()
    code = run_inprocess(evaluate.main, [run, "--n", "40", "--json", "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    result = json.loads(printed.out)
    assert result["script"] == "cyclegan" and result["n"] == 40
    for key in ("a_to_b_class_accuracy", "b_to_a_class_accuracy"):
        assert 0 <= result[key] <= 1, key
    for key in ("a_to_b_fd", "a_to_b_fd_floor", "b_to_a_fd", "b_to_a_fd_floor"):
        assert np.isfinite(result[key]) and result[key] >= 0, key
    for key in ("cycle_error_a", "cycle_error_b"):
        assert 0 <= result[key] <= 1, key
    # the cycle error of A by hand: mean |F(G(a)) - a| / 255 over the first 40 test images
    translator = cyclegan.load_generator(run / "checkpoint.pt")
    a = mnist_images(root, train=False)[0][:40]
    back = cyclegan.translate(translator.g_ba, cyclegan.translate(translator.g_ab, a))
    assert result["cycle_error_a"] == pytest.approx((back.float() - a.float()).abs().mean().item() / 255, rel=1e-6)
    assert result["cycle_error_a"] > 0
    # the table: the same numbers for people
    assert run_inprocess(evaluate.main, [run, "--n", "40", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert table.startswith(f"{run / 'checkpoint.pt'}: cyclegan.py, the first 40 MNIST test images")
    assert f"{result['cycle_error_a']:.4f}" in table and f"{result['a_to_b_fd']:.3f}" in table
    assert listing(run) == before


# ---------------------------------------------------------------------------------------------
# 9. A folder of trainA/ and trainB/
# ---------------------------------------------------------------------------------------------
def test_a_folder_of_grey_a_and_colour_b_trains_in_colour(tmp_path):
    root = tmp_path / "pairs"
    write_image_folder(root / "trainA", classes=(".",), per_class=16, size=28, mode="L", seed=1)
    write_image_folder(root / "trainB", classes=(".",), per_class=16, size=28, mode="RGB", seed=2)
    args = cyclegan.parse_args(["--dataset", "folder", "--data-root", str(root)])[0]
    data = cyclegan.load_unpaired(args, CPU)
    assert data.a.images.shape == data.b.images.shape == (16, 3, 28, 28)
    grey = torch.from_numpy(np.asarray(Image.open(root / "trainA" / "0.png")).copy())
    assert all(torch.equal(data.a.images[0, c], grey) for c in range(3))   # grey A in three equal channels
    colour = torch.from_numpy(np.asarray(Image.open(root / "trainB" / "0.png")).copy()).permute(2, 0, 1)
    assert torch.equal(data.b.images[0], colour)
    out = tmp_path / "run"
    assert run_inprocess(cyclegan.main, ["--dataset", "folder", "--data-root", root, *SMALL, "--batch-size", "8",
                                         "--max-steps", "1", "--out", out]) == 0
    checkpoint = load(out / "checkpoint.pt")
    assert checkpoint["step"] == 1 and checkpoint["image_shape"] == (3, 28, 28)
    # without testA/ and testB/, --generate translates the training sets
    assert run_inprocess(cyclegan.main, ["--generate", "4", "--resume", out / "checkpoint.pt"]) == 0
    with np.load(out / "generated.npz") as npz:
        assert npz["b_to_a"].shape == (4, 3, 28, 28) and np.array_equal(npz["b"], data.b.images[:4].numpy())


def test_generate_gives_grey_test_sets_the_colour_the_run_trained_in(tmp_path):
    """trainA grey and trainB colour make a colour run; testA/ and testB/ both grey must then be
    translated as colour images too (the generators take 3 channels)."""
    root = tmp_path / "pairs"
    write_image_folder(root / "trainA", classes=(".",), per_class=8, size=28, mode="L", seed=1)
    write_image_folder(root / "trainB", classes=(".",), per_class=8, size=28, mode="RGB", seed=2)
    for side in ("testA", "testB"):
        write_image_folder(root / side, classes=(".",), per_class=4, size=28, mode="L", seed=3)
    out = tmp_path / "run"
    assert run_inprocess(cyclegan.main, ["--dataset", "folder", "--data-root", root, *SMALL, "--batch-size", "8",
                                         "--max-steps", "1", "--out", out]) == 0
    assert load(out / "checkpoint.pt")["image_shape"] == (3, 28, 28)
    assert run_inprocess(cyclegan.main, ["--generate", "4", "--resume", out / "checkpoint.pt"]) == 0
    with np.load(out / "generated.npz") as npz:
        assert npz["a"].shape == npz["a_to_b"].shape == npz["b_to_a"].shape == (4, 3, 28, 28)


def test_a_folder_without_train_b_is_refused_with_one_line(tmp_path, capsys):
    root = tmp_path / "pairs"
    write_image_folder(root / "trainA", classes=(".",), per_class=16, size=28, mode="L")
    out = tmp_path / "run"
    code = run_inprocess(cyclegan.main, ["--dataset", "folder", "--data-root", root, *SMALL, "--out", out])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(root / "trainB") in err and str(root / "trainA") not in err.split("missing")[-1]
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# 11. Bad input
# ---------------------------------------------------------------------------------------------
BAD_INPUTS = [
    (["--img-size", "30"], "--img-size 30 must be a multiple of 4"),
    (["--lambda-cycle", "0"], "--lambda-cycle"),
    (["--pool-size", "-1"], "--pool-size"),
    (["--lambda-identity", "-1"], "--lambda-identity"),
    (["--batch-size", "300"], "--batch-size"),   # 512 fake images: halves of 256
    (["--img-size", "8"], "--img-size"),         # a multiple of 4, but D's patches shrink to nothing
]


@pytest.mark.parametrize("argv,expected", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, argv, expected):
    out = tmp_path / "run"
    code = run_inprocess(cyclegan.main, ["--dataset", "fake", *SMALL, "--max-steps", "1", "--out", out, *argv])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert "error:" in err.strip().splitlines()[-1]
    assert not out.exists()   # a refused run leaves nothing behind
