"""Speedup statistics that say how sure they are.

A speedup from two medians hides how much the timings moved. Measured the way ``dmad compare``
times (full and compressed in the same rounds), each round gives its own ratio: the **paired
median** of those per-round ratios, with a **bootstrap 95 % interval** over rounds, says what
the ratio is and how far it could be. Next to it the plain ratio of medians is kept (what most
tools print). In *blocked* order (all runs of one model, then all of the other) the rounds are
not paired in time, so its interval resamples the two sides independently.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ORDERS", "ORDER_CHOICES", "bootstrap_ci", "speedup_stats"]

#: timing orders: ``interleaved`` (A B A B …: drift hits both alike, but a large model may evict
#: a small one's weights from the caches between its runs) and ``blocked`` (A A … B B …: each
#: model warm in the caches, as an app runs one model, but exposed to drift between blocks)
ORDERS = ("interleaved", "blocked")
#: what ``--order`` accepts: one order, or both in the same run
ORDER_CHOICES = (*ORDERS, "both")

_RESAMPLES = 2000


def bootstrap_ci(values: np.ndarray, *, level: float = 0.95, seed: int = 0,
                 resamples: int = _RESAMPLES) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values`` (fixed seed: a report reads
    the same when regenerated from the same samples)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    meds = np.median(v[rng.integers(0, v.size, (resamples, v.size))], axis=1)
    a = (1 - level) / 2
    return float(np.quantile(meds, a)), float(np.quantile(meds, 1 - a))


def speedup_stats(full_ms: list[float], compressed_ms: list[float], order: str = "interleaved",
                  *, seed: int = 0) -> dict[str, Any]:
    """Speedup of compressed over full from raw samples (module doc)."""
    f = np.asarray(full_ms, dtype=np.float64)
    c = np.asarray(compressed_ms, dtype=np.float64)
    if f.size == 0 or c.size == 0 or (f <= 0).any() or (c <= 0).any():
        raise ValueError("speedup_stats: needs positive samples on both sides")
    out: dict[str, Any] = {"order": order, "rounds": int(min(f.size, c.size)),
                           "ratio_of_medians": float(np.median(f) / np.median(c))}
    if order == "interleaved" and f.size == c.size:
        r = f / c
        lo, hi = bootstrap_ci(r, seed=seed)
        out.update({"paired_median": float(np.median(r)), "ci95": [lo, hi],
                    "ci_method": "bootstrap over rounds of the per-round ratio"})
    else:
        rng = np.random.default_rng(seed)
        fm = np.median(f[rng.integers(0, f.size, (_RESAMPLES, f.size))], axis=1)
        cm = np.median(c[rng.integers(0, c.size, (_RESAMPLES, c.size))], axis=1)
        q = fm / cm
        out.update({"paired_median": None,
                    "ci95": [float(np.quantile(q, 0.025)), float(np.quantile(q, 0.975))],
                    "ci_method": "bootstrap of the ratio of medians, sides resampled apart"})
    return out
