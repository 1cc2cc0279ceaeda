"""Compress, export and benchmark a generator through dmad's Python API alone.

    python examples/compress_in_python.py [--out runs/api_example] [--force]

The generator here is built fresh and tiny so the example runs in a couple of minutes on a
laptop CPU; yours is an ``nn.Module`` you trained (a dmad generator, or a
pytorch-CycleGAN-and-pix2pix ResnetGenerator/UnetGenerator) or a checkpoint path. The images
are the embedded demo dataset; yours are a folder of the photographs the model will see.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import dmad
from dmad.compress.arch import profile
from dmad.compress.data.default import make_default_dataset
from dmad.compress.models import ResnetSpec, build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/api_example"), help="work folder")
    ap.add_argument("--force", action="store_true", help="redo an earlier run in --out")
    args = ap.parse_args()

    images = make_default_dataset(args.out / "data", size=64, n_train=16, n_test=8) \
        / "unaligned" / "trainA"
    torch.manual_seed(0)
    generator = build(ResnetSpec(ngf=16, n_blocks=3))  # yours: a trained nn.Module
    full_gmacs = profile(generator, (1, 3, 64, 64)).macs_paper / 1e9

    # 1. compress: search, prune, fine-tune and evaluate (export and report done below)
    run = dmad.compress_generator(
        generator, images, args.out / "run", target_gmacs=round(full_gmacs / 4, 4),
        macs_size=64, size=32, steps=20, finetune_steps=20, export=False, compare=False,
        device="cpu", force=args.force)
    student = run.student  # a plain nn.Module, physically pruned
    small_gmacs = profile(student, (1, 3, 64, 64)).macs_paper / 1e9
    print(f"student: {small_gmacs:.3f} of {full_gmacs:.3f} G MACs at 64², "
          f"{run.summary['eval']['psnr_vs_teacher']:.1f} dB vs the teacher on held-out images")

    # 2. export both to TFLite, each file checked against PyTorch on held-out images
    files = {}
    for name, model in (("full", generator), ("student", student)):
        res = dmad.export_generator(model, args.out / "export" / name, quant=("fp32", "int8"),
                                    calib=images, size=64, force=args.force)
        print(res.table)
        files[name] = res.files["int8"]

    # 3. benchmark the two int8 files on this CPU, alternating in the same rounds
    results = dmad.bench_files([files["full"], files["student"]], args.out / "bench",
                               backends=("tflite",), threads=(1,), runs=10, force=args.force)
    ms = {r["model"]: r["median_ms"] for r in results["results"]}
    print("median ms:", {Path(k).parent.name: round(v, 2) for k, v in ms.items()})


if __name__ == "__main__":
    main()
