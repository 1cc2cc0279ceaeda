"""Which fit of a latency table predicts whole models best: one scale, or a scale and a per-unit
overhead? Refits the whole models a table measured (its calibration and validation models
together), leaving each out in turn, and prints the left-out model's error under both fits.

    python scripts/latency_refit.py runs/table_fp32_v3.json runs/table_fp32.json

Leave-one-out on the sixteen models a table already timed needs no new timing, and every model
is judged by a fit that did not see it. A script that prints numbers; ``docs/results.md`` keeps
its output.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from dmad.benchmark.latency_table import fit_scale
from dmad.compress.latency import LatencyTable
from dmad.compress.models import ResnetSpec, ResnetWidths
from dmad.export.s2d import PHASE_FRONT_BELOW


def _errors(table: LatencyTable, spec: ResnetSpec, archs: list[ResnetWidths],
            measured: list[float], two: bool) -> list[float]:
    errs = []
    for i in range(len(archs)):
        rest = [k for k in range(len(archs)) if k != i]
        t = dataclasses.replace(table, scale=1.0, overhead_ms=table.invoke_ms)
        if two:
            t.scale, t.overhead_ms = fit_scale(t, spec, [archs[k] for k in rest],
                                               [measured[k] for k in rest])
        else:
            raw = [t.predict(spec, archs[k]).ms for k in rest]
            t.scale = float(np.median(np.asarray([measured[k] for k in rest]) / raw))
        errs.append(t.predict(spec, archs[i]).ms / measured[i] - 1.0)
    return errs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tables", nargs="+", help="latency table files (dmad latency-table)")
    args = ap.parse_args()
    for path in args.tables:
        table = LatencyTable.load(path)
        table.fused_stem_below = PHASE_FRONT_BELOW  # how the grid was timed (older files lack it)
        mx = table.max_widths
        spec = ResnetSpec(ngf=int(mx["stem"]), n_blocks=9, **{
            k: table.family[k] for k in ("input_nc", "output_nc", "norm", "padding",
                                         "separable")})
        rows = table.calibration + table.validation
        archs = [ResnetWidths(**{**r["widths"], "blocks": tuple(r["widths"]["blocks"])})
                 for r in rows]
        measured = [float(r["measured_ms"]) for r in rows]
        print(f"{path}: {len(rows)} whole models, each left out in turn")
        for name, two in (("one scale", False), ("scale + per-unit overhead", True)):
            e = _errors(table, spec, archs, measured, two)
            inside = sum(abs(v) <= 0.10 for v in e)
            print(f"  {name:26s} {inside}/{len(e)} within 10 %, worst "
                  f"{100 * max(e, key=abs):+.1f} %: " + " ".join(f"{100 * v:+.1f}" for v in e))


if __name__ == "__main__":
    main()
