"""Quality per minute: the student's fidelity to the teacher against wall time, two objectives.

    python scripts/fidelity_vs_time.py --wheels scikit_image-*.whl scikit_learn-*.whl \
        [--budget-min 30] [--search-steps 600] [--seed 0]

On the photo-trained ResNet-9 ngf 64 colouriser (``photo_teacher.py``) at ÷10 paper MACs: one
search (shared: same seed, same steps), then a fine-tune with DMAD's objective (the old
default) and one with the new default (``fast``; ``--only`` adds its variants with augmented
inputs), each given the same wall-time budget for
search + fine-tune on this machine alone. The fine-tune's step count is set from a short probe
of its step time; it evaluates its kept weights on the eleven whole held-out photographs at
256² every ~tenth of the budget. Prints, per objective and evaluation: wall seconds since the
search began, step, PSNR mean / worst image, SSIM mean / worst, largest per-channel mean shift
(levels of 255); then the final judgement of the kept student (held-out and training
photographs). Run nothing else on the machine meanwhile: the budget is wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from photo_setup import judge, photo_arguments, row, shared_search, student_folders

#: name → (work sub-folder, fine-tune fields)
OBJECTIVES: dict[str, tuple[str, dict[str, Any]]] = {
    "dmad (old default)": ("old", {"objective": "dmad"}),
    "fast without augmentation": ("new", {"objective": "fast", "augment": "none"}),
    "fast (default: with augmentation)": ("new_aug", {"objective": "fast"}),
    "fast with zoom/rotate/mix only": ("new_geo", {"objective": "fast",
                                                  "augment": "zoom,rotate,mix"}),
}


def step_seconds(search: Path, over: dict[str, Any], work: Path, seed: int) -> float:
    """Seconds per fine-tune step of this objective (a 100-step probe, the first 50 not timed:
    the first steps of a run are slower while kernels and buffers are set up, and a shorter
    probe overstated the step time by a third)."""
    from dmad.compress.train.finetune import FinetuneConfig, finetune

    probe = work / "probe"
    cfg = FinetuneConfig(search=str(search), steps=100, seed=seed, device="cpu", eval_every=0,
                         log_every=10, checkpoint_every=1000, **over)
    finetune(cfg, probe, force=True)
    log = [json.loads(x) for x in (probe / "log.jsonl").read_text().splitlines()]
    t = {r["step"]: r["time"] for r in log if "time" in r}
    shutil.rmtree(probe)
    return (t[100] - t[50]) / 50


def run(name: str, args: argparse.Namespace, search: Path, search_s: float) -> dict[str, Any]:
    from dmad.compress.train.finetune import FinetuneConfig, finetune

    folder, over = OBJECTIVES[name]
    out = args.work / folder
    if not (out / "DONE.json").exists():
        per_step = step_seconds(search, over, args.work, args.seed)
        left = args.budget_min * 60 - search_s
        # time reserved for the ten evaluations on the held-out photographs at 256²
        steps = max(20, int((left - 10 * args.eval_s) / per_step))
        print(f"[{name}] {per_step:.3f} s/step → {steps} steps in {left:.0f} s", flush=True)
        finetune(FinetuneConfig(search=str(search), steps=steps, seed=args.seed, device="cpu",
                                eval_every=max(1, steps // 10), eval_images=0, eval_size=256,
                                checkpoint_every=max(100, steps // 10), log_every=50, **over),
                 out, force=True)
    done = json.loads((out / "DONE.json").read_text())
    res = judge(out / "student_G_AtoB.pt", args.teacher, search / "split.json",
                args.work / "judge" / out.name)
    return {"evals": done["evals"], "best": done["best"], "final": res,
            "objective": done["objective"]}


def main() -> None:
    ap = photo_arguments(__doc__.split("\n")[0], "fidelity_vs_time")
    ap.add_argument("--budget-min", type=float, default=30.0,
                    help="wall minutes for search + fine-tune (default 30)")
    ap.add_argument("--search-steps", type=int, default=600, help="search steps (default 600)")
    ap.add_argument("--seed", type=int, default=0, help="seed of search and fine-tune")
    ap.add_argument("--eval-s", type=float, default=10.0,
                    help="seconds one periodic evaluation takes (reserved from the budget)")
    ap.add_argument("--only", default=";".join(list(OBJECTIVES)[:3]),
                    help="objectives to run, ';'-separated names (default the first three; "
                    f"all: {';'.join(OBJECTIVES)})")
    args = ap.parse_args()
    train, held = student_folders(args.wheels, args.work.parent / "photo_student")
    t = time.perf_counter()
    search = shared_search(args.teacher, train, held, args.work / "search",
                           steps=args.search_steps, ratio=10.0, seed=args.seed)
    search_s = time.perf_counter() - t
    if (args.work / "search_seconds.txt").exists():
        search_s = float((args.work / "search_seconds.txt").read_text())
    else:
        (args.work / "search_seconds.txt").write_text(f"{search_s:.1f}")
    print(f"search: {args.search_steps} steps in {search_s:.0f} s (shared)")
    names = [n for n in OBJECTIVES if not args.only or n in args.only.split(";")]
    for name in names:
        r = run(name, args, search, search_s)
        print(f"\n### {name}: {r['objective']}\n")
        print("| wall s (search + fine-tune) | step | held-out PSNR mean / worst | "
              "SSIM mean / worst | max colour shift /255 |")
        print("|---|---|---|---|---|")
        for e in r["evals"]:
            print(f"| {search_s + e['seconds']:.0f} | {e['step']} | {e['psnr']:.2f} / "
                  f"{e['psnr_worst']:.2f} | {e['ssim']:.3f} / {e['ssim_worst']:.3f} | "
                  f"{e['colour_shift_max']:.1f} |")
        f = r["final"]
        print(f"\nkept student (step {r['best']['step']}): held-out {row(f['val'])}; "
              f"training {row(f['train'])}  (PSNR mean / worst | SSIM mean / worst | colour)")


if __name__ == "__main__":
    main()
