"""CPU time per training step of each script: another checkout (before) against this one (after).

Each script runs at its defaults on MNIST for S1 and for S2 steps (--max-steps), one thread, before and
after in turn, round after round. The difference of the two runs' user + system CPU time over S2 - S1
steps is the cost of a step: start-up, data loading, the first steps' warm-up and the run's end cancel
out. CPU time, not wall time, so another job on the other core disturbs it far less (caches excepted).

    git worktree add /tmp/before 204be35        # the commit to compare with
    python benchmarks/before_after.py /tmp/before --rounds 2
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAN = {"gan": (100, 600), "cgan": (100, 600), "acgan": (50, 250), "wgan": (100, 600), "wgan_gp": (100, 600),
        "dcgan": (20, 100), "cyclegan": (10, 60)}   # (S1, S2) steps: S2 - S1 takes about a minute


def cpu_seconds(root, script, steps, data_root):
    """User + system CPU seconds of `python script.py --max-steps steps` in checkout `root`."""
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, f"{root}/{script}.py", "--device", "cpu", "--data-root", str(data_root),
                        "--dataset", "thin2thick" if script == "cyclegan" else "mnist", "--max-steps", str(steps),
                        "--log-every", "100000", "--out", f"{out}/run"], cwd=root, check=True, capture_output=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", help="the other checkout (a folder with the scripts)")
    parser.add_argument("--scripts", nargs="+", default=list(PLAN), choices=PLAN)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-root", default=ROOT / "data", type=Path)
    options = parser.parse_args(argv)
    for script in options.scripts:
        s1, s2 = PLAN[script]
        batch = {"dcgan": 128, "cyclegan": 16}.get(script, 64)
        per_step = {"before": [], "after": []}
        for _ in range(options.rounds):
            for name, root in (("before", options.before), ("after", ROOT)):
                seconds = cpu_seconds(root, script, s2, options.data_root.resolve())
                per_step[name].append((seconds - cpu_seconds(root, script, s1, options.data_root.resolve())) / (s2 - s1))
        old, new = (statistics.median(per_step[name]) for name in ("before", "after"))
        print(f"{script:9} batch {batch:4}  before {1000 * old:6.1f} ms/step {batch / old:6,.0f} img/s  after "
              f"{1000 * new:6.1f} ms/step {batch / new:6,.0f} img/s  {old / new:4.2f}x  (rounds: "
              + " ".join(f"{o / n:.2f}x" for o, n in zip(per_step["before"], per_step["after"])) + ")", flush=True)


if __name__ == "__main__":
    main()
