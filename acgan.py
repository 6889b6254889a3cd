"""Auxiliary Classifier GAN: Odena, Olah & Shlens, "Conditional Image Synthesis with Auxiliary
Classifier GANs", ICML 2017 (arXiv:1610.09585).

The generator G is told a class y and turns noise z into an image of that class. The
discriminator D is *not* told the class: it has two heads on one convolutional body, one says
real or fake, the other says which class the image shows. D learns both on real images and
on G's; G is trained to make its images look real *and* be classified as the class it was
asked for. Reconstructing the label (instead of only consuming it, as CGAN does) gives G a
direct, dense signal about the class. The networks are the source document's DCGAN-style
ones, with a width flag: G multiplies z by a learned class embedding, a Linear layer and four
ConvTranspose2d(4, 2, 1) that halve the channels 8W -> 4W -> 2W -> W -> C; D is four
Conv2d(4, 2, 1) C -> W -> 2W -> 4W -> 8W and the two linear heads; weights start from N(0, 0.02).

Two corrections to the source document: (1) its class head ends in a Softmax that is then fed
to CrossEntropyLoss, which applies softmax again; here the class head outputs logits and the
loss is F.cross_entropy. (2) Its prose says real targets are -1 and fake +1, which is not a
valid BCE target; here real = 1 and fake = 0, with BCEWithLogitsLoss on a logit (no Sigmoid).
Label smoothing and label exchange (flags) touch only the real/fake targets, never the classes.

Two changes, measured (README, Results). (1) D's class head learns from real images only, as in
Keras's ACGAN example. The paper (and the document) also train it on G's images with the labels
G was given; early on those images are poor, D learns that G's 7-like 2s are 2s, and G is then
rewarded for drawing them: the confusion feeds itself. At 5 MNIST epochs an MNIST classifier
agreed with the requested class 97.7% of the time with real-only class loss and 94.4% with the
paper's (means over seeds 0, 1, 2); --fake-class-loss gives the paper's loss. (2) One-sided label
smoothing 0.1 (the documents' trick and value) is on by default. Without it D's real/fake head
wins outright after about 6 epochs (mean D(fake) near 0.01) and the samples get worse: FD 11.8,
27.6 and 63.3 after 5, 10 and 20 epochs. With it, 98.0% after 5 epochs (mean over the three
seeds) and FD 8.0, 17.3 and 36.7 after 5, 10 and 20: it slows the decline but does not stop it,
so on MNIST at these widths the most natural digits come after about 5 epochs. --label-smoothing
0 turns it off.

--width 128 at --img-size 64 is the document's network (it trains on 64x64 RGB images of two
classes). The default, --width 16 at --img-size 32, is the same shape scaled down so that an
MNIST epoch takes minutes on a 2-core CPU; on a GPU, try --width 64.

    python acgan.py --epochs 50                        # MNIST at 32x32, grids in runs/acgan
    python acgan.py --dataset folder --data-root my_classes --img-size 64 --width 128   # the document's
    python acgan.py --resume                           # continue the newest run
    python acgan.py --generate 10000 --resume runs/acgan/checkpoint.pt   # labels cycle 0, 1, ..., 9
    python acgan.py --generate 100 --label 7           # only sevens, from the newest run
"""
import math
import random
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

GRID_COLUMNS = 10   # samples per class (per row) in the grids saved while training
DOWNSAMPLING = 16   # four stride-2 layers: H and W must be multiples of 2**4


