"""``dmad latency-table``: measure a target's latency model (:mod:`dmad.compress.latency`).

Every unit of a ResNet generator (stem, down1, down2, one residual block, up1, up2, head) is
built at each grid width as the same layers the generator uses (a generator with those widths,
one channel elsewhere, the unit taken out of it), converted the way the export converts (our
NHWC graph, sub-pixel upsampling, the export's int8 recipe), and timed with the harness's
runners in blocked order (warm-up, then all runs of one model, as an app runs it; by default
its fastest run over all rounds, see :func:`reduce_rounds`), on this CPU
or on a phone through ``benchmark_model`` over adb. First a sweep of one block's inner width
finds the backend's preferred channel multiple (the width step at which latency jumps); the grid
then sits on multiples of it. The table is validated by predicting and measuring whole
generators of random widths, and every number lands in the file.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dmad.compress.config import opt
from dmad.compress.errors import DmadError
from dmad.compress.latency import (
    RESNET_UNITS,
    Grid,
    LatencyTable,
    axis_points,
    family_of,
    max_widths_of,
    unit_steps,
)
from dmad.compress.models import ResnetSpec, ResnetWidths
from dmad.export.s2d import PHASE_FRONT_BELOW, PhaseHead, PhaseStem, phase_down, to_phases

BACKENDS = ("tflite-xnnpack", "tflite-int8", "ort")
#: how the export's int8 chooser may keep a layer out of int8 (``Int8Recipe``)
INT8_PLAN_KINDS = ("hybrid", "float")
#: the most the export's int8 chooser kept out of int8 in the students measured (a narrow one
#: kept ``up2`` alone and runs under the prediction: a budget holds)
DEFAULT_INT8_PLAN = "up1:hybrid,up2:hybrid"
#: the units' names in a generator, where they differ (the residual blocks)
UNIT_MODULES = {"block": "blocks"}
TIMINGS = ("fastest", "median")
#: candidate channel multiples of the sweep
MULTIPLES = (1, 2, 4, 8, 16, 32)


@dataclasses.dataclass
class LatencyTableConfig:
    """Settings of ``dmad latency-table``."""

    out: Path = opt(help="the table file to write (JSON)")
    force: bool = opt(False, "replace an existing table file at --out")
    backend: str = opt("tflite-xnnpack", "tflite-xnnpack (the fp32 .tflite on XNNPACK) | "
                       "tflite-int8 (the export's full-int8 .tflite on XNNPACK) | ort (ONNX "
                       "Runtime, the fp32 .onnx)")
    int8_plan: str = opt(DEFAULT_INT8_PLAN, "with --backend tflite-int8, ResNet tables: "
                         "units whose convolutions are timed out of int8, as unit:hybrid (int8 "
                         "weights, float activations; a depthwise one stays float) or "
                         "unit:float, comma list; 'none': every layer int8. The default is "
                         "the most the export's chooser kept in the students measured, so a "
                         "--target-ms budget holds for the file shipped")
    threads: int = opt(1, "threads the target runs with")
    generator: Path | None = opt(None, "a dmad model file (e.g. the teacher): the table covers "
                                 "its family and widths up to its own (default: ResNet-9 ngf "
                                 "64); a UNet or a traced generator (CUT, pix2pixHD, your class) "
                                 "is timed whole at random keep sets and per-layer costs are "
                                 "fitted")
    ngf: int = opt(64, "without --generator: ngf of the ResNet-9 the table covers")
    size: int = opt(256, "input side in pixels the units are timed at (phones: 256)")
    max_points: int = opt(10, "grid widths per axis at most (multiples of the measured multiple, "
                          "denser at narrow widths), besides one channel and a quarter multiple "
                          "below them and the fused stem's points")
    multiple: int = opt(0, "channel multiple of the grid; 0 = measure it (a sweep of one block's "
                        "inner width)")
    runs: int = opt(10, "timed runs per model and round (the fastest or the median is kept: "
                    "--timing)")
    rounds: int = opt(3, "passes over all models; across them the fastest or the median is kept "
                      "(--timing)")
    warmup: int = opt(3, "untimed warm-up runs per unit model")
    timing: str = opt("fastest", "fastest (each model's fastest run over all rounds: other work "
                      "on the machine only adds time, so this figure repeats where medians "
                      "drift; compress measures its student the same way) | median (median of "
                      "the runs, then across rounds: the typical latency on a quiet machine)")
    validate: int = opt(10, "random architectures predicted and measured whole, not used by "
                        "the fit (0 = none); half of them narrow (every width at most two "
                        "tiles), where a tight --target-ms search ends")
    calibrate: int = opt(6, "random architectures measured whole (half of them narrow) to fit "
                         "the table's scale and what a whole model pays once over its units "
                         "(under 4: the scale alone; 0 = scale 1)")
    seed: int = opt(0, "seed of the random architectures and weights")
    android: str | None = opt(None, "adb serial of a phone: time the units there with "
                              "benchmark_model (XNNPACK) instead of on this CPU")
    benchmark_binary: Path | None = opt(None, "with --android: LiteRT benchmark_model built for "
                                        "the phone (Android arm64)")
    adb: str | None = opt(None, "adb executable (default: $ADB, $PATH)")

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise DmadError(f"--backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.threads < 1 or self.runs < 1 or self.rounds < 1:
            raise DmadError("--threads/--runs/--rounds: must be >= 1")
        if self.timing not in TIMINGS:
            raise DmadError(f"--timing: {self.timing!r} is not one of {', '.join(TIMINGS)}")
        if self.warmup < 0 or self.validate < 0 or self.calibrate < 0:
            raise DmadError("--warmup/--validate/--calibrate: must be >= 0")
        if self.size < 16 or self.size % 4:
            raise DmadError(f"--size: {self.size} must be a multiple of 4 and >= 16")
        if self.max_points < 2:
            raise DmadError(f"--max-points: {self.max_points} must be >= 2")
        if self.multiple < 0:
            raise DmadError(f"--multiple: {self.multiple} must be >= 0")
        parse_int8_plan(self.int8_plan)
        if self.android is not None:
            if self.backend == "ort":
                raise DmadError("--android: times .tflite files; --backend ort runs on this CPU")
            if self.benchmark_binary is None or not Path(self.benchmark_binary).is_file():
                raise DmadError(f"--benchmark-binary: {self.benchmark_binary}: no such file "
                                "(needed with --android)")


def parse_int8_plan(text: str) -> dict[str, str]:
    """``--int8-plan`` as {unit: kind}: ``unit:kind`` pairs, or ``none`` / empty for none."""
    plan: dict[str, str] = {}
    if text.strip().lower() in ("", "none"):
        return plan
    for part in text.split(","):
        unit, _, kind = part.strip().partition(":")
        if unit not in RESNET_UNITS or kind not in INT8_PLAN_KINDS:
            raise DmadError(f"--int8-plan: {part.strip()!r} is not unit:kind (units "
                            f"{', '.join(RESNET_UNITS)}; kinds {', '.join(INT8_PLAN_KINDS)})")
        plan[unit] = kind
    return plan


def planned_layers(model: nn.Module, plan: dict[str, str]
                   ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(float, hybrid) layer names of ``model``'s convolutions in the plan's units, as the
    export's ``Int8Recipe`` names layers: a unit's layers sit under the generator's name for
    it in whole generators and in unit models alike (:func:`unit_model`; a block unit's are
    ``blocks.conv1…`` where a generator's are ``blocks.0.conv1…``), each matched in its own
    model's graph."""
    units = {UNIT_MODULES.get(u, u): kind for u, kind in plan.items()}
    out: dict[str, list[str]] = {"float": [], "hybrid": []}
    for name, mod in model.named_modules():
        kind = units.get(name.split(".")[0])
        if kind and isinstance(mod, nn.Conv2d | nn.ConvTranspose2d):
            # a grouped (depthwise) convolution has no hybrid form: the export keeps it float
            out["float" if mod.groups > 1 else kind].append(name)
    return tuple(out["float"]), tuple(out["hybrid"])


