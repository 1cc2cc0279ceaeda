"""Exact freezes: a mask value that jumps to 1 keeps its output by moving into a weight.

Used by the search when a channel leaves the mask band upwards or the masks freeze: the value
is folded into the next affine norm or convolution, and where no weight can absorb it (the
residual-stream writers after an affine-free InstanceNorm) the mask carries it and pruning makes
it the writer norm's γ.
"""

from __future__ import annotations

import torch
from torch import nn

from dmad.compress.graph_cost import channel_groups
from dmad.compress.masks import (
    ChannelMask,
    MaskedNorm,
)
from dmad.compress.models import ResnetGenerator, UnetGenerator


def _folding_target(model: nn.Module, name: str) -> tuple[str, nn.Module] | None:
    """Where a mask's per-channel scale can be folded exactly, or None.

    Affine norms (BatchNorm, affine InstanceNorm) take it in γ and β. A norm-free site (UNet
    outermost/innermost down) takes it in its conv's output filters. After an affine-free
    InstanceNorm followed by ReLU the scale moves into the next conv's input channels (exact:
    ReLU(s·x) = s·ReLU(x) for s > 0); the residual-stream writers have no such place (their
    output is added to the stream), so they are not folded (DMAD's own fold is a no-op there,
    method §7.2). In the separable variant the next conv is a depthwise followed by an
    InstanceNorm, which cancels any positive scale, so nothing needs folding.
    """
    unit = _unit_of(model, name)
    norm = unit.norm.norm if isinstance(unit.norm, MaskedNorm) else unit.norm
    if getattr(norm, "weight", None) is not None:
        return "affine", norm
    if isinstance(norm, nn.Identity):
        return "conv_out", unit.conv
    if not isinstance(model, ResnetGenerator):
        return None
    nxt = {"stem": model.down1.conv, "down1": model.down2.conv, "up1": model.up2.conv,
           "up2": model.head.conv}
    if name.endswith(".conv1"):
        i = int(name[len("block"):].split(".")[0])
        conv = model.blocks[i].conv2.conv
        return None if model.spec.separable else ("conv_in", conv)
    if name in nxt:
        return "conv_in", nxt[name]
    return None


def hold_scale(model: nn.Module, name: str, mask: ChannelMask, scale: torch.Tensor) -> str:
    """Keep a channel's output unchanged while its mask value jumps to 1 (the exact freeze).

    ``scale`` is the mask value the channel had (1 where nothing changes). Folded into the
    network's weights where that is exact (:func:`fold_scale`); a residual-stream writer after
    an affine-free InstanceNorm has no such place, so the mask carries it as ``mask.scale`` and
    pruning turns it into the writer norm's γ (``ResnetSpec.stream_affine``). Other sites
    without a fold (the separable block's first mask) feed a depthwise conv and InstanceNorm,
    which cancel a positive per-channel scale, so nothing changes. Returns where it went.
    """
    if not isinstance(model, ResnetGenerator | UnetGenerator):
        # a traced generator: the mask carries it, and graph pruning keeps it as a fixed scale
        mask.scale.mul_(scale.to(mask.scale))
        return "carried"
    if fold_scale(model, name, scale):
        return "folded"
    if any(name in g for g in channel_groups(model.spec)):
        mask.scale.mul_(scale.to(mask.scale))
        return "carried"
    return "cancelled"


def _unit_of(model: nn.Module, name: str) -> nn.Module:
    from dmad.compress.masks import mask_sites

    for n, unit, _ in mask_sites(model):
        if n == name:
            return unit
    raise KeyError(name)


@torch.no_grad()
def fold_scale(model: nn.Module, name: str, scale: torch.Tensor) -> bool:
    """Multiply mask ``name``'s channel outputs by ``scale`` inside the network's weights, so a
    mask about to jump to 1 keeps the function it had (method §7.2, fixed). Returns False when
    the site has no exact place for it."""
    target = _folding_target(model, name)
    if target is None:
        return False
    kind, mod = target
    s = scale.to(mod.weight)
    if kind == "affine":
        mod.weight.mul_(s)
        mod.bias.mul_(s)
    elif kind == "conv_out":
        if isinstance(mod, nn.ConvTranspose2d):
            mod.weight.mul_(s[None, :, None, None])
        else:
            mod.weight.mul_(s[:, None, None, None])
        if mod.bias is not None:
            mod.bias.mul_(s)
    elif isinstance(mod, nn.ConvTranspose2d):  # conv_in of a ConvTranspose: weight [in, out]
        mod.weight.mul_(s[:, None, None, None])
    else:
        mod.weight.mul_(s[None, :, None, None])
    return True
