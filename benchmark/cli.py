"""``dmad bench`` / ``dmad compare``: parse flags, build the config, call one function.

Errors a user can cause come back as :class:`DmadError` (one line, exit 2, printed by
``compress.cli.main``); list flags take comma-separated values (``--threads 1,2``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compress.errors import DmadError

BINARY_HELP = (
    "LiteRT/TFLite benchmark_model built for the phone (Android arm64). Prebuilt: "
    "https://storage.googleapis.com/tensorflow-nightly-public/prod/tensorflow/release/lite/tools/"
    "nightly/latest/android_aarch64_benchmark_model (classic) or https://storage.googleapis.com/"
    "litert/binaries/latest/android_arm64/benchmark_model (--tool compiled)"
)


def _csv(name: str, cast: type = str):  # type: ignore[no-untyped-def]
    def parse(text: str) -> tuple:  # type: ignore[type-arg]
        try:
            return tuple(cast(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected comma-separated values") from None

    return parse


def _progress(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="folder for the results")
    p.add_argument("--backends", type=_csv("--backends"), default=("torch", "ort", "tflite"),
                   help="host backends: torch, ort, tflite (= tflite-xnnpack and "
                        "tflite-builtin), default: all")
    p.add_argument("--threads", type=_csv("--threads", int), default=(1, 2),
                   help="thread counts, e.g. 1,2 (default)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per setting (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up runs (default 3)")
    p.add_argument("--size", type=int, help="image size for models with a dynamic input "
                                            "(default: the models' own, else 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shared random input")


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmark.api import BenchConfig, bench

    cfg = BenchConfig(
        models=list(args.models), out=args.out, backends=args.backends, threads=args.threads,
        runs=args.runs, warmup=args.warmup, size=args.size, seed=args.seed,
        host=not args.no_host, android=args.android, serial=args.serial,
        delegates=args.delegate, benchmark_binary=args.benchmark_binary, taskset=args.taskset,
        cooldown_s=args.cooldown, op_profiling=args.op_profiling, tool=args.tool, adb=args.adb,
    )
    out = bench(cfg, _progress)
    print(f"results in {out}/results.md (and results.json, results.csv)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from benchmark.api import CompareConfig, compare
    from benchmark.report import headline

    cfg = CompareConfig(
        full=args.full, compressed=args.compressed, out=args.out, backends=args.backends,
        threads=args.threads, runs=args.runs, warmup=args.warmup, size=args.size,
        seed=args.seed, grid=args.grid,
    )
    out = compare(cfg, _progress)
    import json

    rows = json.loads((out / "results.json").read_text())["comparison"]
    print(headline(rows)[0])
    print(f"report in {out}/report.md (and report.html, latency.png, results.json)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the benchmark subcommands to the ``dmad`` parser."""
    s = sub.add_parser(
        "bench", help="measure latency on this CPU (PyTorch, ONNX Runtime, TFLite) or a phone",
        description="Latency of .pt / .onnx / .tflite models: median, p90, min, std over "
                    "interleaved runs, GMAC/s and efficiency against a GEMM peak probe. "
                    "--android runs benchmark_model on a phone over adb.",
    )
    s.add_argument("models", nargs="+", type=Path, help=".pt dmad model, .onnx or .tflite files")
    _common(s)
    a = s.add_argument_group("Android over adb")
    a.add_argument("--android", action="store_true", help="also run the .tflite models on a phone")
    a.add_argument("--no-host", action="store_true", help="skip the host backends")
    a.add_argument("--serial", help="device serial (when several are attached)")
    a.add_argument("--delegate", type=_csv("--delegate"), default=("cpu", "xnnpack"),
                   help="cpu,xnnpack,gpu,nnapi (nnapi is deprecated since Android 15) or npu "
                        "(--tool compiled); default cpu,xnnpack")
    a.add_argument("--benchmark-binary", type=Path, help=BINARY_HELP)
    a.add_argument("--tool", choices=("classic", "compiled"), default="classic",
                   help="which benchmark_model the binary is (default classic)")
    a.add_argument("--taskset", help="hex CPU mask to pin the benchmark to, e.g. f0 (big cores)")
    a.add_argument("--cooldown", type=float, default=10.0,
                   help="seconds to rest between phone runs (default 10)")
    a.add_argument("--op-profiling", action="store_true",
                   help="per-op times on the phone (--enable_op_profiling)")
    a.add_argument("--adb", help="adb executable (default: $ADB, $PATH, adbutils' bundled one)")
    s.set_defaults(func=cmd_bench)

    c = sub.add_parser(
        "compare", help="report: full vs compressed model (latency, MACs, size, chart)",
        description="Benchmark a full and a compressed model (files, or export folders holding "
                    ".pt/.onnx/.tflite) interleaved, and write report.md/report.html with a "
                    "chart and the headline speedup.",
    )
    c.add_argument("--full", type=Path, required=True, help="full model file or export folder")
    c.add_argument("--compressed", type=Path, required=True,
                   help="compressed model file or export folder")
    c.add_argument("--grid", type=Path, help="image grid to include (default: grid.png or "
                                             "eval/grid.png next to the compressed model)")
    _common(c)
    c.set_defaults(func=cmd_compare)


__all__ = ["DmadError", "register"]
