"""dcgan.py: one-batch runs at 32 and 64 px, grey (MNIST-format files) and RGB (image folders),
the output shape for every allowed size, refused sizes, the paper's architecture guidelines,
resume exactness, --generate, and the per-epoch grids and progress.gif."""
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn

import common
import dcgan
from conftest import learning_directions, load, run_inprocess, to_uint8, write_image_folder

TINY = ["--width", "8", "--batch-size", "16", "--log-every", "1"]


def write_flat_image_folder(root, n=16):
    """RGB PNGs directly in `root`, no class sub-folders (the layout of CelebA's img_align_celeba)."""
    write_image_folder(root / "tmp", classes=("only",), per_class=n, mode="RGB")
    for path in (root / "tmp" / "only").iterdir():
        path.rename(root / path.name)
    shutil.rmtree(root / "tmp")
    return root


def layers(network):
    return list(network.net)


# ---------------------------------------------------------------------------------------------
# One batch, grey and RGB, 32 and 64 px
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("colour", ["grey", "rgb"])
def test_one_batch_trains_both_networks(tmp_path, mnist_root, size, colour):
    if colour == "grey":   # MNIST-format files, resized from 28 px by the loader
        data_flags, channels = ["--data-root", mnist_root], 1
    else:
        folder = write_image_folder(tmp_path / "pictures", per_class=16, mode="RGB")   # 2 batches
        data_flags, channels = ["--dataset", "folder", "--data-root", folder], 3
    out = tmp_path / "run"
    assert run_inprocess(dcgan.main, data_flags + TINY + ["--img-size", size, "--max-steps", "1", "--out", out]) == 0
    checkpoint = load(out / "checkpoint.pt")
    assert checkpoint["script"] == "dcgan" and checkpoint["step"] == 1
    assert checkpoint["image_shape"] == (channels, size, size)
    # The one step moved both networks away from the seeded initial weights.
    common.seed_everything(0)
    fresh_g = dcgan.Generator(100, channels, size, 8)
    fresh_d = dcgan.Discriminator(channels, size, 8, spectral_norm=True)   # the default D
    assert not torch.equal(fresh_g.state_dict()["net.0.weight"], checkpoint["generator"]["net.0.weight"])
    raw_weight = "net.0.parametrizations.weight.original"   # a spectrally normalised layer's own weight
    assert not torch.equal(fresh_d.state_dict()[raw_weight], checkpoint["discriminator"][raw_weight])
    # The generator's last layer makes images of the data's colour depth.
    last = [k for k in checkpoint["generator"] if k.endswith("weight")][-1]
    assert checkpoint["generator"][last].shape[1] == channels
    rows = (out / "losses.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,loss_d,loss_g,d_real,d_fake" and len(rows) == 2
    assert all(np.isfinite(float(v)) for v in rows[1].split(",")[2:])
    from PIL import Image
    grid = Image.open(out / "step_0000001.png")
    assert grid.size == (8 * (size + 2) + 2,) * 2   # 64 samples, 8 per row, 2 px padding


def test_a_folder_with_images_directly_in_it_trains(tmp_path):
    folder = write_flat_image_folder(tmp_path / "faces")
    out = tmp_path / "run"
    assert run_inprocess(dcgan.main, ["--dataset", "folder", "--data-root", folder, *TINY,
                                      "--img-size", "16", "--max-steps", "1", "--out", out]) == 0
    assert load(out / "checkpoint.pt")["image_shape"] == (3, 16, 16)


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", dcgan.IMG_SIZES)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_allowed_size_gives_that_size_and_one_logit(size, channels):
    generator = dcgan.Generator(16, channels, size, 4)
    discriminator = dcgan.Discriminator(channels, size, 4, spectral_norm=False)
    with torch.no_grad():
        images = generator(torch.randn(2, 16))
        assert images.shape == (2, channels, size, size)
        assert images.min() >= -1 and images.max() <= 1
        assert discriminator(images).shape == (2, 1)
    # One stride-2 block per doubling from 4x4: 2 at 16 px ... 5 at 128 px, in each network.
    doublings = {16: 2, 32: 3, 64: 4, 128: 5}[size]
    strided_g = [m for m in generator.modules() if isinstance(m, nn.ConvTranspose2d) and m.stride == (2, 2)]
    strided_d = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided_g) == len(strided_d) == doublings


