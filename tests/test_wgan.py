"""wgan.py: one-batch runs, the n_critic rhythm (counted in real optimizer steps, across epochs
and --resume), weight clipping after every critic step, the critic-form label exchange,
resume exactness, --generate and bad input."""

import numpy as np
import pytest
import torch

import common
import wgan
from conftest import (learning_directions, load, losses, optimizer_steps, run_inprocess,
                      state_tensors)

FAST = ["--dataset", "fake", "--batch-size", "64", "--log-every", "1"]


def test_one_batch_trains_the_critic_and_n_critic_batches_train_the_generator_too(tmp_path):
    common.seed_everything(0)
    fresh_g, fresh_d = wgan.Generator(100, (1, 28, 28)), wgan.Critic((1, 28, 28))
    out = tmp_path / "one"
    assert run_inprocess(wgan.main, FAST + ["--n-critic", "2", "--max-steps", "1", "--out", out]) == 0
    checkpoint = load(out / "checkpoint.pt")
    assert checkpoint["step"] == 1 and checkpoint["script"] == "wgan"
    assert set(checkpoint) >= {"generator", "critic", "opt_g", "opt_d", "fixed_noise", "image_shape"}
    assert not torch.equal(fresh_d.state_dict()["net.0.weight"], checkpoint["critic"]["net.0.weight"])
    # One step is one critic step: G has not been trained yet
    for name, tensor in fresh_g.named_parameters():
        assert torch.equal(tensor, checkpoint["generator"][name]), name
    rows = (out / "losses.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,loss_critic,loss_g,wasserstein" and len(rows) == 2
    assert all(np.isfinite(float(v)) for v in rows[1].split(",")[2:])
    assert (out / "step_0000001.png").is_file()

    out = tmp_path / "two"   # with --n-critic 2 the 2nd step also trains G
    assert run_inprocess(wgan.main, FAST + ["--n-critic", "2", "--max-steps", "2", "--out", out]) == 0
    trained = load(out / "checkpoint.pt")["generator"]
    assert not torch.equal(fresh_g.state_dict()["net.0.weight"], trained["net.0.weight"])


def test_one_batch_on_mnist_format_files(tmp_path, mnist_root):
    out = tmp_path / "run"
    assert run_inprocess(wgan.main, ["--data-root", mnist_root, "--max-steps", "1", "--out", out]) == 0
    assert load(out / "checkpoint.pt")["image_shape"] == (1, 28, 28)


def test_n_critic_steps_per_generator_step_counted_over_the_whole_run(tmp_path):
    """fake data: 512 images, 4 batches of 128 per epoch. With --n-critic 3 over 2 epochs (8
    critic steps) G steps follow global steps 3 and 6. A count that restarted each epoch, or on
    --resume after step 4, would train G after step 7 instead of 6."""
    expected = "DDDG" "DDDG" "DD"
    flags = ["--dataset", "fake", "--batch-size", "128", "--epochs", "2", "--n-critic", "3"]
    with optimizer_steps() as calls:
        assert run_inprocess(wgan.main, flags + ["--out", tmp_path / "whole"]) == 0
    assert "".join(calls) == expected
    checkpoint = load(tmp_path / "whole" / "checkpoint.pt")
    assert all(s["step"] == 8 for s in checkpoint["opt_d"]["state"].values())
    assert all(s["step"] == 2 for s in checkpoint["opt_g"]["state"].values())

    with optimizer_steps() as calls:
        assert run_inprocess(wgan.main, flags + ["--out", tmp_path / "parts", "--max-steps", "4"]) == 0
        assert run_inprocess(wgan.main, ["--resume", tmp_path / "parts" / "checkpoint.pt"]) == 0
    assert "".join(calls) == expected


def test_critic_boost_gives_the_authors_schedule_and_resumes_in_step(tmp_path):
    """--critic-boost K: K critic steps before each of the first 25 G steps and every 500th, n_critic
    otherwise; off (0), n_critic always. The rhythm is a function of the run's step, so a resume
    mid-boost continues it."""
    boosted = wgan.parse_args(["--critic-boost", "100", "--n-critic", "5"])[0]
    assert [wgan.critic_updates_before(g, 5, 100) for g in (0, 1, 24, 25, 26, 499, 500, 501, 1000)] == \
        [100, 100, 100, 5, 5, 5, 100, 5, 100]
    plain = wgan.parse_args(["--n-critic", "5"])[0]
    assert plain.critic_boost == 0 and {wgan.critic_updates_before(g, plain.n_critic, plain.critic_boost) for g in range(1001)} == {5}
    assert wgan.g_update_steps(23, plain.n_critic) == {5, 10, 15, 20}
    turns = sorted(wgan.g_update_steps(5_000, boosted.n_critic, boosted.critic_boost))
    assert turns[:3] == [100, 200, 300] and turns[24:27] == [2500, 2505, 2510]   # 25 boosted, then every 5
    assert turns[499:502] == [4875, 4975, 4980]   # G update number 500 (from 0) waits for 100 critic steps again
    flags = ["--dataset", "fake", "--batch-size", "128", "--epochs", "3", "--n-critic", "2", "--critic-boost", "5"]
    expected = "DDDDDG" "DDDDDG" "DD"   # 12 critic steps: G after steps 5 and 10 (both among the first 25)
    with optimizer_steps() as calls:
        assert run_inprocess(wgan.main, flags + ["--out", tmp_path / "whole"]) == 0
    assert "".join(calls) == expected
    with optimizer_steps() as calls:
        assert run_inprocess(wgan.main, flags + ["--out", tmp_path / "parts", "--max-steps", "7"]) == 0
        assert run_inprocess(wgan.main, ["--resume", tmp_path / "parts" / "checkpoint.pt"]) == 0
    assert "".join(calls) == expected


def test_every_critic_weight_stays_within_the_clip_after_every_critic_step(tmp_path, monkeypatch):
    """The default initialisation has weights up to 1/sqrt(784) = 0.036, so only clipping after
    the very first critic step keeps every later forward pass within [-0.02, 0.02]."""
    largest = []   # max |parameter| the critic had at each of its forward passes
    forward = wgan.Critic.forward

    def spy(self, images):
        largest.append(max(p.abs().max().item() for p in self.parameters()))
        return forward(self, images)

    monkeypatch.setattr(wgan.Critic, "forward", spy)
    out = tmp_path / "run"
    assert run_inprocess(wgan.main, FAST + ["--clip", "0.02", "--n-critic", "2", "--max-steps", "3", "--out", out]) == 0
    # step 1 scores real and fake (one pass) with the initial weights; every later pass (critic or G
    # step) must see clipped ones: a critic pass per step and a G pass at step 2
    assert largest[0] > 0.03
    assert len(largest) == 3 + 1 and all(m <= 0.02 for m in largest[1:])
    critic = load(out / "checkpoint.pt")["critic"]
    assert all(t.abs().max() <= 0.02 for t in critic.values())
    assert max(t.abs().max() for t in critic.values()) == pytest.approx(0.02)   # clamped, not just small


def test_clip_weights_clamps_weights_and_biases():
    critic = wgan.Critic((1, 4, 4))
    with torch.no_grad():
        for p in critic.parameters():
            p.uniform_(-1, 1)
    wgan.clip_weights(critic, 0.05)
    assert all(p.abs().max().item() == pytest.approx(0.05) for p in critic.parameters())


def test_losses_have_the_wasserstein_signs():
    real, fake = torch.tensor([[3.0], [5.0]]), torch.tensor([[1.0], [-1.0]])
    assert wgan.critic_loss(real, fake).item() == pytest.approx(0 - 4)   # mean(D(fake)) - mean(D(real))
    assert wgan.generator_loss(fake).item() == pytest.approx(0)          # -mean(D(fake))
    assert wgan.generator_loss(real).item() == pytest.approx(-4)


def test_critic_gives_raw_scores_with_no_batch_interaction():
    critic = wgan.Critic((1, 28, 28))
    assert not any(isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Sigmoid)) for m in critic.modules())
    images = torch.randn(6, 1, 28, 28) * 50
    scores = critic(images)
    assert scores.shape == (6, 1)
    assert torch.allclose(scores, torch.cat([critic(image[None]) for image in images]), atol=1e-6)


