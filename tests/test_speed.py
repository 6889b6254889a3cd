"""benchmarks/speed.py runs end to end (scripts, model limit, conventional DataLoader, unfused Adam)
on a tiny MNIST written by the test, and prints a table with every measurement in it."""
import re
import sys

from conftest import ROOT, run_inprocess

sys.path.insert(0, str(ROOT / "benchmarks"))
import speed  # noqa: E402

ROW = re.compile(r"^(\w+)\s+(\d+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)x\s+([\d.]+)x\s+([\d.]+)x")


def test_benchmark_prints_every_measurement(mnist_root, capsys):
    code = run_inprocess(speed.main, ["--device", "cpu", "--scripts", "gan", "wgan_gp", "--data-root", mnist_root,
                                      "--steps", "4", "--warmup", "2", "--chunk", "2", "--threads", "1",
                                      "--unfused"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = [ROW.match(line) for line in out.splitlines()]
    rows = [r for r in rows if r]
    assert [r[1] for r in rows] == ["gan", "wgan_gp"] * 2   # best-chunk table, then median-chunk table
    for r in rows:
        script, limit, conventional, unfused = (float(r[i].replace(",", "")) for i in (3, 4, 5, 6))
        assert min(script, limit, conventional, unfused) > 0
        assert abs(float(r[7]) - script / limit) < 0.01 and abs(float(r[9]) - limit / unfused) < 0.01
    # each script's own progress lines were read: two timed chunks of 2 steps after the warm-up
    assert re.search(r"^round 1/1 gan, .*; script [\d,]+ [\d,]+; unfused [\d,]+ [\d,]+$", err, re.M)


def test_warmup_must_be_whole_chunks(mnist_root, capsys):
    code = run_inprocess(speed.main, ["--device", "cpu", "--scripts", "gan", "--data-root", mnist_root,
                                      "--steps", "4", "--warmup", "3", "--chunk", "2"])
    assert code == 2
    assert "--warmup must be a multiple of --chunk" in capsys.readouterr().err


def test_before_and_after_in_the_same_rounds(mnist_root, capsys):
    """--baseline DIR times another checkout's scripts beside these, round by round (here: this one)."""
    code = run_inprocess(speed.main, ["--device", "cpu", "--scripts", "gan", "--data-root", mnist_root, "--steps", "4",
                                      "--warmup", "2", "--chunk", "2", "--threads", "1", "--baseline", ROOT,
                                      "--scripts-only"])
    out, err = capsys.readouterr()
    assert code == 0, err
    row = re.search(r"^gan\s+64\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)x$", out, re.M)   # script, before, script/before
    script, before = (float(row[i].replace(",", "")) for i in (1, 2))
    assert abs(float(row[3]) - script / before) < 0.01


def test_amp_times_each_script_again_with_bfloat16_autocast(mnist_root, capsys):
    code = run_inprocess(speed.main, ["--device", "cpu", "--scripts", "gan", "--data-root", mnist_root, "--steps", "4",
                                      "--warmup", "2", "--chunk", "2", "--threads", "1", "--amp", "--scripts-only"])
    out, err = capsys.readouterr()
    assert code == 0, err
    row = re.search(r"^gan\s+64\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)x$", out, re.M)   # script, amp, amp/script
    script, amp = (float(row[i].replace(",", "")) for i in (1, 2))
    assert abs(float(row[3]) - amp / script) < 0.01
    assert re.search(r"^round 1/1 gan, .*: script [\d,]+ [\d,]+; amp [\d,]+ [\d,]+$", err, re.M)
