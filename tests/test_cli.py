"""The dmad CLI as users run it: subcommands work, bad input is one line and exit code 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from dmad.cli import main
from dmad.compress.models import ResnetGenerator, ResnetSpec
from tests.conftest import dmad_cmd


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    last = err.splitlines()[-1]
    assert last.startswith("dmad: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in last, (n, last)
    return last


def test_macs_default_resnet_prints_both_conventions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["macs"]) == 0
    out = capsys.readouterr().out
    assert "11,378,179" in out and "56.832 G (paper" in out and "49.552 G (true)" in out


def test_macs_unet_and_per_layer_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["macs", "--arch", "unet", "--per-layer"]) == 0
    out = capsys.readouterr().out
    assert "54,413,955" in out and "ups.0.conv" in out


def test_macs_of_a_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dmad.compress.checkpoint import save_model

    save_model(ResnetGenerator(ResnetSpec(ngf=8, n_blocks=2)), tmp_path / "g.pt")
    assert main(["macs", str(tmp_path / "g.pt"), "--size", "64", "--json"]) == 0
    assert '"family": "resnet"' in capsys.readouterr().out


def test_import_via_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = ResnetGenerator(ResnetSpec(ngf=4, n_blocks=2))
    torch.save(g.state_dict(), tmp_path / "latest_net_G.pth")
    assert main(["import", str(tmp_path / "latest_net_G.pth"), "--arch", "resnet",
                 "--out", str(tmp_path / "g.pt")]) == 0
    assert (tmp_path / "g.pt").is_file()
    assert main(["macs", str(tmp_path / "g.pt"), "--size", "32"]) == 0


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             default_data: Path) -> None:
    missing = tmp_path / "nope.pth"
    _one_line_error(capsys, ["macs", str(missing)], "nope.pth")
    _one_line_error(capsys, ["import", str(missing), "--arch", "unet", "--out",
                             str(tmp_path / "x.pt")], "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    _one_line_error(capsys, ["macs", str(tmp_path / "empty.pth")], "empty.pth", "empty")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage" * 10)
    _one_line_error(capsys, ["macs", str(tmp_path / "junk.pth")], "junk.pth")
    _one_line_error(capsys, ["macs", "--size", "250"], "--size", "multiple of 4")
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[teacher]\nstepz = 3\n')
    _one_line_error(capsys, ["teacher", "--config", str(cfg), "--out", str(tmp_path / "r")],
                    "bad.toml", "stepz")
    cfg.write_text('[teacher]\nsteps = "many"\n')
    _one_line_error(capsys, ["teacher", "--config", str(cfg), "--out", str(tmp_path / "r")],
                    "bad.toml", "steps")
    cfg.write_text('[teacher\nsteps = 3\n')
    _one_line_error(capsys, ["teacher", "--config", str(cfg), "--out", str(tmp_path / "r")],
                    "bad.toml", "TOML")
    _one_line_error(capsys, ["teacher", "--out", str(tmp_path / "r"), "--data",
                             str(tmp_path / "nodata")], "nodata")
    _one_line_error(capsys, ["teacher", "--out", str(tmp_path / "r"), "--task", "pix2pix",
                             "--data", str(default_data / "unaligned")], "unaligned")
    _one_line_error(capsys, ["teacher", "--out", str(tmp_path / "r"), "--set", "batch_size=0"],
                    "batch_size")


def test_teacher_cli_then_resume_flag_reuses_saved_config(tmp_path: Path, default_data: Path,
                                                          cli_env: dict) -> None:
    run = tmp_path / "run"
    flags = ["--data", str(default_data), "--ngf", "4", "--n-blocks", "1", "--ndf", "4",
             "--size", "32", "--steps", "4", "--device", "cpu"]
    r = subprocess.run(dmad_cmd("teacher", "--out", str(run), *flags), env=cli_env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "teacher G_AtoB" in r.stdout and "GMACs" in r.stdout
    again = subprocess.run(dmad_cmd("teacher", "--out", str(run), *flags), env=cli_env,
                           capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.strip().count("\n") == 0
    assert "--force" in again.stderr
