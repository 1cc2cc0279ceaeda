"""A zygote for the CLI suites (hostile and bad inputs, run safety): real ``dmad`` command lines,
fast.

Starting Python and importing torch costs about two seconds, which would make a suite of
thousands of command lines take hours. This process imports ``dmad.cli`` (and what its commands
import at the top) once, runs no computation itself, and forks one child per command line. The
child is the real CLI entry (``dmad.cli.main``) in its own process: its exit code, any signal
that kills it, and its stdout/stderr come back as they would from a subprocess.

Protocol (one JSON object per line): in ``{"argv": [...], "cwd": DIR, "timeout": S}``, out
``{"rc": int | null, "signal": int | null, "stdout": str, "stderr": str, "timed_out": bool}``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback


def _child(argv: list[str], cwd: str, out_fd: int, err_fd: int) -> None:
    os.setsid()  # its own process group: a timeout kills what it started too
    os.chdir(cwd)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    sys.argv = ["dmad", *argv]
    rc = 1
    try:
        from dmad.cli import main

        rc = main(argv)
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code if isinstance(exc.code, int) else 2
    except BaseException:  # escaped main: the suite reports it as a traceback
        traceback.print_exc()
        rc = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(rc)


def _run(req: dict) -> dict:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:
            try:
                _child(req["argv"], req["cwd"], out.fileno(), err.fileno())
            finally:
                os._exit(99)
        deadline = time.time() + float(req.get("timeout", 120))
        timed_out = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.time() > deadline:
                timed_out = True
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.01)
        out.seek(0)
        err.seek(0)
        return {
            "rc": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "stdout": out.read().decode("utf-8", "replace"),
            "stderr": err.read().decode("utf-8", "replace"),
            "timed_out": timed_out,
        }


class Zygote:
    """The client: one long-lived zygote process, a forked child per command line."""

    def __init__(self, env: dict[str, str], cwd: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.zygote"], cwd=cwd, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, argv: list[str], cwd: str, timeout: float = 180) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd),
                                          "timeout": timeout}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote died (exit {self.proc.poll()})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def main() -> None:
    import dmad.cli  # noqa: F401  (preloaded: each request forks from a warm interpreter)
    import dmad.compress.checkpoint  # noqa: F401
    import dmad.compress.train.loop  # noqa: F401

    for line in sys.stdin:
        if not line.strip():
            continue
        sys.stdout.write(json.dumps(_run(json.loads(line))) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
