"""Which fine-tune objective makes a faithful student of a photo-trained generator? An ablation.

    python scripts/distill_objectives.py --wheels scikit_image-*.whl scikit_learn-*.whl \
        [--teacher runs/photo64/teacher/G_AtoB.pt] [--steps 80] [--seeds 0,1]

One search at ÷10 paper MACs of the photo-trained ResNet-9 (``photo_teacher.py``), then the
same pruned student fine-tuned with each candidate objective for the same number of steps and
seeds. Every student (its last weights, no checkpoint selection) is judged against the teacher
on the eleven held-out photographs and on the seven training photographs, whole at 256²: PSNR
mean / worst image, SSIM mean / worst, the largest per-channel mean shift (levels of 255), and
the fine-tune's wall time. Prints a markdown table (mean over seeds, and each seed). A script
that prints numbers, not a test; ``docs/results.md`` keeps its output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from photo_setup import judge, photo_arguments, shared_search, student_folders

#: the baseline of the candidates: L1 to the teacher at batch 4, lr 1e-4, nothing else
PLAIN = {"objective": "fast", "lambda_ssim": 0.0, "lambda_colour": 0.0, "ema": 0.0,
         "crop_scale": 0.0, "augment": "none"}
#: ``fast`` as it was before augmentation became part of it
FAST = {"objective": "fast", "augment": "none"}
VARIANTS: dict[str, dict[str, Any]] = {
    "dmad (old default: GAN + attention + L1 ×10, batch 1, lr 2e-4)": {"objective": "dmad"},
    "L1 only (batch 4, lr 1e-4)": PLAIN,
    "L1 + SSIM": {**PLAIN, "lambda_ssim": 1.0},
    "L1 + colour moments ×10": {**PLAIN, "lambda_colour": 10.0},
    "L1 + features (1×1 adapters)": {**PLAIN, "lambda_features": 1.0},
    "L1 + GAN from half-way": {**PLAIN, "lambda_gan": 1.0, "gan_from": 0.5},
    "L1 + EMA 0.999": {**PLAIN, "ema": 0.999},
    "L1 + multi-scale crops (≤ 2× size)": {**PLAIN, "crop_scale": 2.0},
    "L1 + colour/exposure jitter": {**PLAIN, "augment": "colour,exposure"},
    "L1 + zoom/rotate/mix": {**PLAIN, "augment": "zoom,rotate,mix"},
    "L1 + cosine LR": {**PLAIN, "lr_schedule": "cosine"},
    "fast without augmentation (L1 + SSIM + colour + EMA + multi-scale)": FAST,
    "fast without augmentation + features": {**FAST, "lambda_features": 1.0},
    "fast without augmentation, after a search with the same signal (L1 + SSIM + colour, no "
    "GAN, no attention)": {**FAST, "_search": "fast"},
    "L1 + all augmentation (colour, exposure, zoom, rotate, mix)":
        {**PLAIN, "augment": "colour,exposure,zoom,rotate,mix"},
    "fast without augmentation + zoom/rotate/mix": {**FAST, "augment": "zoom,rotate,mix"},
    "fast (the default: with all augmentation)": {"objective": "fast"},
}
#: the search's G-only objective when a variant asks for it
SEARCH_FAST = {"lambda_gan": 0.0, "lambda_attention": 0.0, "lambda_ssim": 1.0,
               "lambda_colour": 10.0}


def run_variant(name: str, over: dict[str, Any], seed: int, args: argparse.Namespace,
                search: Path, teacher: Path) -> dict[str, Any]:
    from dmad.compress.train.finetune import FinetuneConfig, finetune

    over = dict(over)
    if over.pop("_search", None):
        photos = args.work.parent / "photo_student"
        search = shared_search(teacher, photos / "student_images", photos / "student_heldout",
                               args.work / "search_fast", steps=args.search_steps,
                               ratio=10.0, extra=SEARCH_FAST)

    key = f"v{list(VARIANTS).index(name):02d}_s{seed}"
    run = args.work / "ft" / key
    if not (run / "DONE.json").exists():
        t = time.perf_counter()
        finetune(FinetuneConfig(search=str(search), steps=args.steps, seed=seed, device="cpu",
                                eval_every=args.steps, eval_images=0, eval_size=256,
                                checkpoint_every=args.steps, log_every=25,
                                **over), run, force=True)
        (run / "seconds.txt").write_text(f"{time.perf_counter() - t:.1f}")
    res = judge(run / "last_student_G_AtoB.pt", teacher, search / "split.json",
                args.work / "judge" / key)
    done = json.loads((run / "DONE.json").read_text())
    return {"val": res["val"], "train": res["train"], "best_step": done["best"]["step"],
            "seconds": float((run / "seconds.txt").read_text()), "objective": done["objective"]}


def cell(rows: list[dict[str, Any]], side: str, key: str, fmt: str) -> str:
    vals = [r[side][key] for r in rows]
    mean = sum(vals) / len(vals)
    return f"{mean:{fmt}} ({' / '.join(f'{v:{fmt}}' for v in vals)})"


def main() -> None:
    ap = photo_arguments(__doc__.split("\n")[0], "objectives")
    ap.add_argument("--search-steps", type=int, default=300, help="search steps (default 300)")
    ap.add_argument("--steps", type=int, default=80, help="fine-tune steps (default 80)")
    ap.add_argument("--seeds", default="0,1", help="fine-tune seeds, comma list (default 0,1)")
    ap.add_argument("--only", default="", help="run only variants whose name contains this")
    ap.add_argument("--search", type=Path, default=None,
                    help="a finished search run to reuse (e.g. fidelity_vs_time.py's)")
    args = ap.parse_args()
    train, held = student_folders(args.wheels, args.work.parent / "photo_student")
    search = args.search or shared_search(args.teacher, train, held, args.work / "search",
                                          steps=args.search_steps, ratio=10.0)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"| objective ({args.steps} fine-tune steps after a {args.search_steps}-step search; "
          f"mean (seed {' / '.join(map(str, seeds))})) | held-out PSNR | worst held-out PSNR | "
          "held-out SSIM | worst held-out SSIM | max colour shift /255 | training PSNR | "
          "worst training PSNR | fine-tune s |")
    print("|---|---|---|---|---|---|---|---|---|")
    names = [n for n in VARIANTS if not args.only or args.only in n]
    done: dict[tuple[str, int], dict[str, Any]] = {}
    for seed in seeds:  # every variant once before any second seed: a partial run is a table
        for name in names:
            done[name, seed] = run_variant(name, VARIANTS[name], seed, args, search,
                                           args.teacher)
            v = done[name, seed]["val"]
            print(f"# seed {seed} {name}: {v['psnr_vs_teacher']:.2f} dB", file=sys.stderr,
                  flush=True)
    for name in names:
        rows = [done[name, s] for s in seeds]
        secs = sum(r["seconds"] for r in rows) / len(rows)
        print(f"| {name} | {cell(rows, 'val', 'psnr_vs_teacher', '.2f')} | "
              f"{cell(rows, 'val', 'psnr_worst_vs_teacher', '.2f')} | "
              f"{cell(rows, 'val', 'ssim_vs_teacher', '.3f')} | "
              f"{cell(rows, 'val', 'ssim_worst_vs_teacher', '.3f')} | "
              f"{cell(rows, 'val', 'colour_mean_shift_max', '.1f')} | "
              f"{cell(rows, 'train', 'psnr_vs_teacher', '.2f')} | "
              f"{cell(rows, 'train', 'psnr_worst_vs_teacher', '.2f')} | {secs:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
