"""Which layers cost a full-int8 file its fidelity, measured on the calibration images.

Why by measurement and not by layer name: on real weights the tensor that ruins int8 is wherever
the activations have outliers or the grid is too coarse for the signal (a full-resolution
layer, the residual stream, the Tanh grid), and that differs between models and trainings. The
model is quantised the way the export quantises it (:mod:`dmad.compress.quant_aware` restates
the recipe: per-channel weights, per-tensor activations around every convolution, equalised
outputs, the balanced residual stream, the Tanh grid), with fake int8 in PyTorch: a forward
pass per layer and image, no TensorFlow conversion. For each convolution it reports the PSNR of
the whole model against float with only that layer in int8 (what the layer alone costs) and
with every layer but that one (what keeping it float would buy), ranked by the latter. Held-out
images are never used: they judge the file.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from dmad.compress.metrics import psnr
from dmad.compress.quant_aware import observe_ranges, quant_aware_, switch_layers

__all__ = ["layer_sensitivity"]


@torch.no_grad()
def layer_sensitivity(model: nn.Module, calib: np.ndarray, max_images: int = 2,
                      max_side: int = 128, multiple: int = 4) -> dict[str, Any]:
    """Per-convolution int8 sensitivity of ``model`` on up to ``max_images`` calibration
    images (NCHW float in [-1, 1]; centre crops of at most ``max_side``, a multiple of
    ``multiple``, so a large model is judged in seconds): ``psnr_all_int8_db`` (every layer in
    fake int8, against float), and per layer ``psnr_alone_db``, ``psnr_without_db`` and
    ``gain_db`` (what keeping that layer float buys over all-int8), largest gain first."""
    m = copy.deepcopy(model).float().eval()
    quant_aware_(m)
    h, w = calib.shape[2], calib.shape[3]
    ch = min(h, max_side) // multiple * multiple or h
    cw = min(w, max_side) // multiple * multiple or w
    top, left = (h - ch) // 2, (w - cw) // 2
    xs = [torch.from_numpy(np.ascontiguousarray(calib[i:i + 1, :, top:top + ch, left:left + cw],
                                                np.float32))
          for i in range(min(len(calib), max_images))]
    switch_layers(m, set(), tanh=False)
    ref = torch.cat([m(x) for x in xs])
    observe_ranges(m, xs)
    convs = [n for n, mod in m.named_modules()
             if isinstance(mod, nn.Conv2d | nn.ConvTranspose2d) and hasattr(mod, "dmad_qa_in")]

    def score(names: set[str] | None) -> float:
        switch_layers(m, names)
        return psnr(ref, torch.cat([m(x) for x in xs]))

    every = score(None)
    rows = []
    for name in convs:
        without = score(set(convs) - {name})
        rows.append({"layer": name, "psnr_alone_db": round(score({name}), 2),
                     "psnr_without_db": round(without, 2), "gain_db": round(without - every, 2)})
    rows.sort(key=lambda r: -r["gain_db"])
    return {"images": len(xs), "crop": [ch, cw], "psnr_all_int8_db": round(every, 2),
            "layers": rows,
            "method": "fake int8 in PyTorch (the export's recipe, compress.quant_aware) on the "
                      "calibration images"}
