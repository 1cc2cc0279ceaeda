"""How this machine's speed drifts while a latency table is timed, and whether timing against a
reference model in the same seconds cancels it.

A latency table times hundreds of unit models one after another and compares their sums with
whole models timed minutes later; on a shared VM the machine's speed changes in between. This
script converts a few models the way ``dmad latency-table`` does (fp32, XNNPACK, 1 thread, 256²
by default), then for ``--seconds`` passes over them in blocked order (warm-up, then ``--runs``
timed runs each, the table's timing) and prints, per model, how far apart a table's estimate
(``--rounds`` passes) lands when taken at different moments: the median of the per-pass medians,
the minimum of them, the fastest run, and the median divided by a reference model's median in
the same pass (if that ratio spread much less, pairing would remove the drift).

    python scripts/latency_drift.py --seconds 180
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from dmad.benchmark.latency_table import LatencyTableConfig, Timer, unit_model
from dmad.benchmark.runners import time_blocked
from dmad.compress.models import ResnetSpec, ResnetWidths, build


def _models(size: int) -> list[tuple[str, object, tuple[int, int, int, int]]]:
    spec = ResnetSpec(ngf=64, n_blocks=9)
    narrow = ResnetWidths(27, 22, 16, (28, 23, 25, 0, 0, 0, 9, 1, 5), 16, 18)
    wide = ResnetWidths(36, 96, 111, (111,) * 5 + (0,) * 4, 87, 43)
    out = [(name, *unit_model(spec, unit, point, size)) for name, unit, point in (
        ("block 64x64 (reference)", "block", (64, 64)),
        ("stem 32", "stem", (32,)),
        ("head 32", "head", (32,)),
        ("up2 64->32", "up2", (64, 32)),
        ("block 256x256", "block", (256, 256)))]
    for name, w in (("whole narrow", narrow), ("whole wide", wide)):
        g = build(dataclasses.replace(spec, widths=w, n_blocks=len(w.blocks))).eval()
        out.append((name, g, (1, 3, size, size)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=180.0, help="how long to keep passing")
    ap.add_argument("--size", type=int, default=256, help="input side in pixels")
    ap.add_argument("--runs", type=int, default=10, help="timed runs per model and pass")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs per model and pass")
    ap.add_argument("--rounds", type=int, default=3, help="passes one table estimate takes")
    args = ap.parse_args()
    models = _models(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        timer = Timer(LatencyTableConfig(out=Path(tmp) / "unused.json", size=args.size),
                      Path(tmp))  # converted as the table converts them
        files = timer.convert([(m, shape) for _, m, shape in models], n_whole=2)
        jobs = [(f, shape) for f, (_, _, shape) in zip(files, models, strict=True)]
        passes: list[list[float]] = []
        fast: list[list[float]] = []  # the fastest run of each pass (interference only adds)
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            got = time_blocked(jobs, "tflite-xnnpack", 1, args.runs, args.warmup,
                               timing="fastest")
            fast.append([v[0] for v in got])
            got = time_blocked(jobs, "tflite-xnnpack", 1, args.runs, args.warmup)
            passes.append([v[0] for v in got])
            print(f"{time.monotonic() - t0:6.0f} s  " +
                  "  ".join(f"{v:8.2f}" for v in passes[-1]), flush=True)
    _report(models, np.asarray(passes), np.asarray(fast), args.rounds)


def _report(models: list, a: np.ndarray, fast: np.ndarray, rounds: int) -> None:
    """Per model: how far apart the table's estimate lands when the table is built at different
    moments (groups of ``rounds`` consecutive passes), for five estimators."""
    n = len(a) // rounds
    g = a[: n * rounds].reshape(n, rounds, -1)
    f = fast[: n * rounds].reshape(n, rounds, -1)
    est = {"median of medians (--timing median)": np.median(g, axis=1),
           "min of medians": g.min(axis=1),
           "median of fastest runs": np.median(f, axis=1),
           "min of fastest runs": f.min(axis=1),
           "median of medians / reference": np.median(g / g[:, :, :1], axis=1)}
    print(f"\n{len(a)} passes; {n} estimates of {rounds} passes each. Per model, the spread of "
          "the estimates: (max - min) / median, and the coefficient of variation")
    names = list(est)
    print("| model | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for k, (name, _, _) in enumerate(models):
        cells = []
        for e in est.values():
            col = e[:, k]
            cells.append(f"{np.median(col):.3g} ms: {100 * np.ptp(col) / np.median(col):.0f} % "
                         f"/ CV {100 * col.std() / col.mean():.1f} %")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
