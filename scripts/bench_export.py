"""Export recipes on a photo-trained generator (prints numbers; not a test).

``python scripts/bench_export.py [--photo runs/photo] [--models teacher,student]
[--recipes ...] [--runs 10]``

Uses the run of ``scripts/photo_teacher.py`` (a ResNet-9 ngf 32 colouriser trained on
photographs and its ÷10 student): calibration on the split's training images, parity on its
whole held-out photographs at 256². Per model and int8 recipe it prints: PSNR vs PyTorch fp32
of the int8 file, its int8 MAC fraction, XNNPACK partitions, the GPU-delegate check, export
time (ONNX + fp32 + int8), and the median latency of fp32 and int8 on LiteRT XNNPACK at 1 and
2 threads, the two files timed alternately in the same rounds (ratio of medians).

Recipes (int8 ops kept float: the InstanceNorm statistics, as in every recipe here):

* ``onnx2tf``: the previous default: onnx2tf, TRANSPOSE_CONV, min/max ranges;
* ``graph``: our NHWC graph, min/max ranges;
* ``graph+eq``: + exact range equalisation;
* ``graph+pct``: + percentile (99.99) ranges;
* ``graph+eq+pct``: both, TRANSPOSE_CONV kept;
* ``default``: both + sub-pixel upsampling (what ``dmad export`` does);
* ``default+mse``: MSE-optimal ranges instead of percentile.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from dmad.compress.checkpoint import load_model
from dmad.compress.errors import DmadError
from dmad.export.api import DEFAULT_RECIPE, ExportConfig, export_model
from dmad.export.parity import make_interpreter

ROOT = Path(__file__).resolve().parent.parent
PLAIN = dataclasses.replace(DEFAULT_RECIPE, ranges="minmax")
RECIPES: dict[str, dict[str, object]] = {
    "onnx2tf": {"converter": "onnx2tf", "subpixel": "off", "equalize": False, "recipe": PLAIN},
    "graph": {"subpixel": "off", "equalize": False, "recipe": PLAIN},
    "graph+eq": {"subpixel": "off", "equalize": True, "recipe": PLAIN},
    "graph+pct": {"subpixel": "off", "equalize": False, "recipe": DEFAULT_RECIPE},
    "graph+eq+pct": {"subpixel": "off", "equalize": True, "recipe": DEFAULT_RECIPE},
    "default": {},
    "default+mse": {"recipe": dataclasses.replace(DEFAULT_RECIPE, ranges="mse")},
}


def paired_ms(files: list[Path], threads: int, runs: int) -> list[float]:
    """Median ms of each file, the files invoked alternately in every round."""
    its = [make_interpreter(f, threads) for f in files]
    for it in its:
        d = it.get_input_details()[0]
        it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        it.invoke()
    times: list[list[float]] = [[] for _ in files]
    for _ in range(runs):
        for k, it in enumerate(its):
            t = time.perf_counter()
            it.invoke()
            times[k].append(time.perf_counter() - t)
    return [float(np.median(t) * 1e3) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photo", type=Path, default=ROOT / "runs" / "photo",
                    help="scripts/photo_teacher.py's work folder")
    ap.add_argument("--models", default="teacher,student", help="teacher and/or student")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma list of recipes")
    ap.add_argument("--runs", type=int, default=10, help="timed rounds per thread count")
    ap.add_argument("--size", type=int, default=256, help="export size")
    args = ap.parse_args()
    paths = {"teacher": args.photo / "teacher" / "G_AtoB.pt",
             "student": args.photo / "compress" / "finetune" / "student_G_AtoB.pt"}
    split = args.photo / "compress" / "split.json"
    head = (f"{'model':8} {'recipe':13} {'int8 dB':>7} {'int8 MAC':>8} {'parts':>5} "
            f"{'GPU':>4} {'export s':>8} {'fp32 1t':>8} {'int8 1t':>8} {'x 1t':>5} "
            f"{'fp32 2t':>8} {'int8 2t':>8} {'x 2t':>5}")
    print(head)
    print("-" * len(head))
    for name in args.models.split(","):
        model, _ = load_model(paths[name])
        for recipe in args.recipes.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.time()
                try:
                    res = export_model(ExportConfig(
                        out=Path(tmp) / "e", module=model, size=args.size, split=split,
                        quant=("fp32", "int8"), **RECIPES[recipe]))  # type: ignore[arg-type]
                except DmadError as exc:
                    print(f"{name:8} {recipe:13} export failed: {exc}", flush=True)
                    continue
                took = time.time() - t0
                a = res.report["artifacts"]["int8"]
                f32, i8 = res.files["fp32"], res.files["int8"]
                ms1 = paired_ms([f32, i8], 1, args.runs)
                ms2 = paired_ms([f32, i8], 2, args.runs)
                gpu = "ok" if (a.get("gpu") or {}).get("compatible") else "no"
                print(f"{name:8} {recipe:13} {a['parity']['psnr_db']:7.1f} "
                      f"{100 * a['precision']['int8_mac_fraction']:7.0f}% "
                      f"{a['xnnpack']['partitions']:5d} {gpu:>4} {took:8.0f} "
                      f"{ms1[0]:8.1f} {ms1[1]:8.1f} {ms1[0] / ms1[1]:5.2f} "
                      f"{ms2[0]:8.1f} {ms2[1]:8.1f} {ms2[0] / ms2[1]:5.2f}", flush=True)


if __name__ == "__main__":
    main()
