"""CycleGAN: Zhu, Park, Isola and Efros, "Unpaired Image-to-Image Translation using Cycle-Consistent
Adversarial Networks", ICCV 2017 (arXiv:1703.10593).

Two generators translate between two unpaired sets of images, G: A -> B and F: B -> A, each judged by
its own discriminator (D_B: a real B?, D_A: a real A?). Fooling D alone would let G map every a to any
plausible b, so a cycle loss asks F(G(a)) = a and G(F(b)) = b (what G changes F must undo: the content
stays, the style changes); an identity loss (G(b) = b) keeps what need not change. As in the paper: a
ResNet G, a PatchGAN D, least squares, lambda 10, a pool of 50 fakes, Adam(2e-4, 0.5, 0.999), half-constant lr.

Where this file departs from the paper (a flag gives the paper's setting back):
- --width 16, --blocks 3, --d-layers 2, --batch-size 16 and 1 epoch fit 28 px digits on a CPU (the
  paper: 64, 9, 3, 1 and 200 epochs at 256 px); --label-smoothing, --label-exchange: the LSGAN targets.
- folder data: the paper's resize to 286/256, random crop and flip, per batch on the device (bilinear from
  the decoded images; the paper: bicubic from the file); --no-augment: none; thin2thick: none.

    python cyclegan.py --dataset thin2thick   # MNIST: thin strokes <-> thick ones, runs/cyclegan
    python cyclegan.py --dataset folder --data-root data/horse2zebra --img-size 256 --width 64 \\
        --blocks 9 --d-layers 3 --batch-size 1 --epochs 200 --device cuda          # the paper's
    python cyclegan.py --generate 100         # translate test images (else training ones) both ways
    python evaluate.py runs/cyclegan          # the digit kept, FD both ways, the cycle error
"""
import argparse
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
    parser = common.build_parser("cyclegan", "CycleGAN: unpaired translation between two image sets A and B "
                                 "(thin2thick: MNIST digits as they are and with thickened strokes; folder: "
                                 "--data-root holds trainA/ and trainB/, and testA/ and testB/ if present).",
                                 img_size=28, batch_size=16, epochs=1, lr=2e-4, ema=None, latent_dim=None,
                                 datasets=("thin2thick", "folder", "fake"))
    parser.add_argument("--width", type=common.positive_int, default=16, help="channels of G's first layer and D's")
    parser.add_argument("--blocks", type=common.positive_int, default=3, help="residual blocks in G")
    parser.add_argument("--d-layers", type=common.positive_int, default=2,
                        help="stride-2 layers in D (3 gives the paper's 70x70 patches at 256 px)")
    parser.add_argument("--lambda-cycle", type=common.positive_float, default=10.0, help="weight of the cycle loss")
    parser.add_argument("--lambda-identity", type=common.non_negative_float, default=0.5,
                        help="weight of the identity loss, as a fraction of --lambda-cycle (0: none)")
    parser.add_argument("--pool-size", type=common.non_negative_int, default=50,
                        help="D sees fakes from a pool of this many (0: none)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction,
                        help="the paper's random crop (from 286/256 the size) and flip of each training batch "
                             "(None: on for folder, off for thin2thick and fake)")
    args, checkpoint = common.parse_args(parser, argv)
    if args.augment is None:   # photos gain from it; a flipped digit is not a digit, and fake data is not photos
        args.augment = args.dataset == "folder"
    if args.img_size % 4 or args.img_size // 2 ** args.d_layers < 3:
        raise common.UserError(f"--img-size {args.img_size} must be a multiple of 4 (G halves it twice) and at least "
                               f"3 x 2^{args.d_layers} (D halves it --d-layers times and scores patches of 3 or more)")
    return args, checkpoint


# ---------------------------------------------------------------------------------------------
# Data: two unpaired sets, A and B
# ---------------------------------------------------------------------------------------------
def thicken(images):
    """uint8 (N, 1, H, W) digits with strokes one pixel wider all round: a 3x3 maximum filter."""
    return F.max_pool2d(images.float(), 3, stride=1, padding=1).to(torch.uint8)


