"""Conditional GAN: Mirza and Osindero, "Conditional Generative Adversarial Nets", 2014 (arXiv:1411.1784).

Both networks are told the class y. G turns noise z and a class into an image of that class; D
judges whether an image is a real image *of that class*, so a fake that looks real but does not
match its label is rejected, and after training we choose the class of every sample. The networks
are Keras-GAN's cgan: G multiplies z by a learned embedding of y and runs an MLP 256 -> 512 -> 1024;
D multiplies the flattened image by another embedding of y and runs an MLP 512 x 3 with Dropout.

Where this file departs from the paper (where a flag exists, its other setting is the paper's):
- The class multiplies the input (a learned per-unit gain) instead of being concatenated to it.
- G minimises -log D(G(z, y), y), the non-saturating loss, not log(1 - D(G(z, y), y)).
- --lr-d 4e-4 for D, twice G's --lr 2e-4 (the paper: one rate): D keeps up with G, a lower FD at every epoch.
- --ema 0.9999 and --lr-decay, as in gan.py; --label-smoothing and --label-exchange are off.

    python cgan.py --epochs 50                # MNIST, one grid row per class, runs/cgan
    python cgan.py --generate 10000           # labels cycle 0, 1, ..., 9; --label 7 for sevens only
    python evaluate.py runs/cgan --curve      # FD and class accuracy for each snapshot
"""
import copy
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

import common


def parse_args(argv=None):
    parser = common.build_parser("cgan", "Conditional GAN (MLP generator and discriminator, both told the class).",
                                 img_size=28, batch_size=64, epochs=50, lr=2e-4, lr_d=4e-4, ema=0.9999,
                                 conditional=True)
    return common.parse_args(parser, argv)


# ---------------------------------------------------------------------------------------------
# Networks. The class enters both by multiplying the input by a learned embedding of the label:
# every input unit is modulated by the class, so neither network can learn to ignore it.
# ---------------------------------------------------------------------------------------------
class Generator(nn.Module):
    """z (B, latent_dim) and labels (B,) -> image (B, C, H, W) in [-1, 1]."""

    def __init__(self, latent_dim, n_classes, image_shape):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.label_embedding = nn.Embedding(n_classes, latent_dim)

        def block(n_in, n_out):
            # Keras order (activation, then BatchNorm). Keras' momentum 0.8 weighs the *old* running
            # average by 0.8; PyTorch's momentum weighs the *new* batch, hence 0.2.
            return [nn.Linear(n_in, n_out), nn.LeakyReLU(0.2), nn.BatchNorm1d(n_out, momentum=0.2)]

        self.net = nn.Sequential(
            *block(latent_dim, 256),                          # (B, 256)
            *block(256, 512),                                 # (B, 512)
            *block(512, 1024),                                # (B, 1024)
            nn.Linear(1024, int(torch.tensor(image_shape).prod())),   # (B, C*H*W)
            nn.Tanh(),                                        # images live in [-1, 1], like the data
        )

    def forward(self, z, labels):
        conditioned = z * self.label_embedding(labels)   # (B, latent_dim)
        return self.net(conditioned).view(-1, *self.image_shape)


class Discriminator(nn.Module):
    """image (B, C, H, W) and labels (B,) -> logit (B, 1) that the image is a real one of that class."""

    def __init__(self, n_classes, image_shape):
        super().__init__()
        n_pixels = int(torch.tensor(image_shape).prod())
        self.label_embedding = nn.Embedding(n_classes, n_pixels)
        self.net = nn.Sequential(
            nn.Linear(n_pixels, 512), nn.LeakyReLU(0.2),                    # (B, 512)
            nn.Linear(512, 512), nn.LeakyReLU(0.2), nn.Dropout(0.4),        # (B, 512)
            nn.Linear(512, 512), nn.LeakyReLU(0.2), nn.Dropout(0.4),        # (B, 512)
            nn.Linear(512, 1),                                              # (B, 1), no sigmoid
        )

    def forward(self, images, labels):
        conditioned = images.flatten(1) * self.label_embedding(labels)   # (B, C*H*W)
        return self.net(conditioned)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
bce = nn.BCEWithLogitsLoss()   # sigmoid + binary cross-entropy in one numerically stable op


def discriminator_targets(batch_size, smoothing, exchange, device):
    """D's BCE targets for real and fake images: 1 and 0, with two optional tricks. One-sided label
    smoothing draws real targets from [1 - smoothing, 1], so D is never pushed to certainty (fake
    targets stay 0: smoothing them would reward G's fakes). Label exchange swaps the two with
    probability `exchange`. The class labels given to both networks are never touched."""
    real_targets = 1 - smoothing * torch.rand(batch_size, 1, device=device)
    fake_targets = torch.zeros(batch_size, 1, device=device)
    if random.random() < exchange:   # a host-side coin: no GPU sync
        real_targets, fake_targets = fake_targets, real_targets
    return real_targets, fake_targets


