"""Each export's int8 file against its own fp32 file on this CPU, paired per round.

    python scripts/int8_speedup.py EXPORT_DIR [EXPORT_DIR ...] [--rounds 15] [--runs 20]

``EXPORT_DIR`` is a ``dmad export`` folder with ``generator_fp32.tflite`` and
``generator_int8.tflite``. Every file runs blocked (as an app runs one model: warm-up, then
``--runs`` timed runs) in each of ``--rounds`` passes over all of them (LiteRT XNNPACK, 1 thread,
the files' own input size); the int8 speedup is the median over rounds of fp32 ÷ int8 in that
round, with the lowest and highest round. A script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    from dmad.benchmark.runners import time_blocked
    from dmad.export.parity import make_interpreter

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("exports", type=Path, nargs="+", help="dmad export folders")
    ap.add_argument("--rounds", type=int, default=15, help="passes over all files")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per file and pass")
    args = ap.parse_args()
    files = [d / f"generator_{v}.tflite" for d in args.exports for v in ("fp32", "int8")]
    shapes = [tuple(make_interpreter(p.read_bytes(), None).get_input_details()[0]["shape"])
              for p in files]
    ms = time_blocked(list(zip(files, shapes, strict=True)), "tflite-xnnpack", 1, args.runs,
                      warmup=3, rounds=args.rounds)
    for i, d in enumerate(args.exports):
        a, b = np.array(ms[2 * i]), np.array(ms[2 * i + 1])
        q = a / b
        print(f"{d}: fp32 {np.median(a):.2f} ms, int8 {np.median(b):.2f} ms, int8 speedup "
              f"{np.median(q):.2f}× (rounds {q.min():.2f}–{q.max():.2f})")


if __name__ == "__main__":
    main()
