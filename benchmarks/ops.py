"""Operations per training step, and reads of a value back to the host, for each script.

Each script's own main() runs on made-up data (--dataset fake) for a few steps at its defaults, under
a TorchDispatchMode that sees every tensor operation PyTorch dispatches (forward, backward, optimiser,
moving average, schedule, batch cutting, log sums). Counting starts after the first step (which
builds the optimisers' state) and stops before the run's end (grid, log line, checkpoint), so what is
left is what every further step costs. On a GPU most operations are a kernel launch each, and a read
back to the host (`.item()`, `bool(tensor)`, `.tolist()`) makes the CPU wait for the GPU.

    python benchmarks/ops.py                    # every script: ops per step and host reads per step
    python benchmarks/ops.py --scripts acgan --top 15   # and acgan's most frequent operations
"""
import argparse
import collections
import contextlib
import importlib
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402

SCRIPTS = ("gan", "cgan", "acgan", "wgan", "wgan_gp", "dcgan", "cyclegan")
HOST_READS = {"_local_scalar_dense", "item", "is_nonzero", "equal"}   # each waits for the device
STEPS = {"wgan_gp": 6}   # steps counted after the first: a whole number of G turns (n_critic 5); others 2


class CountOps(TorchDispatchMode):
    """Counts the operations dispatched while `counting` is on, by name."""

    def __init__(self):
        super().__init__()
        self.counting, self.ops = False, collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.counting:
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def ops_per_step(script, extra=(), steps=None, device="cpu", sync_debug=False):
    """(operations per step, host reads per step, Counter of operation names) for `script`'s main(). With
    sync_debug (CUDA), any call that makes the CPU wait for the GPU during the steps raises an error."""
    module = importlib.import_module(script)
    steps = steps or STEPS.get(script, 2)
    counter, seen = CountOps(), []
    end_step, end_epoch = common.Run.end_step, common.Run.end_epoch

    def counted_end_step(run, *args):
        stop = end_step(run, *args)
        seen.append(run.step)
        counter.counting = not stop   # from the end of the first step to the end of the last
        if sync_debug:
            torch.cuda.set_sync_debug_mode("error" if counter.counting else 0)
        return stop

    def quiet_end_epoch(run, *args):
        counter.counting = False
        if sync_debug:
            torch.cuda.set_sync_debug_mode(0)
        return end_epoch(run, *args)

    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(open(os.devnull, "w")):
        common.Run.end_step, common.Run.end_epoch = counted_end_step, quiet_end_epoch
        try:
            with counter:
                module.main(["--dataset", "fake", "--device", device, "--max-steps", str(steps + 1), "--log-every",
                             "1000", "--out", f"{out}/run", *extra])
        finally:
            common.Run.end_step, common.Run.end_epoch = end_step, end_epoch
            if sync_debug:
                torch.cuda.set_sync_debug_mode(0)
    assert seen == list(range(1, steps + 2)), f"{script}: the run made steps {seen}, not 1 to {steps + 1}"
    total = sum(counter.ops.values())
    reads = sum(n for name, n in counter.ops.items() if name in HOST_READS)
    return total / steps, reads / steps, counter.ops


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scripts", nargs="+", default=list(SCRIPTS), choices=SCRIPTS)
    parser.add_argument("--top", type=int, default=0, help="also list the N most frequent operations per step")
    options = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{'script':10} {'ops/step':>9} {'host reads/step':>16}")
    for script in options.scripts:
        total, reads, ops = ops_per_step(script)
        print(f"{script:10} {total:9.1f} {reads:16.1f}")
        steps = STEPS.get(script, 2)
        for name, n in ops.most_common(options.top):
            print(f"    {name:32} {n / steps:7.1f}")


if __name__ == "__main__":
    main()
