"""gan.py: one-batch runs on fake and MNIST-format data, resume exactness, --generate, run
folders, bad input, the label tricks, and NaN handling."""

import numpy as np
import pytest
import torch

import common
import gan
from conftest import (learning_directions, load, run_as_command, run_inprocess, state_tensors,
                      to_uint8, write_idx_dataset)

FAST = ["--dataset", "fake", "--batch-size", "64", "--log-every", "1"]


def test_one_batch_on_fake_data_trains_both_networks(tmp_path):
    out = tmp_path / "run"
    assert run_inprocess(gan.main, FAST + ["--max-steps", "1", "--out", out]) == 0
    checkpoint = load(out / "checkpoint.pt")
    assert checkpoint["step"] == 1 and checkpoint["script"] == "gan"
    # The one step moved both networks away from the seeded initial weights.
    common.seed_everything(0)
    fresh_g, fresh_d = gan.Generator(100, (1, 28, 28)), gan.Discriminator((1, 28, 28))
    assert not torch.equal(fresh_g.state_dict()["net.0.weight"], checkpoint["generator"]["net.0.weight"])
    assert not torch.equal(fresh_d.state_dict()["net.0.weight"], checkpoint["discriminator"]["net.0.weight"])
    rows = (out / "losses.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,loss_d,loss_g,d_real,d_fake" and len(rows) == 2
    assert all(np.isfinite(float(v)) for v in rows[1].split(",")[2:])
    assert (out / "step_0000001.png").is_file()


def test_one_batch_on_mnist_format_files(tmp_path, mnist_root):
    """torchvision's real MNIST reader parses the files; batches are cut from them in [-1, 1]."""
    args = gan.parse_args(["--data-root", str(mnist_root)])[0]
    data = common.load_data(args, torch.device("cpu"))
    images, labels = write_idx_dataset(tmp_path / "again" / "MNIST")  # same seed: same content
    assert data.shape == (1, 28, 28) and len(data.images) == 128 and data.n_classes == 10
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))
    assert torch.equal(data.labels, torch.from_numpy(labels).long())
    batch, batch_labels = next(data.batches(64, epoch=0, seed=0))
    assert batch.shape == (64, 1, 28, 28) and batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1 and batch.max() > 0.9
    out = tmp_path / "run"
    assert run_inprocess(gan.main, ["--data-root", mnist_root, "--max-steps", "1", "--out", out]) == 0
    assert load(out / "checkpoint.pt")["image_shape"] == (1, 28, 28)


def test_compressed_raw_files_as_shipped_are_read(tmp_path):
    """The layout users get from a download (or copy from elsewhere): raw/*.gz only."""
    root = tmp_path / "data"
    write_idx_dataset(root / "MNIST", compress=True)
    # torchvision extracts the .gz only when its checksum matches the official one; ours cannot,
    # so it tries to download and fails: the message must say where the files go.
    args = gan.parse_args(["--data-root", str(root)])[0]
    import torchvision
    mirrors = torchvision.datasets.MNIST.mirrors
    torchvision.datasets.MNIST.mirrors = ["http://127.0.0.1:9/"]   # never touch the network
    try:
        with pytest.raises(common.UserError, match=r"MNIST/raw"):
            common.load_data(args, torch.device("cpu"))
    finally:
        torchvision.datasets.MNIST.mirrors = mirrors


def test_epochs_batches_and_short_last_batch(tmp_path):
    """fake has 512 images: batch 100 gives 5 full batches per epoch, the short one is dropped."""
    out = tmp_path / "run"
    assert run_inprocess(gan.main, ["--dataset", "fake", "--batch-size", "100", "--epochs", "2", "--out", out]) == 0
    assert load(out / "checkpoint.pt")["step"] == 10
    assert (out / "epoch_001.png").is_file() and (out / "epoch_002.png").is_file()
    from PIL import Image
    gif = Image.open(out / "progress.gif")
    assert gif.n_frames == 2
    grid = Image.open(out / "epoch_002.png")
    assert grid.size == (8 * 30 + 2, 8 * 30 + 2)   # 64 samples, 8 per row, 28 px + 2 px padding


