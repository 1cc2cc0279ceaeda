"""Activation ranges for full int8: min/max, percentile or MSE-optimal clipping per tensor.

Why: TensorFlow's calibrator records each activation's min and max over the calibration images
and the quantiser spreads 256 levels over that whole range. Activations of trained generators
are heavy-tailed (a few pixels of a few channels reach 20-40x the typical value), so min/max
spends most levels on values that almost never occur and rounds everything else coarsely. The
standard remedy (TensorRT, ONNX Runtime, PyTorch's observers) is to clip: choose the range that
minimises the quantisation error (clipping + rounding) on the observed values.

How much to clip differs by model (measured at 256² on whole held-out photographs: the
photo-trained student is best at the 99.99th percentile, 35.4 dB, and loses 10 dB at 99.9; its
teacher is best at 99.98, 33.6 dB, and loses 3 dB at 99.99), so ``auto`` (the default) tries
:data:`AUTO_PERCENTILES`, scores each on the worst of the first calibration images (the
hardest ones, which the sensitivity puts first), and keeps the widest that clears the export's
floor with a margin, or the best when none does (:func:`pick_percentile`); the held-out images
stay untouched for the parity check.

This runs in the converter subprocess: the calibrated model (TensorFlow's ``calibrate_only``
output, a float model whose tensors carry min/max) is run on the calibration images with every
intermediate tensor kept, a sample of each tensor's values is collected, the new range is
written back into the flatbuffer, and the quantiser then builds the int8 model from it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dmad.compress.metrics import psnr
from dmad.export.parity import make_interpreter

__all__ = ["AUTO_PERCENTILES", "METHODS", "Samples", "best_range", "pick_percentile"]

METHODS = ("minmax", "percentile", "mse", "auto")
#: values sampled per tensor per image (with 20 images, enough for the 1e-4 tail; cheap)
_SAMPLE = 8192


def _quant_mse(x: np.ndarray, lo: float, hi: float) -> float:
    """Mean squared error of 8-bit asymmetric uniform quantisation of ``x`` on [lo, hi]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)  # TFLite ranges always contain 0
    if hi - lo <= 0:
        return float(np.mean(x * x))
    step = (hi - lo) / 255.0
    q = np.clip(np.round((x - lo) / step), 0, 255) * step + lo
    return float(np.mean((q - x) ** 2))


def best_range(x: np.ndarray, method: str, percentile: float = 99.99) -> tuple[float, float]:
    """The [lo, hi] ``method`` picks for the sample ``x``.

    ``minmax``: the observed extremes. ``percentile``: the ``percentile`` and
    ``100 - percentile`` quantiles. ``mse``: the pair, among shrinkings of the observed extremes
    (searched on a grid, each side alone and both together), with the lowest quantisation MSE.
    """
    x = np.asarray(x, np.float64).ravel()
    lo, hi = float(x.min()), float(x.max())
    if method == "minmax" or hi <= lo:
        return lo, hi
    if method == "percentile":
        return (float(np.percentile(x, 100 - percentile)) if lo < 0 else lo,
                float(np.percentile(x, percentile)) if hi > 0 else hi)
    if method != "mse":
        raise ValueError(f"unknown range method {method!r}")
    best = (_quant_mse(x, lo, hi), lo, hi)
    fracs = np.linspace(0.05, 1.0, 40)
    for f in fracs:  # both sides shrunk together
        e = _quant_mse(x, lo * f, hi * f)
        if e < best[0]:
            best = (e, lo * f, hi * f)
    for _ in range(3):  # then each side alone (coordinate descent from the joint optimum)
        _, blo, bhi = best
        for f in np.linspace(0.05, 1.5, 59):
            for cand in ((max(lo, blo * f), bhi), (blo, min(hi, bhi * f))):
                e = _quant_mse(x, *cand)
                if e < best[0]:
                    best = (e, *cand)
    return best[1], best[2]


