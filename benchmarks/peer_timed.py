"""Run a PyTorch-GAN script (eriklindernoren/PyTorch-GAN, `implementations/<name>/<name>.py`), unchanged,
until its process has used a given CPU time, then save samples of its generator for evaluate.py.

The script runs as `__main__` in the current folder (run this from its folder: it reads
../../data/mnist). After each of its Adam or RMSprop steps the process's CPU time (user + system, start-up
included, as our runs' time to good samples counts it) is compared with the budget; past it, the
training stops and 10,000 samples are drawn from its global `generator` (z from torch.randn; a
conditional G, one with `opt.n_classes`, gets the classes 0, 1, ..., 9 in turn), once in eval mode and
then in train mode (as its own grids are drawn), and saved as uint8 images (N, C, H, W) and labels in
OUT-train.npz and OUT-eval.npz. Score them with `python evaluate.py OUT-train.npz --dataset mnist`.

    # REPO: this repository's folder
    cd PyTorch-GAN/implementations/gan && OMP_NUM_THREADS=1 python $REPO/benchmarks/peer_timed.py gan.py 104.8 /tmp/pg_gan
"""
import argparse
import os
import runpy
import sys

import numpy as np
import torch


class Budget(Exception):
    """The CPU time is spent."""


def cpu_seconds():
    times = os.times()
    return times.user + times.system


def run_until(script, budget):
    """Run `script` until `budget` CPU seconds; returns its globals and the number of generator steps."""
    seen = {"globals": None, "g_steps": 0}
    original_steps = {optim: optim.step for optim in (torch.optim.Adam, torch.optim.RMSprop)}   # wgan: RMSprop

    def step(self, *args, **kwargs):
        result = original_steps[type(self)](self, *args, **kwargs)
        frame = sys._getframe(1)
        while frame is not None and "optimizer_G" not in frame.f_globals:   # the script's own frame
            frame = frame.f_back
        if frame is not None:
            seen["globals"] = frame.f_globals
            seen["g_steps"] += self is frame.f_globals["optimizer_G"]
        if cpu_seconds() >= budget:
            raise Budget
        return result

    for optim in original_steps:
        optim.step = step
    sys.argv = [script, "--n_epochs", "100000"]
    try:
        runpy.run_path(script, run_name="__main__")
    except Budget:
        pass
    finally:
        for optim, original_step in original_steps.items():
            optim.step = original_step
    if seen["globals"] is None:
        raise SystemExit(f"{script} made no step with an optimizer_G before its end")
    return seen["globals"], seen["g_steps"]


def save_samples(generator, opt, out, n=10000, batch=500):
    conditional, device = hasattr(opt, "n_classes"), next(generator.parameters()).device   # the script's device
    for mode in ("eval", "train"):   # eval first: a train-mode pass moves BatchNorm's running statistics
        torch.manual_seed(0)
        generator.train(mode == "train")
        images, labels = [], []
        with torch.no_grad():
            for start in range(0, n, batch):
                z = torch.randn(min(batch, n - start), opt.latent_dim).to(device)
                classes = (torch.arange(start, start + len(z)) % opt.n_classes).to(device) if conditional else None
                images.append(generator(z, classes) if conditional else generator(z))
                labels += [classes] if conditional else []
        images = torch.cat(images).reshape(n, opt.channels, opt.img_size, opt.img_size)
        arrays = {"images": images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()}
        if conditional:
            arrays["labels"] = torch.cat(labels).cpu().numpy()
        np.savez(f"{out}-{mode}.npz", **arrays)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("script", help="the PyTorch-GAN script, e.g. gan.py (run from its folder)")
    parser.add_argument("cpu_seconds", type=float, help="stop once the process has used this much CPU time")
    parser.add_argument("out", help="write OUT-train.npz and OUT-eval.npz")
    parser.add_argument("--n", type=int, default=10000, help="samples to draw")
    options = parser.parse_args(argv)
    names, g_steps = run_until(options.script, options.cpu_seconds)
    print(f"stopped after {g_steps} generator steps at {cpu_seconds():.1f} s of CPU time", flush=True)
    save_samples(names["generator"], names["opt"], options.out, options.n)
    print(f"wrote {options.out}-train.npz and {options.out}-eval.npz", flush=True)


if __name__ == "__main__":
    main()
