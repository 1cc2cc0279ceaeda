"""Can one generator alone be compressed as well as the full two-direction DMAD demo?

``python scripts/compress_one_generator.py [--out runs/one_generator]`` (prints numbers; not a
test). In one run it:

1. trains the demo teacher (``configs/demo.toml``: CycleGAN ResNet-9 ngf 32 at 64², 500 steps)
   and runs the demo's two-direction DMAD search (200 steps) and co-attention fine-tune (300
   steps) — the full objective, with both generators and both discriminators;
2. takes the teacher's ``G_AtoB.pt`` alone (no discriminator, no reverse generator) and runs
   ``dmad compress`` on the A images at the same budget (1.4 G paper MACs at 256²) with the same
   steps (200 search + 300 fine-tune), teacher-G-only distillation;
3. evaluates both A→B students against the teacher on the same held-out images (the default
   data's ``testA/``, whole images), at the training size and at 256².

Goal (issue 12): the G-only student ≥ 28.0 dB PSNR vs teacher on the held-out images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dmad.compress.config import read_config_file
from dmad.compress.evaluate import EvalConfig, evaluate
from dmad.compress_run import build_config, run_compress
from dmad.pipeline import DEFAULT_CONFIG, run_demo

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "one_generator",
                    help="work folder (finished stages are reused)")
    ap.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. the demo up to its evaluation, from the packaged demo config
    demo_cfg = read_config_file(DEFAULT_CONFIG)
    demo_cfg["compress"].update(export=False, compare=False)
    demo_cfg["data"]["root"] = str(args.out / "data")
    demo_cfg["teacher"]["data"] = str(args.out / "data")
    cfg_path = args.out / "demo.json"
    cfg_path.write_text(json.dumps(demo_cfg))
    t0 = time.time()
    times = run_demo(cfg_path, args.out / "demo")
    demo_s = time.time() - t0
    search_steps = int(demo_cfg["compress"]["steps"])
    ft_steps = int(demo_cfg["compress"]["finetune_steps"])

    # 2. the A->B generator alone through dmad compress
    teacher = args.out / "demo" / "teacher" / "G_AtoB.pt"
    images = args.out / "data" / "unaligned"
    overrides = {"generator": str(teacher), "images": str(images),
                 "target_gmacs": demo_cfg["compress"]["target_gmacs"], "steps": search_steps,
                 "finetune_steps": ft_steps, "size": int(demo_cfg["teacher"]["size"]),
                 "export": False, "compare": False, "device": args.device,
                 "checkpoint_every": 100}
    run = args.out / "g_only"
    resume = (run / "compress.json").exists()
    cfg, tables = build_config(overrides, None, run, resume)
    tables = {"search": {"bound_updates": demo_cfg["search"].get("bound_updates", 150)}}
    t0 = time.time()
    run_compress(cfg, run, resume=resume, tables=tables)
    g_only_s = time.time() - t0

    # 3. both students, same held-out images, same teacher
    rows = []
    split = run / "split.json"
    for name, student in (("two-direction DMAD (demo)", args.out / "demo" / "finetune"),
                          ("G_AtoB alone (dmad compress)", run / "finetune")):
        for size in (int(demo_cfg["teacher"]["size"]), 256):
            ev = evaluate(EvalConfig(student=str(student), teacher=str(teacher),
                                     images=str(split), size=size, device=args.device),
                          args.out / "eval" / f"{student.parent.name}_{size}")
            rows.append((name, size, ev["images"], ev["psnr_vs_teacher"], ev["ssim_vs_teacher"],
                         ev["ratios"]["macs_paper"], ev.get("best_step")))
    print("\n| student | eval size | held-out images | PSNR vs teacher dB | SSIM | MACs ÷ "
          "(paper) | best step |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]}² | {r[2]} | {r[3]:.2f} | {r[4]:.3f} | {r[5]:.1f} | {r[6]} |")
    print(f"\nsteps: search {search_steps} + fine-tune {ft_steps} for both; wall time: demo "
          f"stages {', '.join(f'{k} {v:.0f} s' for k, v in times.items())} (total {demo_s:.0f} "
          f"s); G-only compress {g_only_s:.0f} s")
    g = next(r for r in rows if r[0].startswith("G_AtoB") and r[1] == rows[0][1])
    print(f"goal: G-only PSNR vs teacher >= 28.0 dB at the training size: {g[3]:.2f} dB -> "
          f"{'met' if g[3] >= 28.0 else 'missed'}")


if __name__ == "__main__":
    main()
