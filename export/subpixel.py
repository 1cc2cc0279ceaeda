"""Exact sub-pixel form of a strided ConvTranspose: one convolution, then depth-to-space.

Phone GPU delegates reject ``TRANSPOSE_CONV`` on some devices, and the generators' upsampling
layers are exactly that op. A stride-s transposed convolution is s² ordinary convolutions over
the input, one per output phase (a, b) ∈ [0, s)²: output pixel (s·q + a, s·r + b) reads input
pixels (q + d_h, r + d_w) through kernel tap (a + p − s·d_h, b + p − s·d_w). Stacking the s²
phase kernels as output channels ``o·s² + a·s + b`` gives one convolution whose PixelShuffle(s)
(ONNX/TFLite DepthToSpace) is the transposed convolution's output, exactly (same products, summed
in a different order). Taps that fall outside the kernel are zeros.

:func:`to_subpixel` rewrites every eligible ``nn.ConvTranspose2d`` of a model copy (groups 1,
dilation 1, square stride, an output an exact multiple of the stride); the original model is
left untouched.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def _offsets(k: int, s: int, p: int) -> tuple[int, int]:
    """The range [d_min, d_max] of input offsets d = i_in − q any output phase reads."""
    d_min = min(math.ceil((a + p - k + 1) / s) for a in range(s))
    d_max = max((a + p) // s for a in range(s))
    return d_min, d_max


def eligible(m: nn.ConvTranspose2d) -> bool:
    """Whether ``m`` has an exact sub-pixel form here: groups 1, dilation 1, equal strides > 1,
    zero padding mode, and an output size that is the input size times the stride (so every
    output phase covers the same grid)."""
    if m.groups != 1 or m.dilation != (1, 1) or m.padding_mode != "zeros":
        return False
    s = m.stride[0]
    if m.stride[1] != s or s < 2:
        return False
    for k, p, op in zip(m.kernel_size, m.padding, m.output_padding, strict=True):
        # H_out = (H − 1)s − 2p + k + op must be s·H for every H
        if k - 2 * p + op != s:
            return False
    return True


class SubPixelConvTranspose2d(nn.Module):
    """Zero padding → Conv2d with s²·C_out channels → PixelShuffle(s); equal to ``source``."""

    def __init__(self, source: nn.ConvTranspose2d) -> None:
        super().__init__()
        if not eligible(source):
            raise ValueError(f"no exact sub-pixel form for {source}")
        s = source.stride[0]
        (kh, kw), (ph, pw) = source.kernel_size, source.padding
        (dh0, dh1), (dw0, dw1) = _offsets(kh, s, ph), _offsets(kw, s, pw)
        c_in, c_out = source.in_channels, source.out_channels
        w = source.weight.detach()  # (C_in, C_out, kh, kw)
        kernel = torch.zeros(c_out, s, s, c_in, dh1 - dh0 + 1, dw1 - dw0 + 1, dtype=w.dtype,
                             device=w.device)
        for a in range(s):
            for dh in range(dh0, dh1 + 1):
                th = a + ph - s * dh
                if not 0 <= th < kh:
                    continue
                for b in range(s):
                    for dw in range(dw0, dw1 + 1):
                        tw = b + pw - s * dw
                        if 0 <= tw < kw:
                            kernel[:, a, b, :, dh - dh0, dw - dw0] = w[:, :, th, tw].t()
        self.stride = s
        # left/top padding reads offsets below 0; right/bottom the ones past the last pixel
        self.pad = (max(0, -dw0), max(0, dw1), max(0, -dh0), max(0, dh1))
        self.crop = (max(0, dh0), max(0, dw0))
        self.conv = nn.Conv2d(c_in, c_out * s * s, kernel.shape[-2:],
                              bias=source.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(kernel.reshape(c_out * s * s, c_in, *kernel.shape[-2:]))
            if source.bias is not None:
                self.conv.bias.copy_(source.bias.detach().repeat_interleave(s * s))
        self.conv.to(device=w.device, dtype=w.dtype)
        self.shuffle = nn.PixelShuffle(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = self.conv(nn.functional.pad(x, self.pad))
        oh, ow = self.crop
        y = y[..., oh:oh + h, ow:ow + w]  # one output row/column per input one
        return self.shuffle(y)


def to_subpixel(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` with every eligible ConvTranspose2d in sub-pixel form, and how many
    were rewritten (the others, if any, are left as they are)."""
    model = copy.deepcopy(model)
    count = 0

    def walk(parent: nn.Module) -> None:
        nonlocal count
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ConvTranspose2d) and eligible(child):
                setattr(parent, name, SubPixelConvTranspose2d(child))
                count += 1
            else:
                walk(child)

    walk(model)
    return model, count


__all__ = ["SubPixelConvTranspose2d", "eligible", "to_subpixel"]
