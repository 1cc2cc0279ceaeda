"""``dmad export``: exact rewrites, ONNX parity, TFLite round trips, Android assets, failures.

Conversions are the slow part (onnx2tf imports TensorFlow in a subprocess, ~10 s each), so the
TFLite tests use tiny generators (ngf 2-4) at 32-48² and only a few variants each.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dmad.compress.checkpoint import save_model
from dmad.compress.errors import DmadError
from dmad.compress.models import ResnetGenerator, ResnetSpec, UnetGenerator, UnetSpec
from dmad.export import tflite
from dmad.export.api import ExportConfig, _load_run, export_model
from dmad.export.onnx import export_onnx, run_onnx
from dmad.export.parity import io_details, psnr, run_tflite
from dmad.export.rewrite import (
    ExplicitInstanceNorm,
    SlicePad2d,
    deploy_rewrite,
    unsupported_layers,
)
from tests.conftest import dmad_cmd


def _resnet(**kw: object) -> ResnetGenerator:
    torch.manual_seed(0)
    return ResnetGenerator(ResnetSpec(ngf=4, n_blocks=1, **kw)).eval()  # type: ignore[arg-type]


def _unet() -> UnetGenerator:
    torch.manual_seed(0)
    return UnetGenerator(UnetSpec(ngf=2, num_downs=5, norm="batch", dropout=False)).eval()


def _no_leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if "export-" in p.name)


# ----------------------------------------------------------------------------- rewrites


@pytest.mark.parametrize("pad", [1, 3])
def test_slice_pad_is_bit_identical(pad: int) -> None:
    x = torch.randn(2, 5, 9, 11)
    assert torch.equal(SlicePad2d(pad)(x), nn.ReflectionPad2d(pad)(x))


@pytest.mark.parametrize("affine", [False, True])
def test_explicit_instance_norm_matches(affine: bool) -> None:
    norm = nn.InstanceNorm2d(6, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 2)
            norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 6, 8, 8) * 3 + 1
    assert torch.allclose(ExplicitInstanceNorm(norm)(x), norm(x), atol=1e-5)


def test_rewrite_keeps_parity_and_the_original() -> None:
    model = _resnet()
    deploy, rep = deploy_rewrite(model)
    assert rep.reflection_pads == 4 and rep.instance_norms == 7
    assert isinstance(model.stem.pad, nn.ReflectionPad2d)  # original untouched
    x = torch.rand(2, 3, 20, 24) * 2 - 1
    with torch.no_grad():
        assert (deploy(x) - model(x)).abs().max() <= 1e-5


def test_unsupported_layer_is_named() -> None:
    model = _resnet()
    model.head.act = nn.GELU()
    assert unsupported_layers(model) == ["head.act (GELU)"]
    with pytest.raises(DmadError, match=r"unsupported layer head\.act \(GELU\)"):
        export_model(ExportConfig(out=Path("/nonexistent/never"), module=model, size=32))


@pytest.mark.parametrize(
    "model,size",
    [(_resnet(), 32), (_resnet(separable=True), 32), (_unet(), 32)],
    ids=["resnet", "separable", "unet"],
)
def test_onnx_parity(tmp_path: Path, model: nn.Module, size: int) -> None:
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        ref = model(x).numpy()
    for rewrite in (False, True):
        m = deploy_rewrite(model)[0] if rewrite else model
        export_onnx(m, tmp_path / f"m{rewrite}.onnx", (1, 3, size, size))
        assert np.abs(run_onnx(tmp_path / f"m{rewrite}.onnx", x.numpy()) - ref).max() <= 1e-4


# ----------------------------------------------------------------------------- round trips


def _teacher_run(tmp_path: Path, data: Path, model: nn.Module) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    save_model(model, run / "G_AtoB.pt", task="cyclegan", direction="AtoB")
    (run / "config.json").write_text(json.dumps({"task": "cyclegan", "data": str(data),
                                                 "size": 32}))
    return run


def test_resnet_int8_round_trip_and_android(tmp_path: Path, default_data: Path) -> None:
    run = _teacher_run(tmp_path, default_data, _resnet())
    assets = tmp_path / "assets"
    res = export_model(ExportConfig(
        out=tmp_path / "out", run=run, size=48, quant=("fp32", "int8"), int8_io=True,
        num_calib=8, android=True, android_assets=assets))
    rep = json.loads((tmp_path / "out" / "parity.json").read_text())
    arts = rep["artifacts"]
    assert set(arts) == {"onnx", "fp32", "int8", "int8_io"}
    assert arts["onnx"]["parity"]["max_abs"] <= 1e-4
    assert arts["fp32"]["parity"]["max_abs"] <= 1e-3
    assert "run dataset" in rep["images"]
    assert rep["rewrite"]["reflection_pads"] == 4
    for v in ("int8", "int8_io"):
        assert arts[v]["parity"]["psnr_db"] >= 25
        per = arts[v]["parity"]["per_image"]  # every held-out test image, named
        assert len(per) == len(arts["onnx"]["parity"]["per_image"]) >= 2
        assert all(r["image"].endswith((".png", ".jpg")) for r in per)
        assert arts[v]["parity"]["psnr_worst_db"] == min(r["psnr_db"] for r in per)
        assert arts[v]["xnnpack"]["fully_delegated"], arts[v]["xnnpack"]
    sens = rep["int8_sensitivity"]  # every convolution ranked by what keeping it float buys
    assert len(sens["layers"]) == sum(isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
                                      for m in _resnet().modules())
    auto = rep["int8_auto_float"]  # the choice is recorded and is what the recipe used
    assert auto is not None and rep["int8_recipe"]["float_layers"] == auto["float_layers"]
    assert rep["int8_recipe"]["hybrid_layers"] == auto["hybrid_layers"]
    # `auto` ranges: the widest percentile that clears the floor + margin, else the best
    from dmad.export.api import AUTO_FLOAT_MARGIN_DB, PSNR_BAR
    from dmad.export.ranges import pick_percentile

    ranges, target = rep["int8_ranges"], PSNR_BAR + AUTO_FLOAT_MARGIN_DB
    assert rep["int8_recipe"]["range_target_db"] == ranges["target_db"] == target
    scores = {float(k): v for k, v in ranges["calib_psnr_db"].items()}
    assert len(scores) == 6 and ranges["chosen_percentile"] == pick_percentile(scores, target)
    # ranked by what keeping the layer out of int8 buys, float or hybrid
    gains = [max(r["gain_db"], r.get("hybrid_gain_db", 0.0)) for r in sens["layers"]]
    assert gains == sorted(gains, reverse=True) and sens["images"] >= 1
    assert arts["fp32"]["xnnpack"]["partitions"] == 1
    io = arts["int8_io"]["io"]
    assert io["input"]["dtype"] == "int8" and io["input"]["shape"] == [1, 48, 48, 3]
    q = io["input"]["quantization"]
    assert 0 < q["scale"] <= 2 / 255 * 1.01 and -128 <= q["zero_point"] <= 127
    # model.json describes exactly the file copied into the assets.
    doc = json.loads((assets / "model.json").read_text())
    assert doc["schema_version"] == 1 and len(doc["models"]) == 1
    meta = doc["models"][0]
    assert meta["label"] == "compressed" and meta["file"] == "compressed.tflite"
    chosen = meta["variant"]
    assert chosen in ("int8", "int8_io", "fp16", "fp32")
    # the choice says why, and carries the GPU-delegate check of that file
    assert meta["chosen_because"].startswith(f"{chosen}:") and "floor" in meta["chosen_because"]
    android = res.report["android"]
    assert (android["variant"], android["why"]) == (chosen, meta["chosen_because"])
    # one file per delegate family: no fp16 exported here, so the GPU gets the fp32 file
    assert android["gpu_variant"] == "fp32" and "no fp16 file exported" in android["gpu_why"]
    if chosen != "fp32":
        assert meta["for_delegate"] == {"cpu": "compressed.tflite",
                                        "nnapi": "compressed.tflite",
                                        "gpu": "compressed_gpu.tflite"}
        assert meta["extra_files"][0]["variant"] == "fp32"
        assert (assets / "compressed_gpu.tflite").read_bytes() == res.files["fp32"].read_bytes()
    assert meta["gpu_delegate"] == arts[chosen]["gpu"]
    assert (assets / meta["file"]).read_bytes() == res.files[chosen].read_bytes()
    live = io_details(assets / meta["file"])
    for role in ("input", "output"):
        assert meta[role]["quantization"] == live[role]["quantization"]
        assert meta[role]["shape"] == live[role]["shape"]
        assert meta[role]["dtype"] == live[role]["dtype"]
    assert meta["params"] == sum(p.numel() for p in _resnet().parameters())
    assert meta["source_run"] == str(run)
    assert meta["parity"]["psnr_db"] == arts[chosen]["parity"]["psnr_db"]
    assert set(meta["macs"]) == {"paper", "true"} and meta["macs"]["paper"] > 0
    # The int8-I/O file run the way model.json says gives the reported PSNR.
    x = torch.rand(1, 3, 48, 48) * 2 - 1
    with torch.no_grad():
        ref = _resnet()(x).numpy().transpose(0, 2, 3, 1)
    y = run_tflite(res.files["int8_io"], np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1)))
    assert psnr(ref, y) >= 20
    assert _no_leftovers(tmp_path) == []


def test_separable_and_unet_round_trips(tmp_path: Path) -> None:
    sep = tmp_path / "sep.pt"
    save_model(_resnet(separable=True), sep)
    rep = export_model(ExportConfig(out=tmp_path / "sep", model=sep, size=48,
                                    quant=("fp32", "fp16"))).report["artifacts"]
    assert rep["fp32"]["parity"]["max_abs"] <= 1e-3
    assert rep["fp16"]["parity"]["psnr_db"] >= 50
    unet = tmp_path / "unet.pt"
    save_model(_unet(), unet)
    rep = export_model(ExportConfig(out=tmp_path / "unet", model=unet, size=32,
                                    quant=("fp32", "dynamic"))).report["artifacts"]
    assert rep["fp32"]["parity"]["max_abs"] <= 1e-3
    assert rep["dynamic"]["parity"]["psnr_db"] >= 25
    assert rep["fp32"]["xnnpack"]["fully_delegated"]


# ----------------------------------------------------------------------------- failures


def test_run_file_priority(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    save_model(_resnet(), run / "G_AtoB.pt")
    assert _load_run(run, "AtoB")[1]["file"].endswith("G_AtoB.pt")
    save_model(_resnet(), run / "student_G_AtoB.pt")
    assert _load_run(run, "AtoB")[1]["file"].endswith("student_G_AtoB.pt")
    with pytest.raises(DmadError, match="no generator for BtoA"):
        _load_run(run, "BtoA")


def _fails(tmp_path: Path, match: str, **kw: object) -> None:
    out = tmp_path / "out"
    with pytest.raises(DmadError, match=match):
        export_model(ExportConfig(out=out, **kw))  # type: ignore[arg-type]
    assert not out.exists()
    assert _no_leftovers(tmp_path) == []


def test_user_errors_leave_nothing(tmp_path: Path) -> None:
    model = tmp_path / "g.pt"
    save_model(_resnet(), model)
    unet = tmp_path / "u.pt"
    save_model(_unet(), unet)
    _fails(tmp_path, "model file not found", model=tmp_path / "missing.pt")
    _fails(tmp_path, "run folder not found", run=tmp_path / "norun")
    _fails(tmp_path, "not a multiple of 4", model=model, size=30)
    _fails(tmp_path, r"multiple of 32 \(UNet with num_downs=5", model=unet, size=48)
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(tmp_path, "no images", model=model, size=32, calib=empty)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not an image")
    _fails(tmp_path, "junk", model=model, size=32, calib=junk)
    _fails(tmp_path, "int8 variants need calibration images", model=model, size=32)


def test_conversion_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    def boom(*a: object, **k: object) -> None:
        raise DmadError("TFLite conversion failed (onnx2tf): simulated")

    monkeypatch.setattr(tflite, "convert", boom)
    _fails(tmp_path, "simulated", module=_resnet(), size=32, quant=("fp32",))


def test_onnx2tf_reason_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an onnx model")
    with pytest.raises(DmadError, match=r"TFLite conversion failed \(onnx2tf\): .+"):
        tflite.convert(bad, tmp_path, ["fp32"], None)
    assert not (tmp_path / ".convert").exists()


def test_misconverted_fp32_is_an_error_and_the_graph_converter_has_no_guess(
        tmp_path: Path) -> None:
    # ngf 4 at 32²: a ConvTranspose from [1,16,8,8] to [1,8,16,16] makes onnx2tf guess the
    # layout wrong (a known onnx2tf weakness); the export must refuse, not warn.
    _fails(tmp_path, "fp32 TFLite differs from PyTorch.*layout guess", module=_resnet(),
           size=32, quant=("fp32",), converter="onnx2tf", subpixel="off")
    # the default converter builds the NHWC graph from the model itself: same model, same size
    rep = export_model(ExportConfig(out=tmp_path / "ok", module=_resnet(), size=32,
                                    quant=("fp32",))).report
    assert rep["artifacts"]["fp32"]["parity"]["max_abs"] <= 1e-4
    assert rep["graph"]["converter"] == "graph"


def test_failure_reason_parsing() -> None:
    log = ("\x1b[31mERROR:\x1b[0m The trace log is below.\nTraceback...\n"
           "ValueError: Depth of input (5) is not a multiple\n"
           "\x1b[31mERROR:\x1b[0m onnx_op_name: /head/conv/Conv\n"
           "\x1b[31mERROR:\x1b[0m Read this and deal with it.\n")
    assert tflite.failure_reason(log) == ("ValueError: Depth of input (5) is not a multiple; "
                                         "onnx_op_name: /head/conv/Conv")


def test_cli_errors_are_one_line(tmp_path: Path, cli_env: dict[str, str]) -> None:
    r = subprocess.run(dmad_cmd("export", "--model", str(tmp_path / "nope.pt"), "--out",
                                str(tmp_path / "o")), env=cli_env, capture_output=True,
                       text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "nope.pt" in r.stderr
    assert not (tmp_path / "o").exists()


def test_files_below_the_psnr_bar_are_flagged() -> None:
    from dmad.export.api import quality_notes

    arts = {"onnx": {"parity": {"psnr_db": 140.0}}, "fp32": {"parity": {"psnr_db": 139.0}},
            "fp16": {"parity": {"psnr_db": 85.4}}, "dynamic": {"parity": {"psnr_db": 50.5}},
            "int8": {"parity": {"psnr_db": 26.5}}, "int8_io": {"parity": {"psnr_db": float("nan")}}}
    notes = quality_notes(arts, 35.0)
    assert [n.split(":")[0] for n in notes] == ["int8", "int8_io"]
    assert "26.5 dB" in notes[0] and "below its 35 dB floor" in notes[0]
    per = quality_notes(arts, {"fp16": 90.0, "dynamic": 40.0, "int8": 35.0, "int8_io": 35.0})
    assert [n.split(":")[0] for n in per] == ["fp16", "int8", "int8_io"]
    assert arts["fp16"]["floor_db"] == 90.0 and arts["fp16"]["below_bar"]
    quality_notes(arts, 35.0)
    assert arts["int8"]["below_bar"] and arts["int8_io"]["below_bar"]
    assert not arts["fp16"]["below_bar"] and not arts["dynamic"]["below_bar"]
    assert "below_bar" not in arts["fp32"]


def test_parity_is_per_image_and_the_floor_applies_to_the_worst() -> None:
    """Three images: two identical to the reference but for an error of 0.01, one with 0.1.
    Pooled, the squared errors average to (2·1e-4 + 1e-2)/3 = 3.4e-3 (30.7 dB over the range
    2), above a 30 dB floor; the worst image alone is 10·log10(4/1e-2) = 26.0 dB."""
    from dmad.export.api import quality_notes
    from dmad.export.parity import compare

    ref = np.zeros((3, 2, 4, 4))
    out = ref + np.array([0.01, 0.1, 0.01])[:, None, None, None]
    par = compare(ref, out, ["a.png", "b.png", "c.png"])
    assert par["psnr_db"] == pytest.approx(10 * np.log10(4 / ((2e-4 + 1e-2) / 3)))
    assert par["psnr_db"] > 30
    assert [r["image"] for r in par["per_image"]] == ["a.png", "b.png", "c.png"]
    assert [r["psnr_db"] for r in par["per_image"]] == pytest.approx([46.02, 26.02, 46.02],
                                                                      abs=0.01)
    assert par["worst_image"] == "b.png" and par["psnr_worst_db"] == pytest.approx(26.02, abs=0.01)
    arts = {"int8": {"parity": par}}
    notes = quality_notes(arts, 30.0)
    assert arts["int8"]["below_bar"] and "worst image (b.png) is 26.0 dB" in notes[0]
    from dmad.export.parity import format_per_image

    shown = format_per_image(arts).splitlines()  # on screen: worst image first
    assert shown[2].split() == ["b.png", "26.0"] and len(shown) == 5
    bad = compare(ref, out * np.nan, ["a.png", "b.png", "c.png"])
    assert not bad["finite"] and np.isnan(bad["psnr_worst_db"])


def test_int8_sensitivity_finds_the_layer_whose_input_has_an_outlier_channel() -> None:
    """A BatchNorm ResNet where one channel entering down2 is 300× the others: per-tensor
    int8 spends its grid on that channel, so down2's input costs the most and keeping down2
    float buys the most. Before the outlier the ranking starts elsewhere: the test can fail."""
    from dmad.compress.models import ResnetSpec, build
    from dmad.export.sensitivity import layer_sensitivity

    torch.manual_seed(0)
    g = build(ResnetSpec(ngf=8, n_blocks=2, norm="batch")).eval()
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
    before = layer_sensitivity(g, x, max_images=4)
    assert before["layers"][0]["layer"] != "down2.conv"
    with torch.no_grad():
        norm = dict(g.named_modules())["down1.norm"]
        norm.weight[0], norm.bias[0] = 300.0, 0.0
    after = layer_sensitivity(g, x, max_images=4, want_db=99.0, max_plan=2)
    worst = after["layers"][0]
    plan = after["plan"]  # grown greedily, each step re-measured, while it helps
    assert plan[0] == {"float_layers": ["down2.conv"], "hybrid_layers": [],
                       "psnr_db": worst["psnr_without_db"]}
    assert all(len(p["float_layers"]) == i + 1 for i, p in enumerate(plan))
    assert [p["psnr_db"] for p in plan] == sorted(p["psnr_db"] for p in plan)
    assert "plan" not in before or before["plan"] == []  # no floor asked: no plan
    assert worst["layer"] == "down2.conv" and worst["gain_db"] > 0.5
    assert worst["psnr_alone_db"] == min(r["psnr_alone_db"] for r in after["layers"])
    assert after["psnr_all_int8_db"] < before["psnr_all_int8_db"]
    assert len(after["layers"]) == 10 and after["images"] == 4 and after["crop"] == [32, 32]
    # a hybrid layer rounds its input with the image's own range, where the outlier channel
    # still takes the grid: the plan keeps down2 float, not hybrid
    both = layer_sensitivity(g, x, max_images=4, want_db=99.0, max_plan=1,
                             kinds=("float", "hybrid"))
    row = next(r for r in both["layers"] if r["layer"] == "down2.conv")
    assert row["hybrid_gain_db"] < row["gain_db"] - 0.5
    assert both["plan"][0]["float_layers"] == ["down2.conv"] and both["kinds"] == [
        "float", "hybrid"]


def test_int8_sensitivity_judges_the_worst_calibration_images_not_the_first(tmp_path: Path
                                                                           ) -> None:
    """Four bright photographs drawn first, four dark flat ones after: judging the first four
    (as before) never saw the dark ones, where the first InstanceNorm stretches a few int8
    levels back to unit variance; screening every calibration image judges the dark ones and
    reports a lower all-int8 PSNR."""
    from dmad.export.sensitivity import layer_sensitivity

    g = torch.Generator().manual_seed(1)
    low = torch.rand(8, 3, 6, 6, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(low, size=(32, 32), mode="bicubic").clamp(-1, 1)
    x[4:] = -0.7 + 0.05 * x[4:]  # dark and flat
    x = x.numpy()
    first = layer_sensitivity(_resnet(), x, max_images=4, screen=4, contrast=0.0)
    every = layer_sensitivity(_resnet(), x, max_images=4, screen=8, contrast=0.0)
    assert first["judged"] == [0, 1, 2, 3] and first["screened"] == 4
    assert every["judged"] == [4, 5, 6, 7] and every["screened"] == 8
    assert every["psnr_all_int8_db"] < first["psnr_all_int8_db"] - 3.0
    with pytest.raises(DmadError, match="--int8-screen"):
        export_model(ExportConfig(out=tmp_path / "x", module=_resnet(), int8_screen=-1))
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(DmadError, match=r"--int8-contrast: .* must be in \[0, 1\)"):
            export_model(ExportConfig(out=tmp_path / "x", module=_resnet(), int8_contrast=bad))
    assert not (tmp_path / "x").exists()


def test_int8_sensitivity_screens_flat_copies_of_the_calibration_images() -> None:
    """Calibration images of ordinary contrast only: without flat copies the screen never
    sees a flat photograph, the kind int8 loses first (the first InstanceNorm stretches the
    few int8 levels it uses); with them it judges the flat copies (named by their originals,
    so the reordering of the calibration images still holds) and reports the lower PSNR."""
    from dmad.export.sensitivity import layer_sensitivity, low_contrast

    g = torch.Generator().manual_seed(2)
    low = torch.rand(6, 3, 6, 6, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(low, size=(32, 32), mode="bicubic").clamp(-1, 1)
    flat = low_contrast(x, 0.25)
    assert torch.allclose(flat.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(flat.std(dim=(2, 3)), 0.25 * x.std(dim=(2, 3)), atol=1e-5)
    plain = layer_sensitivity(_resnet(), x.numpy(), max_images=2, screen=6, contrast=0.0)
    both = layer_sensitivity(_resnet(), x.numpy(), max_images=2, screen=6, contrast=0.1)
    assert plain["judged_low_contrast"] == [] and plain["screened"] == 6
    assert both["judged_low_contrast"] and both["screened"] == 6
    assert all(0 <= i < 6 for i in both["judged"]) and len(both["judged"]) <= 2
    assert both["psnr_all_int8_db"] < plain["psnr_all_int8_db"] - 1.0


def test_the_int8_choice_keeps_the_fewest_layers_that_clear_the_floor() -> None:
    """The export's choice reads the greedy plan: the smallest float set predicted over the
    floor plus the margin; within a smaller allowance the best it has, if it gains 1 dB;
    nothing when all-int8 is predicted over the floor or no plan helps enough."""
    from dmad.export.sensitivity import choose_float_layers

    plan = [{"float_layers": ["a"], "psnr_db": 33.0},
            {"float_layers": ["a", "b"], "psnr_db": 36.5},
            {"float_layers": ["a", "b", "c"], "psnr_db": 38.0}]
    sens = {"psnr_all_int8_db": 30.0, "plan": plan}
    layers, hybrid, why = choose_float_layers(sens, 35.0, 3)
    assert layers == ["a", "b"] and "30.0 dB all-int8" in why and "36.5 dB" in why
    assert hybrid == [] and "a, b float" in why
    # the allowance counts float layers only; hybrid ones are named as hybrid
    mixed = [{"float_layers": [], "hybrid_layers": ["h"], "psnr_db": 33.0},
             {"float_layers": ["a"], "hybrid_layers": ["h"], "psnr_db": 36.5}]
    got = choose_float_layers({"psnr_all_int8_db": 30.0, "plan": mixed}, 35.0, 1)
    assert got[:2] == (["a"], ["h"]) and "a float and h hybrid" in got[2]
    two = [{"float_layers": ["a"], "hybrid_layers": [], "psnr_db": 33.0},
           {"float_layers": ["a", "b"], "hybrid_layers": ["h"], "psnr_db": 36.5}]
    assert choose_float_layers({"psnr_all_int8_db": 30.0, "plan": two}, 35.0, 1)[:2] == \
        (["a"], [])
    # past the floor the plan adds hybrid layers only, and the choice keeps them
    more = [*mixed, {"float_layers": ["a"], "hybrid_layers": ["h", "i"], "psnr_db": 38.0}]
    got = choose_float_layers({"psnr_all_int8_db": 30.0, "plan": more}, 35.0, 3)
    assert got[:2] == (["a"], ["h", "i"]) and "38.0 dB" in got[2]
    assert choose_float_layers(sens, 35.0, 1)[0] == ["a"]
    assert choose_float_layers(sens, 35.0, 0)[0] == []
    assert choose_float_layers({**sens, "psnr_all_int8_db": 36.2}, 35.0, 3)[0] == []
    assert choose_float_layers({"psnr_all_int8_db": 32.5, "plan": plan[:1]}, 35.0, 3)[0] == []
    # short of the floor: the shortest plan within 0.25 dB of the best, not the longest
    flat = [{"float_layers": ["a"], "psnr_db": 33.0},
            {"float_layers": ["a", "b"], "psnr_db": 33.04},
            {"float_layers": ["a", "b", "c"], "psnr_db": 33.06}]
    assert choose_float_layers({"psnr_all_int8_db": 16.8, "plan": flat}, 35.0, 3)[0] == ["a"]


def test_the_plan_takes_hybrid_layers_where_they_buy_most_of_the_gain_and_after_the_floor(
) -> None:
    """The greedy plan on a made-up score: a layer goes hybrid where that buys 3/4 of the best
    float gain (a), float where hybrid buys little (b); past the floor only hybrid layers,
    while one buys POST_FLOOR_DB (c, not e); a hybrid that buys less than STEP_DB never
    displaces a float layer that does (d)."""
    from dmad.export.sensitivity import _greedy_plan

    gains = {"a": (10.0, 9.0), "b": (5.0, 1.0), "c": (3.0, 1.5), "d": (0.3, 0.23),
             "e": (0.9, 0.9)}
    convs = list(gains)

    def score(int8: set[str], hybrid: set[str]) -> float:
        return 20.0 + sum(g[c in hybrid] for c, g in gains.items() if c not in int8)

    rows = [{"layer": c, "gain_db": f, "hybrid_gain_db": h} for c, (f, h) in gains.items()]
    plan = _greedy_plan(score, convs, 20.0, rows, 33.0, 4, ("float", "hybrid"), set(convs))
    assert [(p["float_layers"], p["hybrid_layers"]) for p in plan] == [
        ([], ["a"]), (["b"], ["a"]), (["b"], ["a", "c"])]
    assert plan[1]["psnr_db"] == 34.0 and plan[2]["psnr_db"] == 35.5
    only_d = {"d": (0.3, 0.23)}
    gains.clear()
    gains.update(only_d)
    plan = _greedy_plan(score, ["d"], 20.0, [{"layer": "d", "gain_db": 0.3,
                                              "hybrid_gain_db": 0.23}], 33.0, 2,
                        ("float", "hybrid"), {"d"})
    assert plan == [{"float_layers": ["d"], "hybrid_layers": [], "psnr_db": 20.3}]
    # a layer with no hybrid form is never tried as one
    plan = _greedy_plan(score, ["d"], 20.0, [{"layer": "d", "gain_db": 0.3}], 33.0, 2,
                        ("hybrid",), set())
    assert plan == []


def test_real_files_walk_the_plans_fewest_first_then_buy_insurance_past_the_floor() -> None:
    """The converter keeps the first plan whose real file reaches the target on the
    calibration images (all-int8 first), then each next one while it buys POST_FLOOR_DB more;
    when none reaches it, the best, the fewer layers on a tie. The plans come from the
    sensitivity in its order, within the float and hybrid limits."""
    from dmad.export.sensitivity import MAX_HYBRID, candidate_plans
    from dmad.export.tflite import POST_FLOOR_DB, walk_plans

    sens = {"plan": [{"float_layers": [], "hybrid_layers": ["a"]},
                     {"float_layers": ["b"], "hybrid_layers": ["a"]},
                     {"float_layers": ["b"], "hybrid_layers": ["a", "c"]},
                     {"float_layers": ["b"], "hybrid_layers": ["a", "c", "d"]},
                     {"float_layers": ["b", "e"], "hybrid_layers": ["a", "c", "d"]}]}
    plans = candidate_plans(sens, most=1)
    assert plans[0] == ([], []) and len(plans) == 5 and MAX_HYBRID >= 3
    assert plans[-1] == (["b"], ["a", "c", "d"])  # two float layers: over the limit
    real = {(): 20.0, ("a",): 30.0, ("a", "b"): 36.5, ("a", "b", "c"): 36.5 + POST_FLOOR_DB,
            ("a", "b", "c", "d"): 36.6 + POST_FLOOR_DB}
    calls: list[tuple[str, ...]] = []

    def score(fl: tuple[str, ...], hy: tuple[str, ...]) -> dict:
        key = tuple(sorted((*fl, *hy)))
        calls.append(key)
        return {"best_db": real[key]}

    best, tried = walk_plans(plans, score, 36.0)
    assert (best["float_layers"], best["hybrid_layers"]) == (["b"], ["a", "c"])
    assert len(tried) == 5 == len(calls)  # d bought 0.1 dB past c: tried, not kept
    best, tried = walk_plans(plans, score, 36.6)  # (a, b) misses: (a, b, c) clears it
    assert best["hybrid_layers"] == ["a", "c"] and len(tried) == 5
    real[("a", "b", "c")] = 36.5  # past the floor, c buys nothing: the walk stops after it
    best, tried = walk_plans(plans, score, 36.0)
    assert (best["float_layers"], best["hybrid_layers"]) == (["b"], ["a"]) and len(tried) == 4
    best, _ = walk_plans(plans, score, 50.0)  # none clears: the best, the fewer on a tie
    assert best["hybrid_layers"] == ["a", "c", "d"]
    real[("a", "b", "c", "d")] = 36.5
    assert walk_plans(plans, score, 50.0)[0]["hybrid_layers"] == ["a"]


def test_the_layers_kept_out_of_int8_are_reported_by_kind() -> None:
    """The scripts' reports name float layers plainly and hybrid ones marked, in that order."""
    from dmad.export.sensitivity import kept_out_of_int8

    assert kept_out_of_int8({"float_layers": ["head.conv"],
                             "hybrid_layers": ["up2.conv", "up1.conv"]}) == [
        "head.conv", "up2.conv (hybrid)", "up1.conv (hybrid)"]
    assert kept_out_of_int8(None) == [] == kept_out_of_int8({"float_layers": []})


