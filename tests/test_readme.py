"""The README's code runs: its "Use a trained generator" blocks, on runs trained here for a step."""
import re

import pytest
import torch

import acgan
import cyclegan
import gan
from conftest import ROOT, run_inprocess


def test_the_readme_s_generator_examples_run(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Use a trained generator"):]
    first, second = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    fast = ["--dataset", "fake", "--max-steps", "1", "--batch-size", "16"]
    # The first block runs right after the quickstart's `python gan.py --epochs 5`: only gan's run exists.
    assert run_inprocess(gan.main, fast + ["--epochs", "5", "--out", tmp_path / "runs" / "gan"]) == 0
    monkeypatch.chdir(tmp_path)
    names = {}
    exec(first, names)
    assert names["images"].shape == (16, 1, 28, 28) and names["images"].abs().max() <= 1
    assert not names["images"].requires_grad   # sampled under no_grad, as a user wants it
    # The second after acgan's and cyclegan's runs, which the README names by their commands.
    assert "`python acgan.py`" in section and "`python cyclegan.py`" in section
    assert run_inprocess(acgan.main, fast + ["--width", "8", "--out", tmp_path / "runs" / "acgan"]) == 0
    assert run_inprocess(cyclegan.main, fast + ["--width", "4", "--blocks", "1",
                                                "--out", tmp_path / "runs" / "cyclegan"]) == 0
    exec(second, names)
    assert names["sevens"].shape == (16, 1, 32, 32) and not names["sevens"].requires_grad
    assert names["thick"].shape == (16, 1, 28, 28) and not torch.equal(names["thick"], names["images"])


def test_load_generator_raises_ordinary_exceptions_in_a_library(tmp_path):
    with pytest.raises(FileNotFoundError):
        gan.load_generator(tmp_path / "runs" / "gan" / "checkpoint.pt")
    (tmp_path / "half.pt").write_bytes(b"half a file")
    with pytest.raises(ValueError, match="is not a whole checkpoint"):
        gan.load_generator(tmp_path / "half.pt")
