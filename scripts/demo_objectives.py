"""Does the new default objective keep the demo as faithful as before? Both objectives, one search.

``python scripts/demo_objectives.py [--out runs/demo_objectives]`` (prints numbers; not a test).
Runs the demo (``configs/demo.toml``: CycleGAN ResNet-9 ngf 32 at 64², 500 teacher steps,
two-direction search of 200 steps at 1.4 G paper MACs) up to its search, then fine-tunes that
search's students for the demo's 300 steps with DMAD's objective (``dmad``, the old default) and
with the new default (``fast``), same seed, and evaluates each A→B student against the teacher on
the 24 held-out images at 64²: PSNR/SSIM mean and worst image, colour shift.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dmad.compress.config import read_config_file
from dmad.compress.evaluate import EvalConfig, evaluate
from dmad.compress.train.finetune import FinetuneConfig, finetune
from dmad.pipeline import DEFAULT_CONFIG, run_demo

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "demo_objectives",
                    help="work folder (finished stages are reused)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    demo = read_config_file(DEFAULT_CONFIG)
    demo["compress"].update(export=False, compare=False)  # the teacher and its search
    demo["data"]["root"] = str(args.out / "data")
    demo["teacher"]["data"] = str(args.out / "data")
    cfg_path = args.out / "demo.json"
    cfg_path.write_text(json.dumps(demo))
    run_demo(cfg_path, args.out / "demo")
    search = args.out / "demo" / "search"
    steps = int(demo["compress"]["finetune_steps"])
    print(f"| objective ({steps} fine-tune steps) | size | PSNR mean / worst | SSIM mean / worst "
          "| max colour shift /255 | fine-tune s |")
    print("|---|---|---|---|---|---|")
    for objective in ("dmad", "fast"):
        run = args.out / f"ft_{objective}"
        t = time.perf_counter()
        if not (run / "DONE.json").exists():
            finetune(FinetuneConfig(search=str(search), steps=steps, objective=objective,
                                    device="cpu", checkpoint_every=100), run, force=True)
        secs = time.perf_counter() - t
        for size in (64,):  # the demo data is 64² (dmad eval does not upscale a dataset)
            ev = evaluate(EvalConfig(student=str(run), size=size, device="cpu"),
                          args.out / "eval" / f"{objective}_{size}", force=True)
            print(f"| {objective} | {size}² | {ev['psnr_vs_teacher']:.2f} / "
                  f"{ev['psnr_worst_vs_teacher']:.2f} | {ev['ssim_vs_teacher']:.3f} / "
                  f"{ev['ssim_worst_vs_teacher']:.3f} | {ev['colour_mean_shift_max']:.1f} | "
                  f"{secs:.0f} |", flush=True)


if __name__ == "__main__":
    main()
