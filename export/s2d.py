"""Exact space-to-depth form of a ResNet generator's full-resolution layers.

Why: the head (a k×k convolution writing the image's three channels), the stem (reflect pad,
k×k convolution, InstanceNorm, ReLU) and the first stride-2 convolution run at full resolution
with few channels, which fill a fraction of each SIMD vector there: channel pruning cannot
shrink that cost below a floor. Computed on the image's 2×2 phases instead, the same layers run
at half resolution with four times the channels, exactly:

* PixelUnshuffle(2) of the padded image puts pixel (2u + i, 2v + j) of channel c in channel
  ``4c + 2i + j`` at (u, v);
* a padded stride-1 k×k convolution (the stem's, the head's) becomes one convolution of kernel
  (k + 1) / 2 whose output channel ``4o + 2i + j`` is its output pixel (2u + i, 2v + j) of
  channel o (every tap a + i lands in phase (a + i) mod 2 at offset ⌊(a + i) / 2⌋); the head's
  is then put back on the full-resolution grid by depth-to-space;
* the InstanceNorm of a full-resolution channel is the GroupNorm of its four phase channels;
* the stride-2 3×3 convolution (padding 1) reads phases (1), (0, 1) at offsets (−1), (0): a
  2×2 convolution after one zero row and column on the top and left.

In an int8 file the stem's convolution alone goes on the phases too (then depth-to-space back,
its norm at full resolution): XNNPACK's int8 convolution over the image's three channels fills
a few lanes of each dot product, over the twelve of its phases four times as many, and the
stem ran 1.4–2.5× faster that way at every width from 8 to 64 channels; fp32's direct
kernels were faster at some widths, so fp32 files keep the stem as it is
(``docs/results.md``, the int8 stem on phases).

:func:`to_s2d_front`, :func:`to_phase_head` and :func:`to_phase_stem` rewrite a copy; a model
they do not fit is returned unchanged with the reason. :func:`to_phases` is the ``--phases``
rule.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["PHASE_FRONT_BELOW", "PhaseConvUnit", "PhaseHead", "PhaseStem", "PhaseStemConv",
           "phase_down", "to_phase_head", "to_phase_stem", "to_phases", "to_s2d_front"]

#: ``--phases auto``: the front too when the stem keeps fewer channels than this (one AVX-512
#: vector of fp32): a narrow stem fills a fraction of each vector at full resolution, four
#: times its channels at half resolution fill it; a wide one only pays the phase form's extra
#: MACs (``docs/results.md``, full-resolution layers on phases).
PHASE_FRONT_BELOW = 16


def _odd_stride1(c: object) -> bool:
    """A plain odd square stride-1 convolution with no padding of its own (it follows a pad)."""
    return isinstance(c, nn.Conv2d) and c.stride == (1, 1) and c.padding == (0, 0) \
        and c.groups == 1 and c.dilation == (1, 1) and c.kernel_size[0] % 2 == 1 \
        and c.kernel_size[0] == c.kernel_size[1]


def _phase_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """The k×k stride-1 convolution as a convolution over the 2×2 phases of its input."""
    cout, cin, k, _ = conv.weight.shape
    kk = (k + 1) // 2
    out = nn.Conv2d(4 * cin, 4 * cout, kk, bias=conv.bias is not None)
    w = torch.zeros(4 * cout, 4 * cin, kk, kk, dtype=conv.weight.dtype)
    src = conv.weight.detach()
    for i in range(2):
        for j in range(2):
            for a in range(k):
                for b in range(k):
                    t, s = i + a, j + b
                    w[i * 2 + j::4, (t % 2) * 2 + s % 2::4, t // 2, s // 2] = src[:, :, a, b]
    out.weight = nn.Parameter(w)
    if conv.bias is not None:
        out.bias = nn.Parameter(conv.bias.detach().repeat_interleave(4))
    return out


def _phase_down(conv: nn.Conv2d) -> nn.Conv2d:
    """The 3×3 stride-2 padding-1 convolution over the phases of its input: a 2×2 kernel
    (tap 0 reads phase 1 one pixel up or left, taps 1 and 2 phases 0 and 1 in place)."""
    cout, cin = conv.weight.shape[:2]
    out = nn.Conv2d(4 * cin, cout, 2, bias=conv.bias is not None)
    w = torch.zeros(cout, 4 * cin, 2, 2, dtype=conv.weight.dtype)
    place = {0: (0, 1), 1: (1, 0), 2: (1, 1)}  # tap → (offset after the pad, phase)
    src = conv.weight.detach()
    for a, (m, i) in place.items():
        for b, (n, j) in place.items():
            w[:, i * 2 + j::4, m, n] = src[:, :, a, b]
    out.weight = nn.Parameter(w)
    if conv.bias is not None:
        out.bias = nn.Parameter(conv.bias.detach().clone())
    return out


def _phase_norm(norm: nn.InstanceNorm2d, channels: int) -> nn.GroupNorm:
    """InstanceNorm of each full-resolution channel = GroupNorm over its four phases."""
    g = nn.GroupNorm(channels, 4 * channels, eps=norm.eps, affine=norm.affine)
    if norm.affine:
        g.weight = nn.Parameter(norm.weight.detach().repeat_interleave(4))
        g.bias = nn.Parameter(norm.bias.detach().repeat_interleave(4))
    return g


class PhaseStem(nn.Module):
    """A ResNet generator's stem on the image's phases: its padding, space-to-depth, then its
    convolution, norm and ReLU at half resolution (the layer names stay the stem's, so float
    layers and sensitivities chosen by name still find them)."""

    def __init__(self, stem: nn.Module) -> None:
        super().__init__()
        self.pad = copy.deepcopy(stem.pad)
        self.unshuffle = nn.PixelUnshuffle(2)
        self.conv = _phase_conv(stem.conv)
        self.norm = nn.Identity() if isinstance(stem.norm, nn.Identity) else \
            _phase_norm(stem.norm, stem.conv.out_channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(self.unshuffle(self.pad(x)))))


class PhaseConvUnit(nn.Module):
    """A padded k×k stride-1 convolution unit (its padding, convolution, norm, activation) with
    the convolution on the padded map's 2×2 phases: space-to-depth, a (k + 1) / 2 convolution
    writing each output channel's four phases at half resolution, depth-to-space back, then the
    unit's own norm (none for a head) and activation at full resolution. The head's form (its
    few image channels fill four times the lanes) and an int8 file's stem (its three input
    channels read as twelve); layer names stay the unit's."""

    def __init__(self, unit: nn.Module) -> None:
        super().__init__()
        self.pad = copy.deepcopy(unit.pad)
        self.unshuffle = nn.PixelUnshuffle(2)
        self.conv = _phase_conv(unit.conv)
        self.shuffle = nn.PixelShuffle(2)
        self.norm = copy.deepcopy(getattr(unit, "norm", nn.Identity()))
        self.act = copy.deepcopy(unit.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.shuffle(self.conv(self.unshuffle(self.pad(x))))))


