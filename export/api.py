"""``dmad export`` as one verb: ``export_model(ExportConfig) -> ExportResult``.

Steps: load the generator (run folder, model file, search file → pruned, or an in-memory module)
→ refuse layers the path is not verified with → apply the exact deploy rewrites to a copy
(:mod:`export.rewrite`) and check them against the original → ONNX + ORT parity
(:mod:`export.onnx`) → the requested TFLite variants (:mod:`export.tflite`) → parity, I/O
details and XNNPACK coverage of every file (:mod:`export.parity`) → ``parity.json`` →
optionally the Android assets (:mod:`export.android`).

Everything is written into a scratch folder next to ``out`` and renamed into place only once
every check has passed, so a failed or interrupted export leaves no half-written output. The
reference for every number is the *original* PyTorch model in fp32, never the rewritten one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dmad.compress.config import opt
from dmad.compress.errors import DmadError
from dmad.compress.io import atomic_write_json
from dmad.compress.runfolder import staged_output
from dmad.export.parity import (
    compare,
    format_per_image,
    format_table,
    io_details,
    precision_report,
    run_tflite,
    worst_psnr,
    xnnpack_coverage,
)
from dmad.export.rewrite import deploy_rewrite, unsupported_layers
from dmad.export.sensitivity import LOW_CONTRAST, MAX_HYBRID, candidate_plans, kept_phrase
from dmad.export.tflite import POST_FLOOR_DB, VARIANTS, Int8Recipe

__all__ = ["DEFAULT_RECIPE", "ExportConfig", "ExportResult", "export_model", "quality_notes",
           "range_target"]

QUANTS = ("fp32", "fp16", "dynamic", "int8", "onnx-int8")
CONVERTERS = ("graph", "onnx2tf")
SUBPIXEL = ("auto", "on", "off")
#: PSNR floors (dB vs PyTorch fp32 on whole held-out images) per reduced-precision file.
FLOORS = {"fp16": 60.0, "dynamic": 40.0, "int8": 35.0, "int8_io": 35.0, "onnx-int8": 35.0}
FP32_TFLITE_TOL = 1e-3
REWRITE_TOL = 1e-4
#: ORT is expected within ``ONNX_TOL`` (1e-4) of PyTorch; between that and this it is reported
#: as a warning (deep random-weight InstanceNorm ResNets at 256² reach ~1.2e-4 from fp32
#: summation order alone: ORT is then as far from a float64 PyTorch run as from the fp32 one),
#: above it the graph is wrong and the export fails.
ONNX_HARD_TOL = 1e-3
PSNR_BAR = 35.0
#: The int8 recipe measured best (``python scripts/bench_export.py``, ``docs/results.md``): with
#: the InstanceNorm statistics written out (:class:`export.rewrite.ExplicitInstanceNorm`), the
#: statistics, the normalising multiply and the adds stay float (XNNPACK runs them in fp32 inside
#: the same partition, so the file stays one partition), while convolutions, padding and
#: activations are int8.
DEFAULT_RECIPE = Int8Recipe(per_channel=True, float_ops=("MEAN", "SUB", "MUL", "ADD", "RSQRT"),
                            ranges="auto")
#: how a layer kept out of int8 may run: fp32, or hybrid (``Int8Recipe.hybrid_layers``)
FLOAT_KINDS = ("float", "hybrid")


@dataclass
class ExportConfig:
    """Settings of ``dmad export`` (exactly one of ``run`` / ``model`` / ``module``)."""

    out: Path = opt(help="output folder (written atomically: complete, or not at all)")
    run: Path | None = opt(None, "run folder to export (student_G_*, search_G_* or G_*.pt)")
    model: Path | None = opt(None, "a dmad model file or search result to export")
    module: nn.Module | None = opt(
        None,
        "an nn.Module to export (programmatic use, e.g. benchmarks; not on the CLI)",
    )
    generator_class: str | None = opt(
        None, "your own generator class, package.module:ClassName; --model is then its state "
        "dict (the current folder is searched first)")
    generator_kwargs: str | None = opt(None, "a JSON object of keyword arguments for "
                                       "--generator-class")
    direction: str = opt("AtoB", "AtoB | BtoA: which generator of a CycleGAN run")
    size: int = opt(
        256,
        "input side in pixels of the exported model (fixed shape, as phones run it)",
    )
    quant: tuple[str, ...] = opt(
        ("fp32", "fp16", "dynamic", "int8"),
        "comma list of fp32, fp16, dynamic, int8 (TFLite) and onnx-int8 (ONNX Runtime QDQ)",
    )
    converter: str = opt(
        "graph",
        "graph (PyTorch → NHWC graph → TensorFlow's converter; no layout guess) | onnx2tf",
    )
    subpixel: str = opt(
        "auto",
        "auto | on | off: strided ConvTranspose as conv + depth-to-space (exact; no "
        "TRANSPOSE_CONV for phone GPU delegates); auto = on",
    )
    phases: str = opt(
        "auto",
        "auto | on | off: a ResNet's full-resolution layers computed on the image's 2×2 phases "
        "in the TFLite files (exact; four times the channels at half the resolution): the "
        "head's convolution, and the stem and first downsampling; auto = the head always, the "
        "stem below 16 channels, and in the full-int8 files the stem's convolution from 16 up",
    )
    equalize: bool = opt(
        True,
        "exact per-channel range equalisation before int8 (pre-norm convs, residual stream)",
    )
    int8_io: bool = opt(False, "also write a full-int8 model with int8 input/output")
    calib: Path | None = opt(
        None,
        "folder of RGB images for int8 calibration (default: the run's training images)",
    )
    split: Path | None = opt(
        None,
        "a split.json (dmad compress): int8 calibration on its training images, parity on its "
        "whole held-out images",
    )
    num_calib: int = opt(60, "number of calibration images (more make int8 depend less on "
                         "which are drawn)")
    num_eval: int = opt(8, "number of images the parity check runs")
    rewrite: bool = opt(
        True,
        "apply the exact deploy rewrites (reflect padding as slices, two-step InstanceNorm)",
    )
    recipe: Int8Recipe = opt(
        help="the full-int8 recipe (per-channel weights, ops kept in float)",
        factory=lambda: DEFAULT_RECIPE,
    )
    int8_auto_float: int = opt(
        3,
        "int8: when fake int8 on the calibration images predicts the file under its floor, keep "
        f"up to this many layers float (and up to {MAX_HYBRID} hybrid), the fewest that clear "
        "it, chosen by measured sensitivity and, with auto ranges, verified on real int8 files "
        "(0 = off; ignored when the recipe names float or hybrid layers)",
    )
    int8_kinds: tuple[str, ...] = opt(
        ("float", "hybrid"),
        "int8: how the layers --int8-auto-float keeps out of int8 may run: float (fp32 "
        "convolutions) and hybrid (int8 weights, float input and output: XNNPACK's dynamically "
        "quantised convolution, at the int8 rate on CPUs with int8 dot products); a hybrid "
        "layer is taken where it buys 3/4 of the best float layer's gain",
    )
    int8_screen: int = opt(
        32,
        "int8: calibration images screened with every layer in fake int8; the worst are judged "
        "for the float-layer choice and first for the `auto` ranges (0 = the first drawn)",
    )
    int8_contrast: float = opt(
        LOW_CONTRAST,
        "int8: beside each screened calibration image a copy with its contrast scaled by this "
        "is screened too (a flat photograph is where int8 breaks first; 0 = none)",
    )
    android: bool = opt(
        False,
        "copy the chosen .tflite and model.json into the Android app's assets",
    )
    android_assets: Path | None = opt(
        None,
        "the app's assets folder (default: android_demo/'s in a source checkout)",
    )
    android_variant: str | None = opt(
        None,
        "fp32 | fp16 | dynamic | int8 | int8_io for --android "
        "(default: the fastest kind that meets its floor: int8, then dynamic, then fp16)",
    )
    android_label: str = opt(
        "compressed",
        "full | compressed: model.json label for --android; the other label's model is kept",
    )
    force: bool = opt(False, "replace a non-empty --out folder")
    psnr_bar: float = opt(PSNR_BAR, "PSNR floor in dB vs PyTorch of the int8 files (and "
                          "onnx-int8); the layer plan and auto ranges aim 1 dB over it")
    floor_fp16: float = opt(FLOORS["fp16"], "PSNR floor in dB vs PyTorch of the fp16 file")
    floor_dynamic: float = opt(FLOORS["dynamic"],
                               "PSNR floor in dB vs PyTorch of the dynamic-range file")
    strict: bool = opt(False, "fail the export (write nothing) when a file is below its floor")
    #: fp32 TFLite max-abs bar; only the benchmark raises it, to measure the unrewritten graph
    #: (onnx2tf's own InstanceNorm conversion can be off by ~2e-3 at 256²).
    fp32_tol: float = opt(
        FP32_TFLITE_TOL,
        "max abs difference fp32 TFLite vs PyTorch above which the export fails",
    )
    timeout: float | None = opt(
        None,
        "seconds the converter may run before it is stopped (none = no limit)",
    )


@dataclass
class ExportResult:
    """What was written and measured."""

    out: Path
    onnx: Path
    files: dict[str, Path]
    report: dict[str, Any]
    table: str
    android: Path | None
    seconds: float


# ----------------------------------------------------------------------------- sources


def _load_file(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """A dmad model file, or a search result (pruned here); detected by its ``format`` key."""
    from dmad.compress.checkpoint import load_model
    from dmad.compress.io import safe_load

    obj = safe_load(path)
    fmt = obj.get("format") if isinstance(obj, dict) else None
    del obj
    if fmt is None:
        from dmad.compress.importer import recognised_public

        public = recognised_public(path)
        if public is not None:  # a CUT or pix2pixHD checkpoint
            return public, {"kind": type(public).__name__, "file": str(path)}
    if fmt == "dmad-search":
        from dmad.compress.prune import prune_search_file

        return prune_search_file(path).eval(), {"kind": "search (pruned)", "file": str(path)}
    model, meta = load_model(path)
    return model, {"kind": "model", "file": str(path), "meta": meta}


def _load_run(run: Path, direction: str) -> tuple[nn.Module, dict[str, Any]]:
    if not run.exists():
        raise DmadError(f"{run}: run folder not found")
    if not run.is_dir():
        raise DmadError(f"{run}: is a file, expected a run folder (use --model for a file)")
    names = [f"student_G_{direction}.pt", f"search_G_{direction}.pt", f"G_{direction}.pt"]
    for name in names:
        if (run / name).is_file():
            model, src = _load_file(run / name)
            src.update(run=str(run), direction=direction)
            return model, src
    raise DmadError(f"{run}: no generator for {direction} in the run folder "
                    f"(looked for {', '.join(names)})")


def _source(cfg: ExportConfig) -> tuple[nn.Module, dict[str, Any]]:
    given = [x is not None for x in (cfg.run, cfg.model, cfg.module)]
    if sum(given) != 1:
        raise DmadError("give exactly one of --run RUN or --model FILE")
    if cfg.direction not in ("AtoB", "BtoA"):
        raise DmadError(f"--direction: {cfg.direction!r} is not AtoB or BtoA")
    if cfg.module is not None:
        return cfg.module.eval(), {"kind": "module", "file": None}
    if cfg.generator_class is not None:
        from dmad.compress.user_class import load_user_generator

        if cfg.model is None:
            raise DmadError("--generator-class needs --model WEIGHTS (its state dict)")
        import json

        from dmad.compress.graph_model import graph_teacher

        model = load_user_generator(cfg.generator_class, Path(cfg.model), cfg.generator_kwargs)
        try:  # its size multiple and input channels, from its traced structure
            model = graph_teacher(model, cfg.generator_class,
                                  json.loads(cfg.generator_kwargs or "{}"))
        except DmadError:
            pass  # masks need the structure; an export does not
        return model, {"kind": "user-class", "file": str(cfg.model),
                       "class": cfg.generator_class}
    if cfg.run is not None:
        return _load_run(Path(cfg.run), cfg.direction)
    path = Path(cfg.model)  # type: ignore[arg-type]
    if not path.exists():
        raise DmadError(f"{path}: model file not found")
    return _load_file(path)


def floors_of(cfg: ExportConfig) -> dict[str, float]:
    """The PSNR floor of each reduced-precision kind under ``cfg``."""
    return {"fp16": cfg.floor_fp16, "dynamic": cfg.floor_dynamic, "int8": cfg.psnr_bar,
            "int8_io": cfg.psnr_bar, "onnx-int8": cfg.psnr_bar}


def quality_notes(artifacts: dict[str, dict[str, Any]],
                  floors: float | dict[str, float]) -> list[str]:
    """A warning for every reduced-precision file below its floor in dB PSNR vs PyTorch (NaN
    too), with ``below_bar`` and ``floor_db`` in its entry: a file far from its fp32 original
    is never written without saying so."""
    notes = []
    for v in ("fp16", "dynamic", "int8", "int8_io", "onnx-int8"):
        a = artifacts.get(v)
        if a is None:
            continue
        bar = floors if isinstance(floors, (int, float)) else floors.get(v, PSNR_BAR)
        p = worst_psnr(a["parity"])
        a["floor_db"] = bar
        a["below_bar"] = not p >= bar
        if a["below_bar"]:
            where = (f"its worst image ({a['parity']['worst_image']}) is {p:.1f} dB, pooled "
                     f"{a['parity']['psnr_db']:.1f} dB" if a["parity"].get("worst_image")
                     else f"{p:.1f} dB")
            notes.append(f"{v}: {where} vs PyTorch on the evaluation images, below its "
                         f"{bar:g} dB floor: it visibly differs from the fp32 model; look at its "
                         "output before shipping it")
    return notes


def _check_size(model: nn.Module, size: int) -> None:
    spec = getattr(model, "spec", None)
    family = getattr(spec, "family", "resnet")
    if family == "unet":
        div = 2 ** spec.num_downs  # type: ignore[union-attr]
        why = f"UNet with num_downs={spec.num_downs} needs a multiple of 2**num_downs = {div}"  # type: ignore[union-attr]
    elif family == "graph":
        div = int(spec.divisor)  # type: ignore[union-attr]
        why = f"{spec.builder.rsplit(':', 1)[-1]} needs a multiple of {div}"  # type: ignore[union-attr]
    else:
        div, why = 4, "ResNet generators need a multiple of 4 (two stride-2 stages)"
    if isinstance(size, bool) or not isinstance(size, int) or size < div or size % div:
        raise DmadError(f"--size: {size} is not a multiple of {div} ({why})")


# ----------------------------------------------------------------------------- images


def _stack(items: list[torch.Tensor]) -> np.ndarray:
    return torch.stack(items).numpy().astype(np.float32)


#: calibration images, whole held-out images, a note on where they came from, and the names of
#: the held-out images (parity is reported per image)
Images = tuple[np.ndarray | None, np.ndarray, str, list[str]]


def _folder_images(folder: Path, size: int, n_calib: int, n_eval: int) -> Images:
    from dmad.compress.data import FolderDataset

    if not folder.is_dir():
        raise DmadError(f"{folder}: calibration folder not found" if not folder.exists()
                        else f"{folder}: is a file, expected a folder of images")
    try:
        ds = FolderDataset(folder, size, skip_bad=True)
    except DmadError as exc:
        raise DmadError(f"--calib: {exc}") from None
    n = len(ds)
    if n < 2 and n_eval > 0:
        raise DmadError(f"{folder}: {n} usable image(s); export needs at least 2 (calibration "
                        "and a held-out image the parity check never calibrated on)")
    # Parity is judged on whole images the calibration never saw: when the folder is small,
    # calibration gives some up (at least a quarter of the folder, at least 1, is held out).
    n_held = min(n_eval, max(1, n // 4)) if n <= n_calib else min(n_eval, n - n_calib)
    calib_idx = list(range(min(n_calib, n - n_held)))
    eval_idx = list(range(len(calib_idx), len(calib_idx) + n_held))

    def get(idx: list[int]) -> np.ndarray:
        if not idx:
            return np.zeros((0, 3, size, size), np.float32)
        return _stack([ds.get(i)["image"] for i in idx])  # type: ignore[misc]
    note = (f"{folder} ({len(calib_idx)} calibration, {len(eval_idx)} whole held-out images "
            "for parity)")
    return get(calib_idx), get(eval_idx), note, [Path(ds.paths[i]).name for i in eval_idx]


def _spread(items: list[str], n: int) -> list[str]:
    """``n`` items evenly spaced over the list (all of them when it is shorter)."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / max(1, n - 1))] for i in range(n)]