def augment(images, size):
    """The paper's augmentation of a batch (B, C, size, size) in [-1, 1], on its device: resized to 286/256
    of size, a random size x size crop of each image, flipped left-right half the time. The draws come from
    the device's generator, which checkpoints keep, so a resumed run crops and flips alike."""
    batch, big, device = len(images), size * 286 // 256, images.device
    images = F.interpolate(images, size=(big, big), mode="bilinear")           # (B, C, big, big)
    corner = torch.randint(0, big - size + 1, (2, batch, 1), device=device)    # each crop's top and left
    steps = torch.arange(size, device=device)
    flip = torch.rand(batch, 1, device=device) < 0.5
    rows, cols = corner[0] + steps, corner[1] + torch.where(flip, size - 1 - steps, steps)   # (B, size) each
    picked = images.permute(0, 2, 3, 1)[torch.arange(batch, device=device)[:, None, None], rows[:, :, None],
                                        cols[:, None, :]]                      # (B, size, size, C)
    return picked.permute(0, 3, 1, 2).contiguous()                              # (B, C, size, size)


class Unpaired:
    """Two common.Data sets A and B; a step takes a batch of each, in orders drawn independently. `split`
    says which images they are (test or training); `augment`: crop and flip each batch."""

    def __init__(self, a, b, augment=False, split="training"):
        self.a, self.b, self.augment, self.split = a, b, augment, split
        self.shape, self.n_classes, self.class_names = a.shape, a.n_classes, a.class_names

    def __str__(self):
        return f"A: {self.a}; B: {self.b}"

    def batches(self, batch_size, epoch, seed, skip=0):
        """(a, b) image batches in [-1, 1], as common.Data.batches gives them, as many as the smaller set has."""
        pairs = zip(self.a.batches(batch_size, epoch, seed, skip), self.b.batches(batch_size, epoch, seed + 1, skip))
        for (a, _), (b, _) in pairs:
            yield (augment(a, a.shape[-1]), augment(b, b.shape[-1])) if self.augment else (a, b)