# ---------------------------------------------------------------------------------------------
# The training step
# ---------------------------------------------------------------------------------------------
def train_step(real_images, real_labels, generator, discriminator, opt_g, opt_d, *, latent_dim=100,
               label_smoothing=0.0, label_exchange=0.0):
    """One D update, then one G update, on a batch of real images and their labels. Returns the
    values to log."""
    batch_size, device = real_images.size(0), real_images.device

    # Train D: (real image, its label) -> real_targets, (G's image, the label G was given) -> fake_targets
    real_targets, fake_targets = discriminator_targets(batch_size, label_smoothing, label_exchange, device)
    z = torch.randn(batch_size, latent_dim, device=device)
    fake_labels = torch.randint(0, generator.label_embedding.num_embeddings, (batch_size,), device=device)
    fake_images = generator(z, fake_labels)                                        # (B, C, H, W)
    both = torch.cat([real_images, fake_images.detach()])   # detach: this update trains D only
    logits = discriminator(both, torch.cat([real_labels, fake_labels]))           # (2B, 1): one pass, no BatchNorm
    real_logits, fake_logits = logits.chunk(2)                                     # (B, 1) each
    loss_d = bce(real_logits, real_targets) + bce(fake_logits, fake_targets)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    # Train G: make D call G's images real images of their labels (target 1)
    discriminator.requires_grad_(False)   # G needs the gradient at D's input, not D's weight gradients
    loss_g = bce(discriminator(fake_images, fake_labels), torch.ones_like(real_logits))
    discriminator.requires_grad_(True)
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    logged = {"loss_d": loss_d, "loss_g": loss_g, "d_real": real_logits.sigmoid().mean(),
              "d_fake": fake_logits.sigmoid().mean()}
    return {name: value.detach() for name, value in logged.items()}   # values to log, not graphs


def build(args, image_shape, n_classes, device):
    """The networks and optimisers these flags describe."""
    if n_classes < 2:
        raise common.UserError(f"{args.data_root} holds a single class; a conditional GAN needs at least 2 "
                               "(one sub-folder of images per class)")
    generator = Generator(args.latent_dim, n_classes, image_shape).to(device)
    discriminator = Discriminator(n_classes, image_shape).to(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=args.lr, betas=(0.5, 0.999), fused=True)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=args.lr_d or args.lr, betas=(0.5, 0.999), fused=True)
    return generator, discriminator, opt_g, opt_d


