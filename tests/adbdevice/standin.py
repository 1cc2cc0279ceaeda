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
import threading
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


#: flags each stand-in knows; any other is reported as the real tools do (and ignored)
_CLASSIC_FLAGS = {
    "graph", "num_threads", "num_runs", "warmup_runs", "min_secs", "warmup_min_secs", "max_secs",
    "use_xnnpack", "use_gpu", "use_nnapi", "nnapi_accelerator_name", "enable_op_profiling",
    "gpu_precision_loss_allowed", "xnnpack_force_fp16", "nnapi_allow_fp16",
    "report_peak_memory_footprint", "op_profiling_output_mode",
}
_COMPILED_FLAGS = {
    "graph", "num_threads", "num_runs", "warmup_runs", "min_secs", "warmup_min_secs", "max_secs",
    "use_cpu", "use_gpu", "use_npu", "use_profiler", "allow_fp16", "require_full_delegation",
    "dispatch_library_path", "compiler_plugin_library_path",
}
_PROVIDER = {"gpu": "GPU", "nnapi": "NNAPI", "xnnpack": "XNNPACK"}


def _unknown(args: list[str], known: set[str]) -> list[str]:
    return [a for a in args if not (a.startswith("--") and a[2:].split("=", 1)[0] in known)]


def _delegate(f: dict[str, str]) -> str:
    for d in ("gpu", "nnapi", "npu"):
        if _truthy(f.get(f"use_{d}")):
            return d
    return "xnnpack" if f.get("use_xnnpack", "true").lower() != "false" else "cpu"


def run_benchmark(args: list[str], shell: DeviceShell, killed: threading.Event,
                  tool: str = "classic") -> tuple[bytes, bytes, int]:
    """Run like ``benchmark_model ARGS`` on the device; returns (stdout, stderr, exit status).
    ``killed`` is set when ``kill`` reaches this process (a hung run ends with status 137)."""
    dev = shell.dev
    f = _flags(args)
    log: list[str] = []
    if dev.bench_garbage:
        return b"Hello from a program that is not benchmark_model\nbye\n", b"", 0
    log.append("INFO: STARTING!")
    unknown = _unknown(args, _CLASSIC_FLAGS if tool == "classic" else _COMPILED_FLAGS)
    if unknown:
        log.append(f"WARN: Unconsumed cmdline flags: {' '.join(unknown)}")
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
    if dev.hang_s is not None and dev.hang_graph in (graph or "") and killed.wait(dev.hang_s):
        return b"", ("\n".join(log) + "\n").encode(), 137  # SIGKILL
    delegate = _delegate(f)
    if dev.fail_delegate is not None and dev.fail_delegate == delegate:
        log.append(f"ERROR: Failed to apply {_PROVIDER.get(delegate, delegate.upper())} "
                   "delegate.")
        log.append("ERROR: Benchmarking failed.")
        return b"", ("\n".join(log) + "\n").encode(), 1
    if tool == "compiled":
        return b"", ("\n".join(log + _compiled(f, model, dev.gpu)) + "\n").encode(), 0
    return b"", ("\n".join(log + _classic(f, model, graph or "")) + "\n").encode(), 0


def _open(model: object, threads: int, use_xnnpack: bool) -> tuple[object, float]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    t0 = time.perf_counter()
    resolver = OpResolverType.AUTO if use_xnnpack else (
        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp = Interpreter(str(model), num_threads=None if threads < 1 else threads,
                         experimental_op_resolver_type=resolver)
    interp.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], rng.uniform(-1, 1, d["shape"]).astype(d["dtype"]))
    return interp, (time.perf_counter() - t0) * 1e6


def _timed(interp: object, n: int) -> list[float]:
    out = []
    for _ in range(max(n, 1)):
        t = time.perf_counter()
        interp.invoke()  # type: ignore[attr-defined]
        out.append((time.perf_counter() - t) * 1e6)
    return out


