"""PyTorch → ONNX (opset 17) → onnxsim → ``onnx.checker`` → ONNX Runtime parity.

The ONNX file is the single source for every TFLite variant, so it is verified here before any
conversion: a graph that is already off by more than :data:`ONNX_TOL` would only make the
TFLite parity numbers meaningless. Input and output are named ``input`` / ``output``, NCHW,
batch 1, static shape (onnx2tf and the phone both want a fixed shape).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dmad.compress.errors import DmadError

OPSET = 17
ONNX_TOL = 1e-4
INPUT_NAME = "input"
OUTPUT_NAME = "output"

__all__ = ["INPUT_NAME", "ONNX_TOL", "OPSET", "OUTPUT_NAME", "export_onnx", "run_onnx"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def export_onnx(model: nn.Module, path: Path, shape: tuple[int, int, int, int]) -> None:
    """Write ``model`` (eval mode) as a simplified, checked ONNX file at ``path``.

    Uses the TorchScript-based exporter (``dynamo=False``): it gives the plain Conv/Pad/
    InstanceNormalization nodes onnx2tf knows, with constant shapes.
    """
    import onnx
    import onnxsim

    model = model.eval()
    x = torch.zeros(shape)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                buf,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean "cannot export"
        raise DmadError(f"ONNX export failed: {_first_line(exc)}") from None
    proto = onnx.load_from_string(buf.getvalue())
    try:
        simplified, ok = onnxsim.simplify(proto)
    except Exception as exc:
        raise DmadError(f"onnxsim failed on the exported graph: {_first_line(exc)}") from None
    if not ok:
        raise DmadError("onnxsim could not validate the simplified graph")
    try:
        onnx.checker.check_model(simplified, full_check=True)
    except Exception as exc:
        raise DmadError(f"onnx.checker rejected the exported graph: {_first_line(exc)}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(simplified, os.fspath(path))


def run_onnx(path: Path, images: np.ndarray, threads: int = 1) -> np.ndarray:
    """Run the ONNX file on NCHW float32 ``images`` (N,C,H,W) one at a time with ORT (CPU)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    outs = [sess.run(None, {INPUT_NAME: images[i : i + 1]})[0] for i in range(len(images))]
    return np.concatenate(outs, 0)
