"""Reliability fixtures: finished stage runs (built once per session with the Python API) and
helpers that run the real ``dmad`` CLI in a subprocess and check its one-line errors."""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import dmad_cmd
from tests.reliability.zygote import Zygote

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


@dataclass(frozen=True)
class Corpus:
    """Real files of every kind the CLI takes, and the finished runs they come from."""

    root: Path
    stages: Stages
    files: dict[str, bytes]  # base kind -> bytes of a valid file

    @property
    def teacher_g(self) -> str:
        return str(self.stages.teacher / "G_AtoB.pt")

    @property
    def student_g(self) -> str:
        return str(self.stages.finetune / "student_G_AtoB.pt")

    @property
    def images(self) -> str:
        return str(self.stages.data / "unaligned" / "testA")

    @property
    def tflite(self) -> str:
        return str(self.root / "export" / "generator_fp32.tflite")


def _latency_table(model: Path) -> dict:
    """A synthetic latency table of the teacher's family (the shape ``dmad latency-table``
    writes, made without timing anything)."""
    from dmad.compress.checkpoint import load_model
    from tests.test_latency import synthetic_table

    return synthetic_table(load_model(model)[0].spec).to_json()


@pytest.fixture(scope="session")
def corpus(stages: Stages, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    from dmad.compress.data.split import make_split
    from dmad.export.api import ExportConfig, export_model

    root = tmp_path_factory.mktemp("corpus")
    export_model(ExportConfig(model=stages.finetune / "student_G_AtoB.pt", out=root / "export",
                              quant=["fp32"], size=32, num_eval=2))
    split = make_split(stages.data / "unaligned" / "trainA", None, size=32)
    raw = torch.load(stages.teacher / "G_AtoB.pt", weights_only=True)["state_dict"]
    buf = io.BytesIO()
    torch.save(raw, buf)
    files = {
        "model": (stages.teacher / "G_AtoB.pt").read_bytes(),
        "raw": buf.getvalue(),
        "checkpoint": (stages.teacher / "checkpoint.pt").read_bytes(),
        "tflite": (root / "export" / "generator_fp32.tflite").read_bytes(),
        "onnx": (root / "export" / "generator.onnx").read_bytes(),
        "split": json.dumps(split.to_dict()).encode(),
        "architecture": (stages.search / "architecture.json").read_bytes(),
        "toml": b"[teacher]\nsteps = 1\nngf = 4\n",
        "latency": json.dumps(_latency_table(stages.teacher / "G_AtoB.pt")).encode(),
        "png": (stages.teacher / "samples.png").read_bytes(),
    }
    return Corpus(root, stages, files)


@pytest.fixture(scope="session")
def compress_run(stages: Stages, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished ``dmad compress`` run (no export, no compare) made through the CLI; its
    stdout is kept in ``stdout.txt`` inside the run."""
    out = tmp_path_factory.mktemp("compress") / "run"
    r = run_cli("compress", str(stages.teacher / "G_AtoB.pt"), "--images",
                str(stages.data / "unaligned" / "trainA"), "--target-gmacs", "0.05", "--steps",
                "2", "--finetune-steps", "2", "--size", "32", "--export-size", "32",
                "--export", "false", "--compare", "false", "--device", "cpu", "--out", str(out),
                timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (out / "stdout.txt").write_text(r.stdout)
    return out


def cli_environ() -> dict[str, str]:
    """The environment of ``tests/conftest.py::cli_env`` (usable in module-scoped fixtures)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["OMP_NUM_THREADS"] = "1"
    return env


_ZYGOTE: list[Zygote] = []


def shared_zygote() -> Zygote:
    """The session's zygote (``zygote.py``): ``dmad`` imported once, a forked child per command
    line, so a case costs its work and not two seconds of starting Python and torch."""
    if not _ZYGOTE or _ZYGOTE[0].proc.poll() is not None:
        _ZYGOTE[:] = [Zygote(cli_environ(), str(ROOT))]
        atexit.register(_ZYGOTE[0].close)
    return _ZYGOTE[0]


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``dmad ARGS`` as a user would (the real entry point in its own process, forked from
    the session's zygote); never raises on a non-zero exit."""
    argv = list(args)
    r = shared_zygote().run(argv, str(ROOT), timeout)
    if r["timed_out"]:
        raise subprocess.TimeoutExpired(dmad_cmd(*argv), timeout, r["stdout"], r["stderr"])
    rc = r["rc"] if r["rc"] is not None else -int(r["signal"])
    return subprocess.CompletedProcess(dmad_cmd(*argv), rc, r["stdout"], r["stderr"])


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


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    """The hostile-input suite's count (issue 25 asks for it printed)."""
    import sys

    mod = next((m for k, m in sys.modules.items() if k.endswith("test_hostile")), None)
    counts = getattr(mod, "COUNTS", None)
    if counts and counts["cases"]:
        terminalreporter.write_line(
            f"hostile-input suite: {counts['cases']} generated cases passed "
            f"({counts['refused']} refused with one line, {counts['accepted']} accepted as "
            "valid files): 0 tracebacks, 0 signals, 0 files changed outside --out")
