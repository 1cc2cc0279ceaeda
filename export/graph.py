"""PyTorch generator → a small NHWC graph (JSON + weights), the input of :mod:`export.tfgraph`.

Why our own graph instead of onnx2tf's: onnx2tf receives an NCHW ONNX graph and has to *guess*
which axis of every tensor is the channel axis when it transposes to TensorFlow's NHWC. The guess
fails when a channel count equals a spatial size (the demo's ResNet-9 ngf 32 at 256² came out
1.9 wrong), so export worked at some sizes and not others. Here nothing is guessed: the model is
traced with ``torch.fx`` at module granularity, every value is a 4-D image tensor whose channel
axis is known (dim 1 in PyTorch, axis 3 in the graph), and each layer maps to exactly one NHWC
operation with its weights re-laid out once (OIHW → HWIO). The same graph is then lowered by
TensorFlow's own converter for every TFLite variant (fp32, fp16, dynamic, int8), so the model is
converted once.

Graph ops (all NHWC, batch 1): ``conv`` (any stride/padding/dilation; groups 1, depthwise or
grouped; also a fixed filter a module holds as a buffer, such as CUT's anti-aliasing blur),
``deconv`` (ConvTranspose2d; a depthwise transposed fixed filter becomes one depthwise conv per
output phase, depth-to-space and a crop), ``pad`` (reflect, replicate or zero), ``inorm``
(InstanceNorm, per-channel eps so that :mod:`export.equalize` can rescale exactly), ``gnorm``
(GroupNorm: statistics per group of channels), ``affine`` (per-channel scale and shift: eval
BatchNorm that could not be folded, a pruned model's carried mask scales), ``relu``, ``leaky``,
``tanh``, ``sigmoid``, ``silu``, ``add``, ``concat``, ``d2s`` (PixelShuffle as depth-to-space,
with the producing conv's channels permuted to TensorFlow's order), ``s2d`` (PixelUnshuffle as
space-to-depth, the reading convs' input channels permuted the same way), ``resize`` (integer
nearest or bilinear upsampling), ``crop`` (``x[:, :, a:b, c:d]``).
BatchNorm after a conv is folded into it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from dmad.compress.errors import DmadError
from dmad.compress.graph_prune import ChannelScale, ChannelShift

__all__ = ["Graph", "Node", "trace"]

#: Modules kept whole by the tracer (their insides are never traced).
_LEAVES: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d, nn.BatchNorm2d, nn.ReflectionPad2d,
    nn.ZeroPad2d, nn.ReplicationPad2d, nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Dropout,
    nn.Identity, nn.PixelShuffle, nn.PixelUnshuffle, nn.GroupNorm, nn.SiLU, nn.Upsample,
    nn.UpsamplingBilinear2d, nn.UpsamplingNearest2d, ChannelScale, ChannelShift,
)


@dataclass
class Node:
    """One NHWC operation: ``op``, input node ids, attributes, weight arrays (numpy)."""

    id: int
    op: str
    inputs: list[int]
    attrs: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = ""
    channels: int = 0
    #: the torch.fx node this value comes from (activation statistics, :mod:`export.equalize`)
    fx_name: str = ""


@dataclass
class Graph:
    """Nodes in topological order; node 0 is the input, ``output`` the id of the result."""

    nodes: list[Node]
    output: int
    input_shape: tuple[int, int, int, int]  # NHWC
    #: the traced PyTorch model (NCHW), to measure activations of graph values
    module: torch.fx.GraphModule | None = None

    def activations(self, images: np.ndarray, ids: list[int],
                    reduce: Any) -> dict[int, Any]:
        """``reduce(acc, tensor)`` folded over ``images`` (N,C,H,W) for the values of graph
        nodes ``ids`` (NCHW torch tensors, as PyTorch computes them); ``{id: acc}``."""
        assert self.module is not None
        want = {self.node(i).fx_name: i for i in ids}
        acc: dict[int, Any] = {}

        class Rec(torch.fx.Interpreter):
            def run_node(self, n: torch.fx.Node) -> Any:
                out = super().run_node(n)
                if n.name in want:
                    nid = want[n.name]
                    acc[nid] = reduce(acc.get(nid), out.detach())
                return out

        with torch.no_grad():
            for i in range(len(images)):
                Rec(self.module).run(torch.from_numpy(images[i : i + 1]))
        return acc

    def users(self, nid: int) -> list[Node]:
        return [n for n in self.nodes if nid in n.inputs]

    def node(self, nid: int) -> Node:
        for n in self.nodes:
            if n.id == nid:
                return n
        raise KeyError(nid)

    def to_json(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(graph, arrays)``: a JSON-able description and the weights keyed ``"<id>.<key>"``."""
        arrays: dict[str, np.ndarray] = {}
        nodes = []
        for n in self.nodes:
            for k, v in n.weights.items():
                arrays[f"{n.id}.{k}"] = np.ascontiguousarray(v, dtype=np.float32)
            nodes.append({"id": n.id, "op": n.op, "inputs": n.inputs, "attrs": n.attrs,
                          "weights": sorted(n.weights), "name": n.name})
        return ({"nodes": nodes, "output": self.output,
                 "input_shape": list(self.input_shape)}, arrays)

    def ops(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.op] = out.get(n.op, 0) + 1
        return out


