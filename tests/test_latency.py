"""Latency model: lookup and rounding, the measured multiple, widths rounded inside a budget, a
search budgeted in milliseconds, and `dmad latency-table` end to end (host and phone)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dmad.compress import budget
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
from dmad.compress.masks import attach_masks
from dmad.compress.models import ResnetGenerator, ResnetSpec, ResnetWidths
from tests.adbdevice import EmulatedAdbServer
from tests.adbdevice.fixtures import adb_server, standin_binary  # noqa: F401 - fixtures
from tests.conftest import dmad_cmd

MULT = 8


def _unit_cost(unit: str, vals: dict[str, int]) -> float:
    """A made-up target: each unit costs its tiles of output channels (cout rounded up to 8;
    the sub-pixel up-convs write 4 channels per output channel, so theirs round up to 2)
    times its inputs, with the full-resolution units dearest per channel."""
    t = lambda v: math.ceil(v / MULT) * MULT  # noqa: E731
    t4 = lambda v: math.ceil(v / (MULT // 4)) * (MULT // 4)  # noqa: E731
    return {
        "stem": lambda: 0.5 + 0.2 * t(vals["stem"]),
        "down1": lambda: 0.1 + 0.004 * vals["stem"] * t(vals["down1"]),
        "down2": lambda: 0.1 + 0.002 * vals["down1"] * t(vals["stream"]),
        "block": lambda: 0.2 + 0.003 * t(vals["stream"]) * t(vals["inner"]),
        "up1": lambda: 0.1 + 0.002 * vals["stream"] * t4(vals["up1"]),
        "up2": lambda: 0.1 + 0.004 * vals["up1"] * t4(vals["up2"]),
        "head": lambda: 0.5 + 0.2 * vals["up2"],
    }[unit]()


def synthetic_table(spec: ResnetSpec, max_points: int = 40) -> LatencyTable:
    mx = max_widths_of(spec)
    units = {}
    for unit, names in RESNET_UNITS.items():
        axes = [axis_points(int(mx[n]), MULT, max_points) for n in names]
        arr = np.zeros([len(a) for a in axes])
        for idx in np.ndindex(*arr.shape):
            arr[idx] = _unit_cost(unit, {n: axes[k][i] for k, (n, i) in
                                         enumerate(zip(names, idx, strict=True))})
        units[unit] = Grid(axes, arr.tolist(), unit_steps(unit, MULT))
    return LatencyTable(key={"backend": "tflite-xnnpack", "threads": 1, "machine": "test"},
                        family=family_of(spec), size=256, max_widths=mx, multiple=MULT,
                        overhead_ms=0.05, units=units)


def _direct(spec: ResnetSpec, w: ResnetWidths, overhead: float = 0.05) -> float:
    """What the table should predict for ``w``, computed straight from the made-up target."""
    parts = [_unit_cost("stem", {"stem": w.stem}),
             _unit_cost("down1", {"stem": w.stem, "down1": w.down1}),
             _unit_cost("down2", {"down1": w.down1, "stream": w.stream}),
             _unit_cost("up1", {"stream": w.stream, "up1": w.up1}),
             _unit_cost("up2", {"up1": w.up1, "up2": w.up2}),
             _unit_cost("head", {"up2": w.up2})]
    parts += [_unit_cost("block", {"stream": w.stream, "inner": b}) for b in w.blocks if b]
    return sum(parts) - (len(parts) - 1) * overhead


def test_grid_interpolates_and_rounds_outputs_up_to_the_tile() -> None:
    g = Grid([[8, 16, 32]], [1.0, 2.0, 6.0], [8])
    assert g.at([8]) == 1.0 and g.at([16]) == 2.0 and g.at([32]) == 6.0
    assert g.at([9]) == 2.0 and g.at([16]) == g.at([13])  # inside one tile: the tile's cost
    assert g.at([24]) == pytest.approx(4.0)  # between grid points: linear
    assert g.at([1]) == 1.0 and g.at([40]) == 6.0  # clamped at the ends
    g2 = Grid([[8, 16], [8, 16]], [[1.0, 2.0], [3.0, 5.0]], [1, 8])
    assert g2.at([12, 16]) == pytest.approx(3.5)  # input axis interpolates, no rounding
    assert g2.at([12, 9]) == pytest.approx(3.5)  # output axis rounds 9 up to 16


def test_axis_points_are_denser_where_widths_are_narrow() -> None:
    axis = axis_points(256, 16, 10)  # 16 multiples, 10 kept: 32 and 80 stay, wide ones thin
    assert axis[:7] == [1, 4, 16, 32, 48, 64, 80] and axis[-1] == 256 and len(axis) == 12
    gaps = np.diff(axis[2:])
    assert all(a <= b for a, b in itertools.pairwise(gaps)) and gaps[0] < gaps[-1]
    assert axis_points(64, 16, 10) == [1, 4, 16, 32, 48, 64]  # nothing thinned when it fits
    assert axis_points(3, 16, 10) == [1, 3]  # no point past the axis' own maximum
    # one channel is a point of its own: a width under the quarter tile is not clamped up to it
    g = Grid([axis_points(64, 16, 10)], [0.6, 1.6, 6.1, 12.8, 19.5, 27.0], [1])
    assert g.at([1]) == pytest.approx(0.6) and g.at([2]) == pytest.approx(0.6 + 1.0 / 3)


def test_prediction_equals_the_sum_of_units_on_and_off_the_grid() -> None:
    spec = ResnetSpec(ngf=16, n_blocks=4)
    table = synthetic_table(spec)
    for w in (ResnetWidths(16, 32, 64, (64, 0, 8, 24), 32, 16),
              ResnetWidths(3, 17, 41, (0, 9, 64, 1), 5, 11)):
        assert table.predict(spec, w).ms == pytest.approx(_direct(spec, w), rel=1e-9)
    p = table.predict(spec, ResnetWidths(16, 32, 64, (64, 0, 8, 24), 32, 16))
    assert "block1" not in p.units and len(p.units) == 6 + 3  # a removed block costs nothing


def test_scale_and_whole_model_cost_are_fitted_on_wide_and_narrow_models(tmp_path: Path
                                                                         ) -> None:
    """Whole models that pay 1.1 × their units' sum + 0.4 ms once: the fit finds both, where
    one scale cannot serve narrow and wide models at once; the table predicts with them and
    keeps them in its file."""
    from dmad.benchmark.latency_table import fit_scale, random_widths

    spec = ResnetSpec(ngf=16, n_blocks=4)
    table = synthetic_table(spec)
    table.overhead_ms = table.invoke_ms = 0.0
    rng = np.random.default_rng(0)
    archs = [random_widths(spec, rng) for _ in range(3)] + [
        random_widths(spec, rng, narrow=4) for _ in range(3)]
    units = [table.predict(spec, w).units for w in archs]
    measured = [1.1 * sum(u.values()) + 0.4 for u in units]
    scale, overhead, whole = fit_scale(table, spec, archs, measured)
    assert scale == pytest.approx(1.1, abs=1e-3) and whole == pytest.approx(0.4, abs=1e-3)
    assert overhead == 0.0
    table.scale, table.overhead_ms, table.whole_ms = scale, overhead, whole
    for w in (ResnetWidths(8, 16, 16, (16, 0, 16, 0), 16, 8),
              ResnetWidths(16, 32, 64, (64,) * 4, 32, 16)):
        assert table.predict(spec, w).ms == pytest.approx(1.1 * _direct(spec, w, 0.0) + 0.4,
                                                          rel=2e-3)
    (tmp_path / "t.json").write_text(json.dumps(table.to_json()))
    back = LatencyTable.load(tmp_path / "t.json")
    assert back.whole_ms == whole and back.predict(spec).ms == table.predict(spec).ms
    (tmp_path / "bad.json").write_text(json.dumps({**table.to_json(), "whole_ms": -1.0}))
    with pytest.raises(DmadError, match="malformed table"):
        LatencyTable.load(tmp_path / "bad.json")
    table.invoke_ms = 0.02  # under four models: the scale alone, with the measured invoke
    one, kept, none = fit_scale(table, spec, archs[:3], measured[:3])
    raw = [sum(u.values()) - 0.02 * (len(u) - 1) for u in units[:3]]
    assert kept == 0.02 and none == 0.0 and one == pytest.approx(
        np.median(np.divide(measured[:3], raw)), abs=1e-4)


def test_a_fused_stem_pays_no_overhead_and_a_kept_channel_never_lowers_the_prediction() -> None:
    spec = ResnetSpec(ngf=16, n_blocks=4)
    table = synthetic_table(spec)
    w = ResnetWidths(8, 32, 64, (64, 0, 8, 24), 32, 16)
    assert table.predict(spec, w).ms == pytest.approx(_direct(spec, w), rel=1e-9)  # old tables
    table.fused_stem_below = 16  # the stem of 8 runs inside the phase front: not a unit model
    p = table.predict(spec, w)
    assert p.alone == len(p.units) - 1
    assert p.ms == pytest.approx(_direct(spec, w) + table.overhead_ms, rel=1e-9)
    table.overhead_ms = 5.0  # dearer than a narrow block: the block still adds, never subtracts
    narrow = ResnetWidths(16, 32, 64, (1, 0, 0, 0), 32, 16)
    none = ResnetWidths(16, 32, 64, (0, 0, 0, 0), 32, 16)
    assert table.predict(spec, narrow).ms >= table.predict(spec, none).ms


def test_table_file_round_trip_and_refusals(tmp_path: Path) -> None:
    spec = ResnetSpec(ngf=16, n_blocks=4)
    t = synthetic_table(spec)
    f = tmp_path / "t.json"
    f.write_text(json.dumps(t.to_json()))
    back = LatencyTable.load(f)
    w = ResnetWidths(3, 17, 41, (0, 9, 64, 1), 5, 11)
    assert back.predict(spec, w).ms == t.predict(spec, w).ms
    with pytest.raises(DmadError, match="no such file"):
        LatencyTable.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(DmadError, match="not a dmad latency table"):
        LatencyTable.load(tmp_path / "bad.json")
    bad = t.to_json()
    bad["units"]["block"]["ms"] = bad["units"]["block"]["ms"][:-1]
    (tmp_path / "short.json").write_text(json.dumps(bad))
    with pytest.raises(DmadError, match=r"malformed table .*unit block: ms of shape"):
        LatencyTable.load(tmp_path / "short.json")
    del bad["units"]["head"]
    (tmp_path / "nohead.json").write_text(json.dumps(bad))
    with pytest.raises(DmadError, match="missing head"):
        LatencyTable.load(tmp_path / "nohead.json")
    with pytest.raises(DmadError, match="norm="):
        t.check_spec(ResnetSpec(ngf=16, n_blocks=4, norm="batch"))
    with pytest.raises(DmadError, match="above the table's grid"):
        t.check_spec(ResnetSpec(ngf=32, n_blocks=4))


def test_choose_multiple_finds_the_tile_and_none_on_a_line() -> None:
    from dmad.benchmark.latency_table import choose_multiple

    rng = np.random.default_rng(0)
    w = list(range(1, 65))
    for m in (8, 16, 32):
        y = [0.01 * v + math.ceil(v / m) + rng.normal(0, 0.01) for v in w]
        assert choose_multiple(w, y) == m
    assert choose_multiple(w, [0.05 * v + rng.normal(0, 0.01) for v in w]) == 1
    # the sweep measured on this kind of machine (XNNPACK fp32, block at stream 64)
    real = [0.84, 0.90, 0.93, 0.93, 0.98, 1.00, 1.04, 1.06, 1.08, 1.09, 1.14, 1.15, 1.15, 1.19,
            1.24, 1.23, 1.87, 1.82, 1.92, 2.00, 2.10, 2.08, 2.00, 1.92, 2.02, 2.14, 2.17, 2.17,
            2.26, 2.19, 2.26, 1.98, 2.85, 2.86, 2.95, 3.04, 3.02, 3.09, 3.11, 3.17, 3.10, 3.25]
    assert choose_multiple(list(range(1, len(real) + 1)), real) == 16


def _masked(spec: ResnetSpec, seed: int = 0) -> tuple[ResnetGenerator, dict, dict]:
    g = ResnetGenerator(spec)
    masks = attach_masks(g)
    gen = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(m.channels, generator=gen) for n, m in masks.items()}
    return g, masks, scores


def _is_rounded(w: ResnetWidths, full: ResnetWidths, m: int) -> bool:
    vals = [(w.stem, full.stem), (w.down1, full.down1), (w.stream, full.stream),
            (w.up1, full.up1), (w.up2, full.up2), *zip(w.blocks, full.blocks, strict=True)]
    return all(v % m == 0 or v == f for v, f in vals)


@pytest.mark.parametrize("metric", ["paper", "ms"])
def test_fit_rounds_widths_to_the_multiple_inside_the_budget(metric: str) -> None:
    spec = ResnetSpec(ngf=16, n_blocks=4)
    _, masks, scores = _masked(spec)
    table = synthetic_table(spec)
    full = budget.cost(spec, masks, None, 256, table)
    target = 0.3 * full.value(metric)
    _, keep, c = budget.fit_to_budget(spec, masks, target, metric, 256, scores=scores,
                                      latency=table, multiple=MULT, tolerance=0.1)
    assert 0.9 * target <= c.value(metric) <= target
    assert _is_rounded(c.widths, spec.resolved_widths(), MULT), c.widths
    # the same fit without rounding leaves widths off the multiple (the test can fail)
    _, _, c1 = budget.fit_to_budget(spec, masks, target, metric, 256, scores=scores,
                                    latency=table, multiple=1)
    assert not _is_rounded(c1.widths, spec.resolved_widths(), MULT), c1.widths
    assert c.widths == budget.cost(spec, masks, keep, 256).widths


def test_a_latency_budget_spends_channels_where_they_are_cheap() -> None:
    """In the made-up target the full-resolution stem and head cost 0.2 ms per channel, a
    block's channel far less: at the same MACs the latency fit is faster than the MAC fit."""
    spec = ResnetSpec(ngf=16, n_blocks=4)
    _, masks, scores = _masked(spec, seed=1)
    table = synthetic_table(spec)
    _, _, by_macs = budget.fit_to_budget(spec, masks, 0.3 * budget.cost(spec, masks).macs_paper,
                                         "paper", 256, scores=scores, latency=table)
    target_ms = 0.8 * float(by_macs.ms)
    _, _, by_ms = budget.fit_to_budget(spec, masks, target_ms, "ms", 256, scores=scores,
                                       latency=table, multiple=MULT)
    assert by_ms.ms <= target_ms < by_macs.ms
    with pytest.raises(DmadError, match="below the smallest"):
        budget.fit_to_budget(spec, masks, 0.1, "ms", 256, scores=scores, latency=table)