def plan_of_layers(float_layers: list[str], hybrid_layers: list[str]) -> dict[str, str]:
    """The units an exported int8 file kept out of int8 (its ``int8_recipe`` layers), in
    ``--int8-plan``'s terms: what to compare with the plan a table timed. Coarse on purpose:
    one block kept hybrid reads as ``block:hybrid``, and a unit with a float layer as float."""
    names = {m: u for u, m in UNIT_MODULES.items()}
    return {names.get(n.split(".")[0], n.split(".")[0]): kind
            for kind, layers in (("hybrid", hybrid_layers), ("float", float_layers))
            for n in layers}


def file_int8_plan(parity: Path) -> tuple[dict[str, str], dict[str, list[str]]] | None:
    """(units, layers) an exported int8 file kept out of int8, read from the ``parity.json``
    beside it (its ``int8_recipe``): units as :func:`plan_of_layers` gives them, layers as
    {"float": […], "hybrid": […]}; None without that file."""
    import json

    if not parity.is_file():
        return None
    recipe = json.loads(parity.read_text()).get("int8_recipe") or {}
    layers = {k: list(recipe.get(f"{k}_layers", [])) for k in ("float", "hybrid")}
    return plan_of_layers(layers["float"], layers["hybrid"]), layers


def _named(unit: str, mod: nn.Module) -> nn.Module:
    """``mod`` under the generator's name for ``unit``, so its layers carry the names the
    export's int8 plan uses."""
    return nn.Sequential(OrderedDict([(UNIT_MODULES.get(unit, unit), mod)]))