def test_the_plan_tries_a_layer_that_costs_alone_though_another_hides_its_gain() -> None:
    """While one layer ruins every image, keeping any other out of int8 buys nothing, so its
    gain reads zero or less (the photo teacher's ``up1``: −0.33 dB) even where it costs a lot
    alone (42.5 dB); the plan must still try it once the ruinous layer is out. A layer that
    neither buys nor costs anything is not tried (each try is a pass over the judged images).
    Hybrid layers come on top of the float allowance, up to ``most_hybrid``."""
    from dmad.export.sensitivity import _greedy_plan, choose_float_layers

    tried: set[str] = set()

    def score(int8: set[str], hybrid: set[str]) -> float:
        tried.update(set("abc") - int8)
        if "a" in int8:
            return 17.0  # a ruins everything while it is int8
        return 30.0 + 4.0 * ("b" not in int8) + 3.0 * ("c" not in int8)

    rows = [{"layer": "a", "gain_db": 13.0, "hybrid_gain_db": 13.0, "psnr_alone_db": 17.0},
            {"layer": "b", "gain_db": -0.3, "hybrid_gain_db": -0.3, "psnr_alone_db": 42.5},
            {"layer": "c", "gain_db": 0.0, "hybrid_gain_db": 0.0, "psnr_alone_db": 58.0}]
    plan = _greedy_plan(score, list("abc"), 17.0, rows, 36.0, 1, ("float", "hybrid"),
                        set("abc"))
    assert [(p["float_layers"], p["hybrid_layers"]) for p in plan] == [
        ([], ["a"]), ([], ["a", "b"])]
    assert plan[-1]["psnr_db"] == 34.0 and "c" not in tried
    # c buys 3 dB once it is tried (a gain over zero makes it a candidate): three hybrid
    # layers beside a float allowance of one
    rows[2]["gain_db"] = rows[2]["hybrid_gain_db"] = 0.1
    plan = _greedy_plan(score, list("abc"), 17.0, rows, 36.0, 1, ("float", "hybrid"),
                        set("abc"))
    assert plan[-1] == {"float_layers": [], "hybrid_layers": ["a", "b", "c"], "psnr_db": 37.0}
    # one hybrid allowed: b goes float instead, and c cannot follow (the float allowance
    # is spent, and past nothing more may be hybrid)
    assert _greedy_plan(score, list("abc"), 17.0, rows, 36.0, 1, ("float", "hybrid"),
                        set("abc"), most_hybrid=1)[-1] == {
        "float_layers": ["b"], "hybrid_layers": ["a"], "psnr_db": 34.0}
    assert _greedy_plan(score, list("abc"), 17.0, rows, 36.0, 2, ("float", "hybrid"),
                        set("abc"), most_hybrid=1)[-1] == {
        "float_layers": ["b", "c"], "hybrid_layers": ["a"], "psnr_db": 37.0}
    # the choice never takes a plan over the hybrid allowance
    many = [{"float_layers": [], "hybrid_layers": list("abcde"), "psnr_db": 40.0}]
    assert choose_float_layers({"psnr_all_int8_db": 17.0, "plan": many}, 35.0, 1)[:2] == (
        [], [])