#: the head on phases, and an int8 file's stem with its convolution alone on them
PhaseHead = PhaseStemConv = PhaseConvUnit


def to_phase_stem(model: nn.Module) -> tuple[nn.Module, str | None]:
    """(a copy of ``model`` whose stem convolution runs on the phases, None), or (``model``
    itself, why not). Inputs need even sides."""
    stem = getattr(model, "stem", None)
    if not _odd_stride1(getattr(stem, "conv", None)) or not hasattr(stem, "pad") \
            or not hasattr(stem, "norm") or not hasattr(stem, "act"):
        return model, "the stem is not an odd square stride-1 convolution after its own padding"
    out = copy.deepcopy(model)
    ref = next(model.parameters())
    out.stem = PhaseStemConv(out.stem).to(device=ref.device, dtype=ref.dtype)  # type: ignore[arg-type]
    return out, None


def to_phase_head(model: nn.Module) -> tuple[nn.Module, str | None]:
    """(a copy of ``model`` whose head convolution runs on the phases, None), or (``model``
    itself, why not)."""
    head = getattr(model, "head", None)
    if not _odd_stride1(getattr(head, "conv", None)) \
            or not isinstance(getattr(head, "norm", None), nn.Identity):
        return model, "the head is not an odd square stride-1 convolution after its own padding"
    out = copy.deepcopy(model)
    ref = next(model.parameters())
    out.head = PhaseHead(out.head).to(device=ref.device, dtype=ref.dtype)  # type: ignore[arg-type]
    return out, None


