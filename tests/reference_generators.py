"""Generators from other public repositories, rebuilt here from their published structure (layer
order, kernel sizes, strides, padding, where norms and skips sit) for the tests of
``compress/structure.py``. Written for these tests, not copied: module names follow the
originals' ``nn.Sequential`` layout only where that matters for their checkpoints.

* :class:`CutResnet`: CUT / FastCUT's ResNet generator (taesungp/contrastive-unpaired-translation,
  ``models/networks.py``): with anti-aliasing, each downsampling is a stride-1 conv, norm, ReLU
  and a fixed blur-then-subsample (``F.conv2d`` with a registered filter buffer, one group per
  channel); each upsampling is a fixed blur-upsample (``F.conv_transpose2d`` with a buffer, then
  a crop) followed by a stride-1 conv, norm, ReLU. Without it, plain stride-2 convs.
* :class:`Pix2PixHDGlobal`: pix2pixHD's ``GlobalGenerator`` (NVIDIA/pix2pixHD,
  ``models/networks.py``): 7×7 stem, 4 stride-2 downsamplings, 9 residual blocks, 4 transposed
  convs, 7×7 head, Tanh; affine-free InstanceNorm by default (its ``--norm instance``), and
  ``label_nc + 1`` input channels when trained on label maps (``in_ch``).

Their state-dict keys and shapes were checked against the public code (CUT b3ac2977, pix2pixHD
14b3b3c7): a checkpoint of either loads into these classes with ``strict=True`` and gives the
same outputs.
* :class:`InHouse`: the kind of generator teams write themselves: bilinear upsampling followed
  by a conv, and an extra long skip concatenating the stem's features before the head.
* :class:`WithAttention`: a generator with a self-attention layer (not supported: the test
  checks the one-line refusal).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _blur_filter(size: int) -> torch.Tensor:
    a = {2: [1.0, 1.0], 3: [1.0, 2.0, 1.0], 4: [1.0, 3.0, 3.0, 1.0]}[size]
    k = torch.tensor(a)
    f = k[:, None] * k[None, :]
    return f / f.sum()


class BlurDown(nn.Module):
    """Reflection pad, then a fixed [1 2 1] blur with stride 2, one group per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", _blur_filter(3)[None, None].repeat(channels, 1, 1, 1))
        self.pad = nn.ReflectionPad2d(1)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pad(x), self.filt, stride=2, groups=self.channels)


class BlurUp(nn.Module):
    """A fixed [1 3 3 1] blur-upsample by 2 (transposed, one group per channel), then a crop."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", 4 * _blur_filter(4)[None, None].repeat(channels, 1, 1, 1))
        self.pad = nn.ReplicationPad2d(1)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv_transpose2d(self.pad(x), self.filt, stride=2, padding=2,
                               groups=self.channels)
        return y[:, :, 1:-1, 1:-1]  # CUT: [1:, 1:], then [:-1, :-1] for an even filter


class _Block(nn.Module):
    def __init__(self, c: int, norm: type[nn.Module]) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), norm(c), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), norm(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class CutResnet(nn.Module):
    def __init__(self, ngf: int = 8, n_blocks: int = 2, antialias: bool = True) -> None:
        super().__init__()
        norm = nn.InstanceNorm2d
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), norm(ngf),
                                   nn.ReLU(True)]
        c = ngf
        for _ in range(2):
            if antialias:
                layers += [nn.Conv2d(c, 2 * c, 3, 1, 1), norm(2 * c), nn.ReLU(True),
                           BlurDown(2 * c)]
            else:
                layers += [nn.Conv2d(c, 2 * c, 3, 2, 1), norm(2 * c), nn.ReLU(True)]
            c *= 2
        layers += [_Block(c, norm) for _ in range(n_blocks)]
        for _ in range(2):
            if antialias:
                layers += [BlurUp(c), nn.Conv2d(c, c // 2, 3, 1, 1), norm(c // 2), nn.ReLU(True)]
            else:
                layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1),
                           norm(c // 2), nn.ReLU(True)]
            c //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Pix2PixHDGlobal(nn.Module):
    def __init__(self, ngf: int = 4, n_down: int = 4, n_blocks: int = 3, in_ch: int = 3,
                 norm: type[nn.Module] = nn.InstanceNorm2d) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7), norm(ngf),
                                   nn.ReLU(True)]
        for i in range(n_down):
            m = 2**i
            layers += [nn.Conv2d(ngf * m, ngf * m * 2, 3, 2, 1), norm(ngf * m * 2), nn.ReLU(True)]
        c = ngf * 2**n_down
        layers += [_Block(c, norm) for _ in range(n_blocks)]
        for i in range(n_down):
            m = 2 ** (n_down - i)
            layers += [nn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, 2, 1, output_padding=1),
                       norm(ngf * m // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


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


class WithAttention(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, 1, 1)
        self.attn = SelfAttention2d(c)
        self.head = nn.Conv2d(c, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(self.stem(x)))
