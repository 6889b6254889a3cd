"""Vanilla GAN: Goodfellow et al., "Generative Adversarial Networks", 2014 (arXiv:1406.2661).

Two networks play a game. The generator G turns noise z into an image; the discriminator D
outputs a logit that says how real an image looks. D is trained to tell real images (target 1)
from G's (target 0); G is trained to make D call its images real. We use the non-saturating
generator loss of the paper (G maximises log D(G(z)) rather than minimising log(1 - D(G(z))),
which gives G useful gradients early on, when D rejects its images easily). Both networks are
plain MLPs on flattened images. Two tricks from the source document are flags: one-sided label
smoothing and label exchange (see discriminator_targets).

    python gan.py --epochs 50                      # MNIST, grids and checkpoints in runs/gan
    python gan.py --resume                         # continue the newest run
    python gan.py --generate 10000 --resume runs/gan/checkpoint.pt
"""
import math
import random
from pathlib import Path

import torch
import torch.nn as nn

import common


def parse_args(argv=None):
    parser = common.build_parser("gan", "Vanilla GAN (MLP generator and discriminator).",
                                 img_size=28, batch_size=64, epochs=50, lr=2e-4, latent_dim=100)
    return common.parse_args(parser, argv)


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
class Generator(nn.Module):
    """z (B, latent_dim) -> image (B, C, H, W) in [-1, 1]."""

    def __init__(self, latent_dim, image_shape):
        super().__init__()
        self.image_shape = tuple(image_shape)
        n_pixels = int(torch.tensor(image_shape).prod())

        def block(n_in, n_out):
            return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.LeakyReLU(0.2)]

        self.net = nn.Sequential(
            *block(latent_dim, 256),            # (B, 256)
            *block(256, 512),                   # (B, 512)
            *block(512, 1024),                  # (B, 1024)
            nn.Linear(1024, n_pixels),          # (B, C*H*W)
            nn.Tanh(),                          # images live in [-1, 1], like the data
        )

    def forward(self, z):
        return self.net(z).view(-1, *self.image_shape)


class Discriminator(nn.Module):
    """image (B, C, H, W) -> realness logit (B, 1). No sigmoid: the loss takes logits."""

    def __init__(self, image_shape):
        super().__init__()
        n_pixels = int(torch.tensor(image_shape).prod())
        self.net = nn.Sequential(
            nn.Linear(n_pixels, 512), nn.LeakyReLU(0.2),   # (B, 512)
            nn.Linear(512, 256), nn.LeakyReLU(0.2),        # (B, 256)
            nn.Linear(256, 1),                             # (B, 1)
        )

    def forward(self, images):
        return self.net(images.flatten(1))


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def discriminator_targets(batch_size, smoothing, exchange, device):
    """BCE targets for D's real and fake halves, with the source document's two tricks.

    One-sided label smoothing: real targets are drawn from [1 - smoothing, 1], so D is never
    pushed to be certain; fake targets stay exactly 0 (smoothing them too would reward G's
    fakes). Label exchange: with probability `exchange` the two are swapped for this step, a
    small dose of wrong labels that keeps D from winning too fast."""
    real_targets = 1 - smoothing * torch.rand(batch_size, 1, device=device)
    fake_targets = torch.zeros(batch_size, 1, device=device)
    if random.random() < exchange:   # a host-side coin: no GPU sync
        real_targets, fake_targets = fake_targets, real_targets
    return real_targets, fake_targets


