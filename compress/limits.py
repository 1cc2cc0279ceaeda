"""Numbers checked at the door: finite, in range, and image sides this machine can hold.

A side of 100000 pixels does not fail cleanly later: it asks the allocator for terabytes. The
bound is derived from this machine's memory, so a larger machine accepts larger images and the
message says where the number came from.
"""

from __future__ import annotations

import math
import os

from dmad.compress.errors import DmadError

#: Bytes of live activations per input pixel a generator pass is budgeted at: 64 channels of
#: fp32 at full resolution, about eight such tensors alive at once (ResNet-9 ngf 64).
BYTES_PER_PIXEL = 64 * 4 * 8

#: Config fields and flags that are an image side in pixels.
SIDE_FIELDS = ("size", "load_size", "macs_size", "export_size")


def memory_bytes() -> int:
    """Physical memory of this machine (the cgroup limit when one is lower)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def max_side() -> int:
    """The largest square image side a generator pass fits in this machine's memory."""
    return math.isqrt(memory_bytes() // BYTES_PER_PIXEL)


def check_side(name: str, value: int | None, *, low: int = 1) -> None:
    """``value`` pixels for option ``name``: at least ``low``, at most :func:`max_side`."""
    if value is None or value == 0:
        return  # 0 / None: "the model's own size" where a field allows it
    if value < low:
        raise DmadError(f"{name}: must be >= {low} pixels, got {value}")
    top = max_side()
    if value > top:
        gib = memory_bytes() / 2**30
        raise DmadError(f"{name}: {value} pixels is too large for this machine's {gib:.1f} GiB "
                        f"of memory (at most {top}, from about {BYTES_PER_PIXEL // 1024} KiB of "
                        "activations per pixel)")


def check_batch(name: str, batch: int, side: int) -> None:
    """A batch of ``batch`` images of ``side``² pixels must fit this machine's memory."""
    if batch <= 0 or side <= 0:
        return
    need = batch * side * side * BYTES_PER_PIXEL
    have = memory_bytes()
    if need > have:
        raise DmadError(f"{name}: {batch} images of {side}² pixels need about {need / 2**30:.0f} "
                        f"GiB of activations, more than this machine's {have / 2**30:.1f} GiB; "
                        f"at most {max(1, have // (side * side * BYTES_PER_PIXEL))} at this size")


#: Fields that are never negative whatever the command (a NumPy seed must be >= 0).
NONNEGATIVE_FIELDS = ("seed",)


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocator's refusal, which PyTorch raises as a RuntimeError rather than MemoryError."""
    text = str(exc)
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()))


def check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise DmadError(f"{name}: must be a finite number, got {value}")


__all__ = ["BYTES_PER_PIXEL", "NONNEGATIVE_FIELDS", "SIDE_FIELDS", "check_batch", "check_finite",
           "check_side", "is_out_of_memory", "max_side", "memory_bytes"]
