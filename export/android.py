"""``--android``: put one exported ``.tflite`` into the demo app's assets and record it in
``model.json``, following the app's contract (``android_demo/MODEL_JSON.md``, schema 1).

``model.json`` holds up to two models, labelled ``"full"`` and ``"compressed"``; each is stored
as ``<label>.tflite``. Writing one label keeps the other label's entry (when its file is still
there) and replaces an entry with the same label. Tensor names, NHWC shapes, dtypes and int8
scale / zero point are copied from the LiteRT interpreter after loading the written file, so the
app's own check against the model cannot disagree. Both files are written atomically (a
half-copied model would crash the app), the ``.tflite`` first; nothing else in the assets folder
(``samples/``, other files) is touched.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dmad.compress.errors import DmadError
from dmad.compress.io import atomic_write, atomic_write_json
from dmad.export.parity import worst_psnr

__all__ = [
    "LABELS",
    "PIXEL_MAPPING",
    "SCHEMA_VERSION",
    "asset_name",
    "choose_gpu_variant",
    "choose_variant",
    "default_assets",
    "gpu_asset_name",
    "model_entry",
    "tensor_spec",
    "write_assets",
]

#: Where the app keeps its assets, relative to the repository root.
APP_ASSETS = Path("android_demo/app/src/main/assets")


def default_assets() -> Path | None:
    """The repository's app assets folder when dmad runs from a source checkout, else None.

    An installed wheel has no ``android_demo/`` next to it, so the caller must then name the
    folder explicitly (``--android-assets``) rather than write into site-packages.
    """
    import dmad

    root = Path(dmad.__file__).resolve().parent.parent
    return root / APP_ASSETS if (root / APP_ASSETS.parent).is_dir() else None
SCHEMA_VERSION = 1
#: Allowed labels, in the order the entries are listed.
LABELS = ("full", "compressed")
#: The formulas the app implements (PixelMapping.kt); it refuses any other strings.
PIXEL_MAPPING = {
    "to_tensor": "x/127.5 - 1",
    "from_tensor": "clamp(round((y + 1) * 127.5), 0, 255)",
}
VALUE_RANGE = [-1, 1]
_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.int8): "int8"}
#: Candidates for the default choice, best first when PSNR ties.
_INT8_FAMILY = ("int8_io", "int8", "dynamic")


def choose_variant(artifacts: dict[str, dict[str, Any]], floors: float | dict[str, float],
                   *, explain: bool = False) -> Any:
    """The variant for the app: the best int8-family file meeting its floor (highest PSNR vs
    PyTorch), else fp16 (if it meets its floor), else fp32. ``floors``: one dB figure for all,
    or per variant. With ``explain``, ``(variant, one-line reason)``."""
    def floor(v: str) -> float:
        return float(floors) if isinstance(floors, (int, float)) else float(floors.get(v, 35.0))

    def psnr(v: str) -> float:  # the worst held-out image's: floors apply to every image
        return worst_psnr(artifacts[v]["parity"])

    present = [v for v in _INT8_FAMILY if v in artifacts]
    ok = [v for v in present if psnr(v) >= floor(v)]
    missed = ", ".join(f"{v} {psnr(v):.1f} < {floor(v):g} dB" for v in present if v not in ok)
    if ok:
        v = max(ok, key=lambda v: (psnr(v), -_INT8_FAMILY.index(v)))
        why = (f"{v}: {psnr(v):.1f} dB vs PyTorch on its worst held-out image meets its "
               f"{floor(v):g} dB floor; the "
               "highest-PSNR int8-weight file, smallest and fastest on phone CPUs"
               + (f" (below floor: {missed})" if missed else ""))
    elif "fp16" in artifacts and ("fp32" not in artifacts or psnr("fp16") >= floor("fp16")):
        v = "fp16"
        why = (f"fp16: no int8 file met its floor ({missed or 'none exported'}); fp16 is "
               f"{psnr('fp16'):.1f} dB vs PyTorch, half the size of fp32")
    elif "fp32" in artifacts:
        v = "fp32"
        why = ("fp32: no smaller file met its floor"
               + (f" ({missed})" if missed else ""))
    else:
        v = next(iter(artifacts))
        why = f"{v}: the only file"
    return (v, why) if explain else v


def choose_gpu_variant(artifacts: dict[str, dict[str, Any]],
                       floors: float | dict[str, float]) -> tuple[str | None, str]:
    """The file for a phone GPU: fp16 when it meets its floor (LiteRT's GPU delegate computes
    in fp16 anyway, and the file is half the size of fp32), else fp32; ``None`` when neither
    was exported (the GPU then runs the CPU file). Returns (variant, one-line reason)."""
    def floor(v: str) -> float:
        return float(floors) if isinstance(floors, (int, float)) else float(floors.get(v, 35.0))

    def psnr(v: str) -> float:
        return worst_psnr(artifacts[v]["parity"])

    if "fp16" in artifacts and psnr("fp16") >= floor("fp16"):
        return "fp16", (f"fp16 for the GPU: {psnr('fp16'):.1f} dB vs PyTorch on its worst "
                        f"held-out image meets its {floor('fp16'):g} dB floor; the GPU delegate "
                        "computes in fp16, so the file matches what runs")
    if "fp32" in artifacts:
        low = (f"fp16 {psnr('fp16'):.1f} < {floor('fp16'):g} dB" if "fp16" in artifacts
               else "no fp16 file exported")
        return "fp32", f"fp32 for the GPU ({low})"
    if "fp16" in artifacts:
        return "fp16", (f"fp16 for the GPU although it is {psnr('fp16'):.1f} dB, under its "
                        f"{floor('fp16'):g} dB floor (no fp32 file exported)")
    return None, "no fp16 or fp32 file exported: the GPU runs the CPU file"


def asset_name(label: str) -> str:
    """File name of the ``label`` model in the assets folder."""
    _check_label(label)
    return f"{label}.tflite"


def _check_label(label: str) -> None:
    if label not in LABELS:
        raise DmadError(f"--android-label: {label!r} is not one of {', '.join(LABELS)}")


def tensor_spec(detail: dict[str, Any], role: str, file: str) -> dict[str, Any]:
    """One ``get_input_details()`` / ``get_output_details()`` entry as model.json's tensor object.

    Raises DmadError for what schema 1 cannot describe (not ``[1, H, W, 3]``, a dtype other than
    float32 / int8, int8 without a single scale / zero point).
    """
    shape = [int(s) for s in detail["shape"]]
    dtype = _DTYPES.get(np.dtype(detail["dtype"]))
    if len(shape) != 4 or shape[0] != 1 or shape[1] < 1 or shape[2] < 1 or shape[3] != 3:
        raise DmadError(f"{file}: {role} shape {shape} is not [1, H, W, 3] (NHWC RGB); "
                        "the Android app cannot feed it")
    if dtype is None:
        raise DmadError(f"{file}: {role} dtype {np.dtype(detail['dtype']).name} is not float32 "
                        "or int8; the Android app (model.json schema 1) cannot feed it")
    quant = None
    if dtype == "int8":
        scale, zero_point = detail["quantization"]
        scale, zero_point = float(scale), int(zero_point)
        if not (math.isfinite(scale) and scale > 0 and -128 <= zero_point <= 127):
            raise DmadError(f"{file}: int8 {role} has no usable scale / zero point "
                            f"({scale}, {zero_point})")
        quant = {"scale": scale, "zero_point": zero_point}
    return {"name": str(detail["name"]), "shape": shape, "dtype": dtype, "quantization": quant}


def _io(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(input, output) tensor objects of ``path`` as the LiteRT interpreter reports them."""
    from dmad.export.parity import make_interpreter

    it = make_interpreter(path, delegate=False)
    ins, outs = it.get_input_details(), it.get_output_details()
    if len(ins) != 1 or len(outs) != 1:
        raise DmadError(f"{path.name}: {len(ins)} inputs and {len(outs)} outputs; the Android "
                        "app (model.json schema 1) needs exactly one of each")
    return tensor_spec(ins[0], "input", path.name), tensor_spec(outs[0], "output", path.name)


