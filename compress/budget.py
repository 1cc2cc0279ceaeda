"""The MAC budget of the search: cost of a mask state, and fitting it just under a target.

DMAD stops when the surviving architecture is under the target, but its schedule moves in
coarse steps and can end above the target (winter2summer: 4.29 G for a 4.0 G target). Here the
final architecture is fitted to ``[(1 - tolerance)·target, target]`` by one global threshold τ
on a per-channel score (the search's first-order Taylor importance, or the mask weight): a
channel survives when score > τ (with the residual union and block removal rules of
:mod:`compress.groups`). MACs do not increase as τ grows, so a binary search over the sorted
scores finds the smallest τ that fits: the largest architecture under the budget, which prunes
the least important channels first.

The budget is a *metric*: MACs in either convention, or ``ms``, the latency a measured table
predicts (:mod:`compress.latency`). With a channel multiple (``multiple`` > 1, the backend's
tile) the fitted widths are then rounded to multiples of it inside the budget
(:func:`round_to_multiple`): a greedy exchange in whole tiles, cheapest loss of importance per
millisecond (or MAC) first, which is also where a latency budget differs most from a MAC one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dmad.compress.errors import DmadError
from dmad.compress.graph_cost import GraphSpec, as_graph, channel_groups
from dmad.compress.groups import widths_from_masks
from dmad.compress.latency import LatencyTable, Prediction
from dmad.compress.masks import ChannelMask
from dmad.compress.models import ResnetSpec, ResnetWidths, UnetSpec, UnetWidths
from dmad.compress.structure import close_chunks


@dataclass(frozen=True)
class Cost:
    """MACs (both conventions) and params of one candidate architecture."""

    widths: ResnetWidths | UnetWidths
    forced: tuple[str, ...]
    macs_paper: int
    macs_true: int
    params: int
    #: predicted milliseconds (with a latency table), else None
    ms: float | None = None

    def macs(self, convention: str) -> int:
        return self.macs_paper if convention == "paper" else self.macs_true

    def value(self, metric: str) -> float:
        """The budget metric's value: MACs of a convention, or predicted ms."""
        if metric == "ms":
            if self.ms is None:
                raise ValueError("a latency budget needs a cost with a latency table")
            return self.ms
        return float(self.macs(metric))


