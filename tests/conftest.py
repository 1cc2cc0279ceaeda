"""Shared fixtures: the embedded default dataset generated once per session, tiny configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from dmad.compress.data import make_default_dataset

# validation results are cached per folder; tests keep theirs out of the user's ~/.cache
os.environ.setdefault("DMAD_CACHE", str(Path(os.environ.get("TMPDIR", "/tmp")) /
                                        f"dmad-test-cache-{os.getpid()}"))


@pytest.fixture(scope="session")
def default_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default dataset at 32² (small and fast), both layouts."""
    root = tmp_path_factory.mktemp("data") / "default"
    return make_default_dataset(root, size=32, n_train=24, n_test=4, seed=0)


@pytest.fixture
def tiny_teacher(default_data: Path) -> dict[str, object]:
    """TeacherConfig fields for a seconds-long CPU run."""
    return {"data": str(default_data), "ngf": 4, "n_blocks": 2, "ndf": 4, "size": 32,
            "steps": 12, "checkpoint_every": 4, "log_every": 1, "num_downs": 5, "device": "cpu"}


def dmad_cmd(*args: str) -> list[str]:
    """The real CLI in a subprocess (as a user runs it)."""
    return [sys.executable, "-m", "dmad", *args]


@pytest.fixture
def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    env["OMP_NUM_THREADS"] = "1"
    return env
