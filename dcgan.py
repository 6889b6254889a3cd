"""DCGAN: Radford, Metz and Chintala, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks", ICLR 2016 (arXiv:1511.06434).

The game of gan.py played by two convolutional networks built to the paper's guidelines, which made
GAN training stable enough to scale: no pooling (D downsamples with strided convolutions, G upsamples
with transposed ones); no fully connected hidden layers; BatchNorm everywhere except G's output and
D's input; ReLU in G with a Tanh output, LeakyReLU(0.2) in D; weights from N(0, 0.02); Adam(2e-4,
betas 0.5, 0.999), batch 128. Each block doubles (G) or halves (D) the side, so --img-size (16 to
128; 64 is the paper's) sets the number of blocks, and --width the channels.

Where this file departs from the paper (where a flag exists, its other setting is the paper's):
- --width 32, half the paper's 64: a quarter of the computation, so 25 MNIST epochs fit a CPU.
- --lr 8e-4, --lr-d 2e-4, --batch-size 64, --label-smoothing 0.1 (paper: 2e-4, 2e-4, 128, 0): G learns faster.
- --spectral-norm in D instead of BatchNorm: with BatchNorm, D overpowers G after about 15 epochs.
- --ema 0.999: grids and samples come from a moving average of G's weights, steadier than G itself.
- --lr-decay: the rates fall linearly to 0 over 25 epochs; a shorter run is that run's start, step for step.

    python dcgan.py                           # MNIST at 32x32, 25 epochs, runs/dcgan
    python dcgan.py --dataset folder --data-root data/celeba --img-size 64 --device cuda   # faces
    python evaluate.py runs/dcgan --curve     # FD for each snapshot
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
from torch.optim.lr_scheduler import LambdaLR

import common


def parse_args(argv=None):
    parser = common.build_parser("dcgan", "DCGAN (convolutional generator and discriminator).",
                                 img_size=32, batch_size=64, epochs=25, lr=8e-4, lr_d=2e-4, latent_dim=100)
    parser.add_argument("--width", type=common.positive_int, default=32,
                        help="base channel count W: G's last hidden block and D's first have W channels, "
                             "each block nearer 4x4 doubles it (64 is the paper's, 4x the computation)")
    parser.add_argument("--spectral-norm", action=argparse.BooleanOptionalAction, default=True,
                        help="spectral normalisation of D's layers instead of BatchNorm (Miyato et al. 2018); "
                             "--no-spectral-norm: the paper's BatchNorm D")
    parser.set_defaults(label_smoothing=0.1)
    args, checkpoint = common.parse_args(parser, argv)
    if args.img_size not in IMG_SIZES:
        raise common.UserError(f"--img-size {args.img_size}: DCGAN needs a power of two from 16 to 128 "
                               "(16, 32, 64 or 128), since each block doubles the image side from 4x4")
    return args, checkpoint


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
IMG_SIZES = (16, 32, 64, 128)   # 4x4 doubled 2 to 5 times


def n_doublings(img_size):
    """How many stride-2 layers take 4x4 to img_size (2 for 16 px, 4 for 64 px)."""
    if img_size not in IMG_SIZES:
        raise ValueError(f"img_size must be one of {IMG_SIZES}, not {img_size}")
    return img_size.bit_length() - 3


def init_weights(module):
    """The paper's initialisation: weights from N(0, 0.02), BatchNorm scales from N(1, 0.02),
    biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """z (B, latent_dim) -> image (B, channels, img_size, img_size) in [-1, 1].

    For img_size 64 (W = width, C = channels); 32 px has one middle block fewer, 16 px two
    fewer, 128 px one more (starting from 16W):
        z viewed as a 1x1 image                 (B, latent, 1, 1)
        ConvTranspose2d(latent, 8W, 4, 1, 0)    (B, 8W, 4, 4)     BN, ReLU
        ConvTranspose2d(8W, 4W, 4, 2, 1)        (B, 4W, 8, 8)     BN, ReLU
        ConvTranspose2d(4W, 2W, 4, 2, 1)        (B, 2W, 16, 16)   BN, ReLU
        ConvTranspose2d(2W, W, 4, 2, 1)         (B, W, 32, 32)    BN, ReLU
        ConvTranspose2d(W, C, 4, 2, 1)          (B, C, 64, 64)    Tanh, no BN on the output layer
    """

    def __init__(self, latent_dim, channels, img_size, width):
        super().__init__()
        self.latent_dim = latent_dim
        features = width * 2 ** (n_doublings(img_size) - 1)   # the 4x4 block's channels: 8W at 64 px
        # No bias where BatchNorm follows: BN subtracts the mean, so a bias there does nothing.
        layers = [nn.ConvTranspose2d(latent_dim, features, 4, 1, 0, bias=False),  # (B, features, 4, 4)
                  nn.BatchNorm2d(features), nn.ReLU()]
        side = 4
        while side < img_size // 2:
            layers += [nn.ConvTranspose2d(features, features // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(features // 2), nn.ReLU()]   # (B, features/2, 2*side, 2*side)
            features, side = features // 2, side * 2
        # features == width and side == img_size / 2 here.
        layers += [nn.ConvTranspose2d(features, channels, 4, 2, 1),   # (B, C, img_size, img_size)
                   nn.Tanh()]                                          # images live in [-1, 1], like the data
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, z):
        return self.net(z.view(-1, self.latent_dim, 1, 1))


class Discriminator(nn.Module):
    """image (B, channels, img_size, img_size) -> realness logit (B, 1). No sigmoid: the loss
    takes logits.

    For img_size 64 (the mirror image of the generator):
        Conv2d(C, W, 4, 2, 1)       (B, W, 32, 32)    LeakyReLU(0.2), no BN on the input layer
        Conv2d(W, 2W, 4, 2, 1)      (B, 2W, 16, 16)   BN, LeakyReLU(0.2)
        Conv2d(2W, 4W, 4, 2, 1)     (B, 4W, 8, 8)     BN, LeakyReLU(0.2)
        Conv2d(4W, 8W, 4, 2, 1)     (B, 8W, 4, 4)     BN, LeakyReLU(0.2)
        Conv2d(8W, 1, 4, 1, 0)      (B, 1, 1, 1)      the logit, from a convolution over the 4x4 map
    """

    def __init__(self, channels, img_size, width, spectral_norm=True):
        super().__init__()
        self.batch_norm = not spectral_norm   # BatchNorm in D: real and fake need a pass each
        n_doublings(img_size)   # refuses a size the blocks cannot reach 4x4 from
        layers = [nn.Conv2d(channels, width, 4, 2, 1),   # (B, W, img_size/2, img_size/2)
                  nn.LeakyReLU(0.2)]
        features, side = width, img_size // 2
        while side > 4:
            layers += [nn.Conv2d(features, features * 2, 4, 2, 1, bias=spectral_norm),
                       *([] if spectral_norm else [nn.BatchNorm2d(features * 2)]),
                       nn.LeakyReLU(0.2)]   # (B, 2*features, side/2, side/2)
            features, side = features * 2, side // 2
        layers += [nn.Conv2d(features, 1, 4, 1, 0)]     # (B, 1, 1, 1)
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)
        if spectral_norm:   # each weight divided by an estimate of its largest singular value, in place of BatchNorm
            for layer in [m for m in self.modules() if isinstance(m, nn.Conv2d)]:
                nn.utils.parametrizations.spectral_norm(layer)

    def power_iteration(self, on):
        """Spectral norm refines its estimate of each weight's largest singular value on every forward
        pass in train mode; G's update turns that off, so that it runs once per D update."""
        for module in self.modules():
            if isinstance(module, nn.utils.parametrize.ParametrizationList):
                module.train(on)
        return self

    def forward(self, images):
        return self.net(images).flatten(1)   # (B, 1)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
