"""Host CPU latency: PyTorch eager, ONNX Runtime and the LiteRT interpreter, measured honestly.

Honesty rules, and why:

* **One input for every model and backend** (seeded, uniform in [-1, 1]; NHWC models get the same
  values transposed), so no backend is timed on easier data.
* **Warm-up runs are excluded** (first runs pay for allocation, weight packing, thread start-up).
* **Interleaved runs** (A B A B ...): the models being compared are timed in alternation inside one
  backend/thread setting, so frequency drift, a neighbour's load burst or thermal change hits both
  alike instead of biasing whichever ran second. This matters on a shared 2-core machine.
* **Robust statistics**: median (reported), p90, min, mean, std over all timed runs.
* **A physical limit**: a GEMM probe (``torch.matmul`` of two 1024² fp32 matrices, same thread
  count, same session) measures what this CPU reaches on the friendliest workload; results are
  reported as achieved GMAC/s (true MACs ÷ median time) and as a fraction of that peak.
* ORT runs sequentially with ``intra_op_num_threads`` set and spinning off: a spinning idle pool of
  model A would steal a core from model B's run when they are interleaved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dmad.benchmark.machine import torch_threads
from dmad.benchmark.model_info import ModelInfo
from dmad.benchmark.stats import ORDERS
from dmad.compress.errors import DmadError


def make_input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """The one input every model/backend sees: NCHW float32 uniform in [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32)


@dataclasses.dataclass
class Target:
    """One model on one backend: the file actually run may be a temporary ONNX export."""

    info: ModelInfo
    backend: str
    run_path: Path
    label: str


def _torch_runner(t: Target, x: np.ndarray, threads: int) -> Callable[[], object]:
    import torch

    from dmad.compress.checkpoint import load_model

    model, _ = load_model(t.run_path)
    xt = torch.from_numpy(x)

    def run() -> object:
        with torch.inference_mode():
            return model(xt)

    return run


def _ort_runner(t: Target, x: np.ndarray, threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(t.run_path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise DmadError(f"{t.run_path}: ONNX Runtime cannot load it ({str(exc)[:200]})") from None
    name = sess.get_inputs()[0].name
    feed = {name: x}
    return lambda: sess.run(None, feed)


def _tflite_runner(t: Target, x: np.ndarray, threads: int) -> Callable[[], object]:
    from dmad.export.parity import make_interpreter

    it = make_interpreter(t.run_path, threads, delegate=t.backend == "tflite-xnnpack")
    d = it.get_input_details()[0]
    xx = x
    if tuple(d["shape"]) != x.shape:
        xx = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    if np.dtype(d["dtype"]) in (np.int8, np.uint8):
        scale, zp = d["quantization"]
        info = np.iinfo(d["dtype"])
        xx = np.clip(np.round(xx / scale + zp), info.min, info.max).astype(d["dtype"])
    it.set_tensor(d["index"], xx)
    return it.invoke


RUNNERS: dict[str, Callable[[Target, np.ndarray, int], Callable[[], object]]] = {
    "torch": _torch_runner,
    "ort": _ort_runner,
    "tflite-xnnpack": _tflite_runner,
    "tflite-builtin": _tflite_runner,
}


def stats_ms(samples: list[float]) -> dict[str, float]:
    arr = np.asarray(samples)
    return {
        "median_ms": float(np.median(arr)),
        "p90_ms": float(np.percentile(arr, 90)),
        "min_ms": float(arr.min()),
        "mean_ms": float(arr.mean()),
        "std_ms": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
    }


def _timed(f: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    f()
    return (time.perf_counter() - t0) * 1e3


def time_blocked(files: list[tuple[Path, tuple[int, ...]]], backend: str, threads: int,
                 runs: int, warmup: int, rounds: int = 1, seed: int = 0, timing: str = "median"
                 ) -> list[list[float]]:
    """The median (``timing="fastest"``: the fastest) of each file's runs in each of
    ``rounds`` passes over all of them, in milliseconds; within a
    pass each file runs blocked (``warmup``, then ``runs`` timed runs), with the runners, input
    and timer of :func:`run_interleaved`. Passes spread a drift of the machine's speed over
    every file alike (``dmad latency-table`` times hundreds of small models and compares their
    sums with whole models). Needs no :class:`ModelInfo`."""
    with torch_threads(threads):
        fns = []
        for path, shape in files:
            t = Target(info=None, backend=backend, run_path=Path(path),  # type: ignore[arg-type]
                       label=Path(path).name)
            fns.append(RUNNERS[backend](t, make_input(shape, seed), threads))
        out: list[list[float]] = [[] for _ in files]
        for _ in range(rounds):
            for i, f in enumerate(fns):
                for _ in range(warmup):
                    f()
                ms = [_timed(f) for _ in range(runs)]
                out[i].append(float(np.min(ms) if timing == "fastest" else np.median(ms)))
        return out


def run_interleaved(
    targets: list[Target], threads: int, runs: int, warmup: int, x_for: Callable[[Target],
                                                                            np.ndarray],
    order: str = "interleaved",
) -> list[dict[str, Any]]:
    """Time ``targets`` (one backend, one thread count).

    ``interleaved``: in alternation, A B A B … (warm-up runs interleaved too, then excluded);
    round i of every target is then a pair measured at the same moment. ``blocked``: each
    target's warm-up and runs back to back, A A … B B …, as an app runs one model (its weights
    stay in the caches). Each result carries its raw samples and the order.
    """
    if order not in ORDERS:
        raise DmadError(f"--order: {order!r} is not one of {', '.join(ORDERS)}")
    with torch_threads(threads):
        fns = [RUNNERS[t.backend](t, x_for(t), threads) for t in targets]
        samples: list[list[float]] = [[] for _ in targets]
        if order == "interleaved":
            for _ in range(warmup):
                for f in fns:
                    f()
            for _ in range(runs):
                for i, f in enumerate(fns):
                    samples[i].append(_timed(f))
        else:
            for i, f in enumerate(fns):
                for _ in range(warmup):
                    f()
                samples[i] = [_timed(f) for _ in range(runs)]
    out = []
    for t, s in zip(targets, samples, strict=True):
        st = stats_ms(s)
        gm = t.info.gmacs_true
        out.append(
            {
                "platform": "host",
                "model": t.label,
                "path": str(t.info.path),
                "backend": t.backend,
                "precision": t.info.precision,
                "threads": threads,
                "order": order,
                "runs": runs,
                "warmup": warmup,
                **st,
                "gmacs_true": gm,
                "gmacs_per_s": gm / (st["median_ms"] / 1e3) if gm else None,
                "samples_ms": [round(v, 4) for v in s],
            }
        )
    return out


def export_onnx_temp(pt: Path, shape: tuple[int, ...], workdir: Path) -> Path:
    """Export a dmad model to ONNX (opset 17, dynamic H/W) so ORT can time a checkpoint
    without the export stage; the file lives in ``workdir`` and is deleted with it."""
    import torch

    from dmad.compress.checkpoint import load_model

    model, _ = load_model(pt)
    out = workdir / f"{pt.stem}.onnx"
    with warnings_silenced():
        torch.onnx.export(
            model, (torch.zeros(shape),), str(out), opset_version=17, input_names=["input"],
            output_names=["output"], dynamo=False,
        )
    return out


@contextlib.contextmanager
def warnings_silenced() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
