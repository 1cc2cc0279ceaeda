"""Latency model of a target: a table of measured unit latencies and the prediction it makes.

MACs are not time for the slim generators this tool makes: on XNNPACK a 3×3 convolution costs
the same for 17 and for 32 output channels (its kernels work on 16-channel tiles on AVX-512),
and the full-resolution stem and head cost far more per MAC than the 64² blocks. So the search
can budget in milliseconds instead: ``dmad latency-table`` (:mod:`dmad.benchmark.latency_table`)
times every *unit* of a generator family (ResNet: stem, the two downsampling convs, a residual
block, the two upsampling convs, the head) as a small model converted the way the export does,
at a grid of widths on the backend's preferred multiple, and writes the table this module reads.

A prediction is the sum over the units of a lookup with piecewise-linear interpolation between
grid points, each width first rounded up to the table's multiple (the kernels' tile: the
measured cost is flat inside one), minus the overhead every unit model paid alone but the
whole model pays once in total, times a scale; scale and overhead are fitted on whole models of
random widths, wide and narrow. This
module only reads tables and predicts; it imports no converter and no runtime, so the search
(``compress``) can use it.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dmad.compress.errors import DmadError
from dmad.compress.models import ResnetSpec, ResnetWidths, UnetSpec

FORMAT = "dmad-latency-table/1"
#: the spec fields a table is valid for (besides the widths, which it covers up to its maxima)
FAMILY_FIELDS = ("input_nc", "output_nc", "norm", "padding", "separable")
#: ResNet units and the widths that span each one's grid (``in`` = fixed by the spec)
RESNET_UNITS: dict[str, tuple[str, ...]] = {
    "stem": ("stem",),
    "down1": ("stem", "down1"),
    "down2": ("down1", "stream"),
    "block": ("stream", "inner"),
    "up1": ("stream", "up1"),
    "up2": ("up1", "up2"),
    "head": ("up2",),
}


@dataclass
class Grid:
    """Measured milliseconds of one unit on a 1-D or 2-D grid of widths."""

    axes: list[list[int]]
    ms: list[Any]  # nested lists, one level per axis
    #: per axis, the step a width is rounded up to before the lookup: the tile of the unit's
    #: kernels where the axis is a convolution's output channels (cost flat inside a tile), 1
    #: where it is only an input (the reduction is not padded; interpolation is right there)
    steps: list[int] = field(default_factory=list)

    def at(self, widths: Sequence[int]) -> float:
        """Piecewise-(bi)linear interpolation at ``widths``, each rounded up to its step."""
        if len(widths) != len(self.axes):
            raise ValueError(f"grid has {len(self.axes)} axes, got widths {list(widths)}")
        steps = self.steps or [1] * len(self.axes)
        brackets = [_bracket(ax, _snap(ax, w, st))
                    for ax, w, st in zip(self.axes, widths, steps, strict=True)]
        total = 0.0
        for corner in range(1 << len(brackets)):
            weight, v = 1.0, self.ms
            for k, (i0, i1, t) in enumerate(brackets):
                hi = (corner >> k) & 1
                weight *= t if hi else 1.0 - t
                v = v[i1 if hi else i0]
            if weight:
                total += weight * float(v)  # type: ignore[arg-type]
        return total


def _round_up(w: int, multiple: int) -> int:
    """``w`` rounded up to the tile above one tile; at most one tile, kernels shrink with the
    width (a 3-channel conv is cheaper than a 16-channel one), so the grid interpolates."""
    return int(math.ceil(w / multiple) * multiple) if multiple > 1 and w > multiple else int(w)


def _snap(axis: list[int], w: int, step: int) -> int:
    """``w`` rounded up to its tile, but never past the next grid point: a point inside a tile
    marks where the layer changes form (a stem under 16 channels runs fused with down1 on the
    image's phases), and rounding across it would look up the other form."""
    up = _round_up(w, step)
    i = bisect.bisect_left(axis, w)
    return min(up, axis[i]) if i < len(axis) else up


def _bracket(axis: list[int], w: float) -> tuple[int, int, float]:
    """(i0, i1, t): w between axis[i0] and axis[i1] at fraction t; clamped at the ends."""
    if w <= axis[0] or len(axis) == 1:
        return 0, 0, 0.0
    if w >= axis[-1]:
        return len(axis) - 1, len(axis) - 1, 0.0
    i1 = bisect.bisect_left(axis, w)
    i0 = i1 - 1
    return i0, i1, (w - axis[i0]) / (axis[i1] - axis[i0])


@dataclass
class Prediction:
    """Predicted whole-model milliseconds and each unit's share."""

    ms: float
    units: dict[str, float] = field(default_factory=dict)
    #: how many of ``units`` were unit models of their own (each paid the overhead alone)
    alone: int = 0


@dataclass
class LatencyTable:
    """A measured latency model of one backend on one machine (or phone) for one family."""

    key: dict[str, Any]  # machine, backend, threads, ISA, device (phone) — what it is valid for
    family: dict[str, Any]  # the FAMILY_FIELDS of the generator, plus "family"
    size: int  # input side in pixels the units were timed at
    max_widths: dict[str, Any]  # the widths the grid spans (the full model's)
    multiple: int  # the backend's preferred channel multiple (its tile), measured
    #: what each unit model pays alone that the whole model pays once: fitted with ``scale`` on
    #: the calibration models, or (none) one invoke of a near-empty model, ``invoke_ms``
    overhead_ms: float
    units: dict[str, Grid]
    sweep: dict[str, Any] = field(default_factory=dict)  # how ``multiple`` was measured
    #: whole model ÷ (sum of its units − shared overheads), fitted on the calibration models
    scale: float = 1.0
    calibration: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    created: str = ""
    invoke_ms: float = 0.0  # one invoke of a near-empty model, measured
    #: stems narrower than this run fused with down1 (the export's phase front): their grid
    #: points are empty models, and they pay no overhead of their own (0: none, older tables)
    fused_stem_below: int = 0
    #: what a whole model pays once over its scaled units (an int8 file's float input and
    #: output, the first and last tensors crossing the interpreter): fitted with ``scale``
    whole_ms: float = 0.0

    # -- files -----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {"format": FORMAT, **d}

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table file; a one-line error naming the file when it is not one."""
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise DmadError(f"latency_table: {p}: no such file (make one with "
                            "`dmad latency-table`)") from None
        except (OSError, ValueError) as exc:
            raise DmadError(f"latency_table: {p}: not a JSON file ({exc})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise DmadError(f"latency_table: {p}: not a dmad latency table (format "
                            f"{d.get('format') if isinstance(d, dict) else None!r}, "
                            f"want {FORMAT!r} or 'dmad-latency-graph/1')")
        try:
            units = {k: Grid([list(map(int, a)) for a in g["axes"]], g["ms"],
                             [int(v) for v in g.get("steps") or []])
                     for k, g in d["units"].items()}
            table = cls(key=dict(d["key"]), family=dict(d["family"]), size=int(d["size"]),
                       max_widths=dict(d["max_widths"]), multiple=int(d["multiple"]),
                       overhead_ms=float(d["overhead_ms"]), units=units,
                       sweep=dict(d.get("sweep") or {}), scale=float(d.get("scale", 1.0)),
                       calibration=list(d.get("calibration") or []),
                       validation=list(d.get("validation") or []),
                       created=str(d.get("created", "")),
                       invoke_ms=float(d.get("invoke_ms", 0.0)),
                       fused_stem_below=int(d.get("fused_stem_below", 0)),
                       whole_ms=float(d.get("whole_ms", 0.0)))
            missing = [u for u in RESNET_UNITS if u not in units] + [
                w for w in ("stem", "down1", "stream", "inner", "up1", "up2")
                if w not in d["max_widths"]]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            for name, g in units.items():
                if g.steps and len(g.steps) != len(g.axes):
                    raise ValueError(f"unit {name}: {len(g.steps)} steps for {len(g.axes)} axes")
                shape = list(np.shape(np.asarray(g.ms, dtype=float)))
                if shape != [len(a) for a in g.axes] or any(list(a) != sorted(set(a))
                                                            for a in g.axes):
                    raise ValueError(f"unit {name}: ms of shape {shape} on axes "
                                     f"{[len(a) for a in g.axes]} (sorted, distinct)")
                ms = np.asarray(g.ms, dtype=float)
                if not (np.isfinite(ms).all() and (ms >= 0).all()) or any(
                        v < 1 for a in g.axes for v in a):
                    raise ValueError(f"unit {name}: times must be finite and >= 0 ms, widths "
                                     ">= 1")
            numbers = (table.overhead_ms, table.scale, table.invoke_ms, table.whole_ms)
            if not all(np.isfinite(numbers)) or table.scale <= 0 or table.overhead_ms < 0 \
                    or table.invoke_ms < 0 or table.size < 1 or table.multiple < 0 \
                    or table.fused_stem_below < 0 or table.whole_ms < 0:
                raise ValueError("size, multiple, overhead_ms, invoke_ms, whole_ms, "
                                 "fused_stem_below and scale must be finite and in range")
            return table
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise DmadError(f"latency_table: {p}: malformed table ({exc})") from None

    def describe(self) -> str:
        return describe_key(self.key, self.size, self.multiple)

    # -- prediction ------------------------------------------------------------------------
    def check_spec(self, spec: ResnetSpec | UnetSpec) -> None:
        """One-line error when ``spec`` is not a generator this table measured."""
        if not isinstance(spec, ResnetSpec) or self.family.get("family") != "resnet":
            raise DmadError(f"latency_table: covers {self.family.get('family')} generators; "
                            f"the generator is a {getattr(spec, 'family', type(spec).__name__)} "
                            "(latency tables cover ResNet generators)")
        for f in FAMILY_FIELDS:
            if self.family.get(f) != getattr(spec, f):
                raise DmadError(f"latency_table: measured for {f}={self.family.get(f)!r}, the "
                                f"generator has {f}={getattr(spec, f)!r}; build a table for it "
                                "with `dmad latency-table --generator FILE`")
        w, mx = spec.resolved_widths(), self.max_widths
        over = [n for n, v in (("stem", w.stem), ("down1", w.down1), ("stream", w.stream),
                                ("inner", max(w.blocks, default=0)), ("up1", w.up1),
                                ("up2", w.up2)) if v > int(mx[n])]
        if over:
            raise DmadError(f"latency_table: widths {', '.join(over)} are above the table's "
                            f"grid ({mx}); build it from this generator")

    def predict(self, spec: ResnetSpec, widths: ResnetWidths | None = None) -> Prediction:
        """Predicted milliseconds of ``spec`` (or ``spec`` with ``widths``) at the table's size."""
        w = widths or spec.resolved_widths()
        u = self.units
        parts: dict[str, float] = {
            "stem": u["stem"].at([w.stem]),
            "down1": u["down1"].at([w.stem, w.down1]),
            "down2": u["down2"].at([w.down1, w.stream]),
            "up1": u["up1"].at([w.stream, w.up1]),
            "up2": u["up2"].at([w.up1, w.up2]),
            "head": u["head"].at([w.up2]),
        }
        for i, inner in enumerate(w.blocks):
            if inner > 0:
                parts[f"block{i}"] = u["block"].at([w.stream, inner])
        # a stem fused into the phase front is an empty model in the grid: it paid no unit
        # model's overhead. Each other unit pays it alone; the whole model pays it once. A unit
        # counts at least nothing, so keeping a channel never makes a prediction cheaper.
        fused = parts["stem"] if w.stem < self.fused_stem_below else None
        alone = [v for k, v in parts.items() if not (k == "stem" and fused is not None)]
        o = self.overhead_ms
        total = (fused or 0.0) + o + sum(max(v - o, 0.0) for v in alone)
        return Prediction(max(self.scale * total + self.whole_ms, 0.0), parts, len(alone))


def describe_key(key: dict[str, Any], size: int, multiple: int) -> str:
    """What a table was measured on, in one phrase (backend, threads, machine or phone)."""
    where = key.get("device") or key.get("machine", "?")
    plan = key.get("int8_plan")
    kept = (f", {', '.join(f'{u} {k}' for u, k in sorted(plan.items()))}" if plan else "")
    return (f"{key.get('backend')}{kept} {key.get('threads')} thread(s) on {where} at "
            f"{size}², multiple {multiple}")


def load_table(path: str | Path) -> Any:
    """The latency table in ``path``: a ResNet family's :class:`LatencyTable`, or a traced
    generator's :class:`~dmad.compress.graph_latency.GraphLatencyTable` (by its format)."""
    from dmad.compress.graph_latency import FORMAT as GRAPH_FORMAT
    from dmad.compress.graph_latency import GraphLatencyTable

    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        d = None  # LatencyTable.load says what is wrong with it
    if isinstance(d, dict) and d.get("format") == GRAPH_FORMAT:
        return GraphLatencyTable.from_json(d, str(p))
    return LatencyTable.load(p)


def unit_steps(unit: str, multiple: int) -> list[int]:
    """Per-axis rounding steps of a ResNet unit (see :attr:`Grid.steps`): an axis that is some
    convolution's output channels rounds to the tile; the sub-pixel upsampling conv writes
    4 channels per output channel, so its tile is a quarter as many output channels."""
    m = max(1, multiple)
    return {"stem": [m], "down1": [1, m], "down2": [1, m], "block": [m, m],
            "up1": [1, max(1, m // 4)], "up2": [1, max(1, m // 4)], "head": [1]}[unit]


def axis_points(limit: int, multiple: int, max_points: int) -> list[int]:
    """Grid widths of one axis: the multiples of ``multiple`` up to ``limit`` (and ``limit``
    itself), thinned to at most ``max_points`` (the first and last always kept) evenly in the
    square root of the width, so denser where the widths are narrow: there a tile is a large
    share of a layer's cost, and there a tight ``--target-ms`` search ends; and below them a
    quarter tile and one channel: a layer's cost keeps falling under a tile (a head reading one
    channel costs a third of one reading four), and a lookup under the first point would
    clamp to it."""
    m = max(1, multiple)
    pts = list(range(m, limit + 1, m)) or [limit]
    if pts[-1] != limit:
        pts.append(limit)
    if len(pts) > max_points >= 2:
        lo, hi = math.sqrt(pts[0]), math.sqrt(pts[-1])
        want = [(lo + (hi - lo) * i / (max_points - 1)) ** 2 for i in range(max_points)]
        idx = sorted({min(range(len(pts)), key=lambda j, v=v: abs(pts[j] - v)) for v in want})
        pts = [pts[i] for i in idx]
    small = {p for p in (1, m // 4) if m > 1 and 1 <= p < pts[0]}
    return sorted(small | set(pts))


def max_widths_of(spec: ResnetSpec) -> dict[str, int]:
    """The grid maxima for a ResNet spec: its own widths (the full model's for a teacher)."""
    w = spec.resolved_widths()
    return {"stem": w.stem, "down1": w.down1, "stream": w.stream,
            "inner": max(w.blocks, default=0) or w.stream, "up1": w.up1, "up2": w.up2}


def family_of(spec: ResnetSpec) -> dict[str, Any]:
    return {"family": spec.family, **{f: getattr(spec, f) for f in FAMILY_FIELDS}}
