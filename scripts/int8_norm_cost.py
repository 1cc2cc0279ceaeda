"""What an InstanceNorm's float statistics cost in an int8 file, on this CPU.

    python scripts/int8_norm_cost.py [--shapes 256x35,256x30,128x64,64x42] [--runs 30]

The int8 recipe keeps each InstanceNorm's statistics in float (two-step means, subtract, square,
rsqrt, multiply, then ReLU), because int8 statistics lost the picture. On a narrow student
those memory-bound passes over full-resolution tensors are a large share of the int8 file's
time, and they set how much faster than fp32 its int8 file can be. For each ``HxC`` this
converts that pattern alone (an NHWC float input of 1×H×H×C) to a TFLite file and prints its
fastest time of ``--runs`` on LiteRT (XNNPACK, 1 thread) beside a single multiply of the same
tensor (the floor of one pass). A script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def _model(h: int, c: int, norm: bool) -> bytes:
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, h, h, c], tf.float32)])
    def f(x):  # type: ignore[no-untyped-def]
        if not norm:
            return x * 1.5
        m = tf.reduce_mean(tf.reduce_mean(x, axis=1, keepdims=True), axis=2, keepdims=True)
        d = x - m
        v = tf.reduce_mean(tf.reduce_mean(d * d, axis=1, keepdims=True), axis=2, keepdims=True)
        return tf.nn.relu(d * tf.math.rsqrt(v + 1e-5))

    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    return conv.convert()


def _fastest_ms(blob: bytes, shape: tuple[int, ...], runs: int) -> float:
    """The file's fastest of ``runs`` with the harness's runner (XNNPACK, 1 thread)."""
    from dmad.benchmark.runners import time_blocked

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.tflite"
        path.write_bytes(blob)
        return time_blocked([(path, shape)], "tflite-xnnpack", 1, runs, warmup=1,
                            timing="fastest")[0][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="256x35,256x30,128x64,64x42",
                    help="comma list of HxC: side and channels of each norm's input")
    ap.add_argument("--runs", type=int, default=30, help="timed runs per file (fastest kept)")
    args = ap.parse_args()
    for item in args.shapes.split(","):
        h, c = (int(v) for v in item.lower().split("x"))
        norm = _fastest_ms(_model(h, c, True), (1, h, h, c), args.runs)
        one = _fastest_ms(_model(h, c, False), (1, h, h, c), args.runs)
        print(f"{h}²×{c}: norm statistics {norm:.2f} ms, one multiply {one:.2f} ms "
              f"(fastest of {args.runs}, 1 thread)", flush=True)


if __name__ == "__main__":
    main()
