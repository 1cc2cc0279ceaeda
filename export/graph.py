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

Graph ops (all NHWC, batch 1): ``conv`` (any stride/padding/dilation, groups 1 or depthwise),
``deconv`` (ConvTranspose2d), ``pad`` (reflect or zero), ``inorm`` (InstanceNorm, per-channel
eps so that :mod:`export.equalize` can rescale exactly), ``affine`` (per-channel scale and shift:
eval BatchNorm that could not be folded), ``relu``, ``leaky``, ``tanh``, ``sigmoid``, ``add``,
``concat``, ``d2s`` (PixelShuffle as depth-to-space, with the producing conv's channels permuted
to TensorFlow's order). BatchNorm after a conv is folded into it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn

from dmad.compress.errors import DmadError

__all__ = ["Graph", "Node", "trace"]

#: Modules kept whole by the tracer (their insides are never traced).
_LEAVES: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d, nn.BatchNorm2d, nn.ReflectionPad2d,
    nn.ZeroPad2d, nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Dropout, nn.Identity,
    nn.PixelShuffle,
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
    depthwise = m.groups > 1
    if depthwise and not (m.groups == cin == m.in_channels and m.out_channels % cin == 0):
        raise DmadError(f"Conv2d with groups={m.groups} (not depthwise) is not supported")
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
    return cin


def _module_op(m: nn.Module, name: str, cin: int
               ) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    """The graph op of a one-input layer: (op, attrs, weights); one line when it has none."""
    if isinstance(m, nn.Conv2d):
        return _conv(m, cin)
    if isinstance(m, nn.ConvTranspose2d):
        return _deconv(m)
    if isinstance(m, (nn.ReflectionPad2d, nn.ZeroPad2d)):
        left, right, top, bottom = (int(p) for p in m.padding)
        mode = "reflect" if isinstance(m, nn.ReflectionPad2d) else "zero"
        return "pad", {"mode": mode, "pad": [top, bottom, left, right]}, {}
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
    simple = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}
    for cls, op in simple.items():
        if isinstance(m, cls):
            return op, {}, {}
    if isinstance(m, nn.LeakyReLU):
        return "leaky", {"alpha": float(m.negative_slope)}, {}
    if isinstance(m, nn.PixelShuffle):
        return "d2s", {"r": int(m.upscale_factor)}, {}
    raise DmadError(f"export: layer {name} ({type(m).__name__}) has no mapping")


class _Builder:
    """The NHWC graph being built from fx nodes: node ids by fx name, channels per node."""

    def __init__(self, channels: int) -> None:
        self.c = channels
        self.nodes: list[Node] = []
        self.ids: dict[str, int] = {}
        self.chans: dict[int, int] = {}
        self.current = ""  # the fx node being mapped (recorded on every graph node)

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
        if f in (torch.tanh, torch.relu, nn.functional.relu):
            self.ids[node.name] = self.add("tanh" if f is torch.tanh else "relu",
                                           [self.arg_id(node.args[0], str(f))])
            return
        raise DmadError(f"export: function {getattr(f, '__name__', f)} has no mapping")


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
    b = _Builder(c)
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
        else:
            raise DmadError(f"export: unsupported graph node {node.op} {node.target}")
    if out_id is None:
        raise DmadError("export: the generator returns nothing")
    g = Graph(b.nodes, out_id, (n, h, w, c), torch.fx.GraphModule(model, fx_graph))
    _fold_batchnorm(g)
    _order_pixel_shuffle(g)
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
        if n.op != "d2s":
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
