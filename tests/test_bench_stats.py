"""Speedup statistics: paired ratios, bootstrap intervals, timing orders, int8_io kept apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dmad.benchmark import model_info, runners
from dmad.benchmark.report import compare_rows, headline
from dmad.benchmark.stats import bootstrap_ci, speedup_stats


def test_paired_median_follows_the_rounds_not_the_medians() -> None:
    # round 2 was slow for both models: the pairs see it, two medians do not
    full, comp = [100.0, 100.0, 300.0], [10.0, 30.0, 30.0]
    st = speedup_stats(full, comp, "interleaved")
    assert st["ratio_of_medians"] == pytest.approx(100 / 30)
    assert st["paired_median"] == pytest.approx(10.0)
    lo, hi = st["ci95"]
    assert lo <= st["paired_median"] <= hi
    b = speedup_stats(full, comp, "blocked")  # not paired in time: the ratio of medians
    assert b["paired_median"] is None and b["ci95"][0] <= b["ratio_of_medians"] <= b["ci95"][1]
    with pytest.raises(ValueError, match="positive"):
        speedup_stats([1.0, 0.0], [1.0, 1.0])


def test_bootstrap_interval_narrows_with_rounds_and_is_reproducible() -> None:
    rng = np.random.default_rng(0)
    few, many = rng.normal(10, 1, 8), rng.normal(10, 1, 400)
    w_few = np.subtract(*bootstrap_ci(few)[::-1])
    w_many = np.subtract(*bootstrap_ci(many)[::-1])
    assert 0 < w_many < w_few
    assert bootstrap_ci(few) == bootstrap_ci(few)
    assert bootstrap_ci(np.array([3.0])) == (3.0, 3.0)


def _result(model: str, order: str, samples: list[float], backend: str = "tflite-xnnpack",
            precision: str = "fp32") -> dict[str, object]:
    return {"model": model, "backend": backend, "precision": precision, "threads": 1,
            "order": order, "median_ms": float(np.median(samples)), "samples_ms": samples,
            "path": f"{model}.tflite", "gmacs_true": 10.0 if model == "full" else 1.0}


def test_compare_rows_and_headline_report_both_orders() -> None:
    data = {"sizes": {}, "results": [
        _result("full", "interleaved", [100.0, 100.0, 300.0]),
        _result("compressed", "interleaved", [10.0, 30.0, 30.0]),
        _result("full", "blocked", [100.0, 110.0, 90.0]),
        _result("compressed", "blocked", [20.0, 20.0, 20.0]),
    ]}
    rows = {r["order"]: r for r in compare_rows(data)}
    assert rows["interleaved"]["speedup"] == pytest.approx(10.0)
    assert rows["interleaved"]["ratio_of_medians"] == pytest.approx(100 / 30)
    assert rows["blocked"]["speedup"] == pytest.approx(5.0)
    text, r = headline(list(rows.values()))
    assert r is rows["blocked"]  # the headline uses blocked order when it was measured
    assert "5.0× [95 % CI" in text and "blocked order" in text
    assert "interleaved order: 10.0×" in text


def test_int8_io_files_are_not_int8_files() -> None:
    assert model_info._precision_from_name("generator_int8_io.tflite") == "int8-io"
    assert model_info._precision_from_name("generator_int8.tflite") == "int8"
    rows = compare_rows({"sizes": {}, "results": [
        _result("full", "interleaved", [50.0, 50.0], precision="int8"),
        _result("compressed", "interleaved", [5.0, 5.0], precision="int8"),
        _result("full", "interleaved", [60.0, 60.0], precision="int8-io"),
        _result("compressed", "interleaved", [4.0, 4.0], precision="int8-io")]})
    assert {(r["precision"], round(r["speedup"])) for r in rows} == {("int8", 10),
                                                                    ("int8-io", 15)}


def test_run_orders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []

    def runner(t: runners.Target, _x: np.ndarray, _th: int):  # type: ignore[no-untyped-def]
        return lambda: calls.append(t.label)

    monkeypatch.setitem(runners.RUNNERS, "torch", runner)
    info = model_info.ModelInfo.__new__(model_info.ModelInfo)
    info.gmacs_true, info.path, info.precision = 1.0, tmp_path / "m.pt", "fp32"
    ts = [runners.Target(info, "torch", tmp_path / "m.pt", n) for n in ("A", "B")]
    res = runners.run_interleaved(ts, 1, 3, 1, lambda t: np.zeros(1), "blocked")
    assert "".join(calls) == "AAAABBBB" and {r["order"] for r in res} == {"blocked"}
    calls.clear()
    runners.run_interleaved(ts, 1, 3, 1, lambda t: np.zeros(1), "interleaved")
    assert "".join(calls) == "ABABABAB"
    with pytest.raises(Exception, match="--order"):
        runners.run_interleaved(ts, 1, 1, 0, lambda t: np.zeros(1), "random")


def test_an_old_benchmark_model_average_is_never_filed_as_a_median() -> None:
    from dmad.benchmark.adb import latency_fields
    from dmad.benchmark.parse import parse_benchmark_output
    from dmad.benchmark.report import results_table

    data = Path(__file__).parent / "data" / "bench"
    old = latency_fields(parse_benchmark_output((data / "classic_old_build.txt").read_text()))
    assert old["median_ms"] is None and old["latency_stat"] == "avg" and old["latency_ms"] > 0
    new = latency_fields(parse_benchmark_output((data / "classic_ti_xnnpack.txt").read_text()))
    assert new["latency_stat"] == "median" and new["median_ms"] == new["latency_ms"]
    row = {"model": "m", "backend": "android-cpu", "threads": 1, **old}
    cell = results_table([row])[2][0][4]
    assert "avg" in cell and cell.startswith(f"{old['latency_ms']:.2f}")
