"""``dmad demo`` on a tiny config: all stages run, a second run skips them, bad sections fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmad.compress.errors import DmadError
from dmad.pipeline import run_demo


def _config(tmp_path: Path, extra: str = "") -> Path:
    data = tmp_path / "data"
    cfg = tmp_path / "demo.toml"
    cfg.write_text(f"""
[data]
root = "{data}"
size = 32
n_train = 8
n_test = 2

[teacher]
data = "{data}"
ngf = 8
n_blocks = 2
ndf = 4
size = 32
steps = 3
device = "cpu"

[search]
target_gmacs = 0.2
steps = 6
bound_updates = 3
device = "cpu"

[finetune]
steps = 4
device = "cpu"

[eval]
device = "cpu"
{extra}
""")
    return cfg


def test_demo_runs_all_stages_then_skips_them(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path)
    times = run_demo(cfg, tmp_path / "run")
    assert set(times) == {"data", "teacher", "search", "finetune", "eval"}
    out = capsys.readouterr().out
    assert "G_AtoB searched" in out and "x fewer" in out and "PSNR vs teacher" in out
    assert (tmp_path / "run" / "search" / "architecture.json").is_file()
    before = (tmp_path / "run" / "teacher" / "G_AtoB.pt").stat().st_mtime_ns
    assert (tmp_path / "run" / "compress.json").is_file()  # the demo is a dmad compress run
    run_demo(cfg, tmp_path / "run")
    out = capsys.readouterr().out
    assert out.count("skipped (finished)") == 1 and "finished already" in out
    assert (tmp_path / "run" / "teacher" / "G_AtoB.pt").stat().st_mtime_ns == before


def test_demo_force_redoes_the_run_but_keeps_a_users_generator(tmp_path: Path) -> None:
    """--force redoes the compress stages; the generator compressed from inside the run folder
    (the demo's teacher/) is never what --force deletes."""
    cfg = _config(tmp_path)
    run_demo(cfg, tmp_path / "run")
    search = (tmp_path / "run" / "search" / "DONE.json").stat().st_mtime_ns
    from dmad.compress_run import CompressConfig, run_compress

    teacher = tmp_path / "run" / "teacher"
    before = (teacher / "G_AtoB.pt").read_bytes()
    run_compress(CompressConfig(generator=str(teacher), images=str(tmp_path / "data"),
                                target_gmacs=0.2, steps=2, finetune_steps=2, export=False,
                                size=32, export_size=32, device="cpu"),
                 tmp_path / "run", force=True,
                 tables={"search": {"bound_updates": 1}})
    assert (teacher / "G_AtoB.pt").read_bytes() == before
    assert (tmp_path / "run" / "search" / "DONE.json").stat().st_mtime_ns != search


def test_demo_config_errors_name_the_file(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text() + "\n[finetuen]\nsteps = 1\n")
    with pytest.raises(DmadError, match=r"demo\.toml.*finetuen"):
        run_demo(cfg, tmp_path / "run")


def test_demo_from_an_imported_generator_without_teacher_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from dmad.compress.data import make_default_dataset
    from dmad.compress.importer import import_to_file
    from dmad.compress.models import UnetGenerator, UnetSpec

    data = make_default_dataset(tmp_path / "data", size=32, n_train=8, n_test=2)
    torch.manual_seed(0)
    torch.save(UnetGenerator(UnetSpec(ngf=4, num_downs=5)).state_dict(), tmp_path / "G.pth")
    import_to_file(tmp_path / "G.pth", "unet", tmp_path / "G.pt")
    cfg = tmp_path / "user.toml"
    cfg.write_text(f"""
[search]
teacher = "{tmp_path / 'G.pt'}"
task = "pix2pix"
data = "{data}"
size = 32
target_gmacs = 0.05
steps = 4
bound_updates = 2
device = "cpu"

[finetune]
steps = 3
device = "cpu"

[eval]
device = "cpu"
""")
    times = run_demo(cfg, tmp_path / "run")
    assert set(times) == {"data", "search", "finetune", "eval"}
    ft = (tmp_path / "run" / "finetune" / "DONE.json").read_text()
    assert '"g_only": true' in ft
    assert "PSNR vs teacher" in capsys.readouterr().out


def test_demo_without_any_teacher_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "user.toml"
    cfg.write_text("[search]\ntarget_gmacs = 1.0\n")
    with pytest.raises(DmadError, match=r"user\.toml.*\[teacher\]"):
        run_demo(cfg, tmp_path / "run")


def test_demo_exports_both_models_with_int8_calibrated_on_the_teachers_data(
        tmp_path: Path) -> None:
    """The full teacher run (two directions, its own dataset) exports through `dmad compress`
    with its int8 calibrated on that dataset, as the student's is."""
    cfg = _config(tmp_path, '[export]\nquant = ["int8"]\nnum_calib = 2\n')
    times = run_demo(cfg, tmp_path / "run")
    assert "export" in times and "compare" not in times
    for side in ("full", "compressed"):
        assert (tmp_path / "run" / "export" / side / "generator_int8.tflite").is_file()
