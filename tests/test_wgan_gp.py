"""wgan_gp.py: the gradient penalty against linear and quadratic critics whose gradients are
known in closed form, one-batch runs, the n_critic rhythm (counted in real optimizer steps,
across epochs and --resume), the critic-form label exchange, resume exactness, --generate and
bad input."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import common
import wgan_gp
from conftest import (learning_directions, load, losses, optimizer_steps, run_inprocess,
                      state_tensors)

FAST = ["--dataset", "fake", "--batch-size", "64", "--log-every", "1"]


# ---------------------------------------------------------------------------------------------
# The gradient penalty
# ---------------------------------------------------------------------------------------------
class LinearCritic(nn.Module):
    """D(x) = <w, x>: its gradient with respect to every image is w, everywhere."""

    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(weight)   # (C, H, W)

    def forward(self, images):
        return (images * self.weight).flatten(1).sum(1, keepdim=True)   # (B, 1)


class QuadraticCritic(nn.Module):
    """D(x) = ||x||^2 / 2: its gradient at x is x itself. Keeps the points it was asked about."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, images):
        self.seen.append(images.detach().clone())
        return images.pow(2).flatten(1).sum(1, keepdim=True) / 2   # (B, 1)


def images(n=16, shape=(3, 6, 6), seed=0):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_gradient_penalty_is_zero_for_a_linear_critic_with_a_unit_norm_weight():
    weight = images(1)[0]
    critic = LinearCritic(weight / weight.norm())
    penalty = wgan_gp.gradient_penalty(critic, images(seed=1), images(seed=2), 10.0)
    assert penalty.dim() == 0 and abs(penalty.item()) < 1e-12


@pytest.mark.parametrize("norm,lambda_gp", [(3.0, 2.5), (0.5, 10.0), (1.2, 10.0)])
def test_gradient_penalty_of_a_linear_critic_is_lambda_times_norm_minus_one_squared(norm, lambda_gp):
    weight = images(1)[0]
    weight = weight * norm / weight.norm()
    critic = LinearCritic(weight.clone())
    penalty = wgan_gp.gradient_penalty(critic, images(seed=1), images(seed=2), lambda_gp)
    assert penalty.item() == pytest.approx(lambda_gp * (norm - 1) ** 2, rel=1e-9)
    # create_graph=True: the penalty trains the critic (d/dw of lambda (||w|| - 1)^2)
    penalty.backward()
    assert torch.allclose(critic.weight.grad, 2 * lambda_gp * (norm - 1) * weight / norm)


def test_gradient_penalty_uses_one_alpha_per_image_and_one_norm_per_image():
    fake = images(32)
    real = fake + 1 + torch.rand(fake.shape, dtype=torch.float64)   # real - fake is never near 0
    critic = QuadraticCritic()
    penalty = wgan_gp.gradient_penalty(critic, real, fake, 10.0)
    interpolates, = critic.seen
    alpha = (interpolates - fake) / (real - fake)   # (B, C, H, W): must be one value per image
    per_image = alpha.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image))
    assert per_image.min() >= 0 and per_image.max() <= 1 and per_image[:, 0].std() > 0.1
    # The gradient at each point is the point: its norm over all channels and pixels
    norms = interpolates.flatten(1).norm(dim=1)
    assert penalty.item() == pytest.approx(10.0 * ((norms - 1) ** 2).mean().item(), rel=1e-9)


def test_gradient_penalty_draws_alpha_uniformly_from_0_to_1():
    torch.manual_seed(0)
    fake = torch.zeros(20000, 1, 1, 1, dtype=torch.float64)
    critic = QuadraticCritic()
    wgan_gp.gradient_penalty(critic, fake + 1, fake, 1.0)
    alpha = critic.seen[0].flatten()   # real = 1, fake = 0: the interpolate is alpha itself
    assert alpha.min() >= 0 and alpha.max() <= 1
    assert abs(alpha.mean().item() - 0.5) < 0.01 and abs(alpha.var().item() - 1 / 12) < 0.005


def test_gradient_penalty_does_not_reach_the_generator():
    fake = images(8).requires_grad_(True)   # as if straight from G, with its graph
    penalty = wgan_gp.gradient_penalty(QuadraticCritic(), images(8, seed=3), fake, 10.0)
    penalty.backward()   # the quadratic critic's gradient depends on the fakes: only detach stops it
    assert fake.grad is None


def test_critic_gives_raw_scores_with_no_batch_interaction():
    critic = wgan_gp.Critic((1, 28, 28))
    assert not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Sigmoid)) for m in critic.modules())
    batch = torch.randn(6, 1, 28, 28) * 50
    scores = critic(batch)
    assert scores.shape == (6, 1)
    assert torch.allclose(scores, torch.cat([critic(image[None]) for image in batch]), atol=1e-5)