def load_unpaired(args, device, train=True, channels=None):
    """A and B for --dataset, as an Unpaired of two common.Data (labels kept for evaluation); grey sets
    become colour when the other set (or `channels`, a trained run's) is colour."""
    split = "training" if train else "test"
    if args.dataset == "folder":
        folders = [Path(args.data_root) / f"{'train' if train else 'test'}{side}" for side in "AB"]
        if not train and not all(f.is_dir() for f in folders):
            folders, split = [Path(args.data_root) / f"train{side}" for side in "AB"], "training"
            print(f"{args.data_root} has no testA/ and testB/: translating the training images of trainA/ and trainB/")
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            raise common.UserError(f"--data-root {args.data_root} needs trainA/ and trainB/ "
                                   f"(missing: {', '.join(missing)})")
        sets = [common.folder_images(folder, args.img_size) for folder in folders]
        a, b = ([images, torch.zeros(len(images), dtype=torch.long), [folder.name]]
                for (images, _, _), folder in zip(sets, folders))
        channels = max(a[0].shape[1], b[0].shape[1], channels or 1)   # one grey, one colour: both colour
        a[0], b[0] = a[0].expand(-1, channels, -1, -1), b[0].expand(-1, channels, -1, -1)
    else:   # thin2thick and fake: halves of one labelled set, B thickened; the halves share no image
        flags = argparse.Namespace(**{**vars(args), "img_size": 28,
                                      "dataset": "mnist" if args.dataset == "thin2thick" else "fake"})
        data = common.load_data(flags, torch.device("cpu"), train=train)
        half = len(data.images) // 2 if train else len(data.images)
        a = [data.images[:half], data.labels[:half], data.class_names]
        b = [thicken(data.images[-half:]), data.labels[-half:], data.class_names]
    if train and min(len(a[0]), len(b[0])) < args.batch_size:
        raise common.UserError(f"A has {len(a[0])} images and B {len(b[0])}: fewer than --batch-size {args.batch_size}")
    pair = [common.Data(common.resize(images, args.img_size).contiguous(), labels, names, device)
            for images, labels, names in (a, b)]
    return Unpaired(*pair, augment=train and getattr(args, "augment", False), split=split)


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
def init_weights(module):
    """The paper's code: weights from N(0, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        nn.init.zeros_(module.bias)


class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x):
        return x + self.net(x)   # the block learns a change to its input


class Generator(nn.Module):
    """image (B, C, H, W) -> translated image (B, C, H, W) in [-1, 1]; H and W multiples of 4.
    c7s1-k, d2k, d4k, `blocks` x R4k, u2k, uk, c7s1-C (k = width), as in the paper."""

    def __init__(self, channels, width, blocks):
        super().__init__()
        k = width
        self.net = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(channels, k, 7), nn.InstanceNorm2d(k), nn.ReLU(),      # (B, k, H, W)
            nn.Conv2d(k, 2 * k, 3, 2, 1), nn.InstanceNorm2d(2 * k), nn.ReLU(),                      # (B, 2k, H/2, W/2)
            nn.Conv2d(2 * k, 4 * k, 3, 2, 1), nn.InstanceNorm2d(4 * k), nn.ReLU(),                  # (B, 4k, H/4, W/4)
            *[ResidualBlock(4 * k) for _ in range(blocks)],                                         # (B, 4k, H/4, W/4)
            nn.ConvTranspose2d(4 * k, 2 * k, 3, 2, 1, output_padding=1), nn.InstanceNorm2d(2 * k), nn.ReLU(),
            nn.ConvTranspose2d(2 * k, k, 3, 2, 1, output_padding=1), nn.InstanceNorm2d(k), nn.ReLU(),  # (B, k, H, W)
            nn.ReflectionPad2d(3), nn.Conv2d(k, channels, 7), nn.Tanh(),                            # (B, C, H, W)
        )
        self.apply(init_weights)

    def forward(self, images):
        return self.net(images)


class Discriminator(nn.Module):
    """image (B, C, H, W) -> a realness score for each overlapping patch (B, 1, h, w) (PatchGAN):
    `layers` stride-2 4x4 convolutions (no InstanceNorm on the first), one of stride 1, then one to 1."""

    def __init__(self, channels, width, layers):
        super().__init__()
        blocks, n = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)], width
        for i in range(1, layers + 1):
            stride, n_out = (2 if i < layers else 1), width * min(2 ** i, 8)
            blocks += [nn.Conv2d(n, n_out, 4, stride, 1), nn.InstanceNorm2d(n_out), nn.LeakyReLU(0.2)]
            n = n_out
        blocks.append(nn.Conv2d(n, 1, 4, 1, 1))   # no sigmoid: the least-squares loss takes the raw score
        self.net = nn.Sequential(*blocks)
        self.apply(init_weights)

    def forward(self, images):
        return self.net(images)


class Translator(nn.Module):
    """The two generators; called on (a, b) it gives the grid's six rows: a, G(a), F(G(a)), b, F(b), G(F(b))."""

    def __init__(self, channels, width, blocks):
        super().__init__()
        self.g_ab, self.g_ba = Generator(channels, width, blocks), Generator(channels, width, blocks)

    def forward(self, a, b):
        fake_b, fake_a = self.g_ab(a), self.g_ba(b)
        return torch.cat([a, fake_b, self.g_ba(fake_b), b, fake_a, self.g_ab(fake_a)])


class ImagePool(nn.Module):
    """The last `size` fakes G made. D is shown each new fake or, half the time once the pool is full,
    an older one in its place, so it does not forget what G drew a while ago. The images are a buffer
    and the count extra state, so a checkpoint keeps both."""

    def __init__(self, size, image_shape):
        super().__init__()
        self.size, self.count = size, 0   # the count is a host int: reading it costs no GPU sync
        self.register_buffer("images", torch.zeros(size, *image_shape))

    def get_extra_state(self):
        return {"count": self.count}

    def set_extra_state(self, state):
        self.count = state["count"]

    def forward(self, fakes):
        if self.size == 0:
            return fakes.detach()
        shown = []
        for fake in fakes.detach():
            if self.count < self.size:   # filling up: keep it, show it
                self.images[self.count] = fake
                self.count += 1
                shown.append(fake)
            elif random.random() < 0.5:   # show an old one, keep the new one in its place (host-side coins)
                index = random.randrange(self.size)
                shown.append(self.images[index].clone())
                self.images[index] = fake
            else:
                shown.append(fake)
        return torch.stack(shown)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def gan_loss(scores, target):
    """Least squares: mean (D(x) - target)^2 over every patch; target 1 for real, 0 for fake."""
    return F.mse_loss(scores, target.expand_as(scores))


