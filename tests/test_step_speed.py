"""The training step wastes no work and never waits for the device: no value is read back to the host
in a step (CPU: counted by operation; CUDA: torch's sync debug mode), each script dispatches fewer
operations than before the step was trimmed, --compile gives the eager step's losses, and a step reuses the
memory the last one freed."""
import copy
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_inprocess, step_settings

sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402
import gan  # noqa: E402
import imagedata  # noqa: E402
import ops  # noqa: E402

# Operations per step at each script's defaults before the step was trimmed (AveragedModel, a D pass
# per batch, D's weight gradients in G's update, spectral norm iterating on every pass): a count at
# or above these means wasted work came back. The counts now are printed by every test below.
BEFORE = {"gan": 335, "cgan": 438, "acgan": 891, "wgan": 341, "wgan_gp": 273, "dcgan": 586, "cyclegan": 1634}
VARIANTS = [(script, ()) for script in ops.SCRIPTS] + [
    ("gan", ("--label-smoothing", "0.2", "--label-exchange", "0.5")),
    ("acgan", ("--no-spectral-norm", "--label-exchange", "0.5", "--fake-class-loss", "--d-dropout", "0.3")),
    ("dcgan", ("--no-spectral-norm",)),
    ("wgan", ("--critic-boost", "3", "--label-exchange", "0.5")),
    ("cyclegan", ("--label-smoothing", "0.1", "--pool-size", "4")),
    ("gan", ("--amp",)), ("acgan", ("--amp",)), ("wgan_gp", ("--amp",)), ("cyclegan", ("--amp",)),
]


@pytest.mark.parametrize("script, flags", VARIANTS, ids=[" ".join((s, *f)) for s, f in VARIANTS])
def test_a_training_step_reads_nothing_back_from_the_device(script, flags):
    total, reads, counted = ops.ops_per_step(script, flags)
    print(f"{script} {' '.join(flags)}: {total:.0f} operations per step (before: {BEFORE[script]})")
    assert total > 50   # the counter saw the step's forward and backward passes
    assert reads == 0, f"{script} reads {reads} values per step back to the host: {dict(counted)}"
    if not flags:
        assert total < 0.85 * BEFORE[script], f"{script}: {total:.0f} operations per step, {BEFORE[script]} before"


def test_the_counter_sees_a_host_read(monkeypatch):
    """The check above can fail: a step that logs a float (.item()) is caught."""
    step = gan.train_step

    def reads_a_loss(*args, **kwargs):
        logged = step(*args, **kwargs)
        logged["loss_d"].item()
        return logged
    monkeypatch.setattr(gan, "train_step", reads_a_loss)
    assert ops.ops_per_step("gan")[1] == 1


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device here: torch.cuda.set_sync_debug_mode only watches a GPU's stream; the "
                           "CPU test above counts the operations that read back to the host instead")
@pytest.mark.parametrize("script, flags", [(script, ()) for script in ops.SCRIPTS] + [("acgan", ("--amp",)),
                                                                                   ("gan", ("--amp",))])
def test_cuda_steps_never_synchronise(script, flags):
    ops.ops_per_step(script, flags, device="cuda", sync_debug=True)   # raises on the first synchronising call


def test_every_script_has_compile():
    for script in ops.SCRIPTS:
        module = __import__(script)
        assert module.parse_args(["--compile"])[0].compile == "default"
        assert module.parse_args([])[0].compile is None   # off by default


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU backend (inductor) needs a C++ compiler, and none is installed")
def test_a_compiled_step_gives_the_eager_losses():
    """gan's train_step on compiled networks and on eager copies with the same weights and random numbers:
    the same losses, step after step, within float tolerance (about a minute of compiling)."""
    args = gan.parse_args(["--dataset", "fake", "--label-smoothing", "0.1"])[0]
    data = imagedata.load_data(args, torch.device("cpu"))
    torch.manual_seed(0)
    eager = gan.build(args, data.shape, data.n_classes, torch.device("cpu"))
    compiled = copy.deepcopy(eager)
    compiled[2].load_state_dict(eager[2].state_dict())
    compiled[3].load_state_dict(eager[3].state_dict())
    args.compile = "default"
    gan_compile = __import__("common").compile_networks
    gan_compile(args, torch.device("cpu"), compiled[0], compiled[1])
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


FAULTS_PER_STEP = """
import resource, statistics, sys, torch
sys.path.insert(0, sys.argv[1])
import common, dcgan
torch.set_num_threads(1)
if sys.argv[2] == "keep":
    common.keep_freed_memory()
args = dcgan.parse_args(["--out", "unused"])[0]
networks = dcgan.build(args, (1, 32, 32), 10, torch.device("cpu"))
real_images = torch.rand(args.batch_size, 1, 32, 32) * 2 - 1
faults = []
for step in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    dcgan.train_step(real_images, *networks)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults[3:]))   # the heap may still grow in the first steps
"""


THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="keep_freed_memory sets glibc's malloc only")
@pytest.mark.skipif(THP.is_file() and "[always]" in THP.read_text(),
                    reason="transparent huge pages are always on here: 2 MB pages hide the faults this test counts")
def test_a_step_reuses_the_memory_the_last_step_freed():
    """dcgan's step at its defaults (batch 128, 32x32) allocates activations of up to 8 MB. With glibc's
    defaults they are unmapped when freed and faulted in again on the next step; with
    common.keep_freed_memory() (which Run calls) the next step finds them in the process."""
    runs = {how: subprocess.run([sys.executable, "-c", FAULTS_PER_STEP, str(ROOT), how], capture_output=True,
                                text=True) for how in ("default", "keep")}
    assert all(run.returncode == 0 for run in runs.values()), [run.stderr for run in runs.values()]
    faults = {how: float(run.stdout) for how, run in runs.items()}
    print(f"page faults per dcgan step: {faults}")
    assert faults["keep"] < 100 and faults["default"] > 10 * max(faults["keep"], 1)


def test_every_training_run_keeps_freed_memory(monkeypatch, tmp_path):
    """The setting reaches users because common.Run applies it: a script's training calls it."""
    calls = []
    monkeypatch.setattr(common, "keep_freed_memory", lambda: calls.append(1))
    assert run_inprocess(gan.main, ["--dataset", "fake", "--max-steps", "1", "--out", tmp_path / "run"]) == 0
    assert calls == [1]