def _dark_and_bright(tmp: Path) -> Path:
    """Photographs of two kinds: full-contrast ones, and dark flat ones (a night sky: grey
    level ~40 ± 6) that the first InstanceNorm stretches back to unit variance."""
    from PIL import Image

    d = tmp / "mixed"
    d.mkdir()
    g = torch.Generator().manual_seed(3)
    for i in range(16):
        low = torch.rand(3, 6, 6, generator=g)
        img = torch.nn.functional.interpolate(low[None], size=(48, 48), mode="bicubic")[0]
        img = (img + 0.15 * torch.rand(3, 48, 48, generator=g)).clamp(0, 1) * 255
        if i % 2:
            img = 40 + (img - img.mean()) * (12 / 255)
        Image.fromarray(img.round().clamp(0, 255).permute(1, 2, 0).numpy().astype(np.uint8)
                        ).save(d / f"{i:02d}.png")
    return d


def test_the_chooser_fixes_a_file_that_dark_flat_photographs_ruin(tmp_path: Path) -> None:
    """The stem's output is int8 before its InstanceNorm: for a dark flat photograph it spans
    a few levels of a range set by the bright ones, and the norm stretches that rounding to
    unit variance. The chooser, judging the worst calibration image, keeps the stem float (in
    and out), and the real file's worst held-out image rises over the floor it asked for."""
    torch.manual_seed(0)
    m = _resnet()
    photos = _dark_and_bright(tmp_path)

    def export(out: str, auto: int, floor: float, kinds: tuple[str, ...] = ("float", "hybrid")
               ) -> dict:
        export_model(ExportConfig(out=tmp_path / out, module=m, size=48, quant=("int8",),
                                  calib=photos, num_calib=8, num_eval=8,
                                  int8_auto_float=auto, psnr_bar=floor, int8_kinds=kinds))
        return json.loads((tmp_path / out / "parity.json").read_text())

    plain = export("plain", 0, 35.0)
    worst0 = plain["artifacts"]["int8"]["parity"]["psnr_worst_db"]
    floor = worst0 + 4.0
    chosen = export("chosen", 3, floor)
    layers = chosen["int8_auto_float"]["float_layers"]
    assert "stem.conv" in layers
    got = chosen["artifacts"]["int8"]["parity"]["psnr_worst_db"]
    assert got >= floor
    # the converter tried real int8 files, all-int8 first, fake int8's plans after it, and
    # kept the first that reached the floor + margin on the calibration images
    from dmad.export.api import AUTO_FLOAT_MARGIN_DB

    auto = chosen["int8_auto_float"]
    tried, target = auto["tried"], floor + AUTO_FLOAT_MARGIN_DB
    assert tried[0]["float_layers"] == tried[0]["hybrid_layers"] == []
    assert any(t["best_db"] >= target for t in tried)  # a plan cleared it (the file does)
    # the choice is the walk's over the scores recorded, and the recipe holds it
    from dmad.export.tflite import walk_plans

    real = {(tuple(t["float_layers"]), tuple(t["hybrid_layers"])): t for t in tried}
    kept, _ = walk_plans(list(real), lambda fl, hy: {"best_db": real[fl, hy]["best_db"]},
                         target)
    assert (kept["float_layers"], kept["hybrid_layers"]) == (auto["float_layers"],
                                                             auto["hybrid_layers"])
    assert chosen["int8_recipe"]["hybrid_layers"] == auto["hybrid_layers"]
    assert auto["why"].startswith("real int8 files") and "fake_pick" in auto
    assert chosen["int8_recipe"]["float_layers"] == layers
    # the fake int8 that ordered them predicts the real file (float layers are float in it)
    predicted = next(p["psnr_db"] for p in chosen["int8_sensitivity"]["plan"]
                     if p["float_layers"] == layers
                     and p["hybrid_layers"] == chosen["int8_auto_float"]["hybrid_layers"])
    assert abs(predicted - got) < 3.0
    # hybrid layers only: the stem's output stays float (its input is rounded per image, on
    # the dark photograph's own range), and the file clears the floor too
    hybrid = export("hybrid", 3, floor, ("hybrid",))
    auto = hybrid["int8_auto_float"]
    assert auto["float_layers"] == [] and "stem.conv" in auto["hybrid_layers"]
    assert hybrid["artifacts"]["int8"]["parity"]["psnr_worst_db"] >= floor
    assert hybrid["artifacts"]["int8"]["precision"][
        "int8_weight_float_activation_mac_fraction"] > 0


