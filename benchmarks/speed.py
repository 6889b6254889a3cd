"""Training speed of each script, beside two references measured in the same run.

For every script at its defaults (batch size, image size, widths, n_critic ...) on one device:
- script: `python <script>.py --max-steps W+K --log-every C` in a subprocess on the real data;
  the images/s of its progress lines after the W warm-up steps (the clock of common.Run's log,
  which leaves out start-up, data decoding, grids and checkpoint writing);
- model limit: the script's own train_step (imported from it, with the networks and optimisers of
  its build()), run on one batch already on the device: no data, no logging, no moving average, no
  learning-rate schedule, no bookkeeping. The gap between this and the script is what the loop adds;
- conventional: that same step fed the way most GAN repositories feed it (PyTorch-GAN,
  pytorch/examples): torchvision's MNIST dataset and a DataLoader, each image decoded to PIL and
  put through Resize, ToTensor and Normalize one by one, every step.
- unfused (with --unfused): the model limit again, with PyTorch's default Adam in place of the
  scripts' fused=True one: what the fused optimiser step gains (wgan's RMSprop is not fused).
A step is one batch, one discriminator (critic) update: in wgan/wgan_gp a generator update comes
every n_critic steps, in the others every step; images/s = steps x batch size / seconds.

Each measurement is timed in chunks of C steps (the script's own progress lines are its chunks);
the table gives the best chunk and the median chunk of each. On a machine shared with other
work the best chunk is the least disturbed one, and the same rule applies to all three columns.
The target: every script at >= 0.9x its model limit on the CPU (the loop adds under 10%).

    cd /work/main   # the repository root
    nice -n 5 python benchmarks/speed.py --device cpu                        # all six scripts
    nice -n 5 python benchmarks/speed.py --device cpu --scripts gan --steps 300 --chunk 50 --threads 1
    python benchmarks/speed.py --device cuda --steps 2000 --workers 4
    python benchmarks/speed.py --device cuda --scripts-only --compile --amp   # eager, compiled and bfloat16

--threads 1 keeps the numbers steady on a CPU that other jobs share (two-thread OpenMP loops
slow down erratically when the cores are oversubscribed). Scripts not written yet are skipped.
"""
import argparse
import importlib
import inspect
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402
import imagedata  # noqa: E402

SCRIPTS = ("gan", "cgan", "acgan", "wgan", "wgan_gp", "dcgan")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="speed.py", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add("--scripts", nargs="+", choices=SCRIPTS, default=list(SCRIPTS), metavar="SCRIPT",
        help=f"which of {', '.join(SCRIPTS)} (those that exist)")
    add("--steps", type=common.positive_int, default=500, help="timed steps, after the warm-up")
    add("--warmup", type=common.positive_int, default=100,
        help="untimed steps first (allocator, caches, cuDNN autotuning)")
    add("--chunk", type=common.positive_int, default=100,
        help="steps per timed chunk (the scripts' --log-every); each measurement keeps its best chunk")
    add("--repeat", type=common.positive_int, default=1, help="measure everything R times, interleaved")
    add("--threads", type=int, default=0, help="CPU threads for all three measurements (0: torch's default)")
    add("--dataset", choices=("mnist", "fashion-mnist"), default="mnist", help="the data every script trains on")
    add("--data-root", default="data", help="where the dataset lives (torchvision's layout)")
    add("--unfused", action="store_true",
        help="also time the model limit with PyTorch's default (unfused) Adam: what fused=True gains")
    add("--workers", type=int, default=0,
        help="DataLoader workers of the conventional pipeline (0: PyTorch-GAN's default)")
    add("--compile", action="store_true", help="also time each script with --compile (after --warmup steps)")
    add("--amp", action="store_true", help="also time each script with --amp (bfloat16 autocast)")
    add("--baseline", metavar="DIR",
        help="also time the scripts of another checkout (e.g. a git worktree of an older commit) in the same rounds")
    add("--scripts-only", action="store_true", help="skip the model limit and the conventional pipeline")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Each script's own training step, called as its main() calls it
