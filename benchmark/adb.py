"""Android phones over adb: push a LiteRT ``benchmark_model`` and the models, run, parse, clean up.

The harness drives the real ``adb`` client (Debian package ``adb``, or the one the ``adbutils``
wheel bundles) through :mod:`subprocess`; it never talks the wire protocol itself, so what is tested
against the loopback device in ``tests/adbdevice`` is exactly what runs against a phone.

Safety: every command sent to ``adb shell`` is built from an argv list with :func:`shlex.quote`
(:func:`shell_join`), so a model called ``a b;rm -rf x.tflite`` is one argument on the phone, never
a second command. Everything pushed goes into one fresh folder under /data/local/tmp and is removed
at the end, also after an error.

What is recorded per run: device properties (model, SoC, SDK), thermal status before and after,
the tool's stats, the delegate-coverage lines, and flags: a delegate that fell back to the CPU (or
only partly delegated) is marked in the results, not hidden; NNAPI is marked deprecated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dmad.benchmark.parse import (
    parse_benchmark_output,
    parse_devices,
    parse_getprop,
    parse_thermal,
)
from dmad.compress.errors import DmadError

REMOTE_ROOT = "/data/local/tmp"
DELEGATES = ("cpu", "xnnpack", "gpu", "nnapi", "npu")
PROPS = (
    "ro.product.manufacturer",
    "ro.product.model",
    "ro.soc.manufacturer",
    "ro.soc.model",
    "ro.board.platform",
    "ro.hardware",
    "ro.build.version.release",
    "ro.build.version.sdk",
    "ro.product.cpu.abi",
)
GET_BINARY = (
    "download a prebuilt one: classic tool https://storage.googleapis.com/tensorflow-nightly-public/"
    "prod/tensorflow/release/lite/tools/nightly/latest/android_aarch64_benchmark_model, LiteRT "
    "CompiledModel tool https://storage.googleapis.com/litert/binaries/latest/android_arm64/"
    "benchmark_model"
)


def shell_join(argv: list[str]) -> str:
    """One ``adb shell`` command line in which every argument stays one argument."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def find_adb(explicit: str | os.PathLike[str] | None = None) -> str:
    """The adb executable: ``explicit``, ``$ADB``, ``$ADBUTILS_ADB_PATH``, ``$PATH``, then the
    binary bundled in the adbutils wheel (the order adbutils itself uses)."""
    cands: list[str | None] = [
        str(explicit) if explicit else None,
        os.environ.get("ADB"),
        os.environ.get("ADBUTILS_ADB_PATH"),
        shutil.which("adb"),
    ]
    spec = importlib.util.find_spec("adbutils")
    if spec is not None and spec.origin:
        cands.append(str(Path(spec.origin).parent / "binaries" / "adb"))
    if explicit:
        p = Path(explicit)
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise DmadError(f"--adb {explicit}: not an executable file")
        return str(p)
    for c in cands:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    raise DmadError(
        "adb not found: install it (Debian/Ubuntu: `apt-get install adb`; or `pip install "
        "adbutils`, which bundles one) or pass --adb PATH"
    )


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