def test_the_64_px_networks_have_the_papers_channel_counts():
    """The classic setting: latent -> 8W at 4x4 -> 4W -> 2W -> W -> C, and D the mirror image."""
    generator = dcgan.Generator(100, 3, 64, 64)
    discriminator = dcgan.Discriminator(3, 64, 64, spectral_norm=False)
    g_convs = [(m.in_channels, m.out_channels) for m in generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    d_convs = [(m.in_channels, m.out_channels) for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert g_convs == [(100, 512), (512, 256), (256, 128), (128, 64), (64, 3)]
    assert d_convs == [(3, 64), (64, 128), (128, 256), (256, 512), (512, 1)]


@pytest.mark.parametrize("size", ["48", "8", "256", "100"])
def test_a_size_that_is_not_16_to_128_by_doubling_is_refused(tmp_path, capsys, size):
    out = tmp_path / "run"
    code = run_inprocess(dcgan.main, ["--dataset", "fake", "--img-size", size, "--out", out])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert err.strip().endswith(f"error: --img-size {size}: DCGAN needs a power of two from 16 to 128 "
                                "(16, 32, 64 or 128), since each block doubles the image side from 4x4")
    assert not out.exists()   # refused before the run folder is made
    with pytest.raises(ValueError, match="img_size"):
        dcgan.Generator(100, 1, int(size), 8)


# ---------------------------------------------------------------------------------------------
# The paper's architecture guidelines
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", dcgan.IMG_SIZES)
def test_the_networks_follow_the_dcgan_guidelines(size):
    generator, discriminator = dcgan.Generator(100, 3, size, 8), dcgan.Discriminator(3, size, 8, spectral_norm=False)
    for network in (generator, discriminator):
        kinds = [type(m) for m in network.modules()]
        # No pooling, no upsampling layers, no fully connected layers: convolutions only.
        assert not any(issubclass(k, (nn.Linear, nn.Upsample, nn.MaxPool2d, nn.AvgPool2d,
                                      nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) for k in kinds)
        assert not any("Pool" in k.__name__ or "Linear" in k.__name__ for k in kinds)
        assert all(layer.padding_mode == "zeros" for layer in network.modules()
                   if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)))

    g = layers(generator)
    # G starts from z as a 1x1 image: a transposed convolution to 4x4, not a Linear layer.
    assert isinstance(g[0], nn.ConvTranspose2d) and g[0].in_channels == 100
    assert (g[0].kernel_size, g[0].stride, g[0].padding) == ((4, 4), (1, 1), (0, 0))
    # G's output layer: transposed convolution then Tanh, no BatchNorm after it.
    assert isinstance(g[-2], nn.ConvTranspose2d) and isinstance(g[-1], nn.Tanh)
    # Every other G layer: BatchNorm then ReLU (not leaky).
    for i, layer in enumerate(g[:-2]):
        if isinstance(layer, nn.ConvTranspose2d):
            assert type(g[i + 1]) is nn.BatchNorm2d and type(g[i + 2]) is nn.ReLU, i
    assert not any(isinstance(m, nn.LeakyReLU) for m in generator.modules())

    d = layers(discriminator)
    # D's input layer: a strided convolution straight into LeakyReLU(0.2), no BatchNorm.
    assert isinstance(d[0], nn.Conv2d) and d[0].in_channels == 3 and d[0].stride == (2, 2)
    assert type(d[1]) is nn.LeakyReLU and d[1].negative_slope == 0.2
    # D ends in a convolution over the 4x4 map to one logit: no sigmoid, no Linear.
    assert isinstance(d[-1], nn.Conv2d) and d[-1].out_channels == 1
    assert (d[-1].kernel_size, d[-1].stride, d[-1].padding) == ((4, 4), (1, 1), (0, 0))
    assert not any(isinstance(m, nn.Sigmoid) for m in discriminator.modules())
    # Every hidden D layer: strided convolution, BatchNorm, LeakyReLU(0.2).
    for i, layer in enumerate(d[2:-1], start=2):
        if isinstance(layer, nn.Conv2d):
            assert layer.stride == (2, 2)
            assert type(d[i + 1]) is nn.BatchNorm2d and type(d[i + 2]) is nn.LeakyReLU, i
            assert d[i + 2].negative_slope == 0.2
    assert not any(type(m) is nn.ReLU for m in discriminator.modules())
    # BatchNorm everywhere else: one per convolution except G's output and D's input and logit.
    n_convs = sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in [*g, *d])
    n_norms = sum(isinstance(m, nn.BatchNorm2d) for m in [*g, *d])
    assert n_norms == n_convs - 3
    assert all(m.eps == 1e-5 for m in [*g, *d] if isinstance(m, nn.BatchNorm2d))


