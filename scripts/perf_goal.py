"""The issue's performance goal, measured: full ResNet-9 (ngf 64) vs a ≥10× MAC-reduced one at 256².

Goal: measured speedup ≥ 0.8 × MAC ratio on ONNX Runtime and on TFLite XNNPACK, and the
compressed model's achieved GMAC/s ≥ 50 % of the full model's. Runs ``dmad compare`` on both
(interleaved, same input), then shows where the time goes with ORT's per-node profiler (op types
by share of time) for both models, since small convolutions lose efficiency differently from the
fixed-cost ops (pads, norms) that do not shrink with the width.

Usage: ``python scripts/perf_goal.py [--out runs/perf_goal] [--tflite onnx2tf|skip]``.
The TFLite files come from onnx2tf 1.29.24 (fp32 only, run in a subprocess in a scratch folder
holding the calibration file it otherwise downloads); that takes minutes for the full model.
Random weights: latency does not depend on weight values for these float kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent  # the repository (for the default --out)

ONNX2TF = r"""
import sys, onnx2tf
onnx2tf.convert(input_onnx_file_path=sys.argv[1], output_folder_path=sys.argv[2],
                non_verbose=True, not_use_onnxsim=True)
"""


def build(out: Path, ngf: int, size: int, name: str, rewrite: bool = False) -> Path:
    import torch

    from dmad.compress.checkpoint import save_model
    from dmad.compress.models import ResnetGenerator, ResnetSpec

    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    m = ResnetGenerator(ResnetSpec(ngf=ngf, n_blocks=9)).eval()
    if rewrite:  # the export stage's exact deploy rewrites (reflect pad as slices, explicit IN)
        from dmad.export.rewrite import deploy_rewrite

        onnx_model, _ = deploy_rewrite(m)
    else:
        onnx_model = m
    if not (d / "model.pt").exists():
        save_model(m, d / "model.pt")
    if not (d / "model.onnx").exists():
        import warnings

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(onnx_model, (torch.zeros(1, 3, size, size),), str(d / "raw.onnx"),
                              opset_version=17, input_names=["input"], output_names=["output"],
                              dynamo=False)
        # As the export stage ships it: onnxsim folds the pad/norm constants onnx2tf needs.
        import onnx
        import onnxsim

        simplified, ok = onnxsim.simplify(onnx.load(str(d / "raw.onnx")))
        assert ok, "onnxsim could not validate the simplified graph"
        onnx.save(simplified, str(d / "model.onnx"))
        (d / "raw.onnx").unlink()
    return d


def to_tflite(d: Path) -> float | None:
    """onnx2tf fp32 .tflite next to the ONNX (model_fp32.tflite); returns seconds taken."""
    target = d / "model_fp32.tflite"
    if target.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "calibration_image_sample_data_20x128x128x3_float32.npy",
                np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
        t0 = time.time()
        subprocess.run([sys.executable, "-c", ONNX2TF, str(d / "model.onnx"), str(Path(tmp) / "o")],
                       cwd=tmp, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                       stdout=subprocess.DEVNULL)
        shutil.copy(Path(tmp) / "o" / "model_float32.tflite", target)
        return time.time() - t0


def ort_profile(onnx_path: Path, size: int, threads: int, runs: int = 5) -> dict[str, float]:
    """Share of ORT kernel time per op type (from ORT's own profiler)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with tempfile.TemporaryDirectory() as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "p")
        s = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
        for _ in range(runs + 1):
            s.run(None, {s.get_inputs()[0].name: x})
        prof = json.loads(Path(s.end_profiling()).read_text())
    by: dict[str, float] = defaultdict(float)
    for ev in prof:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            by[ev["args"]["op_name"]] += ev["dur"]
    total = sum(by.values()) or 1.0
    return {k: v / total for k, v in sorted(by.items(), key=lambda kv: -kv[1])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "perf_goal")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--compressed-ngf", type=int, default=16)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--tflite", choices=("onnx2tf", "skip"), default="onnx2tf")
    ap.add_argument("--rewrite", action="store_true",
                    help="export both with export.rewrite.deploy_rewrite (slice pads, explicit IN)")
    args = ap.parse_args()

    from dmad.benchmark.api import CompareConfig, compare

    full = build(args.out, 64, args.size, "full", args.rewrite)
    comp = build(args.out, args.compressed_ngf, args.size, "compressed", args.rewrite)
    backends: tuple[str, ...] = ("ort",)
    if args.tflite == "onnx2tf":
        for d in (full, comp):
            took = to_tflite(d)
            if took is not None:
                print(f"onnx2tf {d.name}: {took:.0f} s", flush=True)
        backends = ("ort", "tflite-xnnpack")
    threads = tuple(int(t) for t in args.threads.split(","))
    t0 = time.time()
    rep = compare(CompareConfig(full=full, compressed=comp, out=args.out / "report",
                                backends=backends, threads=threads, runs=args.runs,
                                warmup=args.warmup, size=args.size),
                  progress=lambda s: print(f"  {s}", file=sys.stderr, flush=True))
    data = json.loads((rep / "results.json").read_text())
    print(f"benchmark: {time.time() - t0:.0f} s; {data['headline']}")
    print(f"{'backend':<16}{'thr':>4}{'full ms':>10}{'compr ms':>10}{'speedup':>9}{'MACs ÷':>8}"
          f"{'sp/MAC':>8}{'GMAC/s f':>10}{'GMAC/s c':>10}{'c/f':>6}  goal")
    for r in data["comparison"]:
        ok1 = r["speedup_over_mac_ratio"] >= 0.8
        ok2 = r["gmacs_per_s_ratio"] >= 0.5
        print(f"{r['backend']:<16}{r['threads']:>4}{r['full_ms']:>10.1f}{r['compressed_ms']:>10.1f}"
              f"{r['speedup']:>9.2f}{r['mac_ratio']:>8.2f}{r['speedup_over_mac_ratio']:>8.2f}"
              f"{r['full_gmacs_per_s']:>10.1f}{r['compressed_gmacs_per_s']:>10.1f}"
              f"{r['gmacs_per_s_ratio']:>6.2f}  {'met' if ok1 and ok2 else 'NOT met'}")
    for note in data.get("notes", []):
        print("note:", note)
    print("\nwhere ORT spends its time (share of kernel time, 1 thread):")
    for d in (full, comp):
        shares = ort_profile(d / "model.onnx", args.size, 1)
        top = ", ".join(f"{k} {v * 100:.0f}%" for k, v in list(shares.items())[:6])
        print(f"  {d.name}: {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
