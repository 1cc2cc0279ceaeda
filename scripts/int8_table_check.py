"""An int8 latency table against the int8 files the export shipped, and the family's ceiling.

    python scripts/int8_table_check.py --table runs/table_int8.json \
        --full runs/frontier_e/export/full/generator_fp32.tflite \
        runs/div20_3000/finetune/student_G_AtoB.pt:runs/probe/d3000_f35/generator_int8.tflite

A table's validation models are converted with the table's own plan; a user's student is
exported with the plan the chooser picks for it. For each ``MODEL.pt:FILE.tflite`` this prints
the table's prediction for the model's widths, the file's measured time (taken as the table
takes its own: its timing, threads and the table's side), the error, and which units the file
kept out of int8 (its ``parity.json``) beside the table's plan. Then the narrowest
architecture the search can reach (one channel per layer, every block removed), predicted,
against the full fp32 file measured in the same way: the speedup no pruned student of this
family can pass on this CPU. A script that prints numbers; ``docs/results.md`` keeps its output.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from dmad.benchmark.latency_table import file_int8_plan, measure_file
from dmad.compress.checkpoint import load_generator
from dmad.compress.latency import LatencyTable
from dmad.compress.models import ResnetWidths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", type=Path, required=True, help="a `dmad latency-table` file")
    ap.add_argument("--full", type=Path, required=True,
                    help="the full model's fp32 .tflite (the speedups' reference)")
    ap.add_argument("pairs", nargs="*", help="MODEL.pt:FILE.tflite, a student and its int8 file")
    args = ap.parse_args()
    table = LatencyTable.load(args.table)
    key = table.key
    threads, timing = int(key.get("threads") or 1), str(key.get("timing", "fastest"))
    print(f"table {args.table}: {key.get('backend')}, {threads} thread(s), {timing}, "
          f"int8 plan {key.get('int8_plan')}")
    spec = None
    for pair in args.pairs:
        pt, _, f = pair.rpartition(":")
        if not Path(pt).is_file() or not Path(f).is_file():
            ap.error(f"{pair}: expected MODEL.pt:FILE.tflite, two files that exist")
        model = load_generator(Path(pt))[0]
        spec = model.spec
        pred = table.predict(spec).ms
        shape = (1, spec.input_nc, table.size, table.size)
        got = measure_file(Path(f), str(key.get("backend")), shape, threads, timing=timing)
        kept = (file_int8_plan(Path(f).parent / "parity.json") or ({},))[0]
        print(f"{f}: predicted {pred:.2f} ms, measured {got:.2f} ms, error "
              f"{100 * (pred / got - 1):+.1f} %; file kept {kept or 'none'}", flush=True)
    if spec is None:
        return
    narrow = ResnetWidths(1, 1, 1, (0,) * spec.n_blocks, 1, 1)
    floor = table.predict(dataclasses.replace(spec, widths=narrow)).ms
    full = measure_file(args.full, "tflite-xnnpack", (1, spec.input_nc, table.size,
                                                      table.size), threads, timing=timing)
    print(f"one channel per layer, no blocks: predicted {floor:.2f} ms; full fp32 file "
          f"{full:.1f} ms: at most {full / floor:.0f}x")


if __name__ == "__main__":
    main()
