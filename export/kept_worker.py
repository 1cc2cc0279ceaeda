"""A converter process kept between conversions: TensorFlow starts once per caller, not per file.

Importing TensorFlow takes about five seconds, more than converting a small generator, and a
caller converts several times: ``dmad compress`` exports the full model and the student, a
script exports every student of a frontier, a test session hundreds of graphs. The conversion
still runs in a process of its own (a crash, ``sys.exit`` or TensorFlow's global state never
reach the caller); that process now takes one job after another, each in its own scratch
folder with its own log, and exits when its caller does or after :data:`IDLE_S` unused. A
crash or a timeout ends it (the next job starts a fresh one). ``DMAD_CONVERTER_REUSE=0``
runs every job in a fresh process, as before.
"""

from __future__ import annotations

import gc
import json
import os
import select
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: the kept process exits after this many seconds without a job; its caller starts a new one
#: when it has not used it for IDLE_S - 60 s (so a job never races the exit)
IDLE_S = 600.0
LOG = "worker.log"


@dataclass
class _Kept:
    proc: subprocess.Popen[str]
    owner: int  # the pid that started it: a forked child starts its own
    last: float


_KEPT: dict[str, _Kept] = {}
_LOCK = threading.Lock()


def run_job(module: str, work: Path, env: dict[str, str], timeout: float | None,
            reuse: bool = True) -> tuple[int | None, str]:
    """Run ``python -m MODULE job.json`` in ``work`` (the kept process of ``module`` where
    ``reuse``): its exit code (None when it died) and what it printed. Raises TimeoutError."""
    if not reuse or os.environ.get("DMAD_CONVERTER_REUSE", "1") == "0":
        try:
            proc = subprocess.run([sys.executable, "-m", module, "job.json"], cwd=work, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError from None
        return proc.returncode, proc.stdout
    with _LOCK:
        return _kept_job(module, work, env, timeout)


def kept_process(module: str) -> int | None:
    """The pid of this process's kept converter of ``module``; None when none runs."""
    kept = _KEPT.get(module)
    if kept is None or kept.owner != os.getpid() or kept.proc.poll() is not None:
        return None
    return kept.proc.pid


def _kept_job(module: str, work: Path, env: dict[str, str], timeout: float | None
              ) -> tuple[int | None, str]:
    work = work.resolve()  # the kept process has a working folder of its own
    log = work / LOG
    request = json.dumps({"work": os.fspath(work), "log": os.fspath(log)}) + "\n"
    for attempt in (0, 1):
        kept = _kept(module, env)
        try:
            assert kept.proc.stdin is not None
            kept.proc.stdin.write(request)
            kept.proc.stdin.flush()
            break
        except OSError:  # it exited between the check and the write: once more, fresh
            _drop(module)
            if attempt:
                return None, "the converter process exited before it took the job"
    assert kept.proc.stdout is not None
    ready, _, _ = select.select([kept.proc.stdout], [], [], timeout)
    if not ready:
        _drop(module)
        raise TimeoutError
    line = kept.proc.stdout.readline()
    kept.last = time.monotonic()
    text = log.read_text(errors="replace") if log.exists() else ""
    if not line:
        _drop(module)
        return None, text
    reply = json.loads(line)
    return int(reply["rc"]), text or str(reply.get("error", ""))


def _kept(module: str, env: dict[str, str]) -> _Kept:
    kept = _KEPT.get(module)
    if kept is not None and kept.owner == os.getpid() and kept.proc.poll() is None \
            and time.monotonic() - kept.last < IDLE_S - 60:
        return kept
    if kept is not None and kept.owner == os.getpid():
        _drop(module)
    proc = subprocess.Popen([sys.executable, "-m", module, "--serve"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    _KEPT[module] = _Kept(proc, os.getpid(), time.monotonic())
    return _KEPT[module]


def _drop(module: str) -> None:
    kept = _KEPT.pop(module, None)
    if kept is not None and kept.owner == os.getpid():
        kept.proc.kill()
        kept.proc.wait()


# ----------------------------------------------------------------------------- kept side


def serve(job: Callable[[str], int]) -> None:
    """The kept process's loop: one request per line on stdin, ``job("job.json")`` run in the
    request's folder with stdout and stderr in its log, ``{"rc": N}`` back on stdout."""
    reply = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], IDLE_S)
        line = sys.stdin.readline() if ready else ""
        if not line:
            return  # the caller is gone, or it has not needed us for IDLE_S
        try:
            req = json.loads(line)
            answer: dict[str, object] = {"rc": _one(job, req["work"], req["log"], null)}
        except Exception as exc:  # before the job ran (its folder or log, a bad request):
            # answered, never a silent exit the caller would wait out
            what = "" if isinstance(exc, OSError) else f"converter process: {type(exc).__name__}: "
            answer = {"rc": 1, "error": f"ERROR: {what}{exc}"}
        reply.write(json.dumps(answer) + "\n")
        reply.flush()
        gc.collect()


def _one(job: Callable[[str], int], work: str, log: str, null: int) -> int:
    os.chdir(work)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        return int(job("job.json"))
    except SystemExit as exc:  # onnx2tf and our own checks exit on an error
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.chdir(Path(log).anchor)
