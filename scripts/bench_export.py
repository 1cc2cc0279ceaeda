"""Export benchmark (prints numbers; not a test): ``python scripts/bench_export.py``.

For a pruned (ngf 16, ~16x fewer MACs) and the full CycleGAN ResNet-9 (ngf 64) with random
weights at 256², exported from images of the embedded default dataset, it prints per graph
recipe and TFLite variant: export time, parity (PSNR vs PyTorch fp32), XNNPACK delegated nodes
and partitions, and median latency at 1 and 2 threads (LiteRT with XNNPACK; ONNX Runtime and
PyTorch for comparison). Recipes:

* ``as-exported``: ReflectionPad/InstanceNorm as onnx2tf converts them, plain int8.
* ``rewrite``: slice padding + explicit InstanceNorm, plain int8 (every op int8).
* ``deploy``: rewrite + the default int8 recipe (InstanceNorm statistics kept float).

Random weights and synthetic scenes: quality numbers are indicative; latency is what counts.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dmad.compress.data import make_default_dataset
from dmad.compress.models import ResnetGenerator, ResnetSpec
from dmad.export.api import DEFAULT_RECIPE, ExportConfig, export_model
from dmad.export.onnx import INPUT_NAME
from dmad.export.parity import latency_ms
from dmad.export.tflite import Int8Recipe

RECIPES = {
    "as-exported": (False, Int8Recipe()),
    "rewrite": (True, Int8Recipe()),
    "deploy": (True, DEFAULT_RECIPE),
}


def _ort_ms(path: Path, x: np.ndarray, threads: int, runs: int) -> float:
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    s.run(None, {INPUT_NAME: x})
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s.run(None, {INPUT_NAME: x})
        t.append(time.perf_counter() - t0)
    return float(np.median(t) * 1e3)


def _torch_ms(model: torch.nn.Module, x: np.ndarray, threads: int, runs: int) -> float:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        xt = torch.from_numpy(x)
        with torch.no_grad():
            model(xt)
            t = []
            for _ in range(runs):
                t0 = time.perf_counter()
                model(xt)
                t.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return float(np.median(t) * 1e3)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--models", default="pruned,full", help="pruned and/or full")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--quant", default="fp32,fp16,dynamic,int8")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--keep", type=Path, help="keep the exports under this folder")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    models = {
        "pruned": ResnetGenerator(ResnetSpec(ngf=16, n_blocks=9)).eval(),
        "full": ResnetGenerator(ResnetSpec(ngf=64, n_blocks=9)).eval(),
    }
    with tempfile.TemporaryDirectory() as td:
        base = a.keep or Path(td)
        data = make_default_dataset(Path(td) / "data", size=a.size, n_train=20, n_test=8)
        calib = data / "unaligned" / "trainA"
        for mname in a.models.split(","):
            model = models[mname]
            x = np.zeros((1, 3, a.size, a.size), np.float32)
            x[:] = np.linspace(-1, 1, a.size, dtype=np.float32)
            print(f"\n=== {mname} ResNet-9 ngf {model.spec.ngf} at {a.size}² ===", flush=True)
            print(f"PyTorch ms 1/2 threads: {_torch_ms(model, x, 1, a.runs):.1f} / "
                  f"{_torch_ms(model, x, 2, a.runs):.1f}", flush=True)
            for rname in a.recipes.split(","):
                rewrite, recipe = RECIPES[rname]
                t0 = time.time()
                res = export_model(ExportConfig(
                    out=base / f"{mname}-{rname}", module=model, size=a.size,
                    quant=tuple(a.quant.split(",")), calib=calib, num_calib=20,
                    rewrite=rewrite, recipe=recipe, force=True,
                    fp32_tol=1e-3 if rewrite else float("inf")))
                for note in res.report["warnings"]:
                    print(f"warning: {note}", flush=True)
                print(f"\n-- {rname}: export {time.time() - t0:.0f} s "
                      f"(GMACs true {res.report['macs']['gmacs_true']:.2f})", flush=True)
                print(res.table, flush=True)
                xs = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
                print(f"{'artifact':<8} {'ms 1 thr':>9} {'ms 2 thr':>9}", flush=True)
                print(f"{'ORT':<8} {_ort_ms(res.onnx, x, 1, a.runs):>9.1f} "
                      f"{_ort_ms(res.onnx, x, 2, a.runs):>9.1f}", flush=True)
                for v, f in res.files.items():
                    l1 = latency_ms(f, xs, 1, a.runs)
                    l2 = latency_ms(f, xs, 2, a.runs)
                    print(f"{v:<8} {l1:>9.1f} {l2:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
