"""Generators for the tests of ``compress/structure.py`` and what builds on it: CUT's and
pix2pixHD's (shipped in ``dmad.compress.models.public``, their layouts checked against the
public code), and two written here:

* :class:`InHouse`: the kind of generator teams write themselves: bilinear upsampling followed
  by a conv, and an extra long skip concatenating the stem's features before the head.
* :class:`ShuffleUp`: sub-pixel upsampling as super-resolution and many in-house generators
  write it: a conv to r²·C channels, PixelShuffle(r), then a norm (or, the second time, only an
  activation), a residual block with BatchNorm in between.
* :class:`WithAttention`: a generator with a self-attention layer (not supported: the test
  checks the one-line refusal).
"""

from __future__ import annotations

import torch
from torch import nn

from dmad.compress.models.public import BlurDown, BlurUp, CutResnet, Pix2PixHDGlobal

__all__ = ["BlurDown", "BlurUp", "CutResnet", "GroupNormNet", "InHouse", "Pix2PixHDGlobal",
           "PreNorm", "SelfAttention2d", "ShuffleUp", "WithAttention"]


class InHouse(nn.Module):
    def __init__(self, ngf: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, ngf, 3, 1, 1), nn.BatchNorm2d(ngf), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(ngf, 2 * ngf, 3, 2, 1), nn.BatchNorm2d(2 * ngf),
                                  nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(2 * ngf, 2 * ngf, 3, 1, 1),
                                  nn.BatchNorm2d(2 * ngf), nn.LeakyReLU(0.2))
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear",
                                            align_corners=False),
                                nn.Conv2d(2 * ngf, ngf, 3, 1, 1), nn.BatchNorm2d(ngf), nn.ReLU())
        self.head = nn.Conv2d(2 * ngf, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        h = self.up(self.body(self.down(s)))
        return torch.tanh(self.head(torch.cat([h, s], 1)))


class SelfAttention2d(nn.Module):
    """Self-attention over the pixels of a feature map (SAGAN-style generators use it)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(c, 2, batch_first=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = h.shape
        q = h.flatten(2).transpose(1, 2)
        a, _ = self.mha(q, q, q)
        return a.transpose(1, 2).reshape(b, c, hh, ww)


class ShuffleUp(nn.Module):
    def __init__(self, ngf: int = 8) -> None:
        super().__init__()
        c = 2 * ngf
        self.stem = nn.Sequential(nn.Conv2d(3, ngf, 3, 1, 1), nn.BatchNorm2d(ngf), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(ngf, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU(),
                                   nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c))
        self.up1 = nn.Sequential(nn.Conv2d(c, 4 * ngf, 3, 1, 1), nn.PixelShuffle(2),
                                 nn.BatchNorm2d(ngf), nn.ReLU())
        self.up2 = nn.Sequential(nn.Conv2d(ngf, 4 * ngf, 3, 1, 1), nn.PixelShuffle(2),
                                 nn.LeakyReLU(0.2))
        self.head = nn.Conv2d(ngf, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(self.stem(x))
        h = h + self.block(h)
        return torch.tanh(self.head(self.up2(self.up1(h))))


class GroupNormNet(nn.Module):
    """Newer in-house habits: a space-to-depth stem (PixelUnshuffle), GroupNorm and SiLU
    throughout (groups of 2, 4 and 8 channels on one residual stream), a grouped convolution
    with a GroupNorm(1) after it (both kept whole), a pixel-shuffle head."""

    def __init__(self, ngf: int = 8, n_blocks: int = 2) -> None:
        super().__init__()
        c = 2 * ngf
        self.stem = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, ngf, 3, 1, 1),
                                  nn.GroupNorm(4, ngf), nn.SiLU())
        self.down = nn.Sequential(nn.Conv2d(ngf, c, 3, 2, 1), nn.GroupNorm(4, c), nn.SiLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.GroupNorm(2, c), nn.SiLU(),
                          nn.Conv2d(c, c, 3, 1, 1), nn.GroupNorm(c // 2, c))
            for _ in range(n_blocks))
        self.mix = nn.Sequential(nn.Conv2d(c, c, 1), nn.GroupNorm(4, c), nn.SiLU(),
                                 nn.Conv2d(c, c, 3, 1, 1, groups=4), nn.GroupNorm(1, c),
                                 nn.SiLU())
        self.up = nn.Sequential(nn.Conv2d(c, 4 * ngf, 3, 1, 1), nn.PixelShuffle(2),
                                nn.GroupNorm(2, ngf), nn.SiLU())
        self.head = nn.Sequential(nn.Conv2d(ngf, 12, 3, 1, 1), nn.PixelShuffle(2), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(self.stem(x))
        for block in self.blocks:
            h = h + block(h)
        return self.head(self.up(self.mix(h)))


class PreNorm(nn.Module):
    """Pre-norm residual blocks (``h + conv(silu(GroupNorm(h)))``, the diffusion-era layout):
    the norms on the stream are no conv's mask site, so the stream is kept whole and only the
    blocks' inner widths are pruned."""

    def __init__(self, c: int = 16, n_blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1), nn.GroupNorm(4, c), nn.SiLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(4, c), nn.SiLU(), nn.Conv2d(c, c, 3, 1, 1),
                          nn.GroupNorm(4, c), nn.SiLU(), nn.Conv2d(c, c, 3, 1, 1))
            for _ in range(n_blocks))
        self.head = nn.Sequential(nn.GroupNorm(4, c), nn.SiLU(), nn.Conv2d(c, 3, 3, 1, 1),
                                  nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


class WithAttention(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, 1, 1)
        self.attn = SelfAttention2d(c)
        self.head = nn.Conv2d(c, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(self.stem(x)))