def _subpixel_type() -> type[nn.Module]:
    from dmad.export.subpixel import SubPixelConvTranspose2d

    return SubPixelConvTranspose2d


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, (*_LEAVES, _subpixel_type()))
                or super().is_leaf_module(m, qualname))


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to(torch.float32).cpu().numpy().copy()


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv(m: nn.Conv2d, cin: int) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    if m.padding_mode != "zeros":
        raise DmadError(f"Conv2d padding_mode {m.padding_mode!r} is not supported by export")
    if isinstance(m.padding, str):
        raise DmadError("Conv2d padding='same'/'valid' strings are not supported by export")
    kh, kw = _pair(m.kernel_size)
    ph, pw = _pair(m.padding)
    w = _np(m.weight)
    assert w is not None
    depthwise = m.groups > 1 and m.groups == cin == m.in_channels and \
        m.out_channels % cin == 0
    if depthwise:
        mult = m.out_channels // cin
        # torch [cin*mult, 1, kh, kw] → TF depthwise [kh, kw, cin, mult]
        hwio = w.reshape(cin, mult, kh, kw).transpose(2, 3, 0, 1)
    else:
        hwio = w.transpose(2, 3, 1, 0)
    weights = {"w": hwio}
    b = _np(m.bias)
    if b is not None:
        weights["b"] = b
    attrs = {"stride": list(_pair(m.stride)), "dilation": list(_pair(m.dilation)),
             "pad": [ph, ph, pw, pw], "depthwise": depthwise}
    if m.groups > 1 and not depthwise:  # HWIO [kh, kw, cin / groups, cout]
        attrs["groups"] = int(m.groups)
    return "conv", attrs, weights


def _deconv(m: nn.ConvTranspose2d) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    if m.groups != 1 or _pair(m.dilation) != (1, 1):
        raise DmadError("ConvTranspose2d with groups or dilation is not supported by export")
    w = _np(m.weight)  # [cin, cout, kh, kw]
    assert w is not None
    weights = {"w": w.transpose(2, 3, 1, 0)}  # TF conv2d_transpose filter [kh, kw, cout, cin]
    b = _np(m.bias)
    if b is not None:
        weights["b"] = b
    attrs = {"stride": list(_pair(m.stride)), "pad": list(_pair(m.padding)),
             "output_padding": list(_pair(m.output_padding))}
    return "deconv", attrs, weights


def _out_channels(op: str, attrs: dict[str, Any], weights: dict[str, np.ndarray], cin: int) -> int:
    if op == "conv":
        w = weights["w"]
        return int(w.shape[2] * w.shape[3]) if attrs["depthwise"] else int(w.shape[3])
    if op == "deconv":
        return int(weights["w"].shape[2])
    if op == "d2s":
        return cin // (attrs["r"] ** 2)
    if op == "s2d":
        return cin * attrs["r"] ** 2
    return cin


