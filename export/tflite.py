"""ONNX → TFLite with onnx2tf 1.29.24; every onnx2tf quirk lives in this one file.

Why a subprocess: onnx2tf calls ``sys.exit(1)`` on a conversion error, prints its reason to
stdout with colour codes, imports TensorFlow (~1 GB, slow) and changes global TF/Keras state.
Running it as ``python -m dmad.export.tflite JOB.json`` in a scratch folder keeps the caller's
process clean, lets us capture everything it prints and turn a failure into one line
(:func:`failure_reason`), and makes a crash or a timeout impossible to confuse with success.
Conversions of our own graph run one after another in a converter process kept for the caller's
life (:mod:`export.kept_worker`: TensorFlow starts once); onnx2tf's get a fresh one.

Quirks handled here (see ``/work/shared/docs/toolchain.md`` §1, §9):

* onnx2tf 1.x downloads ``calibration_image_sample_data_20x128x128x3_float32.npy`` from GitHub
  even for a plain fp32 conversion (it uses it as test input). A file of that name in the
  working directory stops the download; we write one from the user's images (or a fixed
  synthetic set) in the scratch folder.
* Float32 and float16 files are always written by onnx2tf (``<stem>_float32.tflite``,
  ``<stem>_float16.tflite``); the quantised variants are produced here from the SavedModel it
  writes, with TensorFlow's converter, instead of onnx2tf's ``-oiqt`` — that flag always
  builds all five quantised files (including the int16-activation ones, which are slow and do
  not run with InstanceNorm), cannot keep chosen ops in float, and would fall back to the
  download above without ``-cind``. Here calibration data is always passed explicitly
  (NHWC float32 in [-1, 1], as the generator sees it), only the requested variants are built,
  and :class:`Int8Recipe` selects per-channel/per-tensor and which ops stay float.
* ``-coion`` (copy ONNX I/O names) needs a ``flatc`` download and is a no-op offline; the
  SavedModel signature (``output_signaturedefs``) names the I/O ``input`` / ``output`` instead.
* Inputs/outputs come out NHWC ([1, H, W, 3]); look tensors up by name, never by position.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

import dmad
from dmad.compress.errors import DmadError
from dmad.export.graph import Graph
from dmad.export.kept_worker import run_job, serve

#: Every variant this module can build, in the order they are reported.
VARIANTS = ("fp32", "fp16", "dynamic", "int8", "int8_io")
#: What onnx2tf itself writes (always both).
_ONNX2TF_FILES = {"fp32": "_float32.tflite", "fp16": "_float16.tflite"}
CALIB_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
#: The folder that holds the ``dmad`` package (a source checkout or site-packages): the converter
#: subprocess imports the same ``dmad`` as its parent.
_ROOT = Path(dmad.__file__).resolve().parent.parent

__all__ = ["CALIB_SAMPLE", "POST_FLOOR_DB", "VARIANTS", "Int8Recipe", "convert",
           "convert_many", "failure_reason", "walk_plans"]


@dataclass(frozen=True)
class Int8Recipe:
    """How the full-int8 variants are quantised.

    ``float_ops``: TFLite op names (e.g. ``"RSQRT"``) kept in float32 — the converter inserts
    QUANTIZE/DEQUANTIZE around them. ``per_channel``: per-output-channel weight scales (the
    TFLite default; per-tensor loses the narrow channels of pruned layers).
    """

    per_channel: bool = True
    float_ops: tuple[str, ...] = field(default=())
    #: PyTorch layer names (``"head.conv"``) whose convolution stays float32, in and out: the
    #: padding that builds its input and a depth-to-space or crop after it stay float too.
    float_layers: tuple[str, ...] = field(default=())
    #: TFLite's 16x8 mode: int16 activations, int8 weights. Measurement only (no CLI flag):
    #: XNNPACK does not run it, and on these graphs LiteRT 2.1 refuses the converter's file
    #: (CONCATENATION type check).
    activations16: bool = False
    #: activation ranges: ``minmax`` (TensorFlow's calibrator), ``percentile``, ``mse`` or
    #: ``auto`` (one of a few percentiles scored on the calibration images: ``range_target_db``)
    ranges: str = "minmax"
    percentile: float = 99.99
    #: PyTorch layer names whose convolution is hybrid: int8 weights, float input and output
    #: (XNNPACK's dynamically quantised convolution, at the int8 rate; :mod:`export.hybrid`),
    #: with the same float padding and layout ops around it as a float layer
    hybrid_layers: tuple[str, ...] = field(default=())
    #: with ``ranges="auto"``: keep the widest percentile whose worst calibration image is at
    #: least this many dB from float, the best one when none is; 0: always the best; None:
    #: the export sets its int8 floor plus the plan's margin (:func:`export.ranges.pick_percentile`)
    range_target_db: float | None = None
    #: candidate (float layers, hybrid layers) pairs, fewest first: the converter scores each
    #: one's real int8 file on the calibration images (with its own ``auto`` ranges) and keeps
    #: the first that reaches ``range_target_db``, then each next one while it buys
    #: POST_FLOOR_DB more (:func:`walk_plans`); empty: the layers above as they are
    plans: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = field(default=())

    def as_dict(self) -> dict[str, object]:
        return {"per_channel": self.per_channel, "float_ops": list(self.float_ops),
                "float_layers": list(self.float_layers), "activations16": self.activations16,
                "ranges": self.ranges, "percentile": self.percentile,
                "hybrid_layers": list(self.hybrid_layers),
                "range_target_db": self.range_target_db}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_BOILERPLATE = (
    "the trace log is below",
    "read this and deal with it",
    "alternatively, if the input op",
    "if the input op of onnx",
    "also, for models that include",
    "input_onnx_file_path",
)


def failure_reason(log: str) -> str:
    """One line saying why onnx2tf (or the quantiser) failed, taken from its captured output."""
    lines = [_ANSI.sub("", ln).strip() for ln in log.splitlines()]
    lines = [ln for ln in lines if ln]
    exc = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Exit)\b.*:", ln)]
    errors = []
    for ln in lines:
        if "ERROR:" in ln:
            msg = ln.split("ERROR:", 1)[1].strip()
            if msg and not any(b in msg.lower() for b in _BOILERPLATE):
                errors.append(msg)
    parts: list[str] = []
    if exc:
        parts.append(exc[-1])
    op = [e for e in errors if e.startswith("onnx_op_name")]
    if op:
        parts.append(op[-1])
    if not parts and errors:
        parts.append(errors[-1])
    if not parts:
        parts.append(lines[-1] if lines else "no output")
    reason = "; ".join(parts)
    return reason if len(reason) <= 400 else reason[:397] + "..."


def convert(
    onnx_path: Path | None,
    out_dir: Path,
    variants: Sequence[str],
    calib: np.ndarray | None,
    recipe: Int8Recipe | None = None,
    *,
    graph: Graph | None = None,
    stem: str = "generator",
    timeout: float | None = None,
    info: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Convert into the requested TFLite ``variants`` inside ``out_dir``: from ``graph`` (our
    NHWC graph, :mod:`export.graph`; the default converter) or else from ``onnx_path`` with
    onnx2tf.

    ``calib``: NHWC float32 images in [-1, 1] (required for ``int8``/``int8_io``). Returns
    ``{variant: path}`` (files named ``<stem>_<variant>.tflite``). Raises a one-line
    :class:`DmadError` carrying the converter's own reason when conversion fails. ``info``, if
    given, receives ``gpu`` (the GPU-delegate analysis of each file) and ``ranges``.
    """
    info = {} if info is None else info
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise DmadError(f"quant: unknown variant(s) {', '.join(unknown)}; choose from "
                        f"{', '.join(VARIANTS)}")
    needs_calib = any(v in ("int8", "int8_io") for v in variants)
    if needs_calib and (calib is None or len(calib) == 0):
        raise DmadError("calib: int8 variants need calibration images (give --calib IMAGE_DIR)")
    work = Path(out_dir) / ".convert"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        job = {
            "onnx": None if onnx_path is None else os.fspath(Path(onnx_path).resolve()),
            "graph": None,
            "variants": list(variants),
            "recipe": asdict(recipe or Int8Recipe()),
            "calib": None,
        }
        if calib is not None and len(calib):
            np.save(work / "calib.npy", np.ascontiguousarray(calib, dtype=np.float32))
            job["calib"] = "calib.npy"
        if graph is not None:
            desc, arrays = graph.to_json()
            (work / "graph.json").write_text(json.dumps(desc))
            np.savez(work / "arrays.npz", **arrays)
            job["graph"], job["arrays"] = "graph.json", "arrays.npz"
        elif onnx_path is None:
            raise ValueError("convert needs a graph or an ONNX file")
        result = _run_worker(work, job, timeout, "TensorFlow converter" if graph is not None
                             else "onnx2tf")
        produced = result["files"]
        info.update({k: v for k, v in result.items() if k != "files"})
        out: dict[str, Path] = {}
        for v in variants:
            src = work / produced[v]
            dst = Path(out_dir) / f"{stem}_{v}.tflite"
            os.replace(src, dst)
            out[v] = dst
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------- worker side


