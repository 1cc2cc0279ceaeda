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


def use_channels_last(setting: str, device: torch.device, precision: str) -> bool:
    """``auto``: NHWC on CUDA with bf16/fp16, where cuDNN's tensor-core convolutions want it;
    on CPU (and for fp32 on GPU) NCHW measured as fast or faster, so it stays."""
    if setting not in ("auto", "on", "off"):
        raise DmadError(f"field channels_last: {setting!r} is not one of auto, on, off")
    if setting == "auto":
        return device.type == "cuda" and precision != "fp32"
    return setting == "on"
