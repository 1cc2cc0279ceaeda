"""The search result file (``search_G_*.pt``): a masked generator with its architecture.

Written by ``dmad search``; read by the fine-tune, ``dmad prune`` and ``dmad eval``. It keeps the
masked weights (not the pruned ones) so a search can be re-pruned or inspected exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dmad.compress.errors import DmadError
from dmad.compress.io import atomic_save
from dmad.compress.masks import ChannelMask, attach_masks
from dmad.compress.models import spec_to_dict

SEARCH_FORMAT = "dmad-search"


def save_search(path: Path, g: nn.Module, masks: dict[str, ChannelMask], entry: dict[str, Any],
                meta: dict[str, Any]) -> None:
    """Write a masked generator (its full spec and state) with its architecture entry."""
    atomic_save({"format": SEARCH_FORMAT, "version": 1,
                 "spec": spec_to_dict(g.spec  # a traced generator: its class, not its cost
                                      if g.spec_full.family == "graph"  # type: ignore[union-attr]
                                      else g.spec_full),  # type: ignore[arg-type]
                 "mask_names": list(masks),
                 "state_dict": {k: v.detach().cpu().clone() for k, v in g.state_dict().items()},
                 "architecture": entry, "meta": meta}, path)


def load_search(path: Path) -> tuple[nn.Module, dict[str, ChannelMask], dict[str, Any]]:
    """Rebuild a masked generator from a ``search_G_*.pt`` file: (model, masks, architecture)."""
    from dmad.compress.checkpoint import checked_parts, match_shapes
    from dmad.compress.io import safe_load
    from dmad.compress.models import build, spec_from_dict

    obj = safe_load(path)
    if not isinstance(obj, dict) or obj.get("format") != SEARCH_FORMAT:
        raise DmadError(f"{path}: not a dmad search result")
    state, _meta = checked_parts(path, obj)
    if not isinstance(obj.get("architecture"), dict):
        raise DmadError(f"{path}: invalid search result: 'architecture' is not a table")
    try:  # the spec built on the meta device first: a crafted width allocates nothing
        with torch.device("meta"):
            shell = build(spec_from_dict(obj["spec"]))
            attach_masks(shell)
    except Exception as exc:  # a crafted spec can fail anywhere in a constructor
        raise DmadError(f"{path}: invalid model spec ({' '.join(str(exc).split())[:160]})"
                        ) from None
    match_shapes(path, shell, state)
    model = build(spec_from_dict(obj["spec"]))
    masks = attach_masks(model)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise DmadError(f"{path}: weights do not match its spec ({str(exc)[:120]})") from None
    return model.eval(), masks, obj["architecture"]


__all__ = ["SEARCH_FORMAT", "load_search", "save_search"]
