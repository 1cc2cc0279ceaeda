"""Latency model of a traced generator: whole models timed, per-layer costs fitted.

Why not units, as for the ResNet family (:mod:`compress.latency`): a traced generator has no
named units to cut out, and its layers are as many as its class says. Instead
``dmad latency-table --generator G.pt`` times the generator itself pruned to random keep sets
(whole models, converted the way the export converts) and fits, by non-negative least squares,
three per-model costs computed from the traced graph for any keep set:

* the convolutions' multiply-accumulates with every output width rounded up to the backend's
  channel multiple (its kernels' tile: 17 channels cost what 32 do);
* the elements the convolutions write (memory traffic: norms, activations, padding follow them);
* one constant (the invoke).

Other random keep sets, never seen by the fit, are predicted and measured to say how good it
is. This module only reads tables and predicts; it imports no converter and no runtime.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dmad.compress.errors import DmadError
from dmad.compress.graph_cost import GraphSpec, as_graph
from dmad.compress.latency import Prediction, describe_key

FORMAT = "dmad-latency-graph/1"
TERMS = ("per_gmac", "per_melem", "const_ms")

__all__ = ["FORMAT", "GraphLatencyTable", "features", "fit_nonnegative"]


def features(spec: GraphSpec, kept: dict[int, int] | None, size: int, multiple: int
             ) -> tuple[float, float]:
    """(GMACs with output widths rounded up to ``multiple``, million elements written) of the
    convolutions at ``size``² for channels ``kept`` (space root → count; all when None)."""
    kept = kept or {}
    f = (size / spec.ref_side) ** 2
    m = max(1, multiple)
    macs = elems = 0.0
    for c, cin, cout in spec.conv_channels(kept):
        cout_r = math.ceil(cout / m) * m
        out_px = c.out_pixels * f
        per = c.taps if c.depthwise else cin // c.groups * c.taps
        macs += (c.in_pixels * f * per * cout_r) if c.transposed else out_px * cout_r * per
        elems += out_px * cout_r
    return macs / 1e9, elems / 1e6


def fit_nonnegative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares ``x @ c ≈ y`` with ``c >= 0``: the best of the unconstrained fits on every
    subset of the columns whose coefficients come out non-negative (three columns: seven
    subsets, exact)."""
    best, best_err = np.zeros(x.shape[1]), float(np.sum(y**2))
    for k in range(1, x.shape[1] + 1):
        for cols in itertools.combinations(range(x.shape[1]), k):
            c, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
            if np.any(c < 0):
                continue
            err = float(np.sum((x[:, cols] @ c - y) ** 2))
            if err < best_err:
                best = np.zeros(x.shape[1])
                best[list(cols)] = c
                best_err = err
    return best


@dataclass
class GraphLatencyTable:
    """A fitted latency model of one traced generator class on one backend and machine."""

    key: dict[str, Any]  # machine, backend, threads, ISA, device (phone)
    builder: str  # the class it was measured for, with its arguments
    kwargs: dict[str, Any]
    sites: dict[str, int]  # mask site → full channels: the structure it was measured on
    size: int
    multiple: int
    coef: dict[str, float]
    sweep: dict[str, Any] = field(default_factory=dict)  # how ``multiple`` was measured
    calibration: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    created: str = ""
    kind: str = field(default="graph", init=False)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("kind")
        return {"format": FORMAT, **d}

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str) -> GraphLatencyTable:
        """The table in ``d`` (a parsed file), or one line naming ``where`` is malformed."""
        try:
            coef = {k: float(d["coef"][k]) for k in TERMS}
            t = cls(key=dict(d["key"]), builder=str(d["builder"]), kwargs=dict(d["kwargs"]),
                    sites={str(k): int(v) for k, v in dict(d["sites"]).items()},
                    size=int(d["size"]), multiple=int(d["multiple"]), coef=coef,
                    sweep=dict(d.get("sweep") or {}),
                    calibration=list(d.get("calibration") or []),
                    validation=list(d.get("validation") or []),
                    created=str(d.get("created", "")))
            if not all(np.isfinite(list(coef.values()))) or min(coef.values()) < 0 \
                    or t.size < 1 or t.multiple < 1:
                raise ValueError("coefficients must be finite and >= 0, size and multiple >= 1")
            return t
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise DmadError(f"latency_table: {where}: malformed table ({exc})") from None

    def describe(self) -> str:
        return f"{describe_key(self.key, self.size, self.multiple)}, " \
            f"{self.builder.rsplit(':', 1)[-1]}"

    def check_spec(self, spec: Any) -> None:
        """One-line error when ``spec`` is not the traced generator this table measured."""
        widths = dict(as_graph(spec).site_channels)
        if widths != self.sites:
            odd = sorted(set(widths.items()) ^ set(self.sites.items()))
            raise DmadError(f"latency_table: measured for another structure ({self.builder}; "
                            f"first difference at {odd[0][0] if odd else '?'}); build a table "
                            "for this generator with `dmad latency-table --generator FILE`")

    def predict(self, spec: Any, kept: dict[int, int] | None = None) -> Prediction:
        """Predicted milliseconds at the table's size for channels ``kept`` (all when None)."""
        gmacs, melems = features(as_graph(spec), kept, self.size, self.multiple)
        parts = {"convolutions": self.coef["per_gmac"] * gmacs,
                 "memory": self.coef["per_melem"] * melems, "invoke": self.coef["const_ms"]}
        return Prediction(sum(parts.values()), parts)