def _classic(f: dict[str, str], model: object, graph: str) -> list[str]:
    """The classic tool's lines after the model loads (toolchain.md §3.1)."""
    log: list[str] = []

    def info(msg: str) -> None:
        log.append(f"INFO: {msg}")

    threads = int(f.get("num_threads", "-1"))
    use_xnnpack = f.get("use_xnnpack", "true").lower() != "false"
    info(f"Num threads: [{threads}]")
    info(f"Graph: [{graph}]")
    info(f"Use xnnpack: [{int(use_xnnpack)}]")
    info(f"Loaded model {graph}")
    if _truthy(f.get("use_gpu")):
        log.append("WARNING: GPU acceleration is unsupported on this platform.")
    if _truthy(f.get("use_nnapi")):
        log.append("WARNING: NNAPI acceleration is unsupported on this platform.")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    interp, init_us = _open(model, threads, use_xnnpack)
    if use_xnnpack:
        info("Created TensorFlow Lite XNNPACK delegate for CPU.")
        done, total, parts = _coverage(interp)
        info(f"Replacing {done} out of {total} node(s) with delegate (TfLiteXNNPackDelegate) "
             f"node, yielding {parts} partitions for the whole graph.")
    info(f"Initialized session in {init_us / 1e3:.3f}ms.")
    warm_n, runs_n = int(f.get("warmup_runs", "1")), int(f.get("num_runs", "50"))
    info(f"Running benchmark for at least {warm_n} iterations and at least "
         f"{f.get('warmup_min_secs', '0.5')} seconds but terminate if exceeding 150 seconds.")
    warm = _timed(interp, warm_n)
    info(_stat_line(warm))
    log.append("")
    info(f"Running benchmark for at least {runs_n} iterations and at least "
         f"{f.get('min_secs', '1')} seconds but terminate if exceeding 150 seconds.")
    runs = _timed(interp, runs_n)
    info(_stat_line(runs))
    log.append("")
    info(f"Inference timings in us: Init: {_g(init_us)}, First inference: {_g(warm[0])}, "
         f"Warmup (avg): {_g(statistics.fmean(warm))}, Inference (avg): "
         f"{_g(statistics.fmean(runs))}")
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info(f"Memory footprint delta from the start of the tool (MB): init={max(rss1 - rss0, 0):g} "
         f"overall={max(rss1 - rss0, 0):g}")
    if _truthy(f.get("enable_op_profiling")):
        log += _profile(interp, statistics.fmean(runs) / 1e3, init_us / 1e3)
    return log


def _field(v: object, width: int) -> str:
    return "\t" + (f"{v:.3f}" if isinstance(v, float) else str(v)).rjust(width)


def _run_order(rows: list[tuple[str, float, str]], total_ms: float) -> list[str]:
    """A "Run Order" table as ``tsl/util/stats_calculator.cc`` prints it (newer layout: node
    type 40 wide, no [start] column; every field a tab then right-aligned)."""
    head = (_field("[node type]", 40) + _field("[first]", 9) + _field("[avg ms]", 9)
            + _field("[%]", 8) + _field("[cdf%]", 8) + _field("[mem KB]", 10)
            + _field("[times called]", 9) + "\t[Name]")
    out = ["============================== Run Order ==============================", head]
    cdf = 0.0
    for kind, ms, name in rows:
        pct = 100.0 * ms / max(total_ms, 1e-9)
        cdf += pct
        out.append(_field(kind, 40) + _field(ms, 9) + _field(ms, 9) + _field(pct, 7) + "%"
                   + _field(cdf, 7) + "%" + _field(0.0, 10) + _field(1, 9) + f"\t{name}")
    return out