def cost_spec(model: nn.Module, size: int = 256) -> ResnetSpec | UnetSpec | GraphSpec:
    """What costs are counted from: a dmad generator's spec, or for a traced generator (a
    ``graph`` spec) its graph, traced now (before any mask is attached) at a side near 64 px
    that its downsamplings divide."""
    spec = getattr(model, "spec", None)
    d = int(getattr(spec, "divisor", 1))
    if size % d:  # counts scale with the side squared only at sides the downsamplings divide
        raise DmadError(f"macs_size: {size} is not a multiple of {d}, the generator's "
                        "downsampling factor")
    if getattr(spec, "family", None) != "graph":
        return spec  # type: ignore[return-value]
    side = d * max(1, -(-min(size, 64) // d))
    return GraphSpec.of(model, side=side, input_nc=int(spec.input_nc))  # type: ignore[union-attr]


def show(value: float, metric: str) -> str:
    """A budget value with its unit, for messages."""
    return f"{value:.4g} ms (predicted)" if metric == "ms" else \
        f"{value / 1e9:.4g} GMACs ({metric})"


def cost(spec: ResnetSpec | UnetSpec, masks: Mapping[str, ChannelMask],
         keep: Mapping[str, torch.Tensor] | None = None, size: int = 256,
         latency: LatencyTable | None = None) -> Cost:
    """Cost at ``size``² of the architecture the masks (or ``keep``) leave, counted from the
    traced graph (a traced generator's own, a ResNet/UNet's through ``family_graph``); with
    ``latency`` also its predicted milliseconds (at the table's own size)."""
    graph = as_graph(spec)
    kept = graph.kept(masks, keep)
    paper, true, params = graph.macs(kept, size)
    if isinstance(spec, GraphSpec):
        widths: Any = {n: kept[r] for n, r in spec.site_root.items() if n in masks}
        forced: list[str] = []
    else:
        widths, forced = widths_from_masks(spec, masks, keep)
    ms = None if latency is None else predict(spec, masks, latency, keep, widths).ms
    return Cost(widths, tuple(forced), paper, true, params, ms)


def predict(spec: ResnetSpec | UnetSpec | GraphSpec, masks: Mapping[str, ChannelMask],
            latency: LatencyTable, keep: Mapping[str, torch.Tensor] | None = None,
            widths: Any = None) -> Prediction:
    """The table's prediction for the architecture the masks leave. A table of whole models
    (``kind`` "graph") counts kept channels on the traced graph, for any generator; the ResNet
    unit table reads the surviving widths."""
    if getattr(latency, "kind", "") == "graph":
        graph = as_graph(spec)
        return latency.predict(graph, graph.kept(masks, keep))  # type: ignore[arg-type]
    if widths is None:
        widths, _ = widths_from_masks(spec, masks, keep)  # type: ignore[arg-type]
    return latency.predict(spec, widths)  # type: ignore[arg-type]


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


def fit_to_budget(spec: ResnetSpec | UnetSpec, masks: Mapping[str, ChannelMask], target: float,
                  metric: str, size: int = 256, *,
                  scores: Mapping[str, torch.Tensor] | None = None,
                  eligible: Mapping[str, torch.Tensor] | None = None,
                  latency: LatencyTable | None = None, multiple: int = 1,
                  tolerance: float = 0.03,
                  ) -> tuple[float, dict[str, torch.Tensor], Cost]:
    """The largest architecture under ``target`` (in ``metric``: MACs of a convention, or
    predicted ``ms`` with ``latency``) that keeps the highest-scored channels.

    ``scores`` rank the channels across all layers (default: the mask weights w). Only
    ``eligible`` channels can be kept (default: all);
    the search passes the channels its masks still keep, so the fit never brings back a
    channel the masks had switched off unless the caller says so. A binary search finds the
    smallest threshold τ on the scores that fits, then :func:`_fill` re-adds the best-scored
    eligible channels that still fit; with ``multiple`` > 1 the widths are then rounded to
    multiples of it inside ``[(1 - tolerance)·target, target]`` (:func:`round_to_multiple`).
    Returns (τ, keep sets, cost). Raises DmadError when even
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
        c = cost(spec, masks, keep_above(masks, taus[i], sc, el), size, latency)
        return c.value(metric) <= target, c

    ok, c_last = fits(len(taus) - 1)
    if not ok:
        raise DmadError(f"target: {show(target, metric)} is below the smallest architecture "
                        f"the search can reach ({show(c_last.value(metric), metric)} with one "
                        "channel per layer)")
    ok0, c0 = fits(0)
    if ok0:
        keep0 = keep_above(masks, taus[0], sc, el)
        if multiple > 1:
            keep0, c0 = round_to_multiple(spec, masks, keep0, target, metric, size, sc,
                                          latency=latency, multiple=multiple,
                                          tolerance=tolerance, eligible=el)
        return taus[0], keep0, c0
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
    keep, best = _fill(spec, masks, keep, best, target, metric, size, sc, el, latency)
    if multiple > 1:
        keep, best = round_to_multiple(spec, masks, keep, target, metric, size, sc,
                                       latency=latency, multiple=multiple, tolerance=tolerance,
                                       eligible=el)
    return taus[hi], keep, best


def _fill(spec: ResnetSpec | UnetSpec, masks: Mapping[str, ChannelMask],
          keep: dict[str, torch.Tensor], best: Cost, target: float, metric: str, size: int,
          scores: Mapping[str, torch.Tensor], eligible: Mapping[str, torch.Tensor],
          latency: LatencyTable | None = None, tries: int = 256
          ) -> tuple[dict[str, torch.Tensor], Cost]:
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
        got = cost(spec, masks, trial, size, latency)
        if got.value(metric) <= target:
            keep, best = trial, got
    return keep, best


def _groups(spec: ResnetSpec | UnetSpec, masks: Mapping[str, ChannelMask]
            ) -> dict[str, list[str]]:
    """Width groups: the masks whose keep sets make one width (the ResNet stream is the union
    of its writers; every other width is one mask)."""
    groups = channel_groups(spec)
    grouped = {n for g in groups for n in g}
    out = {n: [n] for n in masks if n not in grouped}
    resnet = isinstance(spec, ResnetSpec)  # its one group is the stream
    out.update({"stream" if resnet else f"group{i}": g for i, g in enumerate(groups)})
    return out


class _Tiles:
    """Channel groups (a layer, or the residual stream over its writers) moved by whole tiles
    of ``m`` channels (of lcm(m, group size) on a GroupNorm space, pruned in whole groups),
    each choice by importance per unit of budget."""

    def __init__(self, spec: ResnetSpec | UnetSpec, masks: Mapping[str, ChannelMask],
                 scores: Mapping[str, torch.Tensor], el: dict[str, torch.Tensor], m: int,
                 metric: str, size: int, latency: LatencyTable | None) -> None:
        self.spec, self.masks, self.scores, self.el, self.m = spec, masks, scores, el, m
        self.metric, self.size, self.latency = metric, size, latency
        self.groups = _groups(spec, masks)

    def chan_scores(self, g: str) -> torch.Tensor:
        return torch.stack([self.scores[n].detach().cpu().double()
                            for n in self.groups[g]]).sum(0)

    def chunk(self, g: str) -> int:
        """The channels group ``g`` is pruned in together (a GroupNorm's group; else 1)."""
        if not isinstance(self.spec, GraphSpec):
            return 1
        return self.spec.chunk.get(self.spec.site_root[self.groups[g][0]], 1)

    def tile(self, g: str) -> int:
        return math.lcm(self.m, self.chunk(g))

    def kept(self, keep: dict[str, torch.Tensor], g: str) -> torch.Tensor:
        return close_chunks(torch.stack([keep[n] for n in self.groups[g]]).any(0), self.chunk(g))

    def full(self, g: str) -> int:
        return self.masks[self.groups[g][0]].channels

    def block(self, g: str) -> bool:
        """A group that may keep no channel (a ResNet block's inner width; a traced
        generator's residual branch, folded away when empty)."""
        if isinstance(self.spec, GraphSpec):
            return all(self.spec.site_root[n] in self.spec.removable for n in self.groups[g])
        return g.endswith(".conv1") and g.startswith("block")

    def cost(self, keep: dict[str, torch.Tensor]) -> Cost:
        return cost(self.spec, self.masks, keep, self.size, self.latency)

    def set_count(self, k: dict[str, torch.Tensor], g: str, n: int) -> dict[str, torch.Tensor]:
        """A copy of ``k`` with group ``g`` at ``n`` channels (best-scored kept/added)."""
        k = {a: b.clone() for a, b in k.items()}
        members, size = self.groups[g], self.chunk(g)  # moved in whole chunks (GroupNorm)
        s = self.chan_scores(g).view(-1, size).sum(1)
        cur = torch.stack([k[x] for x in members]).any(0).view(-1, size).any(1)
        have, n = int(cur.sum()), n // size
        if n < have:
            order = torch.argsort(torch.where(cur, s, torch.inf))  # worst kept first
            for c in order[: have - n].tolist():
                for x in members:
                    k[x][c * size:(c + 1) * size] = False
        elif n > have:
            elig = torch.stack([self.el[x] for x in members]).view(len(members), -1, size) \
                .any(2)
            # eligible channels first (best-scored), switched-off ones only when needed
            cand = sorted((c for c in range(len(cur)) if not bool(cur[c])),
                          key=lambda c: (not bool(elig[:, c].any()), -float(s[c])))
            for c in cand[: n - have]:
                # a stream channel needs one writer: the eligible writers, else the best one
                on = [x for i, x in enumerate(members) if bool(elig[i, c])] or \
                    [max(members, key=lambda x: float(self.scores[x][c * size:(c + 1) * size]
                                                      .sum()))]
                for x in on:
                    k[x][c * size:(c + 1) * size] = True
        return k

    def loss(self, g: str, k0: dict[str, torch.Tensor], k1: dict[str, torch.Tensor]) -> float:
        s = self.chan_scores(g)
        a, b = self.kept(k0, g), self.kept(k1, g)
        return float(s[a & ~b].sum() - s[b & ~a].sum())

    def nearest(self, keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every width to its nearest multiple (at least one; removed blocks stay removed)."""
        for g in self.groups:
            n, f, m = int(self.kept(keep, g).sum()), self.full(g), self.tile(g)
            if f < m or (self.block(g) and n == 0):
                continue
            r = min(f, max(m, math.floor(n / m + 0.5) * m))
            if r != n:
                keep = self.set_count(keep, g, r)
        return keep

    def step(self, keep: dict[str, torch.Tensor], cur: Cost, down: bool, target: float
             ) -> tuple[dict[str, torch.Tensor], Cost] | None:
        """The best single tile move: down, the least importance lost per unit saved; up, the
        most gained per unit spent that still fits ``target``. None when no move is left."""
        best = None
        for g in self.groups:
            n, f, m = int(self.kept(keep, g).sum()), self.full(g), self.tile(g)
            if f < m:
                continue
            if down and n - m < (0 if self.block(g) else m):
                continue
            if not down and (n + m > f or (self.block(g) and n == 0)):
                continue
            trial = self.set_count(keep, g, n - m if down else n + m)
            c = self.cost(trial)
            delta = c.value(self.metric) - cur.value(self.metric)
            if (down and -delta <= 0) or (not down and c.value(self.metric) > target):
                continue
            # importance lost per unit saved (down) or lost per unit spent, negative (up):
            # the smallest is the best move either way
            ratio = self.loss(g, keep, trial) / (-delta if down else max(delta, 1e-12))
            if best is None or ratio < best[0]:
                best = (ratio, trial, c)
        return None if best is None else (best[1], best[2])


def round_to_multiple(spec: ResnetSpec | UnetSpec, masks: Mapping[str, ChannelMask],
                      keep: dict[str, torch.Tensor], target: float, metric: str, size: int,
                      scores: Mapping[str, torch.Tensor], *, latency: LatencyTable | None,
                      multiple: int, tolerance: float = 0.03,
                      eligible: Mapping[str, torch.Tensor] | None = None,
                      ) -> tuple[dict[str, torch.Tensor], Cost]:
    """Widths rounded to multiples of ``multiple`` inside the budget.

    Kernels work on channel tiles (XNNPACK: 16 on AVX-512), so a width of 17 costs as much as
    32 and the channels past a multiple are the dearest of all. Each width is first rounded to
    the nearest multiple (at least one multiple; a removed block stays removed; a width whose
    full size is below the multiple is left alone), adding the best-scored missing channels
    (eligible ones first) or dropping the worst kept. Then, while over ``target``, the tile
    whose removal loses the least importance per unit of budget saved goes (a block's last
    tile removes the block), and while under ``(1 - tolerance)·target`` the tile that gains the
    most importance per unit of budget is added where it still fits. Stream channels score as
    the sum over their writers, and are added or dropped in every writer. A GroupNorm space
    moves by tiles of lcm(``multiple``, its group size). When even one tile per layer is over
    the budget, the given (unrounded) widths are returned unchanged."""
    keep = {k: v.clone().cpu() for k, v in keep.items()}
    given = {k: v.clone() for k, v in keep.items()}
    el = {n: (eligible[n].cpu() if eligible is not None else torch.ones_like(keep[n]))
          for n in masks}
    tiles = _Tiles(spec, masks, scores, el, multiple, metric, size, latency)
    keep = tiles.nearest(keep)
    cur = tiles.cost(keep)
    for _ in range(1000):  # over budget: drop the cheapest tile per unit saved
        if cur.value(metric) <= target or (moved := tiles.step(keep, cur, True, target)) is None:
            break
        keep, cur = moved
    if cur.value(metric) > target:
        # one tile per layer is already over the budget: keep the widths the fit gave
        return given, tiles.cost(given)
    for _ in range(1000):  # under the band: add the best tile per unit spent that fits
        if cur.value(metric) >= (1 - tolerance) * target or \
                (moved := tiles.step(keep, cur, False, target)) is None:
            break
        keep, cur = moved
    return keep, cur


@torch.no_grad()
def apply_keep(masks: Mapping[str, ChannelMask], keep: Mapping[str, torch.Tensor]) -> None:
    """Freeze every mask to the given keep sets (w ← ±1, b ← 0)."""
    for n, m in masks.items():
        m.weight.copy_(torch.where(keep[n].to(m.weight.device), 1.0, -1.0).to(m.weight.dtype))
        m.bound.fill_(0.0)
        m.frozen.fill_(True)


def check_target_ms(spec: ResnetSpec | UnetSpec, target_ms: float, table: LatencyTable
                    ) -> float:
    """Validate a latency target against the table's prediction of the full model."""
    if not target_ms > 0:
        raise DmadError(f"target_ms: must be > 0, got {target_ms}")
    table.check_spec(spec)
    full = table.predict(spec).ms  # type: ignore[arg-type]
    if target_ms >= full:
        raise DmadError(f"target_ms: {target_ms} ms is not below the full model's predicted "
                        f"{full:.4g} ms ({table.describe()})")
    return float(target_ms)


def full_macs(spec: ResnetSpec | UnetSpec | GraphSpec, size: int, convention: str) -> int:
    """MACs of the unpruned model at ``size``² in ``convention``."""
    graph = as_graph(spec)
    paper, true, _ = graph.macs({}, size)
    return paper if convention == "paper" else true


def check_target(spec: ResnetSpec | UnetSpec, target_gmacs: float, convention: str,
                 size: int) -> int:
    """Validate a target against the full model: > 0 and below the full model's MACs."""
    if not target_gmacs > 0:
        raise DmadError(f"target_gmacs: must be > 0, got {target_gmacs}")
    full = full_macs(spec, size, convention)
    target = int(target_gmacs * 1e9)
    if target >= full:
        raise DmadError(f"target_gmacs: {target_gmacs} GMACs is not below the full model's "
                        f"{full / 1e9:.4g} GMACs ({convention} convention at {size}x{size})")
    return target
