"""A/B of one script's training step with a speed-up taken out, in one process: the script's networks
and optimisers (its build()), one train_step and the moving average's update per step on a fixed batch,
the variants in turn, round after round; the median milliseconds per step of each.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/step_ab.py gan --variants default unfused-adam
    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/step_ab.py acgan --variants default contiguous --steps 60

default: the script as it is; unfused-adam: Adam's arithmetic one kernel per tensor (fused=False);
contiguous: the networks in (N, C, H, W) memory order, not channels_last.
"""
import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common  # noqa: E402


def stepper(module, variant, real_images, real_labels, shape, n_classes):
    """A function that makes one step of `variant`, on its own networks and optimisers."""
    args = module.parse_args(["--dataset", "fake"])[0]
    adam = torch.optim.Adam
    if variant == "unfused-adam":
        torch.optim.Adam = lambda params, **kwargs: adam(params, **{**kwargs, "fused": False})
    try:
        torch.manual_seed(0)
        nets = module.build(args, shape, n_classes, torch.device("cpu"))
    finally:
        torch.optim.Adam = adam
    if variant == "contiguous":
        nets[0].to(memory_format=torch.contiguous_format), nets[1].to(memory_format=torch.contiguous_format)
    average, settings = copy.deepcopy(nets[0]), {k: getattr(args, k) for k in ("latent_dim", "label_smoothing")
                                                 if hasattr(args, k)}
    inputs = (real_images, real_labels) if args.conditional else (real_images,)
    extra = (True,) if "n_critic" in vars(args) else ()   # the critics: a G update in every timed step
    state = {"n": 0}

    def step():
        module.train_step(*inputs, *nets, *extra, **settings)
        common.update_average(average, nets[0], args.ema, state["n"])
        state["n"] += 1
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("script", choices=("gan", "cgan", "acgan", "wgan", "wgan_gp", "dcgan"))
    parser.add_argument("--variants", nargs="+", default=["default"], choices=("default", "unfused-adam", "contiguous"))
    parser.add_argument("--steps", type=int, default=100, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args(argv)
    module = __import__(options.script)
    args = module.parse_args(["--dataset", "fake"])[0]
    data = common.load_data(args, torch.device("cpu"))
    real_images, real_labels = next(data.batches(args.batch_size, 0, 0))
    steps = {v: stepper(module, v, real_images, real_labels, data.shape, data.n_classes) for v in options.variants}
    times = {v: [] for v in options.variants}
    for step in steps.values():   # warm-up: the optimisers' state, the allocator
        for _ in range(5):
            step()
    for _ in range(options.rounds):
        for variant, step in steps.items():
            began = time.perf_counter()
            for _ in range(options.steps):
                step()
            times[variant].append(1000 * (time.perf_counter() - began) / options.steps)
    base = statistics.median(times[options.variants[0]])
    for variant, ms in times.items():
        print(f"{options.script:8} {variant:13} {statistics.median(ms):7.2f} ms/step  "
              f"(rounds: {' '.join(f'{m:.2f}' for m in ms)})  {statistics.median(ms) / base:.2f}x the first")


if __name__ == "__main__":
    main()
