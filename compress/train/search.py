"""``dmad search``: DMAD's differentiable-mask architecture search under a MAC budget.

A masked copy of the generator (masks wrap its norms, :mod:`compress.masks`) trains with the
teacher's GAN objective plus the mask sparsity terms; the mask bound b follows the cube schedule
and reaches 0 (hard masks) at 75 % of the steps. At every bound update: the residual-group
coefficients are recomputed, the architecture is checked against the budget (and frozen when it
fits, fitted to within the tolerance under the target), channels leaving the band upwards get
their mask value folded into a neighbouring affine so the output does not jump, and (UNet) layers
that are mostly off are frozen. When the schedule ends above the budget the lowest-weight
channels are pruned (:func:`compress.budget.fit_to_budget`), closing DMAD's overshoot.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dmad.compress import budget
from dmad.compress.attention import Recorder, co_attention_loss, generator_taps
from dmad.compress.config import opt, to_dict
from dmad.compress.data.split import ImageSplit, make_split
from dmad.compress.distill import colour_moment_loss, ssim_loss
from dmad.compress.errors import DmadError
from dmad.compress.groups import removed_blocks, residual_group, update_group_coefficients
from dmad.compress.io import atomic_save, atomic_write_json
from dmad.compress.latency import LatencyTable
from dmad.compress.masks import (
    ChannelMask,
    attach_masks,
    bound_at,
    bound_loss,
    flush_scores,
    group_loss,
    relu_loss,
    soft_step,
)
from dmad.compress.models import ResnetSpec, spec_to_dict
from dmad.compress.train import distributed, loop
from dmad.compress.train.common import set_requires_grad
from dmad.compress.train.fold import hold_scale
from dmad.compress.train.teacher import TeacherConfig, TeacherStage, init_weights
from dmad.compress.train.teacher_run import (
    Teacher,
    TrainingOverrides,
    load_teacher,
    training_config,
)

SEARCH_FORMAT = "dmad-search"


@dataclass
class SearchConfig(TrainingOverrides):
    """Settings of ``dmad search``. Empty/zero/negative fields come from the teacher run."""

    teacher: str = opt(
        "",
        "a `dmad teacher` run folder, or a dmad model file (e.g. from `dmad import`)",
    )
    teacher_reverse: str = opt("", "B→A model file, for a CycleGAN search from model files")
    init: str = opt("teacher", "teacher (start from the teacher's weights) | scratch (the paper)")
    target_gmacs: float = opt(
        0.0,
        "MAC budget of the searched generator, in G (10^9) MACs at macs_size²",
    )
    target_gmacs_BtoA: float = opt(
        0.0,
        "MAC budget of the B→A generator in G (DMAD's configs differ per direction); "
        "0 = target_gmacs",
    )
    macs_convention: str = opt(
        "paper",
        "paper (thop, as the papers report) | true (MACs actually executed)",
    )
    macs_size: int = opt(256, "side in pixels at which MACs are counted (the papers: 256)")
    budget_tolerance: float = opt(
        0.03,
        "final MACs land in [(1 - tol)·target, target]; a fraction, e.g. 0.03",
    )
    target_ms: float = opt(
        0.0,
        "latency budget in milliseconds as --latency-table predicts it (replaces target_gmacs as "
        "the budget of the early stop and the final fit; 0 = the MAC budget)",
    )
    latency_table: str = opt(
        "",
        "a `dmad latency-table` file, the latency model of the target device: needed by "
        "--target-ms; with a MAC budget its prediction is recorded in architecture.json",
    )
    width_multiple: int = opt(
        -1,
        "round searched widths to multiples of this many channels inside the budget; -1 = the "
        "latency table's measured multiple when one is given, else 1 (off)",
    )
    directions: str = opt("both", "CycleGAN generators to search: both | AtoB | BtoA")
    mask_weight_decay: float = opt(
        -1.0,
        "L1 sparsity weight on the masks; -1 = DMAD's 0.01 for UNet, and for ResNet DMAD's 0.001 "
        "scaled up for short searches by 15 / (mask_lr · 0.75 · steps) (×30 at 200 steps, ×1 at "
        "DMAD's scale)",
    )
    lambda_update: float = opt(
        -1.0,
        "adaptive group sparsity weight λ_u; -1 = 1.0 ResNet, 0 UNet (DMAD)",
    )
    upconv_coeff: float = opt(
        100.0,
        "coefficient of the polarisation (bound) loss on stem/down/up masks",
    )
    mask_lr: float = opt(0.0, "learning rate of the mask weights; 0 = max(lr, 0.5 / (0.75·steps))")
    bound_schedule: str = opt(
        "cube",
        "how the mask bound shrinks to 0 over 75 % of the steps: cube | linear | square",
    )
    bound_updates: int = opt(150, "number of bound updates over the first 75 % of the steps")
    g_only: bool | None = opt(
        None,
        "teacher-G-only distillation search; none = automatic: with --images, or a CycleGAN "
        "teacher without its reverse generator",
    )
    lambda_recon: float = opt(10.0, "G-only search: weight of the L1 to the teacher's outputs")
    lambda_feat: float = opt(
        0.0,
        "G-only search: weight of an L1 between the teacher encoder's features of the student's "
        "and of the teacher's outputs (0 = off)",
    )
    lambda_gan: float = opt(
        1.0,
        "G-only search: weight of the adversarial term (a fresh D sees teacher outputs as real)",
    )
    lambda_ssim: float = opt(0.0, "G-only search: weight of 1 − SSIM to the teacher's outputs")
    lambda_colour: float = opt(
        0.0,
        "G-only search: weight of the colour-moment loss (channel mean and std vs the teacher's)",
    )
    lambda_attention: float = opt(
        -1.0,
        "G-only search: weight of the co-attention loss to the teacher G's attention maps; "
        "-1 = 100 CycleGAN, 10 Pix2Pix (DMAD's fine-tune weights)",
    )
    frozen_threshold: float = opt(
        0.85,
        "UNet: freeze a layer once this fraction of its channels is off (0-1)",
    )
    fit_rank: str = opt(
        "taylor",
        "what the final fit ranks channels by: taylor (first-order importance |dL/dm·m| "
        "accumulated during the search) | weight (the mask weight w)",
    )

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> DmadError:
            return DmadError(f"field {name}: {why}")

        if not self.teacher:
            raise bad("teacher", "required: a `dmad teacher` run folder or a dmad model file")
        if self.init not in ("teacher", "scratch"):
            raise bad("init", f"{self.init!r} is not teacher or scratch")
        if self.macs_convention not in ("paper", "true"):
            raise bad("macs_convention", f"{self.macs_convention!r} is not paper or true")
        if self.target_ms < 0:
            raise bad("target_ms", f"must be >= 0, got {self.target_ms}")
        if self.target_ms > 0 and not self.latency_table:
            raise bad("latency_table", "required by target_ms: the latency model that predicts "
                      "milliseconds (make one with `dmad latency-table`)")
        if not self.target_gmacs > 0 and not self.target_ms > 0:
            raise bad("target_gmacs", f"must be > 0, got {self.target_gmacs} (or give "
                      "target_ms with a latency_table)")
        if self.width_multiple == 0 or self.width_multiple < -1:
            raise bad("width_multiple", f"must be >= 1 or -1 (auto), got {self.width_multiple}")
        if self.target_gmacs_BtoA < 0:
            raise bad("target_gmacs_BtoA", f"must be >= 0, got {self.target_gmacs_BtoA}")
        if self.directions not in ("both", "AtoB", "BtoA"):
            raise bad("directions", f"{self.directions!r} is not both, AtoB or BtoA")
        if not 0 <= self.budget_tolerance < 1:
            raise bad("budget_tolerance", f"must be in [0, 1), got {self.budget_tolerance}")
        if self.steps < 1 or self.bound_updates < 1 or self.macs_size < 4:
            raise bad("steps/bound_updates/macs_size", "must be positive")
        if self.bound_schedule not in ("cube", "linear", "square"):
            raise bad("bound_schedule", f"{self.bound_schedule!r} is not cube, linear or square")
        if self.fit_rank not in ("taylor", "weight"):
            raise bad("fit_rank", f"{self.fit_rank!r} is not taylor or weight")
        for name in ("lambda_recon", "lambda_gan", "lambda_ssim", "lambda_colour", "lambda_feat"):
            if getattr(self, name) < 0:
                raise bad(name, f"must be >= 0, got {getattr(self, name)}")


class SearchStage(TeacherStage):
    """Masked generator(s) trained with the teacher objective plus mask sparsity."""

    name = "search"

    def __init__(self, scfg: SearchConfig, tcfg: TeacherConfig, teacher: Teacher,
                 split: ImageSplit | None = None) -> None:
        self.scfg = scfg
        self.teacher = teacher
        self.split = split
        self.paired_gt = scfg.lambda_gt > 0
        self.masks: dict[str, dict[str, ChannelMask]] = {}
        self.searched: list[str] = []
        self.g_only = scfg.g_only if scfg.g_only is not None else (
            split is not None or (tcfg.task == "cyclegan" and len(teacher.G) < 2))
        if split is not None and not self.g_only:
            raise DmadError("field g_only: --images trains on the teacher's outputs alone; the "
                            "full DMAD objective needs a task dataset (--data)")
        super().__init__(tcfg)
        if self.g_only:
            self._setup_distillation()
        d = next(iter(self.searched))
        self.family = self.G[d].spec.family
        unet = self.family == "unet"
        self.mask_lr = scfg.mask_lr or max(tcfg.lr, 0.5 / (0.75 * tcfg.steps))
        # DMAD's sparsity weight is balanced against the task gradient over ~10^5 Adam steps at
        # lr 2e-4: a mask can drift ~15 (lr × steps in the search window) under a small but
        # steady bias. A short search gives the masks far less room (0.5 by the default mask lr),
        # so the same weight leaves most of the cut to the final fit (measured on the demo: 60 %
        # of the cut by the masks at 0.001, 96 % at 0.01, early stop under budget at 0.03). The
        # ResNet default scales DMAD's weight by the lost room, and is DMAD's own at paper scale.
        # The UNet keeps DMAD's 0.01: its relu term sits on every mask and its per-layer freeze
        # decides layers for good, so the scaled weight froze most layers within a few updates
        # and left the architecture below the budget's tolerance band.
        room = self.mask_lr * 0.75 * tcfg.steps
        self.mask_wd = scfg.mask_weight_decay if scfg.mask_weight_decay >= 0 else (
            0.01 if unet else 0.001 * max(1.0, 15.0 / room))
        self.lambda_update = scfg.lambda_update if scfg.lambda_update >= 0 else (
            0.0 if unet else 1.0)
        self._set_budget()
        self.interval = max(1, round(0.75 * tcfg.steps / scfg.bound_updates))
        # Masks get their own learning rate. Adam moves a weight by about lr per step, so in
        # DMAD's 200 epochs (~10^5 steps) 2e-4 lets a mask cross its band many times over, but a
        # short search would end with masks barely moved from init and the budget met only by
        # the final pruning. The default keeps the paper's lr at paper scale.
        mask_params = {id(m.weight) for ms in self.masks.values() for m in ms.values()}
        other = [p for g in self.G.values() for p in g.parameters() if id(p) not in mask_params]
        masks_w = [m.weight for ms in self.masks.values() for m in ms.values()]
        self.opt_G = torch.optim.Adam([{"params": other, "lr": tcfg.lr},
                                       {"params": masks_w, "lr": self.mask_lr}],
                                      lr=tcfg.lr, betas=(tcfg.beta1, 0.999))
        # Taylor scores of the global batch (not of each rank's share) and, under fp16 loss
        # scaling, of the unscaled loss: the backward's terms are collected, then reduced
        self.defer_scores = self.world > 1 or self.scalers["G"].is_enabled()
        if self.defer_scores:
            for m in (m for ms in self.masks.values() for m in ms.values()):
                m.pending_scores = []
        self.updates = 0
        self.frozen_at: dict[str, int] = {}
        self.cut: dict[str, dict[str, float]] = {}
        self.last_cost: dict[str, budget.Cost] = {}
        self.events: list[dict[str, Any]] = []
        self._check_reachable()

    def _set_budget(self) -> None:
        """The budget's metric (MACs or predicted ms), the width multiple, the latency table
        (checked against the generator) and each searched direction's target."""
        scfg = self.scfg
        self.latency = LatencyTable.load(scfg.latency_table) if scfg.latency_table else None
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

    # -- data and models -------------------------------------------------------------------
    def directions(self) -> list[str]:
        if not self.g_only:
            return super().directions()
        want = {"both": ["AtoB", "BtoA"], "AtoB": ["AtoB"], "BtoA": ["BtoA"]}[self.scfg.directions]
        if self.split is not None or self.cfg.task == "pix2pix":
            want = ["AtoB"]  # the user's images are the generator's inputs
        have = [d for d in want if d in self.teacher.G]
        if not have:
            raise DmadError(f"{self.scfg.teacher}: has no {' or '.join(want)} generator to search")
        return have

    def _setup_distillation(self) -> None:
        """Teacher-G-only search: frozen teacher copies and the attention recorders."""
        self.T = {d: self.teacher.G[d].to(self.device).eval().requires_grad_(False)
                  for d in self.searched}
        self.s_rec = {d: Recorder(generator_taps(self.G[d])) for d in self.searched}
        self.t_rec = {d: Recorder(generator_taps(self.T[d])) for d in self.searched}
        att = self.scfg.lambda_attention
        self.lambda_att = att if att >= 0 else (100.0 if self.cfg.task == "cyclegan" else 10.0)
        if self.scfg.lambda_recon <= 0 and self.scfg.lambda_feat <= 0:
            raise DmadError("field lambda_recon: must be > 0 in a G-only search (or set "
                            "lambda_feat): the teacher's outputs are the only teaching signal")
        if self.scfg.lambda_gt > 0 and "B" not in self.train_set.get(0, None):
            raise DmadError("field lambda_gt: needs aligned A|B images (--images with train/ "
                            "of side-by-side pairs)")

    def make_models(self, direction: str) -> tuple[nn.Module, nn.Module]:
        t, cfg = self.teacher, self.scfg
        if direction not in t.G:
            raise DmadError(f"{cfg.teacher}: has no {direction} generator; a CycleGAN search "
                            "needs both (a teacher run folder, or --teacher-reverse FILE)")
        g = copy.deepcopy(t.G[direction])
        if cfg.init == "scratch":
            init_weights(g)
        want = {"both": ["AtoB", "BtoA"], "AtoB": ["AtoB"], "BtoA": ["BtoA"]}[cfg.directions]
        if self.cfg.task == "pix2pix":
            want = ["AtoB"]
        g.spec_full = g.spec  # type: ignore[attr-defined]
        if direction in want:
            self.masks[direction] = attach_masks(g)
            self.searched.append(direction)
        if direction in t.D and cfg.init == "teacher":
            d = copy.deepcopy(t.D[direction])
        else:
            from dmad.compress.models import PatchDiscriminator

            d = PatchDiscriminator(self.cfg.discriminator_spec())
            init_weights(d)
        return g, d

    def _cost(self, direction: str, keep: dict[str, torch.Tensor] | None = None) -> budget.Cost:
        return budget.cost(self.G[direction].spec_full, self.masks[direction], keep,
                           self.scfg.macs_size, self.latency)

    # -- the teacher-G-only step ------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, torch.Tensor | float]:
        if not self.g_only:
            return super().train_step(step)
        self.batch = self.batches.get(step)
        return self._distill_step()

    def _inputs(self, d: str) -> torch.Tensor:
        return self.batch["A"] if d == "AtoB" else self.batch["B"]

    def _d_input(self, img: torch.Tensor) -> torch.Tensor:
        """Pix2Pix's D is conditional on the input; CycleGAN's sees the image alone."""
        return torch.cat([self.batch["A"], img], 1) if self.cfg.task == "pix2pix" else img

    def _distill_step(self) -> dict[str, torch.Tensor | float]:
        """The masked copy learns to reproduce the frozen teacher on the user's images: L1 to
        the teacher's output (+ optional teacher-encoder features, + optional ground truth), a
        fresh D that takes teacher outputs as real, co-attention to the teacher G's maps, and
        the unchanged DMAD mask losses (:meth:`extra_generator_loss`)."""
        c = self.scfg
        losses: dict[str, torch.Tensor] = {}
        fakes, targets = {}, {}
        set_requires_grad(list(self.D.values()), False)
        self.opt_G.zero_grad(set_to_none=True)
        with self.amp.autocast():
            for d in self.searched:
                x = self._inputs(d)
                self.s_rec[d].clear()
                self.t_rec[d].clear()
                with torch.no_grad():
                    targets[d] = self.T[d](x)
                fakes[d] = self.ddp(self.G[d])(x)
            for d in self.searched:
                fake, target = fakes[d], targets[d]
                if c.lambda_recon > 0:
                    losses[f"recon_{d}"] = c.lambda_recon * self.l1(fake, target)
                if c.lambda_ssim > 0:
                    losses[f"ssim_{d}"] = c.lambda_ssim * ssim_loss(fake, target)
                if c.lambda_colour > 0:
                    losses[f"colour_{d}"] = c.lambda_colour * colour_moment_loss(fake, target)
                if c.lambda_gan > 0:
                    losses[f"G_{d}"] = c.lambda_gan * self.gan(
                        self.D[d](self._d_input(fake)), True, for_discriminator=False)
                s_feats, t_feats = self.s_rec[d].first(), self.t_rec[d].first()
                if self.lambda_att > 0:
                    losses[f"att_{d}"] = self.lambda_att * co_attention_loss(s_feats, t_feats,
                                                                             None)
                if c.lambda_feat > 0:  # the teacher's own encoder as a feature extractor
                    key = "stem" if "stem" in t_feats else next(iter(t_feats))
                    self.t_rec[d].clear()
                    self.T[d](fake)
                    f_fake = self.t_rec[d].first()[key]
                    losses[f"feat_{d}"] = c.lambda_feat * self.l1(f_fake, t_feats[key].detach())
                if c.lambda_gt > 0:
                    losses[f"gt_{d}"] = c.lambda_gt * self.l1(fake, self.batch["B"])
            losses.update(self.extra_generator_loss())
            loss_G = sum(losses.values())
        self.backward_step(loss_G, "G")  # type: ignore[arg-type]
        if c.lambda_gan <= 0:  # no adversarial term: the discriminator is not trained
            return {"G": loss_G, **losses}  # type: ignore[dict-item]
        set_requires_grad(list(self.D.values()), True)
        self.opt_D.zero_grad(set_to_none=True)
        with self.amp.autocast():
            loss_D = torch.zeros((), device=self.device)
            for d in self.searched:
                loss_D = loss_D + self._d_loss(self.ddp(self.D[d]), self._d_input(targets[d]),
                                               self._d_input(fakes[d].detach()))
        self.backward_step(loss_D, "D")
        return {"G": loss_G, **losses, "D": loss_D}  # type: ignore[dict-item]

    def backward_step(self, loss: torch.Tensor, which: str) -> None:
        scaler = self.scalers[which]
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        super().backward_step(loss, which)
        if which != "G" or not self.defer_scores:
            return

        def reduce(flat: torch.Tensor) -> None:
            distributed.all_mean_(flat)
            if scaler.is_enabled():
                flat.div_(scale)
                if not bool(torch.isfinite(flat).all()):
                    flat.zero_()  # an overflowed fp16 step: skipped, as the optimiser skipped it

        flush_scores([m for ms in self.masks.values() for m in ms.values()], reduce)

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
        full = budget.profile_spec(spec, (1, spec.input_nc, size, size)).macs(conv)
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
        total = self.cfg.steps
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
            if self.family == "resnet" and self.lambda_update > 0:
                update_group_coefficients(masks, residual_group(masks), self.lambda_update)
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

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "updates": self.updates,
                "frozen_at": dict(self.frozen_at), "events": list(self.events),
                "cut": dict(self.cut)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.updates = int(state["updates"])
        self.frozen_at = {k: int(v) for k, v in state["frozen_at"].items()}
        self.events = list(state["events"])
        self.cut = dict(state.get("cut") or {})
        for d in self.searched:  # frozen masks (whole direction or one UNet layer) stay fixed
            for m in self.masks[d].values():
                if d in self.frozen_at or bool(m.frozen):
                    m.weight.requires_grad_(False)
        for d in self.searched:
            self.last_cost[d] = self._cost(d)

    # -- outputs ---------------------------------------------------------------------------
    def finish(self, run_dir: Path) -> dict[str, Any]:
        conv = self.scfg.macs_convention
        arch: dict[str, Any] = {"target_gmacs": self.scfg.target_gmacs, "convention": conv,
                                "macs_size": self.scfg.macs_size, "init": self.scfg.init,
                                "mask_weight_decay": self.mask_wd, "mask_lr": self.mask_lr,
                                "fit_rank": self.scfg.fit_rank, "metric": self.metric,
                                "target_ms": self.scfg.target_ms or None,
                                "width_multiple": self.multiple, "directions": {}}
        if self.latency is not None:
            arch["latency_table"] = {"file": str(Path(self.scfg.latency_table).resolve()),
                                     "key": self.latency.key, "size": self.latency.size,
                                     "multiple": self.latency.multiple}
        for d in self.searched:
            if d not in self.frozen_at:  # e.g. steps < bound schedule: fit now
                self._freeze_to_budget(d, self.cfg.steps, "end of search")
            g, masks = self.G[d].eval(), self.masks[d]
            c = self._cost(d)
            full = budget.profile_spec(g.spec_full, (1, g.spec_full.input_nc,
                                                     self.scfg.macs_size, self.scfg.macs_size))
            kept = {n: torch.nonzero(m.kept()).flatten().tolist() for n, m in masks.items()}
            if isinstance(g.spec_full, ResnetSpec):
                keep_stream = torch.stack([masks[n].kept() for n in residual_group(masks)]).any(0)
                kept["stream"] = torch.nonzero(keep_stream).flatten().tolist()
            pruned_spec = dataclasses.replace(g.spec_full, widths=c.widths)
            entry = {
                "file": f"search_G_{d}.pt",
                "spec": spec_to_dict(pruned_spec),
                "widths": c.widths.as_list(),
                "kept_channels": kept,
                "removed_blocks": removed_blocks(masks) if self.family == "resnet" else [],
                "forced_to_one": list(c.forced),
                "gmacs_paper": c.macs_paper / 1e9, "gmacs_true": c.macs_true / 1e9,
                "params": c.params,
                "full_gmacs_paper": full.macs_paper / 1e9, "full_gmacs_true": full.macs_true / 1e9,
                "full_params": full.params,
                "target_gmacs": self.target_gmacs(d) if self.metric != "ms" else None,
                "target_ratio": c.value(self.metric) / self.target[d],
                "frozen_at_step": self.frozen_at.get(d),
                "cut": self.cut.get(d, {}),
            }
            if self.latency is not None:
                assert isinstance(g.spec_full, ResnetSpec)
                pred = self.latency.predict(g.spec_full, c.widths)  # type: ignore[arg-type]
                entry["latency"] = {
                    "backend": self.latency.key.get("backend"),
                    "threads": self.latency.key.get("threads"), "size": self.latency.size,
                    "predicted_ms": round(pred.ms, 3),
                    "full_predicted_ms": round(self.latency.predict(g.spec_full).ms, 3),
                    "target_ms": self.scfg.target_ms or None,
                    "units_ms": {k: round(v, 3) for k, v in pred.units.items()},
                    "measured_ms": None,  # filled in after export (dmad compress)
                }
            arch["directions"][d] = entry
            atomic_save({"format": SEARCH_FORMAT, "version": 1,
                         "spec": spec_to_dict(g.spec_full),
                         "mask_names": list(masks),
                         "state_dict": {k: v.detach().cpu().clone()
                                        for k, v in g.state_dict().items()},
                         "architecture": entry,
                         "meta": {"direction": d, "task": self.cfg.task, "size": self.cfg.size,
                                  "teacher": self.scfg.teacher}},
                        run_dir / entry["file"])
            if d in self.D:
                from dmad.compress.checkpoint import save_model

                save_model(self.D[d], run_dir / f"D_{d}.pt", task=self.cfg.task, direction=d,
                           role="search-discriminator")
        arch["events"] = self.events
        atomic_write_json(run_dir / "architecture.json", arch)
        return {"architecture": "architecture.json",
                "gmacs": {d: e[f"gmacs_{conv}"] for d, e in arch["directions"].items()}}