def test_search_with_a_millisecond_budget(tmp_path: Path, tiny_teacher: dict) -> None:
    from dmad.compress.train.search import SearchConfig, search
    from dmad.compress.train.teacher import TeacherConfig, train_teacher

    train_teacher(TeacherConfig(**{**tiny_teacher, "ngf": 8, "n_blocks": 3}), tmp_path / "t")
    spec = ResnetSpec(ngf=8, n_blocks=3)
    table = synthetic_table(spec)
    f = tmp_path / "lat.json"
    f.write_text(json.dumps(table.to_json()))
    full_ms = table.predict(spec).ms
    target = round(0.5 * full_ms, 3)
    cfg = SearchConfig(teacher=str(tmp_path / "t"), target_ms=target, latency_table=str(f),
                       steps=16, bound_updates=8, device="cpu", log_every=1,
                       checkpoint_every=8, budget_tolerance=0.1)
    search(cfg, tmp_path / "s")
    arch = json.loads((tmp_path / "s" / "architecture.json").read_text())
    assert arch["metric"] == "ms" and arch["width_multiple"] == MULT
    for e in arch["directions"].values():
        lat = e["latency"]
        assert 0.9 * target <= lat["predicted_ms"] <= target, lat
        assert lat["full_predicted_ms"] == pytest.approx(full_ms, abs=1e-3)
        sw = e["spec"]["widths"]
        pred = table.predict(spec, ResnetWidths(sw["stem"], sw["down1"], sw["stream"],
                                                tuple(sw["blocks"]), sw["up1"], sw["up2"]))
        assert lat["predicted_ms"] == pytest.approx(pred.ms, abs=1e-3)
    with pytest.raises(DmadError, match="latency_table"):
        SearchConfig(teacher=str(tmp_path / "t"), target_ms=5.0)
    with pytest.raises(DmadError, match="target_ms"):
        search(dataclasses.replace(cfg, target_ms=10 * full_ms), tmp_path / "s2")


