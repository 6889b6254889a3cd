"""Conditional GAN: Mirza and Osindero, "Conditional Generative Adversarial Nets", 2014 (arXiv:1411.1784).

Both networks are told the class y. G turns noise z and a class into an image of that class; D
judges whether an image is a real image *of that class*, so a fake that looks real but does not
match its label is rejected, and after training we choose the class of every sample. The networks
are Keras-GAN's cgan: G multiplies z by a learned embedding of y and runs an MLP 256 -> 512 -> 1024;
D multiplies the flattened image by another embedding of y and runs an MLP 512 x 3 with Dropout.

Where this file departs from the paper (where a flag exists, its other setting is the paper's):
- The class multiplies the input (a learned per-unit gain) instead of being concatenated to it.
- G minimises -log D(G(z, y), y), the non-saturating loss, not log(1 - D(G(z, y), y)).
- --ema 0.9999 and --lr-decay linear, as in gan.py; --label-smoothing and --label-exchange are off.

    python cgan.py --epochs 50                # MNIST, one grid row per class, runs/cgan
    python cgan.py --generate 10000           # labels cycle 0, 1, ..., 9; --label 7 for sevens only
    python evaluate.py runs/cgan --curve      # FD and class accuracy for each snapshot
"""
import random

import torch
import torch.nn as nn

import common
import imagedata


def parse_args(argv=None):
    parser = common.build_parser("cgan", "Conditional GAN (MLP generator and discriminator, both told the class).",
                                 img_size=28, batch_size=64, epochs=50, lr=2e-4, ema=0.9999, conditional=True)
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
    return {"loss_d": loss_d, "loss_g": loss_g, "d_real": real_logits.sigmoid().mean(),
            "d_fake": fake_logits.sigmoid().mean()}


def build(args, image_shape, n_classes, device):
    """The networks and optimisers these flags describe."""
    if n_classes < 2:
        raise common.UserError(f"{args.data_root} holds a single class; a conditional GAN needs at least 2 "
                               "(one sub-folder of images per class)")
    generator = Generator(args.latent_dim, n_classes, image_shape).to(device)
    discriminator = Discriminator(n_classes, image_shape).to(device)
    # fused=True: the same Adam arithmetic in one kernel for all parameters (docs/speed.md)
    opt_g = torch.optim.Adam(generator.parameters(), lr=args.lr, betas=(0.5, 0.999), fused=True)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=args.lr, betas=(0.5, 0.999), fused=True)
    return generator, discriminator, opt_g, opt_d


def load_generator(path, device="cpu"):
    """The generator that made a run's grids (G's moving average), from its checkpoint.pt or a
    generator_epoch_*.pt snapshot, in eval mode: load_generator(path)(torch.randn(10, 100), torch.arange(10))."""
    saved = common.load_checkpoint(path, "cgan")
    generator = Generator(saved["args"]["latent_dim"], saved["n_classes"], saved["image_shape"])
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
    # The same inputs for every grid: row k shows class k, each column one z drawn as every class
    fixed_noise = torch.randn(10, args.latent_dim, device=device).repeat(data.n_classes, 1)   # (K*10, latent)
    fixed_labels = torch.arange(data.n_classes, device=device).repeat_interleave(10)            # (K*10,)
    state = {"generator": generator, "discriminator": discriminator, "opt_g": opt_g, "opt_d": opt_d, "ema": ema,
             "schedule_g": schedules[0], "schedule_d": schedules[1], "fixed_noise": fixed_noise}
    settings = {"latent_dim": args.latent_dim, "label_smoothing": args.label_smoothing,
                "label_exchange": args.label_exchange}   # train_step's flags, by name

    with common.Run(args, data, checkpoint, state, ema.module, (fixed_noise, fixed_labels), nrow=10) as run:
        for epoch in run.epochs():
            for real_images, real_labels in run.batches(epoch):
                # --amp: bfloat16 products; no cast cache, as the step changes the weights between its passes
                with torch.autocast(device.type, torch.bfloat16, enabled=args.amp, cache_enabled=False):
                    logged = train_step(real_images, real_labels, generator, discriminator, opt_g, opt_d, **settings)
                ema.update_parameters(generator)
                for schedule in schedules:
                    schedule.step()
                if run.end_step(epoch, logged):   # logs; True at --max-steps, Ctrl-C or SIGTERM
                    break
            run.end_epoch(epoch)   # grid, snapshot, checkpoint


if __name__ == "__main__":
    common.run_main(main)
