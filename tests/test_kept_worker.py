"""The kept converter process: one TensorFlow start for many conversions, files the same as a
fresh process writes, a failed or timed-out job one line and the next job unharmed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dmad.compress.errors import DmadError
from dmad.compress.models import ResnetSpec, build
from dmad.export.graph import trace
from dmad.export.kept_worker import kept_process
from dmad.export.tflite import Int8Recipe, convert


def _graph(seed: int = 0):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    return trace(build(ResnetSpec(ngf=4, n_blocks=1)).eval(), (1, 3, 32, 32))


def _calib() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)


def _kept_pid() -> int | None:
    return kept_process("dmad.export.tflite")


def test_conversions_share_one_process_and_write_what_a_fresh_one_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    g = _graph()
    a = convert(None, tmp_path / "a", ["fp32", "int8"], _calib(), graph=g)
    pid = _kept_pid()
    assert pid is not None
    b = convert(None, tmp_path / "b", ["fp32", "int8"], _calib(), graph=_graph(1))
    assert _kept_pid() == pid  # TensorFlow started once
    monkeypatch.setenv("DMAD_CONVERTER_REUSE", "0")
    fresh = convert(None, tmp_path / "c", ["fp32", "int8"], _calib(), graph=g)
    for v in ("fp32", "int8"):
        assert a[v].read_bytes() == fresh[v].read_bytes(), v  # no state carried between jobs
        assert b[v].read_bytes() != a[v].read_bytes()
    assert sorted(os.listdir(tmp_path / "a")) == ["generator_fp32.tflite", "generator_int8.tflite"]


def test_a_failed_job_is_one_line_and_the_next_one_converts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    g = _graph()
    with pytest.raises(DmadError, match="no convolution named nothere"):
        convert(None, tmp_path / "bad", ["int8"], _calib(), graph=g,
                recipe=Int8Recipe(float_layers=("nothere",)))
    ok = convert(None, tmp_path / "ok", ["fp32"], None, graph=g)
    assert ok["fp32"].stat().st_size > 1000
    monkeypatch.chdir(tmp_path)  # a relative --out: the kept process, started
    # in another folder, still finds it
    rel = convert(None, Path("rel"), ["fp32"], None, graph=g)
    assert rel["fp32"] == Path("rel/generator_fp32.tflite") and rel["fp32"].is_file()
    with pytest.raises(DmadError, match="timed out"):
        convert(None, tmp_path / "slow", ["fp32"], None, graph=g, timeout=0.01)
    assert _kept_pid() is None  # the stuck process was killed
    monkeypatch.setenv("DMAD_CONVERTER_REUSE", "0")
    fresh = convert(None, tmp_path / "fresh", ["fp32"], None, graph=g)
    assert _kept_pid() is None  # reuse off: a process per job, none kept
    assert fresh["fp32"].read_bytes() == ok["fp32"].read_bytes()
    monkeypatch.delenv("DMAD_CONVERTER_REUSE")
    again = convert(None, tmp_path / "again", ["fp32"], None, graph=g)
    assert again["fp32"].read_bytes() == ok["fp32"].read_bytes()


def test_a_request_the_kept_process_cannot_read_is_answered_not_dropped() -> None:
    """A malformed request line gets an error reply and the process takes the next one (the
    caller would otherwise wait for its timeout)."""
    import json
    import subprocess
    import sys

    code = "from dmad.export.kept_worker import serve; serve(lambda path: 0)"
    r = subprocess.run([sys.executable, "-c", code], input="not json\n{}\n", text=True,
                       capture_output=True, timeout=120)
    replies = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0 and len(replies) == 2, r.stderr[-2000:]
    assert replies[0]["rc"] == 1 and "JSONDecodeError" in replies[0]["error"]
    assert replies[1]["rc"] == 1 and "KeyError" in replies[1]["error"]
