"""``dmad latency-table --generator G.pt`` for a traced generator (CUT, pix2pixHD, a user's) or
a UNet (no repeated unit to time alone: its widths change at every level).

The generator itself is pruned to random keep sets (every coupled group of channels a random
width, a quarter of them on the channel multiple), each student converted the way the export
converts and timed whole on the backend, in the same passes; the per-layer costs of
:mod:`dmad.compress.graph_latency` are fitted on ``--calibrate`` of them and the other
``--validate`` are predicted and measured. The channel multiple is measured first (``--multiple
0``) on one 3×3 convolution at a quarter of the input side, its output width swept.
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dmad.benchmark.latency_table import (
    LatencyTableConfig,
    Timer,
    choose_multiple,
    parse_int8_plan,
    table_key,
    write_table,
)
from dmad.compress import budget
from dmad.compress.errors import DmadError
from dmad.compress.graph_cost import GraphSpec, family_graph
from dmad.compress.graph_latency import GraphLatencyTable, features, fit_nonnegative
from dmad.compress.graph_model import set_mask_values
from dmad.compress.masks import attach_masks
from dmad.compress.models import spec_to_dict
from dmad.compress.prune import prune

__all__ = ["build_graph_table", "graph_validation_table", "random_student"]


def random_student(teacher: nn.Module, spec: GraphSpec, rng: np.random.Generator,
                   multiple: int) -> tuple[nn.Module, dict[int, int]]:
    """``teacher`` pruned to a random keep set, and that keep set (space root → channels)."""
    m = copy.deepcopy(teacher)
    masks = attach_masks(m)
    counts: dict[int, int] = {}
    for name in masks:
        root = spec.site_root[name]
        if root not in counts:
            full, chunk = masks[name].channels, spec.chunk.get(root, 1)  # GroupNorm groups
            tile = math.lcm(multiple, chunk)
            n = int(rng.integers(1, full + 1))
            if tile > 1 and full >= tile and rng.random() < 0.25:
                n = max(tile, n // tile * tile)
            counts[root] = max(chunk, n // chunk * chunk)
    for name, mask in masks.items():
        v = torch.zeros(mask.channels)
        v[: counts[spec.site_root[name]]] = 1.0
        set_mask_values(mask, v)
    return prune(m.eval()), counts


def _sweep(cfg: LatencyTableConfig, spec: GraphSpec, timer: Any,
           say: Callable[[str], None]) -> tuple[int, dict[str, Any]]:
    if cfg.multiple:
        return cfg.multiple, {}
    cin = min(64, max(spec.site_channels.values()))
    ws = list(range(1, 65))
    side = max(4, cfg.size // 4)
    say(f"sweep: a 3x3 convolution {cin} -> 1..64 channels at {side}²")
    torch.manual_seed(cfg.seed)
    items = [(nn.Sequential(nn.Conv2d(cin, w, 3, 1, 1), nn.ReLU()).eval(), (1, cin, side, side))
             for w in ws]
    ms = timer.time(items, timing="fastest")
    multiple = choose_multiple(ws, ms)
    say(f"preferred channel multiple: {multiple}")
    return multiple, {"unit": "conv3x3", "in": cin, "out": ws, "ms": [round(v, 4) for v in ms],
                      "multiple": multiple}


def build_graph_table(cfg: LatencyTableConfig, teacher: nn.Module,
                      say: Callable[[str], None]) -> GraphLatencyTable:
    """Measure, fit and validate a traced generator's table; writes ``cfg.out`` atomically."""
    if cfg.calibrate < 4:
        raise DmadError(f"--calibrate: {cfg.calibrate}; a traced generator's table fits three "
                        "costs on whole models: at least 4")
    gspec = teacher.spec  # type: ignore[union-attr]
    if cfg.size % gspec.divisor:
        raise DmadError(f"--size: {cfg.size} is not a multiple of {gspec.divisor} for this "
                        "generator")
    if cfg.backend == "tflite-int8" and parse_int8_plan(cfg.int8_plan):
        say("--int8-plan: ResNet tables only; this generator's int8 files are timed with "
            "every layer in int8")
    spec = budget.cost_spec(teacher, cfg.size)
    if not isinstance(spec, GraphSpec):  # a UNet: its traced graph, sites by DMAD's names
        spec = family_graph(spec)
    builder, kwargs = (gspec.builder, dict(gspec.kwargs)) if gspec.family == "graph" else (
        f"dmad.compress.models:{type(teacher).__name__}", spec_to_dict(gspec))
    work = Path(tempfile.mkdtemp(prefix="dmad-lat-"))
    try:
        timer = Timer(cfg, work)
        multiple, sweep = _sweep(cfg, spec, timer, say)
        rng = np.random.default_rng(cfg.seed + 1)
        n = cfg.calibrate + cfg.validate
        models = [random_student(teacher, spec, rng, multiple) for _ in range(n)]
        shape = (1, gspec.input_nc, cfg.size, cfg.size)
        say(f"{n} whole models at random keep sets ({cfg.calibrate} to fit, {cfg.validate} to "
            f"validate); {cfg.rounds} rounds")
        ms = timer.time([(m, shape) for m, _ in models], n_whole=n)
        feats = [features(spec, kept, cfg.size, multiple) for _, kept in models]
        x = np.array([[g, e, 1.0] for g, e in feats[: cfg.calibrate]])
        c = fit_nonnegative(x, np.asarray(ms[: cfg.calibrate]))
        table = GraphLatencyTable(
            key=table_key(cfg, timer), builder=builder, kwargs=kwargs,
            sites=dict(spec.site_channels), size=cfg.size, multiple=multiple,
            coef={"per_gmac": round(float(c[0]), 6), "per_melem": round(float(c[1]), 6),
                  "const_ms": round(float(c[2]), 6)}, sweep=sweep,
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
        rows = [_row(table, spec, kept, got) for (_, kept), got in zip(models, ms, strict=True)]
        table.calibration, table.validation = rows[: cfg.calibrate], rows[cfg.calibrate:]
        write_table(Path(cfg.out), table)
        return table
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _row(table: GraphLatencyTable, spec: GraphSpec, kept: dict[int, int], got: float
         ) -> dict[str, Any]:
    gmacs, melems = features(spec, kept, table.size, table.multiple)
    pred = table.predict(spec, kept).ms
    return {"gmacs_rounded": round(gmacs, 5), "melems": round(melems, 4),
            "predicted_ms": round(pred, 3), "measured_ms": round(got, 3),
            "error": round(pred / got - 1.0, 4)}


def graph_validation_table(rows: list[dict[str, Any]]) -> str:
    """The validation as a markdown table, with the worst error."""
    lines = ["| GMACs (rounded) | M elements | predicted ms | measured ms | error |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['gmacs_rounded']:.4f} | {r['melems']:.3f} | {r['predicted_ms']:.2f} | "
              f"{r['measured_ms']:.2f} | {100 * r['error']:+.1f} % |" for r in rows]
    if rows:
        worst = max(abs(r["error"]) for r in rows)
        inside = sum(abs(r["error"]) <= 0.10 for r in rows)
        lines.append(f"\nworst error {100 * worst:.1f} %; {inside}/{len(rows)} within 10 %")
    return "\n".join(lines)