def phase_down(down: nn.Module) -> None:
    """``down`` (the ConvUnit after the stem) made to read the stem's phases, in place: one
    zero row and column on the top and left, then the 2×2 form of its convolution."""
    down.pad = nn.ZeroPad2d((1, 0, 1, 0))
    down.conv = _phase_down(down.conv)  # type: ignore[arg-type]


def _fits(model: nn.Module) -> str | None:
    """Why ``model``'s front has no exact phase form here (None when it has one)."""
    stem, down1 = getattr(model, "stem", None), getattr(model, "down1", None)
    if stem is None or down1 is None or not hasattr(stem, "conv"):
        return "not a ResNet generator (stem, down1)"
    d = down1.conv
    if not _odd_stride1(stem.conv):
        return "the stem is not an odd square stride-1 convolution after its own padding"
    if not isinstance(stem.norm, nn.Identity) and (not isinstance(stem.norm, nn.InstanceNorm2d)
                                                   or stem.norm.track_running_stats):
        return "the stem's norm is not an InstanceNorm without running statistics (or none)"
    if not isinstance(stem.act, nn.ReLU) or not isinstance(down1.pad, nn.Identity):
        return "the stem's activation is not ReLU, or down1 has its own padding"
    if not isinstance(d, nn.Conv2d) or d.kernel_size != (3, 3) or d.stride != (2, 2) \
            or d.padding != (1, 1) or d.groups != 1 or d.dilation != (1, 1) \
            or d.padding_mode != "zeros":
        return "down1 is not a 3×3 stride-2 convolution with zero padding 1"
    return None


def to_s2d_front(model: nn.Module) -> tuple[nn.Module, str | None]:
    """(a copy of ``model`` whose stem and first downsampling run on the image's 2×2 phases,
    None), or (``model`` itself, why not). Inputs need even sides."""
    why = _fits(model)
    if why is not None:
        return model, why
    out = copy.deepcopy(model)
    ref = next(model.parameters())
    out.stem = PhaseStem(out.stem).to(device=ref.device, dtype=ref.dtype)  # type: ignore[arg-type]
    phase_down(out.down1)  # type: ignore[arg-type]
    out.down1.to(device=ref.device, dtype=ref.dtype)  # type: ignore[union-attr]
    return out, None


def to_phases(model: nn.Module, mode: str = "auto", int8: bool = False
              ) -> tuple[nn.Module, dict[str, object]]:
    """``model`` with its full-resolution layers on the image's 2×2 phases as ``mode`` asks
    ("on": the head and the front; "auto": the head, whose convolution writes only the image's
    few channels, and the front when the stem keeps under :data:`PHASE_FRONT_BELOW`
    channels; ``int8``: for an int8 file, where the front is not on phases, the stem's
    convolution alone), where they fit, and what was done: the rule the export and the latency
    table's timings share."""
    if mode == "off":
        return model, {"head": False, "front": False, "stem": False, "why": "--phases off"}
    out, head_why = to_phase_head(model)
    width = getattr(getattr(getattr(out, "stem", None), "conv", None), "out_channels", None)
    front_why: str | None = f"stem of {width} channels (auto: front below {PHASE_FRONT_BELOW})"
    if mode == "on" or not width or width < PHASE_FRONT_BELOW:
        out, front_why = to_s2d_front(out)
    stem = False
    if int8 and front_why is not None and width:
        out, stem_why = to_phase_stem(out)
        stem = stem_why is None
    info: dict[str, object] = {"head": head_why is None, "front": front_why is None,
                               "stem": stem, "stem_channels": width}
    why = "; ".join(dict.fromkeys(w for w in (head_why, front_why) if w))
    return out, {**info, "why": why} if why else info