def test_losses_have_the_wasserstein_signs():
    real, fake = torch.tensor([[3.0], [5.0]]), torch.tensor([[1.0], [-1.0]])
    assert wgan_gp.critic_loss(real, fake).item() == pytest.approx(0 - 4)   # mean(D(fake)) - mean(D(real))
    assert wgan_gp.generator_loss(real).item() == pytest.approx(-4)         # -mean(D(fake))


# ---------------------------------------------------------------------------------------------
# Training runs
# ---------------------------------------------------------------------------------------------
def test_one_batch_trains_the_critic_and_n_critic_batches_train_the_generator_too(tmp_path):
    common.seed_everything(0)
    fresh_g, fresh_d = wgan_gp.Generator(100, (1, 28, 28)), wgan_gp.Critic((1, 28, 28))
    out = tmp_path / "one"
    assert run_inprocess(wgan_gp.main, FAST + ["--max-steps", "1", "--out", out]) == 0
    checkpoint = load(out / "checkpoint.pt")
    assert checkpoint["step"] == 1 and checkpoint["script"] == "wgan_gp"
    assert set(checkpoint) >= {"generator", "critic", "opt_g", "opt_d", "fixed_noise", "image_shape"}
    assert not torch.equal(fresh_d.state_dict()["net.0.weight"], checkpoint["critic"]["net.0.weight"])
    for name, tensor in fresh_g.named_parameters():   # one step is one critic step: G not yet trained
        assert torch.equal(tensor, checkpoint["generator"][name]), name
    rows = (out / "losses.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,loss_critic,loss_g,wasserstein,penalty" and len(rows) == 2
    row = losses(out)[0]
    assert row["penalty"] > 0 and all(np.isfinite(v) for v in row.values())
    assert (out / "step_0000001.png").is_file()

    out = tmp_path / "five"   # with --n-critic 5 the 5th step also trains G
    assert run_inprocess(wgan_gp.main, FAST + ["--n-critic", "5", "--max-steps", "5", "--out", out]) == 0
    trained = load(out / "checkpoint.pt")["generator"]
    assert not torch.equal(fresh_g.state_dict()["net.0.weight"], trained["net.0.weight"])


def test_one_batch_on_mnist_format_files(tmp_path, mnist_root):
    out = tmp_path / "run"
    assert run_inprocess(wgan_gp.main, ["--data-root", mnist_root, "--max-steps", "1", "--out", out]) == 0
    assert load(out / "checkpoint.pt")["image_shape"] == (1, 28, 28)


def test_n_critic_steps_per_generator_step_counted_over_the_whole_run(tmp_path):
    """fake data: 512 images, 4 batches of 128 per epoch. With --n-critic 3 over 2 epochs (8
    critic steps) G steps follow global steps 3 and 6. A count that restarted each epoch, or on
    --resume after step 4, would train G after step 7 instead of 6."""
    expected = "DDDG" "DDDG" "DD"
    flags = ["--dataset", "fake", "--batch-size", "128", "--epochs", "2", "--n-critic", "3"]
    with optimizer_steps() as calls:
        assert run_inprocess(wgan_gp.main, flags + ["--out", tmp_path / "whole"]) == 0
    assert "".join(calls) == expected
    checkpoint = load(tmp_path / "whole" / "checkpoint.pt")
    assert all(s["step"] == 8 for s in checkpoint["opt_d"]["state"].values())
    assert all(s["step"] == 2 for s in checkpoint["opt_g"]["state"].values())

    with optimizer_steps() as calls:
        assert run_inprocess(wgan_gp.main, flags + ["--out", tmp_path / "parts", "--max-steps", "4"]) == 0
        assert run_inprocess(wgan_gp.main, ["--resume", tmp_path / "parts" / "checkpoint.pt"]) == 0
    assert "".join(calls) == expected


def test_label_exchange_swaps_the_batches_in_the_critic_loss(tmp_path):
    """loss_critic - penalty is -wasserstein without a swap and +wasserstein with one."""
    swapped = {}
    for p in ("0", "1", "0.5"):
        out = tmp_path / p
        assert run_inprocess(wgan_gp.main, FAST + ["--label-exchange", p, "--max-steps", "8", "--out", out]) == 0
        # (loss, wasserstein) per step; steps whose estimate rounds to about 0 cannot tell a swap
        rows = [(r["loss_critic"] - r["penalty"], r["wasserstein"]) for r in losses(out)
                if abs(r["wasserstein"]) > 2e-4]
        assert len(rows) >= 6
        assert all(min(abs(loss - w), abs(loss + w)) < 5e-5 for loss, w in rows)
        swapped[p] = [abs(loss - w) < 5e-5 for loss, w in rows]
    assert not any(swapped["0"]) and all(swapped["1"])
    assert any(swapped["0.5"]) and not all(swapped["0.5"])   # (fixed by the seed)


def test_resume_gives_exactly_the_uninterrupted_weights(tmp_path):
    flags = ["--dataset", "fake", "--batch-size", "128", "--epochs", "2", "--n-critic", "3", "--label-exchange", "0.3"]
    assert run_inprocess(wgan_gp.main, flags + ["--out", tmp_path / "whole"]) == 0
    # 4 steps per epoch: stop mid-epoch (step 3), resume across the epoch boundary to step 6
    # (between the two G steps), then to the end.
    assert run_inprocess(wgan_gp.main, flags + ["--out", tmp_path / "parts", "--max-steps", "3"]) == 0
    assert run_inprocess(wgan_gp.main, ["--resume", tmp_path / "parts" / "checkpoint.pt", "--max-steps", "6"]) == 0
    assert run_inprocess(wgan_gp.main, ["--resume", tmp_path / "parts" / "checkpoint.pt"]) == 0
    whole, parts = load(tmp_path / "whole" / "checkpoint.pt"), load(tmp_path / "parts" / "checkpoint.pt")
    assert whole["step"] == parts["step"] == 8
    for name, tensor in state_tensors(whole).items():
        assert torch.equal(tensor, state_tensors(parts)[name]), name
    for opt in ("opt_g", "opt_d"):
        assert torch.equal(whole[opt]["state"][0]["exp_avg"], parts[opt]["state"][0]["exp_avg"])
    assert [r["step"] for r in losses(tmp_path / "parts")] == [3, 4, 6, 8]


def test_generate_writes_npz_from_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert run_inprocess(wgan_gp.main, FAST + ["--max-steps", "1", "--out", out]) == 0
    assert run_inprocess(wgan_gp.main, ["--generate", "12", "--resume", out / "checkpoint.pt"]) == 0
    with np.load(out / "generated.npz") as npz:
        assert npz["images"].shape == (12, 1, 28, 28) and npz["images"].dtype == np.uint8
        assert "labels" not in npz
    assert (out / "generated.png").is_file()


BAD_INPUTS = [
    (["--n-critic", "0"], "--n-critic"),
    (["--lambda-gp", "0"], "--lambda-gp"),
    (["--lambda-gp", "-10"], "--lambda-gp"),
    (["--lambda-gp", "inf"], "--lambda-gp"),
    (["--label-exchange", "-0.1"], "--label-exchange"),
    (["--clip", "0.01"], "unrecognized arguments: --clip"),   # no dead flags: nothing is clipped here
    (["--label-smoothing", "0.1"], "unrecognized arguments: --label-smoothing"),
    (["--batch-size", "100000"], "fewer than --batch-size"),
]


@pytest.mark.parametrize("argv,expected", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, argv, expected):
    out = tmp_path / "run"
    code = run_inprocess(wgan_gp.main, ["--dataset", "fake", "--out", out, *argv])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert "error:" in err.strip().splitlines()[-1]
    assert not out.exists()   # a refused run leaves nothing behind


def test_resume_refuses_to_change_the_critic_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_inprocess(wgan_gp.main, FAST + ["--max-steps", "1", "--out", out]) == 0
    capsys.readouterr()
    for flag, value in (("--n-critic", "3"), ("--lambda-gp", "1")):
        assert run_inprocess(wgan_gp.main, ["--resume", out / "checkpoint.pt", flag, value]) == 2
        assert f"{flag} cannot change" in capsys.readouterr().err


def test_a_nan_score_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert run_inprocess(wgan_gp.main, FAST + ["--max-steps", "1", "--out", out]) == 0
    good = (out / "checkpoint.pt").read_bytes()
    forward = wgan_gp.Critic.forward
    monkeypatch.setattr(wgan_gp.Critic, "forward", lambda self, x: forward(self, x) * float("nan"))
    assert run_inprocess(wgan_gp.main, ["--resume", out / "checkpoint.pt", "--max-steps", "2"]) == 1
    assert "NaN" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == good


def test_a_step_moves_the_critic_and_g_in_the_direction_of_the_game():
    """A critic update raises mean(D(real)) - mean(D(fake)); G's update (the n_critic-th step) raises
    the critic's score of G's images. Flipping the sign of either loss reverses one of them."""
    for seed in range(3):
        moved = learning_directions(wgan_gp, ["--n-critic", "5"], step=4, seed=seed)
        assert moved["d_margin"][1] > moved["d_margin"][0] + 0.05, moved
        assert moved["g_score"][1] > moved["g_score"][0] + 0.05, moved
