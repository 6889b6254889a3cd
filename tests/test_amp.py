"""--amp: the step's matrix products and convolutions run in bfloat16 while weights, optimiser state and
losses stay float32, and a step under it moves both networks the way the float32 step does."""
import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import learning_directions, load, run_inprocess
import gan  # noqa: E402

SCRIPTS = ("gan", "cgan", "acgan", "wgan", "wgan_gp", "dcgan")
# The flags and step of each script's own direction test (the critics' G updates on the n_critic-th step)
DIRECTION_SETTINGS = {"wgan": (["--n-critic", "5", "--clip", "10"], 4), "wgan_gp": (["--n-critic", "5"], 4),
                      "dcgan": (["--width", "8"], 0)}
PRODUCTS = {"mm", "addmm", "convolution", "_convolution", "mkldnn_convolution", "linear"}


class ProductDtypes(TorchDispatchMode):
    """The dtypes of the first input of every matrix product and convolution dispatched."""

    def __init__(self):
        super().__init__()
        self.dtypes = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in PRODUCTS:
            self.dtypes[args[0].dtype] += 1
        return func(*args, **(kwargs or {}))


def products_in_steps(module, argv, monkeypatch):
    """The dtypes of the matrix products and convolutions dispatched inside module.train_step during
    module.main(argv) (grids and snapshots sample outside the step, in float32)."""
    watch, step = ProductDtypes(), module.train_step

    def watched(*args, **kwargs):
        with watch:
            return step(*args, **kwargs)
    monkeypatch.setattr(module, "train_step", watched)
    assert run_inprocess(module.main, argv) == 0
    return watch.dtypes


@pytest.mark.parametrize("script", ["gan", "acgan", "wgan_gp"])
def test_amp_runs_every_product_of_the_step_in_bfloat16_and_keeps_the_weights_float32(tmp_path, monkeypatch, script):
    module = __import__(script)
    argv = ["--dataset", "fake", "--max-steps", "2", "--out", tmp_path / "run"]   # wgan_gp: G steps at the 2nd
    assert set(products_in_steps(module, argv + ["--amp"], monkeypatch)) == {torch.bfloat16}
    saved = load(tmp_path / "run" / "checkpoint.pt")
    assert saved["args"]["amp"]
    for name in ("opt_g", "opt_d"):
        moments = [value for state in saved[name]["state"].values() for value in state.values()
                   if value.is_floating_point() and value.dim() > 0]
        assert moments and {value.dtype for value in moments} == {torch.float32}, name
    weights = [tensor for key in saved if isinstance(saved[key], dict) and key not in ("args", "rng")
               for tensor in saved[key].values() if torch.is_tensor(tensor) and tensor.is_floating_point()]
    assert weights and {tensor.dtype for tensor in weights} == {torch.float32}
    assert set(products_in_steps(module, argv[:-1] + [tmp_path / "float32"], monkeypatch)) == {torch.float32}


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_step_under_amp_moves_both_networks_as_the_float32_step_does(script):
    """One step from the same networks on the same batch, float32 and bfloat16 autocast: D's margin and
    D's score of G's images change in the same direction, by amounts within a third of each other."""
    module = __import__(script)
    flags, step = DIRECTION_SETTINGS.get(script, ((), 0))
    for seed in range(2):
        exact = learning_directions(module, flags, step, seed=seed)
        mixed = learning_directions(module, flags, step, seed=seed, amp=True)
        for name in ("d_margin", "g_score"):
            change, amp_change = exact[name][1] - exact[name][0], mixed[name][1] - mixed[name][0]
            assert change > 0 and amp_change > 0, (name, exact, mixed)
            assert abs(amp_change - change) < change / 3, (name, exact, mixed)


def test_a_resumed_amp_run_keeps_amp_and_ends_exactly_as_one_that_never_stopped(tmp_path, monkeypatch):
    flags = ["--dataset", "fake", "--batch-size", "64", "--amp"]   # an emulating CPU: few images
    assert run_inprocess(gan.main, flags + ["--out", tmp_path / "whole", "--max-steps", "3"]) == 0
    assert run_inprocess(gan.main, flags + ["--out", tmp_path / "parts", "--max-steps", "1"]) == 0
    assert run_inprocess(gan.main, ["--resume", tmp_path / "parts" / "checkpoint.pt", "--max-steps", "3"]) == 0   # --amp comes back
    whole, parts = load(tmp_path / "whole" / "checkpoint.pt"), load(tmp_path / "parts" / "checkpoint.pt")
    assert whole["step"] == parts["step"] == 3 and parts["args"]["amp"]
    for name in ("generator", "discriminator", "sampler"):
        for key, tensor in whole[name].items():
            assert torch.equal(tensor, parts[name][key]), (name, key)
    # --no-amp turns it off for the rest of a run
    resumed = ["--resume", tmp_path / "parts" / "checkpoint.pt", "--max-steps", "5", "--no-amp"]
    assert set(products_in_steps(gan, resumed, monkeypatch)) == {torch.float32}
    assert not load(tmp_path / "parts" / "checkpoint.pt")["args"]["amp"]
