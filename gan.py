"""Vanilla GAN: Goodfellow et al., "Generative Adversarial Networks", NeurIPS 2014 (arXiv:1406.2661).

Two networks play a game. The generator G turns noise z into an image; the discriminator D gives a
logit saying how real an image looks. D learns to tell real images (target 1) from G's (target 0),
and G learns to make D call its images real. Both are MLPs on flattened images.

Where this file departs from the paper (where a flag exists, its other setting is the paper's):
- G minimises -log D(G(z)), the non-saturating loss the paper suggests, not log(1 - D(G(z))).
- --ema 0.9999: grids and samples come from a moving average of G's weights, steadier than G itself.
- --lr-decay linear: the rates fall to 0 over 50 epochs, so late epochs refine; a shorter run is
  the start of the 50-epoch run, step for step, so it ends as good as that run is at its epoch.
- --label-smoothing S and --label-exchange P: two training tricks, off by default.

    python gan.py --epochs 50                 # MNIST: grids, snapshots and checkpoint.pt in runs/gan
    python gan.py --resume                    # continue the newest run
    python gan.py --generate 10000            # samples from the newest run
    python evaluate.py runs/gan --curve       # FD for each snapshot
"""
import random

import torch
import torch.nn as nn

import common
import imagedata


def parse_args(argv=None):
    parser = common.build_parser("gan", "Vanilla GAN (MLP generator and discriminator).",
                                 img_size=28, batch_size=64, epochs=50, lr=2e-4, ema=0.9999)
    return common.parse_args(parser, argv)


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
class Generator(nn.Module):
    """z (B, latent_dim) -> image (B, C, H, W) in [-1, 1]."""

    def __init__(self, latent_dim, image_shape):
        super().__init__()
        self.image_shape = tuple(image_shape)

        def block(n_in, n_out):
            return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.LeakyReLU(0.2)]

        self.net = nn.Sequential(
            *block(latent_dim, 256),                          # (B, 256)
            *block(256, 512),                                 # (B, 512)
            *block(512, 1024),                                # (B, 1024)
            nn.Linear(1024, int(torch.tensor(image_shape).prod())),   # (B, C*H*W)
            nn.Tanh(),                                        # images live in [-1, 1], like the data
        )

    def forward(self, z):
        return self.net(z).view(-1, *self.image_shape)


class Discriminator(nn.Module):
    """image (B, C, H, W) -> realness logit (B, 1). No sigmoid: the loss takes logits."""

    def __init__(self, image_shape):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(int(torch.tensor(image_shape).prod()), 512), nn.LeakyReLU(0.2),   # (B, 512)
            nn.Linear(512, 256), nn.LeakyReLU(0.2),                                     # (B, 256)
            nn.Linear(256, 1),                                                          # (B, 1)
        )

    def forward(self, images):
        return self.net(images.flatten(1))


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
def train_step(real_images, generator, discriminator, opt_g, opt_d, *, latent_dim=100, label_smoothing=0.0,
               label_exchange=0.0):
    """One D update, then one G update, on a batch of real images. Returns the values to log."""
    batch_size, device = real_images.size(0), real_images.device

    # Train D: real images -> real_targets (1), G's images -> fake_targets (0)
    real_targets, fake_targets = discriminator_targets(batch_size, label_smoothing, label_exchange, device)
    fake_images = generator(torch.randn(batch_size, latent_dim, device=device))   # (B, C, H, W)
    both = torch.cat([real_images, fake_images.detach()])   # detach: this update trains D only
    real_logits, fake_logits = discriminator(both).chunk(2)   # (B, 1) each: one pass, as D has no BatchNorm
    loss_d = bce(real_logits, real_targets) + bce(fake_logits, fake_targets)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    # Train G: make D call G's images real (target 1)
    discriminator.requires_grad_(False)   # G needs the gradient at D's input, not D's weight gradients
    loss_g = bce(discriminator(fake_images), torch.ones_like(real_logits))
    discriminator.requires_grad_(True)
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    return {"loss_d": loss_d, "loss_g": loss_g, "d_real": real_logits.sigmoid().mean(),
            "d_fake": fake_logits.sigmoid().mean()}


def build(args, image_shape, n_classes, device):
    """The networks and optimisers these flags describe."""
    generator = Generator(args.latent_dim, image_shape).to(device)
    discriminator = Discriminator(image_shape).to(device)
    # fused=True: the same Adam arithmetic in one kernel for all parameters (docs/speed.md)
    opt_g = torch.optim.Adam(generator.parameters(), lr=args.lr, betas=(0.5, 0.999), fused=True)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=args.lr, betas=(0.5, 0.999), fused=True)
    return generator, discriminator, opt_g, opt_d


def load_generator(path, device="cpu"):
    """The generator that made a run's grids (G's moving average), from its checkpoint.pt or a
    generator_epoch_*.pt snapshot, in eval mode: load_generator(path)(torch.randn(16, 100))."""
    saved = common.load_checkpoint(path, "gan")
    generator = Generator(saved["args"]["latent_dim"], saved["image_shape"])
    generator.load_state_dict(saved["sampler"])
    return generator.to(device).eval()


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------
def main(argv=None):
    args, checkpoint = parse_args(argv)
    device = common.pick_device(args.device)
    common.seed_everything(args.seed)
    if args.generate:   # no training: samples from a checkpoint or snapshot
        return common.generate(load_generator(args.resume, device), args, checkpoint)

    data = imagedata.load_data(args, device)   # decoded once; batches are cut on the device
    generator, discriminator, opt_g, opt_d = build(args, data.shape, data.n_classes, device)
    # Grids, snapshots and --generate use a moving average of G's weights and BatchNorm statistics
    ema = common.EMA(generator, args.ema)
    common.compile_networks(args, device, generator, discriminator)   # --compile
    steps = data.steps_per_epoch(args.batch_size)   # a short run follows the default run's schedule
    decay = common.lr_factor(args, total_steps=steps * args.epochs, default_steps=steps * args.default_epochs)
    schedules = [torch.optim.lr_scheduler.LambdaLR(optimiser, decay) for optimiser in (opt_g, opt_d)]
    fixed_noise = torch.randn(64, args.latent_dim, device=device)   # the same z for every grid
    state = {"generator": generator, "discriminator": discriminator, "opt_g": opt_g, "opt_d": opt_d,
             "ema": ema, "schedule_g": schedules[0], "schedule_d": schedules[1], "fixed_noise": fixed_noise}
    settings = {"latent_dim": args.latent_dim, "label_smoothing": args.label_smoothing,
                "label_exchange": args.label_exchange}   # train_step's flags, by name

    with common.Run(args, data, checkpoint, state, ema.module, (fixed_noise,)) as run:   # restores a --resume
        for epoch in run.epochs():
            for real_images, _ in run.batches(epoch):
                # --amp: bfloat16 products; no cast cache, as the step changes the weights between its passes
                with torch.autocast(device.type, torch.bfloat16, enabled=args.amp, cache_enabled=False):
                    logged = train_step(real_images, generator, discriminator, opt_g, opt_d, **settings)
                ema.update_parameters(generator)
                for schedule in schedules:
                    schedule.step()
                if run.end_step(epoch, logged):   # logs; True at --max-steps, Ctrl-C or SIGTERM
                    break
            run.end_epoch(epoch)   # grid, snapshot, checkpoint


if __name__ == "__main__":
    common.run_main(main)
