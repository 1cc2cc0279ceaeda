"""``dmad bench`` / ``dmad compare``: parse flags, build the config, call one function.

Errors a user can cause come back as :class:`DmadError` (one line, exit 2, printed by
``dmad.cli.main``); list flags take comma-separated values (``--threads 1,2``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from dmad.compress.errors import DmadError

BINARY_HELP = (
    "Prebuilt: "
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


def _h(cls: type, name: str, default: object = None) -> str:
    """The flag's help: its config field's help text, plus the default when there is one."""
    from dmad.compress.config import field_help

    text = field_help(cls, name)
    text = text if default is None else f"{text} (default: {default})"
    return text.replace("%", "%%")


def _common(p: argparse.ArgumentParser, cls: type) -> None:
    p.add_argument("--out", type=Path, required=True, help=_h(cls, "out"))
    p.add_argument("--backends", type=_csv("--backends"), default=("torch", "ort", "tflite"),
                   help=_h(cls, "backends", "all"))
    p.add_argument("--threads", type=_csv("--threads", int), default=(1, 2),
                   help=_h(cls, "threads", "1,2"))
    p.add_argument("--runs", type=int, default=20, help=_h(cls, "runs", 20))
    p.add_argument("--warmup", type=int, default=3, help=_h(cls, "warmup", 3))
    p.add_argument("--size", type=int, help=_h(cls, "size"))
    p.add_argument("--seed", type=int, default=0, help=_h(cls, "seed", 0))
    p.add_argument("--force", action="store_true", help=_h(cls, "force"))
    from dmad.benchmark.stats import ORDER_CHOICES

    default = next(f.default for f in dataclasses.fields(cls) if f.name == "order")
    p.add_argument("--order", choices=ORDER_CHOICES, default=default,
                   help=_h(cls, "order", default))


def _config(cls: type, args: argparse.Namespace, **named: object) -> Any:
    """``cls`` from the parsed flags of the same names; ``named`` for flags named otherwise."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
             if hasattr(args, f.name)}
    return cls(**{**given, **named})


