"""A ResNet stem's convolution direct and on the image's phases, in fp32 and int8, on this CPU.

    python scripts/stem_phase_probe.py [--widths 8,16,24,35,48,64] [--runs 30]

For each stem width C: the 7×7 convolution of a padded 262²×3 image to 256²×C, written directly
and as the export's phase form (space-to-depth, a 4×4 convolution writing 4·C channels at 128²,
depth-to-space back), each converted by TensorFlow's converter to an fp32 file and to a full
int8 one (random weights, calibrated on random images), timed on LiteRT XNNPACK, 1 thread,
fastest of ``--runs`` over three passes. Why the int8 files put the stem on phases and fp32
files do not (``export/s2d.py``). A script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def _files(width: int, tmp: Path, x0: np.ndarray) -> list[Path]:
    import tensorflow as tf

    rng = np.random.default_rng(width)
    w = rng.normal(size=(7, 7, 3, width)).astype(np.float32) * 0.1
    wph = rng.normal(size=(4, 4, 12, 4 * width)).astype(np.float32) * 0.1

    def direct(x):  # type: ignore[no-untyped-def]
        return tf.nn.conv2d(x, w, 1, "VALID")

    def phases(x):  # type: ignore[no-untyped-def]
        y = tf.nn.conv2d(tf.nn.space_to_depth(x, 2), wph, 1, "VALID")
        return tf.nn.depth_to_space(y, 2)

    out = []
    for name, f in (("direct", direct), ("phases", phases)):
        fn = tf.function(f, input_signature=[tf.TensorSpec([1, 262, 262, 3], tf.float32)])
        for q in ("fp32", "int8"):
            cv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
            if q == "int8":
                cv.optimizations = [tf.lite.Optimize.DEFAULT]
                cv.representative_dataset = lambda: ([x0[i:i + 1]] for i in range(len(x0)))
                cv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            p = tmp / f"c{width}_{name}_{q}.tflite"
            p.write_bytes(cv.convert())
            out.append(p)
    return out


def main() -> None:
    from dmad.benchmark.runners import time_blocked

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="8,16,24,35,48,64", help="comma list of stem widths")
    ap.add_argument("--runs", type=int, default=30, help="timed runs per pass (fastest kept)")
    args = ap.parse_args()
    x0 = np.random.default_rng(0).uniform(-1, 1, (8, 262, 262, 3)).astype(np.float32)
    widths = [int(v) for v in args.widths.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        files = [p for c in widths for p in _files(c, Path(tmp), x0)]
        ms = time_blocked([(p, (1, 262, 262, 3)) for p in files], "tflite-xnnpack", 1,
                          args.runs, warmup=3, rounds=3, timing="fastest")
    best = {p.stem: min(v) for p, v in zip(files, ms, strict=True)}
    print("| stem channels | fp32 direct | fp32 phases | int8 direct | int8 phases | int8 gain |")
    print("|---:|---:|---:|---:|---:|---:|")
    for c in widths:
        t = {k: best[f"c{c}_{k}"] for k in ("direct_fp32", "phases_fp32", "direct_int8",
                                          "phases_int8")}
        print(f"| {c} | {t['direct_fp32']:.2f} | {t['phases_fp32']:.2f} | {t['direct_int8']:.2f}"
              f" | {t['phases_int8']:.2f} | {t['direct_int8'] / t['phases_int8']:.2f}× |")


if __name__ == "__main__":
    main()
