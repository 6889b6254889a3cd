"""Reliability as a user meets it: unwritable folders, SIGTERM and Ctrl-C, periodic checkpoints,
--generate and evaluate.py never replacing or writing beside a run, data errors leaving nothing
behind, folder datasets, no abbreviated flags, finished runs, what a bare --resume took, epochs
counted from 1 in losses.csv, and every default in --help. gan.py stands for the shared plumbing.

Each test checks the exit code, the one line a failure prints (no traceback) and what is on disk
before and after (names, sizes and mtimes)."""
import argparse
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import acgan
import cgan
import common
import dcgan
import evaluate
import gan
import wgan
import wgan_gp
from conftest import ROOT, load, losses, run_inprocess, write_idx_dataset, write_image_folder

sys.path.insert(0, str(ROOT / "benchmarks"))

SCRIPTS = {"gan": gan, "cgan": cgan, "acgan": acgan, "wgan": wgan, "wgan_gp": wgan_gp, "dcgan": dcgan}
FAKE = ["--dataset", "fake", "--log-every", "1"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def listing(folder):
    """Everything under folder: {relative path: (size, mtime_ns)} for files, {path/: None} for folders."""
    folder = Path(folder)
    if not folder.exists():
        return None
    found = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        found[name + "/" if path.is_dir() else name] = (
            None if path.is_dir() else (path.stat().st_size, path.stat().st_mtime_ns))
    return found


def one_line(stderr):
    """The single line a refused command printed on stderr (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def train(module, out, *flags):
    """A short run in-process (its messages do not matter here)."""
    assert run_inprocess(module.main, [*FAKE, "--out", out, *flags]) == 0
    return Path(out)


def writable(folder):
    probe = Path(folder) / ".write-probe"
    try:
        probe.touch(exist_ok=False)
    except OSError:
        return False
    probe.unlink()
    return True


@pytest.fixture
def make_unwritable():
    """make_unwritable(folder): nobody, root included, can create files in folder until the test ends.
    chattr +i where the filesystem supports it; chmod 0o555 only helps when not root; else skip."""
    undo = []

    def lock(folder):
        folder = Path(folder)
        result = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
        if result.returncode == 0:
            undo.append(lambda: subprocess.run(["chattr", "-i", str(folder)], check=True))
        elif os.geteuid() != 0:
            mode = folder.stat().st_mode
            folder.chmod(0o555)
            undo.append(lambda: folder.chmod(mode))
        if writable(folder):
            pytest.skip(f"cannot make {folder} unwritable here (chattr: {result.stderr.strip() or 'ok'}; "
                        f"uid {os.geteuid()})")
        return folder

    yield lock
    for step in reversed(undo):
        step()


def start(*args):
    """`python gan.py args...` as a user would start it, its output read line by line."""
    return subprocess.Popen([sys.executable, str(ROOT / "gan.py"), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def finish(process, seen, timeout=120):
    """Read the rest of a started process's output (killing it if it hangs): (code, stdout, stderr)."""
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    try:
        stdout = "".join(seen) + process.stdout.read()
        stderr = process.stderr.read()
        code = process.wait()
    finally:
        watchdog.cancel()
    return code, stdout, stderr


def interrupt(out, signum):
    """Start a long run on fake data, send signum once its first progress line is out."""
    process = start(*FAKE, "--epochs", "1000", "--out", out)
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if line.startswith("epoch"):
                break
        else:
            pytest.fail(f"no progress line: {''.join(seen)}{process.stderr.read()}")
        process.send_signal(signum)
        return finish(process, seen)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def help_text(module, capsys, monkeypatch, argv=()):
    """`<script> --help` in-process: (its text, the parser that made it)."""
    parsers = []
    original = argparse.ArgumentParser.parse_args

    def spy(self, *args, **kwargs):
        parsers.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", spy)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        (module.parse_args if hasattr(module, "parse_args") else module.main)([*argv, "--help"])
    assert exit.value.code == 0
    return capsys.readouterr().out, parsers[0]


def help_blocks(text):
    """--help's text cut into one block per option, keyed by each option string, whitespace collapsed."""
    blocks, current = {}, None
    for line in text.splitlines():
        match = re.match(r"^  (-\S+)", line)
        if match:
            current = []
            for flag in re.findall(r"(?:^|, )(--?[\w-]+)", line.strip().split("  ")[0]):
                blocks[flag] = current
        elif current is not None and not line.strip():
            current = None
        if current is not None:
            current.append(line.strip())
    return {flag: " ".join(lines) for flag, lines in blocks.items()}


# ---------------------------------------------------------------------------------------------
# 1. Unwritable places: one line naming the file, and nothing a user made is lost
# ---------------------------------------------------------------------------------------------
def test_out_inside_an_unwritable_folder(tmp_path, make_unwritable, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    make_unwritable(locked)
    before = listing(tmp_path)
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "1", "--out", locked / "run"]) == 2
    assert re.fullmatch(rf"\S+: error: {re.escape(str(locked / 'run'))}: [A-Z].+", one_line(capsys.readouterr().err))
    assert listing(tmp_path) == before


