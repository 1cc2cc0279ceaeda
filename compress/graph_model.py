"""Traced generators as model files: the teacher by its class, a pruned student by its masks.

Why: a pruned traced generator is a ``torch.fx.GraphModule`` whose layers have widths its class
never had, so it cannot be rebuilt from the class alone, and pickling the module would need
``weights_only=False``. Instead a student's spec keeps every mask site's final values
(:class:`~dmad.compress.models.graph.GraphModelSpec`): rebuilding instantiates the class, puts
the masks back at exactly those values and replays :func:`~dmad.compress.graph_prune.prune_graph`,
which yields the same layers, shapes and carried scales; the file's weights then load strictly.
The rebuilt student is a :class:`GraphGenerator`, a plain module around the graph, so that
``copy.deepcopy`` (the fine-tune's best and averaged weights) keeps its ``spec``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dmad.compress.attention import InputOf
from dmad.compress.errors import DmadError
from dmad.compress.graph_prune import attach_graph_masks, prune_graph
from dmad.compress.masks import ChannelMask, MaskedNorm
from dmad.compress.models.graph import GraphModelSpec
from dmad.compress.structure import trace_structure
from dmad.compress.user_class import import_class

__all__ = ["GraphGenerator", "build_graph", "graph_masks", "graph_taps", "graph_teacher",
           "prune_graph_model", "set_mask_values", "student_spec"]


class GraphGenerator(nn.Module):
    """A pruned traced generator: the graph that runs it and the spec that rebuilds it."""

    def __init__(self, net: torch.fx.GraphModule, spec: GraphModelSpec) -> None:
        super().__init__()
        self.net = net
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_graph(spec: GraphModelSpec) -> nn.Module:
    """The module ``spec`` describes: the class with its arguments (``.spec`` set), or for a
    student the same class pruned exactly as its masks say (module doc)."""
    cls = import_class(spec.builder, what="model spec builder", from_file=True)
    if not isinstance(spec.kwargs, dict):
        raise ValueError("kwargs: not a table of keyword arguments")
    model = cls(**spec.kwargs)
    if spec.masks is None:
        model.spec = spec  # type: ignore[assignment]
        return model
    masks = attach_graph_masks(model)
    if set(masks) != set(spec.masks):
        odd = sorted(set(masks) ^ set(spec.masks))
        raise ValueError(f"masks: the spec's sites differ from the class's ({odd[0]})")
    for name, mask in masks.items():
        set_mask_values(mask, torch.tensor(spec.masks[name], dtype=torch.float32))
    return GraphGenerator(prune_graph(model), spec)


@torch.no_grad()
def set_mask_values(mask: ChannelMask, values: torch.Tensor) -> None:
    """Freeze ``mask`` so that its value is exactly ``values`` (kept where non-zero)."""
    if values.shape != mask.weight.shape or not bool(torch.isfinite(values).all()):
        raise ValueError(f"masks: {mask.channels} finite values expected, got "
                         f"{tuple(values.shape)}")
    on = values != 0
    mask.weight.copy_(torch.where(on, 1.0, -1.0))
    mask.scale.copy_(torch.where(on, values, torch.ones_like(values)))
    mask.bound.fill_(0.0)
    mask.frozen.fill_(True)


def graph_teacher(model: nn.Module, builder: str, kwargs: dict[str, Any]) -> nn.Module:
    """``model`` (an instance of ``builder`` made with ``kwargs``) with the spec that rebuilds
    it; its structure is traced first, so an unsupported layer is one line here, before any
    run folder is made."""
    tr = trace_structure(model)
    convs = [m for n in tr.graph.nodes if n.op == "call_module" and isinstance(
        m := model.get_submodule(str(n.target)), nn.Conv2d | nn.ConvTranspose2d)]
    if not convs:
        raise DmadError(f"{builder}: has no convolution; not an image-to-image generator")
    input_nc = tr.channels(0) or int(convs[0].in_channels)  # the image's, as first read
    divisor, output_nc = _divisor(model, input_nc)
    model.spec = GraphModelSpec(builder, dict(kwargs), None, input_nc,  # type: ignore[assignment]
                                output_nc, divisor)
    return model


def _divisor(model: nn.Module, input_nc: int) -> tuple[int, int]:
    """(the smallest power of two d for which inputs of 3·d and 5·d pixels come back at their
    own size, the output's channels), found on the meta device (no memory, no compute)."""
    meta = copy.deepcopy(model).to("meta").eval()
    for k in range(8):
        d = 2**k
        try:
            outs = [meta(torch.zeros(1, input_nc, s * d, s * d, device="meta")) for s in (3, 5)]
        except (RuntimeError, ValueError):  # shapes that do not fit, a 1×1 instance norm
            continue
        if all(tuple(o.shape[-2:]) == (s * d, s * d) for o, s in zip(outs, (3, 5), strict=True)):
            return d, int(outs[0].shape[1])
    raise DmadError(f"{type(model).__name__}: its output never has its input's size (up to "
                    "sides that are multiples of 128); not an image-to-image generator")


def graph_masks(model: nn.Module) -> dict[str, ChannelMask]:
    """The masks already attached to ``model``, by site name (graph order)."""
    return {name: m.mask for name, m in model.named_modules() if isinstance(m, MaskedNorm)}


def prune_graph_model(model: nn.Module) -> GraphGenerator:
    """The masked ``model`` pruned exactly (:func:`prune_graph`), with the spec that rebuilds
    it: the teacher's, plus every mask's values."""
    spec = student_spec(model.spec, graph_masks(model))  # type: ignore[arg-type]
    return GraphGenerator(prune_graph(model.eval()), spec)


def student_spec(spec: GraphModelSpec, masks: Mapping[str, ChannelMask]) -> GraphModelSpec:
    """The teacher's spec plus every mask's final values: what rebuilds the pruned student."""
    values = {name: [float(v) for v in m.value().detach().cpu()] for name, m in masks.items()}
    return dataclasses.replace(spec, masks=values)


def graph_taps(model: nn.Module) -> dict[str, InputOf]:
    """Co-attention taps by position, the same in a traced teacher and its pruned student: the
    residual stream where each consumer reads it (the input of each convolution that reads a
    residual stream), at DMAD's ResNet positions: after the downsampling stem, then after 1/3,
    2/3 and 3/3 of the blocks. Without a residual stream: the inputs of the convolutions at a
    quarter, half and three quarters of the depth. In a student whose block was folded away,
    a tap at its reader moves to the next reader that is left (the same stream, one block on)."""
    spec = model.spec  # type: ignore[union-attr]
    if isinstance(model, GraphGenerator):  # the student: positions from its class, on meta
        with torch.device("meta"):
            shape = import_class(spec.builder, what="model spec builder",
                                 from_file=True)(**spec.kwargs)
        base: nn.Module = model.net
    else:
        shape = base = model
    picks, readers = _tap_paths(shape)
    have = {name for name, _ in base.named_modules()}
    taps: dict[str, InputOf] = {}
    for i, k in enumerate(picks):
        path = next((p for p in readers[k:] if p in have), None)
        if path is not None:
            taps[f"tap{i}"] = InputOf(base.get_submodule(path))
    return taps


def _tap_paths(model: nn.Module) -> tuple[list[int], list[str]]:
    """(the picked positions, the candidate readers' module paths in graph order)."""
    tr = trace_structure(model)
    grouped = {n for g in tr.structure.groups for n in g}
    stream = {tr.root(s) for s, name in tr.site_of_space.items() if name in grouped}
    convs = [n for n in tr.graph.nodes if n.op == "call_module" and isinstance(
        model.get_submodule(str(n.target)), nn.Conv2d | nn.ConvTranspose2d)]
    inner = [n for n in convs[1:] if str(n.target) not in tr.structure.output]
    readers = [n for n in inner if (segs := tr.segs[n.args[0]])  # type: ignore[index]
               and all(tr.root(s) in stream for s in segs)]
    if len(readers) >= 2:
        rest = len(readers) - 1
        picks = [0] + [math.ceil(f * rest / 3) for f in (1, 2, 3)]
        return list(dict.fromkeys(picks)), [str(n.target) for n in readers]
    if inner:
        picks = [max(0, math.ceil(f * len(inner) / 4) - 1) for f in (1, 2, 3)]
        return list(dict.fromkeys(picks)), [str(n.target) for n in inner]
    return [], []
