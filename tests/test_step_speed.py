"""The training loop never waits for the device: no value is read back to the host in a step (CPU: counted
by operation; CUDA: torch's sync debug mode), the step dispatches no more operations than it did, and
--compile gives the eager step's losses."""
import collections
import contextlib
import copy
import io
import shutil
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import common
import gan
from conftest import SCRIPTS, run_inprocess, step_settings

HOST_READS = {"_local_scalar_dense", "item", "is_nonzero", "equal"}   # each waits for the device
# Operations per step at each script's defaults in the loop that common.Run drove (benchmarks/ops.py of
# ce08adb; before the step was trimmed: gan 335, cgan 438, acgan 891, wgan 341, wgan_gp 273, dcgan 586,
# cyclegan 1634): a count above these means wasted work came back.
BEFORE = {"gan": 193, "cgan": 252, "acgan": 451, "wgan": 241.5, "wgan_gp": 217.2, "dcgan": 290, "cyclegan": 1042}
AS_BEFORE = {"wgan": ("--n-critic", "2", "--no-reuse-fakes"),   # the defaults of then, where they have changed
             "dcgan": ("--batch-size", "128", "--lr", "2e-4", "--label-smoothing", "0"),
             "wgan_gp": ("--n-critic", "5", "--no-reuse-fakes")}


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def ops_per_step(script, flags=(), tmp_path=None, device="cpu"):
    """(operations, host reads) per step of `script`'s whole main() loop: two runs on fake data that end
    mid-epoch, one `extra` steps longer than the other (a whole number of the WGAN-GP's G turns), so that
    start-up and the run's end (log line, grid, checkpoint) cancel out."""
    module = __import__(script)
    n_critic = getattr(module.parse_args(["--dataset", "fake", *flags])[0], "n_critic", 1)
    extra = n_critic if n_critic > 2 else 2 * n_critic   # within the first epoch of 8 steps
    counts = []
    for steps in (1, 1 + extra):
        with CountOps() as counter, contextlib.redirect_stdout(io.StringIO()):
            assert run_inprocess(module.main, ["--dataset", "fake", "--device", device, "--max-steps", steps,
                                               "--log-every", 1000, "--out", tmp_path / f"{script}-{steps}", *flags]) == 0
        counts.append(counter.ops)
    more = counts[1] - counts[0]
    more.pop("detach", None)   # a view: no kernel, no copy
    return sum(more.values()) / extra, sum(n for name, n in more.items() if name in HOST_READS) / extra


VARIANTS = [(script, AS_BEFORE.get(script, ())) for script in SCRIPTS] + [("wgan", ()), ("wgan_gp", ()), ("dcgan", ()),
    ("gan", ("--label-smoothing", "0.2", "--label-exchange", "0.5")),
    ("acgan", ("--no-spectral-norm", "--label-exchange", "0.5", "--fake-class-loss", "--d-dropout", "0.3")),
    ("wgan", ("--critic-boost", "3", "--label-exchange", "0.5")),
    ("cyclegan", ("--label-smoothing", "0.1", "--pool-size", "4")),
    ("gan", ("--amp",)),
]


@pytest.mark.parametrize("script, flags", VARIANTS, ids=[" ".join((s, *f)) for s, f in VARIANTS])
def test_a_training_step_reads_nothing_back_from_the_device(script, flags, tmp_path):
    total, reads = ops_per_step(script, flags, tmp_path)
    print(f"{script} {' '.join(flags)}: {total:.0f} operations per step")
    assert total > 50   # the counter saw the step's forward and backward passes
    assert reads == 0, f"{script} reads {reads} values per step back to the host"
    if flags == AS_BEFORE.get(script, ()):
        assert total <= BEFORE[script] + 1, f"{script}: {total:.0f} operations per step, {BEFORE[script]} before"


def test_the_counter_sees_a_host_read(monkeypatch, tmp_path):
    """The check above can fail: a step that logs a float (.item()) is caught."""
    step = gan.train_step

    def reads_a_loss(*args, **kwargs):
        logged = step(*args, **kwargs)
        logged["loss_d"].item()
        return logged
    monkeypatch.setattr(gan, "train_step", reads_a_loss)
    assert ops_per_step("gan", (), tmp_path)[1] == 1


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device here: torch.cuda.set_sync_debug_mode only watches a GPU's stream; the "
                           "CPU test above counts the operations that read back to the host instead")
@pytest.mark.parametrize("script, flags", [(script, ()) for script in SCRIPTS] + [("acgan", ("--amp",))])
def test_cuda_steps_never_synchronise(script, flags, tmp_path):
    """Synchronising calls, counted by sync debug mode's warnings, are as many in a longer run as in a shorter."""
    counts = []
    for steps in (2, 7):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run_inprocess(__import__(script).main, ["--dataset", "fake", "--device", "cuda", "--max-steps", steps,
                                                        "--log-every", 1000, "--out", tmp_path / f"{steps}", *flags])
            finally:
                torch.cuda.set_sync_debug_mode(0)
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1], counts


def test_every_script_has_compile():
    for script in SCRIPTS:
        module = __import__(script)
        assert module.parse_args(["--compile"])[0].compile is True
        assert module.parse_args([])[0].compile is False   # off by default


def test_a_compiled_step_gives_the_eager_losses():
    """gan's train_step on compiled networks and on eager copies with the same weights and random numbers:
    the same losses, step after step. Compiled as --compile traces them (dynamo, then AOT autograd), run by
    eager kernels: inductor's C++ kernels take 40 s to build on a fresh machine (the wgan_gp test below builds
    them), and their arithmetic is torch's to test, the capture of this step ours."""
    args = gan.parse_args(["--dataset", "fake", "--label-smoothing", "0.1"])[0]
    data = common.load_data(args, torch.device("cpu"))
    torch.manual_seed(0)
    eager = gan.build(args, data.shape, data.n_classes, torch.device("cpu"))
    compiled = copy.deepcopy(eager)
    compiled[2].load_state_dict(eager[2].state_dict())
    compiled[3].load_state_dict(eager[3].state_dict())
    compiled[0].compile(backend="aot_eager"), compiled[1].compile(backend="aot_eager")   # main(): inductor
    settings = step_settings(gan.train_step, args)
    for step, (images, _) in zip(range(3), data.batches(64, epoch=0, seed=0)):
        torch.manual_seed(step)
        expected = gan.train_step(images, *eager, **settings)
        torch.manual_seed(step)
        got = gan.train_step(images, *compiled, **settings)
        for name in expected:
            assert torch.allclose(got[name], expected[name], rtol=1e-4, atol=1e-5), (step, name)
    assert compiled[0]._compiled_call_impl is not None   # the networks really were compiled


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU backend (inductor) needs a C++ compiler, and none is installed")
def test_wgan_gp_compiles_though_its_penalty_differentiates_twice(tmp_path):
    """The gradient penalty's second derivative cannot run through a compiled critic: --compile leaves the
    critic eager, and a compiled run trains."""
    wgan_gp = __import__("wgan_gp")
    assert run_inprocess(wgan_gp.main, ["--dataset", "fake", "--compile", "--max-steps", "5", "--log-every", "1",
                                        "--out", tmp_path / "run"]) == 0
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
