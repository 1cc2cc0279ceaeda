"""The channel structure of a generator, read off its traced graph instead of its class.

Why: DMAD needs to know where a channel mask goes (each convolution's output, after its norm and
before its activation; never the layer that writes the image), which channels must be pruned
together (the writers of a residual stream all add into the same channels; a concatenation joins
slices of several writers; a depthwise or fixed blur filter keeps its input's channels) and which
layers it cannot reason about. Hand-written tables per class (``masks.mask_sites``) answer that
for the two families dmad ships; a user's CUT, pix2pixHD or in-house generator has none. So the
generator is traced with ``torch.fx`` at module level and every value is followed by *channel
space*: a convolution creates a new space (its output channels), channel-wise ops (norms,
activations, padding, dropout, resampling, depthwise and fixed-filter convolutions, scalar
arithmetic) keep it, an addition of two tensors merges their spaces (they must be pruned alike),
a concatenation lays spaces side by side, and PixelShuffle(r) right after a convolution makes
that convolution's space the shuffled one (each shuffled channel owns a block of r² outputs).
Some layers tie channels together: GroupNorm normalises its channels in groups, so its space
is pruned in whole groups (a group's channels share statistics); a grouped convolution mixes
the channels of each group, so its input and output spaces are kept whole, and so are the
spaces a shifting norm (BatchNorm, an affine Instance/GroupNorm) reads when it is not the mask
site of the convolution in front of it (a pre-norm block's norm on the residual stream: a
pruned channel would come out of it as β, not 0); PixelUnshuffle
(space-to-depth) is followed on the input image, whose channels are never pruned anyway.
Anything else stops with one line naming the layer and the op: a mask placed on a guess would
prune the wrong channels silently.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dmad.compress.errors import DmadError
from dmad.compress.masks import MaskedNorm

__all__ = ["Site", "Structure", "Trace", "close_chunks", "dead_region", "derive_structure",
           "trace_structure"]

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)
#: norms whose statistics and affine are per channel (a pruned channel leaves the others as
#: they were); ``Identity`` in a norm's place is where a mask goes when a layer has no norm
_NORMS = (nn.BatchNorm2d, nn.InstanceNorm2d, nn.SyncBatchNorm, nn.GroupNorm, MaskedNorm,
          nn.Identity)
_CHANNELWISE = (
    nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Hardswish,
    nn.Hardtanh, nn.PReLU, nn.Dropout, nn.Dropout2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
    nn.ZeroPad2d, nn.ConstantPad2d, nn.Upsample, nn.UpsamplingBilinear2d,
    nn.UpsamplingNearest2d, nn.AvgPool2d, nn.MaxPool2d,
)
_CHANNELWISE_FN = {
    F.relu, F.leaky_relu, torch.relu, torch.tanh, torch.sigmoid, F.gelu, F.silu, F.pad,
    F.interpolate, F.avg_pool2d, F.max_pool2d, F.dropout, torch.nn.functional.hardtanh,
}
_SCALAR_OPS = {operator.mul, operator.truediv, operator.add, operator.sub, torch.mul,
               torch.add, torch.sub, torch.div, operator.neg}
_METHODS = {"contiguous", "clamp", "clamp_", "relu", "tanh", "sigmoid", "mul", "div", "add",
            "sub"}


@dataclass
class Site:
    """Where one channel mask goes: after ``norm`` (the module path of the norm, or of the
    ``Identity`` in its place; ``None`` when the conv's output meets no norm, and the mask
    then follows the conv itself), masking the output channels of ``conv``."""

    name: str
    conv: str
    channels: int
    norm: str | None


@dataclass
class Structure:
    """What :func:`derive_structure` found. ``groups``: site names whose channels are one space
    (residual-stream writers), two or more each, in graph order. ``concats``: per channel
    concatenation, the site names (or ``input``/``fixed``) of its slices in order.
    ``output``: the convolutions that write the image (never masked). ``fixed``: sites whose
    channels are tied to the input or the output image (kept whole)."""

    sites: list[Site] = field(default_factory=list)
    groups: list[list[str]] = field(default_factory=list)
    concats: list[list[str]] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    #: sites pruned in whole chunks of channels (a GroupNorm's groups): site → chunk size
    chunks: dict[str, int] = field(default_factory=dict)
    #: depthwise and fixed-filter layers (a blur's buffer): they keep their input's channels
    channelwise_filters: list[str] = field(default_factory=list)
    raw_concats: list[list[int]] = field(default_factory=list, repr=False)

    def site(self, name: str) -> Site:
        return next(s for s in self.sites if s.name == name)


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, MaskedNorm) or super().is_leaf_module(m, qualname)


class _Spaces:
    """Union-find over channel spaces; space 0 is the input image."""

    def __init__(self) -> None:
        self.parent: list[int] = [0]
        self.channels: list[int | None] = [None]
        self.conv: list[str] = ["input"]
        #: a conv's space read through PixelShuffle(r): its r² output channels per kept channel
        self.block: dict[int, int] = {}
        #: spaces pruned only in whole chunks (GroupNorm groups) → the chunk size
        self.chunk: dict[int, int] = {}
        #: spaces kept whole (a grouped convolution reads or writes them)
        self.frozen: set[int] = set()
        #: the input image read through PixelUnshuffle(r): that space → r²
        self.unshuffled: dict[int, int] = {}

    def new(self, conv: str, channels: int | None) -> int:
        self.parent.append(len(self.parent))
        self.channels.append(channels)
        self.conv.append(conv)
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def tie(self, space: int, size: int) -> None:
        """Space ``space`` is pruned only in whole chunks of ``size`` channels."""
        self.chunk[space] = math.lcm(self.chunk.get(space, 1), size)

    def root_chunk(self, root: int) -> int:
        """The chunk every space of ``root`` allows (1: any channel alone); a root that is
        frozen, or whose chunk is all its channels, gives its channel count."""
        size = 1
        for s, c in self.chunk.items():
            if self.find(s) == root:
                size = math.lcm(size, c)
        if any(self.find(s) == root for s in self.frozen):
            size = max(size, int(self.channels[root] or 0))
        return size


def close_chunks(keep: torch.Tensor, size: int) -> torch.Tensor:
    """A keep set (bool per channel) widened to whole chunks of ``size`` channels: a chunk
    with any channel kept is kept whole (a GroupNorm group's channels share statistics)."""
    return keep.view(-1, size).any(1).repeat_interleave(size) if size > 1 else keep


def _unsupported(node: torch.fx.Node, what: str, why: str) -> DmadError:
    stack = node.meta.get("nn_module_stack") or {}
    where = node.meta.get("layer") or (next(reversed(stack.values()))[0] if stack
                                       else "the model's forward")
    return DmadError(f"{where}: {what} is not supported ({why}); dmad can place channel masks "
                     "only where every op is a convolution, a per-channel op, an addition or a "
                     "channel concatenation")


@dataclass
class Trace:
    """The traced graph with every value's channel spaces (what pruning walks)."""

    graph: torch.fx.Graph
    structure: Structure
    #: value → its channel spaces in channel order (``[]`` for non-tensors and constants)
    segs: dict[torch.fx.Node, list[int]]
    spaces: _Spaces
    #: producer space → the conv node that made it
    made: dict[int, torch.fx.Node]
    #: producer space → its site name (the norm's path, or the conv's)
    site_of_space: dict[int, str]

    def root(self, space: int) -> int:
        return self.spaces.find(space)

    def channels(self, space: int) -> int:
        return int(self.spaces.channels[space] or 0)

    def chunk(self, root: int) -> int:
        """The channels ``root`` is pruned in together (a GroupNorm's groups; 1: any)."""
        return self.spaces.root_chunk(root)


def trace_structure(model: nn.Module) -> Trace:
    """:func:`derive_structure` with the graph and the channel spaces behind it."""
    graph = _Tracer().trace(model)
    mods = dict(model.named_modules())
    spaces = _Spaces()
    segs: dict[torch.fx.Node, list[int]] = {}
    made: dict[int, torch.fx.Node] = {}
    st = Structure()
    for node in graph.nodes:
        segs[node] = _follow(node, mods, segs, spaces, made, st)
    names = _finish(graph, mods, segs, spaces, made, st)
    return Trace(graph, st, segs, spaces, made, names)


def derive_structure(model: nn.Module) -> Structure:
    """The :class:`Structure` of ``model`` (module doc). Raises :class:`DmadError` naming the
    first layer and op it cannot follow."""
    return trace_structure(model).structure


def _tensor_args(node: torch.fx.Node) -> list[torch.fx.Node]:
    return [a for a in node.args if isinstance(a, torch.fx.Node)]


def _follow(node: torch.fx.Node, mods: dict[str, nn.Module], segs: dict[Any, list[int]],
            spaces: _Spaces, made: dict[int, torch.fx.Node], st: Structure) -> list[int]:
    """The channel spaces of ``node``'s value (one per channel slice)."""
    if node.op == "placeholder":
        return [0]
    if node.op in ("get_attr", "output"):
        return []
    ins = _tensor_args(node)
    if node.op == "call_module":
        m = mods[str(node.target)]
        node.meta["layer"] = str(node.target)
        if isinstance(m, MaskedNorm):
            m = m.norm  # the masked layer (a norm; a conv or a shuffle no norm follows)
        if isinstance(m, _CONVS):
            depthwise = m.groups == m.in_channels == m.out_channels and m.groups > 1
            if depthwise:
                st.channelwise_filters.append(str(node.target))
                return segs[ins[0]]
            src = segs[ins[0]]
            if len(src) == 1 and (src == [0] or spaces.channels[src[0]] is None):
                spaces.channels[src[0]] = m.in_channels  # the image's channels, first read here
                if src[0] in spaces.unshuffled and spaces.channels[0] is None:
                    spaces.channels[0] = m.in_channels // spaces.unshuffled[src[0]]
            s = spaces.new(str(node.target), m.out_channels)
            made[s] = node
            if m.groups != 1:  # grouped: each output group mixes its input group, kept whole
                spaces.frozen.update([*src, s])
            return [s]
        if isinstance(m, _NORMS) and _shifts_zero(m) and not _after_conv(ins[0], mods):
            spaces.frozen.update(segs[ins[0]])  # its β would reach a pruned channel's readers
        if isinstance(m, nn.GroupNorm):
            return _grouped_norm(node, m, segs[ins[0]], spaces)
        if isinstance(m, _NORMS + _CHANNELWISE):
            return segs[ins[0]]
        if isinstance(m, nn.PixelShuffle):
            return _shuffled(node, ins[0], m.upscale_factor ** 2, segs, spaces, made)
        if isinstance(m, nn.PixelUnshuffle):
            return _unshuffled(node, m.downscale_factor ** 2, segs[ins[0]], spaces)
        raise _unsupported(node, f"layer {type(m).__name__}", "unknown to the channel tracer")
    return _function(node, ins, segs, spaces, st)


def _shuffled(node: torch.fx.Node, src: torch.fx.Node, r2: int, segs: dict[Any, list[int]],
              spaces: _Spaces, made: dict[int, torch.fx.Node]) -> list[int]:
    """PixelShuffle(r) right after a convolution: the conv's space becomes the shuffled one
    (its channels / r²), each kept channel owning a block of r² conv outputs."""
    seg = segs[src]
    if len(seg) != 1 or made.get(seg[0]) is not src or len(src.users) != 1:
        raise _unsupported(node, "PixelShuffle", "only right after a convolution that feeds "
                           "nothing else (its channels are pruned in blocks of r²)")
    s = seg[0]
    spaces.channels[s] = int(spaces.channels[s] or 0) // r2
    spaces.block[s] = r2
    return [s]


def _shifts_zero(m: nn.Module) -> bool:
    """A norm whose output for an all-zero channel is not zero (a shift β, BatchNorm's running
    mean): pruned channels must not reach it, unless a mask after it zeroes them again."""
    return isinstance(m, nn.BatchNorm2d | nn.SyncBatchNorm) or (
        isinstance(m, nn.InstanceNorm2d | nn.GroupNorm) and bool(m.affine))


def _after_conv(src: torch.fx.Node, mods: dict[str, nn.Module]) -> bool:
    """``src`` is a convolution's output (or its PixelShuffle) that feeds nothing else: the
    norm reading it is that convolution's mask site."""
    if src.op != "call_module" or len(src.users) != 1:
        return False
    m = _unmasked(mods[str(src.target)])
    if isinstance(m, nn.PixelShuffle):
        return _after_conv(src.args[0], mods)  # type: ignore[arg-type]
    return isinstance(m, _CONVS)


def _grouped_norm(node: torch.fx.Node, m: nn.GroupNorm, seg: list[int], spaces: _Spaces
                  ) -> list[int]:
    """GroupNorm: its space may lose only whole groups (the others' statistics unchanged)."""
    if len(seg) != 1:
        raise _unsupported(node, "GroupNorm over concatenated channels",
                           "its groups would straddle the concatenated slices")
    spaces.tie(seg[0], m.num_channels // m.num_groups)
    return seg


def _unshuffled(node: torch.fx.Node, r2: int, seg: list[int], spaces: _Spaces) -> list[int]:
    """PixelUnshuffle(r) on the input image: a new fixed space of r² channels per channel."""
    if any(spaces.find(s) != spaces.find(0) for s in seg):
        raise _unsupported(node, "PixelUnshuffle on pruned channels", "it moves blocks of "
                           "space into channels; it is followed on the input image only")
    known = [spaces.channels[s] for s in seg]
    s = spaces.new(str(node.target), sum(known) * r2 if None not in known else None)  # type: ignore[arg-type]
    spaces.union(s, 0)
    if seg == [0]:
        spaces.unshuffled[s] = r2
    return [s]


def _function(node: torch.fx.Node, ins: list[torch.fx.Node], segs: dict[Any, list[int]],
              spaces: _Spaces, st: Structure) -> list[int]:
    """call_function / call_method nodes: adds merge spaces, cat concatenates, channel-wise
    functions keep them, a fixed depthwise filter (a blur of anti-aliased down/up-sampling,
    ``F.conv2d`` with a buffer and ``groups`` = channels) keeps them too."""
    t = node.target
    if (t is getattr and node.args[1] in ("shape", "dtype", "device")) or t in ("size", "dim"):
        return []  # a shape query: no channels flow through it
    if node.op == "call_method":
        if t in _METHODS and (len(ins) == 1 or t in ("clamp", "clamp_")):
            return segs[ins[0]]
        if t in ("add", "sub", "mul") and len(ins) == 2:
            return _merge(node, ins, segs, spaces)
        raise _unsupported(node, f"method .{t}()", "not a per-channel op")
    if t is torch.cat or t is torch.concat:
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if dim not in (1, -3):
            raise _unsupported(node, f"torch.cat on dim {dim}", "only channel concatenation")
        joined = [s for a in node.args[0] for s in segs[a]]  # type: ignore[union-attr]
        st.raw_concats.append(joined)  # spaces; named by site in _finish
        return joined
    if t in (operator.add, torch.add, operator.sub, torch.sub, operator.mul, torch.mul) \
            and len(ins) == 2:
        return _merge(node, ins, segs, spaces)
    if t in _SCALAR_OPS and len(ins) == 1:
        return segs[ins[0]]
    if t is operator.getitem and ins and not segs[ins[0]]:
        return []  # an item of a shape
    if t is operator.getitem and _keeps_channels(node.args[1]):
        return segs[ins[0]]  # a spatial crop, x[:, :, 1:, 1:]
    if t in _CHANNELWISE_FN and ins:
        return segs[ins[0]]
    if t in (F.conv2d, F.conv_transpose2d) and len(ins) >= 2 and ins[1].op == "get_attr":
        groups = node.kwargs.get("groups", node.args[6] if len(node.args) > 6 else 1)
        if isinstance(groups, int) and groups > 1:
            st.channelwise_filters.append(str(ins[1].target))
            return segs[ins[0]]
    name = getattr(t, "__name__", str(t))
    raise _unsupported(node, f"function {name}", "not a per-channel op")


def _keeps_channels(index: Any) -> bool:
    """An index that takes every image and every channel (``[:, :, a:b, c:d]``)."""
    full = slice(None, None, None)
    return isinstance(index, tuple) and len(index) >= 2 and index[0] == full \
        and index[1] == full and all(isinstance(i, slice) for i in index[2:])


def _merge(node: torch.fx.Node, ins: list[torch.fx.Node], segs: dict[Any, list[int]],
           spaces: _Spaces) -> list[int]:
    a, b = segs[ins[0]], segs[ins[1]]
    if not a or not b:
        return a or b  # a constant (a buffer, a parameter) applied per channel
    if len(a) != len(b):
        raise _unsupported(node, "an addition of differently concatenated tensors",
                           "its channel slices do not line up")
    for x, y in zip(a, b, strict=True):
        spaces.union(x, y)
    return a


def _site_of(conv: torch.fx.Node, mods: dict[str, nn.Module]) -> tuple[str, str | None]:
    """(mask site name, norm path): the norm (or Identity in its place) that alone reads the
    conv's output, else the conv itself."""
    users = list(conv.users)
    shuffle = len(users) == 1 and users[0].op == "call_module" and isinstance(
        _unmasked(mods[str(users[0].target)]), nn.PixelShuffle)
    if shuffle:  # the mask goes on the shuffled channels: after the norm, else the shuffle
        conv, users = users[0], list(users[0].users)
    if len(users) == 1 and users[0].op == "call_module" \
            and isinstance(mods[str(users[0].target)], _NORMS):
        return str(users[0].target), str(users[0].target)
    return str(conv.target), None


def _unmasked(m: nn.Module) -> nn.Module:
    return m.norm if isinstance(m, MaskedNorm) else m


def _finish(graph: torch.fx.Graph, mods: dict[str, nn.Module], segs: dict[Any, list[int]],
            spaces: _Spaces, made: dict[int, torch.fx.Node], st: Structure) -> dict[int, str]:
    """Sites in graph order, groups, fixed spaces (tied to the input or the output image) and
    the concatenations resolved to site names."""
    out = next(n for n in graph.nodes if n.op == "output")
    out_spaces = {spaces.find(s) for a in _tensor_args(out) for s in segs[a]}
    whole = {spaces.find(0)} | {r for r in {spaces.find(s) for s in made}
                                if spaces.root_chunk(r) >= int(spaces.channels[r] or 0)}
    st.output = [spaces.conv[s] for s in sorted(made) if spaces.find(s) in out_spaces]
    name_of: dict[int, str] = {}
    for s, node in sorted(made.items()):
        name, norm = _site_of(node, mods)
        name_of[s] = name
        root = spaces.find(s)
        if root in out_spaces:
            continue
        if root in whole:  # tied to the image, or kept whole (a grouped conv, GroupNorm(1))
            st.fixed.append(name)
            continue
        st.sites.append(Site(name, str(node.target), int(spaces.channels[s] or 0), norm))
        if spaces.root_chunk(root) > 1:
            st.chunks[name] = spaces.root_chunk(root)
    by_root: dict[int, list[str]] = {}
    for s in sorted(made):
        by_root.setdefault(spaces.find(s), []).append(name_of[s])
    st.groups = [v for r, v in by_root.items() if len(v) > 1 and r not in out_spaces
                 and r not in whole]
    st.concats = [[name_of.get(i, "input") for i in parts] for parts in st.raw_concats]
    return name_of


def _is_add(node: torch.fx.Node) -> bool:
    return (node.op == "call_function" and node.target in (operator.add, torch.add)) or \
        (node.op == "call_method" and node.target == "add")


def dead_region(graph: torch.fx.Graph, seeds: set[str]
                ) -> tuple[set[torch.fx.Node], list[tuple[torch.fx.Node, torch.fx.Node]]] | None:
    """What a zero output of the layers ``seeds`` (module paths) leaves constant, for folding.

    The region is every node computed only from the seeds and constants; it is foldable when it
    meets live values only in additions (a residual branch added back to its stream), each of
    which then adds a constant. Returns (the region, its additions as (addition, dead operand)),
    or None when it reaches anything else (the output, a concatenation, a product)."""
    dead: set[torch.fx.Node] = set()
    for node in graph.nodes:
        if node.op == "call_module" and str(node.target) in seeds:
            dead.add(node)
            continue
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        ins = [a for a in node.all_input_nodes if a.op != "get_attr"]
        if ins and all(a in dead for a in ins):
            dead.add(node)
    if not dead:
        return None
    folds: list[tuple[torch.fx.Node, torch.fx.Node]] = []
    for node in dead:
        for user in node.users:
            if user in dead:
                continue
            args = [a for a in user.args if isinstance(a, torch.fx.Node)]
            if not (_is_add(user) and len(user.args) == 2 and len(args) == 2
                    and sum(a in dead for a in args) == 1):
                return None
            folds.append((user, node))
    return dead, folds
