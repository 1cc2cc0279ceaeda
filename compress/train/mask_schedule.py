"""The mask schedule of DMAD's search, apart from the training that drives it.

:class:`MaskSchedule` holds what a search does to its masks around each optimiser step: the
sparsity terms of the loss (:meth:`~MaskSchedule.extra_generator_loss`), the bound schedule,
the residual-group coefficients, Taylor importance, the budget check and the exact freeze to
the budget (:meth:`~MaskSchedule.after_step`). ``dmad search`` mixes it into its training
stage; :class:`dmad.compress.mask_search.MaskSearch` mixes it into a user's own loop. Both read
the same attributes (set by their ``__init__``): ``G`` and ``masks`` by direction, ``searched``,
``scfg`` (a :class:`SearchConfig`-like settings object), ``family``, ``mask_wd``,
``lambda_update``, ``interval``, ``total_steps``, ``updates``, ``frozen_at``, ``cut``,
``last_cost``, ``events``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from dmad.compress import budget
from dmad.compress.errors import DmadError
from dmad.compress.graph_cost import channel_groups
from dmad.compress.groups import update_group_coefficients
from dmad.compress.latency import LatencyTable, load_table
from dmad.compress.masks import (
    ChannelMask,
    attach_masks,
    bound_at,
    bound_loss,
    group_loss,
    relu_loss,
    soft_step,
)
from dmad.compress.train.fold import hold_scale


def mask_rates(scfg: Any, lr: float, steps: int, family: str) -> tuple[float, float, float]:
    """(mask lr, sparsity weight, λ_u) of a search of ``steps`` steps at model lr ``lr``.

    Masks get their own learning rate. Adam moves a weight by about lr per step, so in DMAD's
    200 epochs (~10^5 steps) 2e-4 lets a mask cross its band many times over, but a short
    search would end with masks barely moved from init and the budget met only by the final
    pruning. The default keeps the paper's lr at paper scale.

    DMAD's sparsity weight is balanced against the task gradient over ~10^5 Adam steps at lr
    2e-4: a mask can drift ~15 (lr × steps in the search window) under a small but steady
    bias. A short search gives the masks far less room (0.5 by the default mask lr), so the
    same weight leaves most of the cut to the final fit. The ResNet default scales DMAD's
    weight by the lost room, and is DMAD's own at paper scale. The UNet keeps DMAD's 0.01: its
    relu term sits on every mask and its per-layer freeze decides layers for good, so the
    scaled weight froze most layers within a few updates and left the architecture below the
    budget's tolerance band."""
    unet = family == "unet"
    mask_lr = scfg.mask_lr or max(lr, 0.5 / (0.75 * steps))
    room = mask_lr * 0.75 * steps
    mask_wd = scfg.mask_weight_decay if scfg.mask_weight_decay >= 0 else (
        0.01 if unet else 0.001 * max(1.0, 15.0 / room))
    lambda_update = scfg.lambda_update if scfg.lambda_update >= 0 else (0.0 if unet else 1.0)
    return mask_lr, mask_wd, lambda_update


