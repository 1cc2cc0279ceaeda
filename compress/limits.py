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


def check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise DmadError(f"{name}: must be a finite number, got {value}")


__all__ = ["BYTES_PER_PIXEL", "SIDE_FIELDS", "check_finite", "check_side", "max_side",
           "memory_bytes"]