def test_resume_of_an_unwritable_run_stops_in_one_line_keeping_its_checkpoint(tmp_path, make_unwritable, capsys):
    run = train(gan, tmp_path / "run", "--max-steps", "2")
    make_unwritable(run)   # the files inside stay writable: losses.csv can still be appended to
    capsys.readouterr()
    assert run_inprocess(gan.main, ["--resume", run / "checkpoint.pt", "--max-steps", "4"]) == 2
    assert re.fullmatch(rf"\S+: error: {re.escape(str(run))}/\S+: [A-Z].+", one_line(capsys.readouterr().err))
    assert load(run / "checkpoint.pt")["step"] == 2 and not list(run.glob("*.tmp"))


def test_generate_into_an_unwritable_run_is_refused(tmp_path, make_unwritable, capsys):
    run = train(gan, tmp_path / "run", "--max-steps", "1")
    make_unwritable(run)
    before = listing(tmp_path)
    capsys.readouterr()
    assert run_inprocess(gan.main, ["--generate", "5", "--resume", run]) == 2
    assert re.fullmatch(rf"\S+: error: {re.escape(str(run / 'generated.npz'))}: [A-Z].+",
                        one_line(capsys.readouterr().err))
    assert listing(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# 2. SIGTERM and Ctrl-C stop at a step boundary with a checkpoint, and the run goes on from it
# ---------------------------------------------------------------------------------------------
def test_sigterm_saves_a_checkpoint_and_the_run_goes_on(tmp_path, capsys):
    """A real signal, to a real process (as a cluster's scheduler sends it); tests/test_machines.py and the
    test below send Ctrl-C's."""
    run, code = tmp_path / "run", 143
    returncode, stdout, stderr = interrupt(run, signal.SIGTERM)
    assert returncode == code, stdout + stderr
    assert "Traceback" not in stderr and stderr.strip() == "", stderr
    ckpt = run / "checkpoint.pt"
    stops = [m for m in (re.fullmatch(r"stopped at step (\d+); continue with: python gan\.py --resume "
                                      + re.escape(str(ckpt)), line) for line in stdout.splitlines()) if m]
    assert len(stops) == 1, stdout
    assert stdout.strip().splitlines()[-1] == stops[0][0]   # the last thing said
    n = int(stops[0][1])
    assert load(ckpt)["step"] == n >= 1
    assert losses(run)[-1]["step"] == n
    before = listing(run)

    capsys.readouterr()
    assert run_inprocess(gan.main, ["--resume", ckpt, "--max-steps", n + 2]) == 0
    printed = capsys.readouterr()
    assert load(ckpt)["step"] == n + 2
    progress = [line for line in printed.out.splitlines() if line.startswith("epoch")]
    assert [re.search(r"step (\d+)/(\d+)", line).groups() for line in progress] == [
        (str(n + 1), str(n + 2)), (str(n + 2), str(n + 2))]
    assert [row["step"] for row in losses(run)][-3:] == [n, n + 1, n + 2]
    assert before.keys() <= listing(run).keys()


@pytest.mark.parametrize("script", ["gan", "cgan", "acgan", "wgan", "wgan_gp", "dcgan", "cyclegan"])
def test_every_script_s_loop_stops_on_ctrl_c_after_the_step_and_goes_on_exactly(tmp_path, monkeypatch, capsys, script):
    """Ctrl-C during step 5: the step ends, the checkpoint is written, the command that continues is the last
    line and the exit code is 130; going on from it gives the weights an unbroken run has."""
    module = __import__(script)
    small = {"acgan": ["--width", "4"], "dcgan": ["--width", "4"], "cyclegan": ["--width", "4", "--blocks", "1"]}
    flags = [*FAKE, "--batch-size", "16", "--epochs", "1", *small.get(script, [])]
    step, calls = module.train_step, []

    def pressed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return step(*args, **kwargs)
    monkeypatch.setattr(module, "train_step", pressed)
    assert run_inprocess(module.main, [*flags, "--max-steps", "8", "--out", tmp_path / "parts"]) == 130
    ckpt = tmp_path / "parts" / "checkpoint.pt"
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"stopped at step 5; continue with: python {script}.py " \
                                                                f"--resume {ckpt}"
    monkeypatch.setattr(module, "train_step", step)
    assert run_inprocess(module.main, ["--resume", ckpt, "--max-steps", "8"]) == 0
    assert run_inprocess(module.main, [*flags, "--max-steps", "8", "--out", tmp_path / "whole"]) == 0
    parts, whole = load(ckpt), load(tmp_path / "whole" / "checkpoint.pt")
    assert parts["step"] == whole["step"] == 8
    assert all(torch.equal(tensor, parts["sampler"][name]) for name, tensor in whole["sampler"].items())


# ---------------------------------------------------------------------------------------------
# 3. --checkpoint-every MIN writes checkpoint.pt mid-epoch; a killed run resumes from it
# ---------------------------------------------------------------------------------------------
def test_periodic_checkpoint_survives_kill_9(tmp_path, capsys):
    run, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoint.pt"
    # fake data: 512 images, batch 8: 64 steps per epoch; the first epoch-end checkpoint is step 64
    process = start(*FAKE, "--epochs", "1000", "--batch-size", "8", "--checkpoint-every", "0.0001", "--out", run)
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if line.startswith("epoch") and ckpt.exists():
                break
        else:
            pytest.fail(f"ended without a checkpoint: {''.join(seen)}{process.stderr.read()}")
        process.send_signal(signal.SIGKILL)
        returncode, stdout, stderr = finish(process, seen)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert returncode == -signal.SIGKILL
    checkpoint = load(ckpt)
    k = checkpoint["step"]
    assert 0 < k < 64 and checkpoint["epoch"] == 0, k   # written mid-epoch, not at the epoch's end
    assert not (run / "epoch_001.png").exists()

    capsys.readouterr()
    assert run_inprocess(gan.main, ["--resume", ckpt, "--max-steps", k + 2]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"resuming {ckpt}: fake, step {k}, 0 of 1000 epochs complete"
    progress = [line for line in out if line.startswith("epoch")]
    assert [line.split("  ")[:2] for line in progress] == [
        ["epoch 1/1000", f"step {k + 1}/{k + 2}"], ["epoch 1/1000", f"step {k + 2}/{k + 2}"]]
    assert load(ckpt)["step"] == k + 2


def test_checkpoint_every_defaults_to_5_minutes_in_help(capsys, monkeypatch):
    text, _ = help_text(gan, capsys, monkeypatch)
    block = help_blocks(text)["--checkpoint-every"]
    assert "every MIN minutes" in block and block.endswith("(default: 5.0)"), block


# ---------------------------------------------------------------------------------------------
# 4. --generate never replaces earlier samples
# ---------------------------------------------------------------------------------------------
def test_a_second_generate_writes_beside_the_first(tmp_path, capsys):
    run = train(gan, tmp_path / "run", "--max-steps", "1")
    assert run_inprocess(gan.main, ["--generate", "5", "--resume", run]) == 0
    first = {name: (run / name).read_bytes() for name in ("generated.npz", "generated.png")}
    before = listing(run)
    capsys.readouterr()
    assert run_inprocess(gan.main, ["--generate", "6", "--resume", run]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"wrote 6 samples to {run / 'generated-2.npz'} and a grid to {run / 'generated-2.png'}"
    after = listing(run)
    assert set(after) - set(before) == {"generated-2.npz", "generated-2.png"}
    assert {name: after[name] for name in before} == before
    assert {name: (run / name).read_bytes() for name in first} == first
    with np.load(run / "generated.npz") as npz, np.load(run / "generated-2.npz") as npz2:
        assert npz["images"].shape[0] == 5 and npz2["images"].shape[0] == 6


def test_generate_after_a_label_keeps_the_labelled_samples(tmp_path, capsys):
    run = train(cgan, tmp_path / "run", "--max-steps", "1")
    assert run_inprocess(cgan.main, ["--generate", "20", "--label", "7", "--resume", run]) == 0
    sevens = (run / "generated.npz").read_bytes()
    before = listing(run)
    assert run_inprocess(cgan.main, ["--generate", "20", "--resume", run]) == 0
    after = listing(run)
    assert set(after) - set(before) == {"generated-2.npz", "generated-2.png"}
    assert {name: after[name] for name in before} == before
    assert (run / "generated.npz").read_bytes() == sevens
    with np.load(run / "generated.npz") as npz, np.load(run / "generated-2.npz") as npz2:
        assert (npz["labels"] == 7).all() and len(npz["labels"]) == 20
        assert list(npz2["labels"]) == [k % 10 for k in range(20)]


# ---------------------------------------------------------------------------------------------
# 5. evaluate.py never writes beside a run
# ---------------------------------------------------------------------------------------------
def test_evaluate_leaves_the_run_folder_as_it_was(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])   # never the network
    root = tmp_path / "data"
    write_idx_dataset(root / "MNIST", n_train=128, n_test=64)
    run = tmp_path / "runs" / "gan"
    assert run_inprocess(gan.main, ["--data-root", root, "--max-steps", "1", "--log-every", "1", "--out", run]) == 0
    before, outside = listing(run), listing(tmp_path / "runs")
    capsys.readouterr()
    code = run_inprocess(evaluate.main, [run, "--n", "20", "--dataset", "mnist", "--data-root", root,
                                         "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "Traceback" not in printed.err
    assert printed.out.splitlines()[0].startswith(f"{run / 'checkpoint.pt'}: gan.py, 20 generated images")
    assert listing(run) == before and listing(tmp_path / "runs") == outside
    assert (root / "evaluate_classifier_mnist.pt").is_file()   # its one file goes to the data root


# ---------------------------------------------------------------------------------------------
# 6. A data error leaves nothing behind (never touching the network)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def offline(monkeypatch):
    """No network: torchvision's MNIST mirrors point at a closed local port; errors are printed as gan.py's."""
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    monkeypatch.setattr(sys, "argv", ["gan.py"])


def load_mnist(root, out, capsys):
    capsys.readouterr()
    code = run_inprocess(gan.main, ["--data-root", root, "--max-steps", "1", "--out", out])
    return code, capsys.readouterr()


def test_missing_mnist_says_where_to_put_it(tmp_path, capsys, offline):
    for root in (tmp_path / "empty", tmp_path / "missing"):
        code, printed = load_mnist(root, tmp_path / "run", capsys)
        assert code == 2 and one_line(printed.err) == (   # torchvision's error: its type, not its words
            f"gan.py: error: could not load mnist ({one_line(printed.err).split('(')[1].split(')')[0]}); without a "
            f"network, put the four *-ubyte.gz files in {root / 'MNIST' / 'raw'}")
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damaged", ["train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"])
def test_a_damaged_file_says_where_the_files_go_and_stays(tmp_path, capsys, offline, damaged):
    """torchvision takes a damaged .gz for a missing one (and downloads it); a cut extracted file fails to parse."""
    root = tmp_path / "data"
    write_idx_dataset(root / "MNIST", compress=damaged.endswith(".gz"))
    path = root / "MNIST" / "raw" / damaged
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    cut = path.read_bytes()
    code, printed = load_mnist(root, tmp_path / "run", capsys)
    line = one_line(printed.err)
    assert code == 2 and line.startswith("gan.py: error: could not load mnist (") and line.endswith(
        f"without a network, put the four *-ubyte.gz files in {root / 'MNIST' / 'raw'}")
    assert path.read_bytes() == cut and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# 7. Folder datasets: what was found, and loose images refused
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, channels", [("L", 1), ("RGB", 3)])
def test_a_folder_dataset_says_what_was_found(tmp_path, capsys, mode, channels):
    root = write_image_folder(tmp_path / "pictures", classes=("cats", "dogs", "owls"), per_class=6, mode=mode)
    capsys.readouterr()
    out = tmp_path / "run"
    code = run_inprocess(gan.main, ["--dataset", "folder", "--data-root", root, "--batch-size", "8",
                                    "--max-steps", "1", "--out", out])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert printed.out.splitlines()[:2] == [f"run folder: {out}",
                                            f"data: folder, 18 images, 3 classes, {channels} channel(s), 28 px"]
    assert load(out / "checkpoint.pt")["class_names"] == ["cats", "dogs", "owls"]


def test_loose_images_beside_class_folders_are_refused(tmp_path, capsys):
    root = write_image_folder(tmp_path / "pictures", per_class=4, mode="L")
    (root / "stray.png").write_bytes((root / "cats" / "0.png").read_bytes())   # one image beside the classes
    before = listing(tmp_path)
    assert run_inprocess(gan.main, ["--dataset", "folder", "--data-root", root, "--batch-size", "4",
                                    "--max-steps", "1", "--out", tmp_path / "run"]) == 2
    line = one_line(capsys.readouterr().err)
    assert re.match(rf"\S+: error: {re.escape(str(root))} ", line) and "move those into a sub-folder" in line, line
    assert listing(tmp_path) == before   # no run folder, nothing else


# ---------------------------------------------------------------------------------------------
# 8. No abbreviated flags, in any parser
# ---------------------------------------------------------------------------------------------
ABBREVIATIONS = [(name, argv) for name in SCRIPTS for argv in (["--epoch", "3"], ["--batch", "8"], ["--max-step", "2"])]
ABBREVIATIONS += [(name, ["--label", "3"]) for name in ("gan", "wgan", "wgan_gp", "dcgan")]
ABBREVIATIONS += [(name, ["--gen", "3", "--lab", "3"]) for name in ("cgan", "acgan")]
ABBREVIATIONS += [("evaluate", ["somewhere", "--dev", "cpu"]), ("evaluate", ["somewhere", "--cur"])]


@pytest.mark.parametrize("name, argv", ABBREVIATIONS, ids=[f"{n}:{' '.join(a)}" for n, a in ABBREVIATIONS])
def test_abbreviated_flags_are_refused(name, argv, capsys):
    module = {**SCRIPTS, "evaluate": evaluate}[name]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        module.parse_args(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    prog = "evaluate.py" if name == "evaluate" else f"{name}.py"
    unrecognised = [a for a in argv if a != "somewhere"]
    assert err.strip().splitlines()[-1] == f"{prog}: error: unrecognized arguments: {' '.join(unrecognised)}"


# ---------------------------------------------------------------------------------------------
# 9. A finished run says so, and is left as it was
# ---------------------------------------------------------------------------------------------
def test_resuming_a_finished_run_says_nothing_is_left(tmp_path, capsys):
    run = train(gan, tmp_path / "run", "--epochs", "1")   # 512 fake images, batch 64: 8 steps
    ckpt = run / "checkpoint.pt"
    assert load(ckpt)["step"] == 8
    before = listing(tmp_path)
    capsys.readouterr()
    assert run_inprocess(gan.main, ["--resume", ckpt]) == 0
    printed = capsys.readouterr()
    assert printed.err.strip() == "", printed.err
    last = printed.out.strip().splitlines()[-1]
    assert last == f"nothing left to train at step 8: go on with python gan.py --resume {ckpt} --epochs 2 or " \
                   "more (past the default --epochs, the rate steps back up)", last
    assert listing(tmp_path) == before

    for k in (8, 5):
        capsys.readouterr()
        assert run_inprocess(gan.main, ["--resume", ckpt, "--max-steps", k]) == 0
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert last.startswith("nothing left to train at step 8: "), last
        assert listing(tmp_path) == before


def test_help_says_max_steps_counts_from_the_start(capsys, monkeypatch):
    text, _ = help_text(gan, capsys, monkeypatch)
    assert "counted from its start" in help_blocks(text)["--max-steps"]


# ---------------------------------------------------------------------------------------------
# 10. A bare --resume and --generate N say which checkpoint they took
# ---------------------------------------------------------------------------------------------
def test_bare_resume_and_generate_name_the_checkpoint_they_took(tmp_path, capsys):
    runs = tmp_path / "runs"
    older = train(gan, runs / "gan", "--max-steps", "16")        # epoch 2 of 50
    assert not (runs / "gan-2").exists()
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "8", "--out", runs / "gan"]) == 0   # -> gan-2, epoch 1
    newer = runs / "gan-2"
    assert load(newer / "checkpoint.pt")["step"] == 8
    os.utime(older / "checkpoint.pt", ns=(10**18, 10**18))   # 2001: surely the older one

    capsys.readouterr()
    assert run_inprocess(gan.main, ["--resume", "--out", runs / "gan", "--max-steps", "9"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (f"resuming {newer / 'checkpoint.pt'}: "
                                                       "fake, step 8, 1 of 50 epochs complete")
    assert load(newer / "checkpoint.pt")["step"] == 9 and load(older / "checkpoint.pt")["step"] == 16

    assert run_inprocess(gan.main, ["--generate", "3", "--out", runs / "gan"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"generating from {newer / 'checkpoint.pt'}: fake, step 9, 1 of 50 epochs complete"
    assert (newer / "generated.npz").is_file()

    os.utime(older / "checkpoint.pt")   # now the older run is the newest
    assert run_inprocess(gan.main, ["--generate", "3", "--out", runs / "gan"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (f"generating from {older / 'checkpoint.pt'}: "
                                                         "fake, step 16, 2 of 50 epochs complete")
    assert (older / "generated.npz").is_file()


# ---------------------------------------------------------------------------------------------
# 11. losses.csv numbers epochs from 1, as the progress lines do
# ---------------------------------------------------------------------------------------------
def test_losses_csv_numbers_epochs_from_1(tmp_path, capsys):
    capsys.readouterr()
    run = train(gan, tmp_path / "run", "--max-steps", "10")   # 8 steps per epoch
    progress = [re.match(r"epoch (\d+)/50  step (\d+)/10", line)
                for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    expected = [(s, 1 if s <= 8 else 2) for s in range(1, 11)]
    assert all(progress) and [(int(m[2]), int(m[1])) for m in progress] == expected
    assert [(int(row["step"]), int(row["epoch"])) for row in losses(run)] == expected


# ---------------------------------------------------------------------------------------------
# 12. Every flag's default is in --help
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, epochs, batch", [("gan", 50, 64), ("cgan", 50, 64), ("acgan", 50, 64),
                                                 ("wgan", 50, 64), ("wgan_gp", 50, 64), ("dcgan", 25, 64)])
def test_help_shows_every_default(name, epochs, batch, capsys, monkeypatch):
    text, parser = help_text(SCRIPTS[name], capsys, monkeypatch)
    blocks = help_blocks(text)
    assert blocks["--epochs"].endswith(f"(default: {epochs})"), blocks["--epochs"]
    assert blocks["--batch-size"].endswith(f"(default: {batch})"), blocks["--batch-size"]
    assert parser.get_default("epochs") == epochs and parser.get_default("batch_size") == batch
    check_every_default(parser, blocks)


def test_help_of_evaluate_shows_every_default(capsys, monkeypatch):
    text, parser = help_text(evaluate, capsys, monkeypatch, argv=["x"])
    check_every_default(parser, help_blocks(text))


def check_every_default(parser, blocks):
    checked = 0
    for action in parser._actions:
        if not action.option_strings or action.default in (None, argparse.SUPPRESS) or action.nargs == 0:
            continue   # positionals, flags without a default, switches (store_true) and --help
        block = blocks[action.option_strings[-1]]
        shown = " ".join(map(str, action.default)) if isinstance(action.default, list) else str(action.default)
        assert "default" in block and (str(action.default) in block or shown in block), (action.option_strings, block)
        checked += 1
    assert checked >= 3


# ---------------------------------------------------------------------------------------------
# 13. No surprises for a new user (issue 22): a run's folder is its own, sizes and seeds the
#     machine cannot take are one line, and the small things a first run shows
# ---------------------------------------------------------------------------------------------
def test_two_runs_started_with_one_out_take_two_folders(tmp_path):
    # The race: the second run starts while the first has claimed its folder but written nothing yet.
    with common.claim_folder(tmp_path / "run") as first, common.claim_folder(tmp_path / "run") as second:
        assert first == tmp_path / "run" and second == tmp_path / "run-2"


def test_an_empty_folder_the_user_made_is_the_run_s(tmp_path):
    (tmp_path / "mine").mkdir()
    with common.claim_folder(tmp_path / "mine") as folder:
        assert folder == tmp_path / "mine"
        (folder / "losses.csv").write_text("step\n")   # it wrote something, and its lock went with it
    with common.claim_folder(tmp_path / "mine") as folder:
        assert folder == tmp_path / "mine-2"   # now it is taken


def test_out_naming_a_file_takes_the_next_free_name(tmp_path, capsys):
    (tmp_path / "README.md").write_text("mine")
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "1", "--out", tmp_path / "README.md"]) == 0
    assert (tmp_path / "README.md").read_text() == "mine" and (tmp_path / "README.md-2" / "checkpoint.pt").is_file()


def test_an_immutable_empty_out_is_refused_before_any_step(tmp_path, make_unwritable, capsys):
    (tmp_path / "frozen").mkdir()
    frozen = make_unwritable(tmp_path / "frozen")
    before = listing(tmp_path)
    assert run_inprocess(gan.main, [*FAKE, "--max-steps", "1", "--out", frozen]) == 2
    printed = capsys.readouterr()
    assert re.fullmatch(rf"\S+: error: {re.escape(str(frozen / 'lock'))}: [A-Z].+", one_line(printed.err))
    assert not any(line.startswith("epoch") for line in printed.out.splitlines()), printed.out
    assert listing(tmp_path) == before


@pytest.mark.parametrize("module, flags", [(gan, ["--latent-dim", "100000000"]), (dcgan, ["--width", "1000000"]),
                                           (gan, ["--img-size", "100000"])])
def test_sizes_too_large_for_the_machine_are_one_line(module, flags, tmp_path, capsys):
    # Each asks for 25 GB to 20 TB at once: the allocator refuses at once, nothing is touched.
    assert run_inprocess(module.main, [*FAKE, *flags, "--max-steps", "1", "--out", tmp_path / "run"]) == 2
    line = one_line(capsys.readouterr().err)
    assert re.fullmatch(r"\S+: error: not enough memory: make --batch-size, --img-size, --latent-dim, --generate N, and "
                        r"--width or --blocks where the script has them smaller", line), line
    assert not (tmp_path / "run").exists()   # refused while building, before a run folder was claimed


def test_out_of_memory_mid_run_is_one_line_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    step = gan.train_step

    def step_then_fail(*args, **kwargs):   # CUDA's error, on step 11 (an epoch is 8 steps)
        calls.append(1)
        if len(calls) == 11:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return step(*args, **kwargs)
    calls = []
    monkeypatch.setattr(gan, "train_step", step_then_fail)
    out = tmp_path / "run"
    assert run_inprocess(gan.main, [*FAKE, "--out", out]) == 2
    line = one_line(capsys.readouterr().err)
    assert ": error: not enough memory: make --batch-size" in line, line
    assert load(out / "checkpoint.pt")["step"] == 8


@pytest.mark.parametrize("module", [gan, evaluate])
@pytest.mark.parametrize("seed", ["99999999999999999999999", "-1"])
def test_a_seed_out_of_range_is_refused_by_the_flag(module, seed, capsys):
    argv = ["somewhere"] if module is evaluate else FAKE
    with pytest.raises(SystemExit) as exit:
        module.parse_args([*argv, "--seed", seed])
    assert exit.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"argument --seed: {seed!r} is not a whole number from 0 to 4294967295")


def test_a_run_stopped_by_max_steps_says_its_step_not_epoch_0(tmp_path, capsys):
    run = train(gan, tmp_path / "run", "--max-steps", "1", "--epochs", "1")
    capsys.readouterr()
    assert run_inprocess(gan.main, ["--generate", "2", "--resume", run]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (f"generating from {run / 'checkpoint.pt'}: fake, "
                                                       "step 1, 0 of 1 epochs complete")


def test_one_class_is_not_1_classes(tmp_path, capsys):
    root = tmp_path / "pictures"
    write_image_folder(root, classes=("only",), per_class=8, mode="L")
    for picture in (root / "only").iterdir():   # loose images: one class, named after the folder
        picture.rename(root / picture.name)
    assert run_inprocess(gan.main, ["--dataset", "folder", "--data-root", root, "--batch-size", "8",
                                    "--max-steps", "1", "--out", tmp_path / "run"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "data: folder, 8 images, 1 class, 1 channel(s), 28 px"


def test_the_venv_the_readme_makes_is_ignored_by_git():
    result = subprocess.run(["git", "check-ignore", "-q", ".venv/bin/python"], cwd=ROOT)
    assert result.returncode == 0, ".venv/ is not in .gitignore"