class MaskSchedule:
    """The search's mask logic, mixed into a class that owns the generators (module doc)."""

    G: dict[str, nn.Module]
    masks: dict[str, dict[str, ChannelMask]]
    searched: list[str]
    scfg: Any
    family: str
    mask_wd: float
    lambda_update: float
    interval: int
    updates: int
    frozen_at: dict[str, int]
    cut: dict[str, dict[str, Any]]
    last_cost: dict[str, budget.Cost]
    events: list[dict[str, Any]]

    @property
    def total_steps(self) -> int:
        return int(self.cfg.steps)  # type: ignore[attr-defined]

    def _set_budget(self) -> None:
        """The budget's metric (MACs or predicted ms), the width multiple, the latency table
        (checked against the generator) and each searched direction's target."""
        scfg = self.scfg
        self.latency = load_table(scfg.latency_table) if scfg.latency_table else None
        self.metric = "ms" if scfg.target_ms > 0 else scfg.macs_convention
        self.multiple = scfg.width_multiple if scfg.width_multiple > 0 else (
            self.latency.multiple if self.latency is not None else 1)
        if self.latency is not None:
            for n in self.searched:
                self.latency.check_spec(self.G[n].spec_full)
        if self.metric == "ms":
            assert self.latency is not None
            self.target: dict[str, float] = {
                n: budget.check_target_ms(self.G[n].spec_full, scfg.target_ms, self.latency)
                for n in self.searched}
        else:
            self.target = {n: budget.check_target(self.G[n].spec_full, self.target_gmacs(n),
                                                  scfg.macs_convention, scfg.macs_size)
                           for n in self.searched}

    def _check_reachable(self) -> None:
        """Refuse a target below one channel per layer (the smallest reachable architecture)."""
        scfg = self.scfg
        for n in self.searched:
            self.last_cost[n] = self._cost(n)
            floor = _floor(self.G[n].spec_full, self.masks[n], self.metric, scfg.macs_size,
                           self.latency)
            if floor > self.target[n]:
                field = "target_ms" if self.metric == "ms" else "target_gmacs_BtoA" \
                    if n == "BtoA" and scfg.target_gmacs_BtoA else "target_gmacs"
                want = scfg.target_ms if self.metric == "ms" else self.target_gmacs(n)
                raise DmadError(f"{field}: {want} is below the smallest architecture the search "
                                f"can reach ({budget.show(floor, self.metric)}, one channel "
                                "per layer)")

    def target_gmacs(self, direction: str) -> float:
        """The direction's budget: ``target_gmacs_BtoA`` for B→A when set, else ``target_gmacs``."""
        if direction == "BtoA" and self.scfg.target_gmacs_BtoA > 0:
            return self.scfg.target_gmacs_BtoA
        return self.scfg.target_gmacs


    def _coupled(self, direction: str) -> list[list[str]]:
        """The mask groups DMAD's adaptive group sparsity couples: the ResNet stream's writers,
        or a traced generator's channel groups (residual additions)."""
        return channel_groups(self.G[direction].spec_full)

    def _cost(self, direction: str, keep: dict[str, torch.Tensor] | None = None) -> budget.Cost:
        return budget.cost(self.G[direction].spec_full, self.masks[direction], keep,
                           self.scfg.macs_size, self.latency)


    # -- losses ----------------------------------------------------------------------------
    def extra_generator_loss(self) -> dict[str, torch.Tensor]:
        total: torch.Tensor | None = None
        for d in self.searched:
            if d in self.frozen_at:
                continue
            for name, m in self.masks[d].items():
                if self.family == "unet":
                    term = relu_loss(m)
                elif name in ("stem", "down1", "up1", "up2"):
                    term = self.scfg.upconv_coeff * bound_loss(m)
                elif name == "down2" or name.endswith(".conv2"):
                    term = group_loss(m) if self.lambda_update > 0 else relu_loss(m)
                else:
                    term = relu_loss(m)
                total = term if total is None else total + term
        if total is None:
            return {}
        return {"mask": self.mask_wd * total}

    # -- schedule --------------------------------------------------------------------------
    def _scores(self, d: str) -> dict[str, torch.Tensor]:
        """Per-channel ranking of the final fit (``fit_rank``)."""
        if self.scfg.fit_rank == "weight":
            return {n: m.weight.detach() for n, m in self.masks[d].items()}
        # Taylor importance; the mask weight breaks ties (e.g. channels never scored)
        return {n: m.importance + 1e-12 * torch.sigmoid(m.weight.detach())
                for n, m in self.masks[d].items()}

    def _freeze_to_budget(self, d: str, step: int, reason: str) -> None:
        """Fit direction ``d`` just under its target and make its masks hard for good.

        The fit keeps a subset of the channels the masks keep now (w > −b), ranked by
        ``fit_rank``. One exception, recorded as ``revived`` in the event: when the masks cut
        so far in the last update interval that even all of their channels are under
        ``(1 - tolerance)·target``, channels that were alive (non-zero mask) until the last bound
        update may come back, best-ranked first: the shrinking bound or the last interval's
        steps switched them off, and their filters trained until then. Channels switched off
        before that (stale filters) are never revived.
        """
        masks, target, tol = self.masks[d], self.target[d], self.scfg.budget_tolerance
        conv, size, spec = self.scfg.macs_convention, self.scfg.macs_size, self.G[d].spec_full
        metric = self.metric
        c_masks = self._cost(d)  # what the masks themselves leave at this point
        by_masks = c_masks.macs(conv)
        scores = self._scores(d)
        eligible = {n: m.kept() for n, m in masks.items()}
        fit = {"latency": self.latency, "multiple": self.multiple, "tolerance": tol}
        tau, keep, c = budget.fit_to_budget(spec, masks, target, metric, size, scores=scores,
                                            eligible=eligible, **fit)
        revived = 0
        if c.value(metric) < (1 - tol) * target:
            recent = {n: eligible[n] | (m.alive & ~m.frozen) for n, m in masks.items()}
            if any(bool((recent[n] & ~eligible[n]).any()) for n in masks):
                tau, keep, c = budget.fit_to_budget(spec, masks, target, metric, size,
                                                    scores=scores, eligible=recent, **fit)
        # the fit works on the CPU; the masks may live on a GPU
        keep = {n: k.to(masks[n].weight.device) for n, k in keep.items()}
        eligible = {n: e.to(masks[n].weight.device) for n, e in eligible.items()}
        # channels the masks had switched off and the fit kept (the band refit, or rounding
        # that found too few eligible channels to reach a multiple)
        revived = sum(int((keep[n] & ~eligible[n]).sum()) for n in masks)
        where: dict[str, int] = {}
        for name, m in masks.items():
            if bool(m.frozen):
                continue
            scale = torch.where(keep[name], soft_step(m.weight.detach(), m.bound), 1.0)
            kind = hold_scale(self.G[d], name, m, torch.where(scale > 0, scale, 1.0))
            if bool(((scale < 1) & keep[name]).any()):
                where[kind] = where.get(kind, 0) + 1
        pruned = sum(int((eligible[n] & ~keep[n]).sum()) for n in masks)
        budget.apply_keep(masks, keep)
        for m in masks.values():
            m.weight.requires_grad_(False)
            m.weight.grad = None
        self.frozen_at[d] = step
        self.last_cost[d] = c
        full = budget.full_macs(spec, size, conv)
        self.cut[d] = {"full_gmacs": full / 1e9, "gmacs_left_by_masks": by_masks / 1e9,
                       "gmacs_final": c.macs(conv) / 1e9,
                       # shares of the total cut: by the differentiable masks, by the final fit
                       # (negative when the fit gave channels back to land inside the tolerance)
                       "cut_by_masks": (full - by_masks) / max(1, full - c.macs(conv)),
                       "cut_by_fit": (by_masks - c.macs(conv)) / max(1, full - c.macs(conv)),
                       "channels_pruned_by_fit": pruned, "channels_revived": revived,
                       "within_tolerance": (1 - tol) * target <= c.value(metric) <= target,
                       "fit_rank": self.scfg.fit_rank, "metric": metric,
                       "width_multiple": self.multiple}
        if c.ms is not None:
            self.cut[d].update(ms_left_by_masks=c_masks.ms, ms_final=c.ms)
        self.events.append({"step": step, "direction": d, "event": "frozen", "reason": reason,
                            "threshold": tau, "gmacs": c.macs(conv) / 1e9,
                            "gmacs_left_by_masks": by_masks / 1e9, "revived": revived,
                            "held_scales": where})

    def _update_importance(self, masks: dict[str, ChannelMask]) -> None:
        """Fold the Taylor scores of the last interval into the running importance (an average
        per step, decayed by half per update), then start a new interval. Under torchrun the
        scores are those of the global batch on every rank (:func:`flush_scores` after each
        backward), so every rank ranks channels identically."""
        with torch.no_grad():
            for m in masks.values():
                rate = m.score / self.interval
                m.importance.copy_(torch.where(m.importance > 0, 0.5 * m.importance + 0.5 * rate,
                                               rate))
                m.score.zero_()

    def _watch_budget(self, n: int) -> None:
        """Between bound updates, check a direction close to its budget after every step.

        The sparsity default moves masks fast enough that one update interval can carry the
        architecture from above the target to below its tolerance band; the fit may then only
        revive channels alive at the last update, and the search would land short. Checking
        every step once within 25 % of the target (the cost is cached by widths) stops it at
        the step it crosses."""
        for d in self.searched:
            if d in self.frozen_at:
                continue
            if self.last_cost[d].value(self.metric) > 1.25 * self.target[d]:
                continue
            c = self._cost(d)
            self.last_cost[d] = c
            if c.value(self.metric) <= self.target[d]:
                self._update_importance(self.masks[d])
                self._freeze_to_budget(d, n, "under budget")

    def after_step(self, step: int) -> dict[str, Any]:
        n = step + 1
        total = self.total_steps
        last_update = n >= total  # the schedule ends: anything still searching is fitted now
        if n % self.interval and not last_update:
            self._watch_budget(n)
            return {}
        self.updates += 1
        b_new = bound_at(min(n, 0.75 * total), total, self.scfg.bound_schedule)
        info: dict[str, Any] = {"bound": round(b_new, 5)}
        for d in self.searched:
            if d in self.frozen_at:
                continue
            masks = self.masks[d]
            self._update_importance(masks)
            if self.lambda_update > 0:
                for group in self._coupled(d):
                    update_group_coefficients(masks, group, self.lambda_update)
            c = self._cost(d)
            self.last_cost[d] = c
            if c.value(self.metric) <= self.target[d]:
                self._freeze_to_budget(d, n, "under budget")
                continue
            if b_new == 0.0 and (last_update or n >= 0.75 * total):
                # hard masks and still above budget: prune the lowest-weight channels
                self._freeze_to_budget(d, n, "schedule ended above budget")
                continue
            with torch.no_grad():
                for name, m in masks.items():
                    if bool(m.frozen):
                        continue
                    b_old = float(m.bound)
                    leaving = (m.weight > b_new) & (m.weight <= b_old)
                    if leaving.any():
                        scale = torch.where(leaving, soft_step(m.weight.detach(), b_old), 1.0)
                        hold_scale(self.G[d], name, m, scale)
                    # alive = kept at the bound of the interval that just ended: a channel the
                    # shrinking bound switches off now trained until this update (revivable)
                    m.alive.copy_(m.kept())
                    m.set_bound(b_new)
                    if self.family == "unet" and float((~m.kept()).float().mean()) > \
                            self.scfg.frozen_threshold:
                        # kept channels jump from m(w) to 1: fold m(w) first (exact freeze)
                        kept = m.kept()
                        scale = torch.where(kept, soft_step(m.weight.detach(), m.bound), 1.0)
                        hold_scale(self.G[d], name, m, torch.where(scale > 0, scale, 1.0))
                        m.freeze()
                        m.weight.requires_grad_(False)
                        m.weight.grad = None
            info[f"gmacs_{d}"] = round(c.macs(self.scfg.macs_convention) / 1e9, 4)
            if c.ms is not None:
                info[f"ms_{d}"] = round(c.ms, 3)
        return info

    def progress_fields(self) -> dict[str, str]:
        d0 = self.searched[0]
        b = float(next(iter(self.masks[d0].values())).bound)
        out = {"b": f"{b:.3f}"}
        for d in self.searched:
            c = self.last_cost[d]
            flag = "*" if d in self.frozen_at else ""
            out[f"GMACs_{d}"] = f"{c.macs(self.scfg.macs_convention) / 1e9:.3f}{flag}"
            if c.ms is not None:
                out[f"ms_{d}"] = f"{c.ms:.1f}{flag}"
        return out


def _floor(spec: Any, masks: dict[str, ChannelMask], metric: str, size: int,
           latency: LatencyTable | None = None) -> float:
    """The budget metric (MACs, or predicted ms with ``latency``) of the smallest architecture
    the masks can leave (one channel per layer)."""
    nothing = {k: torch.zeros_like(m.kept()) for k, m in masks.items()}
    return budget.cost(spec, masks, nothing, size, latency).value(metric)


def reachable_floor(generator: nn.Module, metric: str, size: int,
                    latency: LatencyTable | None = None) -> float:
    """:func:`_floor` of an unmasked generator (on a masked copy), for checks before a run."""
    g = copy.deepcopy(generator)
    spec = budget.cost_spec(g, size)
    return _floor(spec, attach_masks(g), metric, size, latency)


__all__ = ["MaskSchedule", "mask_rates", "reachable_floor"]
