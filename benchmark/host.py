"""Which backends time which files, grouped for the comparison: the host benchmark's plan.

The timing itself (and its honesty rules) is :mod:`dmad.benchmark.runners`; what a file is,
:mod:`dmad.benchmark.model_info`; the machine, :mod:`dmad.benchmark.machine`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dmad.benchmark.machine import gemm_peak, machine_info
from dmad.benchmark.model_info import (
    ModelInfo,
    count_onnx,
    count_tflite,
    inspect_model,
)
from dmad.benchmark.runners import (
    Target,
    export_onnx_temp,
    make_input,
    run_interleaved,
    stats_ms,
)
from dmad.compress.errors import DmadError

BACKENDS = ("torch", "ort", "tflite-xnnpack", "tflite-builtin")
BACKEND_ALIASES = {"tflite": ("tflite-xnnpack", "tflite-builtin"), "litert": ("tflite-xnnpack",
                   "tflite-builtin"), "onnxruntime": ("ort",), "pytorch": ("torch",)}


def expand_backends(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        n = n.strip().lower()
        if not n:
            continue
        for b in BACKEND_ALIASES.get(n, (n,)):
            if b not in BACKENDS:
                raise DmadError(
                    f"--backends: unknown backend {n!r} (choose from torch, ort, tflite, "
                    "tflite-xnnpack, tflite-builtin)"
                )
            if b not in out:
                out.append(b)
    if not out:
        raise DmadError("--backends: no backend given")
    return out


def applicable(info: ModelInfo, backend: str) -> bool:
    return {"torch": info.kind == "torch", "ort": info.kind in ("onnx", "torch"),
            "tflite-xnnpack": info.kind == "tflite",
            "tflite-builtin": info.kind == "tflite"}[backend]


def bench_groups(
    groups: list[list[tuple[ModelInfo, str, str]]],
    threads: list[int],
    runs: int,
    warmup: int,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    orders: tuple[str, ...] = ("interleaved",),
) -> dict[str, Any]:
    """Benchmark groups of (model, backend, label); each group is timed per thread count in
    each of ``orders`` (:func:`run_interleaved`).

    Returns {"machine", "peak", "results", "models"}. A .pt asked to run on ORT is exported to a
    temporary ONNX first. The GEMM probe runs once per thread count in this same session.
    """
    if runs < 1 or warmup < 0:
        raise DmadError(f"--runs must be >= 1 and --warmup >= 0 (got {runs}, {warmup})")
    if not threads or min(threads) < 1:
        raise DmadError(f"--threads: thread counts must be >= 1, got {threads}")
    say = progress or (lambda s: None)
    machine = machine_info()
    results: list[dict[str, Any]] = []
    peak: dict[str, Any] = {}
    inputs: dict[tuple[int, ...], np.ndarray] = {}

    def x_for(t: Target) -> np.ndarray:
        s = t.info.input_shape
        if s not in inputs:
            inputs[s] = make_input(s, seed)
        return inputs[s]

    total, done, t0 = len(threads) * len(groups) * len(orders), 0, time.perf_counter()

    def eta() -> str:
        """``[k/N]`` and the time left, from the mean time of the settings done so far."""
        if not done:
            return f"[1/{total}]"
        left = (time.perf_counter() - t0) / done * (total - done)
        return f"[{done + 1}/{total}, about {left:.0f} s left]"

    with tempfile.TemporaryDirectory(prefix="dmad-bench-") as tmp:
        exported: dict[Path, Path] = {}
        for th in threads:
            say(f"GEMM peak probe, {th} thread(s)")
            peak[str(th)] = gemm_peak(th)
            for group in groups:
                targets = []
                for info, backend, label in group:
                    run_path = info.path
                    if backend == "ort" and info.kind == "torch":
                        if info.path not in exported:
                            say(f"exporting {info.path.name} to ONNX for ORT")
                            exported[info.path] = export_onnx_temp(info.path, info.input_shape,
                                                                   Path(tmp))
                        run_path = exported[info.path]
                    targets.append(Target(info, backend, run_path, label))
                for order in orders:
                    say(f"{eta()} {group[0][1]}, {th} thread(s), {order}: "
                        + " / ".join(t.label for t in targets))
                    done += 1
                    for r in run_interleaved(targets, th, runs, warmup, x_for, order):
                        pk = peak[str(th)]["gmacs_per_s"]
                        r["peak_gmacs_per_s"] = pk
                        r["efficiency"] = r["gmacs_per_s"] / pk if r["gmacs_per_s"] else None
                        results.append(r)
    machine["load_avg_after"] = machine_info()["load_avg"]
    flag_oversubscription(results)
    notes = []
    loads = [x[0] for x in (machine["load_avg"], machine["load_avg_after"]) if x]
    if loads and max(loads) >= machine["usable_cores"]:
        notes.append(
            f"The machine was busy (1-min load average up to {max(loads):.1f} on "
            f"{machine['usable_cores']} cores): other processes competed for the CPU, so "
            "absolute latencies are unreliable; ratios between interleaved models less so."
        )
    return {"machine": machine, "peak": peak, "results": results, "notes": notes}


def flag_oversubscription(results: list[dict[str, Any]]) -> None:
    """Flag a multi-thread result that is much slower than the same model on one thread.

    More threads never make a kernel 1.5× slower on idle cores; when it happens the cores were
    taken (another process, or OpenMP threads spin-waiting for a descheduled peer), and the
    number measures the machine's load, not the model. Said next to the number, not hidden.
    """
    single = {(r["path"], r["backend"]): r["median_ms"] for r in results if r["threads"] == 1}
    for r in results:
        r.setdefault("flags", [])
        base = single.get((r["path"], r["backend"]))
        if r["threads"] > 1 and base and r["median_ms"] > 1.5 * base:
            r["flags"].append(
                f"{r['median_ms'] / base:.1f}x slower with {r['threads']} threads than with 1: "
                "cores oversubscribed (busy machine, or OpenMP spin-waiting; try "
                "OMP_WAIT_POLICY=PASSIVE or an idle machine)"
            )


__all__ = [
    "BACKENDS",
    "ModelInfo",
    "applicable",
    "bench_groups",
    "count_onnx",
    "count_tflite",
    "expand_backends",
    "gemm_peak",
    "inspect_model",
    "machine_info",
    "make_input",
    "stats_ms",
]
