"""Model files: a generator or discriminator with the spec that rebuilds it.

A dmad model file is a plain dict that ``torch.load(weights_only=True)`` accepts::

    {"format": "dmad-model", "version": 1, "spec": {...}, "state_dict": {...}, "meta": {...}}

``meta`` holds provenance (source checkpoint, training run, direction). Because the spec travels
with the weights, every later stage (search, export, bench) rebuilds the exact module without
being told the architecture again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from dmad.compress.errors import DmadError
from dmad.compress.io import atomic_save, safe_load
from dmad.compress.models import Spec, build, spec_from_dict, spec_to_dict

FORMAT = "dmad-model"
VERSION = 1


def save_model(model: nn.Module, path: str | os.PathLike[str], **meta: Any) -> None:
    """Write ``model`` (which must carry ``.spec``) atomically as a dmad model file."""
    spec: Spec = model.spec  # type: ignore[assignment]
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_save(
        {
            "format": FORMAT,
            "version": VERSION,
            "spec": spec_to_dict(spec),
            "state_dict": state,
            "meta": meta,
        },
        path,
    )


def load_model(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a dmad model file; returns ``(module in eval mode, meta)``.

    Any problem (not a dmad file, unknown spec field, weights that do not fit the spec) is a
    one-line :class:`DmadError` naming the file.
    """
    path = Path(path)
    obj = safe_load(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        hint = ""
        if isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj):
            hint = " (a raw state_dict? convert it with `dmad import`)"
        raise DmadError(f"{path}: not a dmad model file{hint}")
    try:
        spec = spec_from_dict(obj["spec"])
        model = build(spec)
    except (KeyError, TypeError, ValueError) as exc:
        raise DmadError(f"{path}: invalid model spec ({exc})") from None
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()
        raise DmadError(f"{path}: weights do not match its spec ({' '.join(first[:2])})") from None
    return model.eval(), dict(obj.get("meta") or {})


def load_generator(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_model`, refusing a discriminator (or any non-generator) with a clear error."""
    from dmad.compress.models import ResnetSpec, UnetSpec

    model, meta = load_model(path)
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ResnetSpec | UnetSpec):
        family = getattr(spec, "family", type(model).__name__)
        raise DmadError(f"{path}: is a dmad {family} model file, expected a generator "
                        "(resnet or unet)")
    return model, meta