bce = nn.BCEWithLogitsLoss()   # sigmoid + binary cross-entropy in one numerically stable op


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def main(argv=None):
    args, checkpoint = parse_args(argv)
    device = common.pick_device(args.device)
    common.seed_everything(args.seed)

    if args.generate:
        generator = Generator(args.latent_dim, checkpoint["image_shape"]).to(device)
        common.load_weights(generator, checkpoint["generator"], "generator")
        generator.eval()   # BatchNorm uses its running statistics, not this batch's
        with torch.no_grad():
            z = torch.randn(args.generate, args.latent_dim, device=device)
            images = torch.cat([generator(chunk) for chunk in z.split(1000)])
        common.save_generated(args.out, images)
        return

    # Data: decoded once, batches are cut on the device. Loaded before the run folder is made,
    # so a data error leaves nothing behind.
    data = common.load_data(args, device)
    run_dir = Path(args.out) if checkpoint else common.new_run_folder(args.out)
    print(f"run folder: {run_dir}", flush=True)

    # Networks and optimisers
    generator = Generator(args.latent_dim, data.shape).to(device)
    discriminator = Discriminator(data.shape).to(device)
    # fused=True: the same Adam arithmetic in one kernel for all parameters instead of many small
    # ops per tensor: 1.34x faster steps here on a CPU (README, Speed benchmark).
    opt_g = torch.optim.Adam(generator.parameters(), lr=args.lr, betas=(0.5, 0.999), fused=True)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=args.lr, betas=(0.5, 0.999), fused=True)
    fixed_noise = torch.randn(64, args.latent_dim, device=device)   # the same z for every grid
    step = 0
    if checkpoint:
        common.load_weights(generator, checkpoint["generator"], "generator")
        common.load_weights(discriminator, checkpoint["discriminator"], "discriminator")
        opt_g.load_state_dict(checkpoint["opt_g"])
        opt_d.load_state_dict(checkpoint["opt_d"])
        fixed_noise = checkpoint["fixed_noise"].to(device)
        step = checkpoint["step"]
        common.set_rng_state(checkpoint["rng"])
        print(f"resumed at step {step} from {run_dir / 'checkpoint.pt'}")

    def save_checkpoint():
        common.save_checkpoint(run_dir / "checkpoint.pt", {
            "script": "gan", "args": vars(args), "step": step, "epoch": step // steps_per_epoch,
            "image_shape": data.shape, "generator": generator.state_dict(),
            "discriminator": discriminator.state_dict(), "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(), "fixed_noise": fixed_noise,
        })

    def save_samples(name):
        generator.eval()
        with torch.no_grad():
            common.save_grid(generator(fixed_noise), run_dir / name)
        generator.train()

    steps_per_epoch = data.steps_per_epoch(args.batch_size)
    last_step = min(args.max_steps or math.inf, steps_per_epoch * args.epochs)
    log = common.LossLog(run_dir, ["loss_d", "loss_g", "d_real", "d_fake"], step, last_step, args.batch_size)
    stop = common.StopRequest()
    try:
        for epoch in range(step // steps_per_epoch, args.epochs):
            if step >= last_step:
                break
            for real_images, _ in data.batches(args.batch_size, epoch, args.seed, skip=step % steps_per_epoch):
                batch_size = real_images.size(0)

                # ---------------------------------------------------------------------------
                # Train the discriminator: real images -> real_targets, G's images -> fake_targets
                # ---------------------------------------------------------------------------
                real_targets, fake_targets = discriminator_targets(
                    batch_size, args.label_smoothing, args.label_exchange, device)
                z = torch.randn(batch_size, args.latent_dim, device=device)
                fake_images = generator(z)                          # (B, C, H, W)
                real_logits = discriminator(real_images)            # (B, 1)
                fake_logits = discriminator(fake_images.detach())   # detach: this step trains D only
                loss_d = bce(real_logits, real_targets) + bce(fake_logits, fake_targets)
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()

                # ---------------------------------------------------------------------------
                # Train the generator: make D call the fakes real (non-saturating loss, target 1)
                # ---------------------------------------------------------------------------
                loss_g = bce(discriminator(fake_images), torch.ones(batch_size, 1, device=device))
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()

                step += 1
                log.update(loss_d, loss_g, real_logits.sigmoid().mean(), fake_logits.sigmoid().mean())
                if step % args.log_every == 0:
                    log.write(step, epoch, args.epochs)
                if args.sample_every and step % args.sample_every == 0:
                    save_samples(f"step_{step:07d}.png")
                if step >= last_step or stop.requested:
                    break

            # End of the epoch (or of the run): log, grid, checkpoint
            log.write(step, epoch, args.epochs)   # stops the run on NaN, before the checkpoint
            if step % steps_per_epoch == 0:
                save_samples(f"epoch_{epoch + 1:03d}.png")
                common.save_progress_gif(run_dir)
            else:
                save_samples(f"step_{step:07d}.png")
            save_checkpoint()
            log.start_clock(step)
            if stop.requested:
                print(f"stopped at step {step}; continue with: python gan.py --resume {run_dir / 'checkpoint.pt'}")
                break
    finally:
        stop.close()
    print(f"done: {step} steps; samples, losses.csv and checkpoint.pt in {run_dir}")


if __name__ == "__main__":
    common.run_main(main)