def _split_images(split_path: Path, calib: Path | None, size: int, n_calib: int, n_eval: int
                  ) -> Images:
    """Calibration from the split's training images (or ``calib``), evaluation on its held-out
    images: whole images resized to ``size``, never crops, never images the model trained on."""
    from dmad.compress.data.split import ImageListDataset, ImageSplit
    from dmad.compress.data.transforms import TransformConfig

    split = ImageSplit.load(split_path)
    tf = TransformConfig(size, size, False)
    aligned = split.layout == "aligned"
    held_paths = _spread(split.val, n_eval)
    held = ImageListDataset(held_paths, tf, aligned=aligned)
    ev = _stack([held.get(i)["A"] for i in range(len(held))])  # type: ignore[misc]
    names = [Path(x).name for x in held_paths]
    if calib is not None:
        cal, _, note, _ = _folder_images(calib, size, n_calib, 0)
        return (cal, ev, f"calibration {note}; {len(held)} whole held-out images of "
                f"{split_path}", names)
    train = ImageListDataset(_spread(split.train, n_calib), tf, aligned=aligned)
    cal = _stack([train.get(i)["A"] for i in range(len(train))])  # type: ignore[misc]
    return cal, ev, (f"{split_path}: {len(train)} training images for calibration, {len(held)} "
                     f"whole held-out images for parity ({split.val_source})"), names


