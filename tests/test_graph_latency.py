"""Latency tables of traced generators (``compress/graph_latency.py``, ``graph_table.py``).

The fit recovers known non-negative costs; a table measured on a tiny CUT (whole students at
random keep sets, converted and timed for real) loads back, predicts the full model above any
student, refuses another structure in one line, and budgets a search in milliseconds that
lands within its tolerance of the target.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dmad.compress import budget
from dmad.compress.checkpoint import save_model
from dmad.compress.errors import DmadError
from dmad.compress.graph_latency import GraphLatencyTable, features, fit_nonnegative
from dmad.compress.graph_model import graph_teacher
from dmad.compress.latency import load_table
from dmad.compress.models.public import CutResnet

BUILDER = "dmad.compress.models.public:CutResnet"


def test_fit_is_exact_on_costs_it_can_express_and_never_negative() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.uniform(0, 5, 20), rng.uniform(0, 3, 20), np.ones(20)])
    y = x @ np.array([2.0, 0.5, 0.1])
    assert np.allclose(fit_nonnegative(x, y), [2.0, 0.5, 0.1])
    y2 = x @ np.array([2.0, -1.0, 0.1])  # a negative cost per element: clipped out
    c = fit_nonnegative(x, y2)
    assert (c >= 0).all() and c[1] == 0


def _teacher(tmp_path: Path, ngf: int = 8) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    t = graph_teacher(CutResnet(ngf=ngf, n_blocks=2), BUILDER, {"ngf": ngf, "n_blocks": 2})
    path = tmp_path / f"teacher{ngf}.pt"
    save_model(t, path, size=32)
    return t, path


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from dmad.benchmark.latency_table import LatencyTableConfig, build_table

    tmp = tmp_path_factory.mktemp("graphlat")
    _, teacher = _teacher(tmp)
    out = tmp / "lat.json"
    t = build_table(LatencyTableConfig(out=out, generator=teacher, size=32, multiple=4, runs=3,
                                       rounds=1, warmup=1, calibrate=5, validate=2))
    assert t.kind == "graph" and len(t.calibration) == 5 and len(t.validation) == 2
    return out, teacher


def test_measured_table_loads_and_predicts(table: tuple[Path, Path], tmp_path: Path) -> None:
    out, _ = table
    t = load_table(out)
    assert isinstance(t, GraphLatencyTable) and t.builder == BUILDER and t.multiple == 4
    assert min(t.coef.values()) >= 0 and t.key["backend"] == "tflite-xnnpack"
    teacher, _ = _teacher(tmp_path)
    spec = budget.cost_spec(teacher, 64)
    full = t.predict(spec).ms
    small = t.predict(spec, {r: 1 for r in spec.site_root.values()}).ms
    assert full >= small > 0  # equal only if timing noise left the invoke cost alone
    # outputs inside one tile are written alike, one channel past it costs a whole tile more
    e3, e4, e5 = (features(spec, {r: n for r in spec.site_root.values()}, 32, 4)[1]
                  for n in (3, 4, 5))
    assert e3 == e4 < e5
    other, _ = _teacher(tmp_path, ngf=12)
    with pytest.raises(DmadError, match="another structure") as e:
        t.check_spec(budget.cost_spec(other, 64))
    assert "\n" not in str(e.value)
    bad = json.loads(out.read_text())
    bad["coef"]["per_gmac"] = -1.0
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DmadError, match="malformed table"):
        load_table(tmp_path / "bad.json")


def test_search_with_a_latency_budget_on_a_traced_generator(
        table: tuple[Path, Path], tmp_path: Path, default_data: Path) -> None:
    from dmad.compress.train.search import SearchConfig, search

    measured, teacher = table
    # the measured table's machine and structure, with costs fixed here: a tiny model's
    # timings are mostly noise, and the search's arithmetic is what this test is about
    d = json.loads(measured.read_text())
    d["coef"] = {"per_gmac": 20.0, "per_melem": 1.0, "const_ms": 0.05}
    out = tmp_path / "fixed.json"
    out.write_text(json.dumps(d))
    t = load_table(out)
    full = t.predict(budget.cost_spec(_teacher(tmp_path)[0], 64)).ms
    target = round(0.6 * full, 4)
    search(SearchConfig(teacher=str(teacher), images=str(default_data / "unaligned"),
                        target_ms=target, latency_table=str(out), macs_size=64, steps=10,
                        bound_updates=5, device="cpu", size=32), tmp_path / "s")
    arch = json.loads((tmp_path / "s" / "architecture.json").read_text())
    lat = arch["directions"]["AtoB"]["latency"]
    assert 0.97 * target <= lat["predicted_ms"] <= target + 1e-3
    assert lat["full_predicted_ms"] == pytest.approx(full, abs=1e-3)
    assert arch["width_multiple"] == 4


def test_unet_gets_a_table_of_whole_models_and_a_latency_budget(
        tmp_path: Path, default_data: Path) -> None:
    """A UNet has no repeated unit to time alone, so it is timed whole like a traced
    generator: students of its own class at random widths, costs counted on its traced graph
    under DMAD's mask names; a search with ``target_ms`` then lands within its tolerance."""
    from dmad.benchmark.latency_table import LatencyTableConfig, build_table
    from dmad.compress.models import UnetSpec, build
    from dmad.compress.train.search import SearchConfig, search

    torch.manual_seed(0)
    teacher = tmp_path / "unet.pt"
    save_model(build(UnetSpec(ngf=4, num_downs=5)), teacher, size=32)
    out = tmp_path / "lat.json"
    t = build_table(LatencyTableConfig(out=out, generator=teacher, size=32, multiple=4, runs=3,
                                       rounds=1, warmup=1, calibrate=4, validate=1))
    assert t.kind == "graph" and t.builder == "dmad.compress.models:UnetGenerator"
    assert t.sites["down1"] == 8 and len(t.calibration) == 4 and len(t.validation) == 1
    d = json.loads(out.read_text())
    d["coef"] = {"per_gmac": 50.0, "per_melem": 1.0, "const_ms": 0.0}  # see the CUT test
    out.write_text(json.dumps(d))
    spec = UnetSpec(ngf=4, num_downs=5)
    full = load_table(out).predict(spec).ms
    target = round(0.6 * full, 4)
    search(SearchConfig(teacher=str(teacher), images=str(default_data / "unaligned"),
                        target_ms=target, latency_table=str(out), macs_size=64, steps=10,
                        bound_updates=5, device="cpu", size=32), tmp_path / "s")
    lat = json.loads((tmp_path / "s" / "architecture.json").read_text())[
        "directions"]["AtoB"]["latency"]
    assert 0.97 * target <= lat["predicted_ms"] <= target + 1e-3
    assert lat["full_predicted_ms"] == pytest.approx(full, abs=1e-3)
