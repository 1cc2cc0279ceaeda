"""Compare the search started from the teacher's weights with the paper's start from scratch.

Runs two searches with the same target, steps and seed from one teacher run and prints, for each,
the searched generator's PSNR against the teacher's outputs on the held-out split (hard masks,
before fine-tuning) and its final MACs. A script that prints numbers, not a timed test.

    python scripts/search_init.py --teacher runs/demo/teacher --target-gmacs 1.45 --steps 200
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dmad.compress.config import read_config_file
from dmad.compress.evaluate import psnr
from dmad.compress.train.common import open_train_test, resolve_data
from dmad.compress.train.search import SearchConfig, load_search, search
from dmad.compress.train.teacher import TeacherConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--target-gmacs", type=float, required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("runs/search_init"))
    args = ap.parse_args()
    tcfg = TeacherConfig(**read_config_file(args.teacher / "config.json"))
    _, test = open_train_test(resolve_data(tcfg.data, tcfg.size), tcfg.task, tcfg.size,
                              tcfg.load_size, False, tcfg.direction, False)
    from dmad.compress.checkpoint import load_model

    teacher, _ = load_model(args.teacher / "G_AtoB.pt")
    print(f"{'init':<8} {'seconds':>8} {'GMACs paper':>12} {'PSNR vs teacher dB':>19}")
    for init in ("teacher", "scratch"):
        out = args.out / init
        t = time.time()
        search(SearchConfig(teacher=str(args.teacher), init=init, target_gmacs=args.target_gmacs,
                            steps=args.steps, directions="AtoB"), out, force=True)
        secs = time.time() - t
        g, _, arch = load_search(out / "search_G_AtoB.pt")
        scores = []
        with torch.no_grad():
            for i in range(len(test)):
                a = test.get(i, None)["A"].unsqueeze(0)
                scores.append(psnr(g(a), teacher(a)))
        print(f"{init:<8} {secs:>8.1f} {arch['gmacs_paper']:>12.3f} "
              f"{sum(scores) / len(scores):>19.2f}")


if __name__ == "__main__":
    main()
