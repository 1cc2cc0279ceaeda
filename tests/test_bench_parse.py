"""Parsers of benchmark_model (both tools), adb devices, getprop and thermalservice output,
against the sample files in tests/data/bench (see its README for where they come from)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from dmad.benchmark.adb import assess_delegation, shell_join
from dmad.benchmark.parse import (
    parse_battery,
    parse_benchmark_output,
    parse_devices,
    parse_getprop,
    parse_op_profile,
    parse_op_runs,
    parse_thermal,
)
from dmad.compress.errors import DmadError
from tests.adbdevice.shell import unquoted_metachar

DATA = Path(__file__).parent / "data" / "bench"


def _p(name: str) -> dict:  # type: ignore[type-arg]
    return parse_benchmark_output((DATA / name).read_text(), name)


def test_classic_real_sample() -> None:
    r = _p("classic_ti_xnnpack.txt")
    assert r["format"] == "classic" and r["count"] == 50
    assert r["median_ms"] == pytest.approx(899.281)
    assert r["p95_ms"] == pytest.approx(904.305) and r["p5_ms"] == pytest.approx(898.333)
    assert r["min_ms"] == pytest.approx(898.007) and r["std_ms"] == pytest.approx(1.549)
    assert r["init_ms"] == pytest.approx(614.333)
    assert r["warmup_avg_ms"] == pytest.approx(905.463)
    assert r["memory"] == {"init_mb": 146.363, "overall_mb": 150.141}
    assert (r["latency_ms"], r["latency_stat"]) == (r["median_ms"], "median")


def test_classic_e_notation_and_warmup_line_not_mistaken() -> None:
    r = _p("classic_resnet_xnnpack_partial.txt")
    assert r["count"] == 20  # the inference line, not the warm-up's "count=1 curr=..."
    assert r["median_ms"] == pytest.approx(1202.11)
    assert r["first_ms"] == pytest.approx(1213.45)
    assert r["init_ms"] == pytest.approx(412.871)
    assert r["warmup_avg_ms"] == pytest.approx(1240.27)
    assert r["memory"]["peak_mb"] == pytest.approx(178.91)
    assert r["coverage"] == [{"delegated": 166, "total": 206,
                              "delegate": "TfLiteXNNPackDelegate", "partitions": 21}]
    flags = assess_delegation("xnnpack", r, sdk=34)
    assert flags == ["partially delegated: 166 of 206 nodes in 21 partition(s); the rest runs "
                     "on CPU kernels"]


def test_old_build_without_percentiles() -> None:
    r = _p("classic_old_build.txt")
    assert "median_ms" not in r and r["count"] == 50
    assert (r["latency_ms"], r["latency_stat"]) == (pytest.approx(72.3613), "avg")
    assert r["init_ms"] == pytest.approx(5.236)
    assert r["warmup_avg_ms"] == pytest.approx(72.7879)
    assert r["memory"] == {"init_mb": 2.56641, "overall_mb": 10.1719}


def test_constant_run_prints_only_curr() -> None:
    r = parse_benchmark_output("INFO: Running benchmark for at least 1 iterations\n"
                               "INFO: count=1 curr=1.24e+06\n")
    assert r["latency_ms"] == pytest.approx(1240.0) and r["count"] == 1


def test_gpu_fallback_is_flagged() -> None:
    r = _p("classic_gpu_fallback.txt")
    assert [c["delegate"] for c in r["coverage"]] == ["TfLiteGpuDelegateV2",
                                                      "TfLiteXNNPackDelegate"]
    assert "GPU unsupported: MIRROR_PAD: Operation is not supported." in r["warnings"]
    flags = assess_delegation("gpu", r, sdk=34)
    assert flags[0].startswith("partially delegated: 116 of 206")
    # The same output read for a GPU run whose delegate line is missing → fell back.
    no_gpu = dict(r, coverage=[c for c in r["coverage"] if "Gpu" not in c["delegate"]])
    assert assess_delegation("gpu", no_gpu, sdk=34)[0].startswith("FELL BACK TO CPU")


def test_nnapi_missing_accelerator_and_deprecation() -> None:
    r = _p("classic_nnapi_no_accelerator.txt")
    assert r["median_ms"] == pytest.approx(3987.74)
    flags = assess_delegation("nnapi", r, sdk=34)
    assert flags[0].startswith("FELL BACK TO CPU: ERROR: Could not find the specified NNAPI")
    assert flags[1] == "NNAPI is deprecated since Android 15"
    assert assess_delegation("nnapi", r, sdk=35)[1].endswith("(this device: SDK 35)")
    assert assess_delegation("cpu", r, sdk=35) == []


def test_op_profiling_tables() -> None:
    text = (DATA / "classic_op_profiling.txt").read_text()
    r = parse_benchmark_output(text)
    # "Timings (microseconds): count=10 ..." of the profiler must not replace the stats line.
    assert r["median_ms"] == pytest.approx(118.105) and r["count"] == 10
    prof = parse_op_profile(text)
    assert [p["node_type"] for p in prof] == ["TfLiteXNNPackDelegate", "MIRROR_PAD", "TRANSPOSE",
                                              "MEAN"]
    assert prof[1] == {"node_type": "MIRROR_PAD", "count": 20, "avg_ms": 21.902,
                       "percent": 18.547, "mem_kb": 0.0, "times_called": 20}
    assert r["op_profile"] == prof


def test_compiled_model_format() -> None:
    r = _p("compiled_model_cpu.txt")
    assert r["format"] == "compiled" and r["count"] == 30
    assert r["avg_ms"] == pytest.approx(85.23) and r["latency_stat"] == "avg"
    assert (r["min_ms"], r["max_ms"], r["std_ms"]) == (83.95, 88.10, 1.04)
    assert r["init_ms"] == pytest.approx(45.32) and r["first_ms"] == pytest.approx(97.51)
    assert r["warmup_avg_ms"] == pytest.approx(91.20)
    assert r["memory"] == {"init_mb": 12.5, "overall_mb": 38.2, "peak_mb": 41.75}


def test_compiled_model_tool_with_its_real_log_prefix() -> None:
    """``INFO: [benchmark_litert_model.h:100] Inference (avg): ...``: the prefix is read past,
    and a CPU run is not flagged (the tool prints no delegation count at all)."""
    r = _p("compiled_model_prefixed.txt")
    assert r["format"] == "compiled" and r["count"] == 10
    assert r["avg_ms"] == pytest.approx(7430.20) and r["std_ms"] == pytest.approx(9.92)
    assert r["init_ms"] == pytest.approx(23744.73) and r["first_ms"] == pytest.approx(7512.40)
    assert r["memory"] == {"init_mb": 912.44, "overall_mb": 1403.02, "peak_mb": 1530.61}
    assert assess_delegation("cpu", r, sdk=35) == []
    assert assess_delegation("gpu", r, sdk=35) == [
        "gpu use not confirmed: the CompiledModel tool prints no delegation count and no 'GPU "
        "accelerator registered' line was seen"]


def test_per_op_run_order_tables_both_layouts() -> None:
    """The regular runs' table, not the initialisation one; current and older layouts."""
    rows = parse_op_runs((DATA / "classic_run_order.txt").read_text())
    assert [r["node_type"] for r in rows] == ["MIRROR_PAD", "CONV_2D", "MEAN",
                                             "TfLiteXNNPackDelegate"]
    assert rows[1] == {"index": 1, "node_type": "CONV_2D", "name": "[stem_conv/conv]:1",
                       "first_ms": 9.812, "avg_ms": 9.706, "percent": 48.15,
                       "cdf_percent": 50.16, "mem_kb": 0.0, "times_called": 1}
    r = _p("classic_run_order.txt")
    assert r["op_runs"] == rows and r["median_ms"] == pytest.approx(20.12)
    old = parse_op_runs((DATA / "classic_run_order_old.txt").read_text())
    assert [(o["node_type"], o["avg_ms"], o["name"]) for o in old] == [
        ("DEPTHWISE_CONV_2D", 536.83, "[srnetwork/Conv/Relu]"),
        ("CONV_2D", 410.502, "[srnetwork/Conv_1/BiasAdd]")]
    assert parse_op_runs((DATA / "classic_ti_xnnpack.txt").read_text()) == []


