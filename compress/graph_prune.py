"""Channel masks and exact physical pruning for any generator ``compress/structure.py`` reads.

Why a second path beside ``prune.py``: that one rebuilds the same class with smaller widths,
which only works for classes whose widths are data (dmad's ResNet and UNet). A user's generator
has its widths in its code. Here the traced graph is the model: masks go on the sites the trace
found (:func:`attach_graph_masks`), and pruning slices every layer's weights along the channel
spaces the trace followed and returns a ``torch.fx.GraphModule`` running the same ops on the
sliced layers (constants the code baked in, such as a blur's ``groups``, are rewritten in the
graph).

Exactness: a channel is removed only when every mask writing into its channel space is exactly
0 there (a residual stream's writers keep the union of their channels), so what is removed
contributed 0 to every consumer. Each kept channel's mask value is carried as a fixed scale
after its norm (:class:`ChannelScale`), so soft and per-writer values survive exactly too; a
scale of all ones is dropped. A space left with no channel keeps one, scaled by 0.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmad.compress.masks import ChannelMask, MaskedNorm
from dmad.compress.structure import (
    Trace,
    close_chunks,
    dead_region,
    derive_structure,
    trace_structure,
)

__all__ = ["ChannelScale", "ChannelShift", "attach_graph_masks", "prune_graph"]


class ChannelScale(nn.Module):
    """A fixed per-channel factor: a frozen mask's values, carried after pruning."""

    def __init__(self, scale: Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.view(1, -1, 1, 1).to(x.dtype)


class ChannelShift(nn.Module):
    """A fixed per-channel constant added: a residual branch whose channels were all pruned
    (what it still added, folded)."""

    def __init__(self, shift: Tensor) -> None:
        super().__init__()
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return x + self.shift.view(1, -1, 1, 1).to(x.dtype)


def _set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def attach_graph_masks(model: nn.Module) -> dict[str, ChannelMask]:
    """A :class:`ChannelMask` after every site of ``model``'s traced structure (the norm, or
    the conv where no norm follows), in graph order; sites already masked keep theirs."""
    st = derive_structure(model)
    masks: dict[str, ChannelMask] = {}
    for site in st.sites:
        mod = model.get_submodule(site.name)
        if isinstance(mod, MaskedNorm):
            masks[site.name] = mod.mask
            continue
        device = next(model.parameters()).device
        mask = ChannelMask(site.channels).to(device)
        _set_module(model, site.name, MaskedNorm(mod, mask))
        masks[site.name] = mask
    return masks


@torch.no_grad()
def _keeps(model: nn.Module, tr: Trace) -> tuple[dict[int, Tensor], dict[str, Tensor]]:
    """(kept channels per space root, mask values per site): the union over a space's
    writers of their non-zero channels; spaces without masks keep every channel."""
    values = {name: mod.mask.value().detach().float()
              for name in (s.name for s in tr.structure.sites)
              if isinstance(mod := model.get_submodule(name), MaskedNorm)}
    keep: dict[int, Tensor] = {}
    for space in tr.made:
        root, n = tr.root(space), tr.channels(space)
        v = values.get(tr.site_of_space[space])
        alive = torch.ones(n, dtype=torch.bool) if v is None else (v != 0).cpu()
        keep[root] = alive if root not in keep else keep[root] | alive
    for root, k in keep.items():
        size = tr.chunk(root)  # a GroupNorm's groups go whole or not at all
        k.copy_(close_chunks(k, size))
        if not k.any():
            k[:size] = True  # scaled by 0 below: empty in effect, folded away when it can be
    return keep, values


def _emptied(tr: Trace, values: dict[str, Tensor]) -> list[set[str]]:
    """Per masked space whose every mask is 0 everywhere: its site names (the seeds whose
    zero output :func:`_fold` follows)."""
    by_root: dict[int, set[str]] = {}
    for space, name in tr.site_of_space.items():
        if name in values:
            by_root.setdefault(tr.root(space), set()).add(name)
    return [names for names in by_root.values()
            if all(not bool(values[n].any()) for n in names)]


def _index(tr: Trace, keep: dict[int, Tensor], node: torch.fx.Node) -> Tensor:
    """Kept channel indices of a value: its spaces' kept channels at their offsets (a space
    no mask touched, such as the input image, keeps every channel)."""
    out, offset = [], 0
    for space in tr.segs[node]:
        n = tr.channels(space)
        k = keep.get(tr.root(space))
        if k is None:
            k = torch.ones(n, dtype=torch.bool)
        out.append(torch.nonzero(k).flatten() + offset)
        offset += n
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def prune_graph(model: nn.Module) -> torch.fx.GraphModule:
    """``model`` (masked with :func:`attach_graph_masks`) with every channel its masks zero
    removed, exactly (module doc); the model itself is not changed."""
    m = copy.deepcopy(model).eval()
    tr = trace_structure(m)
    keep, values = _keeps(m, tr)
    mods = dict(m.named_modules())
    for node in tr.graph.nodes:
        ins = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if node.op == "call_module":
            _prune_module(m, mods[str(node.target)], str(node.target), tr, keep, values, node,
                          ins)
        elif node.op == "call_function" and node.target in (F.conv2d, F.conv_transpose2d) \
                and len(ins) >= 2 and ins[1].op == "get_attr":
            idx = _index(tr, keep, ins[0])
            buf_path = str(ins[1].target)
            parent, _, name = buf_path.rpartition(".")
            owner = m.get_submodule(parent) if parent else m
            setattr(owner, name, getattr(owner, name)[idx].clone())
            if "groups" in node.kwargs:
                node.update_kwarg("groups", len(idx))
            else:
                node.update_arg(6, len(idx))
    gm = torch.fx.GraphModule(m, tr.graph)
    for seeds in _emptied(tr, values):
        _fold(gm, seeds)
    gm.graph.lint()
    return gm


@torch.no_grad()
def _fold(gm: torch.fx.GraphModule, seeds: set[str]) -> None:
    """A residual branch whose mask sites are all zero adds a constant to its stream: compute
    it once (the branch on zeros) and add it as a :class:`ChannelShift`, dropping the branch's
    layers. Left as it is (exact, one channel scaled by 0) when the zeros reach anything but
    additions or the constant is not the same at every pixel."""
    region = dead_region(gm.graph, seeds)
    if region is None:
        return
    dead, folds = region
    p = next(iter(gm.parameters()), None)
    kw = {"device": p.device, "dtype": p.dtype} if p is not None else {}
    interp = torch.fx.Interpreter(gm)
    for node in gm.graph.nodes:
        if node.op == "call_module" and str(node.target) in seeds:
            interp.env[node] = torch.zeros(1, _channels_of(gm, node), 16, 16, **kw)
        elif node in dead or node.op == "get_attr":
            interp.env[node] = interp.run_node(node)
    shifts = []
    for add, operand in folds:
        v = interp.env[operand]
        flat = v.mean((2, 3), keepdim=True)
        if v.dim() != 4 or float((v - flat).abs().max()) > 1e-5 * (1 + float(v.abs().max())):
            return
        shifts.append((add, operand, flat.flatten()))
    for i, (add, operand, shift) in enumerate(shifts):
        live = next(a for a in add.args if isinstance(a, torch.fx.Node) and a is not operand)
        path = f"folded{i}_{add.name}"
        gm.add_submodule(path, ChannelShift(shift))
        with gm.graph.inserting_before(add):
            new = gm.graph.call_module(path, (live,))
        add.replace_all_uses_with(new)
        gm.graph.erase_node(add)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()


def _channels_of(gm: torch.fx.GraphModule, node: torch.fx.Node) -> int:
    """Output channels of a pruned mask site (its carried scale, else its norm or conv)."""
    mod = gm.get_submodule(str(node.target))
    for m in reversed(list(mod.modules())):
        if isinstance(m, ChannelScale):
            return int(m.scale.numel())
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            return int(m.out_channels)
        if hasattr(m, "num_features"):
            return int(m.num_features)
    raise ValueError(f"{node.target}: cannot tell its channels")


def _blocks(tr: Trace, conv: torch.fx.Node, idx: Tensor) -> Tensor:
    """A conv read through PixelShuffle(r) keeps the r² outputs of each kept channel."""
    r2 = tr.spaces.block.get(tr.segs[conv][0], 1) if tr.segs[conv] else 1
    if r2 == 1:
        return idx
    return (idx[:, None] * r2 + torch.arange(r2)).flatten()


def _prune_module(root: nn.Module, mod: nn.Module, path: str, tr: Trace,
                  keep: dict[int, Tensor], values: dict[str, Tensor], node: torch.fx.Node,
                  ins: list[torch.fx.Node]) -> None:
    """Slice one layer along the channels its input and output keep."""
    if not ins:
        return
    in_idx = _index(tr, keep, ins[0])
    if isinstance(mod, nn.Conv2d | nn.ConvTranspose2d):
        out_idx = _blocks(tr, node, _index(tr, keep, node))
        _slice_conv(mod, in_idx, out_idx)
    elif isinstance(mod, MaskedNorm):
        inner = mod.norm
        if isinstance(inner, nn.Conv2d | nn.ConvTranspose2d):  # a mask on a norm-less conv
            out_idx = _index(tr, keep, node)
            _slice_conv(inner, in_idx, out_idx)
        else:
            out_idx = in_idx
            _slice_channels(inner, in_idx)
        scale = values[path][out_idx.to(values[path].device)]
        _set_module(root, path, inner if bool((scale == 1).all())
                    else nn.Sequential(inner, ChannelScale(scale)))
    elif isinstance(mod, nn.BatchNorm2d | nn.InstanceNorm2d | nn.SyncBatchNorm | nn.PReLU
                    | nn.GroupNorm):
        _slice_channels(mod, in_idx)


def _slice_conv(conv: nn.Conv2d | nn.ConvTranspose2d, in_idx: Tensor, out_idx: Tensor) -> None:
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    w = conv.weight.data
    if conv.groups > 1 and not depthwise:  # grouped: the trace keeps its channels whole
        assert len(in_idx) == conv.in_channels and len(out_idx) == conv.out_channels
        return
    if depthwise:
        w = w[in_idx]
        conv.groups = conv.in_channels = conv.out_channels = len(in_idx)
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.data[in_idx].clone())
    else:
        transposed = isinstance(conv, nn.ConvTranspose2d)
        w = w[in_idx][:, out_idx] if transposed else w[out_idx][:, in_idx]
        conv.in_channels, conv.out_channels = len(in_idx), len(out_idx)
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.data[out_idx].clone())
    conv.weight = nn.Parameter(w.clone())


def _slice_channels(mod: nn.Module, idx: Tensor) -> None:
    """Every per-channel parameter and buffer of a norm (or PReLU) restricted to ``idx``."""
    for name, p in list(mod.named_parameters(recurse=False)):
        if p.dim() >= 1 and p.shape[0] > 1:
            setattr(mod, name, nn.Parameter(p.data[idx].clone(), requires_grad=p.requires_grad))
    for name, b in list(mod.named_buffers(recurse=False)):
        if b is not None and b.dim() >= 1:
            setattr(mod, name, b[idx].clone())
    if isinstance(mod, nn.GroupNorm):  # whole groups kept (the trace's chunks)
        mod.num_groups = len(idx) // (mod.num_channels // mod.num_groups)
        mod.num_channels = len(idx)
    for attr in ("num_features", "num_parameters"):
        if hasattr(mod, attr) and getattr(mod, attr) > 1:
            setattr(mod, attr, len(idx))
