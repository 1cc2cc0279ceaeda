"""Reliability fixtures: finished stage runs (built once per session with the Python API) and
helpers that run the real ``dmad`` CLI in a subprocess and check its one-line errors."""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import dmad_cmd

#: The tiny model every CLI case trains (seconds on one CPU thread).
TINY = ["--ngf", "4", "--n-blocks", "2", "--ndf", "4", "--size", "32", "--device", "cpu"]
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Stages:
    """Finished runs of every training stage, shared read-only (copy before changing)."""

    data: Path  # the default dataset root (unaligned/, aligned/)
    teacher: Path
    search: Path
    finetune: Path


@pytest.fixture(scope="session")
def stages(default_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Stages:
    from dmad.compress.train.finetune import FinetuneConfig, finetune
    from dmad.compress.train.search import SearchConfig, search
    from dmad.compress.train.teacher import TeacherConfig, train_teacher

    root = tmp_path_factory.mktemp("stages")
    train_teacher(TeacherConfig(data=str(default_data), ngf=4, n_blocks=2, ndf=4, size=32,
                                steps=2, device="cpu"), root / "teacher")
    search(SearchConfig(teacher=str(root / "teacher"), target_gmacs=0.08, steps=4,
                        bound_updates=2, device="cpu"), root / "search")
    finetune(FinetuneConfig(search=str(root / "search"), steps=2, device="cpu"),
             root / "finetune")
    return Stages(default_data, root / "teacher", root / "search", root / "finetune")


def cli_environ() -> dict[str, str]:
    """The environment of ``tests/conftest.py::cli_env`` (usable in module-scoped fixtures)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``dmad ARGS`` as a user would; never raises on a non-zero exit."""
    return subprocess.run(dmad_cmd(*args), env=cli_environ(), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def error_line(r: subprocess.CompletedProcess[str], *, only_line: bool = True) -> str:
    """Assert ``r`` failed the user-facing way and return its ``dmad: error: ...`` line.

    Exit code 2, no traceback, exactly one error line and it is the last thing on stderr;
    ``only_line`` (errors before training) also requires that nothing else was printed.
    """
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("dmad: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr[-3000:]
    if only_line:
        assert len(lines) == 1, r.stderr[-3000:]
    return errors[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its content hash (to prove nothing was overwritten)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
