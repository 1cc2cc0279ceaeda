"""The Pix2Pix UNet generator (``unet_256`` for 8 downsamplings), widths as data.

Block k (0 = outermost) downsamples with a 4×4 stride-2 conv to ``down[k]`` channels; on the way
up, block k's ConvTranspose takes the concatenation [skip of block k+1, up output of block k+1]
and produces ``up[k]`` channels (``up[0]`` is the image). In the original, the in-place
LeakyReLU makes the concatenated skip carry LeakyReLU(x); every concatenation goes straight into
the parent's ReLU and ReLU(LeakyReLU(x)) = ReLU(x), so concatenating x itself is exactly
equivalent (tested against a re-creation of the original) and saves one op per level on export.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dmad.compress.models.layers import NORMS, make_norm, uses_bias


@dataclass(frozen=True)
class UnetWidths:
    """``down[k]``: output width of block k's down conv (k = 0..n-1, outer→inner);
    ``up[k-1]``: output width of block k's up conv for k = 1..n-1 (block 0 outputs the image).
    DMAD's 15 masks are the 8 ``down`` then the 7 ``up`` from inner to outer."""

    down: tuple[int, ...]
    up: tuple[int, ...]

    @classmethod
    def full(cls, ngf: int, num_downs: int) -> UnetWidths:
        down = [min(ngf * 2**k, ngf * 8) for k in range(num_downs)]
        return cls(tuple(down), tuple(down[:-1]))

    def as_list(self) -> list[int]:
        """Widths in DMAD mask order: 8 down (outer→inner), then 7 up (inner→outer)."""
        return [*self.down, *reversed(self.up)]


@dataclass(frozen=True)
class UnetSpec:
    """Everything needed to rebuild a UNet generator (saved in every checkpoint)."""

    input_nc: int = 3
    output_nc: int = 3
    ngf: int = 64
    num_downs: int = 8
    norm: str = "batch"
    dropout: bool = True
    widths: UnetWidths | None = field(default=None)
    family: str = field(default="unet", init=False)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm: {self.norm!r} is not one of {', '.join(NORMS)}")
        if self.num_downs < 5:
            raise ValueError(f"num_downs must be >= 5, got {self.num_downs}")
        if self.ngf < 1 or self.input_nc < 1 or self.output_nc < 1:
            raise ValueError("ngf, input_nc, output_nc must be >= 1")
        w = self.resolved_widths()
        if len(w.down) != self.num_downs or len(w.up) != self.num_downs - 1:
            raise ValueError(
                f"widths need {self.num_downs} down and {self.num_downs - 1} up entries, "
                f"got {len(w.down)} and {len(w.up)}"
            )
        if min(*w.down, *w.up) < 1:
            raise ValueError("every UNet width must be >= 1")

    def resolved_widths(self) -> UnetWidths:
        return self.widths if self.widths is not None else UnetWidths.full(self.ngf, self.num_downs)

    @property
    def divisor(self) -> int:
        """Input sides must be a multiple of this (2**num_downs)."""
        return 2**self.num_downs


class UnetDown(nn.Module):
    """[LeakyReLU] → conv 4×4 s2 → [norm]; block 0 has no activation, the innermost no norm."""

    def __init__(self, cin: int, cout: int, norm: str, outermost: bool, innermost: bool) -> None:
        super().__init__()
        bias = uses_bias(norm)
        self.act = nn.Identity() if outermost else nn.LeakyReLU(0.2)
        self.conv = nn.Conv2d(cin, cout, 4, 2, 1, bias=bias)
        self.norm = nn.Identity() if (outermost or innermost) else make_norm(norm, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(self.act(x)))


class UnetUp(nn.Module):
    """ReLU → ConvTranspose 4×4 s2 → norm (+ dropout); the outermost ends in Tanh instead."""

    def __init__(self, cin: int, cout: int, norm: str, outermost: bool, dropout: bool) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.conv = nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=outermost or uses_bias(norm))
        self.norm = nn.Tanh() if outermost else make_norm(norm, cout)
        self.dropout = nn.Dropout(0.5) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.norm(self.conv(self.act(x))))


class UnetGenerator(nn.Module):
    """UNet generator built from a :class:`UnetSpec` (see module docstring)."""

    def __init__(self, spec: UnetSpec | None = None) -> None:
        super().__init__()
        self.spec = spec = spec or UnetSpec()
        w = spec.resolved_widths()
        n = spec.num_downs
        self.downs = nn.ModuleList(
            UnetDown(
                spec.input_nc if k == 0 else w.down[k - 1],
                w.down[k],
                spec.norm,
                outermost=k == 0,
                innermost=k == n - 1,
            )
            for k in range(n)
        )
        ups = []
        for k in range(n):  # k = block index, 0 = outermost
            if k == n - 1:
                cin = w.down[k]
            else:
                cin = w.down[k] + w.up[k]  # skip of block k+1 (= its input) + its up output
            cout = spec.output_nc if k == 0 else w.up[k - 1]
            dropout = spec.dropout and 4 <= k <= n - 2
            ups.append(UnetUp(cin, cout, spec.norm, outermost=k == 0, dropout=dropout))
        # Stored inner→outer so the state-dict order matches the original's nesting order.
        self.ups = nn.ModuleList(reversed(ups))

    def up_block(self, k: int) -> UnetUp:
        """The up path of block k (0 = outermost)."""
        return self.ups[len(self.ups) - 1 - k]  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.spec.num_downs
        feats = []
        h = x
        for k in range(n):
            h = self.downs[k](h)
            feats.append(h)
        # feats[k] is block k's down output, block k+1's input and skip (see module docstring).
        h = self.up_block(n - 1)(h)
        for k in range(n - 2, -1, -1):
            h = self.up_block(k)(torch.cat([feats[k], h], 1))
        return h