def _run_data(run: Path) -> dict[str, Any] | None:
    """The dataset settings in a run's config.json (flat, or under ``training``)."""
    path = run / "config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    for cand in (cfg, cfg.get("training"), *(v for v in cfg.values() if isinstance(v, dict))):
        if isinstance(cand, dict) and "data" in cand and "task" in cand:
            return cand
    return None


def _run_images(run: Path, direction: str, size: int, n_calib: int, n_eval: int
                ) -> Images | None:
    """Calibration (train split) and held-out (test split) images of the run's dataset, resized
    to ``size`` as at test time. The dataset classes only list the files here: they reject
    images smaller than the *training* crop, but export resizes to whatever ``size`` asks."""
    from dmad.compress.data import AlignedDataset, TransformConfig, apply, load_rgb, open_dataset
    from dmad.compress.train.common import resolve_data

    d = _run_data(run)
    if d is None:
        return None
    root = resolve_data(str(d.get("data") or ""), int(d.get("size") or size))
    listing = TransformConfig(load_size=1, crop_size=1, flip=False)
    resize = TransformConfig(load_size=size, crop_size=size, flip=False)
    task = d["task"]
    ds_dir = d.get("direction", "AtoB") if task == "pix2pix" else "AtoB"

    names: list[str] = []

    def images(split: str, n: int) -> np.ndarray:
        ds = open_dataset(root, task, split, listing, skip_bad=True, direction=ds_dir)
        out = []
        if isinstance(ds, AlignedDataset):
            names[:] = [Path(p).name for p in ds.paths[:n]]
            for p in ds.paths[:n]:
                img = load_rgb(p)
                w, h = img.size
                left = ds_dir == "AtoB"
                half = img.crop((0, 0, w // 2, h) if left else (w // 2, 0, w, h))
                out.append(apply(half, resize, None))
        else:
            paths = ds.A_paths if direction == "AtoB" else ds.B_paths
            names[:] = [Path(p).name for p in paths[:n]]
            out = [apply(load_rgb(p), resize, None) for p in paths[:n]]
        return _stack(out)

    calib, ev = images("train", n_calib), images("test", n_eval)
    return calib, ev, (f"{root} (run dataset: {len(calib)} train images for calibration, "
                       f"{len(ev)} held-out test images)"), names  # the last listed: test


def _synthetic(n: int, size: int, channels: int) -> np.ndarray:
    """Smooth deterministic images in [-1, 1] (parity only, when no images are known)."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(n, channels, max(2, size // 16), max(2, size // 16), generator=g)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic",
                                          align_corners=False)
    return (img.clamp(0, 1) * 2 - 1).numpy().astype(np.float32)


def _images(cfg: ExportConfig, channels: int, needs_calib: bool) -> Images:
    if cfg.num_calib < 1 or cfg.num_eval < 1:
        raise DmadError("--num-calib and the number of evaluation images must be >= 1")
    if cfg.split is not None:
        return _split_images(Path(cfg.split), Path(cfg.calib) if cfg.calib else None, cfg.size,
                             cfg.num_calib, cfg.num_eval)
    if cfg.calib is not None:
        return _folder_images(Path(cfg.calib), cfg.size, cfg.num_calib, cfg.num_eval)
    if cfg.run is not None:
        got = _run_images(Path(cfg.run), cfg.direction, cfg.size, cfg.num_calib, cfg.num_eval)
        if got is not None:
            return got
    if needs_calib:
        raise DmadError("--calib: int8 variants need calibration images and the source names "
                        "no dataset; give --calib IMAGE_DIR (or drop int8 from --quant)")
    return (None, _synthetic(cfg.num_eval, cfg.size, channels), "synthetic (no dataset known)",
            [f"synthetic_{i}" for i in range(cfg.num_eval)])


# ----------------------------------------------------------------------------- main verb


def _torch_out(model: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(images[i : i + 1])).numpy()
                               for i in range(len(images))])


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _check_finite(name: str, par: dict[str, Any]) -> None:
    if not par.get("finite", True):
        raise DmadError(f"{name}: the output holds NaN or infinity on the evaluation images: the "
                        "file is broken (nothing was written)")


def export_model(cfg: ExportConfig) -> ExportResult:
    """Export one generator to ONNX and the requested TFLite variants, verified (module doc).

    ``out`` may not be, sit inside or hold an input (``--force`` replaces it as a whole), and
    it is locked against a second export for the whole run."""
    from dmad.compress.runfolder import refuse_out_over_inputs, run_lock

    refuse_out_over_inputs(cfg.out, {"--run": cfg.run, "--model": cfg.model,
                                     "--split": cfg.split, "--calib": cfg.calib})
    with run_lock(cfg.out):
        return _export_model(cfg)


def _check_options(cfg: ExportConfig) -> tuple[list[str], bool, Path | None]:
    """The TFLite variants to make, whether ONNX int8 is asked for, and the app's assets
    folder: every option refused before any work."""
    from dmad.export.android import LABELS, default_assets

    bad = [q for q in cfg.quant if q not in QUANTS]
    if bad or not cfg.quant:
        raise DmadError(f"--quant: {', '.join(bad) or 'empty'} not among {', '.join(QUANTS)}")
    if cfg.converter not in CONVERTERS:
        raise DmadError(f"--converter: {cfg.converter!r} is not one of {', '.join(CONVERTERS)}")
    if cfg.int8_screen < 0:
        raise DmadError(f"--int8-screen: {cfg.int8_screen} must be >= 0")
    if not 0.0 <= cfg.int8_contrast < 1.0:
        raise DmadError(f"--int8-contrast: {cfg.int8_contrast} must be in [0, 1)")
    both = set(cfg.recipe.float_layers) & set(cfg.recipe.hybrid_layers)
    if both:
        raise DmadError(f"--int8-float-layers and --int8-hybrid-layers both name "
                        f"{', '.join(sorted(both))}")
    if isinstance(cfg.int8_kinds, str):
        raise DmadError(f"--int8-kinds: {cfg.int8_kinds!r}: give a tuple of names, e.g. "
                        "('float', 'hybrid')")
    if not cfg.int8_kinds or set(cfg.int8_kinds) - set(FLOAT_KINDS):
        raise DmadError(f"--int8-kinds: {','.join(cfg.int8_kinds) or 'empty'}: a comma list "
                        f"of {', '.join(FLOAT_KINDS)}")
    if cfg.subpixel not in SUBPIXEL:
        raise DmadError(f"--subpixel: {cfg.subpixel!r} is not one of {', '.join(SUBPIXEL)}")
    if cfg.phases not in SUBPIXEL:
        raise DmadError(f"--phases: {cfg.phases!r} is not one of {', '.join(SUBPIXEL)}")
    variants = [v for v in VARIANTS if v in cfg.quant or (v == "int8_io" and cfg.int8_io)]
    if cfg.android_variant is not None and cfg.android_variant not in variants:
        raise DmadError(f"--android-variant: {cfg.android_variant!r} is not among the exported "
                        f"variants ({', '.join(variants) or 'none'})")
    if cfg.android and not variants:
        raise DmadError("--android: no TFLite variant in --quant to put in the app")
    if cfg.android and cfg.android_label not in LABELS:
        raise DmadError(f"--android-label: {cfg.android_label!r} is not one of {', '.join(LABELS)}")
    assets = cfg.android_assets or default_assets()
    if cfg.android and assets is None:
        raise DmadError("--android-assets: required here (no android_demo/ app next to this "
                        "install); give the app's src/main/assets folder")
    return variants, "onnx-int8" in cfg.quant, assets


def _load_checked(cfg: ExportConfig) -> tuple[nn.Module, dict[str, Any]]:
    model, source = _source(cfg)
    bad_layers = unsupported_layers(model)
    if bad_layers:
        raise DmadError(f"unsupported layer {bad_layers[0]}"
                        + (f" (and {len(bad_layers) - 1} more)" if len(bad_layers) > 1 else "")
                        + "; export supports Conv/ConvTranspose/norm/activation/pad generators")
    _check_size(model, cfg.size)
    return model, source


@dataclass
class _Job:
    """One export's shared state: the model, its images and reference outputs, the scratch
    folder, and what is measured and noted along the way."""

    cfg: ExportConfig
    model: nn.Module
    source: dict[str, Any]
    shape: tuple[int, int, int, int]
    calib: np.ndarray | None
    evals: np.ndarray
    names: list[str]
    tmp: Path
    ref: np.ndarray = field(default_factory=lambda: np.zeros(0))
    notes: list[str] = field(default_factory=list)
    phase: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)


def _reference(job: _Job) -> tuple[nn.Module, Any, float]:
    """PyTorch's fp32 outputs (the reference of every number) and the exact deploy rewrite,
    checked against them."""
    job.ref = _torch_out(job.model, job.evals)
    if not np.isfinite(job.ref).all():
        raise DmadError(f"{job.source.get('file') or job.source.get('run') or 'the model'}: its "
                        "PyTorch output holds NaN/inf on the evaluation images; the model "
                        "is broken, nothing exported")
    deploy, rw = deploy_rewrite(job.model, pad=job.cfg.rewrite, norm=job.cfg.rewrite)
    rw_err = float(np.abs(_torch_out(deploy, job.evals) - job.ref).max())
    if rw_err > REWRITE_TOL:
        raise DmadError(f"deploy rewrite changed the output by {rw_err:.2e} (> {REWRITE_TOL})")
    return deploy, rw, rw_err


def _onnx_artifact(job: _Job, deploy: nn.Module) -> Path:
    from dmad.export.onnx import ONNX_TOL, export_onnx, run_onnx

    t = time.time()
    onnx_path = job.tmp / "generator.onnx"
    export_onnx(deploy, onnx_path, job.shape)
    par = compare(job.ref, run_onnx(onnx_path, job.evals), job.names)
    _check_finite("generator.onnx", par)
    if not par["max_abs"] <= ONNX_HARD_TOL:
        raise DmadError(f"ONNX Runtime differs from PyTorch by {par['max_abs']:.2e} "
                        f"(> {ONNX_HARD_TOL}): the exported graph is wrong")
    if par["max_abs"] > ONNX_TOL:
        job.notes.append(f"ONNX Runtime differs from PyTorch by {par['max_abs']:.2e}, above the "
                         f"{ONNX_TOL} target (fp32 accumulation order in a deep InstanceNorm "
                         "network; see parity.json)")
    job.artifacts["onnx"] = {
        "file": onnx_path.name, "bytes": onnx_path.stat().st_size, "parity": par, "io": {
            "input": {"name": "input", "shape": list(job.shape), "dtype": "float32"},
            "output": {"name": "output", "shape": [1, *job.ref.shape[1:]], "dtype": "float32"}}}
    job.phase["onnx"] = time.time() - t
    return onnx_path


def _tflite_artifacts(job: _Job, files: dict[str, Path], gpu: dict[str, Any],
                      variants: list[str]) -> None:
    """Parity, I/O, XNNPACK coverage and precision of every converted file; the fp32 file
    proves the graph (and is dropped unless asked for); the int8 files' own form, where it
    differs, is proven exact in PyTorch (:func:`_phases`) and judged by their parity."""
    t = time.time()
    ref_nhwc, ev_nhwc = _nhwc(job.ref), _nhwc(job.evals)
    for v, f in files.items():
        try:
            out_v = run_tflite(f, ev_nhwc)
        except (RuntimeError, ValueError) as exc:
            raise DmadError(f"{f.name}: LiteRT cannot run the converted file: "
                            f"{str(exc).splitlines()[0][:200]}") from None
        par = compare(ref_nhwc, out_v, job.names)
        _check_finite(f.name, par)
        job.artifacts[v] = {"file": f.name, "bytes": f.stat().st_size, "parity": par,
                            "io": io_details(f), "xnnpack": xnnpack_coverage(f),
                            "precision": precision_report(f), "gpu": gpu.get(v)}
    fp32, cfg = job.artifacts["fp32"], job.cfg
    if not fp32["parity"]["max_abs"] <= cfg.fp32_tol:
        raise DmadError(
            f"fp32 TFLite differs from PyTorch by {fp32['parity']['max_abs']:.2e} "
            f"(> {cfg.fp32_tol}): the {cfg.converter} converter produced a wrong graph"
            + (" (onnx2tf's NCHW→NHWC layout guess; the default --converter graph makes "
               "none)" if cfg.converter == "onnx2tf" else ""))
    if "fp32" not in variants:
        fp32["kept"] = False
        files.pop("fp32").unlink()
    job.phase["tflite_checks"] = time.time() - t


def _onnx_int8_artifact(job: _Job, onnx_path: Path) -> None:
    from dmad.export.onnx import run_onnx
    from dmad.export.onnx_int8 import quantize_onnx

    assert job.calib is not None
    t = time.time()
    q_path = job.tmp / "generator_int8.onnx"
    q_info = quantize_onnx(onnx_path, q_path, job.calib)
    q_par = compare(job.ref, run_onnx(q_path, job.evals), job.names)
    _check_finite(q_path.name, q_par)
    job.artifacts["onnx-int8"] = {"file": q_path.name, "bytes": q_path.stat().st_size,
                                  "parity": q_par, "quantization": q_info}
    job.phase["onnx_int8"] = time.time() - t


def _judge_quality(job: _Job, floors: dict[str, float], variants: list[str]) -> None:
    """Floors (refused under ``--strict``) and the GPU analyzer's flags, as notes."""
    job.notes += quality_notes(job.artifacts, floors)
    low = [v for v, a in job.artifacts.items() if a.get("below_bar")]
    if job.cfg.strict and low:
        raise DmadError(f"--strict: {', '.join(low)} below the floor "
                        f"({'; '.join(job.notes[-len(low):])})")
    for v in variants:
        g = job.artifacts[v].get("gpu") or {}
        if g and not g.get("compatible", True):
            job.notes.append(f"{v}: TensorFlow's analyzer flags ops for the phone GPU delegate: "
                             + "; ".join(g.get("issues", [])[:3]))


def _int8_sensitivity(job: _Job, variants: list[str]) -> dict[str, Any] | None:
    """Per-layer int8 sensitivity on the calibration images (:mod:`export.sensitivity`) when a
    full-int8 file is made, with the images it judged moved to the front of ``job.calib``;
    when a file is below its floor, a note names the layers to keep float first
    (``--int8-float-layers``)."""
    from dmad.export.sensitivity import layer_sensitivity

    if job.calib is None or not any(v in ("int8", "int8_io") for v in variants):
        return None
    spec = getattr(job.model, "spec", None)
    auto = job.cfg.int8_auto_float if not _names_layers(job.cfg.recipe) else 0
    sens = layer_sensitivity(job.model, job.calib, multiple=int(getattr(spec, "divisor", 4)),
                             screen=job.cfg.int8_screen, contrast=job.cfg.int8_contrast,
                             want_db=job.cfg.psnr_bar + AUTO_FLOAT_MARGIN_DB if auto > 0
                             else None, max_plan=max(auto, 0),
                             kinds=job.cfg.int8_kinds, subpixel=_uses_subpixel(job.cfg))
    # the `auto` ranges are judged on the first calibration images: the judged ones go first
    first = list(sens["judged"])
    job.calib = job.calib[first + [i for i in range(len(job.calib)) if i not in first]]
    return sens


#: fake int8 tracks the exported file to within about 0.75 dB (tests/test_quant_aware.py)
AUTO_FLOAT_MARGIN_DB = 1.0


def _auto_float_layers(job: _Job, sens: dict[str, Any] | None,
                       floors: dict[str, float]) -> dict[str, Any] | None:
    """Keep float the fewest layers that fake int8 predicts the int8 file needs to meet its
    floor (:func:`~dmad.export.sensitivity.choose_float_layers`): the recipe of every int8
    variant then names them. Measured on the calibration images, never the held-out ones that
    judge the file."""
    from dmad.export.sensitivity import choose_float_layers

    cfg = job.cfg
    if sens is None or _names_layers(cfg.recipe) or cfg.int8_auto_float < 1:
        return None
    fl, hy, why = choose_float_layers(sens, floors["int8"], cfg.int8_auto_float,
                                      AUTO_FLOAT_MARGIN_DB)
    if not fl and not hy:
        return {"float_layers": [], "hybrid_layers": [],
                "why": "fake int8 predicts the floor met (or no layer helps by 1 dB)"}
    # with `auto` ranges the converter tries all-int8 and each plan in turn on real files and
    # names the layers it kept (`_verified_layers`); otherwise fake int8's pick is the recipe's
    plans = candidate_plans(sens, cfg.int8_auto_float) if cfg.recipe.ranges == "auto" else []
    kept: dict[str, Any] = ({"plans": tuple((tuple(f), tuple(h)) for f, h in plans)} if plans
                            else {"float_layers": tuple(fl), "hybrid_layers": tuple(hy)})
    job.cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, **kept))
    if not plans:
        job.notes.append(f"int8: kept out of int8 ({why}); --int8-auto-float 0 turns this off")
    return {"float_layers": fl, "hybrid_layers": hy, "why": why}


