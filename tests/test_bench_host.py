"""Host benchmark (PyTorch, ORT, LiteRT), MAC counting from graphs, ``dmad bench`` and
``dmad compare`` outputs, and their one-line errors."""

# Fixtures imported from tests.adbdevice.fixtures reappear as test arguments:
# ruff: noqa: F811
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dmad.benchmark import host, model_info, runners
from dmad.benchmark.api import BenchConfig, CompareConfig, bench, compare
from dmad.cli import main
from dmad.compress.arch import profile
from dmad.compress.checkpoint import load_model
from dmad.compress.errors import DmadError
from tests.adbdevice.fixtures import bench_models  # noqa: F401 - pytest fixture

FAST = {"runs": 3, "warmup": 1, "threads": (1,)}


def test_onnx_mac_count_matches_the_spec_profile(bench_models: dict[str, Path]) -> None:
    for name in ("full", "small"):
        model, _ = load_model(bench_models[f"{name}_pt"])
        prof = profile(model, (1, 3, 32, 32))
        t, p, params, prec = model_info.count_onnx(bench_models[f"{name}_onnx"], (1, 3, 32, 32))
        assert (t, p, params, prec) == (prof.macs_true, prof.macs_paper, prof.params, "fp32")


def test_tflite_mac_count(bench_models: dict[str, Path]) -> None:
    t, p, params, prec, shape, layout = model_info.count_tflite(bench_models["wide_tflite"])
    # conv 3→32 3×3 on 32², then conv 32→3 3×3 on 32² (after a reflect pad)
    assert t == 32 * 32 * 32 * 9 * 3 + 32 * 32 * 3 * 9 * 32
    assert p == 32 * 32 * 32 * (27 + 1) + 32 * 32 * 3 * (288 + 1)
    assert (prec, shape, layout) == ("fp32", (1, 3, 32, 32), "NHWC")
    assert params == 3 * 3 * 3 * 32 + 32 + 3 * 3 * 32 * 3 + 3


def test_runs_are_interleaved_and_warmup_excluded(monkeypatch: pytest.MonkeyPatch,
                                                  bench_models: dict[str, Path]) -> None:
    calls: list[str] = []

    def fake(t: runners.Target, x: object, threads: int):  # type: ignore[no-untyped-def]
        return lambda: calls.append(t.label)

    monkeypatch.setitem(runners.RUNNERS, "torch", fake)
    infos = [model_info.inspect_model(bench_models[k], 32) for k in ("full_pt", "small_pt")]
    out = runners.run_interleaved(
        [runners.Target(i, "torch", i.path, lab) for i, lab in zip(infos, "AB", strict=True)],
        threads=1, runs=3, warmup=2, x_for=lambda t: None,  # type: ignore[arg-type,return-value]
    )
    assert calls == list("AB" * 5)
    assert [len(r["samples_ms"]) for r in out] == [3, 3]
    assert out[0]["gmacs_per_s"] == pytest.approx(out[0]["gmacs_true"] / out[0]["median_ms"] * 1e3)


def test_same_input_for_every_backend(bench_models: dict[str, Path]) -> None:
    x = runners.make_input((1, 3, 32, 32))
    assert x.dtype.name == "float32" and -1 <= x.min() < x.max() <= 1
    assert (runners.make_input((1, 3, 32, 32)) == x).all()