def parse_args(argv=None):
    parser = common.build_parser("acgan", "Auxiliary Classifier GAN (DCGAN-style networks; D also "
                                 "classifies).", img_size=32, batch_size=64, epochs=50, lr=2e-4, latent_dim=100)
    parser.add_argument("--width", type=common.positive_int, default=16, metavar="W",
                        help="channels: G goes 8W -> 4W -> 2W -> W -> C, D goes C -> W -> ... -> 8W "
                             "(the source document's network is 128, at --img-size 64)")
    parser.add_argument("--fake-class-loss", action="store_true",
                        help="also train D's class head on G's images, with the labels G was given, as the "
                             "paper does (off by default: it lets D learn G's mistakes; see the docstring)")
    # One-sided label smoothing on by default here (the source documents' 0.1): without it D's
    # real/fake head overpowers G after about 6 MNIST epochs and the samples get worse (README, Results).
    parser.set_defaults(label_smoothing=0.1)
    parser.add_argument("--label", type=int, default=None, metavar="K",
                        help="with --generate: only class K (0-based); without it the labels cycle through the classes")
    given = parser.parse_args(argv)   # --label only makes sense when generating: refuse it early
    if given.label is not None and given.generate is None:
        raise common.UserError("--label K chooses the class of generated samples: use it with --generate N")
    if given.img_size % DOWNSAMPLING:
        raise common.UserError(f"--img-size {given.img_size} is not a multiple of {DOWNSAMPLING} (the networks "
                               "halve it four times); use e.g. 32 or 64")
    return common.parse_args(parser, argv, generate_may_change=("label",))


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
def init_weights(module):
    """The source document's (and DCGAN's) start: conv/linear weights N(0, 0.02), BatchNorm
    weights 1, all biases 0. The class embedding keeps PyTorch's N(0, 1), as in the document."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """z (B, latent_dim) and labels (B,) -> image (B, C, H, W) in [-1, 1]. H, W multiples of 16."""

    def __init__(self, latent_dim, n_classes, image_shape, width):
        super().__init__()
        channels, height, breadth = image_shape
        self.start_shape = (8 * width, height // DOWNSAMPLING, breadth // DOWNSAMPLING)
        # The class multiplies the noise, as in the document: a learned per-class gain on z.
        self.label_embedding = nn.Embedding(n_classes, latent_dim)
        self.project = nn.Linear(latent_dim, 8 * width * self.start_shape[1] * self.start_shape[2])

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
    """image (B, C, H, W) -> (realness logit (B, 1), class logits (B, n_classes)).

    Both heads output logits: the losses apply the sigmoid / softmax themselves."""

    def __init__(self, n_classes, image_shape, width):
        super().__init__()
        channels, height, breadth = image_shape

        def down(n_in, n_out, batch_norm=True):   # halves H and W
            return [nn.Conv2d(n_in, n_out, 4, 2, 1), *([nn.BatchNorm2d(n_out)] if batch_norm else []),
                    nn.LeakyReLU(0.2)]

        self.net = nn.Sequential(
            *down(channels, width, batch_norm=False),   # (B, W, H/2, W/2): no BatchNorm on the input layer
            *down(width, 2 * width),                    # (B, 2W, H/4, W/4)
            *down(2 * width, 4 * width),                # (B, 4W, H/8, W/8)
            *down(4 * width, 8 * width),                # (B, 8W, H/16, W/16)
            nn.Flatten(),                               # (B, 8W * H/16 * W/16)
        )
        n_features = 8 * width * (height // DOWNSAMPLING) * (breadth // DOWNSAMPLING)
        self.realness_head = nn.Linear(n_features, 1)          # (B, 1)
        self.class_head = nn.Linear(n_features, n_classes)     # (B, n_classes)
        self.apply(init_weights)

    def forward(self, images):
        features = self.net(images)
        return self.realness_head(features), self.class_head(features)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def discriminator_targets(batch_size, smoothing, exchange, device):
    """BCE targets for D's real/fake head, with the source document's two tricks.

    One-sided label smoothing: real targets are drawn from [1 - smoothing, 1], so D is never
    pushed to be certain; fake targets stay exactly 0 (smoothing them too would reward G's
    fakes). Label exchange: with probability `exchange` the two are swapped for this step, a
    small dose of wrong labels that keeps D from winning too fast. Neither trick touches the
    class targets: a real 7 is a 7 whatever the real/fake head is told this step."""
    real_targets = 1 - smoothing * torch.rand(batch_size, 1, device=device)
    fake_targets = torch.zeros(batch_size, 1, device=device)
    if random.random() < exchange:   # a host-side coin: no GPU sync
        real_targets, fake_targets = fake_targets, real_targets
    return real_targets, fake_targets


bce = nn.BCEWithLogitsLoss()   # sigmoid + binary cross-entropy in one numerically stable op


def class_loss(class_logits, labels):
    """Cross-entropy of the class head. It takes raw logits: F.cross_entropy applies log-softmax
    itself, so a Softmax in front of it (the source document's) would squash the logits twice
    and the loss could never approach 0."""
    return F.cross_entropy(class_logits, labels)


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
        raise common.UserError(f"--data-root {args.data_root} holds a single class; ACGAN needs at least 2 "
                               "(one sub-folder of images per class)")


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
        generator = Generator(args.latent_dim, n_classes, checkpoint["image_shape"], args.width).to(device)
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
    generator = Generator(args.latent_dim, n_classes, data.shape, args.width).to(device)
    discriminator = Discriminator(n_classes, data.shape, args.width).to(device)
    # fused=True: the same Adam arithmetic in one kernel for all parameters instead of many small
    # ops per tensor. No measurable gain here on a CPU, where the convolutions dominate; 1.14-1.34x for
    # the MLP scripts (README, Speed benchmark).
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
            "script": "acgan", "args": vars(args), "step": step, "epoch": step // steps_per_epoch,
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
    # acc_real: how often D's class head names the right class of a real image; acc_fake: how
    # often it names the class G was asked for (G following its label).
    log = common.LossLog(run_dir, ["loss_d", "loss_g", "d_real", "d_fake", "acc_real", "acc_fake"],
                         step, last_step, args.batch_size)
    stop = common.StopRequest()
    try:
        for epoch in range(step // steps_per_epoch, args.epochs):
            if step >= last_step:
                break
            batches = data.batches(args.batch_size, epoch, args.seed, skip=step % steps_per_epoch)
            for real_images, real_labels in batches:
                batch_size = real_images.size(0)

                # ---------------------------------------------------------------------------
                # Train the discriminator: real images -> real_targets and their classes,
                # G's images -> fake_targets (and, with --fake-class-loss, G's labels)
                # ---------------------------------------------------------------------------
                real_targets, fake_targets = discriminator_targets(
                    batch_size, args.label_smoothing, args.label_exchange, device)
                z = torch.randn(batch_size, args.latent_dim, device=device)
                fake_labels = torch.randint(0, n_classes, (batch_size,), device=device)
                fake_images = generator(z, fake_labels)                                 # (B, C, H, W)
                real_logits, real_class_logits = discriminator(real_images)             # (B, 1), (B, K)
                fake_logits, fake_class_logits = discriminator(fake_images.detach())    # detach: D only
                loss_d = (bce(real_logits, real_targets) + class_loss(real_class_logits, real_labels)
                          + bce(fake_logits, fake_targets))
                if args.fake_class_loss:   # the paper's: D also learns to name the class G was asked for
                    loss_d = loss_d + class_loss(fake_class_logits, fake_labels)
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()

                # ---------------------------------------------------------------------------
                # Train the generator: make D call the fakes real (target 1) and of their class
                # ---------------------------------------------------------------------------
                g_logits, g_class_logits = discriminator(fake_images)
                loss_g = (bce(g_logits, torch.ones(batch_size, 1, device=device))
                          + class_loss(g_class_logits, fake_labels))
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()

                step += 1
                log.update(loss_d, loss_g, real_logits.sigmoid().mean(), fake_logits.sigmoid().mean(),
                           (real_class_logits.argmax(1) == real_labels).float().mean(),
                           (fake_class_logits.argmax(1) == fake_labels).float().mean())
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
                print(f"stopped at step {step}; continue with: python acgan.py --resume {run_dir / 'checkpoint.pt'}")
                break
    finally:
        stop.close()
    print(f"done: {step} steps; samples, losses.csv and checkpoint.pt in {run_dir}")


if __name__ == "__main__":
    common.run_main(main)
