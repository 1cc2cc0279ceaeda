"""Static int8 ONNX (QDQ) for ONNX Runtime users, calibrated on the same images as TFLite int8.

``onnxruntime.quantization.quantize_static`` inserts QuantizeLinear/DequantizeLinear pairs
around the chosen ops; ORT's CPU provider then fuses them into int8 kernels. Only the
convolutions are quantised (``OP_TYPES``): the norm statistics (ReduceMean, Sub, Mul, Sqrt, Div
of the written-out InstanceNorm) stay float, as in the TFLite recipe — quantising them too was
measured to cost PSNR for no speed. Ranges: percentile calibration, for the same reason as
:mod:`export.ranges`. Activations are uint8 and weights int8 (ORT's U8S8 path): with int8
activations (S8S8) ORT's CPU kernels were slower than fp32 at the same PSNR (``docs/results.md``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from dmad.compress.errors import DmadError

__all__ = ["OP_TYPES", "quantize_onnx"]

OP_TYPES = ("Conv", "ConvTranspose")


def quantize_onnx(src: Path, dst: Path, calib: np.ndarray, *,
                  op_types: tuple[str, ...] = OP_TYPES, method: str = "percentile",
                  percentile: float = 99.99) -> dict[str, Any]:
    """Write the QDQ int8 model of ``src`` (float ONNX, input ``input``) to ``dst``; ``calib``
    N,C,H,W float32 images. Returns the settings used (for ``parity.json``)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.i >= len(calib):
                return None
            self.i += 1
            return {"input": np.ascontiguousarray(calib[self.i - 1 : self.i], np.float32)}

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise DmadError(f"onnx-int8: unknown calibration method {method!r}")
    extra = {"CalibPercentile": percentile} if method == "percentile" else {}
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        quantize_static(
            os.fspath(src), os.fspath(tmp), Reader(), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types), calibrate_method=methods[method],
            extra_options=extra,
        )
        os.replace(tmp, dst)
    except DmadError:
        raise
    except Exception as exc:
        raise DmadError(f"onnx-int8: onnxruntime.quantization failed: "
                        f"{str(exc).splitlines()[0][:300]}") from None
    finally:
        tmp.unlink(missing_ok=True)
        for leftover in Path(dst.parent).glob("augmented_model*.onnx"):
            leftover.unlink(missing_ok=True)
    return {"format": "QDQ", "per_channel": True, "activations": "uint8", "weights": "int8",
            "op_types": list(op_types),
            "calibration": method, **({"percentile": percentile} if extra else {})}
