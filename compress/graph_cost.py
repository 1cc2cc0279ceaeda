"""The budget's view of any traced generator: MACs and parameters as a function of the
channels each mask keeps.

Why: the search compares the architecture its masks leave with a MAC budget at every update,
and the final fit tries many keep sets. :class:`GraphSpec` records, once, every
convolution of the graph with the channel spaces it reads and writes and its output size at a
reference side (shapes found by running the model once), and then counts MACs for any keep set
without running the model: a layer's MACs scale with its kept input and output channels and
with the square of the image side (the generators are fully convolutional). dmad's own
ResNet and UNet specs are traced the same way (:func:`family_graph`); counting at a side their
downsamplings divide, this equals profiling the class rebuilt with the surviving widths.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from dmad.compress.masks import ChannelMask, MaskedNorm, mask_sites
from dmad.compress.models import ResnetSpec, UnetSpec, build
from dmad.compress.structure import Trace, close_chunks, dead_region, trace_structure

__all__ = ["ConvCost", "GraphSpec", "as_graph", "channel_groups", "family_graph",
           "stream_writers"]


@dataclass(frozen=True)
class ConvCost:
    """One convolution: the space roots of its input slices (``None``: the image), its
    output's root, whether it is depthwise (input = output channels), kernel taps, bias, the
    output pixels and input pixels at the reference side, and whether it is transposed."""

    name: str
    ins: tuple[tuple[int | None, int], ...]
    out: tuple[int | None, int]
    depthwise: bool
    taps: int
    bias: bool
    out_pixels: int
    in_pixels: int
    transposed: bool
    #: output channels per kept channel of its space (r² when PixelShuffle(r) reads it)
    block: int = 1
    #: a grouped (not depthwise) convolution's groups: each output reads cin / groups inputs
    groups: int = 1


@dataclass
class GraphSpec:
    """A traced generator as :mod:`compress.budget` sees it (the fields and methods it reads
    of a ResNet or UNet spec): ``family`` ``"graph"``, ``input_nc``, and costs by keep set."""

    input_nc: int
    ref_side: int
    convs: list[ConvCost]
    #: mask (site) name → its channel-space root
    site_root: dict[str, int]
    #: masks whose channels are one space (pruned alike), two or more each
    groups: list[list[str]]
    #: per-channel layers: the spaces of their input, their pixels at the reference side, the
    #: ops per element the paper convention counts (BatchNorm 2, LeakyReLU 1) and their
    #: parameters per channel (an affine norm 2, PReLU 1)
    elementwise: list[tuple[tuple[tuple[int | None, int], ...], int, int, int]] = \
        field(default_factory=list)
    family: str = field(default="graph", init=False)
    #: site name → its full channels (what a latency table checks it was measured on)
    site_channels: dict[str, int] = field(default_factory=dict)
    #: space root → the (conv, elementwise) indices that vanish when it keeps no channel (a
    #: residual branch: pruning folds it into a constant); roots not here keep one channel
    removable: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)
    #: space root → the chunk of channels it is pruned in (a GroupNorm's group size)
    chunk: dict[int, int] = field(default_factory=dict)

    def dead(self, kept: Mapping[int, int]) -> tuple[set[int], set[int]]:
        """(conv, elementwise) indices that the empty removable spaces of ``kept`` fold away."""
        convs: set[int] = set()
        elems: set[int] = set()
        for r, n in kept.items():
            if n == 0 and r in self.removable:
                convs.update(self.removable[r][0])
                elems.update(self.removable[r][1])
        return convs, elems

    @classmethod
    def of(cls, model: nn.Module, side: int = 64, input_nc: int = 3) -> GraphSpec:
        """Trace ``model`` and run it once at ``side``² to learn every conv's pixels."""
        tr = trace_structure(model)
        gm = torch.fx.GraphModule(model, tr.graph)
        p = next(iter(model.parameters()))
        was = model.training
        model.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(1, input_nc, side, side, device=p.device,
                                                dtype=p.dtype))
        model.train(was)
        mods = dict(model.named_modules())
        conv_at = [(n, c) for n in tr.graph.nodes if (c := _conv_cost(n, mods, tr)) is not None]
        elem_at = [(n, e) for n in tr.graph.nodes if (e := _elementwise(n, mods, tr)) is not None]
        convs, elementwise = [c for _, c in conv_at], [e for _, e in elem_at]
        return cls(input_nc, side, convs,
                   {name: tr.root(s) for s, name in tr.site_of_space.items()},
                   tr.structure.groups, elementwise,
                   site_channels={name: tr.channels(s) for s, name in tr.site_of_space.items()},
                   removable=_removable(tr, [n for n, _ in conv_at], [n for n, _ in elem_at]),
                   chunk={r: c for r in {tr.root(s) for s in tr.made}
                          if (c := tr.chunk(r)) > 1})

    def kept(self, masks: Mapping[str, ChannelMask],
             keep: Mapping[str, torch.Tensor] | None = None) -> dict[int, int]:
        """Channels each masked space keeps: the union over its masks (a mask keeps w > −b),
        in whole chunks where it has them (GroupNorm groups); an emptied space keeps one
        (chunk), unless it is removable (then 0: folded away)."""
        sets: dict[int, torch.Tensor] = {}
        for name, m in masks.items():
            k = (keep[name] if keep is not None else m.kept()).detach().cpu().bool()
            root = self.site_root[name]
            sets[root] = k if root not in sets else sets[root] | k
        out = {}
        for r, k in sets.items():
            size = self.chunk.get(r, 1)
            n = int(close_chunks(k, size).sum())
            out[r] = n if n or r in self.removable else size
        return out

    def conv_channels(self, kept: Mapping[int, int]) -> Iterator[tuple[ConvCost, int, int]]:
        """(conv, input channels, output channels) of every conv ``kept`` leaves (the ones an
        emptied removable space folds away are skipped)."""
        gone, _ = self.dead(kept)
        for i, c in enumerate(self.convs):
            if i in gone:
                continue
            cin = sum(kept.get(r, n) if r is not None else n for r, n in c.ins)
            cout = cin if c.depthwise else c.block * (
                kept.get(c.out[0], c.out[1]) if c.out[0] is not None else c.out[1])
            yield c, cin, cout

    def macs(self, kept: Mapping[int, int], side: int) -> tuple[int, int, int]:
        """(paper MACs, true MACs, conv parameters) at ``side``² for channels ``kept``."""
        f = (side / self.ref_side) ** 2
        paper = true = params = 0
        _, gone_elems = self.dead(kept)
        for c, cin, cout in self.conv_channels(kept):
            per_out = c.taps if c.depthwise else cin // c.groups * c.taps
            out_px, in_px = round(c.out_pixels * f), round(c.in_pixels * f)
            paper += out_px * cout * (per_out + int(c.bias))
            true += (in_px * cin * c.taps if c.depthwise
                     else in_px * cin * cout // c.groups * c.taps) \
                if c.transposed else out_px * cout * per_out
            params += cout * per_out + (cout if c.bias else 0)
        for i, (ins, px, per, affine) in enumerate(self.elementwise):
            if i in gone_elems:
                continue
            channels = sum(kept.get(r, n) if r is not None else n for r, n in ins)
            paper += round(px * f) * per * channels
            params += affine * channels
        return paper, true, params


def _removable(tr: Trace, conv_nodes: list[torch.fx.Node], elem_nodes: list[torch.fx.Node]
               ) -> dict[int, tuple[list[int], list[int]]]:
    """Per masked space root, what folds away when it keeps no channel: its writers' outputs
    are then zero, and everything computed only from them is a constant that pruning adds
    to the stream instead (``graph_prune``). Roots whose zeros reach anything but additions
    are not removable."""
    by_root: dict[int, set[str]] = {}
    names = {site.name for site in tr.structure.sites}
    for space, name in tr.site_of_space.items():
        if name in names:
            by_root.setdefault(tr.root(space), set()).add(name)
    out: dict[int, tuple[list[int], list[int]]] = {}
    for root, seeds in by_root.items():
        region = dead_region(tr.graph, seeds)
        if region is None:
            continue
        dead = region[0] | {n for n in conv_nodes if _feeds_only(n, region[0])}
        out[root] = ([i for i, n in enumerate(conv_nodes) if n in dead],
                     [i for i, n in enumerate(elem_nodes) if n in dead])
    return out


def _feeds_only(node: torch.fx.Node, dead: set[torch.fx.Node]) -> bool:
    """A value whose every use is in ``dead`` (the conv writing an emptied space)."""
    return bool(node.users) and all(u in dead or _feeds_only(u, dead) for u in node.users)


def _elementwise(node: torch.fx.Node, mods: dict[str, nn.Module], tr: Trace
                 ) -> tuple[tuple[tuple[int | None, int], ...], int, int, int] | None:
    if node.op != "call_module":
        return None
    m = mods[str(node.target)]
    m = m.norm if isinstance(m, MaskedNorm) else m
    per = 2 if isinstance(m, nn.BatchNorm2d) else 1 if isinstance(m, nn.LeakyReLU) else 0
    width, numel = _width(m), sum(p.numel() for p in m.parameters(recurse=False))
    affine = numel // width if width > 1 else 0  # per channel; a shared PReLU slope is not
    if not per and not affine:
        return None
    src = node.args[0]
    assert isinstance(src, torch.fx.Node)
    shape = src.meta["tensor_meta"].shape
    ins = tuple((tr.root(s) if s else None, tr.channels(s)) for s in tr.segs[src])
    return ins, int(shape[2] * shape[3]), per, affine


def _width(m: nn.Module) -> int:
    """The channels of a per-channel layer (its parameters are that long)."""
    return int(getattr(m, "num_features", 0) or getattr(m, "num_parameters", 0)
               or getattr(m, "num_channels", 0))


def _conv_cost(node: torch.fx.Node, mods: dict[str, nn.Module], tr: Trace) -> ConvCost | None:
    """The cost record of a conv node (a module, a masked conv, or a fixed filter call)."""
    if node.op == "call_module":
        m = mods[str(node.target)]
        if isinstance(m, MaskedNorm):
            m = m.norm
        if not isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            return None
        taps = int(m.kernel_size[0] * m.kernel_size[1])
        depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        groups = 1 if depthwise else int(m.groups)
        bias, transposed = m.bias is not None, isinstance(m, nn.ConvTranspose2d)
    elif node.op == "call_function" and node.target in (F.conv2d, F.conv_transpose2d):
        w = node.args[1]
        shape = w.meta["tensor_meta"].shape if isinstance(w, torch.fx.Node) else None
        if shape is None:
            return None
        taps, depthwise, bias, groups = int(shape[2] * shape[3]), True, False, 1
        transposed = node.target is F.conv_transpose2d
    else:
        return None
    src = node.args[0]
    assert isinstance(src, torch.fx.Node)
    ins = tuple((tr.root(s) if s else None, tr.channels(s)) for s in tr.segs[src])
    outs = tr.segs[node]
    out = (tr.root(outs[0]) if outs and outs[0] else None,
           tr.channels(outs[0]) if outs else 0)
    o_shape, i_shape = node.meta["tensor_meta"].shape, src.meta["tensor_meta"].shape
    block = tr.spaces.block.get(outs[0], 1) if outs and not depthwise else 1
    return ConvCost(str(node.target), ins, out, depthwise, taps, bias,
                    int(o_shape[2] * o_shape[3]), int(i_shape[2] * i_shape[3]), transposed,
                    block, groups)


@functools.lru_cache(maxsize=8)
def family_graph(spec: ResnetSpec | UnetSpec) -> GraphSpec:
    """The :class:`GraphSpec` of a dmad ResNet or UNet spec, its sites by DMAD's names
    (``stem``, ``block3.conv1``, ``down0``).

    Why: dmad's own families are counted, and their residual stream coupled, by the same
    derivation from the traced graph that any other generator gets; only the names are theirs.
    Built once per spec (specs are frozen) on the meta device, so no weights are allocated."""
    with torch.device("meta"):
        model = build(spec)
    side = 2 ** spec.num_downs if isinstance(spec, UnetSpec) else 64
    graph = GraphSpec.of(model, side=max(side, 64), input_nc=spec.input_nc)
    sites = trace_structure(model).structure.sites
    dmad = {site.name: name for site, (name, _, _) in zip(sites, mask_sites(model), strict=True)}
    return dataclasses.replace(
        graph, site_root={dmad.get(n, n): r for n, r in graph.site_root.items()},
        groups=[[dmad[n] for n in g] for g in graph.groups],
        site_channels={dmad.get(n, n): c for n, c in graph.site_channels.items()})


def as_graph(spec: ResnetSpec | UnetSpec | GraphSpec) -> GraphSpec:
    """The traced view of any spec: a traced generator's as it is, dmad's by its graph."""
    return spec if isinstance(spec, GraphSpec) else family_graph(spec)


def channel_groups(spec: ResnetSpec | UnetSpec | GraphSpec) -> list[list[str]]:
    """The masks whose channels are one space (pruned alike, coupled by DMAD's adaptive group
    sparsity), from the traced graph: a ResNet's residual-stream writers ``down2`` and every
    ``block{i}.conv2`` in block order (``down2`` alone when no block is left: still DMAD's
    group); none for a UNet; a traced generator's residual additions."""
    groups = [list(g) for g in as_graph(spec).groups]
    if isinstance(spec, ResnetSpec) and not groups:
        groups = [["down2"]]
    return groups


def stream_writers(spec: ResnetSpec) -> list[str]:
    """The masks writing a ResNet's residual stream (its one channel group)."""
    return channel_groups(spec)[0]
