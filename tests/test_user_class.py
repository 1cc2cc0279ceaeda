"""``--generator-class pkg.mod:Class --kwargs JSON``: a user's own generator class and its state
dict, through ``dmad macs`` and ``dmad export``; every way it can go wrong is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

SOURCE = '''
import torch
from torch import nn


class Gen(nn.Module):
    """An in-house generator: bilinear upsampling and a long skip."""

    def __init__(self, ngf=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, ngf, 3, 1, 1), nn.BatchNorm2d(ngf), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(ngf, 2 * ngf, 3, 2, 1), nn.InstanceNorm2d(2 * ngf),
                                  nn.ReLU())
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"),
                                nn.Conv2d(2 * ngf, ngf, 3, 1, 1), nn.ReLU())
        self.head = nn.Conv2d(2 * ngf, 3, 3, 1, 1)

    def forward(self, x):
        s = self.stem(x)
        return torch.tanh(self.head(torch.cat([self.up(self.down(s)), s], 1)))
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's folder: their module and a checkpoint of it (state dict under "state_dict")."""
    (tmp_path / "mygen.py").write_text(SOURCE)
    sys.path.insert(0, str(tmp_path))
    try:
        import mygen

        torch.manual_seed(0)
        g = mygen.Gen(ngf=6)
        g.stem[1].running_var.uniform_(0.5, 2.0)
        torch.save({"state_dict": g.state_dict(), "epoch": 3}, tmp_path / "gen.pth")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mygen", None)
    return tmp_path


def _dmad(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "dmad", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_macs_and_export_of_a_users_class(project: Path) -> None:
    r = _dmad(project, "macs", "gen.pth", "--generator-class", "mygen:Gen",
              "--kwargs", '{"ngf": 6}', "--size", "64", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    sys.path.insert(0, str(project))
    try:
        import mygen

        from dmad.compress.arch import profile

        prof = profile(mygen.Gen(ngf=6), (1, 3, 64, 64))
    finally:
        sys.path.remove(str(project))
        sys.modules.pop("mygen", None)
    assert got["family"] == "Gen" and got["gmacs_true"] == pytest.approx(prof.macs_true / 1e9)
    photos = project / "photos"
    photos.mkdir()
    from PIL import Image

    for i in range(6):
        Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()).save(photos / f"{i}.png")
    r = _dmad(project, "export", "--generator-class", "mygen:Gen", "--kwargs", '{"ngf": 6}',
              "--model", "gen.pth", "--out", "out", "--size", "32", "--quant", "fp32",
              "--calib", "photos")
    assert r.returncode == 0, r.stderr
    rep = json.loads((project / "out" / "parity.json").read_text())
    assert rep["artifacts"]["fp32"]["parity"]["psnr_worst_db"] >= 100
    assert rep["source"]["class"] == "mygen:Gen"


@pytest.mark.parametrize(("args", "says"), [
    (("--generator-class", "mygen"), "expected package.module:ClassName"),
    (("--generator-class", "nothere:Gen"), "cannot import nothere (ModuleNotFoundError"),
    (("--generator-class", "mygen:Nope"), "mygen has no nn.Module class 'Nope'"),
    (("--generator-class", "mygen:Gen", "--kwargs", "{ngf: 6}"), "--kwargs: not JSON"),
    (("--generator-class", "mygen:Gen", "--kwargs", "[6]"), "expected a JSON object"),
    (("--generator-class", "mygen:Gen", "--kwargs", '{"width": 6}'), "Gen(**{'width': 6}) "
     "failed (TypeError"),
    (("--generator-class", "mygen:Gen", "--kwargs", '{"ngf": 8}'), "does not fit Gen(**"),
])
def test_each_mistake_is_one_line(project: Path, args: tuple[str, ...], says: str) -> None:
    r = _dmad(project, "macs", "gen.pth", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and says in r.stderr, r.stderr


@pytest.mark.parametrize("which", ["cut", "pix2pixhd"])
def test_cut_and_pix2pixhd_checkpoints_are_recognised(which: str, tmp_path: Path) -> None:
    """A ``latest_net_G.pth`` of CUT (blur buffers) or pix2pixHD (four downsamplings, label-map
    input) is recognised from its tensors and loaded strictly; ``dmad macs`` reads it."""
    from dmad.compress.models.public import CutResnet, Pix2PixHDGlobal, public_generator

    torch.manual_seed(0)
    g = CutResnet(ngf=8, n_blocks=3) if which == "cut" else \
        Pix2PixHDGlobal(ngf=4, n_down=4, n_blocks=2, in_ch=36)
    state = g.state_dict()
    back = public_generator(state)
    assert type(back) is type(g)
    x = torch.rand(1, 36 if which == "pix2pixhd" else 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x), g.eval()(x))
    torch.save(state, tmp_path / "latest_net_G.pth")
    r = _dmad(tmp_path, "macs", "latest_net_G.pth", "--size", "64", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["family"] == type(g).__name__
    from dmad.compress.models import ResnetSpec, build

    assert public_generator(build(ResnetSpec(ngf=8, n_blocks=2)).state_dict()) is None
