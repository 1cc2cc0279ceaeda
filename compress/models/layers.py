"""Small building blocks shared by the generator families.

Norm and padding are chosen by name so that a generator's whole structure is data (a spec), and
the masked, pruned and exported variants are the same classes with other settings.
"""

from __future__ import annotations

from torch import nn

NORMS = ("instance", "instance_affine", "batch", "none")
PADDINGS = ("reflect", "zero")


def make_norm(kind: str, channels: int) -> nn.Module:
    """Norm layer by name. ``instance`` is the CycleGAN default: no affine, no running stats."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "instance_affine":
        return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


def uses_bias(norm: str) -> bool:
    """Convs before a BatchNorm carry no bias (the norm's shift replaces it), as in the original."""
    return norm != "batch"


def make_pad(kind: str, amount: int) -> nn.Module:
    """Explicit padding module; ``zero`` padding is folded into the conv instead (Identity here)."""
    if kind == "reflect":
        return nn.ReflectionPad2d(amount)
    if kind == "zero":
        return nn.Identity()
    raise ValueError(f"unknown padding {kind!r}; choose one of {', '.join(PADDINGS)}")


class SeparableConv2d(nn.Module):
    """Depthwise 3×3 → norm → pointwise 1×1, the "mobile" residual conv of DMAD/GAN Compression."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, padding: int = 0) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_ch, in_ch, 3, padding=padding, groups=in_ch, bias=True)
        self.norm = make_norm(norm, in_ch)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=True)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.pointwise(self.norm(self.depthwise(x)))


class ConvUnit(nn.Module):
    """pad → conv → norm → activation.

    The norm is its own attribute so that a channel mask can wrap it (mask after the norm, before
    the activation, as in DMAD) without copying any model code.
    """

    def __init__(self, pad: nn.Module, conv: nn.Module, norm: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.pad = pad
        self.conv = conv
        self.norm = norm
        self.act = act

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.act(self.norm(self.conv(self.pad(x))))