def test_battery() -> None:
    text = ("Current Battery Service state:\n  AC powered: true\n  USB powered: false\n"
            "  status: 5\n  level: 45\n  scale: 50\n  temperature: -15\n")
    assert parse_battery(text) == {"level_pct": 90.0, "temperature_c": -1.5, "status": "full",
                                   "powered": ["AC"]}
    assert parse_battery("") == {"powered": []}


def test_litert_python_tool_lines() -> None:
    r = _p("litert_python_tool.txt")
    assert r["median_ms"] == pytest.approx(41.008) and r["p95_ms"] == pytest.approx(43.177)
    assert r["fully_accelerated"] is False
    assert "not fully accelerated" in " ".join(assess_delegation("cpu", r, sdk=None))


@pytest.mark.parametrize("name", ["not_benchmark_output.txt", "getprop.txt"])
def test_unparsable_output_is_an_error(name: str) -> None:
    with pytest.raises(DmadError, match="unparsable output"):
        _p(name)
    with pytest.raises(DmadError, match="first line: '<empty>'"):
        parse_benchmark_output("")


def test_devices_props_thermal() -> None:
    devs = parse_devices((DATA / "devices_l.txt").read_text())
    assert [(d["serial"], d["state"]) for d in devs] == [
        ("R5CW10ABCDE", "device"), ("emulator-5554", "offline"),
        ("0123456789ABCDEF", "unauthorized")]
    assert devs[0]["model"] == "SM_S911B"
    props = parse_getprop((DATA / "getprop.txt").read_text())
    assert props["ro.soc.model"] == "SM8550" and props["ro.build.version.sdk"] == "34"
    th = parse_thermal((DATA / "thermalservice.txt").read_text())
    assert th == {"status": 2, "status_name": "moderate", "max_cpu_c": 71.3, "max_skin_c": 42.3}


@pytest.mark.parametrize("arg", ["plain", "a b", "x;rm -rf /", "$(id)", "`id`", "it's", "a\nb",
                                 "--graph=/data/local/tmp/m m.tflite", "*", ""])
def test_shell_join_round_trips_and_passes_the_strict_shell(arg: str) -> None:
    line = shell_join(["echo", arg])
    assert shlex.split(line) == ["echo", arg]
    assert unquoted_metachar(line) is None
    if arg and any(c in arg for c in ";$`*\n"):
        assert unquoted_metachar(f"echo {arg}") is not None
