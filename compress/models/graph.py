"""The spec of a generator dmad knows only through its traced graph (CUT, pix2pixHD, a user's).

Why a spec at all: every later stage (search, fine-tune, eval, export, bench) rebuilds a model
from its file without being told the architecture again. For dmad's own families the widths are
the spec; here the class is: ``builder`` names it (``package.module:Class``), ``kwargs`` are its
keyword arguments (JSON values), and a pruned student adds ``masks``, every mask site's final
values, from which the same exact pruning is replayed (``compress/graph_model.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["GraphModelSpec"]


@dataclass
class GraphModelSpec:
    """A traced generator: its class, its arguments and (a pruned student) its mask values."""

    builder: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: site name → the mask's values per channel (0 = removed); None for the unpruned class
    masks: dict[str, list[float]] | None = None
    input_nc: int = 3
    output_nc: int = 3
    #: input sides must be multiples of this (2 ** the downsamplings)
    divisor: int = 4
    family: str = field(default="graph", init=False)