def test_make_android_assets_puts_256_models_in_the_app(tmp_path: Path,
                                                        default_data: Path) -> None:
    """The Makefile's ``android-assets`` recipe, run as written on a small run folder (only the
    paths and the variants changed): both labels at 256², one file per delegate family."""
    import os
    import re
    import shlex
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    recipe = re.search(r"^android-assets:.*?\n((?:\t.*\n)+)", (root / "Makefile").read_text(),
                       re.M)
    assert recipe is not None
    lines = recipe.group(1).replace("\\\n", " ").splitlines()
    cmds = [shlex.split(ln.strip()) for ln in lines if "dmad export" in ln]
    assert len(cmds) == 2
    run = _teacher_run(tmp_path, default_data, _resnet())
    assets = tmp_path / "assets"
    for cmd in cmds:
        args = [a.replace("runs/demo/finetune", str(run)).replace("runs/demo/teacher", str(run))
                .replace("runs/demo/android", str(tmp_path / "android")) for a in cmd[2:]]
        r = subprocess.run([sys.executable, "-m", "dmad", "export", *args, "--android-assets",
                            str(assets), "--quant", "fp32,fp16", "--num-eval", "2"],
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, "PYTHONPATH": str(root)})
        assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((assets / "model.json").read_text())
    assert sorted(e["label"] for e in doc["models"]) == ["compressed", "full"]
    for e in doc["models"]:
        assert e["input"]["shape"] == [1, 256, 256, 3] and e["output"]["shape"] == [1, 256, 256, 3]
        assert set(e["for_delegate"]) == {"cpu", "nnapi", "gpu"}


def test_auto_ranges_aim_over_the_users_floor(tmp_path: Path) -> None:
    """The `auto` ranges' target follows --floor-int8 (plus the plan's margin); a target the
    user set (0: always the best percentile) and the other range methods are left alone."""
    import dataclasses

    from dmad.export.api import AUTO_FLOAT_MARGIN_DB, DEFAULT_RECIPE, range_target

    cfg = ExportConfig(out=tmp_path / "o", model=tmp_path / "m.pt", psnr_bar=38.0)
    assert range_target(cfg).range_target_db == 38.0 + AUTO_FLOAT_MARGIN_DB
    assert DEFAULT_RECIPE.range_target_db is None  # open until the export knows its floor
    for preset in (0.0, 41.5):
        mine = dataclasses.replace(cfg, recipe=dataclasses.replace(DEFAULT_RECIPE,
                                                                   range_target_db=preset))
        assert range_target(mine).range_target_db == preset
    fixed = dataclasses.replace(cfg, recipe=dataclasses.replace(DEFAULT_RECIPE, ranges="mse"))
    assert range_target(fixed).range_target_db is None
