"""Search step time versus a plain training step of the same generator, as a ratio in one run.

Builds the teacher stage and the search stage from one teacher run (same generator, data, size)
and times their steps interleaved (A B A B) so machine drift affects both alike. The search
side includes its amortised bound-update work (``after_step``). Goal: ratio <= 1.15.

    python scripts/search_step.py --teacher runs/demo/teacher [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from dmad.compress.config import read_config_file
from dmad.compress.train.search import SearchConfig, SearchStage, load_teacher, training_config
from dmad.compress.train.teacher import TeacherConfig, TeacherStage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, default=Path("runs/demo/teacher"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    total = 200  # schedule length the search's update interval is derived from
    scfg = SearchConfig(teacher=str(args.teacher), target_gmacs=0.5, steps=total,
                        bound_updates=50)
    teacher = load_teacher(scfg)
    tcfg = training_config(scfg, teacher)
    plain = TeacherStage(TeacherConfig(**{**read_config_file(args.teacher / "config.json"),
                                          "steps": total, "decay_steps": -1}))
    masked = SearchStage(scfg, tcfg, teacher)
    t_plain, t_search = [], []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        plain.train_step(i)
        a = time.perf_counter() - t
        t = time.perf_counter()
        masked.train_step(i)
        masked.after_step(i)
        b = time.perf_counter() - t
        if i >= args.warmup:
            t_plain.append(a)
            t_search.append(b)
    mp, ms = statistics.median(t_plain), statistics.median(t_search)
    mean_ratio = sum(t_search) / sum(t_plain)
    print(f"generator {tcfg.arch} ngf {tcfg.ngf} at {tcfg.size}², task {tcfg.task}, "
          f"{args.steps} interleaved steps")
    print(f"plain step  median {mp * 1e3:8.1f} ms")
    print(f"search step median {ms * 1e3:8.1f} ms (incl. bound updates every "
          f"{masked.interval} steps)")
    print(f"ratio median {ms / mp:.3f}  mean (with updates) {mean_ratio:.3f}  goal <= 1.15")


if __name__ == "__main__":
    main()
