"""Auxiliary Classifier GAN: Odena, Olah and Shlens, "Conditional Image Synthesis with Auxiliary
Classifier GANs", ICML 2017 (arXiv:1610.09585).

G is told a class y and turns noise z into an image of that class. D is *not* told the class: one
convolutional body with two heads says real or fake, and which class the image shows. G learns to
make its images look real *and* be classified as the class it was asked for, a dense signal about
the class. DCGAN-style networks: G multiplies z by a class embedding, then a Linear layer and four
ConvTranspose2d(4, 2, 1); D is four Conv2d(4, 2, 1) and the two linear heads; init N(0, 0.02).

Where this file departs from the paper or common implementations (a flag, where one exists, gives theirs):
- The class head gives logits to cross_entropy; a Softmax before cross_entropy would apply it twice.
- D's class head learns from real images only (--fake-class-loss: also from G's, as the paper does),
  so D does not learn G's early mistakes as classes that G is then rewarded for.
- --spectral-norm (not BatchNorm) in D and --label-smoothing 0.1 keep D from overpowering G.
- --ema 0.999: grids and samples come from a moving average of G's weights, steadier than G itself.
- --lr-decay: the rates fall linearly to 0 over 50 epochs (a shorter run is the 50-epoch run's start).

    python acgan.py --epochs 50               # MNIST at 32x32; one grid row per class, runs/acgan
    python acgan.py --generate 100 --label 7  # sevens from the newest run
    python acgan.py --dataset folder --data-root my_classes --img-size 64 --width 128 --device cuda --compile
"""
import argparse
import copy
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

import common