def test_resume_gives_exactly_the_uninterrupted_weights(tmp_path):
    flags = ["--dataset", "fake", "--epochs", "2", "--label-smoothing", "0.2", "--label-exchange", "0.3"]
    assert run_inprocess(gan.main, flags + ["--out", tmp_path / "whole"]) == 0
    # Stop mid-epoch (step 5 of 8 in epoch 1), then resume twice to cross an epoch boundary.
    assert run_inprocess(gan.main, flags + ["--out", tmp_path / "parts", "--max-steps", "5"]) == 0
    assert load(tmp_path / "parts" / "checkpoint.pt")["step"] == 5
    assert run_inprocess(gan.main, ["--resume", tmp_path / "parts" / "checkpoint.pt", "--max-steps", "11"]) == 0
    assert run_inprocess(gan.main, ["--resume", tmp_path / "parts" / "checkpoint.pt"]) == 0
    whole, parts = load(tmp_path / "whole" / "checkpoint.pt"), load(tmp_path / "parts" / "checkpoint.pt")
    assert whole["step"] == parts["step"] == 16
    for name, tensor in state_tensors(whole).items():
        assert torch.equal(tensor, state_tensors(parts)[name]), name
    assert torch.equal(whole["opt_g"]["state"][0]["exp_avg"], parts["opt_g"]["state"][0]["exp_avg"])
    assert whole["schedule_g"] == parts["schedule_g"] and torch.equal(whole["rng"]["torch"], parts["rng"]["torch"])
    # losses.csv continues instead of starting again
    steps = [int(r.split(",")[0]) for r in (tmp_path / "parts" / "losses.csv").read_text().splitlines()[1:]]
    assert steps == sorted(steps) and steps[-1] == 16


def test_resume_refuses_a_flag_that_would_change_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_inprocess(gan.main, FAST + ["--max-steps", "1", "--out", out]) == 0
    capsys.readouterr()
    assert run_inprocess(gan.main, ["--resume", out / "checkpoint.pt", "--lr", "0.1"]) == 2
    assert "--lr cannot change" in capsys.readouterr().err


def test_generate_writes_npz_from_the_moving_average_in_eval_mode(tmp_path):
    out = tmp_path / "run"
    assert run_inprocess(gan.main, FAST + ["--max-steps", "3", "--out", out]) == 0
    before = sorted(p.name for p in out.iterdir())
    assert run_inprocess(gan.main, ["--generate", "25", "--resume", out / "checkpoint.pt", "--seed", "7"]) == 0
    with np.load(out / "generated.npz") as npz:
        images = npz["images"]
    assert images.shape == (25, 1, 28, 28) and images.dtype == np.uint8
    assert sorted(p.name for p in out.iterdir()) == sorted(before + ["generated.npz", "generated.png"])
    # Rebuild the samples by hand: G's moving average, eval-mode BatchNorm (running statistics), seed 7's noise.
    checkpoint = load(out / "checkpoint.pt")
    generator = gan.Generator(100, (1, 28, 28))
    generator.load_state_dict(checkpoint["sampler"])
    generator.eval()
    common.seed_everything(7)
    with torch.no_grad():
        expected = to_uint8(generator(torch.randn(25, 100)))
    assert np.array_equal(images, expected)
    # The sampler is the average, not G's last weights (three steps in, they differ)
    assert not torch.equal(checkpoint["sampler"]["net.0.weight"], checkpoint["generator"]["net.0.weight"])
    generator.train()   # in train mode the batch statistics would give other images
    common.seed_everything(7)
    with torch.no_grad():
        assert not np.array_equal(images, to_uint8(generator(torch.randn(25, 100))))


