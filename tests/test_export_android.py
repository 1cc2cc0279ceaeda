"""``export.android``: the assets ``dmad export --android`` writes follow the app's contract.

No onnx2tf here: two tiny Keras convnets (float32 I/O and full-int8 I/O, 8x8 RGB) are converted
once per module with ``tf.lite.TFLiteConverter`` in a subprocess (TensorFlow stays out of the test
process), and the writer is called directly with a made-up parity entry. The checks reuse the
Python twin of the app's validation (tests/test_android_app.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dmad.compress.errors import DmadError
from dmad.export.android import PIXEL_MAPPING, choose_variant, write_assets
from dmad.export.parity import make_interpreter
from tests.test_android_app import (
    TWIN_CONSTANTS,
    tensor_info,
    twin_check_against_model,
    twin_parse_model_json,
)

BUILD = r"""
import sys
import numpy as np
import tensorflow as tf

out = sys.argv[1]
tf.keras.utils.set_random_seed(0)
inp = tf.keras.Input((8, 8, 3), batch_size=1, name="image")
y = tf.keras.layers.Conv2D(3, 3, padding="same", activation="tanh")(inp)
model = tf.keras.Model(inp, y)

def convert(int8):
    c = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        rng = np.random.default_rng(0)
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = lambda: (
            [rng.uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)] for _ in range(8))
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        c.inference_input_type = tf.int8
        c.inference_output_type = tf.int8
    return c.convert()

for name, int8 in (("fp32", False), ("int8_io", True)):
    with open(f"{out}/{name}.tflite", "wb") as fh:
        fh.write(convert(int8))
"""

PARITY = {"reference": "pytorch", "images": 2, "max_abs": 0.01, "mean_abs": 0.001,
          "psnr_db": 41.5}
COST = {"macs": {"paper": 1234, "true": 1200}, "params": 84, "source_run": "runs/x/student"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tiny_tflite")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-c", BUILD, str(out)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return {"fp32": out / "fp32.tflite", "int8_io": out / "int8_io.tflite"}


@pytest.fixture
def assets(tmp_path: Path) -> Path:
    a = tmp_path / "assets"
    (a / "samples").mkdir(parents=True)
    (a / "samples" / "sample.png").write_bytes(b"not really a png")
    return a


def _write(src: Path, assets: Path, label: str, variant: str = "int8_io") -> Path:
    return write_assets(src, assets, label=label, parity=PARITY, variant=variant, **COST)


def _validate(assets: Path) -> tuple[dict[str, Any], list[str]]:
    """The app's start-up checks (twin): parse model.json, then each model against its file."""
    spec, problems = twin_parse_model_json((assets / "model.json").read_text())
    assert spec is not None, problems
    for entry in spec["models"]:
        path = assets / entry["file"]
        assert path.is_file(), entry["file"]
        it = make_interpreter(path, delegate=False)
        problems += twin_check_against_model(
            entry,
            [tensor_info(d) for d in it.get_input_details()],
            [tensor_info(d) for d in it.get_output_details()],
        )
    return spec, problems


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_pixel_mapping_is_the_apps() -> None:
    assert PIXEL_MAPPING == {"to_tensor": TWIN_CONSTANTS["TO_TENSOR"],
                             "from_tensor": TWIN_CONSTANTS["FROM_TENSOR"]}


def test_one_model_follows_the_contract(tiny: dict[str, Path], assets: Path) -> None:
    samples = _snapshot(assets / "samples")
    path = _write(tiny["int8_io"], assets, "compressed")
    assert path == assets / "model.json"
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == 1 and len(doc["models"]) == 1
    _, problems = _validate(assets)
    assert problems == []
    e = doc["models"][0]
    assert e["label"] == "compressed" and "/" not in e["file"] and e["file"].endswith(".tflite")
    assert (assets / e["file"]).read_bytes() == tiny["int8_io"].read_bytes()
    assert e["value_range"] == [-1, 1]
    assert e["macs"] == COST["macs"] and e["params"] == 84 and e["source_run"] == "runs/x/student"
    assert e["parity"]["max_abs"] == 0.01 and e["parity"]["psnr_db"] == 41.5
    # input/output are the interpreter's own details of the written file.
    it = make_interpreter(assets / e["file"], delegate=False)
    for role, d in (("input", it.get_input_details()[0]), ("output", it.get_output_details()[0])):
        info = tensor_info(d)
        assert e[role]["name"] == d["name"]
        assert e[role]["shape"] == info["shape"] == [1, 8, 8, 3]
        assert e[role]["dtype"] == info["dtype"] == "int8"
        assert e[role]["quantization"] == {"scale": float(d["quantization"][0]),
                                           "zero_point": int(d["quantization"][1])}
    assert _snapshot(assets / "samples") == samples
    assert sorted(p.name for p in assets.iterdir()) == ["compressed.tflite", "model.json",
                                                        "samples"]


