"""The fine-tune's objective: two named presets, every weight overridable, one name in words.

``fast`` is the teacher-G-only distillation chosen by measurement on photo-trained teachers
(``scripts/distill_objectives.py``, ``scripts/fidelity_vs_time.py``, ``docs/results.md``): the
student learns the teacher's outputs directly (L1 + SSIM + colour moments), its weights are
averaged (EMA) and the average is what is evaluated, kept and exported; crops are drawn at
several scales so a small training crop sees the statistics of the whole images it is judged
on; and the inputs are varied (colour, exposure, zoom, rotation, mixing of photographs), which
the teacher labels: what moved photographs the student never saw was the input it trained on. With a
generator alone there is no adversarial term and no attention map: a freshly trained
discriminator and attention maps ×100 gave the student a noisy signal per step that pulled it
away from the teacher. With a full teacher (G and D, a task dataset) the task loss, GAN
included, stays and these terms are added to it.

``auto`` (the default) picks by what the teacher is: ``fast`` for a generator alone, ``dmad``
with a full teacher (its G and D and a task dataset), where DMAD's objective has the real
pairs and the teacher's discriminator to learn from (on the demo's two-direction teacher it
beat ``fast`` by 1.1 dB after the same steps, ``scripts/demo_objectives.py``).

``dmad`` is DMAD's fine-tune: the task or adversarial loss + co-attention (×100 CycleGAN, ×10
Pix2Pix) + L1 to the teacher ×10, the teacher run's batch and learning rate, no averaging.
With a full teacher (G and D) and ``lambda_distill 0`` it is DMAD's exact objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dmad.compress.data.augment import parse_kinds
from dmad.compress.errors import DmadError

OBJECTIVES = ("auto", "fast", "dmad")
SCHEDULES = ("linear", "cosine")

#: What each preset puts in the fields left at -1 (or '').
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"lambda_gan": 0.0, "lambda_attention": 0.0, "lambda_ssim": 1.0,
             "lambda_colour": 10.0, "lambda_features": 0.0, "ema": 0.999, "crop_scale": 2.0,
             "lr_schedule": "linear", "batch_size": 4, "lr": 1e-4,
             "augment": "colour,exposure,zoom,rotate,mix"},
    "dmad": {"lambda_gan": 1.0, "lambda_attention": None, "lambda_ssim": 0.0,
             "lambda_colour": 0.0, "lambda_features": 0.0, "ema": 0.0, "crop_scale": 0.0,
             "lr_schedule": "linear", "batch_size": 0, "lr": 0.0, "augment": ""},
}


@dataclass(frozen=True)
class Objective:
    """Resolved weights of one fine-tune (every field a number, no sentinel left)."""

    preset: str
    g_only: bool
    gan: float
    gan_from: int  # first step with the adversarial term
    attention: float
    dfeat: float
    distill: float
    ssim: float
    colour: float
    features: float
    ema: float
    augment: tuple[str, ...]
    scale_max: int  # multi-scale crops: largest short side in pixels (0 = off)
    schedule: str

    def describe(self) -> str:
        """The objective in words, written to DONE.json, the model files and every report."""
        parts = ["task loss"] if not self.g_only else []
        if self.g_only and self.gan > 0:
            when = f" from step {self.gan_from + 1}" if self.gan_from else ""
            parts.append("GAN" + (f" ×{self.gan:g}" if self.gan != 1 else "") + when)
        if self.attention > 0:
            parts.append(f"co-attention ×{self.attention:g} (teacher G"
                         + ("" if self.g_only else " + D") + " maps)")
        if not self.g_only and self.dfeat > 0:
            parts.append(f"teacher-D features ×{self.dfeat:g}")
        for w, what in ((self.distill, "L1 to teacher outputs"), (self.ssim, "SSIM to teacher"),
                        (self.colour, "colour moments to teacher"),
                        (self.features, "features via 1×1 adapters")):
            if w > 0:
                parts.append(f"{what} ×{w:g}")
        extras = []
        if self.ema > 0:
            extras.append(f"EMA {self.ema:g} of the weights (the average is kept)")
        if self.scale_max:
            extras.append(f"multi-scale crops (short side ≤ {self.scale_max} px)")
        if self.augment:
            extras.append("augmented inputs: " + "+".join(self.augment))
        if self.schedule != "linear":
            extras.append(f"{self.schedule} LR")
        name = f"{self.preset}: " + " + ".join(p for p in parts if p)
        name += "; " + ", ".join(extras) if extras else ""
        exact = not self.g_only and self.preset == "dmad" and self.distill == 0
        return name + (" (DMAD's exact objective)" if exact else "")


def choose(objective: str, g_only: bool) -> str:
    """The preset an ``objective`` field means for this mode (``auto``: fast with a generator
    alone, dmad with a full teacher)."""
    if objective != "auto":
        return objective
    return "fast" if g_only else "dmad"


def preset_value(cfg: Any, field: str, sentinel: Any = -1.0) -> Any:
    """The field's own value, or the preset's when the field holds its sentinel."""
    v = getattr(cfg, field)
    return PRESETS[cfg.objective][field] if v == sentinel else v


def check_fields(cfg: Any) -> None:
    """One-line errors for the objective's fields of a FinetuneConfig."""
    if cfg.objective not in OBJECTIVES:
        raise DmadError(f"field objective: {cfg.objective!r} is not one of "
                        f"{', '.join(OBJECTIVES)}")
    if not 0.0 <= cfg.gan_from < 1.0:
        raise DmadError(f"field gan_from: must be in [0, 1), got {cfg.gan_from}")
    if cfg.ema != -1.0 and not 0.0 <= cfg.ema < 1.0:
        raise DmadError(f"field ema: must be in [0, 1) (or -1 for the objective's), got "
                        f"{cfg.ema}")
    if cfg.lr_schedule not in ("", *SCHEDULES):
        raise DmadError(f"field lr_schedule: {cfg.lr_schedule!r} is not linear or cosine")
    if cfg.crop_scale != -1.0 and not (cfg.crop_scale == 0.0 or cfg.crop_scale >= 1.0):
        raise DmadError(f"field crop_scale: must be 0 (off) or >= 1, got {cfg.crop_scale}")
    for name in ("lambda_gan", "lambda_ssim", "lambda_colour", "lambda_features"):
        v = getattr(cfg, name)
        if v < 0 and v != -1.0:
            raise DmadError(f"field {name}: must be >= 0 (or -1 for the objective's), got {v}")
    if cfg.augment != "auto":
        parse_kinds(cfg.augment)