def _run_worker(work: Path, job: dict[str, Any], timeout: float | None, who: str
                ) -> dict[str, Any]:
    """Run the converter subprocess on ``job`` in ``work``; its result.json, or a one-line
    error with the converter's own reason."""
    (work / "job.json").write_text(json.dumps(job))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.fspath(_ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONUNBUFFERED"] = "1"
    # our graph converts in the kept converter process; onnx2tf changes TensorFlow's global
    # state, so a conversion through it gets a fresh process
    reuse = bool(job.get("graph")) or "batch" in job
    try:
        rc, printed = run_job("dmad.export.tflite", work, env, timeout, reuse=reuse)
    except TimeoutError:
        raise DmadError(f"TFLite conversion timed out after {timeout:.0f} s") from None
    result_file = work / "result.json"
    if rc != 0 or not result_file.exists():
        raise DmadError(f"TFLite conversion failed ({who}): {failure_reason(printed)}")
    return dict(json.loads(result_file.read_text()))


def convert_many(
    items: Sequence[tuple[str, Graph, np.ndarray | None]],
    out_dir: Path,
    variants: Sequence[str],
    recipe: Int8Recipe | None = None,
    *,
    timeout: float | None = None,
) -> dict[str, dict[str, Path]]:
    """Convert many small graphs in one converter subprocess (TensorFlow starts once): each
    ``(stem, graph, calib)`` into ``<stem>_<variant>.tflite`` in ``out_dir``, the same way
    :func:`convert` converts one (our graph, the same quantisation). No GPU analysis. Used by
    ``dmad latency-table``, which times hundreds of one-unit models."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise DmadError(f"quant: unknown variant(s) {', '.join(unknown)}")
    work = Path(out_dir) / ".convert"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        batch = []
        for i, (stem, graph, calib) in enumerate(items):
            desc, arrays = graph.to_json()
            (work / f"g{i}.json").write_text(json.dumps(desc))
            np.savez(work / f"a{i}.npz", **arrays)
            entry = {"stem": stem, "graph": f"g{i}.json", "arrays": f"a{i}.npz", "calib": None}
            if calib is not None:
                np.save(work / f"c{i}.npy", np.ascontiguousarray(calib, dtype=np.float32))
                entry["calib"] = f"c{i}.npy"
            batch.append(entry)
        job = {"batch": batch, "variants": list(variants),
               "recipe": asdict(recipe or Int8Recipe())}
        result = _run_worker(work, job, timeout, "TensorFlow converter")
        out: dict[str, dict[str, Path]] = {}
        for stem, files in result["files"].items():
            out[stem] = {}
            for v, name in files.items():
                dst = Path(out_dir) / f"{stem}_{v}.tflite"
                os.replace(work / name, dst)
                out[stem][v] = dst
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _sample_data(calib: np.ndarray | None) -> np.ndarray:
    """[20,128,128,3] float32 in 0..1 for onnx2tf's built-in test input (stops its download)."""
    if calib is None or len(calib) == 0:
        rng = np.random.default_rng(0)
        return rng.random((20, 128, 128, 3), dtype=np.float32)
    import tensorflow as tf

    idx = np.arange(20) % len(calib)
    imgs = tf.image.resize((calib[idx] + 1.0) / 2.0, (128, 128)).numpy()
    return np.clip(imgs, 0.0, 1.0).astype(np.float32)


#: seconds per step of the converter subprocess (``parity.json`` ``phase_seconds``)
_TIMES: dict[str, float] = {}
_LAST = [0.0]


def _tick(step: str) -> None:
    import time

    now = time.perf_counter()
    _TIMES[step] = round(now - (_LAST[0] or now), 1)
    _LAST[0] = now


def _quantise(make: Callable[[], Any], calib: np.ndarray | None, variants: list[str],
              recipe: Int8Recipe) -> dict[str, bytes]:
    """The requested quantised variants; ``make()`` returns a fresh TFLiteConverter of the
    float model (the same graph for every variant: converted once, quantised from it)."""
    import tensorflow as tf

    out: dict[str, bytes] = {}
    if "fp16" in variants:
        conv = make()
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
        out["fp16"] = conv.convert()
        _tick("fp16")
    if "dynamic" in variants:
        conv = make()
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv._experimental_disable_per_channel = not recipe.per_channel
        out["dynamic"] = conv.convert()
        _tick("dynamic")
    int8 = [v for v in variants if v in ("int8", "int8_io")]
    if int8:
        assert calib is not None

        # Our own ranges (:mod:`export.ranges`) measure every activation on all calibration
        # images themselves, so TensorFlow's calibrator only has to mark the tensors: one image
        # instead of all (its pass was the slowest step of the export).
        n_tf = len(calib) if recipe.ranges == "minmax" else 1

        def representative():  # type: ignore[no-untyped-def]
            for i in range(n_tf):
                yield [calib[i : i + 1].astype(np.float32)]

        conv = make()
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        ops = (tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
               if recipe.activations16 else tf.lite.OpsSet.TFLITE_BUILTINS_INT8)
        conv.target_spec.supported_ops = [ops, tf.lite.OpsSet.TFLITE_BUILTINS]
        conv._experimental_calibrate_only = True
        calibrated = conv.convert()
        _tick("int8_calibrate")
        if recipe.ranges != "minmax":
            recipe, calibrated = _ranges(calibrated, calib, recipe)
        quantise = _quantiser(calibrated, recipe)
        for v in int8:
            io = tf.int8 if v == "int8_io" else tf.float32
            if recipe.activations16 and v == "int8_io":
                io = tf.int16
            out[v] = quantise(calibrated, input_data_type=io, output_data_type=io)
            _tick(f"{v}_quantise")
    return out


#: ops that only move values: a float convolution's output stays float through them
_LAYOUT_OPS = ("DEPTH_TO_SPACE", "STRIDED_SLICE", "SLICE", "RESHAPE")


def _layout_followers(ops: list[dict[str, Any]], tensors: dict[int, str],
                      start: list[int]) -> list[str]:
    """Output names of the layout-only ops that alone read the tensors ``start`` (and each
    other): a float convolution whose output reaches an InstanceNorm through a depth-to-space
    (sub-pixel upsampling) or a crop would otherwise be re-quantised to int8 right after it,
    which is where its float precision was needed (the norm amplifies a low-contrast
    photograph's rounding)."""
    out: list[str] = []
    todo = list(start)
    while todo:
        t = todo.pop()
        readers = [o for o in ops if t in o["inputs"]]
        if len(readers) == 1 and readers[0]["op_name"] in _LAYOUT_OPS:
            nxt = [i for i in readers[0]["outputs"] if i >= 0]
            out += [tensors[i] for i in nxt]
            todo += nxt
    return out


#: ops that build a convolution's padded input from one value (reflection padding is written
#: as slices and a concatenation; a phase stem reads it through space-to-depth), and the
#: activation in front of them: an InstanceNorm's output is float (its ops are), and an int8
#: ReLU after it would round the float layer's input anyway (a dark photograph's head input:
#: 29 dB in int8, 39 dB float, photo teacher, fake int8)
_PAD_OPS = ("STRIDED_SLICE", "SLICE", "CONCATENATION", "PAD", "MIRROR_PAD", "DEPTH_TO_SPACE",
            "SPACE_TO_DEPTH", "RESHAPE", "RELU", "RELU6", "LEAKY_RELU")


def _layout_producers(ops: list[dict[str, Any]], tensors: dict[int, str],
                      start: list[int]) -> list[str]:
    """Output names of the layout-only ops that build the tensors ``start`` (a float
    convolution's input) from an earlier value: the padding in front of a float convolution
    stays float too, else its input is rounded to int8 just before it."""
    producer = {i: o for o in ops for i in o["outputs"]}
    out: list[str] = []
    seen: set[int] = set()
    todo = list(start)
    while todo:
        t = todo.pop()
        o = producer.get(t)
        if t in seen or o is None or o["op_name"] not in _PAD_OPS:
            continue
        seen.add(t)
        out.append(tensors[t])
        todo += [i for i in o["inputs"] if i >= 0 and i in producer]
    return out


def _quantiser(calibrated: bytes, recipe: Int8Recipe) -> Callable[..., bytes]:
    """The quantiser of ``recipe``: calibrated flatbuffer in, int8 flatbuffer out, with the
    float layers and the hybrid layers kept out of int8 and the hybrid ones then given int8
    filters (:mod:`export.hybrid`), so the ``auto`` ranges are judged on the file shipped."""
    from tensorflow.lite.python.convert import mlir_quantize

    base = partial(
        mlir_quantize,
        disable_per_channel=not recipe.per_channel,
        inference_type=7 if recipe.activations16 else 9,  # TFLite INT16 / INT8
        denylisted_ops=list(recipe.float_ops) or None,
        denylisted_nodes=_denylist(calibrated, (*recipe.float_layers,
                                                *recipe.hybrid_layers)) or None,
    )
    hybrid = _layer_convs(calibrated, recipe.hybrid_layers)
    if not hybrid:
        return base

    def quantise(model: bytes, **kw: Any) -> bytes:
        from dmad.export.hybrid import hybridize

        blob, done = hybridize(base(model, **kw), hybrid)
        if len(done) != len(hybrid):
            print(f"ERROR: hybrid_layers: {len(done)} of {len(hybrid)} convolutions could be "
                  "made hybrid (a filter another op reads too)", flush=True)
            raise SystemExit(1)
        return blob
    return quantise


#: past the floor, a plan's next layer must buy this much on the calibration images to be
#: kept out of int8 too: insurance for a photograph harder than all of them (the photo
#: teacher's moon: 29.9 dB with the first plan that cleared 36 dB on the calibration images,
#: 39.6 dB with the layers that each bought this much more), and not free (a ÷20 student's
#: head as hybrid bought 0.6 dB there, nothing held out, and cost 9 % of its time)
POST_FLOOR_DB = 1.0


def walk_plans(plans: Sequence[tuple[tuple[str, ...], tuple[str, ...]]],
               score: Callable[[tuple[str, ...], tuple[str, ...]], dict[str, Any]],
               target: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the plan kept, every plan tried): ``plans`` in order, each scored by ``score(float,
    hybrid)`` (a dict with ``best_db``: its best score over the range choices), until the
    first that reaches ``target``, then on while each next one buys :data:`POST_FLOOR_DB`
    more; when none reaches it, the best (the first of equals: fewer layers). Plans are
    compared by their best scores, not by the ranges each would ship with (the widest that
    clears the target scores just over it, whatever the plan)."""
    tried: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for fl, hy in plans:
        t = {"float_layers": list(fl), "hybrid_layers": list(hy), **score(fl, hy)}
        tried.append(t)
        if best is not None:  # past the floor: another layer must buy POST_FLOOR_DB
            if t["best_db"] < best["best_db"] + POST_FLOOR_DB:
                break
            best = t
        elif target and t["best_db"] >= target:
            best = t
    if best is None:
        best = max(tried, key=lambda t: t["best_db"])
    return best, tried


def _ranges(calibrated: bytes, calib: np.ndarray, recipe: Int8Recipe
            ) -> tuple[Int8Recipe, bytes]:
    """The recipe and the calibrated flatbuffer with ``recipe.ranges`` written in; the choice
    goes to ranges.json. ``auto``: :func:`walk_plans` over ``recipe.plans`` (or the recipe's
    own layers alone), each plan's real int8 file scored at every ``AUTO_PERCENTILES`` range
    on the calibration images, and the kept plan's percentile picked against
    ``range_target_db`` (:func:`export.ranges.pick_percentile`). Why real files: fake int8
    (:mod:`export.sensitivity`) orders the layers well but misjudged what a plan scores by
    several dB, both ways, and every layer kept out of int8 costs time in a narrow model."""
    from dmad.export.ranges import AUTO_PERCENTILES, Samples, pick_percentile

    samples = Samples(calibrated, calib)
    _tick("int8_range_samples")
    if recipe.ranges != "auto":
        calibrated, summary = samples.apply(recipe.ranges, recipe.percentile)
        Path("ranges.json").write_text(json.dumps(summary))
        _tick("int8_range_choice")
        return recipe, calibrated
    target = recipe.range_target_db or 0.0

    def score(fl: tuple[str, ...], hy: tuple[str, ...]) -> dict[str, Any]:
        quantise = _quantiser(calibrated, replace(recipe, float_layers=fl, hybrid_layers=hy))
        try:
            scores = {p: samples.score(quantise(samples.apply("percentile", p)[0]))
                      for p in AUTO_PERCENTILES}
        except SystemExit:  # a layer with no hybrid form here: this plan cannot be built
            return {"percentile": 100.0, "calib_psnr_db": -1.0, "best_db": -1.0, "scores": {}}
        pct = pick_percentile(scores, target)
        return {"percentile": pct, "calib_psnr_db": round(scores[pct], 2),
                "best_db": round(max(scores.values()), 2),
                "scores": {str(p): round(v, 2) for p, v in scores.items()}}

    best, tried = walk_plans(recipe.plans or ((recipe.float_layers, recipe.hybrid_layers),),
                             score, target)
    calibrated, summary = samples.apply("percentile", best["percentile"])
    summary.update(method="auto", chosen_percentile=best["percentile"], target_db=target or None,
                   calib_psnr_db=best["scores"])
    if recipe.plans:
        summary["plan"] = {"float_layers": best["float_layers"],
                           "hybrid_layers": best["hybrid_layers"],
                           "tried": [{k: t[k] for k in ("float_layers", "hybrid_layers",
                                                        "calib_psnr_db", "best_db")}
                                     for t in tried]}
    Path("ranges.json").write_text(json.dumps(summary))
    _tick("int8_range_choice")
    return replace(recipe, float_layers=tuple(best["float_layers"]),
                   hybrid_layers=tuple(best["hybrid_layers"]), plans=()), calibrated


def _layer_convs(model: bytes, layers: Sequence[str]) -> list[str]:
    """Output tensor names of the CONV_2D ops of PyTorch ``layers`` alone (no layout ops, no
    depthwise or transposed convolutions: those have no hybrid form here and stay float)."""
    return _denylist(model, layers, convs_only=True)


def _denylist(model: bytes, layers: Sequence[str], convs_only: bool = False) -> list[str]:
    """Output tensor names of the convolutions of PyTorch ``layers`` in the calibrated model:
    the quantiser names nodes by their output tensor, which the converter fuses (e.g.
    ``head_conv/bias;head_conv/conv;Const``); :mod:`export.tfgraph` names each op
    ``<layer>/conv`` or ``<layer>/deconv``."""
    from dmad.export.parity import make_interpreter

    if not layers:
        return []
    it = make_interpreter(model, None, allocate=False)
    tensors = {t["index"]: t["name"] for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    out, missing = [], []
    for layer in layers:
        base = layer.replace(".", "_")
        # a strided ConvTranspose exported as sub-pixel is the conv of ``<layer>.conv``
        keys = (f"{base}/conv", f"{base}/deconv", f"{base}_conv/conv")
        kinds = ("CONV_2D",) if convs_only else ("CONV_2D", "DEPTHWISE_CONV_2D",
                                                   "TRANSPOSE_CONV")
        found = [i for o in ops if o["op_name"] in kinds
                 for i in o["outputs"] if any(k in tensors[i].split(";") for k in keys)]
        conv_ins = [o["inputs"][0] for o in ops if any(i in o["outputs"] for i in found)]
        out += [tensors[i] for i in found]
        if not convs_only:
            out += _layout_followers(ops, tensors, found) \
                + _layout_producers(ops, tensors, conv_ins)
        if not found:
            missing.append(layer)
    if missing:
        what = ("hybrid_layers: no plain convolution (a hybrid one needs a CONV_2D) named"
                if convs_only else "float_layers: no convolution named")
        print(f"ERROR: {what} {', '.join(missing)} in the graph", flush=True)
        raise SystemExit(1)
    return out


def _worker(job_path: str) -> int:
    """Runs in the scratch folder: the float model (our graph or onnx2tf), then the requested
    variants from it; writes result.json."""
    _TIMES.clear()  # a kept converter process runs many jobs
    _LAST[0] = 0.0
    _tick("start")
    job = json.loads(Path(job_path).read_text())
    r = job["recipe"]
    recipe = Int8Recipe(bool(r["per_channel"]), tuple(r["float_ops"]),
                        tuple(r.get("float_layers", ())), bool(r.get("activations16", False)),
                        str(r.get("ranges", "minmax")), float(r.get("percentile", 99.99)),
                        tuple(r.get("hybrid_layers", ())), r.get("range_target_db"),
                        tuple((tuple(f), tuple(h)) for f, h in r.get("plans", ())))
    if "batch" in job:
        return _batch_worker(job, recipe)
    calib = np.load(job["calib"]) if job["calib"] else None
    produced: dict[str, str] = {}
    import tensorflow as tf

    if job.get("graph"):
        from dmad.export.tfgraph import build_function

        arrays = dict(np.load(job["arrays"]))
        fn = build_function(json.loads(Path(job["graph"]).read_text()), arrays)
        cf = fn.get_concrete_function()

        def make() -> Any:
            return tf.lite.TFLiteConverter.from_concrete_functions([cf], fn)

        rest = list(job["variants"])
        if "fp32" in rest:
            Path("fp32.tflite").write_bytes(make().convert())
            _tick("fp32")
            produced["fp32"] = "fp32.tflite"
            rest.remove("fp32")
    else:
        np.save(CALIB_SAMPLE, _sample_data(calib))
        import onnx2tf

        onnx2tf.convert(
            input_onnx_file_path=job["onnx"],
            output_folder_path="tf",
            output_signaturedefs=True,
            not_use_onnxsim=True,  # export.onnx already simplified and checked it
            non_verbose=True,
        )
        _tick("onnx2tf")
        stem = Path(job["onnx"]).stem
        for v, suffix in _ONNX2TF_FILES.items():
            f = Path("tf") / f"{stem}{suffix}"
            if v in job["variants"]:
                if not f.exists():
                    print(f"ERROR: onnx2tf finished without writing {f.name}", flush=True)
                    return 1
                produced[v] = os.fspath(f)
        rest = [v for v in job["variants"] if v not in _ONNX2TF_FILES]

        def make() -> Any:
            return tf.lite.TFLiteConverter.from_saved_model("tf")

    for v, blob in _quantise(make, calib, rest, recipe).items():
        Path(f"{v}.tflite").write_bytes(blob)
        produced[v] = f"{v}.tflite"
    gpu = {v: gpu_analysis(f) for v, f in produced.items()}
    _tick("gpu_analysis")
    result: dict[str, Any] = {"files": produced, "gpu": gpu, "worker_seconds": _TIMES}
    if Path("ranges.json").exists():
        result["ranges"] = json.loads(Path("ranges.json").read_text())
    Path("result.json").write_text(json.dumps(result))
    return 0


def _batch_worker(job: dict[str, Any], recipe: Int8Recipe) -> int:
    """:func:`convert_many`'s side: every graph of the batch, then result.json."""
    import tensorflow as tf

    from dmad.export.tfgraph import build_function

    files: dict[str, dict[str, str]] = {}
    for e in job["batch"]:
        fn = build_function(json.loads(Path(e["graph"]).read_text()), dict(np.load(e["arrays"])))
        cf = fn.get_concrete_function()

        def make(cf: Any = cf, fn: Any = fn) -> Any:
            return tf.lite.TFLiteConverter.from_concrete_functions([cf], fn)

        calib = np.load(e["calib"]) if e["calib"] else None
        stem, got = e["stem"], {}
        rest = list(job["variants"])
        if "fp32" in rest:
            got["fp32"] = make().convert()
            rest.remove("fp32")
        got.update(_quantise(make, calib, rest, recipe))
        files[stem] = {}
        for v, blob in got.items():
            name = f"{stem}_{v}.tflite"
            Path(name).write_bytes(blob)
            files[stem][v] = name
    Path("result.json").write_text(json.dumps({"files": files}))
    return 0


def gpu_analysis(path: str) -> dict[str, Any]:
    """TensorFlow's own model analyzer with GPU-delegate compatibility (a host-side check of
    the op set, not a run on a phone): ``{"compatible": bool, "issues": [...]}``."""
    import contextlib
    import io

    import tensorflow as tf

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        tf.lite.experimental.Analyzer.analyze(model_path=path, gpu_compatibility=True)
    text = buf.getvalue()
    issues = sorted({ln.split("GPU COMPATIBILITY WARNING:", 1)[1].strip()
                     for ln in text.splitlines() if "GPU COMPATIBILITY WARNING:" in ln})
    ok = "looks compatible with GPU delegate" in text and not issues
    return {"compatible": ok, "issues": issues[:20],
            "checker": f"tf.lite.experimental.Analyzer (TensorFlow {tf.__version__})"}


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(_worker)
    else:
        sys.exit(_worker(sys.argv[1]))