def test_second_label_merges_and_same_label_replaces(tiny: dict[str, Path],
                                                     assets: Path) -> None:
    samples = _snapshot(assets / "samples")
    _write(tiny["int8_io"], assets, "compressed")
    _write(tiny["fp32"], assets, "full", variant="fp32")
    _, problems = _validate(assets)
    assert problems == []
    models = {e["label"]: e for e in json.loads((assets / "model.json").read_text())["models"]}
    assert set(models) == {"full", "compressed"}
    assert models["full"]["file"] != models["compressed"]["file"]
    assert models["full"]["input"]["dtype"] == "float32"
    assert models["full"]["input"]["quantization"] is None
    assert models["compressed"]["input"]["dtype"] == "int8"
    # Writing "compressed" again (now the float file) replaces that entry and keeps "full".
    _write(tiny["fp32"], assets, "compressed", variant="fp32")
    _, problems = _validate(assets)
    assert problems == []
    doc = json.loads((assets / "model.json").read_text())
    assert sorted(e["label"] for e in doc["models"]) == ["compressed", "full"]
    comp = next(e for e in doc["models"] if e["label"] == "compressed")
    assert comp["input"]["dtype"] == "float32" and comp["variant"] == "fp32"
    assert (assets / comp["file"]).read_bytes() == tiny["fp32"].read_bytes()
    assert _snapshot(assets / "samples") == samples
    assert not [p for p in assets.iterdir() if p.name.endswith(".tmp")]


def test_old_or_broken_model_json_is_replaced(tiny: dict[str, Path], assets: Path) -> None:
    (assets / "model.json").write_text(json.dumps({"format": "dmad-android-model", "version": 1,
                                                   "file": "generator.tflite"}))
    _write(tiny["fp32"], assets, "full", variant="fp32")
    spec, problems = _validate(assets)
    assert problems == [] and [e["label"] for e in spec["models"]] == ["full"]
    (assets / "model.json").write_text("{broken")
    _write(tiny["int8_io"], assets, "compressed")
    spec, problems = _validate(assets)
    assert problems == [] and [e["label"] for e in spec["models"]] == ["compressed"]


def test_entry_whose_file_is_gone_is_dropped(tiny: dict[str, Path], assets: Path) -> None:
    _write(tiny["fp32"], assets, "full", variant="fp32")
    (assets / "full.tflite").unlink()
    _write(tiny["int8_io"], assets, "compressed")
    spec, problems = _validate(assets)
    assert problems == [] and [e["label"] for e in spec["models"]] == ["compressed"]


def test_bad_label_is_refused(tiny: dict[str, Path], assets: Path) -> None:
    with pytest.raises(DmadError, match="--android-label"):
        _write(tiny["fp32"], assets, "tiny")
    assert not (assets / "model.json").exists()


