"""The NaN/inf guard through the CLI: a diverging run stops with one error line, exit code 2,
and keeps the last good checkpoint (it loads, its weights are finite, no DONE.json)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from tests.reliability.conftest import TINY, Stages, error_line, run_cli


def _diverge(s: Stages, run: Path, task: str, lr: str) -> tuple[str, dict]:
    r = run_cli("teacher", "--out", str(run), "--data", str(s.data), "--task", task,
                "--num-downs", "5", *TINY, "--lr", lr, "--steps", "30", "--checkpoint-every", "1")
    line = error_line(r, only_line=False)  # the progress bar precedes it
    m = re.search(r"loss (\w+) became (nan|inf) at step (\d+); stopped, last good checkpoint "
                  r"kept at (\S+) \(step (\d+)\)", line)
    assert m, line
    assert m[4] == str(run / "checkpoint.pt")
    assert not (run / "DONE.json").exists() and not (run / "G_AtoB.pt").exists()
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == int(m[5]) == int(m[3]) - 1
    return line, ckpt


def _finite(ckpt: dict) -> dict[str, list[str]]:
    return {m: [k for k, t in sd.items() if t.is_floating_point() and not torch.isfinite(t).all()]
            for m, sd in ckpt["modules"].items()}


def test_nan_loss_stops_and_keeps_last_good_checkpoint(stages: Stages, tmp_path: Path) -> None:
    _, ckpt = _diverge(stages, tmp_path / "run", "cyclegan", "1e30")
    assert _finite(ckpt) == {m: [] for m in ckpt["modules"]}


def test_kept_checkpoint_is_finite_when_weights_blow_up_first(stages: Stages,
                                                               tmp_path: Path) -> None:
    # A step can report a finite loss and still leave NaN weights (or an overflowed BatchNorm
    # running variance): the guard checks the weights before every checkpoint, so no
    # checkpoint with NaN/inf is ever written or called "last good".
    run = tmp_path / "run"
    r = run_cli("teacher", "--out", str(run), "--data", str(stages.data), "--task", "pix2pix",
                "--num-downs", "5", *TINY, "--lr", "1e15", "--steps", "30",
                "--checkpoint-every", "1")
    line = error_line(r, only_line=False)
    assert re.search(r"(weights became NaN/inf by step \d+|loss \w+ became (nan|inf))", line), line
    assert not (run / "DONE.json").exists() and not (run / "G_AtoB.pt").exists()
    if (run / "checkpoint.pt").exists():
        ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
        assert _finite(ckpt) == {m: [] for m in ckpt["modules"]}
        assert f"(step {ckpt['step']})" in line
    else:
        assert "no checkpoint was written yet" in line
