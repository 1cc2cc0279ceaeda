"""The new default's search + fine-tune on a GPU: throughput, utilisation and fidelity vs steps.

    python scripts/gpu_check.py --teacher G_AtoB.pt --images DIR --val DIR [--size 256]
        [--precision bf16] [--search-steps 300] [--steps 600] [--out runs/gpu_check]

Runs ``search`` then ``finetune`` (the ``fast`` objective) of the photo-trained ngf 64 teacher at
÷10 paper MACs, at ``size``² in ``precision``, and prints: images/s of each stage (steps × batch
÷ the stage's training seconds), and the fine-tune's PSNR/SSIM (mean and worst held-out image)
and colour shift against the teacher at each evaluation. ``gpu_check.sh`` samples the GPU's
utilisation beside it. Runs on CPU too (slowly), which is how it is tested without a GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", type=Path, required=True, help="photo-trained generator file")
    ap.add_argument("--images", type=Path, required=True, help="training photographs")
    ap.add_argument("--val", type=Path, required=True, help="held-out photographs")
    ap.add_argument("--size", type=int, default=256, help="crop side (default 256)")
    ap.add_argument("--precision", default="bf16", help="fp32 | bf16 | fp16 (default bf16)")
    ap.add_argument("--search-steps", type=int, default=300, help="search steps (default 300)")
    ap.add_argument("--steps", type=int, default=600, help="fine-tune steps (default 600)")
    ap.add_argument("--batch", type=int, default=0, help="fine-tune batch (0 = objective's, 4)")
    ap.add_argument("--device", default="auto", help="auto | cuda | cpu")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_check"), help="work folder")
    args = ap.parse_args()

    import torch

    from dmad.compress.arch import profile
    from dmad.compress.checkpoint import load_model
    from dmad.compress.train.finetune import FinetuneConfig, finetune
    from dmad.compress.train.search import SearchConfig, search

    print(f"torch {torch.__version__}, CUDA {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    g, _ = load_model(args.teacher)
    target = round(profile(g, (1, 3, 256, 256)).macs_paper / 1e9 / 10, 3)
    common = dict(size=args.size, precision=args.precision, device=args.device,
                  checkpoint_every=10**6, log_every=10)
    t = time.perf_counter()
    search(SearchConfig(teacher=str(args.teacher), images=str(args.images), val=str(args.val),
                        target_gmacs=target, steps=args.search_steps, **common),
           args.out / "search", force=True)
    s_sec = time.perf_counter() - t
    print(f"search: {args.search_steps} steps at batch 1 in {s_sec:.1f} s = "
          f"{args.search_steps / s_sec:.2f} images/s (target {target} GMACs)", flush=True)
    t = time.perf_counter()
    done = finetune(FinetuneConfig(search=str(args.out / "search"), steps=args.steps,
                                   batch_size=args.batch, eval_every=max(1, args.steps // 6),
                                   eval_images=0, eval_size=256, **common),
                    args.out / "finetune", force=True)
    f_sec = time.perf_counter() - t
    batch = json.loads((args.out / "finetune" / "config.json").read_text())["training"][
        "batch_size"]
    print(f"fine-tune: {args.steps} steps at batch {batch} in {f_sec:.1f} s = "
          f"{args.steps * batch / f_sec:.2f} images/s; objective: {done['objective']}")
    print("step | s | held-out PSNR mean / worst | SSIM mean / worst | colour shift /255")
    for e in done["evals"]:
        print(f"{e['step']} | {e['seconds']:.0f} | {e['psnr']:.2f} / {e['psnr_worst']:.2f} | "
              f"{e['ssim']:.3f} / {e['ssim_worst']:.3f} | {e['colour_shift_max']:.1f}")
    print(f"kept: step {done['best']['step']}, PSNR {done['best']['psnr']:.2f} dB")


if __name__ == "__main__":
    main()
