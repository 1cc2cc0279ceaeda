"""``dmad finetune``: train the physically pruned student with co-attention distillation.

Full mode (teacher G and D available, e.g. a ``dmad teacher`` run): the task objective (CycleGAN
LSGAN + cycle + identity, or Pix2Pix hinge + L1) plus λ_att · co-attention (targets 0.5·teacher
G map + 0.5·teacher D map, the teacher D run on the student's output) plus λ_D · distillation of
the teacher D's last hidden features. Teacher-G-only mode (a ``dmad import``ed generator, no
D): the student learns the teacher's outputs (paired L1, as GAN Compression distils CycleGAN)
against a freshly trained D, with G-only attention maps. Teachers are frozen in both modes:
eval mode, no gradients, targets detached.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dmad.compress.attention import (
    Recorder,
    attention_map,
    co_attention_loss,
    d_feature_loss,
    discriminator_taps,
    generator_taps,
)
from dmad.compress.checkpoint import load_model, save_model
from dmad.compress.config import opt, read_config_file, to_dict
from dmad.compress.data.augment import augment_inputs, parse_kinds
from dmad.compress.data.split import (
    SPLIT,
    ImageSplit,
    extra_photographs,
    resolve_split,
    whole_images,
)
from dmad.compress.deploy_transforms import apply_deploy_transforms, parse_deploy
from dmad.compress.distill import (
    FeatureAdapters,
    WeightAverage,
    colour_moment_loss,
    ssim_loss,
    swapped,
    tap_widths,
)
from dmad.compress.errors import DmadError
from dmad.compress.io import atomic_write_json
from dmad.compress.models import PatchDiscriminator
from dmad.compress.train import distributed, loop
from dmad.compress.train.common import item_seed, save_grid, set_requires_grad
from dmad.compress.train.objective import (
    PRESETS,
    check_fields,
    choose,
    crop_side_max,
    resolve,
)
from dmad.compress.train.teacher import TeacherConfig, TeacherStage, init_weights
from dmad.compress.train.teacher_run import (
    Teacher,
    TrainingOverrides,
    load_teacher,
    training_config,
)


@dataclass
class FinetuneConfig(TrainingOverrides):
    """Settings of ``dmad finetune``; empty/zero/negative fields come from the runs it reads."""

    search: str = opt("", "a `dmad search` run folder (its masked generators are pruned first)")
    student: str = opt("", "or a slim dmad model file (A→B) to fine-tune instead of a search run")
    teacher: str = opt("", "teacher run folder or model file; '' = the teacher the search used")
    teacher_reverse: str = opt(
        "",
        "B→A teacher model file, when the teacher is given as model files",
    )
    g_only: bool | None = opt(
        None,
        "distil from the teacher G alone; none = automatic (when the teacher has no D)",
    )
    objective: str = opt(
        "auto",
        "auto (fast with a generator alone, dmad with a full teacher) | fast (L1 + SSIM + "
        "colour moments to the teacher's outputs, EMA of the weights, multi-scale crops, "
        "batch 4, lr 1e-4; no adversarial or attention term) | dmad "
        "(DMAD's: GAN + co-attention + L1 ×10 at the teacher run's batch and lr); the fields "
        "below left at -1 take the objective's value",
    )
    lambda_attention: float = opt(
        -1.0,
        "weight of the co-attention loss; -1 = the objective's (fast 0; dmad 100 CycleGAN, "
        "10 Pix2Pix)",
    )
    lambda_gan: float = opt(
        -1.0,
        "teacher-G-only: weight of the adversarial term (a fresh D sees teacher outputs as "
        "real); -1 = the objective's (fast 0, dmad 1)",
    )
    gan_from: float = opt(
        0.0,
        "fraction of the steps after which the adversarial term is on (0 = from the start)",
    )
    lambda_ssim: float = opt(-1.0, "weight of 1 − SSIM to the teacher's outputs; -1 = the "
                             "objective's (fast 1, dmad 0)")
    lambda_colour: float = opt(
        -1.0,
        "weight of the colour-moment loss (per-image channel mean and std vs the teacher's); "
        "-1 = the objective's (fast 10, dmad 0)",
    )
    lambda_features: float = opt(
        -1.0,
        "weight of feature distillation through learnable 1×1 adapters at the co-attention "
        "taps (MSE to the teacher's features); -1 = the objective's (0)",
    )
    ema: float = opt(
        -1.0,
        "decay of the exponential moving average of the student's weights, which is evaluated, "
        "kept and exported (0 = off); -1 = the objective's (fast 0.999, dmad 0)",
    )
    lr_schedule: str = opt("", "linear (constant, then linear decay over decay_steps) | cosine; "
                           "'' = linear")
    augment: str = opt(
        "auto",
        "teacher-G-only on your images: input augmentation the teacher labels, comma list of "
        "colour, exposure, zoom, rotate, mix (none = off); auto = the objective's (fast: all "
        "five when distilling from a generator alone on --images; dmad: none)",
    )
    crop_scale: float = opt(
        -1.0,
        "with --images: multi-scale crops, the image's short side drawn in [size, crop_scale × "
        "size] before the random crop (0 = off: resize then crop, the original recipe); -1 = "
        "the objective's (fast 2, dmad 0)",
    )
    extra_images: str = opt(
        "",
        "teacher-G-only: a folder of unlabelled photographs added to the training images (the "
        "teacher labels them)",
    )
    lambda_dfeat: float = opt(1e-4, "weight of the teacher-D feature distillation (0 = off)")
    lambda_distill: float = opt(
        10.0,
        "weight of the L1 to the teacher's outputs (0 = DMAD's exact objective)",
    )
    eval_every: int = opt(
        0,
        "steps between held-out evaluations (PSNR/SSIM vs teacher) that pick the best "
        "checkpoint; 0 = only with --images, then 10 times per run",
    )
    eval_images: int = opt(16, "held-out images each periodic evaluation uses (0 = all)")
    eval_size: int = opt(
        0,
        "side of the whole held-out images the periodic evaluation judges (with --images); "
        "0 = the training size (dmad compress passes its export size)",
    )
    inception: str = opt(
        "",
        "pytorch-fid weights file: the periodic evaluation also reports FID/KID vs teacher",
    )
    quant_aware: bool = opt(
        False,
        "quantisation-aware distillation: train the student under fake int8 that mirrors the "
        "export's int8 recipe (per-channel int8 weights, per-tensor int8 at every conv's input "
        "and output, equalised as the export does) so its int8 file stays as close to the "
        "teacher as the float one",
    )
    quant_aware_from: float = opt(
        0.5,
        "fraction of the fine-tune's steps after which the fake int8 is on (the float student "
        "trains first; the best checkpoint is picked among the fake-int8 evaluations)",
    )
    deploy: str = opt(
        "",
        "distilled deploy transforms applied to the pruned student before its fine-tune, "
        "comma list: fold-norms (InstanceNorm statistics averaged over training images folded "
        "into the convolutions: no norm at run time), zero-pad (the residual blocks pad with "
        "zeros inside the convolution); ResNet students; measure the fidelity they cost",
    )
    quant_percentile: float = opt(
        99.999,
        "fake int8 activation ranges: this percentile of each batch (100 = its extremes), "
        "held as a slowly fading maximum",
    )

    def __post_init__(self) -> None:
        if not self.search and not self.student:
            raise DmadError("field search: give a `dmad search` run folder (or --student FILE)")
        if self.steps < 1:
            raise DmadError(f"field steps: must be >= 1, got {self.steps}")
        if self.lambda_dfeat < 0:
            raise DmadError(f"field lambda_dfeat: must be >= 0, got {self.lambda_dfeat}")
        if not 0.0 <= self.quant_aware_from < 1.0:
            raise DmadError("field quant_aware_from: must be in [0, 1), got "
                            f"{self.quant_aware_from}")
        if not 50.0 < self.quant_percentile <= 100.0:
            raise DmadError("field quant_percentile: must be in (50, 100], got "
                            f"{self.quant_percentile}")
        parse_deploy(self.deploy)
        if self.eval_size and self.eval_size < 11:
            raise DmadError(f"field eval_size: must be 0 (the training size) or >= 11 (the SSIM "
                            f"window), got {self.eval_size}")
        check_fields(self)


def refuse_incompatible(cfg: FinetuneConfig, g_only: bool, split: ImageSplit | None) -> None:
    """One-line errors for options that cannot work together in this mode."""
    augment = cfg.augment != "auto" and bool(parse_kinds(cfg.augment))  # auto adapts
    if (augment or cfg.extra_images) and split is None:
        raise DmadError("field augment/extra_images: need --images (teacher-G-only "
                        "distillation on your images; a task dataset's pairs stay as they are)")
    if (augment or cfg.extra_images) and not g_only:
        raise DmadError("field augment/extra_images: only for teacher-G-only distillation "
                        "(the task loss needs the real image pairs)")
    if (augment or cfg.extra_images) and cfg.lambda_gt > 0:
        raise DmadError("field augment/extra_images: cannot be combined with lambda_gt (the "
                        "ground truth is neither augmented nor known for extra photographs)")


def zero_filters(path: Path) -> dict[str, Any]:
    """DMAD's union rule leaves all-zero filters in residual writers (method §7.8). They sit
    inside the MAC budget (the search counts the union width) and the fine-tune trains them like
    any other weight, so the student computes no all-zero filter; count them for the record."""
    from dmad.compress.prune import zero_filter_report
    from dmad.compress.search_file import load_search

    model, _, _ = load_search(path)
    r = zero_filter_report(model)
    return {"zero_filters_at_prune": r["zero_filters"], "their_gmacs_true": r["macs_true"] / 1e9}


def _students(cfg: FinetuneConfig) -> tuple[dict[str, nn.Module], dict[str, nn.Module], str]:
    """Pruned students (and the search's discriminators) plus the teacher the search used."""
    from dmad.compress.prune import prune_search_file

    if cfg.student:
        g, _ = load_model(Path(cfg.student))
        return {"AtoB": g}, {}, cfg.teacher
    run = Path(cfg.search)
    if not (run / loop.DONE).exists():
        raise DmadError(f"{run}: not a finished search run (no {loop.DONE})")
    files = sorted(run.glob("search_G_*.pt"))
    if not files:
        raise DmadError(f"{run}: no search_G_*.pt in the search run")
    students = {f.stem[len("search_G_"):]: prune_search_file(f) for f in files}
    ds = {p.stem[2:]: load_model(p)[0] for p in sorted(run.glob("D_*.pt"))}
    searched = read_config_file(run / loop.CONFIG).get("search", {})
    teacher = cfg.teacher or searched.get("teacher", "")
    return students, ds, teacher


def _deployed(students: dict[str, nn.Module], cfg: FinetuneConfig, split: ImageSplit | None,
              size: int) -> dict[str, nn.Module]:
    """The students with ``cfg.deploy``'s transforms (norm statistics from up to 32 whole
    training images at ``size``, the side the student is judged at)."""
    names = parse_deploy(cfg.deploy)
    if not names:
        return students
    out = {}
    for d, g in students.items():
        images = None
        if split is not None and "fold-norms" in names:
            data = whole_images(split, size, side="train", paired=d != "AtoB")
            key = "A" if d == "AtoB" else "B"
            picks = np.linspace(0, len(data) - 1, min(len(data), 32)).round().astype(int)
            rows = [data.get(int(i)) for i in dict.fromkeys(picks.tolist())]
            if any(key not in r for r in rows):
                raise DmadError(f"field deploy: fold-norms needs the {d} student's input "
                                f"images ({key} side) in the split")
            images = torch.stack([r[key] for r in rows])
        out[d] = apply_deploy_transforms(g, names, images)
    return out


class FinetuneStage(TeacherStage):
    """The slim student(s) trained with the task objective plus distillation."""

    name = "finetune"

    def __init__(self, fcfg: FinetuneConfig, tcfg: TeacherConfig, teacher: Teacher,
                 students: dict[str, nn.Module], search_D: dict[str, nn.Module],
                 split: ImageSplit | None = None, extra_images: list[str] | None = None) -> None:
        self.fcfg = fcfg
        self.split = split
        self.paired_gt = fcfg.lambda_gt > 0
        #: first step trained under fake int8 (None: quantisation-aware distillation is off)
        self.qa_start = int(fcfg.quant_aware_from * tcfg.steps) if fcfg.quant_aware else None
        self.qa_report: dict[str, Any] = {}
        self.teacher = teacher
        self.students = students
        self.search_D = search_D
        missing = [d for d in students if d not in teacher.G]
        if missing:
            raise DmadError(f"{fcfg.teacher}: has no {', '.join(missing)} generator for the "
                            f"student(s) of {fcfg.search or fcfg.student}; give a teacher run "
                            "folder or --teacher-reverse FILE")
        self.g_only = fcfg.g_only if fcfg.g_only is not None else not teacher.D
        if not self.g_only and not teacher.D:
            raise DmadError(f"{fcfg.teacher or fcfg.search}: full co-attention distillation needs "
                            "the teacher's discriminator; use --g-only true with a generator alone")
        # the objective ``auto`` means (finetune() has done it already; a stage built directly
        # from a config has not)
        fcfg = dataclasses.replace(fcfg, objective=choose(fcfg.objective, self.g_only))
        self.fcfg = fcfg
        refuse_incompatible(fcfg, self.g_only, split)
        self.scale_max = crop_side_max(fcfg, tcfg.size, split is not None)  # read by open_data
        self.extra_images = extra_images
        super().__init__(tcfg)
        # after the base class: --epochs has made the step count final
        self.obj = resolve(fcfg, task=tcfg.task, g_only=self.g_only, steps=self.cfg.steps,
                           size=self.cfg.size, multi_scale=split is not None)
        divisor = getattr(next(iter(students.values())).spec, "divisor", 4)
        if fcfg.eval_size % divisor:
            raise DmadError(f"field eval_size: {fcfg.eval_size} is not a multiple of {divisor} "
                            "for this generator")
        self.lambda_att = self.obj.attention
        self.lambda_distill = fcfg.lambda_distill
        if self.g_only and self.lambda_distill <= 0 and self.obj.ssim <= 0:
            raise DmadError("field lambda_distill: must be > 0 in teacher-G-only mode (the "
                            "teacher's outputs are the only teaching signal besides attention)")
        self.T = {d: teacher.G[d].to(self.device).eval().requires_grad_(False) for d in self.G
                  if d in teacher.G}
        self.TD = {} if self.g_only else {
            d: teacher.D[d].to(self.device).eval().requires_grad_(False) for d in self.G
            if d in teacher.D}
        self.s_rec = {d: Recorder(generator_taps(self.G[d])) for d in self.students}
        self.t_rec = {d: Recorder(generator_taps(self.T[d])) for d in self.students}
        self.d_rec = {d: Recorder(dict(zip(("att", "hidden"), discriminator_taps(D), strict=True)))
                      for d, D in self.TD.items()}
        self.adapters = self._make_adapters()
        self.ema = {d: WeightAverage(self.G[d], self.obj.ema) for d in self.students} \
            if self.obj.ema > 0 else {}
        self.seconds_before, self.started = 0.0, time.perf_counter()
        every = fcfg.eval_every or (max(1, tcfg.steps // 10) if split is not None else 0)
        self.eval_every = every
        self.best: dict[str, Any] = {}  # {"step", "psnr", "ssim", "state": {d: state_dict}}
        self.evals: list[dict[str, Any]] = []
        self._val_cache: tuple[list[torch.Tensor], dict[str, list[torch.Tensor]]] | None = None
        self.objective = self.obj.describe() + (
            f", under fake int8 from step {self.qa_start + 1}" if self.qa_start is not None
            else "")

    def _make_adapters(self) -> nn.ModuleDict:
        """1×1 adapters from the student's to the teacher's width at each tap (feature
        distillation), trained by the generator optimiser; empty when that term is off."""
        out = nn.ModuleDict()
        if self.obj.features <= 0:
            return out
        for d in self.students:
            x = torch.zeros(1, self.G[d].spec.input_nc, self.cfg.size, self.cfg.size,
                            device=self.device)
            widths = tap_widths(self.G[d], self.T[d], generator_taps(self.G[d]),
                                generator_taps(self.T[d]), x)
            with torch.random.fork_rng(devices=[]):  # the same adapters for any rank or device
                torch.manual_seed(self.cfg.seed + 15_485_863)
                out[d] = FeatureAdapters(widths)
            out[d].to(self.device)
        self.opt_G.add_param_group({"params": list(out.parameters()), "lr": self.cfg.lr})
        return out

    def modules(self) -> dict[str, nn.Module]:
        """The base stage's modules plus the feature adapters (checkpointed with them)."""
        return {**super().modules(), **{f"adapters_{d}": m for d, m in self.adapters.items()}}

    def reduce_gradients(self, which: str) -> None:
        """The adapters live outside DDP (they are not part of any generator): under torchrun
        their gradients are averaged over the ranks here, as DDP does for the generator's, so
        every rank takes the same step as one process with the global batch would."""
        if which == "G" and self.world > 1:
            for p in self.adapters.parameters():
                if p.grad is not None:
                    distributed.all_mean_(p.grad)

    def backward_step(self, loss: torch.Tensor, which: str) -> None:
        """The base step, then the weight average follows every generator update (so what is
        kept is an average of the weights the optimiser actually produced)."""
        super().backward_step(loss, which)
        if which == "G":
            for d, avg in self.ema.items():
                avg.update(self.G[d])

    def kept_weights(self, d: str) -> dict[str, torch.Tensor] | None:
        """The weights evaluated, kept and exported: the average when EMA is on."""
        return self.ema[d].shadow if d in self.ema else None

    def directions(self) -> list[str]:
        if self.g_only:
            return list(self.students)
        return super().directions()

    def make_models(self, direction: str) -> tuple[nn.Module, nn.Module]:
        if direction in self.students:
            g = self.students[direction]
            if self.qa_start is not None:  # before the optimiser and any checkpoint load
                from dmad.compress.quant_aware import QuantAwareConfig, quant_aware_

                rep = quant_aware_(g, QuantAwareConfig(percentile=self.fcfg.quant_percentile))
                self.qa_report = {**rep.as_dict(), "from_step": self.qa_start + 1}
        elif direction in self.teacher.G:  # CycleGAN with one searched direction
            import copy

            g = copy.deepcopy(self.teacher.G[direction])
        else:
            raise DmadError(f"no {direction} generator: a CycleGAN fine-tune needs both "
                            "directions (search both, or give --teacher-reverse)")
        if direction in self.search_D:
            d = self.search_D[direction]
        elif direction in self.teacher.D and not self.g_only:
            import copy

            d = copy.deepcopy(self.teacher.D[direction])
        else:
            d = PatchDiscriminator(self.cfg.discriminator_spec())
            init_weights(d)
        return g, d

    # -- distillation ----------------------------------------------------------------------
    def _inputs(self, d: str) -> torch.Tensor:
        return self.batch["A"] if d == "AtoB" else self.batch["B"]

    def _d_input(self, d: str, img: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.batch["A"], img], 1) if self.cfg.task == "pix2pix" else img

    def extra_generator_loss(self) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        for d in self.students:
            s_feats = self.s_rec[d].first()
            fake = self.s_out[d]
            self.t_rec[d].clear()
            with torch.no_grad():
                t_out = self.T[d](self._inputs(d))
            t_feats = self.t_rec[d].first()
            d_map = None
            if d in self.TD:
                rec = self.d_rec[d]
                rec.clear()
                self.TD[d](self._d_input(d, fake))  # grads reach the student, not D_T
                d_map = attention_map(rec.out["att"][0]).detach()
                s_hidden = rec.out["hidden"][0]
                with torch.no_grad():
                    rec.clear()
                    self.TD[d](self._d_input(d, t_out))
                    t_hidden = rec.out["hidden"][0]
                if self.fcfg.lambda_dfeat > 0:
                    losses[f"dfeat_{d}"] = self.fcfg.lambda_dfeat * d_feature_loss(s_hidden,
                                                                                    t_hidden)
            if self.lambda_att > 0:
                losses[f"att_{d}"] = self.lambda_att * co_attention_loss(s_feats, t_feats, d_map)
            if self.lambda_distill > 0:
                losses[f"distill_{d}"] = self.lambda_distill * self.l1(fake, t_out)
            if self.obj.ssim > 0:
                losses[f"ssim_{d}"] = self.obj.ssim * ssim_loss(fake, t_out)
            if self.obj.colour > 0:
                losses[f"colour_{d}"] = self.obj.colour * colour_moment_loss(fake, t_out)
            if d in self.adapters:
                losses[f"feat_{d}"] = self.obj.features * self.adapters[d](s_feats, t_feats)
            if self.fcfg.lambda_gt > 0 and "B" in self.batch:
                losses[f"gt_{d}"] = self.fcfg.lambda_gt * self.l1(fake, self.batch["B"])
            self.t_outs[d] = t_out
        return losses

    def train_step(self, step: int) -> dict[str, torch.Tensor | float]:
        for r in (*self.s_rec.values(), *self.t_rec.values(), *self.d_rec.values()):
            r.clear()
        self.s_out: dict[str, torch.Tensor] = {}
        self.t_outs: dict[str, torch.Tensor] = {}
        if self.qa_start is not None:
            from dmad.compress.quant_aware import set_quant_aware

            for d in self.students:
                set_quant_aware(self.G[d], step >= self.qa_start)
        hooks = [self.G[d].register_forward_hook(self._first_output(d)) for d in self.students]
        try:
            if not self.g_only:
                return super().train_step(step)
            self.batch = self._augmented(self.batches.get(step), step)
            return self._g_only_step(step)
        finally:
            for h in hooks:
                h.remove()

    def _first_output(self, d: str):  # type: ignore[no-untyped-def]
        def fn(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            self.s_out.setdefault(d, out)
        return fn

    def _augmented(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """The students' inputs with the configured augmentation. Each image's draw comes from
        its index in the global batch (as its crop does), so the inputs do not depend on the
        number of processes; ``mix`` pairs images within each process's share of the batch."""
        if not self.obj.augment:
            return batch
        keys = {"A" if d == "AtoB" else "B" for d in self.students}
        first = step * self.global_batch + self.rank * self.cfg.batch_size
        solo = tuple(k for k in self.obj.augment if k != "mix")

        def one(x: torch.Tensor) -> torch.Tensor:
            parts = [augment_inputs(x[j:j + 1], solo, item_seed(self.cfg.seed + 7919, first + j))
                     for j in range(x.shape[0])]
            out = torch.cat(parts) if solo else x
            if "mix" in self.obj.augment:
                out = augment_inputs(out, ("mix",), item_seed(self.cfg.seed + 7927, first))
            return out

        return {k: one(v) if k in keys else v for k, v in batch.items()}

    def _g_only_step(self, step: int) -> dict[str, torch.Tensor | float]:
        """Distillation of the teacher's outputs, with a freshly trained D when the adversarial
        term is on at this step (no D work at all when it is off)."""
        out: dict[str, torch.Tensor] = {}
        gan = self.obj.gan if step >= self.obj.gan_from else 0.0
        set_requires_grad(list(self.D.values()), False)
        self.opt_G.zero_grad(set_to_none=True)
        with self.amp.autocast():
            fakes = {d: self.ddp(self.G[d])(self._inputs(d)) for d in self.students}
            for d, fake in fakes.items():
                if gan > 0:
                    out[f"G_{d}"] = gan * self.gan(self.D[d](self._d_input(d, fake)), True,
                                                   for_discriminator=False)
            out.update(self.extra_generator_loss())
            loss_G = sum(out.values())
        self.backward_step(loss_G, "G")  # type: ignore[arg-type]
        if gan <= 0:
            return {"G": loss_G, **out}  # type: ignore[dict-item]
        set_requires_grad(list(self.D.values()), True)
        self.opt_D.zero_grad(set_to_none=True)
        with self.amp.autocast():
            loss_D = torch.zeros((), device=self.device)
            for d, fake in fakes.items():
                # the user's images have no target side: the teacher's outputs are the real
                # images
                key = "B" if d == "AtoB" else "A"
                real = self.batch[key] if key in self.batch and self.split is None else \
                    self.t_outs[d].detach()
                loss_D = loss_D + self._d_loss(self.ddp(self.D[d]), self._d_input(d, real),
                                               self._d_input(d, fake))
        self.backward_step(loss_D, "D")
        return {"G": loss_G, **out, "D": loss_D}  # type: ignore[dict-item]

    # -- best checkpoint -------------------------------------------------------------------
    def _eval_set(self):  # type: ignore[no-untyped-def]
        """The held-out images the periodic evaluation judges: at ``eval_size`` when set."""
        size = self.fcfg.eval_size
        if self.split is None or not size or size == self.cfg.size:
            return self.test_set
        return whole_images(self.split, size)

    def _val_set(self) -> tuple[list[torch.Tensor], dict[str, list[torch.Tensor]]]:
        """Held-out inputs (whole images) and the teacher's outputs."""
        if self._val_cache is None:
            held = self._eval_set()
            n = len(held) if self.fcfg.eval_images <= 0 else min(self.fcfg.eval_images,
                                                                  len(held))
            xs: list[torch.Tensor] = []
            ts: dict[str, list[torch.Tensor]] = {d: [] for d in self.students}
            with torch.no_grad():
                for i in range(n):
                    item = held.get(i, None)
                    for d in self.students:
                        key = "A" if d == "AtoB" else "B"
                        x = item[key].unsqueeze(0).to(self.device)
                        if d == next(iter(self.students)):
                            xs.append(x)
                        ts[d].append(self.T[d](x))
            self._val_cache = (xs, ts)
        return self._val_cache

    def evaluate_students(self) -> dict[str, float]:
        """PSNR/SSIM vs the teacher over the held-out images (both directions pooled): mean and
        worst image, and the largest per-channel colour shift (0–255), of the kept weights."""
        from dmad.compress.evaluate import fidelity_summary, image_fidelity

        xs, ts = self._val_set()
        per_image = []
        with torch.no_grad():
            for d, g in self.G.items():
                if d not in self.students:
                    continue
                with swapped(g, self.kept_weights(d)):
                    g.eval()
                    per_image += [image_fidelity(g(x), t) for x, t in zip(xs, ts[d], strict=True)]
                    g.train()
        f = fidelity_summary(per_image)
        out = {"psnr": f["psnr_mean"], "ssim": f["ssim_mean"], "psnr_worst": f["psnr_worst"],
               "ssim_worst": f["ssim_worst"], "colour_shift_max": f["colour_mean_shift_max"]}
        if self.fcfg.inception:
            from dmad.compress.fid import fid_kid, load_inception

            if getattr(self, "_inception", None) is None:
                self._inception = load_inception(Path(self.fcfg.inception)).to(self.device)
            d0 = next(iter(self.students))
            with torch.no_grad(), swapped(self.G[d0], self.kept_weights(d0)) as g:
                fakes = [g.eval()(x).cpu() for x in xs]
                g.train()
            fk = fid_kid([t.cpu() for t in ts[d0]], fakes, self._inception)
            out.update({"fid": fk["fid"], "kid": fk["kid_mean"]})
        return out

    def after_step(self, step: int) -> dict[str, Any]:
        n = step + 1
        if not self.eval_every or (n % self.eval_every and n != self.cfg.steps):
            return {}
        if not distributed.is_main():  # rank 0 evaluates, keeps the best and writes it
            return {}
        m = self.evaluate_students()
        quantised = self.qa_start is not None and n > self.qa_start
        self.evals.append({"step": n, **m, "seconds": round(self.elapsed(), 1),
                           **({"fake_int8": True} if quantised else {})})
        shown = {"val_psnr": round(m["psnr"], 4), "val_ssim": round(m["ssim"], 5),
                 "val_psnr_worst": round(m["psnr_worst"], 4)}
        if self.qa_start is not None and not quantised:
            return shown
        if not self.best or m["psnr"] > self.best["psnr"]:
            state = {}
            for d in self.students:
                kept = self.kept_weights(d)
                src = kept if kept is not None else self.G[d].state_dict()
                state[d] = {k: v.detach().cpu().clone() for k, v in src.items()}
            self.best = {"step": n, **m, "state": state}
        return shown

    def elapsed(self) -> float:
        """Wall seconds this fine-tune has run (over resumes), evaluations included."""
        return self.seconds_before + time.perf_counter() - self.started

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "best": self.best, "evals": list(self.evals),
                "ema": {d: a.state_dict() for d, a in self.ema.items()},
                "seconds": self.elapsed(), "deploy": self.fcfg.deploy}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        if parse_deploy(state.get("deploy", "")) != parse_deploy(self.fcfg.deploy):
            raise DmadError(f"checkpoint.pt: the run was started with --deploy "
                            f"{state.get('deploy') or '(none)'!r}; resume with the same")
        self.best = state.get("best") or {}
        self.evals = list(state.get("evals") or [])
        self.seconds_before, self.started = float(state.get("seconds", 0.0)), time.perf_counter()
        for d, a in self.ema.items():
            if d not in (state.get("ema") or {}):
                raise DmadError("checkpoint.pt: has no weight average for the student; it was "
                                "saved with another --ema (resume with the run's settings)")
            a.load_state_dict(state["ema"][d])

    def inputs_record(self) -> dict[str, Any]:
        """How much input the student saw: the source images (and the extra unlabelled ones)
        and the crops drawn from them, every one a distinct input under random crops."""
        n_extra = len(self.extra_images or [])
        return {"source_images": len(self.train_set) - n_extra, "extra_images": n_extra,
                "inputs_seen": self.cfg.steps * self.global_batch,
                "multi_scale_max_side": self.obj.scale_max or None,
                "augment": list(self.obj.augment)}

    def _zero_filters(self, d: str) -> dict[str, Any]:
        path = Path(self.fcfg.search) / f"search_G_{d}.pt" if self.fcfg.search else None
        return zero_filters(path) if path is not None and path.is_file() else {}

    def finish(self, run_dir: Path) -> dict[str, Any]:
        from dmad.compress.arch import profile

        c = self.cfg
        import copy

        from dmad.compress.quant_aware import strip_quant_aware_

        out: dict[str, Any] = {"task": c.task, "g_only": self.g_only,
                               "objective": self.objective, "students": {}}
        qa = {"quant_aware": self.qa_report} if self.qa_report else {}
        out.update(qa)
        out["inputs"] = self.inputs_record()
        for d in self.ema:  # the average is the student from here on
            self.G[d].load_state_dict(self.ema[d].shadow)
        if self.best:
            out["best"] = {k: v for k, v in self.best.items() if k != "state"}
            out["evals"] = self.evals
            for d in self.students:  # the last weights are kept beside the best
                save_model(strip_quant_aware_(copy.deepcopy(self.G[d])).eval(),
                           run_dir / f"last_student_G_{d}.pt", task=c.task,
                           direction=d, role="student-last", run=str(run_dir), size=c.size,
                           teacher=self.fcfg.teacher, search=self.fcfg.search, step=c.steps,
                           **qa)
                best = copy.deepcopy(self.G[d])
                best.load_state_dict(self.best["state"][d])
                self.G[d] = best
        for d in self.students:  # float weights as trained, the model's own state-dict keys
            self.G[d] = strip_quant_aware_(self.G[d])
        rows = []
        for d in self.students:
            g = self.G[d].eval()
            save_model(g, run_dir / f"student_G_{d}.pt", task=c.task, direction=d,
                       role="student", run=str(run_dir), size=c.size,
                       teacher=self.fcfg.teacher, search=self.fcfg.search,
                       step=self.best.get("step", c.steps), objective=self.objective, **qa)
            prof = profile(g, (1, g.spec.input_nc, 256, 256))
            out["students"][d] = {"file": f"student_G_{d}.pt", "params": prof.params,
                                  "gmacs_paper_256": prof.macs_paper / 1e9,
                                  "gmacs_true_256": prof.macs_true / 1e9,
                                  **self._zero_filters(d)}
            with torch.no_grad():
                for i in range(min(4, len(self.test_set))):
                    item = self.test_set.get(i, None)
                    x = (item["A"] if d == "AtoB" else item["B"]).unsqueeze(0).to(self.device)
                    rows.append([x[0], self.T[d](x)[0], g(x)[0]])
        save_grid(rows, run_dir / "samples.png")
        return out


@loop.stage_verb
def finetune(cfg: FinetuneConfig, out: Path, *, resume: bool = False, force: bool = False,
             max_steps: int | None = None) -> dict[str, Any]:
    """Fine-tune the pruned student(s) into ``out``; the one verb behind ``dmad finetune``."""
    students, search_D, teacher_path = _students(cfg)
    if not teacher_path:
        raise DmadError("field teacher: not given and the search run does not name one")
    cfg = dataclasses.replace(cfg, teacher=teacher_path)
    teacher = load_teacher(cfg)
    if cfg.search:  # the search's data, task and size are the student's defaults
        searched = read_config_file(Path(cfg.search) / loop.CONFIG).get("training", {})
        teacher.base.update({k: v for k, v in searched.items() if k not in ("steps",
                                                                            "decay_steps")})
    g_only = cfg.g_only if cfg.g_only is not None else not teacher.D
    cfg = dataclasses.replace(cfg, objective=choose(cfg.objective, g_only))
    tcfg = training_config(cfg, teacher)
    preset = PRESETS[cfg.objective]
    if not cfg.batch_size and preset["batch_size"]:
        tcfg.batch_size = preset["batch_size"]
    if not cfg.lr and preset["lr"]:
        tcfg.lr = preset["lr"]
    split = None
    images = cfg.images or (str(Path(cfg.search) / SPLIT) if cfg.search and
                            (Path(cfg.search) / SPLIT).is_file() else "")
    if images:  # the search's split by default: the same held-out images stay held out
        split = resolve_split(images, cfg.val, out / SPLIT, size=tcfg.size,
                              skip_bad=tcfg.skip_bad, resume=resume)
    # every refusal before the run folder is touched (--force would empty it first)
    refuse_incompatible(cfg, g_only, split)
    students = _deployed(students, cfg, split, cfg.eval_size or tcfg.size)
    extra = extra_photographs(Path(cfg.extra_images), split, tcfg.size) \
        if cfg.extra_images and split is not None else None
    loop.prepare_run_dir(out, resume=resume, force=force)
    if split is not None and not Path(images).is_file() and distributed.is_main():
        atomic_write_json(out / SPLIT, split.to_dict())
    tcfg.batch_size = loop.per_rank_batch(out, resume, tcfg.batch_size)
    stage = FinetuneStage(cfg, tcfg, teacher, students, search_D, split, extra)
    schedule = loop.Schedule(tcfg.steps, tcfg.decay_steps, stage.obj.schedule)
    return loop.run(stage, out, schedule,
                    {"finetune": to_dict(cfg), "training": to_dict(tcfg)}, resume=resume,
                    checkpoint_every=tcfg.checkpoint_every, log_every=tcfg.log_every,
                    max_steps=max_steps, tensorboard=tcfg.tensorboard)