def _verified_layers(job: _Job, auto: dict[str, Any] | None, conv_info: dict[str, Any]
                     ) -> None:
    """The plan the converter verified on real int8 files (``ranges.json``'s ``plan``) becomes
    the recipe's layers and ``auto``'s choice, with why, so that ``parity.json`` names what
    the file holds; ``auto`` keeps fake int8's pick as ``fake_pick``."""
    ranges = conv_info.get("ranges") or {}
    plan = ranges.get("plan")  # written whenever the recipe carried plans (`auto` ranges)
    if auto is None or not plan:
        return
    fl, hy = list(plan["float_layers"]), list(plan["hybrid_layers"])
    job.cfg = dataclasses.replace(job.cfg, recipe=dataclasses.replace(
        job.cfg.recipe, float_layers=tuple(fl), hybrid_layers=tuple(hy), plans=()))
    want = ranges.get("target_db") or 0.0
    tried = "; ".join(f"{kept_phrase(t['float_layers'], t['hybrid_layers'])} "
                      f"{t['best_db']:.1f} dB" for t in plan["tried"])
    why = (f"real int8 files on the worst calibration image: {tried} (target {want:g} dB; "
           f"past it a layer must buy {POST_FLOOR_DB:g} dB more)")
    auto.update(fake_pick={"float_layers": auto["float_layers"],
                           "hybrid_layers": auto["hybrid_layers"], "why": auto["why"]},
                float_layers=fl, hybrid_layers=hy, why=why, tried=plan["tried"])
    job.notes.append(f"int8: kept {kept_phrase(fl, hy)} ({why}); --int8-auto-float 0 turns "
                     "this off")


