"""PatchGAN discriminator (pytorch-CycleGAN-and-pix2pix ``NLayerDiscriminator``).

Kept as an ``nn.Sequential`` with the original indices, so original checkpoints load key for key
and distillation can tap ``model.4`` (first normed hidden layer) and the last hidden activation
by the same names DMAD uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dmad.compress.models.layers import NORMS, make_norm, uses_bias


@dataclass(frozen=True)
class DiscriminatorSpec:
    """``input_nc`` is 3 for CycleGAN and 6 (A‖B) for the conditional Pix2Pix D."""

    input_nc: int = 3
    ndf: int = 64
    n_layers: int = 3
    norm: str = "instance"
    family: str = field(default="patchgan", init=False)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm: {self.norm!r} is not one of {', '.join(NORMS)}")
        if self.ndf < 1 or self.n_layers < 1 or self.input_nc < 1:
            raise ValueError("ndf, n_layers and input_nc must be >= 1")


class PatchDiscriminator(nn.Module):
    """70×70 PatchGAN for n_layers=3: a 30×30 map of real/fake scores at 256²."""

    def __init__(self, spec: DiscriminatorSpec | None = None) -> None:
        super().__init__()
        self.spec = spec = spec or DiscriminatorSpec()
        bias = uses_bias(spec.norm)
        layers: list[nn.Module] = [nn.Conv2d(spec.input_nc, spec.ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, spec.n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(spec.ndf * prev, spec.ndf * mult, 4, 2, 1, bias=bias),
                make_norm(spec.norm, spec.ndf * mult),
                nn.LeakyReLU(0.2),
            ]
        prev, mult = mult, min(2**spec.n_layers, 8)
        layers += [
            nn.Conv2d(spec.ndf * prev, spec.ndf * mult, 4, 1, 1, bias=bias),
            make_norm(spec.norm, spec.ndf * mult),
            nn.LeakyReLU(0.2),
            nn.Conv2d(spec.ndf * mult, 1, 4, 1, 1),
        ]
        self.model = nn.Sequential(*layers)

    @property
    def last_hidden(self) -> str:
        """Name of the last hidden activation (DMAD's ``model.10`` for n_layers=3)."""
        return f"model.{len(self.model) - 2}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