def cycle_loss(images, reconstructed):
    """||F(G(a)) - a||_1 (or ||G(F(b)) - b||_1), the mean absolute error per pixel."""
    return F.l1_loss(reconstructed, images)


def discriminator_targets(batch_size, smoothing, exchange, device):
    """LSGAN targets for D: 1 for real, 0 for fake; one-sided smoothing draws real targets from
    [1 - smoothing, 1]; label exchange swaps the two with probability `exchange`."""
    real_targets = 1 - smoothing * torch.rand(batch_size, 1, 1, 1, device=device)
    fake_targets = torch.zeros(batch_size, 1, 1, 1, device=device)
    if random.random() < exchange:   # a host-side coin: no GPU sync
        real_targets, fake_targets = fake_targets, real_targets
    return real_targets, fake_targets


# ---------------------------------------------------------------------------------------------
# The training step
# ---------------------------------------------------------------------------------------------
def train_step(real_a, real_b, translator, d_a, d_b, pool_a, pool_b, opt_g, opt_d, *, lambda_cycle=10.0,
               lambda_identity=0.5, label_smoothing=0.0, label_exchange=0.0):
    """One update of both generators, then one of both discriminators, on a batch of each set.
    Returns the values to log."""
    g_ab, g_ba, batch_size, device = translator.g_ab, translator.g_ba, real_a.size(0), real_a.device

    # Train G and F: fool D_B and D_A (target 1), come back by the cycle, and leave the other set alone.
    # One pass of each generator over both sets (InstanceNorm keeps every image to itself).
    fake_b, same_b = g_ab(torch.cat([real_a, real_b])).chunk(2)             # G(a), G(b): (B, C, H, W) each
    fake_a, same_a = g_ba(torch.cat([real_b, real_a])).chunk(2)             # F(b), F(a)
    for d in (d_a, d_b):
        d.requires_grad_(False)   # G needs the gradient at D's input, not D's weight gradients
    scores_b, scores_a = d_b(fake_b), d_a(fake_a)
    for d in (d_a, d_b):
        d.requires_grad_(True)
    loss_gan = gan_loss(scores_b, torch.ones_like(scores_b)) + gan_loss(scores_a, torch.ones_like(scores_a))
    loss_cycle = cycle_loss(real_a, g_ba(fake_b)) + cycle_loss(real_b, g_ab(fake_a))
    loss_identity = cycle_loss(real_b, same_b) + cycle_loss(real_a, same_a)
    loss_g = loss_gan + lambda_cycle * (loss_cycle + lambda_identity * loss_identity)
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()

    # Train D_A and D_B: real images -> real_targets (1), fakes from the pools -> fake_targets (0); one
    # pass of each D over its real and pooled fake images together
    real_targets, fake_targets = discriminator_targets(batch_size, label_smoothing, label_exchange, device)
    real_b_scores, fake_b_scores = d_b(torch.cat([real_b, pool_b(fake_b)])).chunk(2)
    real_a_scores, fake_a_scores = d_a(torch.cat([real_a, pool_a(fake_a)])).chunk(2)
    loss_d = 0.5 * (gan_loss(real_b_scores, real_targets) + gan_loss(fake_b_scores, fake_targets)
                    + gan_loss(real_a_scores, real_targets) + gan_loss(fake_a_scores, fake_targets))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    logged = {"loss_d": loss_d, "loss_g": loss_g, "gan": loss_gan, "cycle": loss_cycle, "identity": loss_identity}
    return {name: value.detach() for name, value in logged.items()}   # values to log, not graphs