def range_target(cfg: ExportConfig) -> Int8Recipe:
    """The recipe with the target of its ``auto`` ranges set where the user left it open: the
    int8 floor plus the plan's margin, so the ranges clip no more than the floor needs."""
    r = cfg.recipe
    if r.ranges != "auto" or r.range_target_db is not None:
        return r
    return dataclasses.replace(r, range_target_db=cfg.psnr_bar + AUTO_FLOAT_MARGIN_DB)


def _names_layers(recipe: Int8Recipe) -> bool:
    """Whether the user named the layers kept out of int8 (then nothing is chosen for them)."""
    return bool(recipe.float_layers or recipe.hybrid_layers)


def _sensitivity_note(job: _Job, sens: dict[str, Any] | None) -> None:
    low = [v for v in ("int8", "int8_io") if job.artifacts.get(v, {}).get("below_bar")]
    top = [r for r in (sens or {}).get("layers", [])[:3] if r["gain_db"] > 0]
    if low and top:
        job.notes.append(
            f"{', '.join(low)}: the layers that cost int8 most on the calibration images (fake "
            "int8; keeping one float buys): " + ", ".join(f"{r['layer']} +{r['gain_db']:.1f} dB"
                                                         for r in top)
            + "; --int8-float-layers keeps chosen layers float, --int8-hybrid-layers hybrid")