def model_entry(
    path: Path,
    label: str,
    *,
    parity: dict[str, Any],
    macs: dict[str, int],
    params: int,
    source_run: str,
    variant: str | None = None,
    why: str | None = None,
    gpu: dict[str, Any] | None = None,
    below_floor: bool | None = None,
    size_multiple: int | None = None,
) -> dict[str, Any]:
    """The ``models[]`` entry of model.json for the ``.tflite`` at ``path`` (already in assets);
    ``why`` (the choice of variant), ``gpu`` (the GPU-delegate analysis), ``below_floor`` and
    ``size_multiple`` (the input sides a fully convolutional model takes) are extra keys."""
    _check_label(label)
    inp, out = _io(path)
    entry: dict[str, Any] = {
        "file": path.name,
        "label": label,
        "input": inp,
        "output": out,
        "value_range": list(VALUE_RANGE),
        "pixel_mapping": dict(PIXEL_MAPPING),
        "macs": {"paper": int(macs["paper"]), "true": int(macs["true"])},
        "params": int(params),
        "source_run": str(source_run),
        "parity": dict(parity),
    }
    if variant is not None:
        entry["variant"] = variant  # extra key; the app ignores it
    if why is not None:
        entry["chosen_because"] = why
    if gpu is not None:
        entry["gpu_delegate"] = dict(gpu)
    if below_floor is not None:
        entry["below_floor"] = bool(below_floor)
    if size_multiple is not None:
        entry["size_multiple"] = int(size_multiple)
    return entry


