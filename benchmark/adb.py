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
import re
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dmad.benchmark.device_state import battery, cpu_clocks, kill_remote, thermal, wait_cool
from dmad.benchmark.model_info import unique_labels
from dmad.benchmark.parse import (
    parse_benchmark_output,
    parse_devices,
    parse_getprop,
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


class AdbTimeout(DmadError):
    """An adb command outlived its timeout (the local client was killed)."""


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
            raise AdbTimeout(
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
    #: before each run, wait at most this long for the phone to report a normal thermal status
    thermal_wait_s: float = 120.0
    thermal_poll_s: float = 5.0
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


_DELEGATE_KEYS = {"xnnpack": "xnnpack", "gpu": "gpu", "nnapi": "nnapi", "npu": "npu"}


def _compiled_fallback(delegate: str, parsed: dict[str, Any]) -> list[str]:
    """The CompiledModel tool prints no delegation count: an accelerator that could not be
    loaded, or ops left unaccelerated, is a fallback; one the runtime says it registered is
    taken as used; neither is said as unconfirmed, not as a fallback."""
    if delegate in ("cpu", "xnnpack"):
        return []
    bad = next((w for w in parsed.get("warnings", []) if "could not be loaded" in w.lower()
                or "not accelerated" in w.lower()), None)
    if bad:
        return [f"FELL BACK TO CPU: {bad}"]
    if delegate.upper() in parsed.get("registered", []) or parsed.get("fully_accelerated"):
        return []
    return [f"{delegate} use not confirmed: the CompiledModel tool prints no delegation count "
            f"and no '{delegate.upper()} accelerator registered' line was seen"]


def assess_delegation(delegate: str, parsed: dict[str, Any], sdk: int | None) -> list[str]:
    """Flags for the results table: fallbacks and partial delegation are said, not hidden."""
    if parsed.get("format") == "compiled":
        flags = _compiled_fallback(delegate, parsed)
        if parsed.get("fully_accelerated") is False:
            flags.append("not fully accelerated (LiteRT reports a partial graph)")
        return flags
    flags: list[str] = []
    key = _DELEGATE_KEYS.get(delegate)
    cov = [c for c in parsed.get("coverage", []) if key and key in c["delegate"].lower()]
    warnings = parsed.get("warnings", [])
    if key is not None:
        if not cov or all(c["delegated"] == 0 for c in cov):
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
    if delegate == "nnapi":
        note = "NNAPI is deprecated since Android 15"
        if sdk is not None and sdk >= 35:
            note += f" (this device: SDK {sdk})"
        flags.append(note)
        if any("nnapi-reference" in w for w in warnings):
            flags.append("NNAPI ran on nnapi-reference (the CPU reference implementation)")
    return flags


class SweepAborted(DmadError):
    """A failure every later run would share (the binary cannot run, a flag it does not know):
    the sweep stops, the rows so far are kept (``results``)."""

    def __init__(self, message: str, results: list[dict[str, Any]],
                 device: dict[str, Any]) -> None:
        super().__init__(message)
        self.results = results
        self.device = device


def _precision(path: Path) -> str | None:
    from dmad.benchmark.model_info import count_tflite

    try:
        return count_tflite(path)[3]
    except Exception:  # a file the phone runs anyway; its precision is just unknown
        return None


def run_precision(delegate: str, file_precision: str | None, extra: tuple[str, ...]) -> str | None:
    """What the run computes in: the GPU delegate runs fp16 unless precision loss is disallowed
    (``--gpu_precision_loss_allowed=false``); XNNPACK in fp16 when forced; else the file's."""
    flags = {a.split("=", 1)[0]: a.split("=", 1)[1] if "=" in a else "true" for a in extra}
    if delegate == "gpu":
        lossless = flags.get("--gpu_precision_loss_allowed", "true").lower() == "false" \
            or flags.get("--allow_fp16", "true").lower() == "false"
        return "fp32" if lossless else "fp16"
    if delegate == "xnnpack" and flags.get("--xnnpack_force_fp16", "").lower() == "true":
        return "fp16"
    if delegate == "nnapi" and flags.get("--nnapi_allow_fp16", "").lower() == "true":
        return "fp16"
    return file_precision


def run_android(
    cfg: AndroidConfig,
    log_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Benchmark every (delegate, threads, model) on one phone; models interleave per setting.

    A run that fails (a delegate that cannot be applied, a crash, a timeout) becomes a row with
    ``status: failed`` and its reason, and the sweep goes on; each row is handed to
    ``on_result`` and appended to ``log_dir/results.jsonl`` as it arrives. A failure every
    later run would share raises :class:`SweepAborted` with the rows so far. Returns
    {"device": {...}, "results": [...]}; what was pushed is removed in all cases.
    """
    say = progress or (lambda s: None)
    check_config(cfg)
    adb = Adb(find_adb(cfg.adb), timeout_s=cfg.timeout_s)
    adb.serial = select_device(adb, cfg.serial)
    device = _device(adb)
    remote_dir = f"{REMOTE_ROOT}/dmad-bench-{uuid.uuid4().hex[:8]}"
    remote_bin = f"{remote_dir}/{cfg.benchmark_binary.name}"
    pushed: list[str] = []
    results: list[dict[str, Any]] = []
    rc, out = adb.shell(["mkdir", "-p", remote_dir])
    if rc != 0:
        raise DmadError(f"{adb.serial}: cannot create {remote_dir}: {_last_line(out)}")

    def keep(row: dict[str, Any]) -> None:
        results.append(row)
        if log_dir is not None:
            from dmad.compress.io import append_jsonl

            append_jsonl(log_dir / "results.jsonl", row)
        if on_result is not None:
            on_result(row)

    try:
        remote_models = _push_all(adb, cfg, remote_dir, remote_bin, pushed, say)
        runs = _Runs(adb, cfg, remote_bin, device.get("sdk"), log_dir)
        labels = unique_labels(cfg.models)
        precisions = [_precision(m) for m in cfg.models]
        for delegate in cfg.delegates:
            for threads in cfg.threads:
                for rnd in range(cfg.rounds):
                    for i, (m, remote) in enumerate(zip(cfg.models, remote_models, strict=True)):
                        say(f"{adb.serial}: {labels[i]}, {delegate}, {threads} thread(s), round "
                            f"{rnd + 1}/{cfg.rounds}")
                        job = _Job(i, m, labels[i], remote, delegate, threads, rnd,
                                   run_precision(delegate, precisions[i], cfg.extra_args))
                        keep(runs.measure(job, first=not results))
    except DmadError as exc:  # the phone gone, a push refused, a shared failure: rows kept
        raise SweepAborted(str(exc), results, device) from None
    finally:
        # Remove exactly what we pushed, then the (now empty) folder; never a recursive rm.
        with contextlib.suppress(DmadError):
            kill_remote(adb, remote_bin)
            if pushed:
                adb.shell(["rm", "-f", *pushed])
            adb.shell(["rmdir", remote_dir])
    return {"device": device, "results": results}


def _device(adb: Adb) -> dict[str, Any]:
    rc, out = adb.shell(["getprop"], timeout=60)
    if rc != 0:
        raise DmadError(f"{adb.serial}: getprop failed: {_last_line(out)}")
    allprops = parse_getprop(out)
    props = {k: allprops[k] for k in PROPS if k in allprops}
    sdk = int(props["ro.build.version.sdk"]) if props.get("ro.build.version.sdk", "").isdigit() \
        else None
    return {"serial": adb.serial, "props": props, "sdk": sdk}


def _push_all(adb: Adb, cfg: AndroidConfig, remote_dir: str, remote_bin: str,
              pushed: list[str], say: Callable[[str], None]) -> list[str]:
    say(f"pushing {cfg.benchmark_binary.name} to {adb.serial}")
    pushed.append(remote_bin)  # before the push: a failed push may leave a partial file
    adb.push(cfg.benchmark_binary, remote_bin)
    rc, out = adb.shell(["chmod", "755", remote_bin])
    if rc != 0:
        raise DmadError(f"{adb.serial}: chmod of {remote_bin} failed: {_last_line(out)}")
    remote_models: list[str] = []
    for i, m in enumerate(cfg.models):
        remote = f"{remote_dir}/{i}_{m.name}"  # the index keeps same-named files apart
        say(f"pushing {m.name}")
        pushed.append(remote)
        adb.push(m, remote)
        remote_models.append(remote)
    return remote_models


def latency_fields(parsed: dict[str, Any]) -> dict[str, Any]:
    """The latency of one benchmark_model run, named for what it is: an old build prints only
    the average, and an average is never filed as a median (``median_ms`` is then ``None``;
    ``latency_ms`` holds the figure and ``latency_stat`` says which it is)."""
    median = parsed["latency_ms"] if parsed["latency_stat"] == "median" else None
    return {"median_ms": median, "latency_ms": parsed["latency_ms"],
            "latency_stat": parsed["latency_stat"], "mean_ms": parsed.get("avg_ms")}


@dataclasses.dataclass(frozen=True)
class _Job:
    index: int
    model: Path
    label: str
    remote: str
    delegate: str
    threads: int
    round: int
    precision: str | None


def _failure_reason(out: str) -> str:
    """The line that says why a run failed (not the tool's generic closing line)."""
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    for ln in lines:
        low = ln.lower()
        if ("error" in low or "failed" in low) and "benchmarking failed" not in low:
            return ln
    return lines[-1] if lines else "(no output)"


_UNCONSUMED = re.compile(r"Unconsumed cmdline flags:\s*(.*)")
#: what the adb client says when the phone is no longer there to run anything
_GONE = re.compile(r"device '[^']*' not found|device offline|no devices/emulators found|"
                   r"device unauthorized")


class _Runs:
    """One ``benchmark_model`` run at a time: rest, wait for a cool phone, run, make its row."""

    def __init__(self, adb: Adb, cfg: AndroidConfig, remote_bin: str, sdk: int | None,
                 log_dir: Path | None) -> None:
        self.adb, self.cfg, self.remote_bin, self.sdk, self.log_dir = (
            adb, cfg, remote_bin, sdk, log_dir)

    def argv(self, job: _Job, profiling: bool) -> list[str]:
        cfg = self.cfg
        runs = min(cfg.runs, 10) if profiling else cfg.runs
        argv = [*(("taskset", cfg.taskset) if cfg.taskset else ()), self.remote_bin,
                f"--graph={job.remote}", f"--num_threads={job.threads}", f"--num_runs={runs}",
                f"--warmup_runs={cfg.warmup}", "--min_secs=0", "--warmup_min_secs=0",
                *delegate_flags(job.delegate, cfg.tool, cfg.nnapi_accelerator)]
        if profiling:
            argv.append("--enable_op_profiling=true" if cfg.tool == "classic"
                        else "--use_profiler=true")
        return argv + list(cfg.extra_args)

    def _log(self, job: _Job, argv: list[str], out: str, profiling: bool) -> Path | None:
        from dmad.compress.io import atomic_write_text

        if self.log_dir is None:
            return None
        name = (f"{job.index}_{job.model.stem}_{job.delegate}_{job.threads}t"
                + (f"_r{job.round + 1}" if self.cfg.rounds > 1 else "")
                + ("_profile" if profiling else "") + ".log")
        path = self.log_dir / name
        atomic_write_text(path, f"$ adb -s {self.adb.serial} shell {shell_join(argv)}\n{out}")
        return path

    def run(self, job: _Job, profiling: bool = False) -> tuple[str, Path | None]:
        """The tool's output and its log; a failed run raises :class:`DmadError` (a failure
        every run would share: :class:`SweepAborted`)."""
        cfg, adb = self.cfg, self.adb
        argv = self.argv(job, profiling)
        what = f"{job.label} ({job.delegate}, {job.threads} threads)"
        try:
            rc, out = adb.shell(argv, timeout=cfg.timeout_s)
        except AdbTimeout:
            pids = kill_remote(adb, self.remote_bin)
            log = self._log(job, argv, "(no result: timed out)", profiling)
            raise DmadError(
                f"no result within {cfg.timeout_s:g} s for {what}; benchmark_model killed on "
                f"the phone ({'pid ' + ', '.join(map(str, pids)) if pids else 'no process left'})"
                + (f" (log: {log})" if log else "")) from None
        if rc != 0 and (m := _GONE.search(out)):
            raise SweepAborted(f"{adb.serial}: the phone went away ({m.group(0)})", [], {})
        log = self._log(job, argv, out, profiling)
        where = f" (log: {log})" if log else ""
        if rc in (126, 127) and ("not executable" in out or "Permission denied" in out
                                 or "not found" in out):
            raise SweepAborted(
                f"{cfg.benchmark_binary}: not executable on {adb.serial}: {_last_line(out)} (it "
                f"must be an Android arm64 build; {GET_BINARY}){where}", [], {})
        if m := _UNCONSUMED.search(out):
            raise SweepAborted(
                f"benchmark_model on {adb.serial} ignored flags it does not know: "
                f"{m.group(1).strip()} (an older or other build than --tool {cfg.tool} expects; "
                f"its numbers would not mean what they say){where}", [], {})
        if rc != 0:
            raise DmadError(f"benchmark_model exited with status {rc} for {what}: "
                            f"{_failure_reason(out)}{where}")
        return out, log

    def measure(self, job: _Job, first: bool) -> dict[str, Any]:
        """One row: the run's latency and everything it depends on, or why it failed."""
        cfg, adb = self.cfg, self.adb
        if not first and cfg.cooldown_s > 0:
            time.sleep(cfg.cooldown_s)
        before, waited = wait_cool(adb, cfg.thermal_wait_s, cfg.thermal_poll_s)
        row: dict[str, Any] = {
            "platform": "android", "device": adb.serial, "model": job.label,
            "path": str(job.model), "backend": f"android-{job.delegate}",
            "delegate": job.delegate, "precision": job.precision, "threads": job.threads,
            "round": job.round + 1, "order": "interleaved", "taskset": cfg.taskset,
            "warmup": cfg.warmup, "thermal_before": before, "thermal_wait_s": waited,
            "cpu_clocks": cpu_clocks(adb), "battery": battery(adb)}
        flags: list[str] = []
        if (before.get("status") or 0) > 0:
            flags.append(f"thermal status {before['status_name']} before the run (waited "
                         f"{waited:g} s, the cap)")
        try:
            out, log = self.run(job)
            parsed = parse_benchmark_output(out, source=f"benchmark_model on {adb.serial} for "
                                            f"{job.label} ({job.delegate}, {job.threads} threads)")
        except SweepAborted:
            raise
        except DmadError as exc:
            row.update(status="failed", error=str(exc), median_ms=None, latency_ms=None,
                       latency_stat=None, flags=[*flags, f"FAILED: {exc}"], log=None,
                       thermal_after=thermal(adb))
            return row
        after = thermal(adb)
        flags += assess_delegation(job.delegate, parsed, self.sdk)
        if (after.get("status") or 0) > 0:
            flags.append(f"thermal status {after['status_name']} after the run (throttling "
                         "likely)")
        row.update(status="ok", runs=parsed.get("count", cfg.runs), **latency_fields(parsed),
                   p95_ms=parsed.get("p95_ms"), min_ms=parsed.get("min_ms"),
                   std_ms=parsed.get("std_ms"), init_ms=parsed.get("init_ms"),
                   memory=parsed.get("memory", {}), coverage=parsed.get("coverage", []),
                   warnings=parsed.get("warnings", []), thermal_after=after, flags=flags,
                   log=str(log) if log else None)
        if cfg.op_profiling:
            row.update(self._profile(job, flags))
        return row

    def _profile(self, job: _Job, flags: list[str]) -> dict[str, Any]:
        """A separate profiling run (profiling slows every op, so it never shares the timed
        one): its per-op rows in run order and its per-op-type summary."""
        try:
            out, log = self.run(job, profiling=True)
            parsed = parse_benchmark_output(out, source=f"profiling run for {job.label}")
        except SweepAborted:
            raise
        except DmadError as exc:
            flags.append(f"profiling run failed: {exc}")
            return {"op_profile": None, "op_types": None}
        return {"op_profile": parsed.get("op_runs"), "op_types": parsed.get("op_profile"),
                "profile_log": str(log) if log else None}
