"""Time one training step (generator + discriminator, batch 1) of the ResNet teacher.

Prints a table at 64², 128², 256²: the reference later stages (search, fine-tune) compare their
own step times against. A script that prints numbers, not a timed test.

    python scripts/train_step.py [--ngf 64] [--n-blocks 9] [--sizes 64,128,256] [--runs 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from dmad.compress.losses import GANLoss
from dmad.compress.models import DiscriminatorSpec, PatchDiscriminator, ResnetGenerator, ResnetSpec


def step_time(ngf: int, n_blocks: int, size: int, runs: int, warmup: int) -> list[float]:
    """Seconds per step: G forward, G loss (LSGAN + L1) backward + Adam, D loss backward + Adam."""
    torch.manual_seed(0)
    g = ResnetGenerator(ResnetSpec(ngf=ngf, n_blocks=n_blocks))
    d = PatchDiscriminator(DiscriminatorSpec(ndf=64))
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    gan, l1 = GANLoss("lsgan"), nn.L1Loss()
    a, b = torch.randn(1, 3, size, size), torch.randn(1, 3, size, size)
    times = []
    for i in range(warmup + runs):
        t = time.perf_counter()
        fake = g(a)
        for p in d.parameters():
            p.requires_grad_(False)
        opt_g.zero_grad()
        (gan(d(fake), True) + 10 * l1(fake, b)).backward()
        opt_g.step()
        for p in d.parameters():
            p.requires_grad_(True)
        opt_d.zero_grad()
        (0.5 * (gan(d(b), True) + gan(d(fake.detach()), False))).backward()
        opt_d.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ngf", type=int, default=64)
    ap.add_argument("--n-blocks", type=int, default=9)
    ap.add_argument("--sizes", default="64,128,256")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    print(f"# ResNet-{args.n_blocks} ngf {args.ngf} + PatchGAN ndf 64, batch 1, Adam")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'size':>6} {'median s':>10} {'min s':>8} {'max s':>8}")
    for size in (int(s) for s in args.sizes.split(",")):
        ts = step_time(args.ngf, args.n_blocks, size, args.runs, args.warmup)
        print(f"{size:>6} {statistics.median(ts):>10.3f} {min(ts):>8.3f} {max(ts):>8.3f}")


if __name__ == "__main__":
    main()