def test_ema_zero_samples_from_g_itself_and_load_generator_rebuilds_it(tmp_path):
    out = tmp_path / "run"
    assert run_inprocess(gan.main, FAST + ["--max-steps", "3", "--ema", "0", "--out", out]) == 0
    checkpoint = load(out / "checkpoint.pt")
    for name, tensor in checkpoint["generator"].items():   # decay 0: the "average" is G, bit for bit
        if tensor.is_floating_point():   # (not BatchNorm's batch count, which sampling never reads)
            assert torch.equal(tensor, checkpoint["sampler"][name]), name
    generator = gan.load_generator(out / "checkpoint.pt")
    assert not generator.training
    for name, tensor in generator.state_dict().items():
        assert torch.equal(tensor, checkpoint["sampler"][name]), name
    assert generator(torch.randn(4, 100)).shape == (4, 1, 28, 28)


def test_snapshots_keep_epoch_1_every_kth_and_the_last_and_each_generates(tmp_path):
    out = tmp_path / "run"
    flags = ["--dataset", "fake", "--batch-size", "128", "--epochs", "5", "--snapshot-every", "2"]
    assert run_inprocess(gan.main, flags + ["--out", out]) == 0
    snapshots = sorted(p.name for p in out.glob("generator_epoch_*.pt"))
    assert snapshots == ["generator_epoch_001.pt", "generator_epoch_002.pt", "generator_epoch_004.pt",
                         "generator_epoch_005.pt"]
    first, last = load(out / snapshots[0]), load(out / snapshots[-1])
    assert first["epoch"] == 1 and last["epoch"] == 5 and "opt_g" not in last   # G only: small
    for name, tensor in load(out / "checkpoint.pt")["sampler"].items():          # the last is the run's end
        assert torch.equal(tensor, last["sampler"][name]), name
    assert not torch.equal(first["sampler"]["net.0.weight"], last["sampler"]["net.0.weight"])
    assert run_inprocess(gan.main, ["--generate", "10", "--resume", out / snapshots[0]]) == 0
    with np.load(out / "generated.npz") as npz:
        assert npz["images"].shape == (10, 1, 28, 28)
    assert run_inprocess(gan.main, ["--resume", out / snapshots[0]]) == 2   # a snapshot cannot be trained on


def test_a_run_stopped_at_an_epoch_end_keeps_a_snapshot_of_that_epoch(tmp_path):
    out = tmp_path / "run"   # the fake data gives 4 steps an epoch: --max-steps 12 ends epoch 3
    flags = ["--dataset", "fake", "--batch-size", "128", "--epochs", "5", "--snapshot-every", "2"]
    assert run_inprocess(gan.main, flags + ["--max-steps", "12", "--out", out]) == 0
    assert sorted(p.name for p in out.glob("generator_epoch_*.pt")) == [f"generator_epoch_00{e}.pt" for e in (1, 2, 3)]
    assert load(out / "generator_epoch_003.pt")["epoch"] == 3
    assert run_inprocess(gan.main, ["--resume", out]) == 0
    snapshots = sorted(p.name for p in out.glob("generator_epoch_*.pt"))
    assert snapshots == [f"generator_epoch_00{e}.pt" for e in range(1, 6)]


def test_linear_decay_follows_the_default_run_in_both_optimisers_and_none_keeps_the_rate(tmp_path):
    """2 epochs of 4 steps: both rates are the 50-epoch run's (200 steps) at steps 4 and 8, through a resume."""
    flags = ["--dataset", "fake", "--batch-size", "128", "--epochs", "2"]
    assert run_inprocess(gan.main, flags + ["--out", tmp_path / "linear", "--max-steps", "4"]) == 0
    halfway = load(tmp_path / "linear" / "checkpoint.pt")
    assert halfway["opt_g"]["param_groups"][0]["lr"] == pytest.approx(8e-4 * (1 - 4 / 200))
    assert run_inprocess(gan.main, ["--resume", tmp_path / "linear"]) == 0
    end = load(tmp_path / "linear" / "checkpoint.pt")
    for optimiser, lr in (("opt_g", 8e-4), ("opt_d", 2e-4)):   # G's rate and D's own (--lr-d)
        assert end[optimiser]["param_groups"][0]["lr"] == pytest.approx(lr * (1 - 8 / 200))
    assert run_inprocess(gan.main, flags + ["--out", tmp_path / "none", "--no-lr-decay"]) == 0
    assert load(tmp_path / "none" / "checkpoint.pt")["opt_d"]["param_groups"][0]["lr"] == 2e-4


