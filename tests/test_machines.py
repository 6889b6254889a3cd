"""Right on every machine and after every mistake: the CUDA path as far as a CPU can check it, nothing
Linux-only on a command's path, and the mistakes a new user made (a bare --resume, two processes on one
run, a batch of 1, a second Ctrl-C, Ctrl-C before the first step)."""
import ctypes
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import acgan
import common
import cyclegan
import gan
from conftest import ROOT, load, run_inprocess, write_idx_dataset, write_image_folder

FAKE = ["--dataset", "fake", "--log-every", "1"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def start(*args):
    return subprocess.Popen([sys.executable, str(ROOT / "gan.py"), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for(process, prefix):
    """Read the process's output until a line starts with prefix; returns the lines read."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    pytest.fail(f"no line starting {prefix!r}: {''.join(seen)}{process.stderr.read()}")


# ---------------------------------------------------------------------------------------------
# The CUDA path, read on a CPU
# ---------------------------------------------------------------------------------------------
def test_cudnn_times_its_kernels_and_linear_layers_may_use_tf32():
    """1: every run sets both (on a CPU they change nothing); only a GPU could time them."""
    torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = False, False
    common.pick_device("cpu")
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32


def test_amp_on_a_gpu_without_bfloat16_is_one_line(monkeypatch):
    """2: a GPU before Ampere would emulate bfloat16, slowly: refused when the device is picked, naming the GPU."""
    empty = torch.empty

    class OnGpu:   # what torch.empty gives on a GPU, as far as pick_device looks
        is_cuda, device = True, torch.device("cuda", 0)
    monkeypatch.setattr(torch, "empty", lambda *args, device: OnGpu() if str(device).startswith("cuda") else empty(
        *args, device=device))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(common.UserError, match=r"--amp: Tesla T4: no bfloat16 \(GPUs have it from Ampere on\)"):
        common.pick_device("cuda", amp=True)
    assert common.pick_device("cuda") == torch.device("cuda", 0)   # without --amp nothing is asked
    assert common.pick_device("cpu", amp=True) == torch.device("cpu")   # a CPU emulates it where it lacks it


def test_compile_offers_only_the_mode_that_has_run(capsys):
    """3: CUDA graphs (reduce-overhead, max-autotune) never ran here: not offered."""
    with pytest.raises(SystemExit) as exit:
        gan.parse_args(["--compile", "reduce-overhead"])
    assert exit.value.code == 2 and "unrecognized arguments: reduce-overhead" in capsys.readouterr().err


RESIZE = """
import resource, sys, argparse, torch
sys.path.insert(0, sys.argv[1])
import common
flags = argparse.Namespace(dataset="mnist", data_root=sys.argv[2], img_size=128, batch_size=64, seed=0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = common.load_data(flags, torch.device("cpu"))
print(data.images.shape[0], data.images.nbytes // 2**20, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_resizing_a_dataset_takes_little_more_memory_than_its_result(tmp_path):
    """5: 2,000 MNIST-sized images to 128 px: 31 MB of uint8. In float32 at once the copy alone would take
    125 MB and interpolate's result 125 more; a chunk at a time the peak stays near the result."""
    write_idx_dataset(tmp_path / "data" / "MNIST", n_train=2000, n_test=16)
    result = subprocess.run([sys.executable, "-c", RESIZE, str(ROOT), str(tmp_path / "data")], capture_output=True,
                            text=True, env=ENV)
    assert result.returncode == 0, result.stderr
    images, result_mb, peak_mb = map(int, result.stdout.split())
    print(f"resized {images} images: {result_mb} MB of uint8, peak memory grew by {peak_mb} MB")
    assert images == 2000 and result_mb == 31 and peak_mb < result_mb + 100


def test_help_says_where_the_same_seed_gives_the_same_numbers(capsys):
    """6: on CUDA atomics and cuDNN's choice of kernels differ from run to run."""
    with pytest.raises(SystemExit):
        gan.parse_args(["--help"])
    assert "the same seed gives the same numbers on the same CPU (not on CUDA)" in " ".join(capsys.readouterr().out.split())


def test_a_long_eta_counts_days(tmp_path, capsys):
    """7: three days and more are not 05:12 (hours:minutes)."""
    args = gan.parse_args([])[0]
    common.log(tmp_path, {"loss": 1.0}, 1, 0, args, 1 + int((3 * 86400 + 5 * 3600 + 12 * 60) * 100 / 64), 100.0)
    assert capsys.readouterr().out.rstrip().endswith("100 img/s  77:12 left")
    common.log(tmp_path, {"loss": 1.0}, 1, 0, args, 1 + int(119.6 * 60 * 100 / 64), 100.0)   # not 1:60
    assert capsys.readouterr().out.rstrip().endswith("100 img/s  2:00 left")


# ---------------------------------------------------------------------------------------------
# Nothing Linux-only
# ---------------------------------------------------------------------------------------------
def test_a_run_needs_nothing_linux_only(tmp_path, monkeypatch):
    """8: posix_fallocate, sched_getaffinity and glibc (mallopt through ctypes) are Linux's alone: a folder
    decoded and cached, a training step, a checkpoint and an exact resume run without them."""
    for name in ("posix_fallocate", "sched_getaffinity"):
        monkeypatch.delattr(os, name, raising=False)
    monkeypatch.setattr(ctypes, "CDLL", None)
    root = write_image_folder(tmp_path / "pets", per_class=8, size=28, mode="L")
    flags = ["--dataset", "folder", "--data-root", root, "--batch-size", "4", "--epochs", "2"]
    assert run_inprocess(gan.main, [*flags, "--out", tmp_path / "whole"]) == 0
    assert run_inprocess(gan.main, [*flags, "--max-steps", "3", "--out", tmp_path / "parts"]) == 0
    assert run_inprocess(gan.main, ["--resume", tmp_path / "parts"]) == 0
    whole, parts = load(tmp_path / "whole" / "checkpoint.pt"), load(tmp_path / "parts" / "checkpoint.pt")
    assert whole["step"] == parts["step"] == 8
    assert all(torch.equal(tensor, parts["generator"][name]) for name, tensor in whole["generator"].items())


# ---------------------------------------------------------------------------------------------
# A new user's mistakes
# ---------------------------------------------------------------------------------------------
def test_a_bare_resume_takes_the_run_trained_last_or_says_why_it_cannot(tmp_path, capsys):
    """9: the run trained last has no checkpoint yet: one line names it, and no older run is taken."""
    runs = tmp_path / "runs"
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "2", "--out", runs / "gan"]) == 0
    (runs / "gan-2").mkdir()   # the newer run, killed before its first checkpoint
    (runs / "gan-2" / "losses.csv").write_text("step,epoch\n")
    capsys.readouterr()
    assert run_inprocess(gan.main, ["--resume", "--out", runs / "gan"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.endswith(f"{runs / 'gan-2'}, the gan run trained last, has no checkpoint (it stopped in its first "
                         "epoch), so it cannot go on: start it again, or continue another run with --resume FOLDER")
    assert load(runs / "gan" / "checkpoint.pt")["step"] == 2
    # --resume FOLDER goes on; its first lines say which run, on what data, from which step
    assert run_inprocess(gan.main, ["--resume", runs / "gan", "--max-steps", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == [
        f"resuming {runs / 'gan' / 'checkpoint.pt'}: fake, step 2, 0 of 50 epochs complete",
        f"run folder: {runs / 'gan'}", "data: fake, 512 images, 10 classes, 1 channel(s), 28 px"]
    assert run_inprocess(gan.main, ["--resume", runs / "gan", "--dataset", "mnist"]) == 2   # the data may not change
    assert "--dataset cannot change when resuming" in capsys.readouterr().err


def test_a_second_process_on_a_training_run_is_refused_and_a_killed_one_leaves_no_lock(tmp_path, capsys):
    """10: one line saying another process trains the run; after kill -9 the run can go on."""
    out = tmp_path / "run"
    first = start(*FAKE, "--epochs", "1000", "--checkpoint-every", "0.001", "--out", out)
    try:
        wait_for(first, "epoch")
        while not (out / "checkpoint.pt").exists():
            time.sleep(0.05)
        assert run_inprocess(gan.main, ["--resume", out, "--max-steps", "100000"]) == 2
        assert capsys.readouterr().err.strip().endswith(
            f": error: {out} is being trained by another process: let it finish, or stop it")
        first.kill()   # kill -9: no handler runs
        first.wait()
    finally:
        first.kill()
    step = load(out / "checkpoint.pt")["step"]
    assert run_inprocess(gan.main, ["--resume", out, "--max-steps", step + 1]) == 0
    assert load(out / "checkpoint.pt")["step"] == step + 1


@pytest.mark.parametrize("module", [gan, acgan])
def test_a_batch_of_one_is_refused_before_any_folder_is_made(module, tmp_path, capsys):
    """11: BatchNorm cannot take statistics from one image."""
    with pytest.raises(SystemExit) as exit:
        module.parse_args([*FAKE, "--batch-size", "1", "--out", str(tmp_path / "run")])
    assert exit.value.code == 2 and not (tmp_path / "run").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "argument --batch-size: '1' is not 2 or more (BatchNorm takes its statistics from the batch)")
    assert cyclegan.parse_args(["--batch-size", "1"])[0].batch_size == 1   # the paper's batch: InstanceNorm


def test_a_second_ctrl_c_stops_at_once_in_one_line_keeping_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    """12: the first Ctrl-C asks for a stop after the step; a second, in the same step, stops at once. And a
    second Ctrl-C while a checkpoint is written leaves the last one whole and no .tmp beside it."""
    out, step, save = tmp_path / "run", gan.train_step, torch.save

    def pressed_twice(*args, **kwargs):
        if len(calls) == 4:   # the fifth step: a checkpoint from every step before it is on disk
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        calls.append(1)
        return step(*args, **kwargs)
    calls = []
    monkeypatch.setattr(gan, "train_step", pressed_twice)
    assert run_inprocess(gan.main, [*FAKE, "--checkpoint-every", "0.00001", "--out", out]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(": interrupted; the last checkpoint, if any, is kept")
    assert load(out / "checkpoint.pt")["step"] == 4 and not list(out.glob("*.tmp"))

    def interrupted_save(obj, f):   # Ctrl-C twice while the checkpoint of step 6 is written
        if obj.get("step") == 6:
            f.write(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return save(obj, f)
    monkeypatch.setattr(gan, "train_step", step)
    monkeypatch.setattr(torch, "save", interrupted_save)
    assert run_inprocess(gan.main, ["--resume", out, "--checkpoint-every", "0.00001"]) == 130
    assert load(out / "checkpoint.pt")["step"] == 5 and not list(out.glob("*.tmp"))


def test_ctrl_c_while_decoding_a_folder_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """12: before the first step: exit 130, one line, no run folder, no cache."""
    root = write_image_folder(tmp_path / "pets", per_class=100, size=20)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    decode, count = common.decode, []

    def pressed(path, size):
        count.append(1)
        if len(count) == 50:
            raise KeyboardInterrupt   # what Python's handler raises on Ctrl-C before a run's own handler is set
        return decode(path, size)
    monkeypatch.setattr(common, "decode", pressed)
    assert run_inprocess(gan.main, ["--dataset", "folder", "--data-root", root, "--out", tmp_path / "run"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(": interrupted; the last checkpoint, if any, is kept")
    assert not (tmp_path / "run").exists() and not list((tmp_path / "cache").rglob("*.*"))


def test_the_first_lines_and_the_last_of_a_new_user_s_runs(tmp_path, capsys):
    """14: cyclegan's --help lists only its flags; one sample is not "1 samples"; a folder dataset needs its
    folder; train_step gives values, not graphs."""
    with pytest.raises(SystemExit):
        cyclegan.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--latent-dim" not in text and "--ema" not in text and "--augment" in text
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "1", "--out", tmp_path / "run"]) == 0
    capsys.readouterr()
    assert run_inprocess(gan.main, ["--generate", "1", "--resume", tmp_path / "run"]) == 0
    assert re.match(r"wrote 1 sample to \S+generated\.npz", capsys.readouterr().out.splitlines()[-1])
    assert run_inprocess(gan.main, ["--dataset", "folder", "--out", tmp_path / "run2"]) == 2
    assert "--dataset folder: give --data-root DIR, the folder of your images" in capsys.readouterr().err
    args = gan.parse_args(FAKE)[0]
    data = common.load_data(args, torch.device("cpu"))
    nets = gan.build(args, data.shape, data.n_classes, torch.device("cpu"))
    logged = gan.train_step(next(data.batches(64, 0, 0))[0], *nets)
    assert all(not value.requires_grad and value.grad_fn is None for value in logged.values())


def test_a_resumed_run_logs_each_step_once_and_the_run_trained_last_is_by_its_own_files(tmp_path, capsys):
    """A killed run may have logged past its last checkpoint: resumed, losses.csv goes on from the checkpoint's
    step. And --generate writes into a run's folder without making it the run trained last."""
    runs = tmp_path / "runs"
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "3", "--out", runs / "gan"]) == 0
    with open(runs / "gan" / "losses.csv", "a") as f:   # as if killed after logging steps 4 and 5
        f.write("4,1,1,1,1,1\n5,1,1,1,1,1\n")
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "2", "--out", runs / "gan"]) == 0   # gan-2, trained last
    assert run_inprocess(gan.main, ["--generate", "2", "--resume", runs / "gan"]) == 0
    capsys.readouterr()
    assert run_inprocess(gan.main, ["--resume", "--out", runs / "gan", "--max-steps", "3"]) == 0
    assert capsys.readouterr().out.startswith(f"resuming {runs / 'gan-2' / 'checkpoint.pt'}")
    assert run_inprocess(gan.main, ["--resume", runs / "gan", "--max-steps", "6"]) == 0
    steps = [int(row.split(",")[0]) for row in (runs / "gan" / "losses.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_file_system_without_locks_trains_unlocked(tmp_path, monkeypatch, capsys):
    """Network and FUSE mounts (Colab's Google Drive) may have no locks: the run trains, unlocked."""
    def no_locks(file, operation):
        raise OSError(37, "No locks available")
    monkeypatch.setattr(common.fcntl, "flock", no_locks)
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "1", "--out", tmp_path / "run"]) == 0
    assert capsys.readouterr().err == "" and load(tmp_path / "run" / "checkpoint.pt")["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# ---------------------------------------------------------------------------------------------
# A second newcomer's review
# ---------------------------------------------------------------------------------------------
def test_a_copied_checkpoint_never_replaces_its_folder_s_run(tmp_path, capsys):
    """Resumed from a copy beside the run's own checkpoint.pt, the copy would overwrite it and cut losses.csv
    back: only a file named checkpoint.pt resumes (a snapshot neither). One line; nothing changed."""
    out = tmp_path / "run"
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "2", "--out", out]) == 0
    (out / "backup.pt").write_bytes((out / "checkpoint.pt").read_bytes())
    assert run_inprocess(gan.main, ["--resume", out, "--max-steps", "4"]) == 0
    before = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "losses.csv")}
    capsys.readouterr()
    assert run_inprocess(gan.main, ["--resume", out / "backup.pt", "--max-steps", "3"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"error: {out / 'backup.pt'} cannot be resumed, a run's "
                                                    "checkpoint.pt can (a snapshot is for --generate N; a copied "
                                                    "checkpoint goes into a new folder, as checkpoint.pt)")
    assert before == {name: (out / name).read_bytes() for name in ("checkpoint.pt", "losses.csv")}
    fresh = tmp_path / "copy"   # in a folder of its own, as checkpoint.pt, the copy goes on
    fresh.mkdir()
    (fresh / "checkpoint.pt").write_bytes((out / "backup.pt").read_bytes())
    assert run_inprocess(gan.main, ["--resume", fresh, "--max-steps", "3"]) == 0
    assert load(fresh / "checkpoint.pt")["step"] == 3


def test_an_edited_losses_csv_does_not_stop_a_resume(tmp_path):
    """A blank line (an editor's) or a line of text: kept out, the rows up to the checkpoint kept."""
    out = tmp_path / "run"
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "2", "--out", out]) == 0
    with open(out / "losses.csv", "a") as f:
        f.write("\nnotes,mine\n")
    assert run_inprocess(gan.main, ["--resume", out, "--max-steps", "3"]) == 0
    assert [row.split(",")[0] for row in (out / "losses.csv").read_text().splitlines()] == ["step", "1", "2", "3"]


def test_what_finder_and_explorer_leave_does_not_make_a_folder_taken_or_a_class(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / ".DS_Store").write_bytes(b"\0")
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "1", "--out", tmp_path / "mine"]) == 0
    assert (tmp_path / "mine" / "checkpoint.pt").is_file() and not (tmp_path / "mine-2").exists()
    root = write_image_folder(tmp_path / "cats", classes=("cats",), per_class=4)
    (root / ".ipynb_checkpoints").mkdir()   # a hidden folder beside the class folder is not a second class
    (root / ".ipynb_checkpoints" / "0-checkpoint.png").write_bytes((root / "cats" / "0.png").read_bytes())
    images, labels, classes = common.folder_images(root, 16)
    assert classes == ["cats"] and len(images) == 4


@pytest.mark.parametrize("flag", ["--latent-dim", "--img-size", "--generate"])
def test_a_size_too_large_for_torch_is_refused_by_the_parser(flag, capsys):
    with pytest.raises(SystemExit) as exit:
        gan.parse_args([*FAKE, flag, str(2**31)])
    assert exit.value.code == 2 and "is not a positive integer below 2**31" in capsys.readouterr().err
