"""Exact, deploy-friendly rewrites applied to a *copy* of a generator before ONNX export.

Why: onnx2tf turns ``ReflectionPad2d`` into MIRROR_PAD, which the XNNPACK delegate (the default
CPU path of LiteRT on phones) does not take, so every reflect pad cuts the delegated graph into
another partition and runs on the slow reference kernel. ``InstanceNorm2d`` becomes onnx2tf's
own decomposition (SQUARED_DIFFERENCE, RSQRT, ...), several of whose ops XNNPACK does not take
in int8. Both are replaced here by the same computation written with ops XNNPACK supports:

* :class:`SlicePad2d` — reflection padding as one-pixel slices and concatenations. It only
  copies values, so it is bit-identical to ``ReflectionPad2d``. XNNPACK's CONCATENATION takes at
  most 5 inputs and the converter flattens a concat of a single-use concat into one op, so each
  side is padded by its own concat and the right/bottom slices are cut from the *left-padded*
  tensor (two uses, so the converter keeps both concats): pad 3 gives two 4-input concats per
  axis instead of one 7-input concat.
* :class:`ExplicitInstanceNorm` — ``(x - mean) * rsqrt(mean((x - mean)^2) + eps)`` (then the
  affine). Same maths as ``InstanceNorm2d`` in float (differences of a few ulps, far below the
  1e-4 parity bar), but it exports as plain ReduceMean/Sub/Mul/Add/Sqrt/Div ops whose int8
  quantisation can be controlled (see ``export.tflite.Int8Recipe``).

:func:`unsupported_layers` names every leaf module the exporters have not been verified with, so
an unknown layer fails with a one-line error before any conversion starts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from dmad.compress.graph_prune import ChannelScale, ChannelShift

__all__ = [
    "ExplicitInstanceNorm",
    "RewriteReport",
    "SlicePad2d",
    "deploy_rewrite",
    "unsupported_layers",
]


class SlicePad2d(nn.Module):
    """Reflection padding (left/right/top/bottom = ``pad``) from slices and concatenations."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        if pad < 1:
            raise ValueError(f"pad must be >= 1, got {pad}")
        self.pad = int(pad)

    @staticmethod
    def _pad_axis(x: torch.Tensor, p: int, dim: int) -> torch.Tensor:
        n = x.shape[dim]
        if p >= n:
            raise ValueError(f"reflection pad {p} needs a side longer than {p}, got {n}")
        # Left side: x[p], x[p-1], ..., x[1], then x.
        left = torch.cat([*(x.narrow(dim, i, 1) for i in range(p, 0, -1)), x], dim)
        m = left.shape[dim]  # = n + p; x[n-1-i] sits at index m-1-i
        right = [left.narrow(dim, m - 1 - i, 1) for i in range(1, p + 1)]
        return torch.cat([left, *right], dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pad_axis(self._pad_axis(x, self.pad, 3), self.pad, 2)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class ExplicitInstanceNorm(nn.Module):
    """``InstanceNorm2d`` (eval, no running stats) written out as mean / variance / rsqrt."""

    def __init__(self, norm: nn.InstanceNorm2d) -> None:
        super().__init__()
        self.eps = float(norm.eps)
        self.affine = bool(norm.affine)
        if self.affine:
            assert norm.weight is not None and norm.bias is not None
            c = norm.weight.numel()
            self.register_buffer("weight", norm.weight.detach().clone().view(1, c, 1, 1))
            self.register_buffer("bias", norm.bias.detach().clone().view(1, c, 1, 1))

    @staticmethod
    def _mean(x: torch.Tensor) -> torch.Tensor:
        # Rows first, then the row means: the same value, but each reduction sums only W (or
        # H) floats. TFLite's MEAN (reference and XNNPACK) accumulates sequentially in fp32, so
        # one 256x256 reduction drifts by ~1e-3 at the output; two short ones stay at ~1e-5.
        return x.mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self._mean(x)
        d = x - mean
        var = self._mean(d * d)
        y = d * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y


@dataclass
class RewriteReport:
    """What :func:`deploy_rewrite` replaced (shown in ``parity.json``)."""

    reflection_pads: int = 0
    instance_norms: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"reflection_pads": self.reflection_pads, "instance_norms": self.instance_norms}


def deploy_rewrite(
    model: nn.Module, *, pad: bool = True, norm: bool = True
) -> tuple[nn.Module, RewriteReport]:
    """A deep copy of ``model`` with reflect pads (``pad``) and InstanceNorms (``norm``) rewritten.

    The input model is never modified (it is the parity reference).
    """
    out = copy.deepcopy(model).eval()
    report = RewriteReport()
    for name, module in list(out.named_modules()):
        for child_name, child in list(module.named_children()):
            new: nn.Module | None = None
            if pad and isinstance(child, nn.ReflectionPad2d):
                p = set(child.padding)
                if len(p) == 1:
                    new = SlicePad2d(p.pop())
                    report.reflection_pads += 1
            elif (
                norm
                and isinstance(child, nn.InstanceNorm2d)
                and not child.track_running_stats
            ):
                new = ExplicitInstanceNorm(child)
                report.instance_norms += 1
            if new is not None:
                setattr(module, child_name, new)
        del name
    return out, report


#: Leaf modules the ONNX → TFLite path is verified with (containers are walked through).
SUPPORTED_LEAVES: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.ConvTranspose2d,
    nn.InstanceNorm2d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.ReflectionPad2d,
    nn.ZeroPad2d,
    nn.ReplicationPad2d,
    nn.Sigmoid,
    nn.Upsample,
    nn.UpsamplingBilinear2d,
    nn.UpsamplingNearest2d,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.GroupNorm,
    nn.SiLU,
    SlicePad2d,
    ExplicitInstanceNorm,
    ChannelScale,
    ChannelShift,
)


def unsupported_layers(model: nn.Module) -> list[str]:
    """``"path (Type)"`` for every leaf module outside :data:`SUPPORTED_LEAVES`."""
    bad = []
    for name, module in model.named_modules():
        if any(True for _ in module.children()):
            continue
        if not isinstance(module, SUPPORTED_LEAVES):
            bad.append(f"{name or '<root>'} ({type(module).__name__})")
    return bad