def build(args, image_shape, n_classes, device):
    """The networks, pools and optimisers these flags describe: one Adam for both generators, one
    for both discriminators, as in the paper's code."""
    channels = image_shape[0]
    translator = Translator(channels, args.width, args.blocks).to(device)
    d_a, d_b = (Discriminator(channels, args.width, args.d_layers).to(device) for _ in "AB")
    pool_a, pool_b = (ImagePool(args.pool_size, image_shape).to(device) for _ in "AB")
    opt_g = torch.optim.Adam(translator.parameters(), lr=args.lr, betas=(0.5, 0.999), fused=True)
    opt_d = torch.optim.Adam([*d_a.parameters(), *d_b.parameters()], lr=args.lr_d or args.lr, betas=(0.5, 0.999),
                             fused=True)
    return translator, d_a, d_b, pool_a, pool_b, opt_g, opt_d


def load_generator(path, device="cpu"):
    """Both trained generators of a checkpoint.pt or generator_epoch_*.pt snapshot, in eval mode:
    translator = load_generator(path); b = translator.g_ab(a); a = translator.g_ba(b)."""
    saved = common.load_checkpoint(path, "cyclegan")
    translator = Translator(saved["image_shape"][0], saved["args"]["width"], saved["args"]["blocks"])
    translator.load_state_dict(saved["sampler"])
    return translator.to(device).eval()


@torch.no_grad()
def translate(translator, images, chunk=500):
    """Translate uint8 images (N, C, H, W) with one generator: uint8 out, in chunks."""
    device = next(translator.parameters()).device
    out = [translator(part.to(device).float().div(127.5).sub(1)) for part in images.split(chunk)]
    return torch.cat(out).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu()


