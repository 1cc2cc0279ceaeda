"""What a later stage (search, fine-tune) takes from the teacher run it builds on.

The training settings a stage may leave empty ("the teacher run's value"), the teacher itself
(generators, and discriminators when a run has them) read from a run folder or model files,
and the teacher run's training config with the stage's overrides applied.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from dmad.compress.checkpoint import load_generator, load_model
from dmad.compress.config import RUN_HELP, opt, read_config_file
from dmad.compress.errors import DmadError
from dmad.compress.models import ResnetSpec, UnetSpec
from dmad.compress.train import loop
from dmad.compress.train.teacher import ScaleOptions, TeacherConfig


@dataclass
class TrainingOverrides(ScaleOptions):
    """Training settings a later stage (search, finetune) takes from the run it builds on;
    empty/zero values mean "the earlier run's value"."""

    task: str = opt("", "cyclegan | pix2pix; '' = the teacher run's task")
    data: str = opt("", "dataset root; '' = the teacher run's data")
    size: int = opt(0, "crop side in pixels; 0 = the teacher run's size")
    steps: int = opt(1000, "training steps of this stage")
    decay_steps: int = opt(-1, "steps of linear LR decay at the end; -1 = half of steps")
    batch_size: int = opt(
        0,
        "images per step in each process (global batch = batch_size × processes); 0 = the "
        "teacher run's",
    )
    lr: float = opt(0.0, "learning rate of the generator(s) and D; 0 = the teacher run's")
    seed: int = opt(0, "seed of the batch order, augmentation and new weights")
    checkpoint_every: int = opt(100, RUN_HELP["checkpoint_every"])
    log_every: int = opt(10, RUN_HELP["log_every"])
    device: str = opt("auto", RUN_HELP["device"])
    skip_bad: bool = opt(False, RUN_HELP["skip_bad"])
    images: str = opt(
        "",
        "the user's images instead of a task dataset: a split.json (dmad compress) or a folder "
        "(flat, nested, trainA/ or aligned train/); teacher-G-only distillation on them",
    )
    val: str = opt("", "held-out image folder for --images ('' = testA/ or val/, else a 5 % split)")
    lambda_gt: float = opt(
        0.0,
        "aligned --images only: weight of an L1 to the B half as extra ground truth (0 = unused)",
    )


@dataclass
class Teacher:
    """What the search starts from: generators (and discriminators when a run has them)."""

    base: dict[str, Any]  # TeacherConfig fields
    G: dict[str, nn.Module]
    D: dict[str, nn.Module]


def load_teacher(cfg: Any) -> Teacher:
    """Read a teacher run folder or model file(s) into generators, discriminators and config."""
    path = Path(cfg.teacher)
    if not path.exists():
        raise DmadError(f"{path}: teacher not found (give a `dmad teacher` run folder or a model "
                        "file)")
    if path.is_dir():
        if not (path / loop.DONE).exists():
            raise DmadError(f"{path}: not a finished teacher run (no {loop.DONE}); finish it "
                            "with `dmad teacher --out ... --resume`")
        base = read_config_file(path / loop.CONFIG)
        G = {p.stem[2:]: load_generator(p)[0] for p in sorted(path.glob("G_*.pt"))}
        D = {p.stem[2:]: load_model(p)[0] for p in sorted(path.glob("D_*.pt"))}
        if not G:
            raise DmadError(f"{path}: no G_*.pt generator in the teacher run")
        return Teacher(base, G, D)
    g, meta = load_generator(path)
    G = {"AtoB": g}
    if cfg.teacher_reverse:
        G["BtoA"] = load_generator(Path(cfg.teacher_reverse))[0]
    spec = g.spec
    base: dict[str, Any] = {"task": meta.get("task") or cfg.task or "cyclegan"}
    if isinstance(spec, ResnetSpec):
        base.update(arch="resnet", ngf=spec.ngf, norm=spec.norm, n_blocks=spec.n_blocks,
                    padding=spec.padding, separable=spec.separable)
    elif isinstance(spec, UnetSpec):
        base.update(arch="unet", ngf=spec.ngf, norm=spec.norm, num_downs=spec.num_downs)
    # a traced generator has no dmad architecture fields: the stages deep-copy its module
    if meta.get("size"):
        base["size"] = meta["size"]
    return Teacher(base, G, {})


def training_config(cfg: Any, teacher: Teacher) -> TeacherConfig:
    """The teacher run's training settings with the search's overrides."""
    base = dict(teacher.base)
    for name in ("task", "data", "size", "batch_size", "lr", "device", "skip_bad"):
        v = getattr(cfg, name)
        if v not in ("", 0, 0.0, None) or (name == "skip_bad" and v):
            base[name] = v
    base.update(steps=cfg.steps, decay_steps=cfg.decay_steps, seed=cfg.seed,
                checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
                **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(ScaleOptions)})
    if cfg.size:  # a new size: the resize-before-crop is derived from it again
        base.pop("load_size", None)
    names = {f.name for f in dataclasses.fields(TeacherConfig)}
    return TeacherConfig(**{k: v for k, v in base.items() if k in names})