# -- the unit models ------------------------------------------------------------------------
def _generator_file(cfg: LatencyTableConfig) -> nn.Module | None:
    if cfg.generator is None:
        return None
    from dmad.compress.checkpoint import load_generator

    return load_generator(cfg.generator)[0]


def _spec_of(cfg: LatencyTableConfig, model: nn.Module | None) -> ResnetSpec:
    if model is None:
        if cfg.ngf < 1:
            raise DmadError(f"--ngf: {cfg.ngf} must be >= 1")
        return ResnetSpec(ngf=cfg.ngf, n_blocks=9)
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ResnetSpec):
        raise DmadError(f"--generator: {cfg.generator}: latency tables cover ResNet, UNet "
                        "and traced generators (CUT, pix2pixHD, your own class); this one "
                        f"is {getattr(spec, 'family', type(model).__name__)}")
    return spec


def _generator(spec: ResnetSpec, widths: ResnetWidths, seed: int) -> nn.Module:
    from dmad.compress.models import build

    torch.manual_seed(seed)
    return build(dataclasses.replace(spec, widths=widths, n_blocks=len(widths.blocks))).eval()


def unit_model(spec: ResnetSpec, unit: str, point: tuple[int, ...], size: int, seed: int = 0
               ) -> tuple[nn.Module, tuple[int, int, int, int]]:
    """The unit at grid ``point`` as the generator's own layers, and its NCHW input shape, in
    the form the export writes (``export/s2d.py``): the head on the image's phases, and a stem
    under ``PHASE_FRONT_BELOW`` channels fused with its down1 into one "front" (there the
    stem's point is an empty model, which the prediction does not count as a unit): the file
    runs that front as one stretch of phase-form layers, and its two halves timed apart do not
    add up to it. Each unit sits under the generator's name for it (``up1.conv``)."""
    vals = dict(zip(RESNET_UNITS[unit], point, strict=True))
    w = ResnetWidths(vals.get("stem", 1), vals.get("down1", 1), vals.get("stream", 1),
                     (vals["inner"],) if unit == "block" else (), vals.get("up1", 1),
                     vals.get("up2", 1))
    g = _generator(spec, w, seed)
    s = size
    if unit in ("stem", "down1") and w.stem < PHASE_FRONT_BELOW:
        if unit == "stem":
            return overhead_model()
        phase_down(g.down1)
        front = OrderedDict([("stem", PhaseStem(g.stem)), ("down1", g.down1)])
        return nn.Sequential(front), (1, spec.input_nc, s, s)
    if unit == "head":
        return _named(unit, PhaseHead(g.head)), (1, w.up2, s, s)
    mod, shape = {
        "stem": (g.stem, (1, spec.input_nc, s, s)),
        "down1": (g.down1, (1, w.stem, s, s)),
        "down2": (g.down2, (1, w.down1, s // 2, s // 2)),
        "block": (g.blocks[0] if unit == "block" else None, (1, w.stream, s // 4, s // 4)),
        "up1": (g.up1, (1, w.stream, s // 4, s // 4)),
        "up2": (g.up2, (1, w.up1, s // 2, s // 2)),
        "head": (g.head, (1, w.up2, s, s)),
    }[unit]
    return _named(unit, mod), shape  # type: ignore[arg-type]


def overhead_model() -> tuple[nn.Module, tuple[int, int, int, int]]:
    """A near-empty model and its input shape: what one invoke costs with nothing to do."""
    return nn.Sequential(nn.ReLU()), (1, 1, 8, 8)


def stem_axis(points: list[int], limit: int, multiple: int) -> list[int]:
    """A stem axis with grid points on both sides of the phase-front boundary (interpolating
    between a fused phase front and a plain stem would mix two different files), and below it
    a point on each side of every quarter tile, 4 channels at least: the front writes four
    channels per stem channel, so its cost jumps where 4 × stem crosses a tile (a stem of 5
    costs far more than one of 4, then rises slowly to 8), and interpolating across a jump
    would put a stem of 6 a tenth too low. Measured at XNNPACK's tile of 16; on narrower tiles
    the jumps between these points are interpolated."""
    q = max(4, multiple // 4)
    below = [p for k in range(q, PHASE_FRONT_BELOW - 1, q) for p in (k, k + 1)]
    below += [PHASE_FRONT_BELOW - 1, PHASE_FRONT_BELOW]
    return sorted(set(points) | {p for p in below if p <= limit})


def random_widths(spec: ResnetSpec, rng: np.random.Generator, narrow: int = 0
                  ) -> ResnetWidths:
    """A random architecture inside the spec's widths (about one block in five removed);
    ``narrow``: every width at most that and half the blocks removed, the architectures a
    tight ``--target-ms`` search ends at."""
    mx = max_widths_of(spec)

    def pick(name: str) -> int:
        return int(rng.integers(1, min(int(mx[name]), narrow or int(mx[name])) + 1))

    drop = 0.5 if narrow else 0.2
    blocks = tuple(0 if rng.random() < drop else pick("inner") for _ in range(spec.n_blocks))
    return ResnetWidths(pick("stem"), pick("down1"), pick("stream"), blocks, pick("up1"),
                        pick("up2"))


class Timer:
    """Converts unit models the way the export does and times them on the backend."""

    def __init__(self, cfg: LatencyTableConfig, work: Path) -> None:
        self.cfg, self.work = cfg, work
        self.n = 0

    def convert(self, items: list[tuple[nn.Module, tuple[int, int, int, int]]], n_whole: int = 0,
                plan: dict[str, str] | None = None) -> list[Path]:
        """Each model as the file the export writes, in ``work`` (the last ``n_whole`` are whole
        generators: float in and out where the backend is int8; ``plan``: units kept out of
        int8, :func:`parse_int8_plan`)."""
        from dmad.export.onnx import export_onnx

        paths: list[Path] = []
        if self.cfg.backend == "ort":
            from dmad.export.rewrite import deploy_rewrite

            for m, shape in items:
                p = self.work / f"m{self.n}.onnx"
                self.n += 1
                export_onnx(deploy_rewrite(m)[0], p, shape)  # the graph the export writes
                paths.append(p)
            return paths
        from dmad.export.api import DEFAULT_RECIPE
        from dmad.export.graph import trace
        from dmad.export.subpixel import to_subpixel
        from dmad.export.tflite import convert_many

        int8 = self.cfg.backend == "tflite-int8"
        # the export's int8 recipe with TensorFlow's own ranges: the ranges change no op and
        # no kernel, and measuring them would dominate the build
        recipe = dataclasses.replace(DEFAULT_RECIPE, ranges="minmax")
        # an int8 unit model takes and gives int8 (int8_io): inside a whole model its input
        # and output stay int8, and only the whole model converts from and to float once
        variants = [("int8_io" if i < len(items) - n_whole else "int8") if int8 else "fp32"
                    for i in range(len(items))]
        # one conversion per variant and plan (TensorFlow starts once for each)
        keys = [(v, *planned_layers(m, plan or {})) if int8 else (v, (), ())
                for v, (m, _) in zip(variants, items, strict=True)]
        batch, stems = [], []
        rng = np.random.default_rng(self.cfg.seed)
        for m, shape in items:
            # as the export writes it: an int8 file's stem convolution on the phases too
            sub, _ = to_phases(to_subpixel(m)[0], int8=int8)
            stem = f"m{self.n}"
            self.n += 1
            _, c, h, w = shape
            calib = rng.uniform(-1, 1, (2, h, w, c)).astype(np.float32) if int8 else None
            batch.append((stem, trace(sub, shape), calib))
            stems.append(stem)
        out: dict[str, Path] = {}
        for key in sorted(set(keys)):
            v, floats, hybrid = key
            group = [b for b, k in zip(batch, keys, strict=True) if k == key]
            r = dataclasses.replace(recipe, float_layers=floats, hybrid_layers=hybrid)
            out.update({s: f[v] for s, f in convert_many(group, self.work, [v], r).items()})
        return [out[s] for s in stems]

    def time(self, items: list[tuple[nn.Module, tuple[int, int, int, int]]],
             timing: str | None = None, n_whole: int = 0, plan: dict[str, str] | None = None
             ) -> list[float]:
        """Milliseconds of each model, taken as ``timing`` says (default ``cfg.timing``;
        :func:`reduce_rounds`). The last ``n_whole`` items are whole generators (float in and
        out), the others units; ``plan``: units kept out of int8 (:meth:`convert`)."""
        if not items:
            return []
        timing = timing or self.cfg.timing
        files = self.convert(items, n_whole, plan)
        if self.cfg.android is not None:
            per = self._android(files, timing)
        else:
            from dmad.benchmark.runners import time_blocked

            runner = "ort" if self.cfg.backend == "ort" else "tflite-xnnpack"
            per = time_blocked([(f, shape) for f, (_, shape) in zip(files, items, strict=True)],
                               runner, self.cfg.threads, self.cfg.runs, self.cfg.warmup,
                               self.cfg.rounds, timing=timing)
        for f in files:
            f.unlink()
        return [reduce_rounds(v, timing) for v in per]

    def _android(self, files: list[Path], timing: str) -> list[list[float]]:
        from dmad.benchmark.adb import AndroidConfig, run_android

        assert self.cfg.benchmark_binary is not None
        got = run_android(AndroidConfig(
            models=files, benchmark_binary=Path(self.cfg.benchmark_binary),
            serial=self.cfg.android, delegates=("xnnpack",), threads=(self.cfg.threads,),
            runs=self.cfg.runs, warmup=self.cfg.warmup, cooldown_s=0.0, adb=self.cfg.adb,
            rounds=self.cfg.rounds))
        by_path: dict[str, list[float]] = {}
        for r in got["results"]:
            by_path.setdefault(r["path"], []).append(phone_round_ms(r, timing))
        self.key_device = got["device"]
        return [by_path[str(f)] for f in files]


def phone_round_ms(result: dict[str, Any], timing: str) -> float:
    """One round of one model on a phone: ``benchmark_model``'s fastest run (``fastest``, when
    it printed one) or its latency (``median``: the median the run printed, else its mean)."""
    fastest = result.get("min_ms")
    return float(fastest if timing == "fastest" and fastest is not None
                 else result["latency_ms"])


def reduce_rounds(per_round: list[float], timing: str) -> float:
    """One figure from a model's per-round figures: ``fastest``, the minimum (each round gave
    its fastest run); ``median``, the median (each round gave its median run).

    On a shared machine other work steals time in bursts shorter than one model's runs, so a
    round's median moves from one pass to the next, and differently for each model: pairing
    with a reference model timed in the same seconds does not cancel it. Other work only adds
    time, so the fastest run, the model's cost with nothing else running, is the figure that
    repeats (``scripts/latency_drift.py`` measures both; ``docs/results.md`` keeps it)."""
    return float(np.min(per_round) if timing == "fastest" else np.median(per_round))


def choose_multiple(widths: list[int], ms: list[float], share: float = 0.6) -> int:
    """The channel multiple at which a sweep over consecutive widths jumps.

    Kernels that work on tiles of M channels make latency jump when a width crosses a multiple
    of M (w = kM → kM + 1) and creep between. The significant jumps are those of at least
    ``share`` of the largest (which must stand out of the noise: four times the median step);
    the answer is the largest candidate multiple that divides every one of their positions
    (1: no preferred multiple). On XNNPACK (AVX-512) the jumps sit at 16 → 17 and 32 → 33
    channels and every other step is small: the multiple is 16."""
    order = np.argsort(widths)
    w = np.asarray(widths)[order]
    y = np.asarray(ms, dtype=float)[order]
    if len(w) < 3 or np.any(np.diff(w) != 1):
        raise ValueError("choose_multiple needs a sweep over consecutive widths")
    d = np.diff(y)  # d[i]: from w[i] to w[i] + 1
    top = float(d.max())
    if top <= 4 * float(np.median(np.abs(d))):
        return 1
    at = [int(x) for x in w[:-1][d >= share * top]]
    g = math.gcd(*at)
    return max((m for m in MULTIPLES if g % m == 0 and m < w[-1]), default=1)


def build_table(cfg: LatencyTableConfig, say: Callable[[str], None] | None = None
                ) -> LatencyTable:
    """Measure, fit and validate the table; writes ``cfg.out`` atomically and returns it.

    The units, ``calibrate`` whole models of random widths and ``validate`` more of them are
    converted together and timed in the same passes. The calibration models fit a scale and
    what a whole model pays once over its units (:func:`fit_scale`); the validation models,
    never seen by the fit, say how good the table is."""
    from dmad.compress.runfolder import check_writable, refuse_overwrite

    say = say or (lambda s: None)
    cfg.check()
    out = Path(cfg.out)
    if out.is_dir():
        raise DmadError(f"--out {out}: is a folder, expected the table file to write")
    refuse_overwrite([out], cfg.force, "latency table")
    check_writable(out.parent)  # before minutes of timing, not after
    model = _generator_file(cfg)
    if getattr(getattr(model, "spec", None), "family", None) in ("graph", "unet"):
        from dmad.benchmark.graph_table import build_graph_table  # whole models

        return build_graph_table(cfg, model, say)  # type: ignore[return-value]
    spec = _spec_of(cfg, model)
    mx = max_widths_of(spec)
    work = Path(tempfile.mkdtemp(prefix="dmad-lat-"))
    try:
        timer = Timer(cfg, work)
        empty = overhead_model()
        multiple, sweep = _channel_multiple(cfg, spec, mx, timer, say)
        # every model in one conversion (TensorFlow starts once), timed in the same passes
        plan, items = [], [empty]
        for unit, axes_names in RESNET_UNITS.items():
            axes = [axis_points(int(mx[a]), multiple, cfg.max_points) for a in axes_names]
            axes = [stem_axis(ax, int(mx["stem"]), multiple) if a == "stem" else ax
                    for a, ax in zip(axes_names, axes, strict=True)]
            points = [tuple(p) for p in np.ndindex(*[len(a) for a in axes])]
            plan.append((unit, axes, points))
            items += [unit_model(spec, unit, tuple(axes[k][i] for k, i in enumerate(p)),
                                 cfg.size, cfg.seed) for p in points]
        n_cal = cfg.calibrate if cfg.validate or cfg.calibrate else 0
        archs = _architectures(spec, n_cal, cfg.validate, multiple, cfg.seed)
        whole = (1, spec.input_nc, cfg.size, cfg.size)
        items += [(_generator(spec, w, cfg.seed), whole) for w in archs]
        say(f"units: {', '.join(f'{u} {len(p)}' for u, _, p in plan)} models; "
            f"{len(archs)} whole models of random widths ({n_cal} to calibrate, "
            f"{cfg.validate} to validate); {cfg.rounds} rounds")
        int8_plan = parse_int8_plan(cfg.int8_plan) if cfg.backend == "tflite-int8" else {}
        ms_all = iter(timer.time(items, n_whole=len(archs), plan=int8_plan))
        overhead = next(ms_all)
        units: dict[str, Grid] = {}
        for unit, axes, points in plan:
            arr = np.zeros([len(a) for a in axes])
            for p in points:
                arr[p] = round(next(ms_all), 4)
            units[unit] = Grid(axes, arr.tolist(), unit_steps(unit, multiple))
        measured = list(ms_all)
        table = LatencyTable(
            key=table_key(cfg, timer, int8_plan), family=family_of(spec), size=cfg.size,
            max_widths=mx,
            multiple=multiple, overhead_ms=round(overhead, 4), invoke_ms=round(overhead, 4),
            fused_stem_below=PHASE_FRONT_BELOW, units=units, sweep=sweep,
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
        if n_cal:
            table.scale, table.overhead_ms, table.whole_ms = fit_scale(
                table, spec, archs[:n_cal], measured[:n_cal])
            table.calibration = _rows(table, spec, archs[:n_cal], measured[:n_cal])
        table.validation = _rows(table, spec, archs[n_cal:], measured[n_cal:])
        write_table(out, table)
        return table
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _architectures(spec: ResnetSpec, n_cal: int, n_val: int, multiple: int, seed: int
                   ) -> list[ResnetWidths]:
    """``n_cal`` calibration then ``n_val`` validation architectures, each half wide (random
    widths) and half narrow (where a tight ``--target-ms`` search ends): the fit sees both."""
    rng = np.random.default_rng(seed + 1)
    out: list[ResnetWidths] = []
    for n in (n_cal, n_val):
        out += [random_widths(spec, rng) for _ in range(n - n // 2)]
        out += [random_widths(spec, rng, narrow=max(2 * multiple, 4)) for _ in range(n // 2)]
    return out


def fit_scale(table: LatencyTable, spec: ResnetSpec, archs: list[ResnetWidths],
              measured: list[float]) -> tuple[float, float, float]:
    """(scale, per-unit overhead ms, whole-model ms) with measured ≈ scale × Σ units + whole,
    in relative least squares, both >= 0, on the calibration models; the per-unit overhead is
    then 0.

    A whole model pays once what none of its units pays: an int8 file converts its float
    input and output, and its first and last tensors cross the interpreter. That constant
    weighs on narrow students and hardly on wide ones, so the calibration holds both and the
    two numbers are fitted together. It replaces a per-unit overhead (what each unit model
    pays alone), which cannot be negative and so could not follow int8 students that cost more
    than their units; ``scripts/latency_refit.py`` compares the two fits on a table's own
    models. Under four calibration models: the scale alone (the median ratio) with the
    measured invoke as the per-unit overhead."""
    if not archs:
        return 1.0, table.invoke_ms, 0.0
    sums, parts = [], []
    for w in archs:
        pred = table.predict(spec, w)  # the units as timed
        sums.append(sum(pred.units.values()))
        parts.append(max(pred.alone, 1) - 1)
    m = np.asarray(measured, dtype=float)
    ssum, npart = np.asarray(sums), np.asarray(parts, dtype=float)
    if len(m) >= 4:
        from dmad.compress.graph_latency import fit_nonnegative

        s, c = fit_nonnegative(np.stack([ssum / m, 1.0 / m], axis=1), np.ones(len(m)))
        if s > 0:
            return round(float(s), 4), 0.0, round(float(c), 4)
    raw = ssum - npart * table.invoke_ms
    return round(float(np.median(m / raw)), 4), table.invoke_ms, 0.0


def _channel_multiple(cfg: LatencyTableConfig, spec: Any, mx: dict[str, Any], timer: Any,
                      say: Callable[[str], None]) -> tuple[int, dict[str, Any]]:
    """The channel multiple the target prefers (``cfg.multiple``, or 0: from a sweep of one
    block's inner width) and that sweep's record."""
    if cfg.multiple:
        return cfg.multiple, {}
    stream = min(int(mx["stream"]), 64)
    ws = list(range(1, min(int(mx["inner"]), 64) + 1))
    say(f"sweep: block inner width {ws[0]}..{ws[-1]} at stream {stream}")
    ms = timer.time([unit_model(spec, "block", (stream, w), cfg.size, cfg.seed) for w in ws],
                    timing="fastest")  # a jump between widths, whatever the table's timing
    multiple = choose_multiple(ws, ms)
    say(f"preferred channel multiple: {multiple}")
    return multiple, {"unit": "block", "stream": stream, "inner": ws,
                      "ms": [round(v, 4) for v in ms], "multiple": multiple}


def table_key(cfg: LatencyTableConfig, timer: Any, int8_plan: dict[str, str] | None = None
              ) -> dict[str, Any]:
    """What the table is valid for: backend, threads, the units its int8 files kept out of
    int8 (``int8_plan``, int8 tables), and the phone or this machine."""
    from dmad.benchmark.machine import machine_info

    key: dict[str, Any] = {"backend": cfg.backend, "threads": cfg.threads,
                           "timing": cfg.timing}
    if cfg.backend == "tflite-int8":
        key["int8_plan"] = dict(int8_plan or {})
        if int8_plan is not None:  # a ResNet table: its stems timed as int8 files run them
            key["int8_stem"] = "phases"
    if cfg.android is not None:
        dev = getattr(timer, "key_device", {})
        props = dev.get("props", {})
        key.update(device=f"{props.get('ro.product.model', '?')} ({dev.get('serial')})",
                   props=props, tool="benchmark_model")
    else:
        info = machine_info()
        key.update(machine=info["cpu"], isa=info["isa"], libraries=info["libraries"])
    return key


def write_table(out: Path, table: Any) -> None:
    """The table written, or kept where the folder refuses it (the error line says where)."""
    import json

    from dmad.compress.io import atomic_write_json
    from dmad.compress.runfolder import keep_results

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, table.to_json())
    except (OSError, DmadError) as exc:
        raise keep_results(json.dumps(table.to_json(), indent=2), str(out), exc) from None


def _rows(table: LatencyTable, spec: ResnetSpec, archs: list[ResnetWidths],
          measured: list[float]) -> list[dict[str, Any]]:
    """Predicted vs measured whole-model milliseconds."""
    rows = []
    for w, got in zip(archs, measured, strict=True):
        pred = table.predict(spec, w).ms
        rows.append({"widths": dataclasses.asdict(w), "predicted_ms": round(pred, 3),
                     "measured_ms": round(got, 3), "error": round(pred / got - 1.0, 4)})
    return rows


def validation_table(rows: list[dict[str, Any]]) -> str:
    """The validation as a markdown table, with the worst error."""
    lines = ["| stem | down1 | stream | blocks | up1 | up2 | predicted ms | measured ms | error |",
             "|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        w = r["widths"]
        lines.append(f"| {w['stem']} | {w['down1']} | {w['stream']} | "
                     f"{','.join(map(str, w['blocks']))} | {w['up1']} | {w['up2']} | "
                     f"{r['predicted_ms']:.2f} | {r['measured_ms']:.2f} | "
                     f"{100 * r['error']:+.1f} % |")
    if rows:
        worst = max(abs(r["error"]) for r in rows)
        inside = sum(abs(r["error"]) <= 0.10 for r in rows)
        lines.append(f"\nworst error {100 * worst:.1f} %; {inside}/{len(rows)} within 10 %")
    return "\n".join(lines)


def measure_file(path: Path, backend: str, shape: tuple[int, int, int, int], threads: int,
                 runs: int = 15, warmup: int = 3, timing: str = "fastest") -> float:
    """Milliseconds of an exported file on a table's backend, on this CPU, taken the way the
    table took its own (``timing``): the measured latency ``architecture.json`` records beside
    the predicted one."""
    from dmad.benchmark.runners import time_blocked

    runner = "ort" if backend == "ort" else "tflite-xnnpack"
    per = time_blocked([(path, shape)], runner, threads, runs, warmup, 3, timing=timing)[0]
    return reduce_rounds(per, timing)


__all__ = ["BACKENDS", "DEFAULT_INT8_PLAN", "TIMINGS", "LatencyTableConfig", "Timer",
           "build_table", "choose_multiple", "file_int8_plan", "fit_scale", "measure_file",
           "overhead_model",
           "parse_int8_plan", "phone_round_ms", "plan_of_layers", "planned_layers",
           "random_widths", "reduce_rounds", "stem_axis", "unit_model", "validation_table"]