def test_a_step_moves_d_and_g_in_the_direction_of_the_game():
    """D's update raises its real-minus-fake margin; G's update raises D's score of G's images.
    Flipping G's target or swapping D's targets reverses one of them."""
    for seed in range(3):
        moved = learning_directions(gan, seed=seed)
        assert moved["d_margin"][1] > moved["d_margin"][0] + 0.05, moved
        assert moved["g_score"][1] > moved["g_score"][0] + 0.01, moved


def test_a_new_run_never_overwrites_an_earlier_one_and_resume_finds_the_newest(tmp_path, capsys):
    out = tmp_path / "runs" / "gan"
    assert run_inprocess(gan.main, FAST + ["--max-steps", "1", "--out", out]) == 0
    first = (out / "checkpoint.pt").read_bytes()
    assert run_inprocess(gan.main, FAST + ["--max-steps", "2", "--out", out]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].endswith(str(tmp_path / "runs" / "gan-2"))
    assert any(line == f"run folder: {tmp_path / 'runs' / 'gan-2'}" for line in printed)
    assert (out / "checkpoint.pt").read_bytes() == first
    assert load(tmp_path / "runs" / "gan-2" / "checkpoint.pt")["step"] == 2
    # --resume without a path continues gan-2, the newest run
    assert run_inprocess(gan.main, ["--resume", "--out", out, "--max-steps", "4"]) == 0
    assert load(tmp_path / "runs" / "gan-2" / "checkpoint.pt")["step"] == 4
    assert (out / "checkpoint.pt").read_bytes() == first


BAD_INPUTS = [
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "-3"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1e-4"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--label-smoothing", "1"], "--label-smoothing"),
    (["--label-smoothing", "-0.1"], "--label-smoothing"),
    (["--label-exchange", "1.5"], "--label-exchange"),
    (["--dataset", "imagenet"], "--dataset"),
    (["--img-size", "0"], "--img-size"),
    (["--device", "tpu"], "device"),
    (["--device", "cuda:7"], "cuda"),
    (["--batch-size", "100000"], "fewer than --batch-size"),
]


@pytest.mark.parametrize("argv,expected", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, argv, expected):
    out = tmp_path / "run"
    code = run_inprocess(gan.main, ["--dataset", "fake", "--out", out, *argv])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("gan.py: error:") or "error:" in err.strip().splitlines()[-1]
    assert not out.exists()   # a refused run leaves nothing behind


def test_bad_files_give_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    torch.save({"script": "dcgan", "args": {}}, tmp_path / "other.pt")
    cases = [
        (["--dataset", "folder", "--data-root", tmp_path / "missing"], f"{tmp_path / 'missing'}: No such file"),
        (["--dataset", "folder", "--data-root", tmp_path / "empty"], "holds no images"),
        (["--resume", tmp_path / "missing.pt"], f"{tmp_path / 'missing.pt'}: No such file or directory"),
        (["--resume", tmp_path / "corrupt.pt"], "is not a whole checkpoint"),
        (["--resume", tmp_path / "other.pt"], "written by dcgan"),
        (["--generate", "10", "--out", tmp_path / "runs" / "gan"], "no gan run"),
    ]
    for argv, expected in cases:
        code = run_inprocess(gan.main, argv)
        err = capsys.readouterr().err
        assert code == 2 and expected in err and "Traceback" not in err, (argv, err)
        assert len(err.strip().splitlines()) == 1
    assert (tmp_path / "corrupt.pt").read_bytes() == b"not a checkpoint"


def test_bad_input_from_the_command_line_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    assert run_as_command("gan.py", "--resume", tmp_path / "nothing.pt", monkeypatch=monkeypatch) == 2
    assert capsys.readouterr().err.strip() == f"gan.py: error: {tmp_path / 'nothing.pt'}: No such file or directory"


