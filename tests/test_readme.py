"""The README's code runs: its "Use a trained generator" block, on runs trained here for a step."""
import re

import torch

import acgan
import cyclegan
import gan
from conftest import ROOT, run_inprocess


def test_the_readme_s_generator_example_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Use a trained generator.*?```python\n(.*?)```", readme, re.S)[1]
    fast = ["--dataset", "fake", "--max-steps", "1", "--batch-size", "16"]
    assert run_inprocess(gan.main, fast + ["--out", tmp_path / "runs" / "gan"]) == 0
    assert run_inprocess(acgan.main, fast + ["--width", "8", "--epochs", "50", "--snapshot-every", "50",
                                             "--out", tmp_path / "runs" / "acgan"]) == 0
    assert run_inprocess(cyclegan.main, fast + ["--width", "4", "--blocks", "1",
                                                "--out", tmp_path / "runs" / "cyclegan"]) == 0
    # The README names the last snapshot of a 50-epoch acgan run; this one stopped after a step.
    (tmp_path / "runs" / "acgan" / "checkpoint.pt").rename(tmp_path / "runs" / "acgan" / "generator_epoch_050.pt")
    monkeypatch.chdir(tmp_path)
    names = {}
    exec(block, names)
    assert names["images"].shape == (16, 1, 28, 28) and names["images"].abs().max() <= 1
    assert names["sevens"].shape == (16, 1, 32, 32)
    assert names["thick"].shape == (16, 1, 28, 28) and not torch.equal(names["thick"], names["images"])
