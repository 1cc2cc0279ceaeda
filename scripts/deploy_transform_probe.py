"""What would a deploy transform save? A student's fp32 file against the same widths without
InstanceNorm statistics, with zero padding in the residual blocks, and both.

    python scripts/deploy_transform_probe.py \
        --model runs/frontier_long/div20/finetune/student_G_AtoB.pt

The variants are the ones ``dmad compress --deploy`` builds (compress/deploy_transforms.py),
before any fine-tune: only their latency is measured here. Every
file is converted as the export converts it and timed on this CPU (LiteRT XNNPACK, 1 thread,
256²) in the same passes (``--rounds`` of ``--runs``, the fastest run of each, then the fastest
over passes: ``dmad latency-table``'s default timing); prints each file's ms and its ratio to the
student as it is. A script that prints numbers, not a test; ``docs/results.md`` keeps its output.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from dmad.benchmark.latency_table import LatencyTableConfig, Timer, reduce_rounds
from dmad.benchmark.runners import time_blocked
from dmad.compress.checkpoint import load_generator
from dmad.compress.deploy_transforms import fold_norms, zero_padding
from dmad.compress.models import ResnetGenerator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="a ResNet student (.pt)")
    ap.add_argument("--size", type=int, default=256, help="input side in pixels")
    ap.add_argument("--runs", type=int, default=10, help="timed runs per file and pass")
    ap.add_argument("--rounds", type=int, default=5, help="passes over all files")
    args = ap.parse_args()
    g, _ = load_generator(args.model)
    if not isinstance(g, ResnetGenerator):
        raise SystemExit(f"{args.model}: not a ResNet generator")
    g = g.eval()
    shape = (1, g.spec.input_nc, args.size, args.size)
    x = torch.rand(shape) * 2 - 1  # the statistics do not change the time
    folded = fold_norms(g, x)
    models = {"as trained": g, "zero padding in blocks": zero_padding(g),
              "no norm statistics": folded, "both": zero_padding(folded)}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        timer = Timer(LatencyTableConfig(out=Path(tmp) / "unused.json", size=args.size),
                      Path(tmp))
        files = timer.convert([(m, shape) for m in models.values()], n_whole=len(models))
        got = time_blocked([(f, shape) for f in files], "tflite-xnnpack", 1, args.runs, 3,
                           args.rounds, timing="fastest")
    ms = [reduce_rounds(v, "fastest") for v in got]
    for (name, _), v in zip(models.items(), ms, strict=True):
        print(f"{name:24s} {v:8.2f} ms  {ms[0] / v:5.2f}x")


if __name__ == "__main__":
    main()
