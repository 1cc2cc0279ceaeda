"""Model files: a generator or discriminator with the spec that rebuilds it.

A dmad model file is a plain dict that ``torch.load(weights_only=True)`` accepts::

    {"format": "dmad-model", "version": 1, "spec": {...}, "state_dict": {...}, "meta": {...}}

``meta`` holds provenance (source checkpoint, training run, direction). Because the spec travels
with the weights, every later stage (search, export, bench) rebuilds the exact module without
being told the architecture again.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dmad.compress.errors import DmadError
from dmad.compress.io import atomic_save, safe_load
from dmad.compress.models import GraphModelSpec, Spec, build, spec_from_dict, spec_to_dict

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

    Any problem (not a dmad file, a field of the wrong type, weights that do not fit the spec,
    NaN/inf weights) is a one-line :class:`DmadError` naming the file. The spec is first built
    on the meta device and matched against the file's tensors, so a crafted spec (a huge width)
    can never allocate more than the file itself holds.
    """
    path = Path(path)
    obj = safe_load(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        hint = ""
        if isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj):
            hint = " (a raw state_dict? convert it with `dmad import`)"
        raise DmadError(f"{path}: not a dmad model file{hint}")
    state, meta = checked_parts(path, obj)
    model = _built(path, obj["spec"], state)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise DmadError(f"{path}: weights do not match its spec ({_first_line(exc)})") from None
    return model.eval(), meta


def _built(path: Path, spec_dict: Any, state: dict[str, torch.Tensor]) -> nn.Module:
    """The module the file's spec describes, its shapes matched to the file's tensors.

    The spec is built on the meta device first, so a crafted width allocates nothing. A pruned
    traced generator is replayed on real tensors (its pruning reads mask values), so only its
    class is built on meta, and refused when it is far larger than the file could explain."""
    try:
        spec = spec_from_dict(spec_dict)
        student = isinstance(spec, GraphModelSpec) and spec.masks is not None
        with torch.device("meta"):
            shell = build(dataclasses.replace(spec, masks=None) if student else spec)
        if not student:
            match_shapes(path, shell, state)
            return build(spec)
        held = sum(t.numel() for t in state.values())
        if sum(p.numel() for p in shell.parameters()) > max(1000 * held, 5 * 10**7):
            raise ValueError("its class is far larger than the weights the file holds")
        model = build(spec)
    except DmadError as exc:  # the spec's builder: cannot import it, or not a module class
        raise DmadError(f"{path}: {exc}") from None
    except Exception as exc:  # a crafted spec can fail anywhere in a constructor
        raise DmadError(f"{path}: invalid model spec ({_first_line(exc)})") from None
    match_shapes(path, model, state)
    return model


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def checked_parts(path: Path, obj: dict[str, Any]) -> tuple[dict[str, torch.Tensor],
                                                           dict[str, Any]]:
    """The file's state dict (names → finite tensors) and meta (a table), or one line."""
    if not isinstance(obj.get("spec"), dict):
        raise DmadError(f"{path}: invalid model file: 'spec' is not a table")
    state, meta = obj.get("state_dict"), obj.get("meta")
    if not isinstance(state, dict) or not state:
        raise DmadError(f"{path}: invalid model file: 'state_dict' is not a table of tensors")
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise DmadError(f"{path}: invalid model file: state_dict entry {k!r} is not a tensor")
    if meta is not None and not isinstance(meta, dict):
        raise DmadError(f"{path}: invalid model file: 'meta' is not a table")
    refuse_nonfinite(path, state)
    return state, dict(meta or {})


def refuse_nonfinite(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """NaN/inf weights are refused, naming the first such tensor: a broken model must fail at
    load, not as a black image or a misleading converter error later."""
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise DmadError(f"{path}: tensor {bad[0]}{more} holds NaN/inf values; the model is "
                        "broken (a diverged training?), refused")


def match_shapes(path: Path, shell: nn.Module, state: dict[str, torch.Tensor]) -> None:
    want = shell.state_dict()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise DmadError(f"{path}: weights do not match its spec ({what})")
    for k, t in want.items():
        if tuple(t.shape) != tuple(state[k].shape):
            raise DmadError(f"{path}: weights do not match its spec ({k}: "
                            f"{tuple(state[k].shape)} in the file, {tuple(t.shape)} in the spec)")


def load_generator(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_model`, refusing a discriminator (or any non-generator) with a clear error."""
    from dmad.compress.models import ResnetSpec, UnetSpec

    model, meta = load_model(path)
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ResnetSpec | UnetSpec | GraphModelSpec):
        family = getattr(spec, "family", type(model).__name__)
        raise DmadError(f"{path}: is a dmad {family} model file, expected a generator "
                        "(resnet, unet or a traced class)")
    return model, meta
