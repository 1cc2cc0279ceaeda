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
from dmad.compress.data.split import SPLIT, ImageSplit, resolve_split
from dmad.compress.distill import colour_moment_loss, ssim_loss
from dmad.compress.errors import DmadError
from dmad.compress.graph_cost import GraphSpec, as_graph, stream_writers
from dmad.compress.graph_model import student_spec
from dmad.compress.groups import removed_blocks
from dmad.compress.io import atomic_write_json
from dmad.compress.masks import (
    ChannelMask,
    attach_masks,
    flush_scores,
)
from dmad.compress.models import ResnetSpec, spec_to_dict
from dmad.compress.search_file import SEARCH_FORMAT, load_search, save_search
from dmad.compress.train import distributed, loop
from dmad.compress.train.common import set_requires_grad
from dmad.compress.train.mask_schedule import MaskSchedule, mask_rates, reachable_floor
from dmad.compress.train.teacher import TeacherConfig, TeacherStage, init_weights
from dmad.compress.train.teacher_run import (
    Teacher,
    TrainingOverrides,
    load_teacher,
    training_config,
)


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


class SearchStage(MaskSchedule, TeacherStage):
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
        self.mask_lr, self.mask_wd, self.lambda_update = mask_rates(scfg, tcfg.lr, tcfg.steps,
                                                                    self.family)
        self._set_budget()
        self.interval = max(1, round(0.75 * tcfg.steps / scfg.bound_updates))
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
        g.spec_full = budget.cost_spec(g, cfg.macs_size)  # type: ignore[attr-defined]
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
            full = _full_cost(g.spec_full, self.scfg.macs_size)
            kept = {n: torch.nonzero(m.kept()).flatten().tolist() for n, m in masks.items()}
            if isinstance(g.spec_full, ResnetSpec):
                stream = stream_writers(g.spec_full)
                keep_stream = torch.stack([masks[n].kept() for n in stream]).any(0)
                kept["stream"] = torch.nonzero(keep_stream).flatten().tolist()
            entry = {
                "file": f"search_G_{d}.pt",
                "spec": spec_to_dict(_pruned_spec(g, masks, c)),
                "widths": c.widths.as_list() if hasattr(c.widths, "as_list") else c.widths,
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
                pred = budget.predict(g.spec_full, masks, self.latency, widths=c.widths)
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
            save_search(run_dir / entry["file"], g, masks, entry,
                        {"direction": d, "task": self.cfg.task, "size": self.cfg.size,
                         "teacher": self.scfg.teacher})
            if d in self.D:
                from dmad.compress.checkpoint import save_model

                save_model(self.D[d], run_dir / f"D_{d}.pt", task=self.cfg.task, direction=d,
                           role="search-discriminator")
        arch["events"] = self.events
        atomic_write_json(run_dir / "architecture.json", arch)
        return {"architecture": "architecture.json",
                "gmacs": {d: e[f"gmacs_{conv}"] for d, e in arch["directions"].items()}}


def _full_cost(spec: Any, size: int) -> budget.Cost:
    """The unpruned generator's cost at ``size``², counted from its traced graph."""
    graph = as_graph(spec)
    paper, true, params = graph.macs({}, size)
    widths = {} if isinstance(spec, GraphSpec) else spec.widths
    return budget.Cost(widths, (), paper, true, params)


def _pruned_spec(g: nn.Module, masks: dict[str, ChannelMask], c: budget.Cost) -> Any:
    """The spec of the student the search leaves: widths, or a traced class's mask values."""
    if isinstance(g.spec_full, GraphSpec):
        return student_spec(g.spec, masks)  # type: ignore[arg-type]
    return dataclasses.replace(g.spec_full, widths=c.widths)


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


__all__ = ["SEARCH_FORMAT", "SPLIT", "SearchConfig", "SearchStage", "load_search",
           "reachable_floor", "resolve_split", "search"]