def _module_op(m: nn.Module, name: str, cin: int
               ) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    """The graph op of a one-input layer: (op, attrs, weights); one line when it has none."""
    if isinstance(m, nn.Conv2d):
        return _conv(m, cin)
    if isinstance(m, nn.ConvTranspose2d):
        return _deconv(m)
    if isinstance(m, (nn.ReflectionPad2d, nn.ZeroPad2d, nn.ReplicationPad2d)):
        left, right, top, bottom = (int(p) for p in m.padding)
        mode = {nn.ReflectionPad2d: "reflect", nn.ReplicationPad2d: "replicate"}.get(
            type(m), "zero")
        return "pad", {"mode": mode, "pad": [top, bottom, left, right]}, {}
    if isinstance(m, nn.Upsample):
        return "resize", _resize_attrs(name, m.mode, m.scale_factor, m.align_corners), {}
    if isinstance(m, ChannelScale):
        scale = _np(m.scale)
        assert scale is not None
        return "affine", {}, {"scale": scale, "shift": np.zeros_like(scale)}
    if isinstance(m, ChannelShift):  # a folded residual branch: its constant
        shift = _np(m.shift)
        assert shift is not None
        return "affine", {}, {"scale": np.ones_like(shift), "shift": shift}
    if isinstance(m, nn.InstanceNorm2d):
        if m.track_running_stats:
            raise DmadError(f"export: {name}: InstanceNorm2d with running statistics "
                            "is not supported (import drops them: dmad import)")
        wts = {"eps": np.full(cin, m.eps, np.float32)}
        if m.affine:
            wts["gamma"], wts["beta"] = _np(m.weight), _np(m.bias)  # type: ignore[assignment]
        return "inorm", {}, wts
    if isinstance(m, nn.BatchNorm2d):
        if m.running_mean is None or m.running_var is None:
            raise DmadError(f"export: {name}: BatchNorm2d without running statistics")
        inv = 1.0 / np.sqrt(_np(m.running_var) + m.eps)  # type: ignore[operator]
        g = _np(m.weight) if m.affine else np.ones(cin, np.float32)
        b = _np(m.bias) if m.affine else np.zeros(cin, np.float32)
        scale = (g * inv).astype(np.float32)  # type: ignore[operator]
        shift = (b - _np(m.running_mean) * scale).astype(np.float32)  # type: ignore[operator]
        return "affine", {}, {"scale": scale, "shift": shift}
    if isinstance(m, nn.GroupNorm):
        wts = {"eps": np.full(cin, m.eps, np.float32)}
        if m.affine:
            wts["gamma"] = _np(m.weight)  # type: ignore[assignment]
            wts["beta"] = _np(m.bias) if m.bias is not None else np.zeros(cin, np.float32)  # type: ignore[assignment]
        return "gnorm", {"groups": int(m.num_groups)}, wts
    if isinstance(m, nn.PixelUnshuffle):
        return "s2d", {"r": int(m.downscale_factor)}, {}
    simple = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu"}
    for cls, op in simple.items():
        if isinstance(m, cls):
            return op, {}, {}
    if isinstance(m, nn.LeakyReLU):
        return "leaky", {"alpha": float(m.negative_slope)}, {}
    if isinstance(m, nn.PixelShuffle):
        return "d2s", {"r": int(m.upscale_factor)}, {}
    raise DmadError(f"export: layer {name} ({type(m).__name__}) has no mapping")


def _resize_attrs(name: str, mode: str, scale: Any, align_corners: bool | None
                  ) -> dict[str, Any]:
    """An integer upsampling (nearest, or bilinear as PyTorch computes it)."""
    sh, sw = _pair(scale) if not isinstance(scale, float) else (scale, scale)
    if mode not in ("nearest", "bilinear") or float(sh) != int(sh) or float(sw) != int(sw):
        raise DmadError(f"export: {name}: upsampling {mode!r} by {scale} (only nearest or "
                        "bilinear by an integer factor)")
    return {"mode": mode, "scale": [int(sh), int(sw)], "align_corners": bool(align_corners)}