def test_bench_all_backends_writes_json_csv_md(bench_models: dict[str, Path],
                                               tmp_path: Path) -> None:
    models = [bench_models["full_pt"], bench_models["small_onnx"], bench_models["wide_tflite"]]
    out = bench(BenchConfig(models=models, out=tmp_path / "b", **FAST))  # type: ignore[arg-type]
    data = json.loads((out / "results.json").read_text())
    got = {(Path(r["path"]).name, r["backend"]) for r in data["results"]}
    assert got == {("model.pt", "torch"), ("model.pt", "ort"), ("model.onnx", "ort"),
                   ("wide_fp32.tflite", "tflite-xnnpack"), ("wide_fp32.tflite", "tflite-builtin")}
    for r in data["results"]:
        assert r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["gmacs_per_s"] > 0 and 0 < r["efficiency"]
        assert r["std_ms"] >= 0 and r["runs"] == 3 and len(r["samples_ms"]) == 3
    m = data["machine"]
    assert m["cpu"] and m["logical_cores"] >= 1 and m["libraries"]["onnxruntime"]
    assert data["peak"]["1"]["gmacs_per_s"] > 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 5 and rows[0]["median_ms"]
    md = (out / "results.md").read_text()
    assert "| model | backend |" in md and "TFLite XNNPACK" in md and "Measured peak" in md
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_compare_report(bench_models: dict[str, Path], tmp_path: Path) -> None:
    full, small = tmp_path / "full", tmp_path / "small"
    shutil.copytree(bench_models["full_dir"], full)
    shutil.copytree(bench_models["small_dir"], small)
    shutil.copy(bench_models["wide_tflite"], full / "model_fp32.tflite")
    shutil.copy(bench_models["narrow_tflite"], small / "model_fp32.tflite")
    (full / "model_fp32.tflite").unlink()  # the tflite pair only on one side: noted, skipped
    (small / "eval").mkdir()
    from PIL import Image

    from dmad.compress.checkpoint import save_model

    for pt in small.glob("*.pt"):  # a student file names its objective and checkpoint step
        save_model(load_model(pt)[0], pt, objective="GAN + L1 to teacher outputs ×10", step=7)

    Image.new("RGB", (8, 4)).save(small / "eval" / "grid.png")
    cfg = CompareConfig(full=full, compressed=small, out=tmp_path / "r",
                        backends=("torch", "ort", "tflite"), **FAST)  # type: ignore[arg-type]
    out = compare(cfg)
    md = (out / "report.md").read_text()
    head = md.splitlines()[2]
    assert head.startswith("**compressed is ")
    assert "faster on ONNX Runtime (fp32, 1 thread, blocked order)" in head
    assert "[95 % CI" in head and "; interleaved order: " in head
    mac_ratio = profile(load_model(bench_models["full_pt"])[0], (1, 3, 32, 32)).macs_true / \
        profile(load_model(bench_models["small_pt"])[0], (1, 3, 32, 32)).macs_true
    assert f"MACs ÷{mac_ratio:.1f}" in head and "size ÷" in head
    assert "GMACs (true" in md and "GMACs (paper" in md and "parameters (M)" in md
    assert "TFLite XNNPACK: not measured" in md
    assert "fine-tuned with: GAN + L1 to teacher outputs ×10 (checkpoint of step 7)" in md
    assert "![latency and speedup chart](latency.png)" in md and "![image grid](grid.png)" in md
    assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "grid.png").is_file()
    html = (out / "report.html").read_text()
    assert "<table>" in html and "compressed is" in html and "latency.png" in html
    # the answer first: the headline's backend and order, one row per precision × threads;
    # every setting, interval and raw measurement in the appendix
    assert md.index("| backend | precision | threads | full ms | compressed ms | speedup |") < \
        md.index("## Fidelity and images") < md.index("## Models")
    assert "All measurements" not in md and "[report_full.md](report_full.md)" in md
    full_md = (out / "report_full.md").read_text()
    assert "## Latency, every setting" in full_md and "95 % CI" in full_md
    assert "## All measurements" in full_md and "## Machine" in full_md
    assert (out / "report_full.html").is_file()
    data = json.loads((out / "results.json").read_text())
    rows = {(r["backend"], r["threads"], r["order"]) for r in data["comparison"]}
    assert rows == {(b, 1, o) for b in ("torch", "ort") for o in ("interleaved", "blocked")}
    res = {(r["model"], r["backend"], r["order"]): r for r in data["results"]}
    for r in data["comparison"]:
        assert r["mac_ratio"] == pytest.approx(mac_ratio)
        # (the stored samples are rounded to 0.1 µs, the medians are not)
        assert r["ratio_of_medians"] == pytest.approx(r["full_ms"] / r["compressed_ms"], rel=1e-3)
        lo, hi = r["speedup_ci95"]
        assert lo <= r["speedup"] <= hi
        if r["order"] == "blocked":
            assert r["speedup"] == pytest.approx(r["ratio_of_medians"])
        else:  # the median of the per-round ratios of the raw samples
            f = res[("full", r["backend"], "interleaved")]["samples_ms"]
            c = res[("compressed", r["backend"], "interleaved")]["samples_ms"]
            assert r["speedup"] == pytest.approx(float(np.median(np.divide(f, c))), rel=1e-6)