def test_label_exchange_swaps_the_batches_in_the_critic_loss(tmp_path):
    """Without a swap the critic's loss is -wasserstein; with one, +wasserstein (the logged
    estimate itself is always mean(D(real)) - mean(D(fake)) of the true batches)."""
    swapped = {}
    for p in ("0", "1", "0.5"):
        out = tmp_path / p
        assert run_inprocess(wgan.main, FAST + ["--label-exchange", p, "--max-steps", "8", "--out", out]) == 0
        # (loss, wasserstein) per step; steps whose estimate rounds to about 0 cannot tell a swap
        rows = [(r["loss_critic"], r["wasserstein"]) for r in losses(out) if abs(r["wasserstein"]) > 2e-4]
        assert len(rows) >= 6
        assert all(min(abs(loss - w), abs(loss + w)) < 5e-5 for loss, w in rows)
        swapped[p] = [abs(loss - w) < 5e-5 for loss, w in rows]
    assert not any(swapped["0"]) and all(swapped["1"])
    assert any(swapped["0.5"]) and not all(swapped["0.5"])   # (fixed by the seed)


def test_resume_gives_exactly_the_uninterrupted_weights(tmp_path):
    flags = ["--dataset", "fake", "--batch-size", "128", "--epochs", "2", "--n-critic", "3", "--label-exchange", "0.3"]
    assert run_inprocess(wgan.main, flags + ["--out", tmp_path / "whole"]) == 0
    # 4 steps per epoch: stop mid-epoch (step 3), resume across the epoch boundary to step 6
    # (between the two G steps), then to the end.
    assert run_inprocess(wgan.main, flags + ["--out", tmp_path / "parts", "--max-steps", "3"]) == 0
    assert run_inprocess(wgan.main, ["--resume", tmp_path / "parts" / "checkpoint.pt", "--max-steps", "6"]) == 0
    assert run_inprocess(wgan.main, ["--resume", tmp_path / "parts" / "checkpoint.pt"]) == 0
    whole, parts = load(tmp_path / "whole" / "checkpoint.pt"), load(tmp_path / "parts" / "checkpoint.pt")
    assert whole["step"] == parts["step"] == 8
    for name, tensor in state_tensors(whole).items():
        assert torch.equal(tensor, state_tensors(parts)[name]), name
    for opt in ("opt_g", "opt_d"):
        assert torch.equal(whole[opt]["state"][0]["square_avg"], parts[opt]["state"][0]["square_avg"])
    assert [r["step"] for r in losses(tmp_path / "parts")] == [3, 4, 6, 8]