class Samples:
    """Activation samples of every float tensor of a calibrated model, and its outputs."""

    def __init__(self, calibrated: bytes, calib: np.ndarray) -> None:
        from tensorflow.lite.tools import flatbuffer_utils as fb

        self.calibrated = calibrated
        model = fb.read_model_from_bytearray(bytearray(calibrated))
        sub = model.subgraphs[0]
        targets = [i for i, t in enumerate(sub.tensors)
                   if t.quantization is not None and t.quantization.min is not None
                   and len(t.quantization.min) == 1 and t.buffer is not None
                   and not (model.buffers[t.buffer].data is not None
                            and len(model.buffers[t.buffer].data))]
        it = make_interpreter(calibrated, None, keep_tensors=True)
        inp = it.get_input_details()[0]["index"]
        out = it.get_output_details()[0]["index"]
        rng = np.random.default_rng(0)
        self.values: dict[int, list[np.ndarray]] = {i: [] for i in targets}
        self.outputs = []
        self.inputs = calib
        for k in range(len(calib)):
            it.set_tensor(inp, calib[k : k + 1].astype(np.float32))
            it.invoke()
            self.outputs.append(it.get_tensor(out).copy())
            for i in targets:
                try:
                    v = it.get_tensor(i).ravel()
                except ValueError:
                    continue
                if v.size > _SAMPLE:
                    # keep the extremes, which decide minmax, plus a uniform sample
                    idx = rng.choice(v.size, _SAMPLE, replace=False)
                    v = np.concatenate([v[idx], [v.min(), v.max()]])
                self.values[i].append(v.astype(np.float32))
        self.stacked = {i: np.concatenate(v) for i, v in self.values.items() if v}

    def apply(self, method: str, percentile: float = 99.99) -> tuple[bytes, dict[str, Any]]:
        """The calibrated model with ``method``'s ranges written in, and a summary."""
        from tensorflow.lite.tools import flatbuffer_utils as fb

        if method == "minmax":
            return self.calibrated, {"method": "minmax", "tensors": 0}
        model = fb.read_model_from_bytearray(bytearray(self.calibrated))
        sub = model.subgraphs[0]
        shrink = []
        for i, x in self.stacked.items():
            lo, hi = best_range(x, method, percentile)
            q = sub.tensors[i].quantization
            old = float(q.max[0] - q.min[0])
            q.min, q.max = [float(min(lo, 0.0))], [float(max(hi, 0.0))]
            if old > 0:
                shrink.append((q.max[0] - q.min[0]) / old)
        summary: dict[str, Any] = {
            "method": method, "tensors": len(self.stacked),
            "median_range_kept": round(float(np.median(shrink)), 3) if shrink else None}
        if method == "percentile":
            summary["percentile"] = percentile
        return bytes(fb.convert_object_to_bytearray(model)), summary

    def score(self, quantised: bytes, n: int = 12) -> float:
        """PSNR (dB) of ``quantised`` against the float model on the worst of the first ``n``
        calibration images: how a range choice is judged without touching the held-out images
        (the worst, as the floor is: the sensitivity puts the hardest images first, and a
        pooled figure let the easy ones outvote them)."""
        it = make_interpreter(quantised, None)
        inp = it.get_input_details()[0]["index"]
        out = it.get_output_details()[0]["index"]
        got = []
        for k in range(min(n, len(self.inputs))):
            it.set_tensor(inp, self.inputs[k : k + 1].astype(np.float32))
            it.invoke()
            got.append(it.get_tensor(out).astype(np.float64))
        return min(psnr(ref, g) for ref, g in zip(self.outputs, got, strict=False))


#: ``ranges="auto"`` tries these percentiles (100: min/max) on the calibration images.
AUTO_PERCENTILES = (99.95, 99.98, 99.99, 99.995, 99.999, 100.0)


def pick_percentile(scores: dict[float, float], target_db: float = 0.0) -> float:
    """The percentile ``auto`` keeps, from each one's worst-calibration-image PSNR: the widest
    that reaches ``target_db``, else (or with no target) the best.

    Why the widest: clipping is what fails on an image unlike the calibration set. Its rounding
    error is bounded and already in the score; a clipped extreme is not, and a photograph with
    more contrast than every calibration image (a bright moon on a black sky) reaches values
    the calibration clipped as rare. Measured on a photo-trained ResNet-9 student: its best
    score (99.995th, 39.3 dB) left the moon at 34.0 dB, the 99.999th (36.9 on calibration)
    at 35.9 and min/max at 35.8. So once the floor is met on the calibration images with a
    margin, the least clipping that keeps it is chosen, not the last dB on images already seen.
    """
    if not scores:
        raise ValueError("pick_percentile: no scores")
    enough = [p for p, v in scores.items() if target_db and v >= target_db]
    return max(enough) if enough else max(scores, key=lambda p: scores[p])