def test_weights_are_initialised_as_in_the_paper():
    torch.manual_seed(0)
    for network in (dcgan.Generator(100, 3, 64, 64), dcgan.Discriminator(3, 64, 64, spectral_norm=False)):
        convs = [m for m in network.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        weights = torch.cat([m.weight.flatten() for m in convs])
        assert abs(weights.mean().item()) < 1e-3 and abs(weights.std().item() - 0.02) < 1e-3
        assert all(m.bias is None or torch.all(m.bias == 0) for m in convs)
        norms = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
        scales = torch.cat([m.weight.flatten() for m in norms])
        assert abs(scales.mean().item() - 1) < 3e-3 and abs(scales.std().item() - 0.02) < 3e-3
        assert all(torch.all(m.bias == 0) for m in norms)


def test_defaults_and_optimisers_are_the_papers(tmp_path):
    args = dcgan.parse_args([])[0]
    assert (args.batch_size, args.lr, args.lr_d, args.label_smoothing) == (64, 8e-4, 2e-4, 0.1)   # the departures
    paper = ["--batch-size", "128", "--lr", "2e-4", "--lr-d", "2e-4", "--label-smoothing", "0"]
    args = dcgan.parse_args(paper)[0]
    assert (args.batch_size, args.lr, args.img_size, args.latent_dim) == (128, 2e-4, 32, 100)
    out = tmp_path / "run"
    assert run_inprocess(dcgan.main, ["--dataset", "fake", "--width", "4", "--img-size", "16", *paper,
                                      "--max-steps", "1", "--out", out]) == 0
    checkpoint = load(out / "checkpoint.pt")
    for name in ("opt_g", "opt_d"):
        group = checkpoint[name]["param_groups"][0]
        assert group["initial_lr"] == 2e-4 and tuple(group["betas"]) == (0.5, 0.999)
    assert checkpoint["args"]["batch_size"] == 128


# ---------------------------------------------------------------------------------------------
# Runs: epochs, resume, --generate
# ---------------------------------------------------------------------------------------------
def test_epoch_grids_and_progress_gif(tmp_path):
    out = tmp_path / "run"
    assert run_inprocess(dcgan.main, ["--dataset", "fake", "--width", "4", "--img-size", "16",
                                      "--batch-size", "256", "--epochs", "2", "--out", out]) == 0
    assert load(out / "checkpoint.pt")["step"] == 4   # 512 fake images, batch 256: 2 steps an epoch
    from PIL import Image
    assert Image.open(out / "progress.gif").n_frames == 2
    assert Image.open(out / "epoch_002.png").size == (8 * 18 + 2, 8 * 18 + 2)


def test_resume_gives_exactly_the_uninterrupted_weights(tmp_path):
    # Batch 256 of the 512 fake images: 2 steps an epoch, 6 in all (few steps keep the test fast).
    flags = ["--dataset", "fake", "--width", "4", "--img-size", "16", "--batch-size", "256", "--epochs", "3",
             "--label-smoothing", "0.2", "--label-exchange", "0.3"]
    assert run_inprocess(dcgan.main, flags + ["--out", tmp_path / "whole"]) == 0
    # Stop mid-epoch (step 1 of 2 in epoch 1), then resume twice to cross epoch boundaries.
    assert run_inprocess(dcgan.main, flags + ["--out", tmp_path / "parts", "--max-steps", "1"]) == 0
    assert load(tmp_path / "parts" / "checkpoint.pt")["step"] == 1
    assert run_inprocess(dcgan.main, ["--resume", tmp_path / "parts" / "checkpoint.pt", "--max-steps", "3"]) == 0
    assert load(tmp_path / "parts" / "checkpoint.pt")["step"] == 3
    assert run_inprocess(dcgan.main, ["--resume", tmp_path / "parts" / "checkpoint.pt"]) == 0
    whole, parts = load(tmp_path / "whole" / "checkpoint.pt"), load(tmp_path / "parts" / "checkpoint.pt")
    assert whole["step"] == parts["step"] == 6
    for net in ("generator", "discriminator"):   # BatchNorm running statistics included
        for name, tensor in whole[net].items():
            assert torch.equal(tensor, parts[net][name]), (net, name)
    assert torch.equal(whole["opt_d"]["state"][0]["exp_avg"], parts["opt_d"]["state"][0]["exp_avg"])
    assert torch.equal(whole["opt_g"]["state"][0]["exp_avg_sq"], parts["opt_g"]["state"][0]["exp_avg_sq"])
    assert torch.equal(whole["fixed_noise"], parts["fixed_noise"])
    steps = [int(r.split(",")[0]) for r in (tmp_path / "parts" / "losses.csv").read_text().splitlines()[1:]]
    assert steps == sorted(steps) and steps[-1] == 6   # losses.csv continues instead of starting again


def test_resume_refuses_another_width_or_size(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_inprocess(dcgan.main, ["--dataset", "fake", "--width", "4", "--img-size", "16",
                                      "--max-steps", "1", "--out", out]) == 0
    capsys.readouterr()
    for flag, value in (("--width", "8"), ("--img-size", "32")):
        assert run_inprocess(dcgan.main, ["--resume", out / "checkpoint.pt", flag, value]) == 2
        assert f"{flag} cannot change" in capsys.readouterr().err


def test_generate_writes_npz_from_the_moving_average_in_eval_mode(tmp_path, capsys):
    out = tmp_path / "run"
    folder = write_image_folder(tmp_path / "pictures", per_class=16, mode="RGB")
    assert run_inprocess(dcgan.main, ["--dataset", "folder", "--data-root", folder, *TINY,
                                      "--img-size", "16", "--max-steps", "2", "--out", out]) == 0
    assert run_inprocess(dcgan.main, ["--generate", "25", "--resume", out / "checkpoint.pt", "--seed", "7"]) == 0
    with np.load(out / "generated.npz") as npz:
        images = npz["images"]
    assert images.shape == (25, 3, 16, 16) and images.dtype == np.uint8
    assert (out / "generated.png").is_file()
    # Rebuild the samples by hand: G's moving average, eval-mode BatchNorm, seed 7's noise.
    checkpoint = load(out / "checkpoint.pt")
    generator = dcgan.Generator(100, 3, 16, 8)
    generator.load_state_dict(checkpoint["sampler"])
    generator.eval()
    common.seed_everything(7)
    z = torch.randn(25, 100)
    with torch.no_grad():
        expected = to_uint8(generator(z))
    assert np.array_equal(images, expected)
    generator.train()   # in train mode the batch statistics would give other images
    with torch.no_grad():
        assert not np.array_equal(images, to_uint8(generator(z)))


def test_a_zero_width_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_inprocess(dcgan.main, ["--dataset", "fake", "--width", "0", "--out", out]) == 2
    assert "--width" in capsys.readouterr().err and not out.exists()


def test_a_step_moves_d_and_g_in_the_direction_of_the_game():
    """D's update raises its real-minus-fake margin; G's update raises D's score of G's images.
    Flipping G's target or swapping D's targets reverses one of them."""
    for seed in range(3):
        moved = learning_directions(dcgan, ["--width", "8"], seed=seed)   # spectral norm: small steps
        assert moved["d_margin"][1] > moved["d_margin"][0] + 0.02, moved
        assert moved["g_score"][1] > moved["g_score"][0] + 0.002, moved
        paper = learning_directions(dcgan, ["--width", "8", "--no-spectral-norm"], seed=seed)
        assert paper["d_margin"][1] > paper["d_margin"][0] + 0.05, paper
        assert paper["g_score"][1] > paper["g_score"][0] + 0.02, paper


def test_spectral_norm_replaces_d_s_batchnorm(tmp_path):
    """--spectral-norm (the default): every convolution of D divided by its largest singular value, with a bias
    and no BatchNorm; the paper's D (BatchNorm, no bias before it) otherwise."""
    torch.manual_seed(0)
    normalised = dcgan.Discriminator(1, 32, 8, spectral_norm=True)
    convs = [m for m in normalised.modules() if isinstance(m, nn.Conv2d)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in normalised.modules())
    assert all(nn.utils.parametrize.is_parametrized(m, "weight") and m.bias is not None for m in convs)
    for _ in range(50):   # power iteration converges on the largest singular value
        normalised(torch.randn(4, 1, 32, 32))
    for conv in convs:
        assert torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2).item() == pytest.approx(1, abs=0.05)
    paper = dcgan.Discriminator(1, 32, 8, spectral_norm=False)
    assert [m.num_features for m in paper.modules() if isinstance(m, nn.BatchNorm2d)] == [16, 32]
    out = tmp_path / "run"
    assert run_inprocess(dcgan.main, ["--dataset", "fake", *TINY, "--max-steps", "1",
                                      "--out", out]) == 0
    assert "net.0.parametrizations.weight.original" in load(out / "checkpoint.pt")["discriminator"]
    paper_run = tmp_path / "paper"
    assert run_inprocess(dcgan.main, ["--dataset", "fake", *TINY, "--no-spectral-norm", "--max-steps", "1",
                                      "--out", paper_run]) == 0
    assert not any("parametrizations" in key for key in load(paper_run / "checkpoint.pt")["discriminator"])
