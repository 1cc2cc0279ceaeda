"""How well a traced generator's latency table predicts whole models, at a realistic size.

    python scripts/graph_latency_check.py [--arch cut|pix2pixhd] [--size 256] \
        [--calibrate 10] [--validate 6] [--out runs/graph_latency]

Builds the public generator at its published width (CUT: ngf 64, 9 blocks, anti-aliased;
pix2pixHD global: ngf 32, 4 downsamplings, 9 blocks: half the published width, to keep the
conversions short) with random weights (latency does not depend on them), then runs
``dmad latency-table --generator`` on it: the channel multiple from a swept convolution, whole
students at random keep sets converted as the export converts and timed on this CPU (LiteRT
XNNPACK fp32, 1 thread), per-layer costs fitted on ``--calibrate`` of them and the other
``--validate`` predicted and measured. Prints the fitted costs and both tables (the
validation's worst error is the number to quote). Run nothing else meanwhile: it times.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dmad.benchmark.graph_table import graph_validation_table
from dmad.benchmark.latency_table import LatencyTableConfig, build_table
from dmad.compress.checkpoint import save_model
from dmad.compress.graph_model import graph_teacher
from dmad.compress.models.public import CutResnet, Pix2PixHDGlobal

ARCHS = {
    "cut": ("dmad.compress.models.public:CutResnet", CutResnet,
            {"ngf": 64, "n_blocks": 9, "antialias": True}),
    "pix2pixhd": ("dmad.compress.models.public:Pix2PixHDGlobal", Pix2PixHDGlobal,
                  {"ngf": 32, "n_down": 4, "n_blocks": 9}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="cut", help="public generator")
    ap.add_argument("--size", type=int, default=256, help="input side in pixels")
    ap.add_argument("--calibrate", type=int, default=10, help="whole models the fit uses")
    ap.add_argument("--validate", type=int, default=6, help="whole models only predicted")
    ap.add_argument("--multiple", type=int, default=0, help="channel multiple (0: sweep)")
    ap.add_argument("--out", type=Path, default=Path("runs/graph_latency"), help="work folder")
    a = ap.parse_args()
    builder, cls, kwargs = ARCHS[a.arch]
    a.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    teacher = graph_teacher(cls(**kwargs), builder, kwargs)
    gen = a.out / f"{a.arch}.pt"
    save_model(teacher, gen)
    table = build_table(LatencyTableConfig(
        out=a.out / f"{a.arch}_{a.size}.json", force=True, generator=gen, size=a.size,
        multiple=a.multiple, calibrate=a.calibrate, validate=a.validate), print)
    print(f"\n{a.arch} at {a.size}², {table.describe()}")
    print("costs:", json.dumps(table.coef))
    print("\nfitted on:\n" + graph_validation_table(table.calibration))
    print("\nnot fitted (validation):\n" + graph_validation_table(table.validation))


if __name__ == "__main__":
    main()
