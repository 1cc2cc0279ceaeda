"""``dmad translate``: outputs, the page and its numbers, every model kind, the user's files."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dmad.compress.checkpoint import save_model
from dmad.compress.errors import DmadError
from dmad.compress.metrics import psnr
from dmad.compress.models import ResnetSpec, build
from dmad.translate import TranslateConfig, translate
from tests.conftest import dmad_cmd

CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two generators of different widths (full, compressed) and a folder of photographs of
    three shapes."""
    root = tmp_path_factory.mktemp("translate")
    torch.manual_seed(0)
    save_model(build(ResnetSpec(ngf=8, n_blocks=2)), root / "full.pt")
    save_model(build(ResnetSpec(ngf=4, n_blocks=1)), root / "small.pt")
    (root / "photos").mkdir()
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(70, 50), (64, 64), (33, 90)]):
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "photos" / f"p{i}.png")
    return {"root": root, "full": root / "full.pt", "small": root / "small.pt",
            "photos": root / "photos"}


def test_two_models_side_by_side(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "look"
    s = translate(TranslateConfig(models=(str(models["full"]), str(models["small"])),
                                  images=str(models["photos"]), out=str(out), max_side=64))
    assert s["images"] == 3 and set(s["median_ms"]) == {"full", "compressed"}
    rows = {r["image"]: r for r in s["per_image"]}
    # fully convolutional: each photograph at its own size, long side capped, multiple of 4
    assert rows["p0.png"]["size"] == [64, 44] and rows["p2.png"]["size"] == [20, 64]
    for name, r in rows.items():
        stem = Path(name).stem
        full = np.asarray(Image.open(out / "images" / f"{stem}_full.png"), np.float64)
        small = np.asarray(Image.open(out / "images" / f"{stem}_compressed.png"), np.float64)
        assert full.shape == small.shape == (r["size"][1], r["size"][0], 3)
        # the PSNR between the saved outputs (8-bit) is the reported one, up to rounding
        assert psnr(full / 127.5 - 1, small / 127.5 - 1) == pytest.approx(
            r["psnr_between_db"], abs=0.2)
    worst = min(rows.values(), key=lambda r: r["psnr_between_db"])
    assert s["psnr_worst_image"] == worst["image"]
    assert json.loads((out / "translate.json").read_text())["psnr_worst_db"] == \
        pytest.approx(worst["psnr_between_db"])
    page = (out / "index.html").read_text()
    assert page.index(worst["image"]) < min(page.index(n) for n in rows if n != worst["image"])
    assert f"{s['speedup']:.1f}× faster" in page


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test "
                    "installs it)")
def test_the_page_renders_in_a_real_browser(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "look"
    translate(TranslateConfig(models=(str(models["full"]), str(models["small"])),
                              images=str(models["photos"]), out=str(out)))
    shot = tmp_path / "shot.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=900,700", (out / "index.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    img = np.asarray(Image.open(shot).convert("RGB"), np.float64)
    # not blank: the photographs and outputs (noise) make the page far from a flat colour
    assert img.std() > 20 and (img.std(axis=2) > 30).mean() > 0.02


def test_onnx_and_tflite_files_take_their_fixed_shape(models: dict[str, Path],
                                                      tmp_path: Path) -> None:
    from dmad.export.api import ExportConfig, export_model

    res = export_model(ExportConfig(out=tmp_path / "x", model=models["full"], size=32,
                                    quant=("fp32",)))
    out = tmp_path / "look"
    s = translate(TranslateConfig(models=(str(models["full"]), str(res.files["fp32"])),
                                  images=str(models["photos"]), out=str(out)))
    assert all(r["size"] == [32, 32] for r in s["per_image"])  # both got the file's shape
    assert s["psnr_worst_db"] > 60  # the same model: PyTorch and LiteRT agree
    s = translate(TranslateConfig(models=(str(res.onnx),), images=str(models["photos"]),
                                  out=str(tmp_path / "onnx")))
    assert s["per_image"][0]["size"] == [32, 32] and "output" in s["median_ms"]


def test_the_users_files_are_never_replaced_without_force(models: dict[str, Path],
                                                          tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    cfg = {"models": (str(models["small"]),), "images": str(models["photos"])}
    with pytest.raises(DmadError, match="holds no dmad translate output"):
        translate(TranslateConfig(**cfg, out=str(mine), force=True))
    assert (mine / "notes.txt").read_text() == "mine"
    out = tmp_path / "look"
    translate(TranslateConfig(**cfg, out=str(out), max_images=1))
    with pytest.raises(DmadError, match="--force replaces it"):
        translate(TranslateConfig(**cfg, out=str(out)))
    translate(TranslateConfig(**cfg, out=str(out), force=True))
    assert len(json.loads((out / "translate.json").read_text())["per_image"]) == 3
    assert not list(tmp_path.glob(".look.translate.*"))  # no scratch folder left behind


@pytest.mark.parametrize(("args", "message"), [
    (["{full}", "--images", "{root}/nope"], "--images {root}/nope: not found"),
    (["{root}/photos/p0.png", "--images", "{photos}"], "not a model dmad can run"),
    (["{full}", "{small}", "{full}", "--images", "{photos}"], "one or two models"),
    (["{full}", "--images", "{photos}", "--max-side", "0"], "--max-side: must be >= 1"),
])
def test_bad_input_is_one_line(models: dict[str, Path], tmp_path: Path, args: list[str],
                               message: str) -> None:
    fill = {k: str(v) for k, v in models.items()}
    argv = [a.format(**fill) for a in args]
    r = subprocess.run(dmad_cmd("translate", *argv, "--out", str(tmp_path / "o")),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert message.format(**fill) in r.stderr
    assert not (tmp_path / "o").exists()