# ---------------------------------------------------------------------------------------------
def script_step(module, args, shape, n_classes, device):
    """step(real_images, real_labels): the script's train_step on the networks and optimisers its
    build() makes, with the arguments main() gives it (matched by name: real_labels for the
    conditional scripts; for the WGAN scripts, update_g on every n_critic-th step)."""
    generator, discriminator, opt_g, opt_d = module.build(args, shape, n_classes, device)
    if getattr(args, "unfused_adam", False):   # PyTorch's default Adam: what fused=True gains
        opt_g, opt_d = (torch.optim.Adam(o.param_groups[0]["params"], **{**o.defaults, "fused": None})
                        if isinstance(o, torch.optim.Adam) else o for o in (opt_g, opt_d))
    parameters = inspect.signature(module.train_step).parameters.items()
    names = [name for name, parameter in parameters if parameter.kind != parameter.KEYWORD_ONLY]
    settings = {name: getattr(args, name) for name, parameter in parameters if parameter.kind == parameter.KEYWORD_ONLY}
    count = itertools.count()

    def step(real_images, real_labels):
        given = {"real_images": real_images, "real_labels": real_labels, "generator": generator,
                 "discriminator": discriminator, "critic": discriminator, "opt_g": opt_g, "opt_d": opt_d,
                 "update_g": (next(count) + 1) % getattr(args, "n_critic", 1) == 0}
        module.train_step(**{name: given[name] for name in names}, **settings)
    return step