def augment_kinds(cfg: Any, g_only: bool, images: bool) -> tuple[str, ...]:
    """The augmentation a run uses: the field's, or with ``auto`` the preset's, which applies
    only where the teacher labels the inputs (a generator alone, the user's images): a task
    dataset's real pairs are never altered."""
    if cfg.augment != "auto":
        return parse_kinds(cfg.augment)
    return parse_kinds(PRESETS[cfg.objective]["augment"]) if g_only and images else ()


def crop_side_max(cfg: Any, size: int, multi_scale: bool) -> int:
    """Largest short side of the multi-scale crops in pixels (0 = off): only for the user's
    images, a task dataset keeps the original resize-and-crop."""
    scale = preset_value(cfg, "crop_scale")
    return math.floor(scale * size) if scale and multi_scale else 0


def resolve(cfg: Any, *, task: str, g_only: bool, steps: int, size: int,
            multi_scale: bool) -> Objective:
    """The weights a FinetuneConfig ``cfg`` means for this task and mode (``steps``: the run's
    final step count, after ``--epochs``)."""
    att = preset_value(cfg, "lambda_attention")
    if att is None or att < 0:
        att = 100.0 if task == "cyclegan" else 10.0
    return Objective(
        preset=cfg.objective, g_only=g_only, gan=preset_value(cfg, "lambda_gan"),
        gan_from=int(cfg.gan_from * steps), attention=att, dfeat=cfg.lambda_dfeat,
        distill=cfg.lambda_distill, ssim=preset_value(cfg, "lambda_ssim"),
        colour=preset_value(cfg, "lambda_colour"),
        features=preset_value(cfg, "lambda_features"), ema=preset_value(cfg, "ema"),
        augment=augment_kinds(cfg, g_only, multi_scale),
        scale_max=crop_side_max(cfg, size, multi_scale),
        schedule=cfg.lr_schedule or PRESETS[cfg.objective]["lr_schedule"])
