"""WGAN: Arjovsky, Chintala and Bottou, "Wasserstein GAN", ICML 2017 (arXiv:1701.07875).

A GAN's discriminator is a classifier whose loss gives G the Jensen-Shannon divergence, which is
flat when real and generated images do not overlap: G then gets no useful gradient. WGAN trains a
critic D instead: a raw score (no sigmoid) such that mean(D(real)) - mean(D(fake)) estimates the
Wasserstein distance between the two distributions, which G then shrinks. The estimate needs a
1-Lipschitz critic, enforced crudely by clamping every critic weight to [-c, c] after each critic
step; the critic trains n_critic times per G step so that its estimate stays close to the distance.
The paper's optimiser settings are the defaults: RMSprop (no momentum, which clipping makes unstable),
lr 5e-5 held constant, c = 0.01 (--critic-boost 100 adds the authors' code's 100 critic steps before
each of the first 25 G steps and every 500th). There is no --label-smoothing: a critic has no targets.

Where this file departs from the paper (where a flag exists, its other setting is the paper's):
- --n-critic 2, not 5: G gets 2.5 times the updates; at 5, 50 epochs leave it undertrained.
- --ema 0.999: grids and samples come from a moving average of G's weights, steadier than G itself.
- --lr-decay: none by default (the paper's constant rate); --label-exchange P swaps the two batches.

    python wgan.py --epochs 50                # MNIST: grids, snapshots and checkpoint.pt in runs/wgan
    python wgan.py --generate 10000           # samples from the newest run
    python evaluate.py runs/wgan --curve      # FD for each snapshot
"""
import random

import torch
import torch.nn as nn

import common
import imagedata


def parse_args(argv=None):
    parser = common.build_parser("wgan", "WGAN with weight clipping (MLP generator and critic). There is no "
                                 "--label-smoothing: a critic gives unbounded scores, not probabilities trained "
                                 "towards targets, so there is nothing to smooth.",
                                 img_size=28, batch_size=64, epochs=50, lr=5e-5, lr_decay="none", smoothing=False)
    parser.add_argument("--n-critic", type=common.positive_int, default=2,
                        help="critic steps per generator step (counted over the whole run)")
    parser.add_argument("--critic-boost", type=common.non_negative_int, default=0, metavar="K",
                        help="K critic steps before each of the first 25 G steps and every 500th, as the authors' "
                             "code does (0: n_critic always, as the paper's algorithm)")
    parser.add_argument("--clip", type=common.positive_float, default=0.01, metavar="C",
                        help="after every critic step, clamp each critic weight to [-C, C]")
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


def critic_updates_before(g_step, n_critic=2, critic_boost=0):
    """How many critic updates come before G's update number g_step (0, 1, ...): n_critic, or with a
    critic_boost K, K before each of the first 25 and every 500th, so that the critic is close to
    the true distance when G starts, and now and then after."""
    if critic_boost and (g_step < 25 or g_step % 500 == 0):
        return critic_boost
    return n_critic


def g_update_steps(total_steps, n_critic=2, critic_boost=0):
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
               clip=0.01):
    """One critic update on a batch of real images, then, if `update_g` (the critic's schedule says
    it is G's turn), one G update. Returns the values to log."""
    batch_size, device = real_images.size(0), real_images.device

    # Train the critic every step, then clip its weights
    with torch.no_grad():   # this update trains the critic only: no graph through G
        fake_images = generator(torch.randn(batch_size, latent_dim, device=device))        # (B, C, H, W)
    real_scores, fake_scores = critic(torch.cat([real_images, fake_images])).chunk(2)   # (B, 1) each, one pass
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
        z = torch.randn(batch_size, latent_dim, device=device)   # fresh noise
        critic.requires_grad_(False)   # G needs the gradient at the critic's input, not its weight gradients
        loss_g = generator_loss(critic(generator(z)))
        critic.requires_grad_(True)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    return {"loss_critic": loss_critic, **logged}   # loss_g: on this step's fakes, every step


def build(args, image_shape, n_classes, device):
    """The networks and optimisers these flags describe. RMSprop: with clipped weights, momentum
    (Adam) made training unstable in the authors' experiments."""
    generator = Generator(args.latent_dim, image_shape).to(device)
    critic = Critic(image_shape).to(device)
    opt_g = torch.optim.RMSprop(generator.parameters(), lr=args.lr)
    opt_d = torch.optim.RMSprop(critic.parameters(), lr=args.lr)   # D is the critic
    return generator, critic, opt_g, opt_d


def load_generator(path, device="cpu"):
    """The generator that made a run's grids (G's moving average), from its checkpoint.pt or a
    generator_epoch_*.pt snapshot, in eval mode: load_generator(path)(torch.randn(16, 100))."""
    saved = common.load_checkpoint(path, "wgan")
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
    generator, critic, opt_g, opt_d = build(args, data.shape, data.n_classes, device)
    # Grids, snapshots and --generate use a moving average of G's weights and BatchNorm statistics.
    # It and the learning-rate schedules advance with G's updates, as the authors' schedules do.
    ema = common.EMA(generator, args.ema)
    common.compile_networks(args, device, generator, critic)   # --compile
    steps = data.steps_per_epoch(args.batch_size)
    g_turns = g_update_steps(steps * args.epochs, args.n_critic, args.critic_boost)
    default_turns = g_update_steps(steps * args.default_epochs, args.n_critic, args.critic_boost)
    decay = common.lr_factor(args, total_steps=len(g_turns), default_steps=len(default_turns))
    schedules = [torch.optim.lr_scheduler.LambdaLR(optimiser, decay) for optimiser in (opt_g, opt_d)]
    fixed_noise = torch.randn(64, args.latent_dim, device=device)   # the same z for every grid
    state = {"generator": generator, "critic": critic, "opt_g": opt_g, "opt_d": opt_d, "ema": ema,
             "schedule_g": schedules[0], "schedule_d": schedules[1], "fixed_noise": fixed_noise}
    settings = {"latent_dim": args.latent_dim, "label_exchange": args.label_exchange, "clip": args.clip}   # by name

    with common.Run(args, data, checkpoint, state, ema.module, (fixed_noise,)) as run:   # restores a --resume
        for epoch in run.epochs():
            for real_images, _ in run.batches(epoch):
                update_g = run.step + 1 in g_turns
                # --amp: bfloat16 products; no cast cache, as the step changes the weights between its passes
                with torch.autocast(device.type, torch.bfloat16, enabled=args.amp, cache_enabled=False):
                    logged = train_step(real_images, generator, critic, opt_g, opt_d, update_g, **settings)
                if update_g:   # G changed: its average and the schedules follow
                    ema.update_parameters(generator)
                    for schedule in schedules:
                        schedule.step()
                if run.end_step(epoch, logged):   # logs; True at --max-steps, Ctrl-C or SIGTERM
                    break
            run.end_epoch(epoch)   # grid, snapshot, checkpoint


if __name__ == "__main__":
    common.run_main(main)