def load_generator(path, device="cpu"):
    """The generator that made a run's grids (G's moving average), from its checkpoint.pt or a
    generator_epoch_*.pt snapshot, in eval mode: load_generator(path)(torch.randn(10, 100), torch.arange(10))."""
    saved = common.load_checkpoint(path, "cgan")
    generator = Generator(saved["args"]["latent_dim"], saved["n_classes"], saved["image_shape"])
    generator.load_state_dict(saved["sampler"])
    return generator.to(device).eval()


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def main(argv=None):
    args, checkpoint = parse_args(argv)
    device = common.pick_device(args.device, args.amp)
    common.seed_everything(args.seed)
    if args.generate:   # no training: samples from a checkpoint or snapshot
        return common.generate(load_generator(args.resume, device), args, checkpoint["n_classes"])

    # Data, networks, G's moving average (it makes the grids, snapshots and --generate's samples), schedules
    data = common.load_data(args, device, checkpoint)   # decoded once; batches cut where the data lives
    generator, discriminator, opt_g, opt_d = build(args, data.shape, data.n_classes, device)
    average = copy.deepcopy(generator).eval().requires_grad_(False)
    steps, step = len(data.images) // args.batch_size, 0   # per epoch: the short last batch is dropped
    last_step = min(args.max_steps or math.inf, steps * args.epochs)
    horizon = steps * max(args.epochs, args.default_epochs) if args.lr_decay else math.inf   # shorter: its start
    schedules = [LambdaLR(opt, lambda s: max(0.0, 1 - s / horizon)) for opt in (opt_g, opt_d)]
    # The same inputs for every grid: row k shows class k, each column one z drawn as every class
    fixed_noise = torch.randn(10, args.latent_dim, device=device).repeat(data.n_classes, 1)   # (K*10, latent)
    fixed_labels = torch.arange(data.n_classes, device=device).repeat_interleave(10)            # (K*10,)
    state = {"generator": generator, "discriminator": discriminator, "opt_g": opt_g, "opt_d": opt_d,
             "sampler": average, "schedule_g": schedules[0], "schedule_d": schedules[1]}
    if checkpoint:   # exact: all of the above, the grid's noise, the step and the random generators
        for name, thing in state.items():
            thing.load_state_dict(checkpoint[name])
        fixed_noise, step = checkpoint["fixed_noise"].to(device), checkpoint["step"]
        common.set_rng_state(checkpoint["rng"])
    if step >= last_step:
        more = (f"--epochs {step // steps + 1} or more (past the default --epochs, the rate steps back up)"
                if step >= steps * args.epochs else f"--max-steps {step + 1} or more, or without --max-steps")
        print(f"nothing left to train at step {step}: go on with python {args.script}.py --resume {args.resume} {more}")
        return
    if args.compile:   # fused kernels; the first steps wait for the compiler
        for network in (generator, discriminator):
            network.compile()
    # --amp: products in bfloat16; no cast cache, as the step changes the weights between its passes
    amp = torch.autocast(device.type, torch.bfloat16, enabled=args.amp, cache_enabled=False)
    settings = {"latent_dim": args.latent_dim, "label_smoothing": args.label_smoothing,
                "label_exchange": args.label_exchange}   # train_step's, by name
    meta = {"script": args.script, "args": vars(args), "image_shape": data.shape, "n_classes": data.n_classes,
            "class_names": data.class_names, "data": str(data)}   # "data": a resumed run's must be the same

    # The loop: a D and a G update per batch, a progress line every --log-every steps, the checkpoint every
    # --checkpoint-every minutes; at each epoch's end (and at --max-steps, Ctrl-C or SIGTERM) a grid (and
    # progress.gif), the checkpoint, and at the epoch's end maybe a snapshot. The run's folder is locked meanwhile.
    with common.claim_folder(Path(args.out), checkpoint and step) as folder, common.stop_requests() as stop:
        print(f"run folder: {folder}\ndata: {args.dataset}, {data}", flush=True)
        start, sums, count, clock, saved_at = step, 0, 0, (time.perf_counter(), step), time.monotonic()
        while step < last_step:   # an epoch, or its rest after a periodic checkpoint (the for loop ends in a break)
            epoch = step // steps
            for real_images, real_labels in data.batches(args.batch_size, epoch, args.seed, skip=step % steps):
                with amp:
                    logged = train_step(real_images, real_labels, generator, discriminator, opt_g, opt_d, **settings)
                common.update_average(average, generator, args.ema, step)
                for schedule in schedules:
                    schedule.step()
                step, count, sums = step + 1, count + 1, sums + torch.stack([v.float() for v in logged.values()])
                if step == start + 1:   # the first step waits for allocations (and the compiler): not in the rate
                    clock = (time.perf_counter(), step)
                end = step % steps == 0 or step >= last_step or stop   # epoch's end, --max-steps, Ctrl-C, SIGTERM
                due = time.monotonic() - saved_at > 60 * args.checkpoint_every   # or a checkpoint every few minutes
                if step % args.log_every == 0 or end or due:
                    means = dict(zip(logged, (sums / count).tolist()))   # the one read from the device
                    rate = (step - clock[1]) * args.batch_size / (time.perf_counter() - clock[0])
                    common.log(folder, means, step, epoch, args, last_step, rate)
                    if not all(map(math.isfinite, means.values())):   # before a checkpoint could keep it
                        print(f"a loss is NaN or infinite at step {step}: stopped before a checkpoint kept it; "
                              "resumed, the run repeats its steps: start again with a smaller --lr", file=sys.stderr)
                        sys.exit(1)
                    sums, count, clock = 0, 0, (time.perf_counter(), step)
                if end or due:
                    break
            if end:   # a grid, and at an epoch's end maybe a snapshot
                with torch.no_grad():
                    common.save_grid(average(fixed_noise, fixed_labels), folder, f"epoch_{epoch + 1:03d}.png"
                                     if step % steps == 0 else f"step_{step:07d}.png", nrow=10)
                if step % steps == 0 and (epoch == 0 or (epoch + 1) % args.snapshot_every == 0 or step >= last_step
                                          or stop):
                    common.save_atomically({**meta, "epoch": epoch + 1, "sampler": average.state_dict()},
                                           folder / f"generator_epoch_{epoch + 1:03d}.pt")
            common.save_atomically({**meta, **{name: thing.state_dict() for name, thing in state.items()}, "step": step,
                                    "epoch": step // steps, "fixed_noise": fixed_noise,
                                    "rng": common.rng_state()}, folder / "checkpoint.pt")
            saved_at, clock = time.monotonic(), (time.perf_counter(), step)   # saving is not training time
            if stop:
                print(f"stopped at step {step}; continue with: python {args.script}.py --resume "
                      f"{folder / 'checkpoint.pt'}")
                sys.exit(128 + stop[0])
    print(f"done: {step} steps; grids, losses.csv, snapshots and checkpoint.pt in {folder}")


if __name__ == "__main__":
    common.run_main(main)