bce = nn.BCEWithLogitsLoss()   # sigmoid + binary cross-entropy in one numerically stable op


def discriminator_targets(batch_size, smoothing, exchange, device):
    """D's BCE targets for real and fake images: 1 and 0, with two optional tricks. One-sided label
    smoothing draws real targets from [1 - smoothing, 1], so D is never pushed to certainty (fake
    targets stay 0: smoothing them would reward G's fakes). Label exchange swaps the two with
    probability `exchange`, a dose of wrong labels that keeps D from winning too fast."""
    real_targets = 1 - smoothing * torch.rand(batch_size, 1, device=device)
    fake_targets = torch.zeros(batch_size, 1, device=device)
    if random.random() < exchange:   # a host-side coin: no GPU sync
        real_targets, fake_targets = fake_targets, real_targets
    return real_targets, fake_targets


# ---------------------------------------------------------------------------------------------
# The training step
# ---------------------------------------------------------------------------------------------
def train_step(real_images, generator, discriminator, opt_g, opt_d, *, latent_dim=100, label_smoothing=0.1,
               label_exchange=0.0):
    """One D update, then one G update, on a batch of real images. Returns the values to log."""
    batch_size, device = real_images.size(0), real_images.device

    # Train D: real images -> real_targets (1), G's images -> fake_targets (0)
    real_targets, fake_targets = discriminator_targets(batch_size, label_smoothing, label_exchange, device)
    fake_images = generator(torch.randn(batch_size, latent_dim, device=device))   # (B, C, H, W)
    fakes = fake_images.detach()                                                  # detach: this update trains D only
    if discriminator.batch_norm:   # a pass for each batch, so that BatchNorm does not mix their statistics
        real_logits, fake_logits = discriminator(real_images), discriminator(fakes)          # (B, 1) each
    else:                          # one pass over both: half the work for the device to launch
        real_logits, fake_logits = discriminator(torch.cat([real_images, fakes])).chunk(2)   # (B, 1) each
    loss_d = bce(real_logits, real_targets) + bce(fake_logits, fake_targets)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    # Train G: make D call G's images real (target 1)
    discriminator.requires_grad_(False).power_iteration(False)   # G needs the gradient at D's input only
    loss_g = bce(discriminator(fake_images), torch.ones_like(real_logits))
    discriminator.requires_grad_(True).power_iteration(True)
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    logged = {"loss_d": loss_d, "loss_g": loss_g, "d_real": real_logits.sigmoid().mean(),
              "d_fake": fake_logits.sigmoid().mean()}
    return {name: value.detach() for name, value in logged.items()}   # values to log, not graphs


