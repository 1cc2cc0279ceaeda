"""The CycleGAN ResNet generator, one definition for the full, mobile and pruned models.

Structure (pytorch-CycleGAN-and-pix2pix ``ResnetGenerator``): ReflectionPad(3) + 7×7 stem, two
stride-2 3×3 downsampling convs, N residual blocks, two stride-2 ConvTranspose (output_padding 1),
ReflectionPad(3) + 7×7 head, Tanh. Every width is data (:class:`ResnetWidths`): a pruned
generator is this same class built with the searched widths, and a residual block of inner width
0 is removed (it becomes an identity, so block positions, and hence distillation taps, stay put).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dmad.compress.models.layers import (
    NORMS,
    PADDINGS,
    ConvUnit,
    SeparableConv2d,
    make_norm,
    make_pad,
    uses_bias,
)


@dataclass(frozen=True)
class ResnetWidths:
    """Output widths of every masked layer, in network order.

    ``stream`` is the residual stream (output of the second downsampling conv and of every
    block's second conv, which add into it); ``blocks[i]`` is block i's inner width (0 = removed).
    """

    stem: int
    down1: int
    stream: int
    blocks: tuple[int, ...]
    up1: int
    up2: int

    @classmethod
    def full(cls, ngf: int, n_blocks: int) -> ResnetWidths:
        return cls(ngf, 2 * ngf, 4 * ngf, (4 * ngf,) * n_blocks, 2 * ngf, ngf)

    def as_list(self) -> list[int]:
        """Widths in DMAD mask order: stem, down1, down2, (inner, stream) per block, up1, up2."""
        out = [self.stem, self.down1, self.stream]
        for b in self.blocks:
            out += [b, self.stream if b else 0]
        return [*out, self.up1, self.up2]


@dataclass(frozen=True)
class ResnetSpec:
    """Everything needed to rebuild a ResNet generator (saved in every checkpoint)."""

    input_nc: int = 3
    output_nc: int = 3
    ngf: int = 64
    n_blocks: int = 9
    norm: str = "instance"
    padding: str = "reflect"
    separable: bool = False
    dropout: bool = False
    widths: ResnetWidths | None = field(default=None)
    #: The residual-stream writers (``down2``, every block's ``conv2``) use an affine
    #: InstanceNorm although ``norm`` is the affine-free ``instance``. Set by pruning a search
    #: that froze stream masks mid-band: the writers' mask values (0 < m < 1) are carried as
    #: the norm's γ, the one exact place for them (the stream adds several writers, so no single
    #: consumer can absorb one writer's scale).
    stream_affine: bool = False
    family: str = field(default="resnet", init=False)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm: {self.norm!r} is not one of {', '.join(NORMS)}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding: {self.padding!r} is not one of {', '.join(PADDINGS)}")
        if self.stream_affine and self.norm != "instance":
            raise ValueError(f"stream_affine: only for norm 'instance' (norm is {self.norm!r}, "
                             "whose writers take a scale in their own weights)")
        if self.ngf < 1 or self.n_blocks < 0 or self.input_nc < 1 or self.output_nc < 1:
            raise ValueError("ngf, input_nc, output_nc must be >= 1 and n_blocks >= 0")
        w = self.resolved_widths()
        if len(w.blocks) != self.n_blocks:
            raise ValueError(
                f"widths.blocks has {len(w.blocks)} entries, n_blocks is {self.n_blocks}"
            )
        if min(w.stem, w.down1, w.stream, w.up1, w.up2) < 1 or min(w.blocks, default=0) < 0:
            raise ValueError("every width must be >= 1 (block inner widths >= 0)")

    @property
    def stream_norm(self) -> str:
        """Norm of the residual-stream writers (see ``stream_affine``)."""
        return "instance_affine" if self.stream_affine else self.norm

    @property
    def divisor(self) -> int:
        """Input sides must be a multiple of this (two stride-2 downsamplings)."""
        return 4

    def resolved_widths(self) -> ResnetWidths:
        return (
            self.widths if self.widths is not None else ResnetWidths.full(self.ngf, self.n_blocks)
        )


class ResnetBlock(nn.Module):
    """x + conv2(conv1(x)); conv1: dim→inner (+ReLU), conv2: inner→dim (no activation)."""

    def __init__(
        self, dim: int, inner: int, norm: str, padding: str, separable: bool, dropout: bool,
        out_norm: str | None = None,
    ) -> None:
        super().__init__()
        bias = uses_bias(norm)
        zp = 1 if padding == "zero" else 0

        def conv(i: int, o: int) -> nn.Module:
            if separable:
                return SeparableConv2d(i, o, norm, padding=zp)
            return nn.Conv2d(i, o, 3, padding=zp, bias=bias)

        self.conv1 = ConvUnit(
            make_pad(padding, 1), conv(dim, inner), make_norm(norm, inner), nn.ReLU(True)
        )
        self.dropout = nn.Dropout(0.5) if dropout else nn.Identity()
        self.conv2 = ConvUnit(
            make_pad(padding, 1), conv(inner, dim), make_norm(out_norm or norm, dim), nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.dropout(self.conv1(x)))


class ResnetGenerator(nn.Module):
    """ResNet generator built from a :class:`ResnetSpec` (see module docstring)."""

    def __init__(self, spec: ResnetSpec | None = None) -> None:
        super().__init__()
        self.spec = spec = spec or ResnetSpec()
        w = spec.resolved_widths()
        bias = uses_bias(spec.norm)
        n = spec.norm
        self.stem = ConvUnit(
            make_pad("reflect", 3),
            nn.Conv2d(spec.input_nc, w.stem, 7, bias=bias),
            make_norm(n, w.stem),
            nn.ReLU(True),
        )
        self.down1 = ConvUnit(
            nn.Identity(),
            nn.Conv2d(w.stem, w.down1, 3, 2, 1, bias=bias),
            make_norm(n, w.down1),
            nn.ReLU(True),
        )
        self.down2 = ConvUnit(
            nn.Identity(),
            nn.Conv2d(w.down1, w.stream, 3, 2, 1, bias=bias),
            make_norm(spec.stream_norm, w.stream),
            nn.ReLU(True),
        )
        self.blocks = nn.ModuleList(
            ResnetBlock(w.stream, inner, n, spec.padding, spec.separable, spec.dropout,
                        spec.stream_norm)
            if inner > 0
            else nn.Identity()
            for inner in w.blocks
        )
        self.up1 = ConvUnit(
            nn.Identity(),
            nn.ConvTranspose2d(w.stream, w.up1, 3, 2, 1, 1, bias=bias),
            make_norm(n, w.up1),
            nn.ReLU(True),
        )
        self.up2 = ConvUnit(
            nn.Identity(),
            nn.ConvTranspose2d(w.up1, w.up2, 3, 2, 1, 1, bias=bias),
            make_norm(n, w.up2),
            nn.ReLU(True),
        )
        self.head = ConvUnit(
            make_pad("reflect", 3), nn.Conv2d(w.up2, spec.output_nc, 7), nn.Identity(), nn.Tanh()
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.down2(self.down1(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encode(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.up2(self.up1(h)))
