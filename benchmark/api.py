"""The benchmark stage's two entry points: :func:`bench` and :func:`compare`.

Each takes one config dataclass and returns the folder it wrote, so the CLI, the demo pipeline and
tests call the same function. Results always land as JSON + CSV + markdown (written atomically).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dmad.benchmark import host, model_info, report
from dmad.compress.config import opt
from dmad.compress.errors import DmadError
from dmad.compress.filekind import describe, sniff
from dmad.compress.runfolder import check_writable, keep_results, refuse_overwrite, run_lock

FORMAT = "dmad-bench"
VERSION = 1


@dataclasses.dataclass(kw_only=True)
class HostRuns:
    """How the host backends are timed; shared by ``dmad bench`` and ``dmad compare``."""

    backends: tuple[str, ...] = opt(
        ("torch", "ort", "tflite"),
        "host backends: torch, ort, tflite (= tflite-xnnpack and tflite-builtin)",
    )
    threads: tuple[int, ...] = opt((1, 2), "thread counts, comma list, e.g. 1,2")
    runs: int = opt(20, "timed runs per setting")
    warmup: int = opt(3, "untimed warm-up runs per setting")
    size: int | None = opt(
        None,
        "image side in pixels for models with a dynamic input (default: the models' own, else 256)",
    )
    seed: int = opt(0, "seed of the shared random input")
    force: bool = opt(False, "replace earlier results in --out (kept without it)")
    order: str = opt("interleaved", "interleaved | blocked | both: timing order of the models "
                     "of one setting (A B A B …, or all runs of A then all of B)")

    def orders(self) -> tuple[str, ...]:
        """The timing orders ``order`` names (``both``: every one)."""
        from dmad.benchmark.stats import ORDER_CHOICES, ORDERS

        if self.order not in ORDER_CHOICES:
            raise DmadError(f"--order: {self.order!r} is not one of {', '.join(ORDER_CHOICES)}")
        return ORDERS if self.order == "both" else (self.order,)


@dataclasses.dataclass
class BenchConfig(HostRuns):
    """``dmad bench``: host backends, and optionally one phone over adb."""

    models: list[Path] = opt(help=".pt dmad model, .onnx or .tflite files to measure")
    out: Path = opt(help="folder for results.json, results.csv and results.md")
    host: bool = opt(True, "run the host backends (off with --no-host)")
    android: bool = opt(False, "also run the .tflite models on a phone over adb")
    serial: str | None = opt(None, "adb serial of the phone (when several are attached)")
    delegates: tuple[str, ...] = opt(
        ("cpu", "xnnpack"),
        "cpu,xnnpack,gpu,nnapi (nnapi is deprecated since Android 15) or npu (--tool compiled)",
    )
    benchmark_binary: Path | None = opt(
        None,
        "LiteRT benchmark_model built for the phone (Android arm64)",
    )
    taskset: str | None = opt(
        None,
        "hex CPU mask to pin the phone benchmark to, e.g. f0 (big cores)",
    )
    cooldown_s: float = opt(10.0, "seconds to rest between phone runs")
    thermal_wait_s: float = opt(120.0, "before each phone run, wait up to this many seconds for "
                                "the phone to report a normal thermal status (the wait and the "
                                "status are recorded)")
    android_rounds: int = opt(1, "phone rounds per setting: the models alternate A B A B, one "
                              "benchmark_model run each, so drift and throttling hit all alike")
    op_profiling: bool = opt(False, "per-op times on the phone: one more run per setting with "
                             "--enable_op_profiling, apart from the timed one")
    tool: str = opt("classic", "classic | compiled: which benchmark_model the binary is")
    adb: str | None = opt(None, "adb executable (default: $ADB, $PATH, adbutils' bundled one)")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _check_inputs(infos: list[model_info.ModelInfo], size: int | None) -> None:
    """Models compared must see the same image size (the same input, for honesty)."""
    hw = {(i.input_shape[2], i.input_shape[3]) for i in infos}
    if len(hw) > 1:
        listing = ", ".join(f"{i.path.name} {i.input_shape[2]}x{i.input_shape[3]}" for i in infos)
        raise DmadError(f"models have different input sizes ({listing}); pass models of one size"
                        f"{'' if size is None else f' (--size {size})'}")


def bench(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> Path:
    """Measure every model on every applicable backend (host) and/or on a phone."""
    if not cfg.models:
        raise DmadError("no model given")
    models = [Path(m) for m in cfg.models]
    out = Path(cfg.out)
    refuse_overwrite([out / n for n in report.BENCH_FILES], cfg.force, "benchmark results")
    check_writable(out)
    with run_lock(out):
        return _bench(cfg, models, progress)


def _bench(cfg: BenchConfig, models: list[Path],
           progress: Callable[[str], None] | None) -> Path:
    data: dict[str, Any] = {"format": FORMAT, "version": VERSION, "created": _now(),
                            "settings": _settings(cfg), "results": []}
    if cfg.host:
        backends = host.expand_backends(list(cfg.backends))
        size = model_info.resolve_size(models, cfg.size)
        infos = [model_info.inspect_model(m, size) for m in models]
        _label(infos)
        _check_inputs(infos, cfg.size)
        groups = []
        for b in backends:
            g = [(i, b, i.label) for i in infos if host.applicable(i, b)]
            if g:
                groups.append(g)
        if not groups:
            kinds = ", ".join(sorted({i.kind for i in infos}))
            raise DmadError(f"--backends {','.join(cfg.backends)}: none applies to the models "
                            f"given ({kinds}); torch needs .pt, ort .onnx or .pt, tflite .tflite")
        data.update(host.bench_groups(groups, list(cfg.threads), cfg.runs, cfg.warmup, cfg.seed,
                                      progress, cfg.orders()))
        data["models"] = [i.summary() for i in infos]
    if cfg.android:
        from dmad.benchmark.adb import AndroidConfig, SweepAborted, run_android

        if cfg.benchmark_binary is None:
            raise DmadError("--android needs --benchmark-binary PATH (the Android benchmark_model)")
        acfg = AndroidConfig(
            models=models, benchmark_binary=Path(cfg.benchmark_binary), serial=cfg.serial,
            delegates=tuple(cfg.delegates), threads=tuple(cfg.threads), runs=cfg.runs,
            warmup=cfg.warmup, taskset=cfg.taskset, cooldown_s=cfg.cooldown_s,
            thermal_wait_s=cfg.thermal_wait_s,
            rounds=cfg.android_rounds,
            op_profiling=cfg.op_profiling, tool=cfg.tool, adb=cfg.adb,
        )
        aborted = None
        try:
            got = run_android(acfg, log_dir=Path(cfg.out) / "android_logs", progress=progress)
        except SweepAborted as exc:  # the host results and the phone rows so far are kept
            got, aborted = {"device": exc.device, "results": exc.results}, exc
        data["android_device"] = got["device"]
        data["results"] += _phone_rows(got["results"], data.get("models", []))
        if aborted is not None:
            data["android_error"] = str(aborted)
            _write(lambda: report.write_bench(data, Path(cfg.out)), data, Path(cfg.out))
            raise DmadError(f"the phone sweep stopped: {aborted} (the results so far are in "
                            f"{cfg.out})")
    if not cfg.host and not cfg.android:
        raise DmadError("nothing to do: --no-host without --android")
    _write(lambda: report.write_bench(data, Path(cfg.out)), data, Path(cfg.out))
    return Path(cfg.out)


def _phone_rows(rows: list[dict[str, Any]], models: list[dict[str, Any]]
                ) -> list[dict[str, Any]]:
    """Phone rows with the host's MAC count per file (a failed run keeps its reason)."""
    macs = {m["path"]: m.get("gmacs_true") for m in models}
    for r in rows:
        gm = macs.get(r["path"])
        r["gmacs_true"] = gm
        ms = r.get("latency_ms") or r.get("median_ms")
        r["gmacs_per_s"] = gm / (ms / 1e3) if gm and ms else None
        r["efficiency"] = None  # no peak probe on the phone
    return rows


