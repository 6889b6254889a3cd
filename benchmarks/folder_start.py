"""How long a folder dataset takes to start training, as docs/data.md measures it.

    python benchmarks/folder_start.py time -- python dcgan.py --dataset folder --data-root DIR --img-size 64 \\
        --max-steps 20 --log-every 10 --out /tmp/runs/x
        # seconds to the "data:" line (training starts) and to the first progress line, the img/s of
        # each progress line, and the peak resident memory of the command (its largest process)
    python benchmarks/folder_start.py dataloader --data-root DIR --img-size 64 --max-steps 20 --log-every 10
        # the peers' way for comparison: torchvision ImageFolder + DataLoader(4 workers), decoding every
        # image at every step, feeding dcgan.py's own train_step; prints lines of the same form
    python benchmarks/folder_start.py load --data-root DIR --img-size 64 [--cold] [--code CHECKOUT]
        # the folder's loading alone, in-process: wall and CPU seconds (--cold: its cache deleted first;
        # --code: the folder_images of another checkout, e.g. a git worktree of an older commit)
"""
import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def time_command(command):
    began, data_at, first_at, rates = time.perf_counter(), None, None, []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:
        now = time.perf_counter() - began
        print(f"[{now:7.2f} s] {line}", end="", flush=True)
        if line.startswith("data:") and data_at is None:
            data_at = now
        if line.startswith("epoch") and " img/s" in line:
            first_at = first_at or now
            rates.append(float(line.split(" img/s")[0].split()[-1].replace(",", "")))
    code = process.wait()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20   # KiB on Linux -> GiB
    print(f"exit {code}; training starts at {data_at:.1f} s; first progress line at {first_at:.1f} s; "
          f"img/s {' '.join(f'{r:,.0f}' for r in rates)}; total {time.perf_counter() - began:.1f} s; "
          f"peak memory {peak:.2f} GiB")


def dataloader(argv):
    import torch
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    import dcgan
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    options = parser.parse_args(argv)
    began = time.perf_counter()
    transform = T.Compose([T.Resize(options.img_size), T.CenterCrop(options.img_size), T.ToTensor(),
                           T.Normalize((0.5,) * 3, (0.5,) * 3)])   # pytorch/examples dcgan's
    dataset = ImageFolder(options.data_root, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=options.batch_size, shuffle=True, drop_last=True,
                                         num_workers=options.workers, persistent_workers=True)
    print(f"data: ImageFolder, {len(dataset):,} images ({time.perf_counter() - began:.1f} s to list)", flush=True)
    torch.manual_seed(0)
    args = dcgan.parse_args(["--dataset", "folder", "--img-size", str(options.img_size)])[0]
    generator, discriminator, opt_g, opt_d = dcgan.build(args, (3, options.img_size, options.img_size),
                                                         len(dataset.classes), torch.device("cpu"))
    step, clock = 0, time.perf_counter()
    while step < options.max_steps:
        for images, _ in loader:
            logged = dcgan.train_step(images, generator, discriminator, opt_g, opt_d, latent_dim=args.latent_dim)
            step += 1
            if step % options.log_every == 0:
                rate = options.log_every * options.batch_size / (time.perf_counter() - clock)
                print(f"epoch 1  step {step}  loss_d {logged['loss_d'].item():.4f}  {rate:,.0f} img/s", flush=True)
                clock = time.perf_counter()
            if step == options.max_steps:
                break


def load(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--code")
    options = parser.parse_args(argv)
    began = time.perf_counter()
    import torch  # noqa: F401 (timed: on a busy machine it is most of a warm start)
    imported = time.perf_counter() - began
    if options.code:
        sys.path.insert(0, options.code)
    import common
    import imagedata
    root = Path(options.data_root)
    if options.cold:
        for folder, stem in imagedata._cache_places(root, options.img_size):
            for path in folder.glob(f"{stem}-*"):
                path.unlink()
    if options.code and hasattr(common, "folder_images"):   # a version from before imagedata.py
        imagedata = common
    wall, cpu = time.perf_counter(), time.process_time()
    images = imagedata.folder_images(root, options.img_size)[0]
    print(f"{len(images):,} images {tuple(images.shape[1:])} in {time.perf_counter() - wall:.2f} s "
          f"({time.process_time() - cpu:.2f} s CPU) with {options.code or 'this checkout'}; import torch "
          f"{imported:.1f} s; load average {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["time"]:
        time_command(sys.argv[3:] if sys.argv[2:3] == ["--"] else sys.argv[2:])
    elif sys.argv[1:2] == ["dataloader"]:
        dataloader(sys.argv[2:])
    elif sys.argv[1:2] == ["load"]:
        load(sys.argv[2:])
    else:
        sys.exit(__doc__)
