"""The MAC budget of the search: cost of a mask state, and fitting it just under a target.

DMAD stops when the surviving architecture is under the target, but its schedule moves in
coarse steps and can end above the target (winter2summer: 4.29 G for a 4.0 G target). Here the
final architecture is fitted to ``[(1 - tolerance)·target, target]`` by one global threshold τ
on a per-channel score (the search's first-order Taylor importance, or the mask weight): a
channel survives when score > τ (with the residual union and block removal rules of
:mod:`compress.groups`). MACs do not increase as τ grows, so a binary search over the sorted
scores finds the smallest τ that fits: the largest architecture under the budget, which prunes
the least important channels first.
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


def keep_above(masks: Mapping[str, ChannelMask], tau: float,
               scores: Mapping[str, torch.Tensor] | None = None,
               eligible: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Keep sets for threshold τ: channel c of a mask survives when score_c > τ (and, with
    ``eligible``, only where it is eligible). The score defaults to the mask weight w."""
    out = {}
    for n, m in masks.items():
        s = (scores[n] if scores is not None else m.weight).detach()
        k = s > tau
        out[n] = k & eligible[n].to(k.device) if eligible is not None else k
    return out


def fit_to_budget(spec: ResnetSpec | UnetSpec, masks: Mapping[str, ChannelMask], target: int,
                  convention: str, size: int = 256, *,
                  scores: Mapping[str, torch.Tensor] | None = None,
                  eligible: Mapping[str, torch.Tensor] | None = None,
                  ) -> tuple[float, dict[str, torch.Tensor], Cost]:
    """The largest architecture under ``target`` MACs that keeps the highest-scored channels.

    ``scores`` rank the channels across all layers (default: the mask weights w). Only
    ``eligible`` channels can be kept (default: all);
    the search passes the channels its masks still keep, so the fit never brings back a
    channel the masks had switched off unless the caller says so. A binary search finds the
    smallest threshold τ on the scores that fits, then :func:`_fill` re-adds the best-scored
    eligible channels that still fit. Returns (τ, keep sets, cost). Raises DmadError when even
    the smallest architecture the rules allow (one channel per layer, all blocks removed) is
    above the target.
    """
    if eligible is None:
        eligible = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in masks.items()}
    sc = {n: (scores[n] if scores is not None else m.weight).detach().cpu()
          for n, m in masks.items()}
    el = {n: eligible[n].detach().cpu() for n in masks}
    pool = torch.cat([sc[n][el[n]].flatten() for n in masks])
    taus = [float("-inf"), *torch.unique(pool).tolist()]  # ascending; the last keeps nothing

    def fits(i: int) -> tuple[bool, Cost]:
        c = cost(spec, masks, keep_above(masks, taus[i], sc, el), size)
        return c.macs(convention) <= target, c

    ok, c_last = fits(len(taus) - 1)
    if not ok:
        raise DmadError(f"target: {target / 1e9:.4g} GMACs ({convention}) is below the smallest "
                        f"architecture the search can reach ({c_last.macs(convention) / 1e9:.4g} "
                        "GMACs with one channel per layer)")
    ok0, c0 = fits(0)
    if ok0:
        return taus[0], keep_above(masks, taus[0], sc, el), c0
    lo, hi = 0, len(taus) - 1  # invariant: taus[hi] fits, taus[lo] does not
    best = c_last
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ok, c = fits(mid)
        if ok:
            hi, best = mid, c
        else:
            lo = mid
    keep = keep_above(masks, taus[hi], sc, el)
    keep, best = _fill(spec, masks, keep, best, target, convention, size, sc, el)
    return taus[hi], keep, best


def _fill(spec: ResnetSpec | UnetSpec, masks: Mapping[str, ChannelMask],
          keep: dict[str, torch.Tensor], best: Cost, target: int, convention: str, size: int,
          scores: Mapping[str, torch.Tensor], eligible: Mapping[str, torch.Tensor],
          tries: int = 256) -> tuple[dict[str, torch.Tensor], Cost]:
    """Greedy top-up after the threshold: one channel costs very different MACs in different
    layers (a 7×7 head input channel vs a bottleneck channel), so a single threshold can stop
    well short of the target. Re-add the best-scored eligible pruned channels that still fit."""
    cands = []
    for n in masks:
        for c in torch.nonzero(~keep[n].cpu() & eligible[n]).flatten().tolist():
            cands.append((float(scores[n][c]), n, c))
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