def build(args, image_shape, n_classes, device):
    """The networks and optimisers these flags describe (grey or RGB follows the data)."""
    generator = Generator(args.latent_dim, image_shape[0], args.img_size, args.width)
    discriminator = Discriminator(image_shape[0], args.img_size, args.width, args.spectral_norm)
    # channels_last (N, H, W, C in memory): the convolutions' fastest layout on CPUs and GPUs (docs/speed.md)
    generator, discriminator = (net.to(device, memory_format=torch.channels_last) for net in (generator, discriminator))
    opt_g = torch.optim.Adam(generator.parameters(), lr=args.lr, betas=(0.5, 0.999), fused=True)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=args.lr_d or args.lr, betas=(0.5, 0.999), fused=True)
    return generator, discriminator, opt_g, opt_d


def load_generator(path, device="cpu"):
    """The generator that made a run's grids (G's moving average), from its checkpoint.pt or a
    generator_epoch_*.pt snapshot, in eval mode: load_generator(path)(torch.randn(16, 100))."""
    saved = common.load_checkpoint(path, "dcgan")
    a = saved["args"]
    generator = Generator(a["latent_dim"], saved["image_shape"][0], a["img_size"], a["width"])
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
    fixed_noise = torch.randn(64, args.latent_dim, device=device)   # the same z for every grid
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
            for real_images, _ in data.batches(args.batch_size, epoch, args.seed, skip=step % steps):
                with amp:
                    logged = train_step(real_images, generator, discriminator, opt_g, opt_d, **settings)
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
                    common.save_grid(average(fixed_noise), folder, f"epoch_{epoch + 1:03d}.png"
                                     if step % steps == 0 else f"step_{step:07d}.png")
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
