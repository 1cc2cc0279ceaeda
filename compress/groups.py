"""Adaptive cross-block group sparsity over the ResNet residual stream, and surviving widths.

Every ResNet block adds its second conv's output into the residual stream, which the second
downsampling conv started. A stream channel can only be removed from the network if *every*
writer drops it, so those masks form one group tied per channel (method spec §2.4):

* the pruning rule is the union — a stream channel is kept when any member keeps it;
* the group coefficient k_c puts extra sparsity pressure on a channel the more of its writers
  have already given it up, and none on channels some writer has firmly kept (pushing the
  others would cost accuracy and save nothing).

Masks are addressed by the names :func:`compress.masks.attach_masks` gives them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from dmad.compress.graph_cost import stream_writers
from dmad.compress.masks import ChannelMask
from dmad.compress.models import ResnetSpec, ResnetWidths, UnetSpec, UnetWidths

__all__ = [
    "removed_blocks",
    "residual_keep",
    "update_group_coefficients",
    "widths_from_masks",
]

_BLOCK = re.compile(r"^block(\d+)\.conv([12])$")


def _block_indices(masks: Mapping[str, ChannelMask], conv: str) -> list[int]:
    out = []
    for name in masks:
        m = _BLOCK.match(name)
        if m and m.group(2) == conv:
            out.append(int(m.group(1)))
    return sorted(out)


def _stack(masks: Mapping[str, ChannelMask], members: Sequence[str]) -> tuple[Tensor, Tensor]:
    """(weights M×C, bounds M×1) of the members, detached; checks they share one width."""
    if not members:
        raise ValueError("a mask group needs at least one member")
    missing = [n for n in members if n not in masks]
    if missing:
        raise KeyError(f"group members without a mask: {', '.join(missing)}")
    widths = {masks[n].channels for n in members}
    if len(widths) != 1:
        raise ValueError(f"group members have different widths {sorted(widths)}")
    w = torch.stack([masks[n].weight.detach() for n in members])
    b = torch.stack([masks[n].bound.to(w) for n in members])[:, None]
    return w, b


@torch.no_grad()
def update_group_coefficients(
    masks: Mapping[str, ChannelMask], members: Sequence[str], lambda_update: float
) -> Tensor:
    """Recompute k (C,) for the group, store it in every member's ``coeff``, and return it.

    Per channel c, with each member's own bound b: on = #(w > b), off = #(w < −b),
    n_in = #(−b < w < b), M = len(members).

    * k_c = 0 if any member is on (the channel survives the union anyway) or all are off
      (already gone);
    * else k_c = λ_u · M / n_in — the fewer writers still undecided, the harder they are
      pushed, which is what lets a whole stream channel disappear. M / n_in is DMAD's
      ``group_weights.size(0) / in_bound`` (``MaskCycleGAN.py:133-157``); the method note
      writes it as 10 / n_in, which is the same number for the standard 9-block generator
      (10 members) and keeps k_c = λ_u when the whole group is undecided at any depth.

    Call it at every bound update *before* the bound changes (DMAD's order), so the decision
    uses the band the weights were trained under. Channels where n_in = 0 without any member
    on or all off (weights exactly at ±b) get 0.
    """
    w, b = _stack(masks, members)
    on = (w > b).any(0)
    all_off = (w < -b).all(0)
    n_in = ((w > -b) & (w < b)).sum(0)
    scale = float(lambda_update) * len(members)
    k = torch.where(
        on | all_off | (n_in == 0),
        torch.zeros((), dtype=w.dtype, device=w.device),
        scale / n_in.clamp(min=1).to(w.dtype),
    )
    for n in members:
        masks[n].coeff.copy_(k)
    return k


def residual_keep(
    masks: Mapping[str, ChannelMask],
    members: Sequence[str],
    keep: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Bool (C,): stream channels kept by ANY member (union), each member by its own ``kept``.

    DMAD's pruning rule (spec §2.4, count > threshold 0). Channels kept by the union but off in
    one writer get zero filters in that writer when pruned, so the sum stays exact.
    """
    _stack(masks, members)  # validation only
    return torch.stack([_keep_of(masks, n, keep) for n in members]).any(0)


def removed_blocks(masks: Mapping[str, ChannelMask]) -> list[int]:
    """Indices of residual blocks whose conv1 mask keeps no channel: the block is an identity.

    Decided on conv1 alone, as DMAD does: with no inner channel conv2 sees a zero input, so its
    output is a per-channel constant (0 after InstanceNorm) and the whole block (both convs)
    can go; conv2's own mask only matters through the stream union.
    """
    return [
        i for i in _block_indices(masks, "1") if not bool(masks[f"block{i}.conv1"].kept().any())
    ]


def _keep_of(
    masks: Mapping[str, ChannelMask], name: str, keep: Mapping[str, Tensor] | None
) -> Tensor:
    """The mask's own ``kept()``, or a candidate keep set (budget fitting tries thresholds)."""
    return keep[name] if keep is not None else masks[name].kept()


def _kept(
    masks: Mapping[str, ChannelMask],
    name: str,
    expected: int,
    keep: Mapping[str, Tensor] | None = None,
) -> int:
    if name not in masks:
        raise KeyError(f"no mask named {name!r}")
    m = masks[name]
    if m.channels != expected:
        raise ValueError(f"mask {name!r} has {m.channels} channels, the spec says {expected}")
    return int(_keep_of(masks, name, keep).sum())


def widths_from_masks(
    spec: ResnetSpec | UnetSpec,
    masks: Mapping[str, ChannelMask],
    keep: Mapping[str, Tensor] | None = None,
) -> tuple[ResnetWidths | UnetWidths, list[str]]:
    """The surviving architecture of a masked generator, and the names forced up to width 1.

    ``spec`` is the masked model's spec (its widths are checked against the masks). ResNet: the
    stream width is |union| over its writers (``channel_groups``); a block's inner width is its
    conv1 kept count (0 = block removed); stem, down1, up1, up2 are their kept counts. UNet: the 15
    (2·num_downs − 1) kept counts. Every non-block width is at least 1 — a layer cannot have 0
    channels and the image path must stay connected (DMAD does the same for the UNet); such
    layers are listed in the second return value (the stream as ``"stream"``) so the caller can
    warn: the network then carries a constant channel there. ``keep`` (bool per mask) replaces
    the masks' own ``kept()`` when given.
    """
    forced: list[str] = []

    def at_least_one(name: str, n: int) -> int:
        if n < 1:
            forced.append(name)
            return 1
        return n

    if isinstance(spec, ResnetSpec):
        full = spec.resolved_widths()
        stem = at_least_one("stem", _kept(masks, "stem", full.stem, keep))
        down1 = at_least_one("down1", _kept(masks, "down1", full.down1, keep))
        _kept(masks, "down2", full.stream, keep)
        blocks = []
        for i, inner in enumerate(full.blocks):
            if inner == 0:
                blocks.append(0)
                continue
            blocks.append(_kept(masks, f"block{i}.conv1", inner, keep))
            _kept(masks, f"block{i}.conv2", full.stream, keep)
        stream = int(residual_keep(masks, stream_writers(spec), keep).sum())
        stream = at_least_one("stream", stream)
        up1 = at_least_one("up1", _kept(masks, "up1", full.up1, keep))
        up2 = at_least_one("up2", _kept(masks, "up2", full.up2, keep))
        return ResnetWidths(stem, down1, stream, tuple(blocks), up1, up2), forced
    if isinstance(spec, UnetSpec):
        uw = spec.resolved_widths()
        n = spec.num_downs
        down = tuple(
            at_least_one(f"down{k}", _kept(masks, f"down{k}", uw.down[k], keep)) for k in range(n)
        )
        up = tuple(
            at_least_one(f"up{k}", _kept(masks, f"up{k}", uw.up[k - 1], keep)) for k in range(1, n)
        )
        return UnetWidths(down, up), forced
    raise TypeError(f"widths_from_masks needs a ResnetSpec or UnetSpec, not {type(spec)}")