def parse_args(argv=None):
    parser = common.build_parser("acgan", "Auxiliary Classifier GAN (DCGAN-style networks; D also classifies).",
                                 img_size=32, batch_size=64, epochs=50, lr=2e-4, conditional=True)
    parser.add_argument("--width", type=common.positive_int, default=16, metavar="W",
                        help="channels: G goes 8W -> 4W -> 2W -> W -> C, D goes C -> W -> ... -> 8W")
    parser.add_argument("--spectral-norm", action=argparse.BooleanOptionalAction, default=True,
                        help="spectral normalisation of D's layers instead of BatchNorm (Miyato et al. 2018); "
                             "--no-spectral-norm: BatchNorm, as in the paper")
    parser.add_argument("--d-dropout", type=common.fraction, default=0.0, metavar="P",
                        help="dropout after each of D's convolutions (Keras' ACGAN example: 0.3)")
    parser.add_argument("--fake-class-loss", action="store_true",
                        help="also train D's class head on G's images with the labels G was given (the paper's)")
    parser.set_defaults(label_smoothing=0.1)
    args, checkpoint = common.parse_args(parser, argv)
    if args.img_size % 16:
        raise common.UserError(f"--img-size {args.img_size} is not a multiple of 16 (the networks halve it "
                               "four times); use e.g. 32 or 64")
    return args, checkpoint


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
def init_weights(module):
    """DCGAN's start: conv/linear weights N(0, 0.02), BatchNorm weights 1, biases 0. The class
    embedding keeps PyTorch's N(0, 1)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """z (B, latent_dim) and labels (B,) -> image (B, C, H, W) in [-1, 1]; H and W multiples of 16."""

    def __init__(self, latent_dim, n_classes, image_shape, width):
        super().__init__()
        channels, height, breadth = image_shape
        self.start_shape = (8 * width, height // 16, breadth // 16)
        # The class multiplies the noise: a learned per-class gain on every unit of z.
        self.label_embedding = nn.Embedding(n_classes, latent_dim)
        self.project = nn.Linear(latent_dim, 8 * width * (height // 16) * (breadth // 16))

        def up(n_in, n_out):   # doubles H and W
            return [nn.ConvTranspose2d(n_in, n_out, 4, 2, 1), nn.BatchNorm2d(n_out), nn.ReLU()]

        self.net = nn.Sequential(
            nn.BatchNorm2d(8 * width), nn.ReLU(),                 # (B, 8W, H/16, W/16)
            *up(8 * width, 4 * width),                            # (B, 4W, H/8, W/8)
            *up(4 * width, 2 * width),                            # (B, 2W, H/4, W/4)
            *up(2 * width, width),                                # (B, W, H/2, W/2)
            nn.ConvTranspose2d(width, channels, 4, 2, 1),         # (B, C, H, W)
            nn.Tanh(),                                            # images live in [-1, 1]
        )
        self.apply(init_weights)

    def forward(self, z, labels):
        conditioned = z * self.label_embedding(labels)                     # (B, latent_dim)
        return self.net(self.project(conditioned).view(-1, *self.start_shape))


class Discriminator(nn.Module):
    """image (B, C, H, W) -> (realness logit (B, 1), class logits (B, n_classes)): both heads give
    logits, and the losses apply the sigmoid and the softmax themselves."""

    def __init__(self, n_classes, image_shape, width, dropout=0.0, spectral_norm=True):
        super().__init__()
        channels, height, breadth = image_shape
        self.batch_norm = not spectral_norm   # BatchNorm in D: real and fake need a pass each

        def down(n_in, n_out, batch_norm=True):   # halves H and W
            batch_norm = batch_norm and not spectral_norm
            return [nn.Conv2d(n_in, n_out, 4, 2, 1), *([nn.BatchNorm2d(n_out)] if batch_norm else []),
                    nn.LeakyReLU(0.2), nn.Dropout(dropout)]

        self.net = nn.Sequential(
            *down(channels, width, batch_norm=False),   # (B, W, H/2, W/2): no BatchNorm on the input layer
            *down(width, 2 * width),                    # (B, 2W, H/4, W/4)
            *down(2 * width, 4 * width),                # (B, 4W, H/8, W/8)
            *down(4 * width, 8 * width),                # (B, 8W, H/16, W/16)
            nn.Flatten(),                               # (B, 8W * H/16 * W/16)
        )
        n_features = 8 * width * (height // 16) * (breadth // 16)
        self.realness_head = nn.Linear(n_features, 1)          # (B, 1)
        self.class_head = nn.Linear(n_features, n_classes)     # (B, n_classes)
        self.apply(init_weights)
        if spectral_norm:   # each weight divided by an estimate of its largest singular value
            for layer in [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]:
                nn.utils.parametrizations.spectral_norm(layer)

    def power_iteration(self, on):
        """Spectral norm refines its estimate of each weight's largest singular value on every forward
        pass in train mode; G's update turns that off, so that it runs once per D update."""
        for module in self.modules():
            if isinstance(module, nn.utils.parametrize.ParametrizationList):
                module.train(on)
        return self

    def forward(self, images):
        features = self.net(images)
        return self.realness_head(features), self.class_head(features)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
bce = nn.BCEWithLogitsLoss()   # sigmoid + binary cross-entropy in one numerically stable op


def class_loss(class_logits, labels):
    """Cross-entropy of the class head, on raw logits: F.cross_entropy applies log-softmax itself."""
    return F.cross_entropy(class_logits, labels)


def discriminator_targets(batch_size, smoothing, exchange, device):
    """BCE targets of D's real/fake head: 1 for real, 0 for fake, with two optional tricks. One-sided
    label smoothing draws real targets from [1 - smoothing, 1], so D is never pushed to certainty
    (fake targets stay 0: smoothing them would reward G's fakes). Label exchange swaps the two with
    probability `exchange`. Neither touches the class targets: a real 7 is a 7 whatever D is told."""
    real_targets = 1 - smoothing * torch.rand(batch_size, 1, device=device)
    fake_targets = torch.zeros(batch_size, 1, device=device)
    if random.random() < exchange:   # a host-side coin: no GPU sync
        real_targets, fake_targets = fake_targets, real_targets
    return real_targets, fake_targets


