"""CPU time per training step of each script: another checkout (before) against this one (after).

Each script runs at its defaults on MNIST for S1 and for S2 steps (--max-steps), one thread, before and
after in turn, round after round. The difference of the two runs' user + system CPU time over S2 - S1
steps is the cost of a step: start-up, data loading, the first steps' warm-up and the run's end cancel
out. CPU time, not wall time, so another job on the other core disturbs it far less (caches excepted).

With --chunks, each checkout instead runs S2 steps (or --max-steps), logging every (S2 - S1) // 10
steps (or --log-every), and a step's cost is read from the script's own progress lines: their img/s
is the wall clock between two lines, so start-up is left out by construction. Only lines that cover a
whole interval count (an epoch's end or the run's end can print a shorter one), and a run's first
two are dropped as warm-up. Wall clock, so use it on an idle core, where it is the steadier method.
The headline is the median line of all rounds; each round's ratio is of that round's median lines,
so the headline can fall outside the rounds when the rounds' lines are spread unevenly.

    git worktree add /tmp/before 204be35        # the commit to compare with
    python benchmarks/before_after.py /tmp/before --rounds 2
    taskset -c 1 python benchmarks/before_after.py /tmp/before --scripts dcgan acgan --rounds 3 --chunks
    taskset -c 1 python benchmarks/before_after.py /tmp/before --scripts gan acgan --rounds 3 --chunks --amp
    taskset -c 1 python benchmarks/before_after.py /tmp/before --scripts dcgan --rounds 3 --chunks --max-steps 200 --log-every 20
"""
import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAN = {"gan": (100, 600), "cgan": (100, 600), "acgan": (50, 250), "wgan": (100, 600), "wgan_gp": (100, 600),
        "dcgan": (20, 100), "cyclegan": (10, 60)}   # (S1, S2) steps: S2 - S1 takes about a minute


def timed_run(root, script, steps, data_root, log_every=100000, flags=()):
    """User + system CPU seconds of `python script.py --max-steps steps [flags]` in checkout `root`, and
    the img/s of its progress lines that cover log_every steps each."""
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run([sys.executable, f"{root}/{script}.py", "--device", "cpu", "--data-root", str(data_root),
                               "--dataset", "thin2thick" if script == "cyclegan" else "mnist", "--max-steps", str(steps),
                               "--log-every", str(log_every), "--out", f"{out}/run", *flags], cwd=root, check=True,
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, whole_lines(done.stdout, log_every)


def whole_lines(stdout, log_every):
    """The img/s of the progress lines in stdout that cover log_every steps each (an epoch's end or the
    run's end can print a line over fewer)."""
    lines = [(int(step), float(rate.replace(",", "")))
             for step, rate in re.findall(r"step (\d+)/\d+ .* ([\d,]+) img/s", stdout)]
    return [rate for (previous, _), (step, rate) in zip([(0, 0)] + lines, lines) if step - previous == log_every]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", help="the other checkout (a folder with the scripts)")
    parser.add_argument("--scripts", nargs="+", default=list(PLAN), choices=PLAN)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-root", default=ROOT / "data", type=Path)
    parser.add_argument("--chunks", action="store_true", help="read a step's cost from the progress lines")
    parser.add_argument("--max-steps", type=int, help="with --chunks: steps per run (default: the script's S2)")
    parser.add_argument("--log-every", type=int, help="with --chunks: steps per progress line (default: (S2 - S1) // 10)")
    parser.add_argument("--amp", action="store_true", help="run this checkout's scripts with --amp (bfloat16 autocast)")
    options = parser.parse_args(argv)
    if not options.chunks and (options.max_steps or options.log_every):
        parser.error("--max-steps and --log-every go with --chunks")
    for script in options.scripts:
        s1, s2 = PLAN[script]
        batch = {"dcgan": 128, "cyclegan": 16}.get(script, 64)
        per_step, lines = {"before": [], "after": []}, {"before": [], "after": []}
        for _ in range(options.rounds):
            for name, root in (("before", options.before), ("after", ROOT)):
                flags = ["--amp"] if options.amp and name == "after" else []
                if options.chunks:   # seconds per step of each progress line after the first two
                    rates = timed_run(root, script, options.max_steps or s2, options.data_root.resolve(),
                                        options.log_every or (s2 - s1) // 10, flags)[1][2:]
                    if not rates or min(rates) <= 0:
                        parser.exit(2, f"{script}: no whole progress line after the first two; raise --max-steps "
                                       "or lower --log-every\n")
                    per_step[name].append(statistics.median(batch / rate for rate in rates))
                    lines[name] += [batch / rate for rate in rates]
                    continue
                seconds, _ = timed_run(root, script, s2, options.data_root.resolve(), flags=flags)
                seconds_s1, _ = timed_run(root, script, s1, options.data_root.resolve(), flags=flags)
                per_step[name].append((seconds - seconds_s1) / (s2 - s1))
        old, new = (statistics.median(lines[name] if options.chunks else per_step[name]) for name in ("before", "after"))
        method = "progress lines (wall clock)" if options.chunks else "CPU time"
        after = "after --amp" if options.amp else "after"
        print(f"{script:9} batch {batch:4}  {method}  before {1000 * old:6.1f} ms/step {batch / old:6,.0f} img/s  {after} "
              f"{1000 * new:6.1f} ms/step {batch / new:6,.0f} img/s  {old / new:4.2f}x  (rounds: "
              + " ".join(f"{o / n:.2f}x" for o, n in zip(per_step["before"], per_step["after"])) + ")", flush=True)


if __name__ == "__main__":
    main()