def test_generate_writes_npz_from_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert run_inprocess(wgan.main, FAST + ["--max-steps", "1", "--out", out]) == 0
    assert run_inprocess(wgan.main, ["--generate", "12", "--resume", out / "checkpoint.pt"]) == 0
    with np.load(out / "generated.npz") as npz:
        assert npz["images"].shape == (12, 1, 28, 28) and npz["images"].dtype == np.uint8
        assert "labels" not in npz
    assert (out / "generated.png").is_file()


BAD_INPUTS = [
    (["--n-critic", "0"], "--n-critic"),
    (["--n-critic", "2.5"], "--n-critic"),
    (["--clip", "0"], "--clip"),
    (["--clip", "-0.01"], "--clip"),
    (["--clip", "nan"], "--clip"),
    (["--label-exchange", "1.5"], "--label-exchange"),
    (["--label-smoothing", "0.1"], "unrecognized arguments: --label-smoothing"),
    (["--batch-size", "100000"], "fewer than --batch-size"),
]


@pytest.mark.parametrize("argv,expected", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, argv, expected):
    out = tmp_path / "run"
    code = run_inprocess(wgan.main, ["--dataset", "fake", "--out", out, *argv])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert "error:" in err.strip().splitlines()[-1]
    assert not out.exists()   # a refused run leaves nothing behind


def test_resume_refuses_to_change_the_critic_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_inprocess(wgan.main, FAST + ["--max-steps", "1", "--out", out]) == 0
    capsys.readouterr()
    for flag, value in (("--n-critic", "3"), ("--clip", "0.05")):
        assert run_inprocess(wgan.main, ["--resume", out / "checkpoint.pt", flag, value]) == 2
        assert f"{flag} cannot change" in capsys.readouterr().err


def test_a_nan_score_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert run_inprocess(wgan.main, FAST + ["--max-steps", "1", "--out", out]) == 0
    good = (out / "checkpoint.pt").read_bytes()
    forward = wgan.Critic.forward
    monkeypatch.setattr(wgan.Critic, "forward", lambda self, x: forward(self, x) * float("nan"))
    assert run_inprocess(wgan.main, ["--resume", out / "checkpoint.pt", "--max-steps", "2"]) == 1
    assert "NaN" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == good


def test_a_step_moves_the_critic_and_g_in_the_direction_of_the_game():
    """With clipping out of the way (--clip 10, far above PyTorch's initial weights), a critic update
    raises mean(D(real)) - mean(D(fake)); G's update (the n_critic-th step) raises the critic's score
    of G's images. Flipping the sign of either loss reverses one of them."""
    for seed in range(3):
        moved = learning_directions(wgan, ["--n-critic", "5", "--clip", "10"], step=4, seed=seed)
        assert moved["d_margin"][1] > moved["d_margin"][0] + 0.05, moved
        assert moved["g_score"][1] > moved["g_score"][0] + 0.05, moved