class _Builder:
    """The NHWC graph being built from fx nodes: node ids by fx name, channels per node."""

    def __init__(self, channels: int, model: nn.Module | None = None) -> None:
        self.model = model
        self.c = channels
        self.nodes: list[Node] = []
        self.ids: dict[str, int] = {}
        self.chans: dict[int, int] = {}
        self.current = ""  # the fx node being mapped (recorded on every graph node)
        self.shapes: dict[int, tuple[int, int]] = {}  # node id → (height, width)

    def add(self, op: str, inputs: list[int], attrs: dict[str, Any] | None = None,
            weights: dict[str, np.ndarray] | None = None, name: str = "") -> int:
        nid = len(self.nodes)
        cin = self.chans.get(inputs[0], self.c) if inputs else self.c
        a, wts = attrs or {}, weights or {}
        ch = sum(self.chans[i] for i in inputs) if op == "concat" else \
            _out_channels(op, a, wts, cin)
        self.nodes.append(Node(nid, op, inputs, a, wts, name, ch, fx_name=self.current))
        self.chans[nid] = ch
        return nid

    def arg_id(self, a: Any, where: str) -> int:
        if not isinstance(a, torch.fx.Node) or a.name not in self.ids:
            raise DmadError(f"export: {where}: unsupported argument {a!r}")
        return self.ids[a.name]

    def module(self, node: torch.fx.Node, m: nn.Module) -> None:
        x = self.arg_id(node.args[0], str(node.target))
        name = str(node.target)
        if isinstance(m, (nn.Identity, nn.Dropout)):
            self.ids[node.name] = x
            return
        if isinstance(m, _subpixel_type()):
            # zero pad → conv → crop (folded into the padding) → depth-to-space
            op, attrs, wts = _conv(m.conv, self.chans[x])
            kh, kw = _pair(m.conv.kernel_size)
            left, _right, top, _bottom = m.pad
            oh, ow = m.crop
            if top < oh or left < ow:
                raise DmadError(f"export: {name}: sub-pixel crop past the padding")
            top, left = top - oh, left - ow
            attrs["pad"] = [top, kh - 1 - top, left, kw - 1 - left]
            conv_id = self.add(op, [x], attrs, wts, f"{name}.conv")
            self.ids[node.name] = self.add("d2s", [conv_id], {"r": int(m.stride)}, {},
                                           f"{name}.shuffle")
            return
        op, attrs, wts = _module_op(m, name, self.chans[x])
        self.ids[node.name] = self.add(op, [x], attrs, wts, name)

    def function(self, node: torch.fx.Node) -> None:
        f = node.target
        if f in (operator.add, torch.add) and len(node.args) == 2 and not node.kwargs:
            self.ids[node.name] = self.add("add", [self.arg_id(a, "add") for a in node.args])
            return
        if f is torch.cat:
            seq = node.args[0]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if dim not in (1, -3):
                raise DmadError(f"export: torch.cat over dim {dim} (only channels, dim 1)")
            self.ids[node.name] = self.add("concat", [self.arg_id(a, "cat") for a in seq])
            return
        unary = {torch.tanh: "tanh", torch.relu: "relu", F.relu: "relu",
                 torch.sigmoid: "sigmoid", F.silu: "silu"}
        if f in unary:
            self.ids[node.name] = self.add(unary[f], [self.arg_id(node.args[0], str(f))])
            return
        if f is F.leaky_relu:
            slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope",
                                                                             0.01)
            self.ids[node.name] = self.add("leaky", [self.arg_id(node.args[0], "leaky_relu")],
                                           {"alpha": float(slope)})
            return
        if f in (F.conv2d, F.conv_transpose2d) and self._fixed_filter(node):
            return
        if f is operator.getitem and self._crop(node):
            return
        if f is F.interpolate:
            kw = _call_args(node, ("input", "size", "scale_factor", "mode", "align_corners"))
            attrs = _resize_attrs(node.name, kw.get("mode", "nearest"), kw.get("scale_factor"),
                                  kw.get("align_corners"))
            self.ids[node.name] = self.add("resize", [self.arg_id(node.args[0], "interpolate")],
                                           attrs)
            return
        raise DmadError(f"export: function {getattr(f, '__name__', f)} has no mapping")

    def _fixed_filter(self, node: torch.fx.Node) -> bool:
        """``F.conv2d`` / ``F.conv_transpose2d`` with a filter the module holds as a buffer
        (an anti-aliasing blur): a depthwise conv, or a transposed one in its sub-pixel form."""
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups") \
            if node.target is F.conv2d else \
            ("input", "weight", "bias", "stride", "padding", "output_padding", "groups",
             "dilation")
        kw = _call_args(node, names)
        w_node = kw.get("weight")
        if not (isinstance(w_node, torch.fx.Node) and w_node.op == "get_attr") \
                or kw.get("bias") is not None or self.model is None:
            return False
        w = _np(_get_attr(self.model, str(w_node.target)))
        assert w is not None
        x = self.arg_id(kw["input"], str(w_node.target))
        groups = int(kw.get("groups", 1))
        cin = self.chans[x]
        if groups != cin or w.shape[1] != 1:
            raise DmadError(f"export: {w_node.target}: a fixed filter must be depthwise")
        name = str(w_node.target).rsplit(".", 1)[0]
        if node.target is F.conv2d:
            ph, pw = _pair(kw.get("padding", 0))
            attrs = {"stride": list(_pair(kw.get("stride", 1))),
                     "dilation": list(_pair(kw.get("dilation", 1))),
                     "pad": [ph, ph, pw, pw], "depthwise": True}
            wts = {"w": w.reshape(cin, 1, *w.shape[2:]).transpose(2, 3, 0, 1)}
            self.ids[node.name] = self.add("conv", [x], attrs, wts, name)
        else:
            self.ids[node.name] = self._dw_deconv(x, w, kw, name)
        return True

    def _dw_deconv(self, x: int, w: np.ndarray, kw: dict[str, Any], name: str) -> int:
        """A depthwise transposed conv, exactly, as TensorFlow has none: one depthwise conv per
        output phase (the filter's taps of that phase, flipped), the phases concatenated in
        depth-to-space order, depth-to-space, then the crop PyTorch's padding describes."""
        (sh, sw), (ph, pw) = _pair(kw.get("stride", 1)), _pair(kw.get("padding", 0))
        oh, ow = _pair(kw.get("output_padding", 0))
        if sh != sw or oh or ow or _pair(kw.get("dilation", 1)) != (1, 1):
            raise DmadError(f"export: {name}: transposed fixed filter with unequal strides, "
                            "output padding or dilation")
        s, (kh, kwd) = sh, w.shape[2:]
        th, tw = -(-kh // s), -(-kwd // s)  # taps per phase
        wp = np.zeros((w.shape[0], 1, th * s, tw * s), np.float32)
        wp[:, :, :kh, :kwd] = w
        phases = []
        for rh in range(s):
            for rw in range(s):
                k = wp[:, 0, rh::s, rw::s][:, ::-1, ::-1]  # [C, th, tw], flipped
                attrs = {"stride": [1, 1], "dilation": [1, 1],
                         "pad": [th - 1, th - 1, tw - 1, tw - 1], "depthwise": True}
                phases.append(self.add("conv", [x], attrs,
                                       {"w": np.ascontiguousarray(k.transpose(1, 2, 0)[:, :, :,
                                                                                      None])},
                                       f"{name}.phase{rh}{rw}"))
        cat = self.add("concat", phases, name=f"{name}.phases")
        d2s = self.add("d2s", [cat], {"r": s, "tf_order": True}, {}, f"{name}.shuffle")
        h, wd = self.shapes[x]
        full_h, full_w = (h - 1) * s + kh, (wd - 1) * s + kwd
        return self.add("crop", [d2s], {"top": ph, "left": pw, "height": full_h - 2 * ph,
                                        "width": full_w - 2 * pw}, {}, f"{name}.crop")

    def _crop(self, node: torch.fx.Node) -> bool:
        """``x[:, :, a:b, c:d]``: a spatial crop (every image and channel kept)."""
        src, index = node.args[0], node.args[1]
        if not (isinstance(index, tuple) and len(index) == 4
                and all(isinstance(i, slice) and i.step in (None, 1) for i in index)
                and index[0] == slice(None) and index[1] == slice(None)):
            return False
        x = self.arg_id(src, "crop")
        h, w = self.shapes[x]
        rows, cols = range(h)[index[2]], range(w)[index[3]]
        self.ids[node.name] = self.add("crop", [x], {"top": rows.start, "left": cols.start,
                                                     "height": len(rows), "width": len(cols)})
        return True


def _call_args(node: torch.fx.Node, names: tuple[str, ...]) -> dict[str, Any]:
    """A call's arguments by parameter name (positional ones named in order)."""
    return {**dict(zip(names, node.args, strict=False)), **node.kwargs}


def _get_attr(model: nn.Module, path: str) -> torch.Tensor:
    owner, _, name = path.rpartition(".")
    return getattr(model.get_submodule(owner) if owner else model, name)


def trace(model: nn.Module, input_shape: tuple[int, int, int, int]) -> Graph:
    """The NHWC graph of ``model`` (eval) for an NCHW ``input_shape``; one-line error if a layer
    or a function has no mapping."""
    model = model.eval()
    try:
        fx_graph = _Tracer().trace(model)
    except Exception as exc:
        raise DmadError(f"export: cannot trace the generator with torch.fx ({exc})") from None
    mods = dict(model.named_modules())
    n, c, h, w = input_shape
    gm = torch.fx.GraphModule(model, fx_graph)
    with torch.no_grad():
        from torch.fx.passes.shape_prop import ShapeProp

        p = next(iter(model.parameters()), None)
        ShapeProp(gm).propagate(torch.zeros(1, c, h, w, dtype=p.dtype if p is not None
                                            else torch.float32,
                                            device=p.device if p is not None else "cpu"))
    b = _Builder(c, model)
    out_id: int | None = None
    for node in fx_graph.nodes:
        b.current = node.name
        if node.op == "placeholder":
            if b.nodes:
                raise DmadError("export: the generator must take exactly one input")
            b.ids[node.name] = b.add("input", [], name="input")
        elif node.op == "output":
            out_id = b.arg_id(node.args[0], "output")
        elif node.op == "call_module":
            b.module(node, mods[str(node.target)])
        elif node.op == "call_function":
            b.function(node)
        elif node.op == "get_attr":
            continue  # a fixed filter: read by the call that uses it
        else:
            raise DmadError(f"export: unsupported graph node {node.op} {node.target}")
        meta = node.meta.get("tensor_meta")
        if node.name in b.ids and hasattr(meta, "shape") and len(meta.shape) == 4:
            b.shapes[b.ids[node.name]] = (int(meta.shape[2]), int(meta.shape[3]))
    if out_id is None:
        raise DmadError("export: the generator returns nothing")
    g = Graph(b.nodes, out_id, (n, h, w, c), gm)
    _fold_batchnorm(g)
    _order_pixel_shuffle(g)
    _order_space_to_depth(g)
    return g


def _fold_batchnorm(g: Graph) -> None:
    """conv → affine (BatchNorm) with the conv's output used only there: one conv."""
    for n in list(g.nodes):
        if n.op != "affine" or len(n.inputs) != 1:
            continue
        src = g.node(n.inputs[0])
        if src.op not in ("conv", "deconv") or len(g.users(src.id)) != 1:
            continue
        s, t = n.weights["scale"], n.weights["shift"]
        w = src.weights["w"]
        if src.op == "conv" and src.attrs["depthwise"]:
            w = w * s.reshape(w.shape[2], w.shape[3])[None, None]
        elif src.op == "conv":
            w = w * s[None, None, None, :]
        else:
            w = w * s[None, None, :, None]
        b = src.weights.get("b", np.zeros_like(s))
        src.weights["w"] = w.astype(np.float32)
        src.weights["b"] = (b * s + t).astype(np.float32)
        src.fx_name = n.fx_name  # the conv's value is now the norm's
        _bypass(g, n, src.id)


def _bypass(g: Graph, dead: Node, by: int) -> None:
    for u in g.nodes:
        u.inputs = [by if i == dead.id else i for i in u.inputs]
    if g.output == dead.id:
        g.output = by
    g.nodes.remove(dead)


def _order_pixel_shuffle(g: Graph) -> None:
    """PyTorch's PixelShuffle reads channel ``c·r² + i·r + j``; TensorFlow's depth_to_space reads
    ``(i·r + j)·C + c``. Permute the producing conv's output channels once so d2s is exact."""
    for n in g.nodes:
        if n.op != "d2s" or n.attrs.get("tf_order"):
            continue
        src = g.node(n.inputs[0])
        if src.op != "conv" or src.attrs["depthwise"] or len(g.users(src.id)) != 1:
            raise DmadError("export: PixelShuffle must follow a plain convolution")
        r = n.attrs["r"]
        cout = src.weights["w"].shape[3]
        c = cout // (r * r)
        perm = np.arange(cout).reshape(c, r * r).T.reshape(-1)  # new k=(ij)*C+c ← old c*r²+ij
        src.weights["w"] = src.weights["w"][..., perm]
        if "b" in src.weights:
            src.weights["b"] = src.weights["b"][perm]


def _order_space_to_depth(g: Graph) -> None:
    """PyTorch's PixelUnshuffle writes channel ``c·r² + i·r + j``; TensorFlow's space_to_depth
    writes ``(i·r + j)·C + c``. When plain convolutions alone read it, their input channels are
    permuted once (free at run time); otherwise the graph gathers the channels back."""
    for n in g.nodes:
        users = g.users(n.id)
        if n.op != "s2d" or not users or not all(
                u.op == "conv" and not u.attrs["depthwise"] and "groups" not in u.attrs
                for u in users):
            continue
        r2 = n.attrs["r"] ** 2
        cin = users[0].weights["w"].shape[2]
        perm = np.arange(cin).reshape(cin // r2, r2).T.reshape(-1)  # TF k=(ij)*C+c ← c*r²+ij
        for u in users:
            u.weights["w"] = u.weights["w"][:, :, perm, :]
        n.attrs["tf_order"] = True
