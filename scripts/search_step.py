"""Search step time versus a plain distillation step of the same generator, as ratios in one run.

Two modes, both timing steps interleaved (A B A B) so machine drift affects both alike:

* ``--teacher RUN`` (a ``dmad teacher`` run): DMAD's full objective, the search stage against
  the teacher stage (plain training) of the same generator, data and size;
* ``--generator FILE --images DIR --val DIR`` (a generator alone, as ``dmad compress``): the
  teacher-G-only search step against a plain distillation step of an unmasked copy of the
  generator with the same objective (L1 to the teacher, GAN, attention), same batch and size.

Reported separately: ordinary search steps, and the steps that end in a bound update (the
mask schedule, cost model, group coefficients and budget check of ``after_step``), each as a
ratio to the plain step's median. Goal: every kind ≤ 1.15.

    python scripts/search_step.py --generator runs/photo64/teacher/G_AtoB.pt \
        --images runs/photo_student/student_images --val runs/photo_student/student_heldout \
        --size 128
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

from dmad.compress.config import read_config_file
from dmad.compress.train.search import SearchConfig, SearchStage
from dmad.compress.train.teacher import TeacherConfig, TeacherStage
from dmad.compress.train.teacher_run import load_teacher, training_config


def full_mode(args: argparse.Namespace, total: int) -> tuple[Any, Any, str]:
    scfg = SearchConfig(teacher=str(args.teacher), target_gmacs=0.5, steps=total,
                        bound_updates=args.updates, device="cpu")
    teacher = load_teacher(scfg)
    tcfg = training_config(scfg, teacher)
    plain = TeacherStage(TeacherConfig(**{**read_config_file(args.teacher / "config.json"),
                                          "steps": total, "decay_steps": -1}))
    return plain, SearchStage(scfg, tcfg, teacher), f"{tcfg.arch} ngf {tcfg.ngf}, full objective"


def g_only_mode(args: argparse.Namespace, total: int) -> tuple[Any, Any, str]:
    from dmad.compress.arch import profile
    from dmad.compress.data.split import make_split
    from dmad.compress.train.finetune import FinetuneConfig, FinetuneStage

    split = make_split(args.images, args.val, size=args.size)
    teacher_probe = load_teacher(SearchConfig(teacher=str(args.generator), target_gmacs=1.0))
    g = teacher_probe.G["AtoB"]
    target = profile(g, (1, 3, 256, 256)).macs_paper / 1e9 / 10
    scfg = SearchConfig(teacher=str(args.generator), images=str(args.images), size=args.size,
                        target_gmacs=target, steps=total, bound_updates=args.updates,
                        device="cpu", directions="AtoB")
    teacher = load_teacher(scfg)
    tcfg = training_config(scfg, teacher)
    masked = SearchStage(scfg, tcfg, teacher, split)
    fcfg = FinetuneConfig(student=str(args.generator), objective="dmad", steps=total,
                          size=args.size, device="cpu", eval_every=0)
    plain = FinetuneStage(fcfg, training_config(fcfg, teacher), teacher,
                          {"AtoB": copy.deepcopy(g)}, {}, split)
    return plain, masked, f"resnet ngf {g.spec.ngf}, teacher-G-only distillation"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, default=None, help="a dmad teacher run folder")
    ap.add_argument("--generator", type=Path, default=None, help="a generator file (G-only)")
    ap.add_argument("--images", type=Path, default=None, help="G-only: training images")
    ap.add_argument("--val", type=Path, default=None, help="G-only: held-out images")
    ap.add_argument("--size", type=int, default=128, help="G-only: crop side (default 128)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps of each kind")
    ap.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    ap.add_argument("--updates", type=int, default=150, help="bound updates of the schedule")
    args = ap.parse_args()
    total = 400  # schedule length: an update every 2 steps with 150 updates
    plain, masked, what = g_only_mode(args, total) if args.generator else full_mode(args, total)
    t_plain, t_search, t_update = [], [], []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        plain.train_step(i)
        a = time.perf_counter() - t
        t = time.perf_counter()
        masked.train_step(i)
        before = masked.updates
        masked.after_step(i)
        b = time.perf_counter() - t
        if i >= args.warmup:
            t_plain.append(a)
            (t_update if masked.updates > before else t_search).append(b)
    mp = statistics.median(t_plain)
    size = masked.cfg.size
    print(f"{what} at {size}², batch {masked.cfg.batch_size}, {args.steps} interleaved steps "
          f"(a bound update every {masked.interval} steps)")
    print(f"plain distillation step  median {mp * 1e3:8.1f} ms")
    for name, ts in (("search step", t_search), ("bound-update step", t_update)):
        if ts:
            print(f"{name:<24} median {statistics.median(ts) * 1e3:8.1f} ms  max "
                  f"{max(ts) * 1e3:8.1f} ms  ratio median {statistics.median(ts) / mp:.3f}  "
                  f"max {max(ts) / mp:.3f}  (n={len(ts)})")
    print("goal: every ratio ≤ 1.15")


if __name__ == "__main__":
    main()
