"""Exact per-channel range equalisation before full-int8 quantisation.

Why full int8 broke on real weights: TFLite quantises every activation tensor with *one* scale
(per-tensor). In a trained InstanceNorm generator the convolution in front of each norm has
output channels of wildly different scales (the norm removes scale, so training never keeps
them alike): a channel whose spread is 1 % of the tensor's range keeps two or three int8 levels,
and the norm then *amplifies* that rounding back to unit variance. Colour and texture go.

The fix is exact in real arithmetic, so it is free: InstanceNorm is invariant to a positive
per-channel scale of its input and to a per-channel shift, provided the epsilon scales with the
square of the scale: ``IN_eps(s·y + b) = IN_{eps·s²}(y)`` per channel. So for every convolution
whose output only feeds an InstanceNorm, each output channel's filter is divided by that
channel's spread on the calibration images, the bias (removed by the norm anyway) is dropped,
and the norm's per-channel epsilon becomes ``eps / spread²``. Every channel then spans a similar
range and int8 keeps ~the same relative precision in each. Works on :class:`export.graph.Graph`
(the exported graph), never on the user's model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dmad.export.graph import Graph, Node

__all__ = ["EqualizeReport", "equalize"]


@dataclass
class EqualizeReport:
    """What :func:`equalize` changed (``parity.json``)."""

    layers: int = 0
    channels: int = 0
    stream_channels: int = 0
    #: max/min channel spread before, per layer (how unequal the ranges were)
    spread_ratio: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        worst = sorted(self.spread_ratio.items(), key=lambda kv: -kv[1])[:5]
        return {"layers": self.layers, "channels": self.channels,
                "stream_channels": self.stream_channels,
                "worst_spread_ratio": {k: round(v, 1) for k, v in worst}}


def _targets(g: Graph) -> list[tuple[Node, Node, Node]]:
    """(conv, measured value, inorm) where the conv's output reaches that norm alone, directly
    (the value is the conv's) or through a depth-to-space (sub-pixel upsampling: the value is
    the d2s output, whose channel c is conv channels ``k·C + c``)."""
    out = []
    for n in g.nodes:
        if n.op not in ("conv", "deconv"):
            continue
        users = g.users(n.id)
        if len(users) != 1:
            continue
        u = users[0]
        if u.op == "inorm":
            out.append((n, n, u))
        elif u.op == "d2s" and len(g.users(u.id)) == 1 and g.users(u.id)[0].op == "inorm":
            out.append((n, u, g.users(u.id)[0]))
    return out


def _var_sum(acc: Any, y: torch.Tensor) -> Any:
    """(sum over images of the per-channel variance about each image's mean, image count)."""
    v = y.double().var(dim=(2, 3), unbiased=False).sum(0).numpy()
    return (v, y.shape[0]) if acc is None else (acc[0] + v, acc[1] + y.shape[0])


def _absmax(acc: Any, y: torch.Tensor) -> Any:
    m = y.double().abs().amax(dim=(0, 2, 3)).numpy()
    return m if acc is None else np.maximum(acc, m)


def _scale_in(n: Node, s: np.ndarray) -> None:
    """Multiply input channel c of conv/deconv ``n``'s weights by ``s[c]``."""
    w = n.weights["w"].astype(np.float64)
    # input channels: axis 3 of a transposed conv's [kh, kw, cout, cin], else axis 2 (HWIO, and
    # depthwise [kh, kw, cin, mult])
    axis = 3 if n.op == "deconv" else 2
    shape = [1, 1, 1, 1]
    shape[axis] = len(s)
    n.weights["w"] = (w * s.reshape(shape)).astype(np.float32)


def _scale_out(n: Node, s: np.ndarray) -> None:
    """Multiply output channel c of conv/deconv ``n`` by ``s[c]`` (bias too)."""
    w = n.weights["w"].astype(np.float64)
    if n.op == "deconv":
        w = w * s[None, None, :, None]
    elif n.attrs.get("depthwise"):
        w = w * s.reshape(w.shape[2], w.shape[3])[None, None]
    else:
        w = w * s[None, None, None, :]
    n.weights["w"] = w.astype(np.float32)
    if "b" in n.weights:
        n.weights["b"] = (n.weights["b"] * s).astype(np.float32)


def _scale_norm_out(n: Node, t: np.ndarray) -> None:
    """InstanceNorm ``n``'s output × ``t`` per channel (it becomes affine if it was not)."""
    c = len(t)
    g = n.weights.get("gamma", np.ones(c, np.float32)).astype(np.float64)
    b = n.weights.get("beta", np.zeros(c, np.float32)).astype(np.float64)
    n.weights["gamma"] = (g * t).astype(np.float32)
    n.weights["beta"] = (b * t).astype(np.float32)


def _stream(g: Graph) -> tuple[list[int], list[Node], list[Node]] | None:
    """The residual stream of a ResNet-style graph: its values (root, then every add), the
    norms that write it (the root's and each branch's last InstanceNorm) and the convolutions
    that read it (directly or through padding). ``None`` when the structure is anything else:
    then only the exactness-preserving cases are touched."""
    adds = [n for n in g.nodes if n.op == "add"]
    if not adds:
        return None
    add_ids = {a.id for a in adds}
    values: list[int] = []
    writers: list[Node] = []
    root: int | None = None
    for a in adds:
        stream_in = [i for i in a.inputs if i in add_ids or len(g.users(i)) > 1]
        branch = [i for i in a.inputs if i not in stream_in]
        if len(stream_in) != 1 or len(branch) != 1:
            return None
        b = g.node(branch[0])
        if b.op != "inorm":
            return None
        writers.append(b)
        if stream_in[0] not in add_ids:
            if root is not None and root != stream_in[0]:
                return None
            root = stream_in[0]
    assert root is not None
    r = g.node(root)
    if r.op == "relu" and g.node(r.inputs[0]).op == "inorm" and len(g.users(r.inputs[0])) == 1:
        writers.insert(0, g.node(r.inputs[0]))
    elif r.op == "inorm":
        writers.insert(0, r)
    else:
        return None
    values = [root, *(a.id for a in adds)]
    readers: list[Node] = []
    for v in values:
        for u in g.users(v):
            chain = u
            while chain.op == "pad" and len(g.users(chain.id)) == 1:
                chain = g.users(chain.id)[0]
            if chain.op == "add" and chain.id in add_ids:
                continue
            if chain.op in ("conv", "deconv") and "groups" not in chain.attrs \
                    and (chain is u or chain.inputs[0] != v):
                readers.append(chain)
                continue
            return None
    return values, writers, readers


def equalize(g: Graph, images: np.ndarray, *, stream: bool = True) -> EqualizeReport:
    """Rescale ``g`` in place (module doc) from activation statistics on ``images``
    (N,C,H,W float in [-1, 1]); exact up to float rounding.

    1. every conv → InstanceNorm pair: unit spread per channel, bias dropped, eps per channel;
    2. ``stream``: the residual stream of a ResNet graph, every channel scaled to the same
       largest magnitude (its writers' norms scaled up, its readers' filters scaled down).
    """
    report = EqualizeReport()
    pairs = _targets(g)
    st = _stream(g) if stream else None
    if not pairs and not st:
        return report
    acc = g.activations(images, [v.id for _, v, _ in pairs], _var_sum) if pairs else {}
    for conv, value, norm in pairs:
        sd = np.sqrt(acc[value.id][0] / acc[value.id][1])
        live = sd > 1e-6 * max(float(sd.max()), 1e-30)
        if not live.any():
            continue
        sd = np.where(live, sd, float(np.median(sd[live])))
        s = 1.0 / sd
        # d2s: conv channel k·C + c lands in channel c (TensorFlow's depth-to-space order)
        _scale_out(conv, s if value is conv else np.tile(s, value.attrs["r"] ** 2))
        conv.weights.pop("b", None)
        norm.weights["eps"] = (norm.weights["eps"].astype(np.float64) * s**2).astype(np.float32)
        report.layers += 1
        report.channels += len(s)
        report.spread_ratio[conv.name or f"node{conv.id}"] = float(sd.max() / sd.min())
    if st:
        values, writers, readers = st
        peaks = g.activations(images, values, _absmax)
        peak = np.max(np.stack([peaks[v] for v in values]), axis=0)
        live = peak > 1e-6 * max(float(peak.max()), 1e-30)
        if live.any():
            peak = np.where(live, peak, float(np.median(peak[live])))
            t = float(np.median(peak)) / peak
            for w in writers:
                _scale_norm_out(w, t)
            for r in readers:
                _scale_in(r, 1.0 / t)
            report.stream_channels = len(t)
            report.spread_ratio["stream"] = float(peak.max() / peak.min())
    return report