def test_choose_variant_keeps_its_rule() -> None:
    def arts(**psnr: float) -> dict[str, dict[str, Any]]:
        return {v: {"parity": {"psnr_db": p}} for v, p in psnr.items()}

    assert choose_variant(arts(fp32=99, fp16=80, int8=36, int8_io=37), 35) == "int8_io"
    assert choose_variant(arts(fp32=99, fp16=80, int8=36, int8_io=36), 35) == "int8_io"
    assert choose_variant(arts(fp32=99, fp16=80, int8=30, dynamic=40), 35) == "dynamic"
    assert choose_variant(arts(fp32=99, fp16=80, int8=30), 35) == "fp16"
    assert choose_variant(arts(fp32=99, int8=30), 35) == "fp32"
    # per-variant floors, and the reason stated
    floors = {"fp16": 60, "dynamic": 40, "int8": 35, "int8_io": 35}
    v, why = choose_variant(arts(fp32=99, fp16=80, int8=36, dynamic=39), floors, explain=True)
    assert v == "int8" and "meets its 35 dB floor" in why and "dynamic 39.0 < 40 dB" in why
    v, why = choose_variant(arts(fp32=99, fp16=55, int8=30), floors, explain=True)
    assert v == "fp32" and "int8 30.0 < 35 dB" in why
    # the floor is judged on the worst image: a pooled 37 dB with one image at 31 dB fails it
    a = arts(fp32=99, fp16=80, int8=37, dynamic=41)
    a["int8"]["parity"]["psnr_worst_db"] = 31.0
    v, why = choose_variant(a, floors, explain=True)
    assert v == "dynamic" and "int8 31.0 < 35 dB" in why


def test_a_gpu_file_beside_the_cpu_file(tiny: dict[str, Path], assets: Path) -> None:
    """One file per delegate family: ``for_delegate`` says which file each accelerator runs,
    ``extra_files`` carries the GPU file's own tensors, parity and reason."""
    gpu = {"tflite": tiny["fp32"], "variant": "fp16", "parity": {**PARITY, "psnr_db": 80.0},
           "why": "fp16 for the GPU", "below_floor": False}
    write_assets(tiny["int8_io"], assets, label="compressed", parity=PARITY, variant="int8_io",
                 gpu_file=gpu, below_floor=True, size_multiple=4, **COST)
    _, problems = _validate(assets)
    assert problems == []  # the app's schema-1 checks still pass: the keys are extra
    (e,) = json.loads((assets / "model.json").read_text())["models"]
    assert e["for_delegate"] == {"cpu": "compressed.tflite", "nnapi": "compressed.tflite",
                                 "gpu": "compressed_gpu.tflite"}
    assert e["below_floor"] is True and e["size_multiple"] == 4
    (x,) = e["extra_files"]
    assert (x["file"], x["variant"], x["below_floor"]) == ("compressed_gpu.tflite", "fp16", False)
    assert x["parity"]["psnr_db"] == 80.0 and x["chosen_because"] == "fp16 for the GPU"
    assert (assets / x["file"]).read_bytes() == tiny["fp32"].read_bytes()
    it = make_interpreter(assets / x["file"], delegate=False)
    d = it.get_input_details()[0]
    assert x["input"]["name"] == d["name"] and x["input"]["shape"] == [1, 8, 8, 3]
    assert x["input"]["dtype"] == "float32" and x["input"]["quantization"] is None
    assert x["output"]["dtype"] == "float32" and e["input"]["dtype"] == "int8"
    # its GPU file gone, an entry kept beside a new label falls back to its CPU file
    (assets / "compressed_gpu.tflite").unlink()
    _write(tiny["fp32"], assets, "full", variant="fp32")
    models = {m["label"]: m for m in json.loads((assets / "model.json").read_text())["models"]}
    assert "extra_files" not in models["compressed"]
    assert set(models["compressed"]["for_delegate"].values()) == {"compressed.tflite"}
    assert set(models["full"]["for_delegate"].values()) == {"full.tflite"}


def test_choose_gpu_variant_prefers_fp16_within_its_floor() -> None:
    from dmad.export.android import choose_gpu_variant

    def arts(**psnr: float) -> dict[str, dict[str, Any]]:
        return {v: {"parity": {"psnr_db": p}} for v, p in psnr.items()}

    floors = {"fp16": 60.0, "int8": 35.0}
    assert choose_gpu_variant(arts(fp32=130, fp16=80, int8=36), floors)[0] == "fp16"
    v, why = choose_gpu_variant(arts(fp32=130, fp16=50, int8=36), floors)
    assert v == "fp32" and "fp16 50.0 < 60 dB" in why
    v, why = choose_gpu_variant(arts(fp16=50, int8=36), floors)
    assert v == "fp16" and "under its 60 dB floor" in why
    assert choose_gpu_variant(arts(int8=36), floors)[0] is None