def test_cli_bench_and_compare(bench_models: dict[str, Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", str(bench_models["narrow_tflite"]), "--backends", "tflite-xnnpack",
               "--threads", "1", "--runs", "2", "--warmup", "0", "--out", str(tmp_path / "b")])
    assert rc == 0 and (tmp_path / "b" / "results.md").is_file()
    rc = main(["compare", "--full", str(bench_models["wide_tflite"]), "--compressed",
               str(bench_models["narrow_tflite"]), "--threads", "1", "--runs", "2", "--warmup",
               "0", "--out", str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert rc == 0 and "compressed is" in out and "faster on TFLite XNNPACK" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["bench", "{tmp}/m.h5", "--out", "{tmp}/o"], "unknown model type '.h5'"),
        (["bench", "{tmp}/missing.onnx", "--out", "{tmp}/o"], "missing.onnx: no such file"),
        (["bench", "{full_pt}", "--backends", "tpu", "--out", "{tmp}/o"], "unknown backend 'tpu'"),
        (["bench", "{full_pt}", "--backends", "tflite", "--out", "{tmp}/o"],
         "none applies to the models given (torch)"),
        (["bench", "{full_onnx}", "--size", "64", "--out", "{tmp}/o"],
         "fixed input size 32x32, --size 64 does not apply"),
        (["bench", "{full_pt}", "--runs", "0", "--out", "{tmp}/o"], "--runs must be >= 1"),
        (["compare", "--full", "{full_onnx}", "--compressed", "{tmp}", "--out", "{tmp}/o"],
         "no .pt, .onnx or .tflite model in this folder"),
        (["compare", "--full", "{full_pt}", "--compressed", "{narrow}", "--out", "{tmp}/o"],
         "nothing to compare"),
    ],
)
def test_cli_errors_are_one_line(argv: list[str], expected: str, bench_models: dict[str, Path],
                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m.h5").write_bytes(b"x")
    subs = {"tmp": str(tmp_path), "full_pt": str(bench_models["full_pt"]),
            "full_onnx": str(bench_models["full_onnx"]),
            "narrow": str(bench_models["narrow_tflite"])}
    rc = main([a.format(**subs) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("dmad: error: ") and err.count("\n") == 1
    assert expected in err


def test_oversubscription_is_flagged() -> None:
    res = [{"path": "a", "backend": "torch", "threads": 1, "median_ms": 1.0},
           {"path": "a", "backend": "torch", "threads": 2, "median_ms": 400.0},
           {"path": "a", "backend": "ort", "threads": 2, "median_ms": 1.0}]
    host.flag_oversubscription(res)
    assert res[1]["flags"][0].startswith("400.0x slower with 2 threads than with 1")
    assert res[0]["flags"] == [] and res[2]["flags"] == []


def test_bad_model_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(DmadError, match="not a valid ONNX model"):
        model_info.inspect_model(bad)
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"not tflite at all")
    with pytest.raises(DmadError, match=r"is a text file, not a \.tflite model"):
        model_info.inspect_model(bad)
    empty = tmp_path / "e.pt"
    empty.write_bytes(b"")
    with pytest.raises(DmadError, match="empty"):
        model_info.inspect_model(empty)


def test_demo_report_also_times_both_models_at_256(bench_models: dict[str, Path],
                                                   tmp_path: Path) -> None:
    from dmad.benchmark.api import CompareConfig
    from dmad.stages import compare_both

    out = tmp_path / "demo"
    for side, src in (("full", "full_dir"), ("compressed", "small_dir")):
        shutil.copytree(bench_models[src], out / "export" / side)
    shutil.copy(bench_models["wide_tflite"], out / "export" / "full" / "generator_fp32.tflite")
    shutil.copy(bench_models["narrow_tflite"],
                out / "export" / "compressed" / "generator_fp32.tflite")
    compare_both(CompareConfig(full=out / "export" / "full",
                               compressed=out / "export" / "compressed", out=out,
                               backends=("torch", "ort", "tflite"), threads=(1,), runs=2,
                               warmup=0), force=True)
    md = (out / "report.md").read_text()
    assert "Input 1x3x32x32." in md  # the main report, at the export size
    assert "## At 256² (the size phones run)" in md and "faster on" in md.split("At 256²")[1]
    sub = json.loads((out / "report_256" / "results.json").read_text())
    assert sub["models_summary"]["input"] == "1x3x256x256"
    assert {r["backend"] for r in sub["comparison"]} == {"torch", "ort"}
    assert "At 256²" in (out / "report.html").read_text()