def _profile(interp: object, avg_ms: float, init_ms: float) -> list[str]:
    """The op-profiling block: init table, per-op table of the runs (each op's share of the
    measured average in proportion to its output size: a stand-in, not a profiler), the node
    type summary and the closing timings, as the classic tool prints them."""
    ops = [o for o in interp._get_ops_details()  # type: ignore[attr-defined]
           if o["op_name"] != "DELEGATE"]
    tensors = {t["index"]: t for t in interp.get_tensor_details()}  # type: ignore[attr-defined]
    sizes = [max(int(np.prod(tensors[o["outputs"][0]]["shape"])), 1) for o in ops]
    total = sum(sizes)
    rows = [(o["op_name"], avg_ms * s / total,
             f"[{tensors[o['outputs'][0]]['name']}]:{o['index']}")
            for o, s in zip(ops, sizes, strict=True)]
    out = ["INFO: Profiling Info for Benchmark Initialization:",
           *_run_order([("AllocateTensors", init_ms, "AllocateTensors/0")], init_ms), "",
           "Operator-wise Profiling Info for Regular Benchmark Runs:",
           *_run_order(rows, avg_ms), "",
           "============================== Top by Computation Time "
           "==============================",
           *_run_order(sorted(rows, key=lambda r: -r[1])[:10], avg_ms)[1:], "",
           f"Number of nodes executed: {len(rows)}",
           "============================== Summary by node type "
           "=============================="]
    out.append(_field("[Node type]", 40) + _field("[count]", 9) + _field("[avg ms]", 10)
               + _field("[avg %]", 11) + _field("[cdf %]", 11) + _field("[mem KB]", 10)
               + _field("[times called]", 10))
    kinds: dict[str, list[float]] = {}
    for kind, ms, _ in rows:
        kinds.setdefault(kind, []).append(ms)
    cdf = 0.0
    for kind, mss in sorted(kinds.items(), key=lambda kv: -sum(kv[1])):
        pct = 100.0 * sum(mss) / max(avg_ms, 1e-9)
        cdf += pct
        out.append(_field(kind, 40) + _field(len(mss), 9) + _field(sum(mss), 10)
                   + _field(pct, 10) + "%" + _field(cdf, 10) + "%" + _field(0.0, 10)
                   + _field(len(mss), 10))
    out += ["", f"Timings (microseconds): count=1 curr={int(avg_ms * 1e3)}",
            "Memory (bytes): count=0", f"{len(rows)} nodes observed", ""]
    return out


def _compiled(f: dict[str, str], model: object, gpu: bool) -> list[str]:
    """The LiteRT CompiledModel tool's lines (``litert/tools/benchmark_litert_model.h``): the
    LiteRT logger's ``INFO: [file:line] `` prefix, the accelerator registry's lines, and the
    results block in ms. It prints no delegation count."""
    log = ["INFO: [cpu_registry.cc:51] XNNPACK CPU accelerator registered."]
    if _truthy(f.get("use_gpu")):
        log.append("INFO: [gpu_registry.cc:83] Statically linked GPU accelerator registered."
                   if gpu else
                   "WARNING: [gpu_registry.cc:91] GPU accelerator could not be loaded and "
                   "registered.")
    interp, init_us = _open(model, int(f.get("num_threads", "-1")), True)
    warm = _timed(interp, int(f.get("warmup_runs", "1")))
    runs = np.asarray(_timed(interp, int(f.get("num_runs", "50")))) / 1e3
    h = "INFO: [benchmark_litert_model.h:{}] "
    return [*log,
        h.format(90), "========== BENCHMARK RESULTS ==========",
        h.format(94) + f"Model initialization: {init_us / 1e3:.2f} ms",
        h.format(96) + f"Warmup (first):       {warm[0] / 1e3:.2f} ms",
        h.format(98) + f"Warmup (avg):         {statistics.fmean(warm) / 1e3:.2f} ms "
                       f"({len(warm)} runs)",
        h.format(100) + f"Inference (avg):      {runs.mean():.2f} ms ({len(runs)} runs)",
        h.format(102) + f"Inference (min):      {runs.min():.2f} ms",
        h.format(104) + f"Inference (max):      {runs.max():.2f} ms",
        h.format(108) + f"Inference (std):      {runs.std():.2f}",
        h.format(112) + "Throughput:           12.34 MB/s",
        h.format(124), "Memory Usage:",
        h.format(126) + "Init footprint:       1.20 MB",
        h.format(128) + "Overall footprint:    2.40 MB",
        h.format(132) + "Peak memory:          3.10 MB",
        h.format(134) + "======================================"]
