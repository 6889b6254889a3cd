"""benchmarks/peer_timed.py: a PyTorch-GAN-style script (a flat file with a global generator,
optimizer_G and opt) runs until the CPU budget, and its samples land in the .npz files evaluate.py reads."""
import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import evaluate  # noqa: E402
import peer_timed  # noqa: E402

PEER = """
import argparse
import torch
import torch.nn as nn

parser = argparse.ArgumentParser()
parser.add_argument("--n_epochs", type=int, default=1)
parser.add_argument("--latent_dim", type=int, default=8)
parser.add_argument("--img_size", type=int, default=4)
parser.add_argument("--channels", type=int, default=1)
CONDITIONAL
opt = parser.parse_args()


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(opt.latent_dim, 16), nn.BatchNorm1d(16), nn.Tanh())

    def forward(self, z, labels=None):
        return self.net(z if labels is None else z + labels[:, None]).view(-1, 1, 4, 4)


generator, discriminator = Generator(), nn.Linear(16, 1)
optimizer_G = torch.optim.Adam(generator.parameters())
optimizer_D = torch.optim.Adam(discriminator.parameters())
for epoch in range(opt.n_epochs):
    for i in range(10):
        optimizer_G.zero_grad()
        fake = generator(torch.randn(4, opt.latent_dim)).flatten(1)
        discriminator(fake).mean().backward()
        optimizer_G.step()
        optimizer_D.zero_grad()
        discriminator(fake.detach()).mean().backward()
        optimizer_D.step()
"""


@pytest.mark.parametrize("conditional", [False, True], ids=["gan", "acgan"])
def test_the_peer_runs_to_the_budget_and_its_samples_are_saved(tmp_path, monkeypatch, capsys, conditional):
    script = tmp_path / "peer.py"
    script.write_text(PEER.replace("CONDITIONAL", 'parser.add_argument("--n_classes", type=int, default=10)'
                                   if conditional else ""))
    monkeypatch.chdir(tmp_path)
    budget = peer_timed.cpu_seconds() + 0.5   # this process has used CPU time already
    peer_timed.main([str(script), str(budget), str(tmp_path / "out"), "--n", "30"])
    steps = int(capsys.readouterr().out.split("stopped after ")[1].split()[0])
    assert steps > 10   # past its first epoch: --n_epochs is raised, so only the budget stops it
    assert peer_timed.cpu_seconds() >= budget
    for mode in ("train", "eval"):
        images, labels = evaluate.read_npz(tmp_path / f"out-{mode}.npz", 30)
        assert images.shape == (30, 1, 4, 4) and images.dtype.is_floating_point is False
        assert (labels is not None) == conditional
        if conditional:
            assert labels.tolist() == [i % 10 for i in range(30)]
    with np.load(tmp_path / "out-train.npz") as train, np.load(tmp_path / "out-eval.npz") as eval_:
        assert not np.array_equal(train["images"], eval_["images"])   # BatchNorm: batch vs running statistics
