"""``--android``: put one exported ``.tflite`` and its ``model.json`` into the demo app's assets.

``model.json`` is everything the app needs to feed the model without reading the flatbuffer:
tensor names, NHWC shape, dtype, the value range [-1, 1] and the pixel mapping, the int8 scale /
zero point where the I/O is quantised, cost (MACs/params), where the weights came from and the
parity numbers. Both files are written atomically (a half-copied model would crash the app).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from compress.io import atomic_write, atomic_write_json

__all__ = ["DEFAULT_ASSETS", "choose_variant", "model_json", "write_assets"]

DEFAULT_ASSETS = Path(__file__).resolve().parent.parent / "android_demo/app/src/main/assets"
#: Candidates for the default choice, best first when PSNR ties.
_INT8_FAMILY = ("int8_io", "int8", "dynamic")


def choose_variant(artifacts: dict[str, dict[str, Any]], psnr_bar: float) -> str:
    """Best int8 variant meeting ``psnr_bar`` (highest PSNR vs PyTorch), else fp16, else fp32."""
    ok = [
        v for v in _INT8_FAMILY
        if v in artifacts and artifacts[v]["parity"]["psnr_db"] >= psnr_bar
    ]
    if ok:
        return max(ok, key=lambda v: (artifacts[v]["parity"]["psnr_db"], -_INT8_FAMILY.index(v)))
    for v in ("fp16", "fp32"):
        if v in artifacts:
            return v
    return next(iter(artifacts))


def _tensor(info: dict[str, Any], role: str) -> dict[str, Any]:
    t = dict(info)
    t["layout"] = "NHWC"
    t["value_range"] = [-1.0, 1.0]
    if role == "input":
        t["from_pixels"] = "x = px / 127.5 - 1  (px: RGB 0..255)"
    else:
        t["to_pixels"] = "px = clamp(round((y + 1) * 127.5), 0, 255)"
    q = t.get("quantization")
    if q is not None:
        if role == "input":
            t["quantize"] = "q = clamp(round(x / scale) + zero_point, -128, 127)"
        else:
            t["dequantize"] = "y = (q - zero_point) * scale"
    return t


def model_json(
    variant: str, file_name: str, artifact: dict[str, Any], summary: dict[str, Any]
) -> dict[str, Any]:
    """The ``model.json`` document for ``artifact`` (one entry of parity.json's artifacts)."""
    return {
        "format": "dmad-android-model",
        "version": 1,
        "file": file_name,
        "variant": variant,
        "input": _tensor(artifact["io"]["input"], "input"),
        "output": _tensor(artifact["io"]["output"], "output"),
        "macs": summary["macs"],
        "params": summary["params"],
        "source": summary["source"],
        "parity": artifact["parity"],
        "xnnpack": artifact.get("xnnpack"),
    }


def write_assets(
    tflite: Path, variant: str, artifact: dict[str, Any], summary: dict[str, Any], assets: Path
) -> Path:
    """Copy ``tflite`` into ``assets`` as ``generator.tflite`` and write ``model.json``."""
    assets = Path(assets)
    name = "generator.tflite"
    with atomic_write(assets / name) as fh, open(tflite, "rb") as src:
        shutil.copyfileobj(src, fh)
    atomic_write_json(assets / "model.json", model_json(variant, name, artifact, summary))
    return assets / "model.json"
