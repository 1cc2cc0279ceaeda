"""``dmad demo`` on a tiny config: all stages run, a second run skips them, bad sections fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress.errors import DmadError
from compress.pipeline import run_demo


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
    assert "searched G_AtoB" in out and "x fewer" in out and "PSNR vs teacher" in out
    assert (tmp_path / "run" / "search" / "architecture.json").is_file()
    before = (tmp_path / "run" / "teacher" / "G_AtoB.pt").stat().st_mtime_ns
    run_demo(cfg, tmp_path / "run")
    out = capsys.readouterr().out
    assert out.count("skipped (finished)") == 3
    assert (tmp_path / "run" / "teacher" / "G_AtoB.pt").stat().st_mtime_ns == before


def test_demo_config_errors_name_the_file(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text() + "\n[finetuen]\nsteps = 1\n")
    with pytest.raises(DmadError, match=r"demo\.toml.*finetuen"):
        run_demo(cfg, tmp_path / "run")