def _write(write: Callable[[], object], data: dict[str, Any], out: Path) -> None:
    """Results are never lost at the end: a folder that refuses them (full, read-only, removed
    during the run) gets one line, and the measurements go to a temporary file it names."""
    import json

    try:
        write()
    except (OSError, DmadError) as exc:
        raise keep_results(json.dumps(data, indent=2, default=str), str(out / "results.json"),
                           exc) from None


def _settings(cfg: Any) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return {k: ([str(x) for x in v] if isinstance(v, list) else str(v) if isinstance(v, Path)
                else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _label(infos: list[model_info.ModelInfo]) -> None:
    """Short unique labels (file names; parent folders added where names collide)."""
    for i, label in zip(infos, model_info.unique_labels([i.path for i in infos]), strict=True):
        i.label = label


# -- compare ---------------------------------------------------------------------------------


@dataclasses.dataclass
class CompareConfig(HostRuns):
    """``dmad compare``: a full and a compressed model (files or export folders) → report."""

    full: Path = opt(help="full model file or export folder")
    compressed: Path = opt(help="compressed model file or export folder")
    out: Path = opt(help="folder for report.md, report.html, latency.png and results.json")
    order: str = dataclasses.field(default="both", kw_only=True, metadata={"help": (
        "interleaved | blocked | both: timing order of full and compressed (both: the "
        "headline uses blocked, interleaved is shown beside it)")})
    grid: Path | None = opt(
        None,
        "image grid to include (default: grid.png or eval/grid.png next to the compressed model)",
    )


def _side(path: Path) -> dict[str, Any]:
    """The model files of one side: {"torch": Path|None, "onnx": {prec: Path}, "tflite": {...}}."""
    path = Path(path)
    if not path.exists():
        raise DmadError(f"{path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in model_info.KINDS) \
        if path.is_dir() else [path]
    if path.is_file():
        model_info.model_kind(path)
    if not files:
        raise DmadError(f"{path}: no .pt, .onnx or .tflite model in this folder")
    side: dict[str, Any] = {"torch": None, "onnx": {}, "tflite": {}, "files": files}
    pts = [f for f in files if model_info.KINDS[f.suffix.lower()] == "torch"]
    if len(pts) > 1:
        raise DmadError(f"{path}: several dmad model files ({', '.join(p.name for p in pts)}); "
                        "pass the one to compare")
    side["torch"] = pts[0] if pts else None
    return side


def _find_grid(cfg: CompareConfig) -> Path | None:
    if cfg.grid is not None:
        if not Path(cfg.grid).is_file():
            raise DmadError(f"--grid {cfg.grid}: no such file")
        kind = sniff(Path(cfg.grid))
        if kind != "png":
            raise DmadError(f"--grid {cfg.grid}: is {describe(kind)}, expected a PNG image")
        return Path(cfg.grid)
    base = Path(cfg.compressed)
    folder = base if base.is_dir() else base.parent
    for d in (folder, folder.parent):
        for name in ("grid.png", "eval/grid.png", "eval_grid.png"):
            if (d / name).is_file():
                return d / name
    return None


def _training_record(infos: list[model_info.ModelInfo]) -> dict[str, Any]:
    """The fine-tune objective and best step a dmad student file records (for the report)."""
    from dmad.compress.checkpoint import load_model

    pt = next((i for i in infos if i.kind == "torch"), None)
    if pt is None:
        return {}
    try:
        meta = load_model(pt.path)[1]
    except DmadError:
        return {}
    return {k: meta[k] for k in ("objective", "step") if meta.get(k) is not None}


def compare(cfg: CompareConfig, progress: Callable[[str], None] | None = None) -> Path:
    """Benchmark both sides interleaved on every backend both can run, then write the report."""
    out = Path(cfg.out)
    refuse_overwrite([out / n for n in report.COMPARE_FILES], cfg.force, "comparison results")
    check_writable(out)
    with run_lock(out):
        return _compare(cfg, progress)


def _compare(cfg: CompareConfig, progress: Callable[[str], None] | None) -> Path:
    backends = host.expand_backends(list(cfg.backends))
    grid = _find_grid(cfg)  # before the measurement: a bad --grid must not cost it
    sides = {"full": _side(cfg.full), "compressed": _side(cfg.compressed)}
    infos: dict[str, list[model_info.ModelInfo]] = {}
    size = model_info.resolve_size([f for s in sides.values() for f in s["files"]], cfg.size)
    for name, s in sides.items():
        infos[name] = [model_info.inspect_model(f, size) for f in s["files"]]
        for i in infos[name]:
            i.label = name
    _check_inputs([*infos["full"], *infos["compressed"]], cfg.size)

    def pick(name: str, backend: str) -> dict[str, model_info.ModelInfo]:
        """{precision: model} one side offers for a backend."""
        out: dict[str, model_info.ModelInfo] = {}
        kinds = {"torch": ("torch",), "ort": ("onnx",), "tflite-xnnpack": ("tflite",),
                 "tflite-builtin": ("tflite",)}[backend]
        for i in infos[name]:
            if i.kind in kinds:
                out.setdefault(i.precision, i)
        if backend == "ort" and "fp32" not in out:
            pt = next((i for i in infos[name] if i.kind == "torch"), None)
            if pt is not None:
                out["fp32"] = pt  # exported to a temporary ONNX for ORT
        return out

    groups, notes = [], []
    for b in backends:
        f, c = pick("full", b), pick("compressed", b)
        common = [p for p in f if p in c]
        for p in common:
            groups.append([(f[p], b, "full"), (c[p], b, "compressed")])
        if not common:
            notes.append(f"{report.backend_name(b)}: not measured (full offers "
                         f"{sorted(f) or 'nothing'}, compressed {sorted(c) or 'nothing'}).")
        elif b == "ort" and ((f.get("fp32") and f["fp32"].kind == "torch")
                             or (c.get("fp32") and c["fp32"].kind == "torch")):
            notes.append("ONNX Runtime fp32 ran a temporary ONNX export (opset 17) of the .pt.")
    if not groups:
        raise DmadError(
            f"nothing to compare: no backend in {','.join(cfg.backends)} can run both "
            f"{cfg.full} and {cfg.compressed}"
        )
    data: dict[str, Any] = {"format": FORMAT, "version": VERSION, "created": _now(),
                            "settings": _settings(cfg)}
    data.update(host.bench_groups(groups, list(cfg.threads), cfg.runs, cfg.warmup, cfg.seed,
                                  progress, cfg.orders()))
    data["models"] = [i.summary() for v in infos.values() for i in v]
    data["sizes"] = {str(i.path): i.size_bytes for v in infos.values() for i in v}
    data["notes"] = [*data.get("notes", []), *notes]

    def summary(name: str) -> dict[str, Any]:
        ref = next((i for i in infos[name] if i.kind == "torch"), None) or next(
            (i for i in infos[name] if i.precision == "fp32"), infos[name][0])
        return {
            "gmacs_true": ref.gmacs_true, "gmacs_paper": ref.gmacs_paper,
            "params_m": ref.params / 1e6 if ref.params else None,
            "size_mb": ref.size_bytes / 1e6, "reference_file": str(ref.path),
            "files": ", ".join(i.path.name for i in infos[name]),
        }

    first = infos["full"][0].input_shape
    data["models_summary"] = {"full": summary("full"), "compressed": summary("compressed"),
                              "input": "x".join(str(s) for s in first)}
    data["models_summary"]["compressed"].update(_training_record(infos["compressed"]))
    _write(lambda: report.write_compare(data, Path(cfg.out), grid), data, Path(cfg.out))
    return Path(cfg.out)