def gpu_asset_name(label: str) -> str:
    """File name of the ``label`` model's GPU file in the assets folder."""
    _check_label(label)
    return f"{label}_gpu.tflite"


def _per_delegate(entry: dict[str, Any], assets: Path, label: str,
                  gpu_file: dict[str, Any] | None) -> None:
    """``for_delegate`` (which file each accelerator runs) and ``extra_files`` (the GPU file's
    own tensors, parity and reason) on ``entry``; the GPU file copied atomically."""
    name = entry["file"]
    if gpu_file is None:
        entry["for_delegate"] = {"cpu": name, "nnapi": name, "gpu": name}
        return
    gname = gpu_asset_name(label)
    with atomic_write(assets / gname) as fh, open(gpu_file["tflite"], "rb") as src:
        shutil.copyfileobj(src, fh)
    inp, out = _io(assets / gname)
    entry["for_delegate"] = {"cpu": name, "nnapi": name, "gpu": gname}
    entry["extra_files"] = [{"file": gname, "variant": gpu_file["variant"], "input": inp,
                             "output": out, "parity": dict(gpu_file["parity"]),
                             "chosen_because": gpu_file["why"],
                             "below_floor": bool(gpu_file["below_floor"])}]


def _kept_entries(assets: Path, label: str, file: str) -> list[dict[str, Any]]:
    """Entries of an existing schema-1 model.json worth keeping next to the new ``label``.

    Kept: other labels whose file is still in ``assets`` and is not the file being written.
    An unreadable or other-schema model.json is replaced as a whole.
    """
    try:
        doc = json.loads((assets / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
        return []
    models = doc.get("models")
    if not isinstance(models, list):
        return []
    kept = []
    for e in models:
        if not isinstance(e, dict) or e.get("label") not in LABELS or e.get("label") == label:
            continue
        f = e.get("file")
        if not isinstance(f, str) or "/" in f or f == file or not (assets / f).is_file():
            continue
        if any(k["label"] == e["label"] for k in kept):
            continue
        extra = [x.get("file") for x in e.get("extra_files") or [] if isinstance(x, dict)]
        if not all(isinstance(x, str) and "/" not in x and (assets / x).is_file()
                   for x in extra):  # its GPU file is gone: the CPU file serves every delegate
            e = {k: v for k, v in e.items() if k != "extra_files"}
            e["for_delegate"] = {"cpu": f, "nnapi": f, "gpu": f}
        kept.append(e)
    return kept


def write_assets(tflite: Path, assets: Path, *, label: str = "compressed",
                 gpu_file: dict[str, Any] | None = None, **facts: Any) -> Path:
    """Copy ``tflite`` into ``assets`` as ``<label>.tflite`` and merge its entry into model.json.

    ``facts`` are :func:`model_entry`'s keywords: ``parity`` (the export's parity figures for
    this file, at least ``max_abs`` and ``psnr_db``), ``macs`` (``{"paper": int, "true": int}``),
    ``params``, ``source_run`` and optionally ``variant``, ``why``, ``gpu``, ``below_floor``,
    ``size_multiple``. ``gpu_file`` (``tflite``, ``variant``, ``parity``, ``why``,
    ``below_floor``): a separate file for phone GPUs, written as ``<label>_gpu.tflite`` and
    named in ``for_delegate``. Returns the model.json path.
    """
    assets, tflite = Path(assets), Path(tflite)
    name = asset_name(label)
    _io(tflite)  # refuse what schema 1 cannot describe before touching the assets
    if gpu_file is not None:
        _io(Path(gpu_file["tflite"]))
    with atomic_write(assets / name) as fh, open(tflite, "rb") as src:
        shutil.copyfileobj(src, fh)
    entry = model_entry(assets / name, label, **facts)
    _per_delegate(entry, assets, label, gpu_file)
    models = [*_kept_entries(assets, label, name), entry]
    models.sort(key=lambda e: LABELS.index(e["label"]))
    atomic_write_json(assets / "model.json", {"schema_version": SCHEMA_VERSION, "models": models})
    return assets / "model.json"
