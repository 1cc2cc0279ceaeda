"""A host-side stand-in for LiteRT's classic ``benchmark_model``, run by the emulated device.

It times the pushed .tflite with the LiteRT interpreter and prints what the classic tool prints
(toolchain.md §3.1), to stderr, with the ``INFO:`` prefix of newer builds: the parameter echo, the
XNNPACK delegate line and the ``Replacing X out of Y node(s)`` coverage line (computed from the
interpreter's real partitioning), the warm-up and inference ``count= first= ... median= p95=`` stat
lines in microseconds, ``Inference timings in us: ...`` (large values in C++ ``%g`` style, e.g.
``1.24027e+06``), and the memory lines. GPU and NNAPI print the warnings the real tool prints on a
platform without them and run on the CPU, so the harness's fallback flagging is exercised.
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tests.adbdevice.shell import DeviceShell


def _flags(args: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for a in args:
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            out[k] = v
        elif a.startswith("--"):
            out[a[2:]] = "true"
    return out


def _truthy(v: str | None) -> bool:
    return v is not None and v.lower() in ("1", "true", "yes")


def _g(v: float) -> str:
    """C++ ostream default formatting (6 significant digits), as the real tool prints."""
    return f"{v:g}"


def _stat_line(us: list[float]) -> str:
    arr = np.asarray(us)
    return (
        f"count={len(us)} first={int(us[0])} curr={int(us[-1])} min={int(arr.min())} "
        f"max={int(arr.max())} avg={_g(float(arr.mean()))} std={int(arr.std())} "
        f"p5={int(np.percentile(arr, 5))} median={int(np.median(arr))} "
        f"p95={int(np.percentile(arr, 95))}"
    )


def _coverage(interp: object) -> tuple[int, int, int]:
    """(nodes delegated, nodes in the graph, delegate partitions) from the interpreter's nodes.

    Each DELEGATE node replaced the original nodes between its inputs and outputs: walk back
    from its outputs through producers until reaching its inputs.
    """
    ops = interp._get_ops_details()  # type: ignore[attr-defined]
    orig = [o for o in ops if o["op_name"] != "DELEGATE"]
    dels = [o for o in ops if o["op_name"] == "DELEGATE"]
    producer = {int(t): o["index"] for o in orig for t in o["outputs"]}
    by_index = {o["index"]: o for o in orig}
    replaced: set[int] = set()
    for d in dels:
        stop = {int(t) for t in d["inputs"]}
        todo = [int(t) for t in d["outputs"]]
        while todo:
            t = todo.pop()
            if t in stop or t not in producer or producer[t] in replaced:
                continue
            replaced.add(producer[t])
            todo += [int(x) for x in by_index[producer[t]]["inputs"] if x >= 0]
    return len(replaced), len(orig), len(dels)


def run_benchmark(args: list[str], shell: DeviceShell) -> tuple[bytes, bytes, int]:
    """Run like ``benchmark_model ARGS`` on the device; returns (stdout, stderr, exit status)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    dev = shell.dev
    f = _flags(args)
    log: list[str] = []

    def info(msg: str) -> None:
        log.append(f"INFO: {msg}")

    if dev.bench_garbage:
        return b"Hello from a program that is not benchmark_model\nbye\n", b"", 0
    threads = int(f.get("num_threads", "-1"))
    use_xnnpack = f.get("use_xnnpack", "true").lower() != "false"
    info("STARTING!")
    info("Log parameter values verbosely: [0]")
    info(f"Min num runs: [{f.get('num_runs', '50')}]")
    info(f"Num threads: [{threads}]")
    info(f"Graph: [{f.get('graph', '')}]")
    info(f"Use xnnpack: [{int(use_xnnpack)}]")
    if _truthy(f.get("use_gpu")):
        info("Use gpu: [1]")
    if _truthy(f.get("use_nnapi")):
        info("Use nnapi: [1]")
    if dev.bench_exit is not None:
        log.append("ERROR: Failed to allocate tensors!")
        log.append("ERROR: Benchmarking failed.")
        return b"", ("\n".join(log) + "\n").encode(), dev.bench_exit
    graph = f.get("graph")
    model = shell.host_path(graph) if graph else None
    if model is None or not model.is_file():
        log.append(f"ERROR: Could not open '{graph}'.")
        log.append("ERROR: Benchmarking failed.")
        return b"", ("\n".join(log) + "\n").encode(), 1
    info(f"Loaded model {graph}")
    if _truthy(f.get("use_gpu")):
        log.append("WARNING: GPU acceleration is unsupported on this platform.")
    if _truthy(f.get("use_nnapi")):
        log.append("WARNING: NNAPI acceleration is unsupported on this platform.")
    t0 = time.perf_counter()
    resolver = OpResolverType.AUTO if use_xnnpack else (
        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    interp = Interpreter(
        str(model), num_threads=None if threads < 1 else threads,
        experimental_op_resolver_type=resolver,
    )
    interp.allocate_tensors()
    if use_xnnpack:
        info("Created TensorFlow Lite XNNPACK delegate for CPU.")
        done, total, parts = _coverage(interp)
        info(
            f"Replacing {done} out of {total} node(s) with delegate (TfLiteXNNPackDelegate) "
            f"node, yielding {parts} partitions for the whole graph."
        )
    info(f"The input model file size (MB): {model.stat().st_size / 1e6:g}")
    init_us = (time.perf_counter() - t0) * 1e6
    info(f"Initialized session in {init_us / 1e3:.3f}ms.")
    rng = np.random.default_rng(0)
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], rng.uniform(-1, 1, d["shape"]).astype(d["dtype"]))

    def timed(n: int) -> list[float]:
        out = []
        for _ in range(max(n, 1)):
            t = time.perf_counter()
            interp.invoke()
            out.append((time.perf_counter() - t) * 1e6)
        return out

    warm_n = int(f.get("warmup_runs", "1"))
    runs_n = int(f.get("num_runs", "50"))
    info(
        f"Running benchmark for at least {warm_n} iterations and at least "
        f"{f.get('warmup_min_secs', '0.5')} seconds but terminate if exceeding 150 seconds."
    )
    warm = timed(warm_n)
    info(_stat_line(warm))
    log.append("")
    info(
        f"Running benchmark for at least {runs_n} iterations and at least "
        f"{f.get('min_secs', '1')} seconds but terminate if exceeding 150 seconds."
    )
    runs = timed(runs_n)
    info(_stat_line(runs))
    log.append("")
    info(
        f"Inference timings in us: Init: {_g(init_us)}, First inference: {_g(warm[0])}, "
        f"Warmup (avg): {_g(statistics.fmean(warm))}, Inference (avg): {_g(statistics.fmean(runs))}"
    )
    info(
        "Note: as the benchmark tool itself affects memory footprint, the following is only "
        "APPROXIMATE to the actual memory footprint of the model at runtime. Take the "
        "information at your discretion."
    )
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info(
        f"Memory footprint delta from the start of the tool (MB): init={max(rss1 - rss0, 0):g} "
        f"overall={max(rss1 - rss0, 0):g}"
    )
    return b"", ("\n".join(log) + "\n").encode(), 0
