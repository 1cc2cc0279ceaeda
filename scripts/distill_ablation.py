"""Does the distillation earn its place? Fine-tune one search result several ways and compare.

For a search run, prints the pruned student's PSNR/SSIM against the teacher before fine-tuning,
then after fine-tuning (same steps and seed) with DMAD's objective: everything (co-attention + D
features + L1 to the teacher's outputs), without the attention terms, without attention and D
features, DMAD's exact objective (no L1 to the teacher); and with the default ``fast`` objective.
The objectives compared on photo-trained teachers are ``distill_objectives.py``'s. A script
that prints numbers, not a test.

    python scripts/distill_ablation.py --search runs/demo/search --steps 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dmad.compress.evaluate import EvalConfig, evaluate
from dmad.compress.train.finetune import FinetuneConfig, finetune

VARIANTS = {
    "dmad (att + dfeat + L1)": {"objective": "dmad"},
    "dmad, no attention": {"objective": "dmad", "lambda_attention": 0.0},
    "dmad, no attention, no D features": {"objective": "dmad", "lambda_attention": 0.0,
                                          "lambda_dfeat": 0.0},
    "DMAD exact (no L1 to teacher)": {"objective": "dmad", "lambda_distill": 0.0},
    "fast (the default: task loss + L1 + SSIM + colour, EMA)": {"objective": "fast"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--search", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    args = ap.parse_args()
    rows = []
    ev = evaluate(EvalConfig(student=str(args.search), device="cpu"), args.out / "pruned")
    rows.append(("pruned, not fine-tuned", ev["psnr_vs_teacher"], ev["ssim_vs_teacher"]))
    for i, (name, over) in enumerate(VARIANTS.items()):
        run = args.out / f"v{i}"
        finetune(FinetuneConfig(search=str(args.search), steps=args.steps, **over), run,
                 force=True)
        ev = evaluate(EvalConfig(student=str(run), device="cpu"), args.out / f"e{i}")
        rows.append((name, ev["psnr_vs_teacher"], ev["ssim_vs_teacher"]))
    print(f"| variant ({args.steps} steps) | PSNR vs teacher (dB) | SSIM vs teacher |")
    print("|---|---|---|")
    for name, p, s in rows:
        print(f"| {name} | {p:.2f} | {s:.3f} |")


if __name__ == "__main__":
    main()
