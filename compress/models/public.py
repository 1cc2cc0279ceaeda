"""Generators of other public repositories, rebuilt from their published structure, so their
checkpoints load into dmad without their code (written here, not copied).

* :class:`CutResnet`: CUT / FastCUT's ResNet generator (taesungp/contrastive-unpaired-translation,
  ``models/networks.py``). With anti-aliasing (its default), each downsampling is a stride-1
  conv, norm, ReLU and a fixed blur-then-subsample (``F.conv2d`` with a registered filter
  buffer, one group per channel); each upsampling a fixed blur-upsample (``F.conv_transpose2d``
  with a buffer, then a crop) followed by a stride-1 conv, norm, ReLU.
* :class:`Pix2PixHDGlobal`: pix2pixHD's ``GlobalGenerator`` (NVIDIA/pix2pixHD,
  ``models/networks.py``): 7×7 stem, ``n_down`` stride-2 downsamplings, residual blocks,
  transposed convs, 7×7 head, Tanh; affine-free InstanceNorm by default, ``label_nc + 1``
  input channels when trained on label maps.

Their state-dict keys and shapes were checked against the public code (CUT b3ac2977, pix2pixHD
14b3b3c7): a checkpoint of either loads with ``strict=True`` and gives the same outputs.
:func:`public_generator` recognises such a checkpoint from its tensors. dmad reads their
structure from the traced graph (``compress/structure.py``).
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BlurDown", "BlurUp", "CutResnet", "Pix2PixHDGlobal", "ResnetBlock",
           "public_builder", "public_generator"]


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


class ResnetBlock(nn.Module):
    """pad, 3×3 conv, norm, ReLU, pad, 3×3 conv, norm; added to its input."""

    def __init__(self, c: int, norm: type[nn.Module]) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), norm(c), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), norm(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class CutResnet(nn.Module):
    """CUT / FastCUT's ResNet generator (``--netG resnet_9blocks``; anti-aliased by default)."""

    def __init__(self, ngf: int = 64, n_blocks: int = 9, antialias: bool = True,
                 in_ch: int = 3, out_ch: int = 3) -> None:
        super().__init__()
        norm = nn.InstanceNorm2d
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7), norm(ngf),
                                   nn.ReLU(True)]
        c = ngf
        for _ in range(2):
            if antialias:
                layers += [nn.Conv2d(c, 2 * c, 3, 1, 1), norm(2 * c), nn.ReLU(True),
                           BlurDown(2 * c)]
            else:
                layers += [nn.Conv2d(c, 2 * c, 3, 2, 1), norm(2 * c), nn.ReLU(True)]
            c *= 2
        layers += [ResnetBlock(c, norm) for _ in range(n_blocks)]
        for _ in range(2):
            if antialias:
                layers += [BlurUp(c), nn.Conv2d(c, c // 2, 3, 1, 1), norm(c // 2), nn.ReLU(True)]
            else:
                layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1),
                           norm(c // 2), nn.ReLU(True)]
            c //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, out_ch, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Pix2PixHDGlobal(nn.Module):
    """pix2pixHD's ``GlobalGenerator`` (``--netG global``)."""

    def __init__(self, ngf: int = 64, n_down: int = 4, n_blocks: int = 9, in_ch: int = 3,
                 norm: type[nn.Module] | str = nn.InstanceNorm2d, out_ch: int = 3) -> None:
        super().__init__()
        if isinstance(norm, str):  # "batch" | "instance": JSON keyword arguments can say it
            norm = {"batch": nn.BatchNorm2d, "instance": nn.InstanceNorm2d}[norm]
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7), norm(ngf),
                                   nn.ReLU(True)]
        for i in range(n_down):
            m = 2**i
            layers += [nn.Conv2d(ngf * m, ngf * m * 2, 3, 2, 1), norm(ngf * m * 2), nn.ReLU(True)]
        c = ngf * 2**n_down
        layers += [ResnetBlock(c, norm) for _ in range(n_blocks)]
        for i in range(n_down):
            m = 2 ** (n_down - i)
            layers += [nn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, 2, 1, output_padding=1),
                       norm(ngf * m // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_ch, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _blocks(state: dict[str, torch.Tensor]) -> int:
    return len({m.group(1) for k in state
                if (m := re.match(r"model\.(\d+)\.conv_block\.1\.weight$", k))})


def public_generator(state: dict[str, torch.Tensor]) -> nn.Module | None:
    """The CUT (anti-aliased) or pix2pixHD global generator whose state dict ``state`` is,
    with its weights loaded (strictly); ``None`` when it is neither (a pytorch-CycleGAN-and-
    pix2pix layout, two plain downsamplings, is ``dmad import``'s)."""
    found = public_builder(state)
    if found is None:
        return None
    cls = {"CutResnet": CutResnet, "Pix2PixHDGlobal": Pix2PixHDGlobal}[found[0].rsplit(":")[1]]
    model = cls(**found[1])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        return None
    return model.eval()


def public_builder(state: dict[str, torch.Tensor]) -> tuple[str, dict[str, Any]] | None:
    """``("module:Class", keyword arguments)`` that rebuild the public generator ``state`` is
    the state dict of (see :func:`public_generator`), or ``None``; JSON-able, so a model file
    can name it."""
    stem = state.get("model.1.weight")
    if stem is None or stem.dim() != 4 or tuple(stem.shape[2:]) != (7, 7):
        return None
    ngf, in_ch = int(stem.shape[0]), int(stem.shape[1])
    convs = sorted((int(m.group(1)), k) for k in state
                   if (m := re.match(r"model\.(\d+)\.weight$", k)) and state[k].dim() == 4)
    out_ch = int(state[convs[-1][1]].shape[0])
    n_blocks = _blocks(state)
    here = "dmad.compress.models.public"
    if any(k.endswith(".filt") for k in state):
        return f"{here}:CutResnet", {"ngf": ngf, "n_blocks": n_blocks, "antialias": True,
                                     "in_ch": in_ch, "out_ch": out_ch}
    first_block = min((int(k.split(".")[1]) for k in state if ".conv_block." in k),
                      default=10**9)
    n_down = sum(1 for i, k in convs if 1 < i < first_block
                 and tuple(state[k].shape[2:]) == (3, 3))
    if n_down == 2 or n_down == 0:
        return None
    bn = any(k.endswith("running_mean") for k in state)
    return f"{here}:Pix2PixHDGlobal", {"ngf": ngf, "n_down": n_down, "n_blocks": n_blocks,
                                       "in_ch": in_ch, "norm": "batch" if bn else "instance",
                                       "out_ch": out_ch}