def generate(args, checkpoint, device):
    """--generate N: the first N test images of each set and their translations, to a new generated*.npz
    (a, a_to_b, a_to_b_to_a, b, b_to_a, b_to_a_to_b as uint8, with labels_a, labels_b) and a grid."""
    translator = load_generator(args.resume, device)
    test = load_unpaired(args, torch.device("cpu"), train=False, channels=checkpoint["image_shape"][0])
    a, b = test.a.images[:args.generate], test.b.images[:args.generate]
    a_to_b, b_to_a = translate(translator.g_ab, a), translate(translator.g_ba, b)
    arrays = {"a": a, "a_to_b": a_to_b, "a_to_b_to_a": translate(translator.g_ba, a_to_b), "b": b,
              "b_to_a": b_to_a, "b_to_a_to_b": translate(translator.g_ab, b_to_a),
              "labels_a": test.a.labels[:args.generate], "labels_b": test.b.labels[:args.generate]}
    rows = torch.cat([arrays[name][:10] for name in ("a", "a_to_b", "a_to_b_to_a", "b", "b_to_a", "b_to_a_to_b")])
    print(f"translating the first {len(a)} {test.split} images of each set")
    common.save_samples(Path(args.out), rows.float().div(127.5).sub(1), min(10, len(a)), **arrays)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def main(argv=None):
    args, checkpoint = parse_args(argv)
    device = common.pick_device(args.device, args.amp)
    common.seed_everything(args.seed)
    if args.generate:   # no training: translate test images with a checkpoint or snapshot
        return generate(args, checkpoint, device)

    # Data, networks (the translator's two generators make the grids and snapshots), pools, schedules
    data = load_unpaired(args, device)   # decoded once; batches are cut on the device
    if checkpoint and checkpoint.get("data", str(data)) != str(data):   # a folder changed (older runs: no record)
        raise common.UserError(f"the data is {data}; the run trained on {checkpoint['data']}")
    translator, d_a, d_b, pool_a, pool_b, opt_g, opt_d = build(args, data.shape, data.n_classes, device)
    steps, step = min(len(data.a.images), len(data.b.images)) // args.batch_size, 0   # per epoch
    last_step = min(args.max_steps or math.inf, steps * args.epochs)
    total = steps * args.epochs   # the paper's --lr-decay: constant, then linearly to 0 over the second half
    half = total // 2 if args.lr_decay else math.inf
    schedules = [LambdaLR(opt, lambda s: 1.0 if s < half else max(0.0, 1 - (s - half) / max(1, total - half)))
                 for opt in (opt_g, opt_d)]
    # The same images for every grid: rows a, G(a), F(G(a)), b, F(b), G(F(b))
    fixed_a, fixed_b = (d.images[:8].to(device).float().div(127.5).sub(1) for d in (data.a, data.b))
    state = {"sampler": translator, "d_a": d_a, "d_b": d_b, "pool_a": pool_a, "pool_b": pool_b, "opt_g": opt_g,
             "opt_d": opt_d, "schedule_g": schedules[0], "schedule_d": schedules[1]}
    if checkpoint:   # exact: all of the above, the step and the random generators
        for name, thing in state.items():
            thing.load_state_dict(checkpoint[name])
        step = checkpoint["step"]
        common.set_rng_state(checkpoint["rng"])
    if step >= last_step:
        more = (f"--epochs {step // steps + 1} or more (past the default --epochs, the rate steps back up)"
                if step >= steps * args.epochs else f"--max-steps {step + 1} or more, or without --max-steps")
        print(f"nothing left to train at step {step}: go on with python {args.script}.py --resume {args.resume} {more}")
        return
    if args.compile:   # fused kernels; the first steps wait for the compiler
        for network in (translator.g_ab, translator.g_ba, d_a, d_b):
            network.compile()
    # --amp: products in bfloat16; no cast cache, as the step changes the weights between its passes
    amp = torch.autocast(device.type, torch.bfloat16, enabled=args.amp, cache_enabled=False)
    settings = {"lambda_cycle": args.lambda_cycle, "lambda_identity": args.lambda_identity,
                "label_smoothing": args.label_smoothing, "label_exchange": args.label_exchange}   # by name
    meta = {"script": args.script, "args": vars(args), "image_shape": data.shape, "n_classes": data.n_classes,
            "class_names": data.class_names, "data": str(data)}   # "data": a resumed run's must be the same

    # The loop: a G and a D update per pair of batches, a progress line every --log-every steps, the checkpoint
    # every --checkpoint-every minutes; at each epoch's end (and at --max-steps, Ctrl-C or SIGTERM) a grid (and
    # progress.gif), the checkpoint, and at the epoch's end maybe a snapshot. The run's folder is locked meanwhile.
    with common.claim_folder(Path(args.out), checkpoint and step) as folder, common.stop_requests() as stop:
        print(f"run folder: {folder}\ndata: {args.dataset}, {data}", flush=True)
        start, sums, count, clock, saved_at = step, 0, 0, (time.perf_counter(), step), time.monotonic()
        while step < last_step:   # an epoch, or its rest after a periodic checkpoint (the for loop ends in a break)
            epoch = step // steps
            for real_a, real_b in data.batches(args.batch_size, epoch, args.seed, skip=step % steps):
                with amp:
                    logged = train_step(real_a, real_b, translator, d_a, d_b, pool_a, pool_b, opt_g, opt_d, **settings)
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
                    common.save_grid(translator(fixed_a, fixed_b), folder, f"epoch_{epoch + 1:03d}.png"
                                     if step % steps == 0 else f"step_{step:07d}.png")
                if step % steps == 0 and (epoch == 0 or (epoch + 1) % args.snapshot_every == 0 or step >= last_step
                                          or stop):
                    common.save_atomically({**meta, "epoch": epoch + 1, "sampler": translator.state_dict()},
                                           folder / f"generator_epoch_{epoch + 1:03d}.pt")
            common.save_atomically({**meta, **{name: thing.state_dict() for name, thing in state.items()}, "step": step,
                                    "epoch": step // steps, "rng": common.rng_state()}, folder / "checkpoint.pt")
            saved_at, clock = time.monotonic(), (time.perf_counter(), step)   # saving is not training time
            if stop:
                print(f"stopped at step {step}; continue with: python {args.script}.py --resume "
                      f"{folder / 'checkpoint.pt'}")
                sys.exit(128 + stop[0])
    print(f"done: {step} steps; grids, losses.csv, snapshots and checkpoint.pt in {folder}")


if __name__ == "__main__":
    common.run_main(main)