SPLIT = "split.json"


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
    return _floor(g.spec, attach_masks(g), metric, size, latency)


def resolve_split(images: str, val: str, saved: Path, *, size: int, skip_bad: bool,
                  resume: bool) -> ImageSplit:
    """The image split of a run: a ``split.json`` given as ``images``, the one saved in the run
    folder when resuming (so a resumed run trains on exactly the same files), or a new one."""
    path = Path(images)
    if path.is_file():
        return ImageSplit.load(path)
    if resume and saved.is_file():
        return ImageSplit.load(saved)
    return make_split(path, Path(val) if val else None, size=size, skip_bad=skip_bad)


def load_search(path: Path) -> tuple[nn.Module, dict[str, ChannelMask], dict[str, Any]]:
    """Rebuild a masked generator from a ``search_G_*.pt`` file: (model, masks, architecture)."""
    from dmad.compress.checkpoint import checked_parts, match_shapes
    from dmad.compress.io import safe_load
    from dmad.compress.models import build, spec_from_dict

    obj = safe_load(path)
    if not isinstance(obj, dict) or obj.get("format") != SEARCH_FORMAT:
        raise DmadError(f"{path}: not a dmad search result")
    state, _meta = checked_parts(path, obj)
    if not isinstance(obj.get("architecture"), dict):
        raise DmadError(f"{path}: invalid search result: 'architecture' is not a table")
    try:  # the spec built on the meta device first: a crafted width allocates nothing
        with torch.device("meta"):
            shell = build(spec_from_dict(obj["spec"]))
            attach_masks(shell)
    except Exception as exc:  # a crafted spec can fail anywhere in a constructor
        raise DmadError(f"{path}: invalid model spec ({' '.join(str(exc).split())[:160]})"
                        ) from None
    match_shapes(path, shell, state)
    model = build(spec_from_dict(obj["spec"]))
    masks = attach_masks(model)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise DmadError(f"{path}: weights do not match its spec ({str(exc)[:120]})") from None
    return model.eval(), masks, obj["architecture"]