def _convert(job: _Job, deploy: nn.Module, variants: list[str]
             ) -> tuple[Path, dict[str, Path], dict[str, Any], dict[str, Any]]:
    """ONNX, then every TFLite variant (fp32 always: it proves the graph right, the other
    variants are quantised from the same graph, or the int8 ones from the int8 form of it:
    :func:`_int8_graph`), each checked."""
    from dmad.export import tflite

    onnx_path = _onnx_artifact(job, deploy)
    t = time.time()
    graph_info: dict[str, Any] = {"converter": job.cfg.converter}
    graph = graph8 = None
    if job.cfg.converter == "graph":
        graph, graph_info = _graph(job.model, job.shape, job.cfg, job.calib, job.evals, job.ref)
        graph8 = _int8_graph(job, variants, graph_info)
    conv_info: dict[str, Any] = {}
    job.cfg = dataclasses.replace(job.cfg, recipe=range_target(job.cfg))
    calib = None if job.calib is None else _nhwc(job.calib)
    apart = [v for v in variants if v in INT8_VARIANTS] if graph8 is not None else []
    files = tflite.convert(onnx_path, job.tmp, ["fp32", *[v for v in variants
                                                         if v != "fp32" and v not in apart]],
                           calib, job.cfg.recipe, graph=graph, timeout=job.cfg.timeout,
                           info=conv_info)
    if apart:
        info8: dict[str, Any] = {}
        left = None if job.cfg.timeout is None else max(1.0, job.cfg.timeout - (time.time() - t))
        files |= tflite.convert(onnx_path, job.tmp, apart, calib, job.cfg.recipe, graph=graph8,
                                timeout=left, info=info8)
        _merge_info(conv_info, info8)
    job.phase["tflite"] = time.time() - t
    _tflite_artifacts(job, files, conv_info.get("gpu", {}), variants)
    return onnx_path, files, graph_info, conv_info


