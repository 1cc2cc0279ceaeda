"""Which fit of a latency table predicts whole models best: one scale; a scale and a per-unit
overhead (the earlier fit); or a scale and a whole-model constant (``fit_scale``, the table's
fit)? Refits the whole models a table measured, two ways, and prints each model's error:

* fitted on the table's calibration models, judged on its validation models (what
  ``dmad latency-table`` itself does);
* leave-one-out over all of them (calibration and validation together).

    python scripts/latency_refit.py runs/table_fp32_vnni2.json runs/table_int8_plan.json

Refitting models a table already timed needs no new timing, and every model is judged by a fit
that did not see it. A script that prints numbers; ``docs/results.md`` keeps its output.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

import numpy as np

from dmad.benchmark.latency_table import fit_scale
from dmad.compress.graph_latency import fit_nonnegative
from dmad.compress.latency import LatencyTable
from dmad.compress.models import ResnetSpec, ResnetWidths
from dmad.export.s2d import PHASE_FRONT_BELOW

Fit = Callable[[LatencyTable, ResnetSpec, list[ResnetWidths], list[float]], LatencyTable]


def _one_scale(t: LatencyTable, spec: ResnetSpec, archs: list[ResnetWidths],
               measured: list[float]) -> LatencyTable:
    raw = [t.predict(spec, a).ms for a in archs]
    return dataclasses.replace(t, scale=float(np.median(np.asarray(measured) / raw)))


def _per_unit(t: LatencyTable, spec: ResnetSpec, archs: list[ResnetWidths],
              measured: list[float]) -> LatencyTable:
    """measured ≈ s × (Σ units − (n − 1) × q), s and q >= 0 (the earlier fit)."""
    m = np.asarray(measured)
    preds = [t.predict(spec, a) for a in archs]
    ssum = np.array([sum(p.units.values()) for p in preds])
    n = np.array([max(p.alone, 1) - 1 for p in preds], dtype=float)
    s, q = fit_nonnegative(np.stack([ssum / m, -n / m], axis=1), np.ones(len(m)))
    return dataclasses.replace(t, scale=float(s), overhead_ms=float(q / s) if s else 0.0)


def _whole(t: LatencyTable, spec: ResnetSpec, archs: list[ResnetWidths],
           measured: list[float]) -> LatencyTable:
    s, o, c = fit_scale(t, spec, archs, measured)
    return dataclasses.replace(t, scale=s, overhead_ms=o, whole_ms=c)


FITS: dict[str, Fit] = {"one scale": _one_scale, "scale + per-unit overhead": _per_unit,
                        "scale + whole-model constant": _whole}


def _say(name: str, e: list[float]) -> None:
    inside = sum(abs(v) <= 0.10 for v in e)
    print(f"    {name:29s} {inside}/{len(e)} within 10 %, worst {100 * max(e, key=abs):+.1f} %: "
          + " ".join(f"{100 * v:+.1f}" for v in e))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tables", nargs="+", help="latency table files (dmad latency-table)")
    args = ap.parse_args()
    for path in args.tables:
        table = LatencyTable.load(path)
        table.fused_stem_below = table.fused_stem_below or PHASE_FRONT_BELOW  # older files
        base = dataclasses.replace(table, scale=1.0, overhead_ms=table.invoke_ms, whole_ms=0.0)
        mx = table.max_widths
        spec = ResnetSpec(ngf=int(mx["stem"]), n_blocks=9, **{
            k: table.family[k] for k in ("input_nc", "output_nc", "norm", "padding",
                                         "separable")})
        rows = table.calibration + table.validation
        archs = [ResnetWidths(**{**r["widths"], "blocks": tuple(r["widths"]["blocks"])})
                 for r in rows]
        measured = [float(r["measured_ms"]) for r in rows]
        nc = len(table.calibration)
        print(f"{path}: {nc} calibration + {len(rows) - nc} validation models")
        for title, split in (("fitted on the calibration, judged on the validation", True),
                             ("leave-one-out over all", False)):
            print(f"  {title}")
            for name, fit in FITS.items():
                if split:
                    t = fit(base, spec, archs[:nc], measured[:nc])
                    e = [t.predict(spec, a).ms / m - 1 for a, m in
                         zip(archs[nc:], measured[nc:], strict=True)]
                else:
                    e = []
                    for i in range(len(archs)):
                        rest = [k for k in range(len(archs)) if k != i]
                        t = fit(base, spec, [archs[k] for k in rest], [measured[k] for k in rest])
                        e.append(t.predict(spec, archs[i]).ms / measured[i] - 1)
                _say(name, e)


if __name__ == "__main__":
    main()