@loop.stage_verb
def search(cfg: SearchConfig, out: Path, *, resume: bool = False, force: bool = False,
           max_steps: int | None = None) -> dict[str, Any]:
    """Run the DMAD search into ``out``; the one verb behind ``dmad search``."""
    teacher = load_teacher(cfg)
    tcfg = training_config(cfg, teacher)
    split = None
    if cfg.images:
        split = resolve_split(cfg.images, cfg.val, out / SPLIT, size=tcfg.size,
                              skip_bad=tcfg.skip_bad, resume=resume)
    loop.prepare_run_dir(out, resume=resume, force=force)
    if split is not None and not Path(cfg.images).is_file() and distributed.is_main():
        atomic_write_json(out / SPLIT, split.to_dict())
    tcfg.batch_size = loop.per_rank_batch(out, resume, tcfg.batch_size)
    stage = SearchStage(cfg, tcfg, teacher, split)
    return loop.run(stage, out, loop.Schedule(tcfg.steps, tcfg.decay_steps),
                    {"search": to_dict(cfg), "training": to_dict(tcfg)}, resume=resume,
                    checkpoint_every=tcfg.checkpoint_every, log_every=tcfg.log_every,
                    max_steps=max_steps, tensorboard=tcfg.tensorboard)


__all__ = ["SearchConfig", "SearchStage", "load_search", "reachable_floor", "resolve_split",
           "search"]