#: variants quantised with full-int8 activations: converted from the int8 form of the graph
INT8_VARIANTS = ("int8", "int8_io")


def _int8_graph(job: _Job, variants: list[str], graph_info: dict[str, Any]) -> Any:
    """The graph the full-int8 variants are converted from when their form differs from the
    float files' (the stem's convolution on the image's phases: :func:`export.s2d.to_phases`),
    else None; what differs goes into ``graph_info["int8"]``."""
    from dmad.export.s2d import to_phases

    if not any(v in INT8_VARIANTS for v in variants) \
            or not to_phases(job.model, job.cfg.phases, int8=True)[1]["stem"]:
        return None
    graph8, info8 = _graph(job.model, job.shape, job.cfg, job.calib, job.evals, job.ref,
                           int8=True)
    graph_info["int8"] = {k: info8[k] for k in ("phases", "ops", "equalize") if k in info8}
    return graph8


def _merge_info(into: dict[str, Any], more: dict[str, Any]) -> None:
    """A second conversion's ``info`` added to the first's: its files' GPU analyses, its
    ranges, its worker's seconds added per step."""
    into.setdefault("gpu", {}).update(more.get("gpu", {}))
    if "ranges" in more:
        into["ranges"] = more["ranges"]
    secs = into.setdefault("worker_seconds", {})
    for k, v in (more.get("worker_seconds") or {}).items():
        secs[k] = round(secs.get(k, 0.0) + v, 3)


def _export_model(cfg: ExportConfig) -> ExportResult:
    from dmad.compress.arch import profile
    from dmad.compress.models import spec_to_dict

    t0 = time.time()
    variants, onnx_int8, assets = _check_options(cfg)
    model, source = _load_checked(cfg)
    spec = getattr(model, "spec", None)
    channels = getattr(spec, "input_nc", 3)
    needs_calib = any(v in ("int8", "int8_io") for v in variants) or onnx_int8
    calib, evals, image_note, names = _images(cfg, channels, needs_calib)
    floors = floors_of(cfg)
    out = Path(cfg.out)
    with staged_output(out, cfg.force, "parity.json", "export") as tmp:
        job = _Job(cfg, model, source, (1, channels, cfg.size, cfg.size), calib, evals, names,
                   tmp)
        deploy, rw, rw_err = _reference(job)
        sensitivity = _int8_sensitivity(job, variants)
        auto = _auto_float_layers(job, sensitivity, floors)
        onnx_path, files, graph_info, conv_info = _convert(job, deploy, variants)
        _verified_layers(job, auto, conv_info)
        if onnx_int8:
            _onnx_int8_artifact(job, onnx_path)
        _judge_quality(job, floors, variants)
        _sensitivity_note(job, sensitivity)
        prof_obj = profile(model, job.shape)
        prof = prof_obj.summary()
        report = {
            "format": "dmad-export", "version": 2, "source": source,
            "spec": spec_to_dict(spec) if spec is not None else None, "size": cfg.size,
            "macs": {"gmacs_paper": prof["gmacs_paper"], "gmacs_true": prof["gmacs_true"]},
            "params": prof["params"], "images": image_note,
            "rewrite": {"enabled": cfg.rewrite, **rw.as_dict(), "max_abs_vs_original": rw_err},
            "graph": graph_info,
            "int8_recipe": job.cfg.recipe.as_dict() if needs_calib else None,
            "int8_auto_float": auto,
            "int8_ranges": conv_info.get("ranges"), "int8_sensitivity": sensitivity,
            "floors_db": {k: v for k, v in floors.items() if k in job.artifacts},
            "warnings": job.notes, "artifacts": job.artifacts,
            "seconds": round(time.time() - t0, 1),
            "phase_seconds": {k: round(v, 1) for k, v in job.phase.items()},
            "converter_seconds": conv_info.get("worker_seconds"),
        }
        atomic_write_json(tmp / "parity.json", report)
    files = {v: out / f.name for v, f in files.items()}
    android_json = _to_android(cfg, job, files, floors, assets, prof_obj, report) \
        if cfg.android else None
    table = format_table(job.artifacts)
    per_image = format_per_image(job.artifacts)
    table += f"\n\n{per_image}" if per_image else ""
    return ExportResult(out=out, onnx=out / "generator.onnx", files=files, report=report,
                        table=table, android=android_json, seconds=time.time() - t0)


