"""Teacher training: it learns, resumes exactly (also after kill -9), guards NaN, never clobbers."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from dmad.compress.checkpoint import load_model
from dmad.compress.errors import DmadError
from dmad.compress.train.teacher import TeacherConfig, train_teacher
from tests.conftest import dmad_cmd


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_pix2pix_teacher_reduces_l1(tmp_path: Path, tiny_teacher: dict) -> None:
    cfg = TeacherConfig(**{**tiny_teacher, "task": "pix2pix", "steps": 60, "decay_steps": 0,
                           "ngf": 8})
    train_teacher(cfg, tmp_path / "run")
    l1 = [r["L1"] for r in _log(tmp_path / "run")]
    assert sum(l1[-10:]) / 10 < 0.85 * sum(l1[:10]) / 10


def test_cyclegan_teacher_reduces_cycle_loss_and_writes_outputs(tmp_path: Path,
                                                                tiny_teacher: dict) -> None:
    run = tmp_path / "run"
    cfg = TeacherConfig(**{**tiny_teacher, "steps": 40, "decay_steps": 0, "ngf": 8})
    summary = train_teacher(cfg, run)
    cyc = [r["cycle_A"] + r["cycle_B"] for r in _log(run)]
    assert sum(cyc[-10:]) / 10 < 0.7 * sum(cyc[:10]) / 10
    for name in ("G_AtoB.pt", "G_BtoA.pt", "D_AtoB.pt", "D_BtoA.pt", "samples.png",
                 "DONE.json", "config.json", "checkpoint.pt"):
        assert (run / name).is_file(), name
    g, meta = load_model(run / "G_AtoB.pt")
    assert meta["direction"] == "AtoB" and g(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    assert summary["generators"]["AtoB"]["params"] == sum(p.numel() for p in g.parameters())


@pytest.mark.parametrize("task", ["cyclegan", "pix2pix"])
def test_resume_equals_uninterrupted(tmp_path: Path, tiny_teacher: dict, task: str) -> None:
    cfg = TeacherConfig(**{**tiny_teacher, "task": task, "checkpoint_every": 5})
    train_teacher(cfg, tmp_path / "straight")
    train_teacher(cfg, tmp_path / "split", max_steps=7)  # stops after a checkpoint at step 7
    assert not (tmp_path / "split" / "DONE.json").exists()
    train_teacher(cfg, tmp_path / "split", resume=True)
    for name in ("G_AtoB.pt", "D_AtoB.pt"):
        a, b = _weights(tmp_path / "straight" / name), _weights(tmp_path / "split" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert _log(tmp_path / "straight") == [
        {**r, "time": s["time"]} for r, s in zip(_log(tmp_path / "split"),
                                                 _log(tmp_path / "straight"), strict=True)]


def test_kill_9_then_resume_equals_uninterrupted(tmp_path: Path, default_data: Path,
                                                 cli_env: dict) -> None:
    flags = ["--data", str(default_data), "--ngf", "4", "--n-blocks", "2", "--ndf", "4",
             "--size", "32", "--steps", "60", "--checkpoint-every", "3", "--device", "cpu"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(dmad_cmd("teacher", "--out", str(straight), *flags), env=cli_env, check=True,
                   capture_output=True)
    proc = subprocess.Popen(dmad_cmd("teacher", "--out", str(killed), *flags), env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not (killed / "checkpoint.pt").exists():
        time.sleep(0.05)
    time.sleep(0.3)  # let it run past the first checkpoint, between writes
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "DONE.json").exists(), "the run finished before the kill"
    r = subprocess.run(dmad_cmd("teacher", "--out", str(killed), "--resume"), env=cli_env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ("G_AtoB.pt", "G_BtoA.pt", "D_AtoB.pt", "D_BtoA.pt"):
        a, b = _weights(straight / name), _weights(killed / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, tiny_teacher: dict) -> None:
    run = tmp_path / "run"
    cfg = TeacherConfig(**{**tiny_teacher, "task": "pix2pix", "lr": 1e30, "steps": 30,
                           "checkpoint_every": 1})
    with pytest.raises(DmadError, match=r"loss \w+ became (nan|inf)") as err:
        train_teacher(cfg, run)
    assert "last good checkpoint kept" in str(err.value) or "no checkpoint" in str(err.value)
    if (run / "checkpoint.pt").exists():
        ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
        for state in ckpt["modules"].values():
            assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    assert not (run / "DONE.json").exists()


def test_finished_run_is_not_overwritten_without_force(tmp_path: Path, tiny_teacher: dict) -> None:
    run = tmp_path / "run"
    cfg = TeacherConfig(**{**tiny_teacher, "steps": 2})
    train_teacher(cfg, run)
    before = (run / "G_AtoB.pt").read_bytes()
    with pytest.raises(DmadError, match=r"finished run.*--force"):
        train_teacher(cfg, run)
    assert (run / "G_AtoB.pt").read_bytes() == before
    train_teacher(TeacherConfig(**{**tiny_teacher, "steps": 2, "seed": 1}), run, force=True)
    assert (run / "G_AtoB.pt").read_bytes() != before


def test_unfinished_run_needs_resume_or_force(tmp_path: Path, tiny_teacher: dict) -> None:
    run = tmp_path / "run"
    cfg = TeacherConfig(**tiny_teacher)
    train_teacher(cfg, run, max_steps=2)
    with pytest.raises(DmadError, match=r"unfinished run.*--resume"):
        train_teacher(cfg, run)


@pytest.mark.parametrize("field,value,match", [
    ("task", "stylegan", "task"), ("arch", "vgg", "arch"), ("size", 30, "multiple of 4"),
    ("gan_mode", "wgan", "gan_mode"), ("load_size", 16, "load_size"), ("steps", 0, "steps"),
])
def test_config_validation_names_the_field(field: str, value: object, match: str) -> None:
    with pytest.raises(DmadError, match=match):
        TeacherConfig(**{field: value})


def test_unet_size_must_fit_depth() -> None:
    with pytest.raises(DmadError, match=r"multiple of 2\*\*num_downs"):
        TeacherConfig(task="pix2pix", size=96, num_downs=6)
    assert TeacherConfig(task="pix2pix", size=64).num_downs == 6


def _curves(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard itself reads from a run's event files (its own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(folder))
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def test_training_curves_reach_tensorboard_once_per_step_across_a_resume(
        tmp_path: Path, tiny_teacher: dict) -> None:
    cfg = TeacherConfig(**{**tiny_teacher, "steps": 6, "log_every": 1, "checkpoint_every": 2})
    run = tmp_path / "run"
    train_teacher(cfg, run, max_steps=3)
    train_teacher(cfg, run, resume=True)
    curves = _curves(run / "tensorboard")
    log = _log(run)
    assert [s for s, _ in curves["teacher/cycle_A"]] == [r["step"] for r in log] == [1, 2, 3, 4,
                                                                                    5, 6]
    assert [v for _, v in curves["teacher/cycle_A"]] == pytest.approx([r["cycle_A"] for r in log])
    assert "teacher/lr_factor" in curves and "teacher/time" not in curves
    off = tmp_path / "off"
    train_teacher(TeacherConfig(**{**tiny_teacher, "steps": 2, "tensorboard": False}), off)
    assert not (off / "tensorboard").exists()


def test_a_resume_supersedes_the_steps_logged_after_its_checkpoint(tmp_path: Path) -> None:
    """A killed run logged steps 1–5 but its checkpoint is at step 3: the resumed run logs 4
    and 5 again, and TensorBoard must show them once, with the resumed values."""
    from dmad.compress.train.events import EventWriter, crc32c

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    w = EventWriter(tmp_path)
    for s in range(1, 6):
        w.scalars(s, {"teacher/G": float(s)})
    w.close()
    w = EventWriter(tmp_path, purge_from=4)
    for s in range(4, 7):
        w.scalars(s, {"teacher/G": 10.0 * s})
    w.close()
    assert _curves(tmp_path)["teacher/G"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0),
                                              (5, 50.0), (6, 60.0)]