@dataclasses.dataclass
class Adb:
    """A thin wrapper: every call is one ``adb [-s SERIAL] ...`` subprocess with a timeout."""

    exe: str
    serial: str | None = None
    timeout_s: float = 600.0

    def run(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [self.exe, *(("-s", self.serial) if self.serial else ()), *args]
        try:
            return subprocess.run(
                cmd, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL,
                timeout=timeout or self.timeout_s, check=False,
            )
        except subprocess.TimeoutExpired:
            raise DmadError(
                f"adb {' '.join(args[:2])}: no answer within {timeout or self.timeout_s:.0f} s"
            ) from None
        except OSError as exc:
            raise DmadError(f"{self.exe}: cannot run adb ({exc.strerror or exc})") from None

    def shell(self, argv: list[str], timeout: float | None = None) -> tuple[int, str]:
        """Run one quoted command; returns (exit status, stdout+stderr).

        Exit statuses come through because phones (Android 7+) and our emulator speak shell v2.
        """
        r = self.run("shell", shell_join(argv), timeout=timeout)
        return r.returncode, r.stdout + r.stderr

    def push(self, local: Path, remote: str) -> None:
        r = self.run("push", str(local), remote)
        if r.returncode != 0:
            text = r.stderr + r.stdout
            errs = [ln for ln in text.splitlines() if "error" in ln.lower()]
            msg = errs[0].strip() if errs else _last_line(text)
            raise DmadError(f"push of {local} to {self.serial}:{remote} failed: {msg}")


def select_device(adb: Adb, serial: str | None) -> str:
    """Pick the phone: the given serial, or the only one attached; a clear error otherwise."""
    r = adb.run("devices", "-l", timeout=60)
    if r.returncode != 0:
        raise DmadError(f"adb devices failed: {_last_line(r.stderr or r.stdout)}")
    devs = parse_devices(r.stdout)
    if serial is None:
        serial = os.environ.get("ANDROID_SERIAL") or None
    if serial is not None:
        match = [d for d in devs if d["serial"] == serial]
        if not match:
            have = ", ".join(d["serial"] for d in devs) or "none"
            raise DmadError(f"--serial {serial}: no such device (attached: {have})")
        dev = match[0]
    else:
        if not devs:
            raise DmadError(
                "no Android device found: connect a phone with USB debugging enabled "
                "(`adb devices` lists nothing)"
            )
        if len(devs) > 1:
            listing = ", ".join(f"{d['serial']} ({d['state']})" for d in devs)
            raise DmadError(f"several devices attached ({listing}): choose one with --serial")
        dev = devs[0]
    state = dev["state"]
    if state == "unauthorized":
        raise DmadError(
            f"device {dev['serial']} is unauthorized: unlock it and accept the 'Allow USB "
            "debugging?' dialog, then retry"
        )
    if state == "offline":
        raise DmadError(
            f"device {dev['serial']} is offline: reconnect the cable (or `adb reconnect`) and retry"
        )
    if state != "device":
        raise DmadError(f"device {dev['serial']} is in state {state!r}, not ready for adb shell")
    return dev["serial"]


@dataclasses.dataclass
class AndroidConfig:
    """What ``dmad bench --android`` needs."""

    models: list[Path]
    benchmark_binary: Path
    serial: str | None = None
    delegates: tuple[str, ...] = ("cpu", "xnnpack")
    threads: tuple[int, ...] = (1,)
    runs: int = 50
    warmup: int = 5
    taskset: str | None = None
    cooldown_s: float = 10.0
    #: rounds per setting: the models run A B A B … (each a whole benchmark_model run), so a
    #: phone warming up or throttling hits every model alike and speedups can be paired
    rounds: int = 1
    op_profiling: bool = False
    tool: str = "classic"  # classic (TFLite/LiteRT Interpreter) or compiled (LiteRT CompiledModel)
    adb: str | None = None
    timeout_s: float = 900.0
    nnapi_accelerator: str | None = None
    extra_args: tuple[str, ...] = ()


def check_config(cfg: AndroidConfig) -> None:
    """Refuse bad settings before touching the phone."""
    b = cfg.benchmark_binary
    if not b.exists():
        raise DmadError(f"--benchmark-binary {b}: no such file ({GET_BINARY})")
    if not b.is_file() or b.stat().st_size == 0:
        raise DmadError(f"--benchmark-binary {b}: not a file or empty")
    head = b.read_bytes()[:4]
    if head != b"\x7fELF" and not head.startswith(b"#!"):
        raise DmadError(
            f"--benchmark-binary {b}: not an executable (no ELF header); {GET_BINARY}"
        )
    for d in cfg.delegates:
        if d not in DELEGATES:
            raise DmadError(
                f"--delegate: unknown delegate {d!r} (choose from {', '.join(DELEGATES)})"
            )
        if cfg.tool == "classic" and d == "npu":
            raise DmadError("--delegate npu needs the LiteRT CompiledModel tool (--tool compiled)")
        if cfg.tool == "compiled" and d == "nnapi":
            raise DmadError("--delegate nnapi needs the classic benchmark_model (--tool classic)")
    if cfg.tool not in ("classic", "compiled"):
        raise DmadError(f"--tool: must be classic or compiled, got {cfg.tool!r}")
    if cfg.rounds < 1:
        raise DmadError(f"--android-rounds: must be >= 1, got {cfg.rounds}")
    if cfg.taskset is not None:
        try:
            if int(cfg.taskset, 16) <= 0:
                raise ValueError
        except ValueError:
            raise DmadError(f"--taskset {cfg.taskset!r}: expected a hex CPU mask like f0") from None
    for m in cfg.models:
        if m.suffix.lower() != ".tflite":
            raise DmadError(f"{m}: phones run .tflite models (export it first with `dmad export`)")
        if not m.is_file():
            raise DmadError(f"{m}: no such file")


def delegate_flags(delegate: str, tool: str, nnapi_accelerator: str | None) -> list[str]:
    if tool == "compiled":
        return {"cpu": ["--use_cpu=true"], "xnnpack": ["--use_cpu=true"],
                "gpu": ["--use_gpu=true"], "npu": ["--use_npu=true"]}[delegate]
    flags = {"cpu": ["--use_xnnpack=false"], "xnnpack": ["--use_xnnpack=true"],
             "gpu": ["--use_gpu=true"], "nnapi": ["--use_nnapi=true"]}[delegate]
    if delegate == "nnapi" and nnapi_accelerator:
        flags.append(f"--nnapi_accelerator_name={nnapi_accelerator}")
    return flags


_DELEGATE_KEYS = {"xnnpack": "xnnpack", "gpu": "gpu", "nnapi": "nnapi"}


def assess_delegation(delegate: str, parsed: dict[str, Any], sdk: int | None) -> list[str]:
    """Flags for the results table: fallbacks and partial delegation are said, not hidden."""
    flags: list[str] = []
    key = _DELEGATE_KEYS.get(delegate)
    cov = [c for c in parsed.get("coverage", []) if key and key in c["delegate"].lower()]
    warnings = parsed.get("warnings", [])
    if key is not None:
        if not cov or all(c["delegated"] == 0 for c in cov):
            if parsed.get("format") == "compiled" and parsed.get("fully_accelerated"):
                pass
            else:
                why = next((w for w in warnings if key in w.lower() or "delegate" in w.lower()),
                           "no delegate coverage line in the output")
                flags.append(f"FELL BACK TO CPU: {why}")
        else:
            c = cov[-1]
            if c["delegated"] < c["total"]:
                flags.append(
                    f"partially delegated: {c['delegated']} of {c['total']} nodes in "
                    f"{c['partitions']} partition(s); the rest runs on CPU kernels"
                )
    if parsed.get("fully_accelerated") is False:
        flags.append("not fully accelerated (LiteRT reports a partial graph)")
    if delegate == "nnapi":
        note = "NNAPI is deprecated since Android 15"
        if sdk is not None and sdk >= 35:
            note += f" (this device: SDK {sdk})"
        flags.append(note)
        if any("nnapi-reference" in w for w in warnings):
            flags.append("NNAPI ran on nnapi-reference (the CPU reference implementation)")
    return flags


def _thermal(adb: Adb) -> dict[str, Any]:
    rc, out = adb.shell(["dumpsys", "thermalservice"], timeout=60)
    if rc != 0:
        return {"status": None, "status_name": None, "error": _last_line(out)}
    return parse_thermal(out)


def run_android(
    cfg: AndroidConfig,
    log_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Benchmark every (delegate, threads, model) on one phone; models interleave per setting.

    Returns {"device": {...}, "results": [...]}; raw logs go to ``log_dir`` when given. What
    was pushed is removed in all cases.
    """
    say = progress or (lambda s: None)
    check_config(cfg)
    adb = Adb(find_adb(cfg.adb), timeout_s=cfg.timeout_s)
    serial = select_device(adb, cfg.serial)
    adb.serial = serial
    rc, out = adb.shell(["getprop"], timeout=60)
    if rc != 0:
        raise DmadError(f"{serial}: getprop failed: {_last_line(out)}")
    allprops = parse_getprop(out)
    props = {k: allprops[k] for k in PROPS if k in allprops}
    sdk = int(props["ro.build.version.sdk"]) if props.get("ro.build.version.sdk", "").isdigit() \
        else None
    device = {"serial": serial, "props": props, "sdk": sdk}
    remote_dir = f"{REMOTE_ROOT}/dmad-bench-{uuid.uuid4().hex[:8]}"
    remote_bin = f"{remote_dir}/{cfg.benchmark_binary.name}"
    pushed: list[str] = []
    results: list[dict[str, Any]] = []
    rc, out = adb.shell(["mkdir", "-p", remote_dir])
    if rc != 0:
        raise DmadError(f"{serial}: cannot create {remote_dir}: {_last_line(out)}")
    try:
        say(f"pushing {cfg.benchmark_binary.name} to {serial}")
        pushed.append(remote_bin)  # before the push: a failed push may leave a partial file
        adb.push(cfg.benchmark_binary, remote_bin)
        rc, out = adb.shell(["chmod", "755", remote_bin])
        if rc != 0:
            raise DmadError(f"{serial}: chmod of {remote_bin} failed: {_last_line(out)}")
        remote_models: list[str] = []
        for i, m in enumerate(cfg.models):
            remote = f"{remote_dir}/{i}_{m.name}"
            say(f"pushing {m.name}")
            pushed.append(remote)
            adb.push(m, remote)
            remote_models.append(remote)
        first = True
        for delegate in cfg.delegates:
            for threads in cfg.threads:
                for rnd in range(cfg.rounds):
                    for m, remote in zip(cfg.models, remote_models, strict=True):
                        if not first and cfg.cooldown_s > 0:
                            time.sleep(cfg.cooldown_s)
                        first = False
                        say(f"{serial}: {m.name}, {delegate}, {threads} thread(s), round "
                            f"{rnd + 1}/{cfg.rounds}")
                        r = _one_run(adb, cfg, m, remote, remote_bin, delegate, threads, sdk,
                                     log_dir, rnd)
                        results.append(r)
    finally:
        # Remove exactly what we pushed, then the (now empty) folder; never a recursive rm.
        with contextlib.suppress(DmadError):
            if pushed:
                adb.shell(["rm", "-f", *pushed])
            adb.shell(["rmdir", remote_dir])
    return {"device": device, "results": results}


def latency_fields(parsed: dict[str, Any]) -> dict[str, Any]:
    """The latency of one benchmark_model run, named for what it is: an old build prints only
    the average, and an average is never filed as a median (``median_ms`` is then ``None``;
    ``latency_ms`` holds the figure and ``latency_stat`` says which it is)."""
    median = parsed["latency_ms"] if parsed["latency_stat"] == "median" else None
    return {"median_ms": median, "latency_ms": parsed["latency_ms"],
            "latency_stat": parsed["latency_stat"], "mean_ms": parsed.get("avg_ms")}


def _one_run(
    adb: Adb, cfg: AndroidConfig, model: Path, remote: str, remote_bin: str, delegate: str,
    threads: int, sdk: int | None, log_dir: Path | None, rnd: int = 0,
) -> dict[str, Any]:
    from dmad.compress.io import atomic_write_text

    argv = [*(("taskset", cfg.taskset) if cfg.taskset else ()), remote_bin, f"--graph={remote}",
            f"--num_threads={threads}", f"--num_runs={cfg.runs}", f"--warmup_runs={cfg.warmup}",
            "--min_secs=0", "--warmup_min_secs=0",
            *delegate_flags(delegate, cfg.tool, cfg.nnapi_accelerator)]
    if cfg.op_profiling:
        argv.append(
            "--enable_op_profiling=true" if cfg.tool == "classic" else "--use_profiler=true"
        )
    argv += list(cfg.extra_args)
    before = _thermal(adb)
    rc, out = adb.shell(argv, timeout=cfg.timeout_s)
    after = _thermal(adb)
    log_name = f"{model.stem}_{delegate}_{threads}t" + (f"_r{rnd + 1}" if cfg.rounds > 1
                                                        else "") + ".log"
    log_path = None
    if log_dir is not None:
        log_path = log_dir / log_name
        atomic_write_text(log_path, f"$ adb -s {adb.serial} shell {shell_join(argv)}\n{out}")
    where = f" (log: {log_path})" if log_path else ""
    if rc in (126, 127) and ("not executable" in out or "Permission denied" in out
                             or "not found" in out):
        raise DmadError(
            f"{cfg.benchmark_binary}: not executable on {adb.serial}: {_last_line(out)} (it must "
            f"be an Android arm64 build; {GET_BINARY}){where}"
        )
    if rc != 0:
        raise DmadError(
            f"benchmark_model exited with status {rc} on {adb.serial} for {model.name} "
            f"({delegate}, {threads} threads): {_last_line(out)}{where}"
        )
    parsed = parse_benchmark_output(out, source=f"benchmark_model on {adb.serial} for "
                                    f"{model.name} ({delegate}, {threads} threads){where}")
    flags = assess_delegation(delegate, parsed, sdk)
    if (after.get("status") or 0) > 0:
        flags.append(f"thermal status {after['status_name']} after the run (throttling likely)")
    return {
        "platform": "android",
        "device": adb.serial,
        "model": model.name,
        "path": str(model),
        "backend": f"android-{delegate}",
        "delegate": delegate,
        "precision": None,
        "threads": threads,
        "round": rnd + 1,
        "order": "interleaved",
        "taskset": cfg.taskset,
        "runs": parsed.get("count", cfg.runs),
        "warmup": cfg.warmup,
        **latency_fields(parsed),
        "p95_ms": parsed.get("p95_ms"),
        "min_ms": parsed.get("min_ms"),
        "std_ms": parsed.get("std_ms"),
        "init_ms": parsed.get("init_ms"),
        "memory": parsed.get("memory", {}),
        "coverage": parsed.get("coverage", []),
        "warnings": parsed.get("warnings", []),
        "op_profile": parsed.get("op_profile"),
        "thermal_before": before,
        "thermal_after": after,
        "flags": flags,
        "log": str(log_path) if log_path else None,
    }
