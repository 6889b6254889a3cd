"""WGAN: Arjovsky, Chintala and Bottou, "Wasserstein GAN", ICML 2017 (arXiv:1701.07875).

A GAN's discriminator is a classifier whose loss gives G the Jensen-Shannon divergence, which is
flat when real and generated images do not overlap: G then gets no useful gradient. WGAN trains a
critic D instead: a raw score (no sigmoid) such that mean(D(real)) - mean(D(fake)) estimates the
Wasserstein distance between the two distributions, which G then shrinks. The estimate needs a
1-Lipschitz critic, enforced crudely by clamping every critic weight to [-c, c] after each critic
step; the critic trains n_critic times per G step so that its estimate stays close to the distance.
The critic has the paper's settings: RMSprop (no momentum: clipping makes it unstable), lr 5e-5 held
constant, c = 0.01 (--critic-boost 100: the authors' 100 critic steps before G's first 25 and every 500th).

Where this file departs from the paper (where a flag exists, its other setting is the paper's):
- --n-critic 1, not 5: G gets 5 times the updates; at 5 (or 2) 50 epochs leave it undertrained.
- --lr 1e-4 for G, not 5e-5: G learns at twice the critic's --lr-d 5e-5 (both at 1e-4 stalled).
- --reuse-fakes: G trains on the critic step's fakes, one G pass fewer (the paper: fresh noise).
- --ema 0.9999: grids and samples come from a moving average of G's weights, steadier than G itself.

    python wgan.py --epochs 50                # MNIST: grids, snapshots and checkpoint.pt in runs/wgan
    python wgan.py --generate 10000           # samples from the newest run
    python evaluate.py runs/wgan --curve      # FD for each snapshot
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
    parser = common.build_parser("wgan", "WGAN with weight clipping (MLP generator and critic). There is no "
                                 "--label-smoothing: a critic gives unbounded scores, not probabilities trained "
                                 "towards targets, so there is nothing to smooth.",
                                 img_size=28, batch_size=64, epochs=50, lr=1e-4, lr_d=5e-5, lr_decay=False,
                                 smoothing=False, ema=0.9999)
    parser.add_argument("--n-critic", type=common.positive_int, default=1,
                        help="critic steps per generator step (counted over the whole run)")
    parser.add_argument("--critic-boost", type=common.non_negative_int, default=0, metavar="K",
                        help="K critic steps before each of the first 25 G steps and every 500th, as the authors' "
                             "code does (0: n_critic always, as the paper's algorithm)")
    parser.add_argument("--clip", type=common.positive_float, default=0.01, metavar="C",
                        help="after every critic step, clamp each critic weight to [-C, C]")
    parser.add_argument("--reuse-fakes", action=argparse.BooleanOptionalAction, default=True,
                        help="on G's turn, G trains on the fakes of that step's critic update (one G pass fewer, as "
                             "gan.py does); --no-reuse-fakes: fresh noise for G's update, the paper's algorithm")
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


class Critic(nn.Module):
    """image (B, C, H, W) -> score (B, 1), higher for more real. A raw score, not a logit: the critic
    estimates a distance, not a probability. No BatchNorm: each score depends on its image alone."""

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
# Losses and the Lipschitz constraint
# ---------------------------------------------------------------------------------------------
def critic_loss(real_scores, fake_scores):
    """The critic maximises mean(D(real)) - mean(D(fake)); optimisers minimise, so the loss is
    mean(D(fake)) - mean(D(real)), fake first."""
    return fake_scores.mean() - real_scores.mean()


def generator_loss(fake_scores):
    """G wants its images scored high: it minimises -mean(D(fake)), which lowers the critic's
    estimate of the distance (G cannot change the real term)."""
    return -fake_scores.mean()


def clip_weights(critic, clip):
    """Keep the critic Lipschitz, crudely: clamp every parameter to [-clip, clip], in place."""
    parameters = list(critic.parameters())
    with torch.no_grad():   # one fused call over all of the critic's tensors, not one per tensor
        torch._foreach_clamp_min_(parameters, -clip)
        torch._foreach_clamp_max_(parameters, clip)


def critic_updates_before(g_step, n_critic=1, critic_boost=0):
    """How many critic updates come before G's update number g_step (0, 1, ...): n_critic, or with a
    critic_boost K, K before each of the first 25 and every 500th, so that the critic is close to
    the true distance when G starts, and now and then after."""
    if critic_boost and (g_step < 25 or g_step % 500 == 0):
        return critic_boost
    return n_critic


def g_update_steps(total_steps, n_critic=1, critic_boost=0):
    """The critic updates (counted from 1) after which G trains, up to total_steps: with n_critic 2
    and no boost, {2, 4, 6, ...}."""
    turns, step, g_step = set(), 0, 0
    while step + critic_updates_before(g_step, n_critic, critic_boost) <= total_steps:
        step += critic_updates_before(g_step, n_critic, critic_boost)
        turns.add(step)
        g_step += 1
    return turns


# ---------------------------------------------------------------------------------------------
# The training step
# ---------------------------------------------------------------------------------------------
def train_step(real_images, generator, critic, opt_g, opt_d, update_g, *, latent_dim=100, label_exchange=0.0,
               clip=0.01, reuse_fakes=True):
    """One critic update on a batch of real images, then, if `update_g` (the critic's schedule says
    it is G's turn), one G update. Returns the values to log."""
    batch_size, device = real_images.size(0), real_images.device

    # Train the critic every step, then clip its weights
    keep_graph = update_g and reuse_fakes   # G trains on these fakes after the critic's update
    with torch.set_grad_enabled(keep_graph):   # else this update trains the critic only: no graph through G
        fake_images = generator(torch.randn(batch_size, latent_dim, device=device))        # (B, C, H, W)
    real_scores, fake_scores = critic(torch.cat([real_images, fake_images.detach()])).chunk(2)   # (B, 1) each
    logged = {"loss_g": generator_loss(fake_scores), "wasserstein": real_scores.mean() - fake_scores.mean()}
    if random.random() < label_exchange:   # label exchange, critic form: swap the batches (host-side coin)
        real_scores, fake_scores = fake_scores, real_scores
    loss_critic = critic_loss(real_scores, fake_scores)
    opt_d.zero_grad(set_to_none=True)
    loss_critic.backward()
    opt_d.step()
    clip_weights(critic, clip)

    # Train G when it is its turn: make the critic score G's images high
    if update_g:
        if not keep_graph:
            fake_images = generator(torch.randn(batch_size, latent_dim, device=device))   # fresh noise
        critic.requires_grad_(False)   # G needs the gradient at the critic's input, not its weight gradients
        loss_g = generator_loss(critic(fake_images))
        critic.requires_grad_(True)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    logged = {"loss_critic": loss_critic, **logged}   # loss_g: on this step's fakes, every step
    return {name: value.detach() for name, value in logged.items()}   # values to log, not graphs


def build(args, image_shape, n_classes, device):
    """The networks and optimisers these flags describe. RMSprop: with clipped weights, momentum
    (Adam) made training unstable in the authors' experiments."""
    generator = Generator(args.latent_dim, image_shape).to(device)
    critic = Critic(image_shape).to(device)
    opt_g = torch.optim.RMSprop(generator.parameters(), lr=args.lr)
    opt_d = torch.optim.RMSprop(critic.parameters(), lr=args.lr_d or args.lr)   # D is the critic
    return generator, critic, opt_g, opt_d


def load_generator(path, device="cpu"):
    """The generator that made a run's grids (G's moving average), from its checkpoint.pt or a
    generator_epoch_*.pt snapshot, in eval mode: load_generator(path)(torch.randn(16, 100))."""
    saved = common.load_checkpoint(path, "wgan")
    generator = Generator(saved["args"]["latent_dim"], saved["image_shape"])
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
    generator, critic, opt_g, opt_d = build(args, data.shape, data.n_classes, device)
    average = copy.deepcopy(generator).eval().requires_grad_(False)
    steps, step = len(data.images) // args.batch_size, 0   # per epoch: the short last batch is dropped
    last_step = min(args.max_steps or math.inf, steps * args.epochs)
    g_turns = g_update_steps(steps * args.epochs, args.n_critic, args.critic_boost)   # the steps G trains after
    horizon = len(g_update_steps(steps * max(args.epochs, args.default_epochs), args.n_critic, args.critic_boost)) \
        if args.lr_decay else math.inf   # counted in G's updates
    schedules = [LambdaLR(opt, lambda s: max(0.0, 1 - s / horizon)) for opt in (opt_g, opt_d)]
    fixed_noise = torch.randn(64, args.latent_dim, device=device)   # the same z for every grid
    state = {"generator": generator, "critic": critic, "opt_g": opt_g, "opt_d": opt_d,
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
        for network in (generator, critic):
            network.compile()
    # --amp: products in bfloat16; no cast cache, as the step changes the weights between its passes
    amp = torch.autocast(device.type, torch.bfloat16, enabled=args.amp, cache_enabled=False)
    settings = {"latent_dim": args.latent_dim, "label_exchange": args.label_exchange, "clip": args.clip,
                "reuse_fakes": args.reuse_fakes}   # train_step's, by name
    meta = {"script": args.script, "args": vars(args), "image_shape": data.shape, "n_classes": data.n_classes,
            "class_names": data.class_names, "data": str(data)}   # "data": a resumed run's must be the same

    # The loop: a critic update per batch and a G update on G's turns, a progress line every --log-every steps,
    # the checkpoint every --checkpoint-every minutes; at each epoch's end (and at --max-steps, Ctrl-C or
    # SIGTERM) a grid (and progress.gif), the checkpoint, and at the epoch's end maybe a snapshot. The run's
    # folder is locked meanwhile.
    with common.claim_folder(Path(args.out), checkpoint and step) as folder, common.stop_requests() as stop:
        print(f"run folder: {folder}\ndata: {args.dataset}, {data}", flush=True)
        start, sums, count, clock, saved_at = step, 0, 0, (time.perf_counter(), step), time.monotonic()
        while step < last_step:   # an epoch, or its rest after a periodic checkpoint (the for loop ends in a break)
            epoch = step // steps
            for real_images, _ in data.batches(args.batch_size, epoch, args.seed, skip=step % steps):
                update_g = step + 1 in g_turns
                with amp:
                    logged = train_step(real_images, generator, critic, opt_g, opt_d, update_g, **settings)
                if update_g:   # G changed: its average and the schedules follow (they count G's updates)
                    common.update_average(average, generator, args.ema, schedules[0].last_epoch)
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