def cmd_bench(args: argparse.Namespace) -> int:
    from dmad.benchmark.api import BenchConfig, bench

    cfg = _config(BenchConfig, args, models=list(args.models), host=not args.no_host,
                  delegates=args.delegate, cooldown_s=args.cooldown,
                  thermal_wait_s=args.thermal_wait)
    out = bench(cfg, _progress)
    print(f"results in {out}/results.md (and results.json, results.csv)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from dmad.benchmark.api import CompareConfig, compare
    from dmad.benchmark.report import headline

    cfg = _config(CompareConfig, args)
    out = compare(cfg, _progress)
    import json

    rows = json.loads((out / "results.json").read_text())["comparison"]
    print(headline(rows)[0])
    print(f"report in {out}/report.md (and report.html, latency.png, results.json)")
    return 0


def cmd_latency_table(args: argparse.Namespace) -> int:
    from dmad.benchmark.latency_table import LatencyTableConfig, build_table, validation_table

    cfg = _config(LatencyTableConfig, args)
    table = build_table(cfg, _progress)
    if table.validation and getattr(table, "kind", "") == "graph":
        from dmad.benchmark.graph_table import graph_validation_table

        print(graph_validation_table(table.validation))
    elif table.validation:
        print(validation_table(table.validation))
    print(f"latency table ({table.describe()}) in {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the benchmark subcommands to the ``dmad`` parser; flag helps come from
    :class:`BenchConfig` / :class:`CompareConfig`."""
    from dmad.benchmark.api import BenchConfig, CompareConfig

    s = sub.add_parser(
        "bench", help="measure latency on this CPU (PyTorch, ONNX Runtime, TFLite) or a phone",
        description="Latency of .pt / .onnx / .tflite models: median, p90, min, std over "
                    "interleaved runs, GMAC/s and efficiency against a GEMM peak probe. "
                    "--android runs benchmark_model on a phone over adb.",
    )
    s.add_argument("models", nargs="+", type=Path, help=_h(BenchConfig, "models"))
    _common(s, BenchConfig)
    a = s.add_argument_group("Android over adb")
    a.add_argument("--android", action="store_true", help=_h(BenchConfig, "android"))
    a.add_argument("--no-host", action="store_true",
                   help="skip the host backends; without it: " + _h(BenchConfig, "host"))
    a.add_argument("--serial", help=_h(BenchConfig, "serial"))
    a.add_argument("--delegate", type=_csv("--delegate"), default=("cpu", "xnnpack"),
                   help=_h(BenchConfig, "delegates", "cpu,xnnpack"))
    a.add_argument("--benchmark-binary", type=Path,
                   help=f"{_h(BenchConfig, 'benchmark_binary')}. {BINARY_HELP}")
    a.add_argument("--tool", choices=("classic", "compiled"), default="classic",
                   help=_h(BenchConfig, "tool", "classic"))
    a.add_argument("--taskset", help=_h(BenchConfig, "taskset"))
    a.add_argument("--android-rounds", type=int, default=1,
                   help=_h(BenchConfig, "android_rounds", 1))
    a.add_argument("--cooldown", type=float, default=10.0,
                   help=_h(BenchConfig, "cooldown_s", 10))
    a.add_argument("--thermal-wait", type=float, default=120.0,
                   help=_h(BenchConfig, "thermal_wait_s", 120))
    a.add_argument("--op-profiling", action="store_true",
                   help=_h(BenchConfig, "op_profiling"))
    a.add_argument("--adb", help=_h(BenchConfig, "adb"))
    s.set_defaults(func=cmd_bench)

    c = sub.add_parser(
        "compare", help="report: full vs compressed model (latency, MACs, size, chart)",
        description="Benchmark a full and a compressed model (files, or export folders holding "
                    ".pt/.onnx/.tflite) interleaved, and write report.md/report.html with a "
                    "chart and the headline speedup.",
    )
    c.add_argument("--full", type=Path, required=True, help=_h(CompareConfig, "full"))
    c.add_argument("--compressed", type=Path, required=True,
                   help=_h(CompareConfig, "compressed"))
    c.add_argument("--grid", type=Path, help=_h(CompareConfig, "grid"))
    _common(c, CompareConfig)
    c.set_defaults(func=cmd_compare)

    _register_latency_table(sub)


def _register_latency_table(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from dmad.benchmark.latency_table import (
        BACKENDS,
        DEFAULT_INT8_PLAN,
        TIMINGS,
        LatencyTableConfig,
    )

    L = LatencyTableConfig
    t = sub.add_parser(
        "latency-table", help="measure a target's latency model for `dmad search --target-ms`",
        description="Time every unit of a ResNet generator (stem, down, block, up, head) at a "
                    "grid of widths on the backend's measured channel multiple, converted as "
                    "the export converts; write the table, and check it against whole models "
                    "of random widths (predicted vs measured).",
    )
    t.add_argument("--out", type=Path, required=True, help=_h(L, "out"))
    t.add_argument("--backend", choices=BACKENDS, default="tflite-xnnpack",
                   help=_h(L, "backend", "tflite-xnnpack"))
    t.add_argument("--int8-plan", default=DEFAULT_INT8_PLAN,
                   help=_h(L, "int8_plan", DEFAULT_INT8_PLAN))
    t.add_argument("--threads", type=int, default=1, help=_h(L, "threads", 1))
    t.add_argument("--generator", type=Path, help=_h(L, "generator"))
    t.add_argument("--ngf", type=int, default=64, help=_h(L, "ngf", 64))
    t.add_argument("--size", type=int, default=256, help=_h(L, "size", 256))
    t.add_argument("--max-points", type=int, default=10, help=_h(L, "max_points", 10))
    t.add_argument("--multiple", type=int, default=0, help=_h(L, "multiple", 0))
    t.add_argument("--runs", type=int, default=10, help=_h(L, "runs", 10))
    t.add_argument("--rounds", type=int, default=3, help=_h(L, "rounds", 3))
    t.add_argument("--warmup", type=int, default=3, help=_h(L, "warmup", 3))
    t.add_argument("--timing", choices=TIMINGS, default="fastest",
                   help=_h(L, "timing", "fastest"))
    t.add_argument("--validate", type=int, default=10, help=_h(L, "validate", 10))
    t.add_argument("--calibrate", type=int, default=6, help=_h(L, "calibrate", 6))
    t.add_argument("--seed", type=int, default=0, help=_h(L, "seed", 0))
    t.add_argument("--android", metavar="SERIAL", help=_h(L, "android"))
    t.add_argument("--benchmark-binary", type=Path,
                   help=f"{_h(L, 'benchmark_binary')}. {BINARY_HELP}")
    t.add_argument("--adb", help=_h(L, "adb"))
    t.add_argument("--force", action="store_true", help=_h(L, "force"))
    t.set_defaults(func=cmd_latency_table)


__all__ = ["DmadError", "register"]
