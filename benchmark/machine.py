"""The machine a benchmark ran on, recorded with every result: CPU, ISA flags, libraries, load,
and a GEMM probe of the peak the CPU reaches, to judge the models' achieved rate against.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: CPU features reported with every benchmark: the vector width and the int8 dot-product
#: extensions (VNNI, AMX, dotprod, i8mm) that decide fp32 and int8 speed
REPORTED_ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
            "amx_bf16", "amx_int8", "neon", "asimddp", "i8mm")


# -- machine ---------------------------------------------------------------------------------


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, ISA flags that matter for these kernels, library versions, load."""
    cpu, flags, named = platform.processor() or platform.machine(), set(), False
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not named:
                cpu, named = line.split(":", 1)[1].strip(), True
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    load = None
    with contextlib.suppress(OSError, AttributeError):
        load = [round(x, 2) for x in os.getloadavg()]
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        # the int8 kernels' speed depends on these: without VNNI (AVX2 only) XNNPACK's int8
        # convolutions run at about the fp32 rate; with VNNI/AMX several times faster
        "isa": sorted(f for f in flags if f in REPORTED_ISA),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": {p: _version(p) for p in ("torch", "onnxruntime", "ai-edge-litert", "numpy")},
        "load_avg": load,
    }


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def gemm_peak(threads: int, n: int = 1024, reps: int = 8) -> dict[str, float]:
    """Best-of-``reps`` fp32 ``n×n @ n×n`` with ``threads`` threads, as GMAC/s.

    The best (not median) run is the closest to what the hardware can do; that is the limit the
    models' achieved GMAC/s are compared with.
    """
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.rand(n, n, generator=g)
    b = torch.rand(n, n, generator=g)
    with torch_threads(threads), torch.inference_mode():
        for _ in range(2):
            torch.matmul(a, b)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - t0)
    best = min(times)
    return {"threads": threads, "n": n, "best_ms": best * 1e3, "gmacs_per_s": n**3 / best / 1e9}