# ---------------------------------------------------------------------------------------------
# The training step
# ---------------------------------------------------------------------------------------------
def train_step(real_images, real_labels, generator, discriminator, opt_g, opt_d, *, latent_dim=100,
               label_smoothing=0.1, label_exchange=0.0, fake_class_loss=False):
    """One D update, then one G update, on a batch of real images and their labels. Returns the
    values to log."""
    batch_size, device = real_images.size(0), real_images.device

    # Train D: real/fake on both kinds of image; the class of real images (with fake_class_loss, also
    # the class G was asked for)
    real_targets, fake_targets = discriminator_targets(batch_size, label_smoothing, label_exchange, device)
    z = torch.randn(batch_size, latent_dim, device=device)
    fake_labels = torch.randint(0, generator.label_embedding.num_embeddings, (batch_size,), device=device)
    fake_images = generator(z, fake_labels)                                     # (B, C, H, W)
    fakes = fake_images.detach()                                                # detach: this update trains D only
    if discriminator.batch_norm:   # a pass for each batch, so that BatchNorm does not mix their statistics
        (real_logits, real_class_logits), (fake_logits, fake_class_logits) = map(discriminator, (real_images, fakes))
    else:                          # one pass over both: half the work for the device to launch
        logits, class_logits = discriminator(torch.cat([real_images, fakes]))  # (2B, 1), (2B, K)
        (real_logits, fake_logits), (real_class_logits, fake_class_logits) = logits.chunk(2), class_logits.chunk(2)
    loss_d = (bce(real_logits, real_targets) + class_loss(real_class_logits, real_labels)
              + bce(fake_logits, fake_targets))
    if fake_class_loss:
        loss_d = loss_d + class_loss(fake_class_logits, fake_labels)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    # Train G: make D call G's images real (target 1) and of the class G was asked for
    discriminator.requires_grad_(False).power_iteration(False)   # G needs the gradient at D's input only
    g_logits, g_class_logits = discriminator(fake_images)
    discriminator.requires_grad_(True).power_iteration(True)
    loss_g = bce(g_logits, torch.ones_like(g_logits)) + class_loss(g_class_logits, fake_labels)
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    # acc_real: D's class head names a real image's class; acc_fake: it names the class G was asked for
    logged = {"loss_d": loss_d, "loss_g": loss_g, "d_real": real_logits.sigmoid().mean(),
              "d_fake": fake_logits.sigmoid().mean(),
              "acc_real": (real_class_logits.argmax(1) == real_labels).float().mean(),
              "acc_fake": (fake_class_logits.argmax(1) == fake_labels).float().mean()}
    return {name: value.detach() for name, value in logged.items()}   # values to log, not graphs


def build(args, image_shape, n_classes, device):
    """The networks and optimisers these flags describe."""
    if n_classes < 2:
        raise common.UserError(f"{args.data_root} holds a single class; ACGAN needs at least 2 "
                               "(one sub-folder of images per class)")
    generator = Generator(args.latent_dim, n_classes, image_shape, args.width)
    discriminator = Discriminator(n_classes, image_shape, args.width, args.d_dropout, args.spectral_norm)
    # channels_last (N, H, W, C in memory): the convolutions' fastest layout on CPUs and GPUs (docs/speed.md)
    generator, discriminator = (net.to(device, memory_format=torch.channels_last) for net in (generator, discriminator))
    opt_g = torch.optim.Adam(generator.parameters(), lr=args.lr, betas=(0.5, 0.999), fused=True)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=args.lr_d or args.lr, betas=(0.5, 0.999), fused=True)
    return generator, discriminator, opt_g, opt_d


def load_generator(path, device="cpu"):
    """The generator that made a run's grids (G's moving average), from its checkpoint.pt or a
    generator_epoch_*.pt snapshot, in eval mode: load_generator(path)(torch.randn(10, 100), torch.arange(10))."""
    saved = common.load_checkpoint(path, "acgan")
    generator = Generator(saved["args"]["latent_dim"], saved["n_classes"], saved["image_shape"], saved["args"]["width"])
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
                "label_exchange": args.label_exchange, "fake_class_loss": args.fake_class_loss}   # by name
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