# ---------------------------------------------------------------------------------------------
# The three measurements
# ---------------------------------------------------------------------------------------------
def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(step, batches, options, batch_size, device):
    """images/s of each chunk of step(*next(batches)) calls after the untimed warm-up. Fetching
    the batch is inside the clock: that is the point of the conventional pipeline's number."""
    for _ in range(options.warmup):
        step(*next(batches))
    rates = []
    for _ in range(options.steps // options.chunk):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(options.chunk):
            step(*next(batches))
        synchronize(device)
        rates.append(options.chunk * batch_size / (time.perf_counter() - start))
    return rates


def model_limit(name, module, args, data, options, device, unfused_adam=False):
    """The script's step on one batch already on the device, over and over."""
    common.seed_everything(0)
    args = argparse.Namespace(**vars(args), unfused_adam=unfused_adam)
    step = script_step(module, args, data.shape, data.n_classes, device)
    batch = next(data.batches(args.batch_size, epoch=0, seed=0))
    return timed(step, itertools.repeat(batch), options, args.batch_size, device)


def conventional(name, module, args, data, options, device):
    """The script's step fed by torchvision's dataset + DataLoader with per-image transforms."""
    import torchvision
    from torchvision import transforms
    common.seed_everything(0)
    step = script_step(module, args, data.shape, data.n_classes, device)
    dataset_class = {"mnist": torchvision.datasets.MNIST,
                     "fashion-mnist": torchvision.datasets.FashionMNIST}[args.dataset]
    dataset = dataset_class(options.data_root, train=True, download=False, transform=transforms.Compose([
        transforms.Resize(args.img_size), transforms.ToTensor(), transforms.Normalize([0.5], [0.5])]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=options.workers, pin_memory=device.type == "cuda")

    def batches():
        while True:   # epoch after epoch, as a training loop would
            for images, labels in loader:
                yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    return timed(step, batches(), options, args.batch_size, device)


PROGRESS = re.compile(r"step (\d+)/\d+ .* ([\d,.]+) img/s")


def script_speed(name, args, options, device, workdir, root=ROOT, extra=()):
    """Run the script itself (the one in `root`, with `extra` flags); the images/s of each --log-every
    chunk after the warm-up, from its progress lines (each gives the rate since the previous one)."""
    command = [sys.executable, str(Path(root) / f"{name}.py"), "--device", options.device, "--dataset", args.dataset,
               "--data-root", str(Path(options.data_root).resolve()),
               "--max-steps", str(options.warmup + options.steps),
               "--log-every", str(options.chunk), "--out", str(Path(workdir) / f"{name}-{len(extra)}"), *extra]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(options.threads)} if options.threads else {})}
    result = subprocess.run(command, capture_output=True, text=True, cwd=root, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    rates, previous = [], 0
    for line in result.stdout.splitlines():
        match = PROGRESS.search(line)
        if match:
            step, rate = int(match[1]), float(match[2].replace(",", ""))
            if previous >= options.warmup and step - previous == options.chunk:   # whole chunks only
                rates.append(rate)
            previous = step
    if not rates:
        raise RuntimeError(f"no progress lines after step {options.warmup} in the output of {' '.join(command)}")
    return rates


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def main(argv=None):
    options = parse_args(argv)
    if options.warmup % options.chunk or options.steps < options.chunk:
        raise common.UserError("--warmup must be a multiple of --chunk, and --steps at least --chunk "
                               "(the scripts' progress lines fall on multiples of --chunk)")
    device = common.pick_device(options.device)
    common.keep_freed_memory()   # as the scripts' Run does, so the in-process limits compare like with like
    if options.threads:
        torch.set_num_threads(options.threads)
    names = [n for n in options.scripts if (ROOT / f"{n}.py").is_file()]
    for missing in sorted(set(options.scripts) - set(names)):
        print(f"skipping {missing}: {missing}.py does not exist yet", file=sys.stderr)
    modules = {n: importlib.import_module(n) for n in names}
    # Each script's defaults, as its own parser gives them, with this run's data flags.
    script_args = {n: modules[n].parse_args(["--dataset", options.dataset, "--data-root", options.data_root])[0]
                   for n in names}
    measurements = ("script", "limit", "conventional", "unfused", "before", "compiled", "amp")
    data, rates = {}, {n: {what: [] for what in measurements} for n in names}
    with tempfile.TemporaryDirectory(prefix="speed_") as workdir:
        for round_ in range(options.repeat):
            for n in names:
                args = script_args[n]
                key = (args.dataset, args.img_size)
                if key not in data:
                    data[key] = imagedata.load_data(args, device)
                measured = {} if options.scripts_only else {
                    "limit": model_limit(n, modules[n], args, data[key], options, device),
                    "conventional": conventional(n, modules[n], args, data[key], options, device)}
                if options.baseline:   # before and after alternate, so that both see the same machine
                    measured["before"] = script_speed(n, args, options, device, f"{workdir}/{round_}", options.baseline)
                measured["script"] = script_speed(n, args, options, device, f"{workdir}/{round_}")
                if options.compile:
                    measured["compiled"] = script_speed(n, args, options, device, f"{workdir}/{round_}", ROOT,
                                                        ["--compile"])
                if options.amp:
                    measured["amp"] = script_speed(n, args, options, device, f"{workdir}/{round_}", ROOT, ["--amp"])
                if options.unfused:
                    measured["unfused"] = model_limit(n, modules[n], args, data[key], options, device, True)
                for what, chunk_rates in measured.items():
                    rates[n][what] += chunk_rates
                chunks = "; ".join(f"{what} " + " ".join(f"{r:,.0f}" for r in chunk_rates)
                                   for what, chunk_rates in measured.items())
                print(f"round {round_ + 1}/{options.repeat} {n}, img/s per chunk of {options.chunk} steps: {chunks}",
                      file=sys.stderr, flush=True)
    print(table(rates, script_args, options, device))


def table(rates, script_args, options, device):
    """Best chunk of each measurement (the least disturbed on a shared machine), then medians."""
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    lines = [f"device {device}{threads}, torch {torch.__version__}, {options.dataset}; {options.warmup} warm-up steps, "
             f"then {options.steps // options.chunk} chunks of {options.chunk} steps, x{options.repeat} rounds; "
             f"conventional: DataLoader, {options.workers} workers"]
    columns = [(w, w) for w in ("script", "limit", "conventional", "before", "compiled", "amp", "unfused") if rates_of(rates, w)]
    ratios = [(a, b) for a, b in (("script", "limit"), ("script", "conventional"), ("script", "before"),
                                  ("compiled", "script"), ("amp", "script"), ("limit", "unfused")) if rates_of(rates, a) and rates_of(rates, b)]
    for summary, pick in (("best chunk", max), ("median chunk", statistics.median)):
        lines += ["", f"{'img/s, ' + summary:22} {'batch':>5}" + "".join(f" {w[:8]:>8}" for w, _ in columns)
                  + "".join(f" {a[:6] + '/' + b[:6]:>13}" for a, b in ratios)]
        for n, measured in rates.items():
            value = {w: pick(measured[w]) for w, _ in columns}
            flag = ("  below the 0.9x target" if "limit" in value and value["script"] / value["limit"] < 0.9
                    and device.type == "cpu" else "")
            lines.append(f"{n:22} {script_args[n].batch_size:>5}" + "".join(f" {value[w]:>8,.0f}" for w, _ in columns)
                         + "".join(f" {value[a] / value[b]:>12.2f}x" for a, b in ratios) + flag)
    return "\n".join(lines)


def rates_of(rates, what):
    return any(measured[what] for measured in rates.values())


if __name__ == "__main__":
    common.run_main(main)