def test_latency_table_cli_end_to_end_and_errors(tmp_path: Path, cli_env: dict) -> None:
    out = tmp_path / "t.json"
    r = subprocess.run(dmad_cmd("latency-table", "--out", str(out), "--ngf", "4", "--size",
                                "32", "--max-points", "2", "--runs", "3", "--warmup", "1",
                                "--validate", "2", "--multiple", "4"),
                       capture_output=True, text=True, env=cli_env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "predicted ms" in r.stdout and "within 10 %" in r.stdout
    t = LatencyTable.load(out)
    assert t.multiple == 4 and t.key["backend"] == "tflite-xnnpack" and t.key["isa"] is not None
    assert t.key["timing"] == "fastest"  # compress measures its student the same way
    assert set(t.units) == set(RESNET_UNITS) and len(t.validation) == 2
    for row in t.validation:
        assert row["measured_ms"] > 0 and row["predicted_ms"] > 0
    assert t.units["block"].axes == [[1, 4, 16], [1, 4, 16]]  # a quarter tile, the ends
    for args, msg in ((["--backend", "gpu"], "invalid choice"),
                      (["--android", "emu"], "--benchmark-binary"),
                      (["--size", "30"], "--size"), (["--timing", "mean"], "invalid choice")):
        r = subprocess.run(dmad_cmd("latency-table", "--out", str(tmp_path / "x.json"), *args),
                           capture_output=True, text=True, env=cli_env, timeout=120)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("timing", ["fastest", "median"])
def test_latency_table_on_the_emulated_phone(adb_server: EmulatedAdbServer,  # noqa: F811
                                             standin_binary: Path,  # noqa: F811
                                             tmp_path: Path, timing: str) -> None:
    from dmad.benchmark.latency_table import LatencyTableConfig, build_table

    dev = adb_server.add_device("emu-lat")
    cfg = LatencyTableConfig(out=tmp_path / "phone.json", ngf=2, size=16, max_points=2,
                             multiple=2, runs=2, warmup=1, validate=1, calibrate=1,
                             rounds=2, android="emu-lat", timing=timing,
                             benchmark_binary=standin_binary)
    t = build_table(cfg)
    assert t.key["device"].endswith("(emu-lat)") and "machine" not in t.key
    assert t.key["timing"] == timing
    graphs = [c for c in dev.commands if "--graph=" in c]
    n_units = sum(int(np.prod([len(a) for a in g.axes])) for g in t.units.values())
    # the overhead model, every unit, one calibration and one validation model, in two rounds
    assert len(graphs) == 2 * (1 + n_units + 2)
    assert graphs[0].split("--graph=")[1].split()[0] == \
        graphs[len(graphs) // 2].split("--graph=")[1].split()[0]
    assert all("--use_xnnpack=true" in c for c in graphs)
    assert t.validation[0]["measured_ms"] > 0


def test_rounds_reduce_to_the_fastest_or_the_median() -> None:
    from dmad.benchmark.latency_table import LatencyTableConfig, phone_round_ms, reduce_rounds

    assert reduce_rounds([12.0, 9.0, 30.0], "fastest") == 9.0  # interference only adds time
    assert reduce_rounds([12.0, 9.0, 30.0], "median") == 12.0
    # a phone's round: benchmark_model's fastest run, or the latency it printed
    row = {"min_ms": 7.5, "latency_ms": 9.0}
    assert phone_round_ms(row, "fastest") == 7.5 and phone_round_ms(row, "median") == 9.0
    assert phone_round_ms({"min_ms": None, "latency_ms": 9.0}, "fastest") == 9.0
    with pytest.raises(DmadError, match="--timing: 'mean'"):
        LatencyTableConfig(out=Path("t.json"), timing="mean").check()


@pytest.mark.parametrize("backend", ["tflite-int8", "ort"])
def test_latency_table_other_backends(tmp_path: Path, backend: str) -> None:
    """The int8 backend times the export's int8 files, ORT the ONNX export; both predict."""
    from dmad.benchmark.latency_table import LatencyTableConfig, build_table

    cfg = LatencyTableConfig(out=tmp_path / "t.json", backend=backend, ngf=4, size=32,
                             multiple=16, runs=2, warmup=1, rounds=1, validate=1, calibrate=1)
    t = build_table(cfg)
    assert t.key["backend"] == backend and t.units["block"].axes == [[1, 4, 16], [1, 4, 16]]
    # the int8 files keep the upsampling hybrid, as the export's chooser kept it in students
    assert t.key.get("int8_plan") == ({"up1": "hybrid", "up2": "hybrid"}
                                      if backend == "tflite-int8" else None)
    assert ("up1 hybrid, up2 hybrid" in t.describe()) == (backend == "tflite-int8")
    assert all(v > 0 for row in t.units["block"].ms for v in row)
    assert t.validation[0]["measured_ms"] > 0 and t.scale > 0
    back = LatencyTable.load(cfg.out)
    assert back.predict(ResnetSpec(ngf=4, n_blocks=9)).ms == t.predict(
        ResnetSpec(ngf=4, n_blocks=9)).ms


def _float_convs(path: Path) -> int:
    """CONV_2D ops of a .tflite file that write float32 (kept out of int8)."""
    from dmad.export.parity import make_interpreter

    it = make_interpreter(path.read_bytes(), None, allocate=False)
    dtype = {d["index"]: d["dtype"] for d in it.get_tensor_details()}
    return sum(o["op_name"] == "CONV_2D" and dtype[o["outputs"][0]] == np.float32
               for o in it._get_ops_details())


def test_the_int8_table_keeps_the_plans_units_out_of_int8_in_units_and_whole_models(
        tmp_path: Path) -> None:
    """--int8-plan: a unit model and a whole generator name a unit's layers alike, and the
    int8 files of both keep exactly those convolutions out of int8 (the chooser's hybrid
    upsampling costs more than its int8 form, and a table that ignores it predicts too low)."""
    from dmad.benchmark.latency_table import (
        LatencyTableConfig,
        Timer,
        parse_int8_plan,
        planned_layers,
        unit_model,
    )
    from dmad.compress.models import build

    assert parse_int8_plan("up1:hybrid, up2:float") == {"up1": "hybrid", "up2": "float"}
    assert parse_int8_plan("none") == {} == parse_int8_plan("")
    for bad in ("up3:hybrid", "up1:int4", "up1"):
        with pytest.raises(DmadError, match=r"--int8-plan: .* is not unit:kind"):
            LatencyTableConfig(out=tmp_path / "t.json", int8_plan=bad).check()
    spec = ResnetSpec(ngf=8, n_blocks=2)
    g = build(spec).eval()
    unit, shape = unit_model(spec, "up1", (8, 4), 32)
    plan = {"up1": "hybrid", "block": "float"}
    assert planned_layers(unit, plan)[1] == planned_layers(g, plan)[1] == ("up1.conv",)
    block, _ = unit_model(spec, "block", (8, 4), 32)
    floats = planned_layers(block, plan)[0]
    assert floats and all(n.startswith("blocks.") for n in floats)
    assert set(planned_layers(g, plan)[0]) >= {n.replace("blocks.", "blocks.0.", 1)
                                               for n in floats}
    # a depthwise convolution has no hybrid form: the plan keeps it float, as the export does
    sep, _ = unit_model(dataclasses.replace(spec, separable=True), "block", (8, 4), 32)
    fl, hy = planned_layers(sep, {"block": "hybrid"})
    grouped = {n for n, m in sep.named_modules()
               if isinstance(m, torch.nn.Conv2d) and m.groups > 1}
    assert grouped and set(fl) == grouped and hy and not grouped & set(hy)
    cfg = LatencyTableConfig(out=tmp_path / "t.json", backend="tflite-int8", size=32)
    items = [(unit, shape), (g, (1, 3, 32, 32))]
    for p, want in (({"up1": "hybrid"}, 1), ({}, 0)):
        timer = Timer(cfg, tmp_path)
        files = timer.convert(items, n_whole=1, plan=p)
        assert [_float_convs(f) for f in files] == [want, want]


def test_the_int8_table_times_the_stem_in_the_int8_files_form(tmp_path: Path) -> None:
    """An int8 file runs its stem's convolution on the image's phases (``export/s2d.py``); the
    int8 table times the stem unit and whole models that way, the fp32 table as fp32 files
    run it (directly)."""
    from dmad.benchmark.latency_table import LatencyTableConfig, Timer, unit_model
    from dmad.compress.models import build
    from dmad.export.parity import make_interpreter

    def s2d_ops(path: Path) -> int:
        it = make_interpreter(path.read_bytes(), None, allocate=False)
        return sum(o["op_name"] == "SPACE_TO_DEPTH" for o in it._get_ops_details())

    spec = ResnetSpec(ngf=16, n_blocks=1)
    items = [unit_model(spec, "stem", (16,), 32), (build(spec).eval(), (1, 3, 32, 32))]
    got = {}
    for backend in ("tflite-int8", "tflite-xnnpack"):
        cfg = LatencyTableConfig(out=tmp_path / f"{backend}.json", backend=backend, size=32)
        (tmp_path / backend).mkdir()
        got[backend] = [s2d_ops(f) for f in Timer(cfg, tmp_path / backend).convert(items, 1)]
    assert got == {"tflite-int8": [1, 2], "tflite-xnnpack": [0, 1]}


def test_rounding_never_breaks_a_budget_one_tile_per_layer_exceeds() -> None:
    """Below one tile in every layer, rounding cannot fit: the fit keeps its own widths, under
    the target (it once returned the rounded architecture above the target)."""
    spec = ResnetSpec(ngf=16, n_blocks=4)
    _, masks, scores = _masked(spec, seed=2)
    table = synthetic_table(spec)
    one_tile = table.predict(spec, ResnetWidths(8, 8, 8, (0, 0, 0, 0), 8, 8)).ms
    floor = table.predict(spec, ResnetWidths(1, 1, 1, (0, 0, 0, 0), 1, 1)).ms
    target = floor + 0.5 * (one_tile - floor)
    _, _, c = budget.fit_to_budget(spec, masks, target, "ms", 256, scores=scores,
                                   latency=table, multiple=MULT)
    assert c.value("ms") <= target < one_tile


def test_narrow_stems_are_timed_as_the_fused_phase_front() -> None:
    """Under PHASE_FRONT_BELOW stem channels the export runs stem and down1 as one phase-form
    front: the down1 unit is that front (exactly the generator's two layers), the stem unit
    is empty (only the invoke overhead), and the stem axis has points on both sides of the
    boundary so no lookup interpolates between a fused front and a plain stem."""
    from dmad.benchmark.latency_table import random_widths, stem_axis, unit_model
    from dmad.compress.models import build
    from dmad.export.s2d import PHASE_FRONT_BELOW

    b = PHASE_FRONT_BELOW
    # a point on each side of every quarter tile: 4 x stem crosses a tile between 4 and 5
    assert stem_axis([4, 16, 32, 48, 64], 64, 16) == [4, 5, 8, 9, 12, 13, b - 1, b, 32, 48, 64]
    assert stem_axis([1, 4], 4, 4) == [1, 4] and stem_axis([16, 32], 32, 64) == [b - 1, b, 32]
    # a stem under the boundary never rounds up into the plain form, whatever the tile
    ax = stem_axis([2, 8, 16, 24], 24, 8)
    assert ax == [2, 4, 5, 8, 9, 12, 13, b - 1, b, 24]
    g = Grid([ax], [0.1] * 8 + [9.0, 9.5], [8])
    assert g.at([13]) == pytest.approx(0.1) and g.at([b]) == 9.0 and g.at([17]) == 9.5
    spec = ResnetSpec(ngf=16, n_blocks=2)
    front, shape = unit_model(spec, "down1", (6, 8), 32, seed=3)
    stem, _ = unit_model(spec, "stem", (6,), 32, seed=3)
    assert shape == (1, 3, 32, 32) and not list(stem.parameters())
    torch.manual_seed(3)
    ref = build(dataclasses.replace(spec, widths=ResnetWidths(6, 8, 1, (1,), 1, 1),
                                    n_blocks=1)).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.allclose(front.eval()(x), ref.down1(ref.stem(x)), atol=1e-5)
    plain, pshape = unit_model(spec, "down1", (16, 8), 32, seed=3)
    assert pshape == (1, 16, 32, 32)  # the unit alone, under the generator's name for it
    assert [n for n, _ in plain.named_children()] == ["down1"]
    assert [n for n, _ in front.named_children()] == ["stem", "down1"]
    rng = np.random.default_rng(0)
    for _ in range(20):
        w = random_widths(spec, rng, narrow=4)
        assert max(w.stem, w.down1, w.stream, w.up1, w.up2, *w.blocks) <= 4
