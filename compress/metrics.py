"""The one PSNR of the code base: evaluation, export parity and int8 range choice all use it, so
a "dB" means the same thing in every report (images in [-1, 1], peak-to-peak 2)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["psnr"]


def _as_float64(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().double().cpu().numpy()
    return np.asarray(x, np.float64)


def psnr(ref: Any, out: Any, data_range: float = 2.0) -> float:
    """PSNR in dB of ``out`` against ``ref`` over the whole array (numpy arrays or torch
    tensors); ``inf`` when identical."""
    mse = float(np.mean((_as_float64(ref) - _as_float64(out)) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))
