"""DCGAN: Radford, Metz and Chintala, "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks", 2015 (arXiv:1511.06434).

The GAN game of gan.py (D tells real images from G's, G tries to make D call its images real,
non-saturating G loss) played by two convolutional networks built to the paper's architecture
guidelines, which are what made GAN training stable enough to scale: no pooling (D downsamples
with strided convolutions, G upsamples with transposed ones); no fully connected hidden layers
(G starts from z as a 1x1 image with a transposed convolution, D ends in a convolution to one
logit); BatchNorm in every layer except G's output layer and D's input layer; ReLU in G with a
Tanh output, LeakyReLU(0.2) in D; weights drawn from N(0, 0.02); Adam(2e-4, betas (0.5, 0.999))
with batch 128. Each block doubles (G) or halves (D) the image side, so --img-size (16, 32, 64
or 128; 64 is the paper's) sets the number of blocks. --width W is the channel count of the
highest-resolution hidden block, doubling towards 4x4: 64, the paper's, by default. --width 32
costs a quarter of the computation (an MNIST epoch in about 1 minute on one CPU core instead
of 3) but draws the digits less evenly after 5 epochs (README, Results). Grey or RGB follows the
dataset. One-sided label smoothing and label exchange are flags, as in gan.py.

    python dcgan.py                                # MNIST at 32x32, 25 epochs, runs/dcgan
    python dcgan.py --epochs 5 --width 32          # a quicker CPU run
    python dcgan.py --dataset cifar10 --device cuda
    python dcgan.py --dataset folder --data-root data/celeba --img-size 64 --device cuda
    python dcgan.py --resume                       # continue the newest run
    python dcgan.py --generate 10000 --resume runs/dcgan/checkpoint.pt

The folder command is the paper's faces setting: a folder of face images such as CelebA's
img_align_celeba/ (images directly in it are fine; labels are not used).
"""
import math
import random
from pathlib import Path

import torch
import torch.nn as nn

import common

IMG_SIZES = (16, 32, 64, 128)   # 4x4 doubled 2 to 5 times


def parse_args(argv=None):
    parser = common.build_parser("dcgan", "DCGAN (convolutional generator and discriminator).",
                                 img_size=32, batch_size=128, epochs=25, lr=2e-4, latent_dim=100)
    parser.add_argument("--width", type=common.positive_int, default=64,
                        help="base channel count W: G's last hidden block and D's first have W channels, "
                             "each block nearer 4x4 doubles it (64 is the paper's; 32 is 4x cheaper)")
    args, checkpoint = common.parse_args(parser, argv)
    if args.img_size not in IMG_SIZES:
        raise common.UserError(f"--img-size {args.img_size}: DCGAN needs a power of two from 16 to 128 "
                               "(16, 32, 64 or 128), since each block doubles the image side from 4x4")
    return args, checkpoint


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
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

    def __init__(self, channels, img_size, width):
        super().__init__()
        n_doublings(img_size)   # refuses a size the blocks cannot reach 4x4 from
        layers = [nn.Conv2d(channels, width, 4, 2, 1),   # (B, W, img_size/2, img_size/2)
                  nn.LeakyReLU(0.2)]
        features, side = width, img_size // 2
        while side > 4:
            layers += [nn.Conv2d(features, features * 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(features * 2), nn.LeakyReLU(0.2)]   # (B, 2*features, side/2, side/2)
            features, side = features * 2, side // 2
        layers += [nn.Conv2d(features, 1, 4, 1, 0)]     # (B, 1, 1, 1)
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, images):
        return self.net(images).flatten(1)   # (B, 1)


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
        channels = checkpoint["image_shape"][0]
        generator = Generator(args.latent_dim, channels, args.img_size, args.width).to(device)
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

    # Networks and optimisers (the paper's Adam: lr 2e-4, beta1 0.5 instead of 0.9 for stability)
    channels = data.shape[0]   # 1 for MNIST, 3 for CIFAR-10 and colour folders
    generator = Generator(args.latent_dim, channels, args.img_size, args.width).to(device)
    discriminator = Discriminator(channels, args.img_size, args.width).to(device)
    # fused=True: the same Adam arithmetic in one kernel for all parameters instead of many small
    # ops per tensor. No measurable gain here on a CPU, where the convolutions dominate; 1.14-1.34x for
    # the MLP scripts (README, Speed benchmark).
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
            "script": "dcgan", "args": vars(args), "step": step, "epoch": step // steps_per_epoch,
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
                print(f"stopped at step {step}; continue with: python dcgan.py --resume {run_dir / 'checkpoint.pt'}")
                break
    finally:
        stop.close()
    print(f"done: {step} steps; samples, losses.csv and checkpoint.pt in {run_dir}")


if __name__ == "__main__":
    common.run_main(main)