def _to_android(cfg: ExportConfig, job: _Job, files: dict[str, Path], floors: dict[str, float],
                assets: Path | None, prof_obj: Any, report: dict[str, Any]) -> Path:
    """The chosen file into the app's assets with its ``model.json`` entry; the choice and its
    reason into ``parity.json``."""
    from dmad.export.android import choose_gpu_variant, choose_variant, write_assets

    tfl = {k: a for k, a in job.artifacts.items() if k in files}
    chosen, why = choose_variant(tfl, floors, explain=True)
    if cfg.android_variant:
        chosen, why = cfg.android_variant, "chosen with --android-variant"
    gpu, gpu_why = choose_gpu_variant(tfl, floors)
    report["android"] = {"variant": chosen, "why": why, "gpu_variant": gpu or chosen,
                         "gpu_why": gpu_why}
    assert assets is not None
    src = job.source

    def parity(v: str) -> dict[str, Any]:
        return {"reference": "pytorch", "images": len(job.evals),
                **{k: x for k, x in tfl[v]["parity"].items() if k != "per_image"}}

    gpu_file = None if gpu in (None, chosen) else {
        "tflite": files[gpu], "variant": gpu, "parity": parity(gpu), "why": gpu_why,
        "below_floor": bool(tfl[gpu].get("below_bar"))}
    android_json = write_assets(
        files[chosen], Path(assets), label=cfg.android_label, gpu_file=gpu_file,
        parity=parity(chosen),
        macs={"paper": int(prof_obj.macs_paper), "true": int(prof_obj.macs_true)},
        params=int(prof_obj.summary()["params"]),
        source_run=str(src.get("run") or src.get("file") or src.get("kind")),
        variant=chosen, why=why, gpu=tfl[chosen].get("gpu"),
        below_floor=bool(tfl[chosen].get("below_bar")),
        size_multiple=int(getattr(getattr(job.model, "spec", None), "divisor", 4)))
    atomic_write_json(Path(cfg.out) / "parity.json", report)
    return android_json


#: ``--subpixel auto``: on. It removes the op phone GPU delegates reject, and it was faster on
#: XNNPACK too (``docs/results.md``, sub-pixel upsampling).
SUBPIXEL_AUTO = True


def _uses_subpixel(cfg: ExportConfig) -> bool:
    """Whether strided ConvTransposes become convolutions + depth-to-space in the files."""
    return cfg.converter == "graph" and (cfg.subpixel == "on" or (cfg.subpixel == "auto"
                                                                  and SUBPIXEL_AUTO))


def _graph(model: nn.Module, shape: tuple[int, int, int, int], cfg: ExportConfig,
           calib: np.ndarray | None, evals: np.ndarray, ref: np.ndarray, int8: bool = False
           ) -> tuple[Any, dict[str, Any]]:
    """The NHWC graph the TFLite files are converted from (``int8``: the full-int8 files'
    form), with the exact rewrites applied: sub-pixel upsampling and the phase forms (each
    checked against the original here) and, before int8, range equalisation (checked by the
    fp32 file's parity where the int8 files share its graph; the same exact code otherwise)."""
    from dmad.export.equalize import equalize
    from dmad.export.graph import trace
    from dmad.export.subpixel import to_subpixel

    info: dict[str, Any] = {"converter": "graph"}
    use_sub = _uses_subpixel(cfg)
    src = model
    if use_sub:
        src, n = to_subpixel(model)
        err = float(np.abs(_torch_out(src, evals) - ref).max()) if n else 0.0
        if err > REWRITE_TOL:
            raise DmadError(f"sub-pixel rewrite changed the output by {err:.2e} (> {REWRITE_TOL})")
        info["subpixel"] = {"layers": n, "max_abs_vs_original": err}
    else:
        info["subpixel"] = {"layers": 0}
    src, info["phases"] = _phases(src, cfg.phases, evals, ref, int8)
    graph = trace(src, shape)
    info["ops"] = graph.ops()
    if cfg.equalize and calib is not None:
        info["equalize"] = equalize(graph, calib).as_dict()
    return graph, info


def _phases(model: nn.Module, mode: str, evals: np.ndarray, ref: np.ndarray, int8: bool = False
            ) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` with its full-resolution layers on the image's phases
    (:func:`export.s2d.to_phases`; ``int8``: the full-int8 files' form), checked against
    PyTorch's outputs, and what was done."""
    from dmad.export.s2d import to_phases

    out, info = to_phases(model, mode, int8)
    if not (info["head"] or info["front"] or info["stem"]):
        return model, info
    err = float(np.abs(_torch_out(out, evals) - ref).max())
    if err > REWRITE_TOL:
        raise DmadError(f"phase rewrite changed the output by {err:.2e} (> {REWRITE_TOL})")
    return out, {**info, "max_abs_vs_original": err}
