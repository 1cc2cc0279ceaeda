"""Generator and discriminator families; one class each, widths and options as data (specs)."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from dmad.compress.models.discriminator import DiscriminatorSpec, PatchDiscriminator
from dmad.compress.models.graph import GraphModelSpec
from dmad.compress.models.resnet import ResnetBlock, ResnetGenerator, ResnetSpec, ResnetWidths
from dmad.compress.models.unet import UnetGenerator, UnetSpec, UnetWidths

Spec = ResnetSpec | UnetSpec | DiscriminatorSpec | GraphModelSpec

__all__ = [
    "DiscriminatorSpec",
    "GraphModelSpec",
    "PatchDiscriminator",
    "ResnetBlock",
    "ResnetGenerator",
    "ResnetSpec",
    "ResnetWidths",
    "Spec",
    "UnetGenerator",
    "UnetSpec",
    "UnetWidths",
    "build",
    "spec_from_dict",
    "spec_to_dict",
]


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    """Plain dict (ints, strs, lists) so it can sit in a ``weights_only`` checkpoint or JSON."""
    d = dataclasses.asdict(spec)
    if d.get("widths") is not None:
        d["widths"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["widths"].items()}
    return d


def spec_from_dict(d: dict[str, Any]) -> Spec:
    """Inverse of :func:`spec_to_dict`; raises ValueError naming a bad or unknown field."""
    d = dict(d)
    family = d.pop("family", None)
    classes: dict[str, tuple[type, type | None]] = {
        "resnet": (ResnetSpec, ResnetWidths),
        "unet": (UnetSpec, UnetWidths),
        "patchgan": (DiscriminatorSpec, None),
        "graph": (GraphModelSpec, None),
    }
    if family not in classes:
        raise ValueError(f"family: unknown model family {family!r}")
    cls, wcls = classes[family]
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {family} spec field(s): {', '.join(sorted(unknown))}")
    widths = d.get("widths")
    if widths is not None and wcls is not None:
        d["widths"] = wcls(**{k: tuple(v) if isinstance(v, list) else v for k, v in widths.items()})
    return cls(**d)


def build(spec: Spec) -> nn.Module:
    """Instantiate the module a spec describes."""
    if isinstance(spec, ResnetSpec):
        return ResnetGenerator(spec)
    if isinstance(spec, UnetSpec):
        return UnetGenerator(spec)
    if isinstance(spec, GraphModelSpec):  # its class and (a student) its replayed pruning
        from dmad.compress.graph_model import build_graph

        return build_graph(spec)
    return PatchDiscriminator(spec)
