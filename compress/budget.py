"""The MAC budget of the search: cost of a mask state, and fitting it just under a target.

DMAD stops when the surviving architecture is under the target, but its schedule moves in
coarse steps and can end above the target (winter2summer: 4.29 G for a 4.0 G target). Here the
final architecture is fitted to ``[(1 - tolerance)·target, target]`` by one global threshold τ
on the mask weights: a channel survives when w > τ (with the residual union and block removal
rules of :mod:`compress.groups`). MACs do not increase as τ grows, so a binary search over the
sorted weights finds the smallest τ that fits: the largest architecture under the budget, which
prunes the lowest-weight channels first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from dmad.compress.arch import profile_spec
from dmad.compress.errors import DmadError
from dmad.compress.groups import widths_from_masks
from dmad.compress.masks import ChannelMask
from dmad.compress.models import ResnetSpec, ResnetWidths, UnetSpec, UnetWidths


@dataclass(frozen=True)
class Cost:
    """MACs (both conventions) and params of one candidate architecture."""

    widths: ResnetWidths | UnetWidths
    forced: tuple[str, ...]
    macs_paper: int
    macs_true: int
    params: int

    def macs(self, convention: str) -> int:
        return self.macs_paper if convention == "paper" else self.macs_true


def cost(spec: ResnetSpec | UnetSpec, masks: Mapping[str, ChannelMask],
         keep: Mapping[str, torch.Tensor] | None = None, size: int = 256) -> Cost:
    """Cost at ``size``² of the architecture the masks (or ``keep``) leave."""
    widths, forced = widths_from_masks(spec, masks, keep)
    prof = profile_spec(dataclasses.replace(spec, widths=widths), (1, spec.input_nc, size, size))
    return Cost(widths, tuple(forced), prof.macs_paper, prof.macs_true, prof.params)


def keep_above(masks: Mapping[str, ChannelMask], tau: float) -> dict[str, torch.Tensor]:
    """Keep sets for threshold τ: channel c of a mask survives when w_c > τ."""
    return {n: m.weight.detach() > tau for n, m in masks.items()}


def fit_to_budget(spec: ResnetSpec | UnetSpec, masks: Mapping[str, ChannelMask], target: int,
                  convention: str, size: int = 256,
                  floor: float | None = None) -> tuple[float, dict[str, torch.Tensor], Cost]:
    """Smallest threshold τ (≥ ``floor`` when given) whose architecture fits ``target`` MACs.

    Returns (τ, keep sets, cost). Raises DmadError when even the smallest architecture the
    rules allow (one channel per layer, all blocks removed) is above the target.
    """
    w = torch.cat([m.weight.detach().flatten().cpu() for m in masks.values()])
    cands = torch.unique(w).tolist()  # sorted ascending
    if floor is not None:
        cands = [c for c in cands if c >= floor]
    taus = [float("-inf") if floor is None else floor, *cands]

    def fits(i: int) -> tuple[bool, Cost]:
        c = cost(spec, masks, keep_above(masks, taus[i]), size)
        return c.macs(convention) <= target, c

    ok, c_last = fits(len(taus) - 1)
    if not ok:
        raise DmadError(f"target: {target / 1e9:.4g} GMACs ({convention}) is below the smallest "
                        f"architecture the search can reach ({c_last.macs(convention) / 1e9:.4g} "
                        "GMACs with one channel per layer)")
    lo, hi = 0, len(taus) - 1  # invariant: taus[hi] fits
    ok0, c0 = fits(0)
    if ok0:
        return taus[0], keep_above(masks, taus[0]), c0
    best = c_last
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ok, c = fits(mid)
        if ok:
            hi, best = mid, c
        else:
            lo = mid
    keep = keep_above(masks, taus[hi])
    keep, best = _fill(spec, masks, keep, best, target, convention, size, floor)
    return taus[hi], keep, best


def _fill(spec: ResnetSpec | UnetSpec, masks: Mapping[str, ChannelMask],
          keep: dict[str, torch.Tensor], best: Cost, target: int, convention: str, size: int,
          floor: float | None, tries: int = 256) -> tuple[dict[str, torch.Tensor], Cost]:
    """Greedy top-up after the threshold: one channel costs very different MACs in different
    layers (a 7×7 head input channel vs a bottleneck channel), so a single threshold can stop
    well short of the target. Re-add the highest-weight pruned channels that still fit."""
    cands = []
    for n, m in masks.items():
        w = m.weight.detach().cpu()
        for c in torch.nonzero(~keep[n].cpu()).flatten().tolist():
            if floor is None or w[c] >= floor:
                cands.append((float(w[c]), n, c))
    cands.sort(reverse=True)
    for _, n, c in cands[:tries]:
        trial = {k: v.clone() for k, v in keep.items()}
        trial[n][c] = True
        got = cost(spec, masks, trial, size)
        if got.macs(convention) <= target:
            keep, best = trial, got
    return keep, best


@torch.no_grad()
def apply_keep(masks: Mapping[str, ChannelMask], keep: Mapping[str, torch.Tensor]) -> None:
    """Freeze every mask to the given keep sets (w ← ±1, b ← 0)."""
    for n, m in masks.items():
        m.weight.copy_(torch.where(keep[n].to(m.weight.device), 1.0, -1.0).to(m.weight.dtype))
        m.bound.fill_(0.0)
        m.frozen.fill_(True)


def check_target(spec: ResnetSpec | UnetSpec, target_gmacs: float, convention: str,
                 size: int) -> int:
    """Validate a target against the full model: > 0 and below the full model's MACs."""
    if not target_gmacs > 0:
        raise DmadError(f"target_gmacs: must be > 0, got {target_gmacs}")
    full = profile_spec(spec, (1, spec.input_nc, size, size)).macs_paper if convention == "paper" \
        else profile_spec(spec, (1, spec.input_nc, size, size)).macs_true
    target = int(target_gmacs * 1e9)
    if target >= full:
        raise DmadError(f"target_gmacs: {target_gmacs} GMACs is not below the full model's "
                        f"{full / 1e9:.4g} GMACs ({convention} convention at {size}x{size})")
    return target
