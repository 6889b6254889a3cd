"""benchmarks/before_after.py: it reads only whole progress lines, compares two checkouts end to end
(here this checkout with itself, on a tiny MNIST written by the test), and says so in one line when
a run logs too few lines to measure."""
import re
import sys

from conftest import ROOT, run_inprocess

sys.path.insert(0, str(ROOT / "benchmarks"))
import before_after  # noqa: E402

PROGRESS = """data: mnist, 256 images
epoch 1/1  step 2/5  loss_d 1.2000  loss_g 0.9000  1,234 img/s  00:00:01 left
epoch 1/1  step 4/5  loss_d 1.1000  loss_g 0.9500  2,000 img/s  00:00:00 left
epoch 1/1  step 5/5  loss_d 1.1500  loss_g 0.9200  900 img/s  00:00:00 left
"""


def test_only_lines_over_the_whole_interval_count():
    assert before_after.whole_lines(PROGRESS, 2) == [1234.0, 2000.0]   # the last line covers 1 step
    assert before_after.whole_lines(PROGRESS, 4) == []


def test_a_checkout_against_itself_from_its_progress_lines(mnist_root, capsys):
    code = run_inprocess(before_after.main, [ROOT, "--scripts", "gan", "--rounds", "1", "--chunks",
                                             "--max-steps", "8", "--log-every", "2", "--data-root", mnist_root])
    out, err = capsys.readouterr()
    assert code == 0, err
    row = re.search(r"^gan .*progress lines \(wall clock\)  before +([\d.]+) ms/step .* after +([\d.]+) ms/step "
                    r".* ([\d.]+)x  \(rounds: ([\d.]+)x\)$", out, re.M)
    assert row, out
    before, after, ratio = float(row[1]), float(row[2]), float(row[3])
    assert before > 0 and after > 0 and abs(ratio - before / after) < 0.01


def test_too_few_lines_is_one_clear_line(mnist_root, capsys):
    code = run_inprocess(before_after.main, [ROOT, "--scripts", "gan", "--rounds", "1", "--chunks",
                                             "--max-steps", "4", "--log-every", "2", "--data-root", mnist_root])
    out, err = capsys.readouterr()
    assert code == 2 and "no whole progress line after the first two" in err


def test_interval_flags_need_chunks(capsys):
    assert run_inprocess(before_after.main, [ROOT, "--max-steps", "10"]) == 2
    assert "--max-steps and --log-every go with --chunks" in capsys.readouterr().err