def test_label_smoothing_draws_real_targets_from_the_range_and_leaves_fakes_at_zero():
    torch.manual_seed(0)
    real, fake = gan.discriminator_targets(20000, 0.3, 0.0, "cpu")
    assert real.shape == fake.shape == (20000, 1)
    assert real.min() >= 0.7 and real.max() <= 1.0
    assert real.min() < 0.701 and real.max() > 0.999 and abs(real.mean().item() - 0.85) < 0.01
    assert torch.all(fake == 0)
    real, fake = gan.discriminator_targets(100, 0.0, 0.0, "cpu")
    assert torch.all(real == 1) and torch.all(fake == 0)


def test_label_exchange_swaps_targets_at_the_requested_rate():
    import random
    random.seed(0)
    swaps = sum(bool(gan.discriminator_targets(4, 0.0, 0.25, "cpu")[0].sum() == 0) for _ in range(4000))
    assert abs(swaps / 4000 - 0.25) < 0.03
    assert all(gan.discriminator_targets(4, 0.0, 0.0, "cpu")[0].sum() == 4 for _ in range(200))
    assert all(gan.discriminator_targets(4, 0.0, 1.0, "cpu")[1].sum() == 4 for _ in range(200))


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert run_inprocess(gan.main, ["--dataset", "fake", "--epochs", "1", "--out", out]) == 0
    good = (out / "checkpoint.pt").read_bytes()
    forward = gan.Discriminator.forward
    monkeypatch.setattr(gan.Discriminator, "forward", lambda self, x: forward(self, x) * float("nan"))
    code = run_inprocess(gan.main, ["--resume", out / "checkpoint.pt", "--epochs", "2"])
    assert code == 1 and "NaN" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == good


def test_a_short_run_is_the_start_of_the_default_run(tmp_path):
    """--lr-decay falls to 0 at the end of the default 50-epoch run, whatever --epochs says: a 5-epoch run
    has the default run's rate at every step, so it ends where the default run is at epoch 5 (a 5-epoch run
    whose rate fell to 0 over its own 5 epochs ended 2x worse than that). Epochs of 8 steps here: the default
    run has 400 steps, and --epochs 100 stretches the fall over its 800."""
    assert run_inprocess(gan.main, FAST + ["--epochs", 100, "--max-steps", 2, "--out", tmp_path / "long"]) == 0
    assert load(tmp_path / "long" / "checkpoint.pt")["opt_d"]["param_groups"][0]["lr"] == pytest.approx(2e-4 * (1 - 2 / 800))
    # End to end: a 1-epoch run's generator (and its moving average) is the 2-epoch run's at epoch 1.
    runs = {epochs: tmp_path / f"epochs{epochs}" for epochs in (1, 2)}
    for epochs, out in runs.items():
        assert run_inprocess(gan.main, FAST + ["--epochs", epochs, "--snapshot-every", "1", "--out", out]) == 0
    short_end, long_epoch_1 = load(runs[1] / "checkpoint.pt"), load(runs[2] / "generator_epoch_001.pt")
    assert short_end["opt_g"]["param_groups"][0]["lr"] == pytest.approx(8e-4 * (1 - 8 / 400))   # 8 of 400 steps
    assert all(torch.equal(short_end["sampler"][k], v) for k, v in long_epoch_1["sampler"].items())
    long_end = load(runs[2] / "checkpoint.pt")
    assert not torch.equal(short_end["sampler"]["net.0.weight"], long_end["sampler"]["net.0.weight"])
    # ... and `--resume --epochs 2` continues the 1-epoch run into the 2-epoch run, bit for bit.
    assert run_inprocess(gan.main, ["--resume", runs[1] / "checkpoint.pt", "--epochs", "2"]) == 0
    resumed = load(runs[1] / "checkpoint.pt")
    for part in ("generator", "discriminator", "sampler"):
        assert all(torch.equal(resumed[part][k], v) for k, v in long_end[part].items()), part
