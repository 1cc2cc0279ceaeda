"""Mixed precision for every stage: ``--precision fp32 | bf16 | fp16``.

Forward passes and losses run under ``torch.autocast`` (convolutions in the low precision,
reductions and norms where autocast keeps fp32); backward and optimiser steps run outside it.
fp16 has a narrow exponent, so each optimiser gets a ``GradScaler`` (scaled loss, unscaled and
inf-checked gradients, skipped steps on overflow); bf16 has fp32's range and needs none. The
masks' custom backward accumulates its per-channel sums in fp32 whatever the activation dtype
(:class:`compress.masks.ChannelMask`), and mask weights stay fp32 parameters.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from dmad.compress.errors import DmadError

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast context and loss scaling for one precision on one device."""

    def __init__(self, name: str, device: torch.device) -> None:
        if name not in PRECISIONS:
            raise DmadError(f"field precision: {name!r} is not one of {', '.join(PRECISIONS)}")
        self.name = name
        self.device = device
        self.dtype = _DTYPES.get(name, torch.float32)
        if self.enabled and device.type == "cpu" and not cpu_has_native(name):
            _note_slow_cpu(name)

    @property
    def enabled(self) -> bool:
        return self.name != "fp32"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward-pass context (a no-op for fp32)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A loss scaler, active for fp16 only (disabled scalers pass everything through)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")


def cpu_has_native(name: str) -> bool:
    """Whether oneDNN has native kernels for ``bf16``/``fp16`` on this CPU (AVX-512 BF16/FP16,
    AMX). Without them autocast falls back to slow paths: on a 2-core AVX2 machine a bf16
    teacher step at 256² took 94 s against 1.9 s in fp32 (``scripts/bench_train_scale.py``)."""
    try:
        op = (torch.ops.mkldnn._is_mkldnn_bf16_supported if name == "bf16"
              else torch.ops.mkldnn._is_mkldnn_fp16_supported)
        return bool(op())
    except (AttributeError, RuntimeError):
        return False


_NOTED: set[str] = set()


def _note_slow_cpu(name: str) -> None:
    import sys

    import torch.distributed as dist

    if name in _NOTED or (dist.is_available() and dist.is_initialized() and dist.get_rank()):
        return
    _NOTED.add(name)
    print(f"note: this CPU has no native {name} kernels; {name} autocast runs far slower than "
          "fp32 here (measured ~50x on AVX2); mixed precision is meant for GPUs", file=sys.stderr)


def use_channels_last(setting: str, device: torch.device, precision: str) -> bool:
    """``auto``: NHWC on CUDA with bf16/fp16, where cuDNN's tensor-core convolutions want it;
    on CPU (and for fp32 on GPU) NCHW measured as fast or faster, so it stays."""
    if setting not in ("auto", "on", "off"):
        raise DmadError(f"field channels_last: {setting!r} is not one of auto, on, off")
    if setting == "auto":
        return device.type == "cuda" and precision != "fp32"
    return setting == "on"
