"""Conditional GAN: Mirza & Osindero, "Conditional Generative Adversarial Nets", 2014 (arXiv:1411.1784).

A GAN whose two networks are both told the class y. The generator G turns noise z and a class
into an image of that class; the discriminator D judges whether an image is a real image *of
that class*. A fake that looks real but does not match its label is rejected, so G has to
follow the label, and after training we choose the class of every sample. The networks are the
source document's (Keras-GAN's cgan): G multiplies z by a learned embedding of y and runs an
MLP 256 -> 512 -> 1024 (LeakyReLU, then BatchNorm), D multiplies the flattened image by
another embedding of y and runs an MLP 512 -> 512 -> 512 with Dropout, one logit. Losses and
the two label tricks (flags) are gan.py's.

    python cgan.py --epochs 50                        # MNIST, class-ordered grids in runs/cgan
    python cgan.py --resume                           # continue the newest run
    python cgan.py --generate 10000 --resume runs/cgan/checkpoint.pt   # labels cycle 0, 1, ..., 9
    python cgan.py --generate 100 --label 7           # only sevens, from the newest run
"""
import math
import random
from pathlib import Path

import torch
import torch.nn as nn

import common

GRID_COLUMNS = 10   # samples per class (per row) in the grids saved while training


def parse_args(argv=None):
    parser = common.build_parser("cgan", "Conditional GAN (MLP generator and discriminator, "
                                 "both conditioned on the class).",
                                 img_size=28, batch_size=64, epochs=50, lr=2e-4, latent_dim=100)
    parser.add_argument("--label", type=int, default=None, metavar="K",
                        help="with --generate: only class K (0-based); without it the labels cycle through the classes")
    given = parser.parse_args(argv)   # --label only makes sense when generating: refuse it early
    if given.label is not None and given.generate is None:
        raise common.UserError("--label K chooses the class of generated samples: use it with --generate N")
    return common.parse_args(parser, argv, generate_may_change=("label",))


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
# How the class enters both networks: the source document *multiplies* a learned embedding of
# the label into the input (noise for G, pixels for D). Each class becomes a learned per-unit
# gain on the input: the input keeps its size and every input unit is modulated by the class,
# so neither network can learn to ignore it. The paper itself, and most PyTorch ports,
# *concatenate* the label (one-hot or embedding) to the input instead, which adds input units
# that the first layer may weigh as little as it likes. Both work on MNIST; we keep the
# document's choice.
class Generator(nn.Module):
    """z (B, latent_dim) and labels (B,) -> image (B, C, H, W) in [-1, 1]."""

    def __init__(self, latent_dim, n_classes, image_shape):
        super().__init__()
        self.image_shape = tuple(image_shape)
        n_pixels = int(torch.tensor(image_shape).prod())
        self.label_embedding = nn.Embedding(n_classes, latent_dim)

        def block(n_in, n_out):
            # Keras order (activation, then BatchNorm). Keras' momentum=0.8 weighs the *old*
            # running average by 0.8; PyTorch's momentum weighs the *new* batch, hence 0.2.
            return [nn.Linear(n_in, n_out), nn.LeakyReLU(0.2), nn.BatchNorm1d(n_out, momentum=0.2)]

        self.net = nn.Sequential(
            *block(latent_dim, 256),            # (B, 256)
            *block(256, 512),                   # (B, 512)
            *block(512, 1024),                  # (B, 1024)
            nn.Linear(1024, n_pixels),          # (B, C*H*W)
            nn.Tanh(),                          # images live in [-1, 1], like the data
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
def discriminator_targets(batch_size, smoothing, exchange, device):
    """BCE targets for D's real and fake halves, with the source document's two tricks.

    One-sided label smoothing: real targets are drawn from [1 - smoothing, 1], so D is never
    pushed to be certain; fake targets stay exactly 0 (smoothing them too would reward G's
    fakes). Label exchange: with probability `exchange` the two are swapped for this step, a
    small dose of wrong labels that keeps D from winning too fast. The class labels fed to
    both networks are never touched."""
    real_targets = 1 - smoothing * torch.rand(batch_size, 1, device=device)
    fake_targets = torch.zeros(batch_size, 1, device=device)
    if random.random() < exchange:   # a host-side coin: no GPU sync
        real_targets, fake_targets = fake_targets, real_targets
    return real_targets, fake_targets


bce = nn.BCEWithLogitsLoss()   # sigmoid + binary cross-entropy in one numerically stable op


# ---------------------------------------------------------------------------------------------
# Class-ordered samples
# ---------------------------------------------------------------------------------------------
def class_ordered_samples(n_classes, columns, latent_dim, device):
    """Fixed inputs for the grids: row k holds `columns` samples of class k. Every row uses the
    same `columns` noise vectors, so a column shows one z drawn as each class in turn."""
    noise = torch.randn(columns, latent_dim, device=device).repeat(n_classes, 1)      # (K*cols, latent)
    labels = torch.arange(n_classes, device=device).repeat_interleave(columns)        # (K*cols,)
    return noise, labels


def generated_labels(n, n_classes, label, device):
    """Labels for --generate: class `label` only, or 0, 1, ..., K-1, 0, 1, ... (balanced)."""
    if label is not None:
        return torch.full((n,), label, dtype=torch.long, device=device)
    return torch.arange(n, device=device) % n_classes


def grid_columns(n_classes, label):
    """Columns of generated.png: a multiple of the class count, so each column is one class."""
    return 10 if label is not None else n_classes * max(1, 10 // n_classes)


def check_classes(n_classes, args):
    if n_classes < 2:
        raise common.UserError(f"--data-root {args.data_root} holds a single class; a conditional GAN needs "
                               "at least 2 (one sub-folder of images per class)")


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def main(argv=None):
    args, checkpoint = parse_args(argv)
    device = common.pick_device(args.device)
    common.seed_everything(args.seed)

    if args.generate:
        n_classes = checkpoint["n_classes"]
        if args.label is not None and not 0 <= args.label < n_classes:
            raise common.UserError(f"--label {args.label}: the run's data has {n_classes} classes, "
                                   f"0 to {n_classes - 1} ({', '.join(checkpoint['class_names'])})")
        generator = Generator(args.latent_dim, n_classes, checkpoint["image_shape"]).to(device)
        common.load_weights(generator, checkpoint["generator"], "generator")
        generator.eval()   # BatchNorm uses its running statistics, not this batch's
        with torch.no_grad():
            labels = generated_labels(args.generate, n_classes, args.label, device)
            z = torch.randn(args.generate, args.latent_dim, device=device)
            images = torch.cat([generator(z_chunk, label_chunk)
                                for z_chunk, label_chunk in zip(z.split(1000), labels.split(1000))])
        common.save_generated(args.out, images, labels, nrow=grid_columns(n_classes, args.label))
        return

    # Data: decoded once, batches are cut on the device. Loaded before the run folder is made,
    # so a data error leaves nothing behind.
    data = common.load_data(args, device)
    check_classes(data.n_classes, args)
    n_classes = data.n_classes
    if checkpoint and checkpoint["n_classes"] != n_classes:
        raise common.UserError(f"the data has {n_classes} classes; the run was trained on {checkpoint['n_classes']}")
    run_dir = Path(args.out) if checkpoint else common.new_run_folder(args.out)
    print(f"run folder: {run_dir}", flush=True)

    # Networks and optimisers
    generator = Generator(args.latent_dim, n_classes, data.shape).to(device)
    discriminator = Discriminator(n_classes, data.shape).to(device)
    # fused=True: the same Adam arithmetic in one kernel for all parameters instead of many small
    # ops per tensor: 1.28x faster steps here on a CPU (README, Speed benchmark).
    opt_g = torch.optim.Adam(generator.parameters(), lr=args.lr, betas=(0.5, 0.999), fused=True)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=args.lr, betas=(0.5, 0.999), fused=True)
    # The same z and labels for every grid: one row per class
    fixed_noise, fixed_labels = class_ordered_samples(n_classes, GRID_COLUMNS, args.latent_dim, device)
    step = 0
    if checkpoint:
        common.load_weights(generator, checkpoint["generator"], "generator")
        common.load_weights(discriminator, checkpoint["discriminator"], "discriminator")
        opt_g.load_state_dict(checkpoint["opt_g"])
        opt_d.load_state_dict(checkpoint["opt_d"])
        fixed_noise = checkpoint["fixed_noise"].to(device)
        fixed_labels = checkpoint["fixed_labels"].to(device)
        step = checkpoint["step"]
        common.set_rng_state(checkpoint["rng"])
        print(f"resumed at step {step} from {run_dir / 'checkpoint.pt'}")

    def save_checkpoint():
        common.save_checkpoint(run_dir / "checkpoint.pt", {
            "script": "cgan", "args": vars(args), "step": step, "epoch": step // steps_per_epoch,
            "image_shape": data.shape, "generator": generator.state_dict(),
            "discriminator": discriminator.state_dict(), "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(), "fixed_noise": fixed_noise,
            "n_classes": n_classes, "fixed_labels": fixed_labels, "class_names": data.class_names,
        })

    def save_samples(name):
        generator.eval()
        with torch.no_grad():
            common.save_grid(generator(fixed_noise, fixed_labels), run_dir / name, nrow=GRID_COLUMNS)
        generator.train()

    steps_per_epoch = data.steps_per_epoch(args.batch_size)
    last_step = min(args.max_steps or math.inf, steps_per_epoch * args.epochs)
    log = common.LossLog(run_dir, ["loss_d", "loss_g", "d_real", "d_fake"], step, last_step, args.batch_size)
    stop = common.StopRequest()
    try:
        for epoch in range(step // steps_per_epoch, args.epochs):
            if step >= last_step:
                break
            batches = data.batches(args.batch_size, epoch, args.seed, skip=step % steps_per_epoch)
            for real_images, real_labels in batches:
                batch_size = real_images.size(0)

                # ---------------------------------------------------------------------------
                # Train the discriminator: (real image, its label) -> real_targets,
                # (G's image, the label G was asked for) -> fake_targets
                # ---------------------------------------------------------------------------
                real_targets, fake_targets = discriminator_targets(
                    batch_size, args.label_smoothing, args.label_exchange, device)
                z = torch.randn(batch_size, args.latent_dim, device=device)
                fake_labels = torch.randint(0, n_classes, (batch_size,), device=device)
                fake_images = generator(z, fake_labels)                          # (B, C, H, W)
                real_logits = discriminator(real_images, real_labels)            # (B, 1)
                # The fakes are judged with the labels they were generated from: D must learn
                # "a real image of this class", and G gets credit only for matching its label.
                fake_logits = discriminator(fake_images.detach(), fake_labels)   # detach: D only
                loss_d = bce(real_logits, real_targets) + bce(fake_logits, fake_targets)
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()

                # ---------------------------------------------------------------------------
                # Train the generator: make D call the fakes real images of their labels (target 1)
                # ---------------------------------------------------------------------------
                loss_g = bce(discriminator(fake_images, fake_labels), torch.ones(batch_size, 1, device=device))
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
                print(f"stopped at step {step}; continue with: python cgan.py --resume {run_dir / 'checkpoint.pt'}")
                break
    finally:
        stop.close()
    print(f"done: {step} steps; samples, losses.csv and checkpoint.pt in {run_dir}")


if __name__ == "__main__":
    common.run_main(main)
