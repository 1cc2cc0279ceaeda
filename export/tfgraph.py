"""The NHWC graph of :mod:`export.graph` as a TensorFlow function (runs in the converter
subprocess of :mod:`export.tflite`; imports TensorFlow, so never import it in the CLI process).

Each graph op becomes the TensorFlow ops the TFLite converter lowers to XNNPACK-friendly
kernels:

* convolutions take their zero padding as an explicit PAD (XNNPACK folds a zero PAD into the
  following convolution), or TensorFlow's ``SAME`` when that is the same padding;
* a transposed convolution is TRANSPOSE_CONV (``VALID``) followed by the crop PyTorch's
  ``padding``/``output_padding`` describe (TensorFlow's ``SAME`` crops the other side);
* reflection padding is slices and concatenations (MIRROR_PAD cuts XNNPACK partitions); each
  side is its own concatenation of at most ``pad + 1`` inputs; edge (replication) padding the
  same way;
* integer upsampling is RESIZE_BILINEAR (half-pixel centres, as PyTorch's
  ``align_corners=False``) or RESIZE_NEAREST_NEIGHBOR; a crop is a STRIDED_SLICE;
* InstanceNorm is written out (row means, then column means; rsqrt of the variance plus a
  per-channel epsilon) so that its statistics can stay in float in the int8 recipe.

Every op is named after its PyTorch layer (``<layer>/<role>``), which is how the int8 recipe
names layers to keep in float (``denylisted_nodes``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["build_function"]


def _pad_reflect(tf: Any, x: Any, top: int, bottom: int, left: int, right: int) -> Any:
    def side(x: Any, axis: int, before: int, after: int) -> Any:
        n = x.shape[axis]
        if max(before, after) >= n:
            raise ValueError(f"reflection pad {max(before, after)} needs a side longer than "
                             f"that, got {n}")

        def sl(i: int, t: Any) -> Any:
            # STRIDED_SLICE: XNNPACK takes it in int8 too (SLICE only in float)
            begin, end = [0, 0, 0, 0], [0, 0, 0, 0]
            begin[axis], end[axis] = i, i + 1
            mask = 0b1111 & ~(1 << axis)
            return tf.strided_slice(t, begin, end, begin_mask=mask, end_mask=mask)

        if before:
            x = tf.concat([*(sl(i, x) for i in range(before, 0, -1)), x], axis)
        if after:
            m = x.shape[axis]  # original index n-1-i sits at m-1-i
            x = tf.concat([x, *(sl(m - 1 - i, x) for i in range(1, after + 1))], axis)
        return x

    return side(side(x, 2, left, right), 1, top, bottom)


def _pad_replicate(tf: Any, x: Any, top: int, bottom: int, left: int, right: int) -> Any:
    """Edge padding as slices and concatenations (TensorFlow's pad has no edge mode)."""
    def side(x: Any, axis: int, before: int, after: int) -> Any:
        def edge(i: int) -> Any:
            begin, end = [0, 0, 0, 0], [0, 0, 0, 0]
            begin[axis], end[axis] = i, i + 1
            mask = 0b1111 & ~(1 << axis)
            return tf.strided_slice(x, begin, end, begin_mask=mask, end_mask=mask)

        n = x.shape[axis]
        parts = [edge(0)] * before + [x] + [edge(n - 1)] * after
        return tf.concat(parts, axis) if len(parts) > 1 else x

    return side(side(x, 2, left, right), 1, top, bottom)


def _resize(tf: Any, n: dict[str, Any], x: Any, name: str) -> Any:
    """Integer upsampling as PyTorch computes it: bilinear with half-pixel centres (or corner
    alignment), nearest from the top-left source pixel."""
    a = n["attrs"]
    size = [int(x.shape[1]) * a["scale"][0], int(x.shape[2]) * a["scale"][1]]
    if a["mode"] == "bilinear":
        return tf.compat.v1.image.resize_bilinear(
            x, size, align_corners=a["align_corners"], half_pixel_centers=not a["align_corners"],
            name=f"{name}/resize")
    return tf.compat.v1.image.resize_nearest_neighbor(x, size, align_corners=False,
                                                      half_pixel_centers=False,
                                                      name=f"{name}/resize")


def _conv(tf: Any, n: dict[str, Any], x: Any, name: str, arrays: dict[str, np.ndarray]) -> Any:
    a = n["attrs"]
    w = arrays[f"{n['id']}.w"]
    kh, kw = w.shape[0], w.shape[1]
    sh, sw = a["stride"]
    dh, dw = a["dilation"]
    top, bottom, left, right = a["pad"]
    same = (sh == sw == 1 and top == bottom == dh * (kh - 1) // 2 and
            left == right == dw * (kw - 1) // 2 and kh % 2 == 1 and kw % 2 == 1)
    padding = "SAME" if same else "VALID"
    if not same and any(a["pad"]):
        x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], name=f"{name}/pad")
    if a["depthwise"]:
        y = tf.nn.depthwise_conv2d(x, tf.constant(w), [1, sh, sw, 1], padding,
                                   dilations=[dh, dw], name=f"{name}/conv")
    elif a.get("groups", 1) > 1:  # grouped: one conv per group, side by side
        parts = zip(tf.split(x, a["groups"], axis=3),
                    np.split(w, a["groups"], axis=3), strict=True)
        y = tf.concat([tf.nn.conv2d(xi, tf.constant(wi), [1, sh, sw, 1], padding,
                                    dilations=[dh, dw], name=f"{name}/conv{i}")
                       for i, (xi, wi) in enumerate(parts)], 3, name=f"{name}/groups")
    else:
        y = tf.nn.conv2d(x, tf.constant(w), [1, sh, sw, 1], padding,
                         dilations=[dh, dw], name=f"{name}/conv")
    if "b" in n["weights"]:
        y = tf.nn.bias_add(y, tf.constant(arrays[f"{n['id']}.b"]), name=f"{name}/bias")
    return y


def _deconv(tf: Any, n: dict[str, Any], x: Any, name: str,
            arrays: dict[str, np.ndarray]) -> Any:
    a = n["attrs"]
    w = arrays[f"{n['id']}.w"]  # [kh, kw, cout, cin]
    kh, kw, cout = w.shape[0], w.shape[1], w.shape[2]
    sh, sw = a["stride"]
    ph, pw = a["pad"]
    oh, ow = a["output_padding"]
    h, wd = x.shape[1], x.shape[2]
    full_h, full_w = (h - 1) * sh + kh, (wd - 1) * sw + kw
    y = tf.nn.conv2d_transpose(x, tf.constant(w), [1, full_h, full_w, cout], [1, sh, sw, 1],
                               "VALID", name=f"{name}/deconv")
    out_h, out_w = full_h - 2 * ph + oh, full_w - 2 * pw + ow
    if out_h > full_h - ph or out_w > full_w - pw:
        # output_padding past the full output: zero rows/cols (never in these generators)
        y = tf.pad(y, [[0, 0], [0, max(0, out_h + ph - full_h)],
                       [0, max(0, out_w + pw - full_w)], [0, 0]])
    if (ph, pw) != (0, 0) or (out_h, out_w) != (full_h, full_w):
        y = tf.slice(y, [0, ph, pw, 0], [1, out_h, out_w, cout], name=f"{name}/crop")
    if "b" in n["weights"]:
        y = tf.nn.bias_add(y, tf.constant(arrays[f"{n['id']}.b"]), name=f"{name}/bias")
    return y


def _inorm(tf: Any, n: dict[str, Any], x: Any, name: str, arrays: dict[str, np.ndarray]) -> Any:
    def const(key: str) -> Any:
        return tf.constant(arrays[f"{n['id']}.{key}"])

    mean = tf.reduce_mean(tf.reduce_mean(x, 2, keepdims=True), 1, keepdims=True,
                          name=f"{name}/mean")
    d = tf.subtract(x, mean, name=f"{name}/center")
    var = tf.reduce_mean(tf.reduce_mean(d * d, 2, keepdims=True), 1, keepdims=True,
                         name=f"{name}/var")
    y = tf.multiply(d, tf.math.rsqrt(var + const("eps")), name=f"{name}/scale")
    if "gamma" in n["weights"]:
        y = tf.add(y * const("gamma"), const("beta"), name=f"{name}/affine")
    return y


def _gnorm(tf: Any, n: dict[str, Any], x: Any, name: str, arrays: dict[str, np.ndarray]) -> Any:
    """GroupNorm as 4-D ops: [1, H·W, G, C/G], statistics over pixels and a group's channels."""
    groups = n["attrs"]["groups"]
    _, h, w, c = x.shape
    xr = tf.reshape(x, [1, h * w, groups, c // groups], name=f"{name}/groups")
    mean = tf.reduce_mean(xr, [1, 3], keepdims=True, name=f"{name}/mean")
    d = tf.subtract(xr, mean, name=f"{name}/center")
    var = tf.reduce_mean(d * d, [1, 3], keepdims=True, name=f"{name}/var")
    eps = float(arrays[f"{n['id']}.eps"][0])
    y = tf.reshape(d * tf.math.rsqrt(var + eps), [1, h, w, c], name=f"{name}/scale")
    if "gamma" in n["weights"]:
        y = tf.add(y * tf.constant(arrays[f"{n['id']}.gamma"]),
                   tf.constant(arrays[f"{n['id']}.beta"]), name=f"{name}/affine")
    return y


def _s2d(tf: Any, n: dict[str, Any], x: Any, name: str) -> Any:
    """space_to_depth, its channels gathered back to PyTorch's order unless the readers'
    weights were permuted instead (``tf_order``)."""
    r = n["attrs"]["r"]
    y = tf.nn.space_to_depth(x, r, name=f"{name}/s2d")
    if n["attrs"].get("tf_order"):
        return y
    c = int(x.shape[3])
    perm = np.arange(c * r * r).reshape(r * r, c).T.reshape(-1)  # torch c*r²+ij ← TF (ij)*C+c
    return tf.gather(y, perm, axis=3, name=f"{name}/order")


def _op(tf: Any, n: dict[str, Any], ins: list[Any], arrays: dict[str, np.ndarray]) -> Any:
    """One graph node as TensorFlow ops, named after its PyTorch layer."""
    op, nid = n["op"], n["id"]
    name = (n.get("name") or f"{op}{nid}").replace(".", "_")
    if op in ("conv", "deconv", "inorm", "gnorm"):
        return {"conv": _conv, "deconv": _deconv, "inorm": _inorm, "gnorm": _gnorm}[op](
            tf, n, ins[0], name, arrays)
    if op == "pad":
        top, bottom, left, right = n["attrs"]["pad"]
        if n["attrs"]["mode"] == "reflect":
            return _pad_reflect(tf, ins[0], top, bottom, left, right)
        if n["attrs"]["mode"] == "replicate":
            return _pad_replicate(tf, ins[0], top, bottom, left, right)
        return tf.pad(ins[0], [[0, 0], [top, bottom], [left, right], [0, 0]], name=f"{name}/pad")
    if op == "affine":
        return tf.add(ins[0] * tf.constant(arrays[f"{nid}.scale"]),
                      tf.constant(arrays[f"{nid}.shift"]), name=f"{name}/bn")
    if op == "silu":  # x·σ(x): LOGISTIC and MUL, both delegated
        return tf.multiply(ins[0], tf.sigmoid(ins[0]), name=f"{name}/silu")
    unary = {"relu": tf.nn.relu, "tanh": tf.tanh, "sigmoid": tf.sigmoid}
    if op in unary:
        return unary[op](ins[0], name=f"{name}/{op}")
    if op == "leaky":
        return tf.nn.leaky_relu(ins[0], n["attrs"]["alpha"], name=f"{name}/leaky")
    if op == "add":
        return tf.add(ins[0], ins[1], name=f"add{nid}")
    if op == "concat":
        return tf.concat(ins, 3, name=f"concat{nid}")
    if op == "d2s":
        return tf.nn.depth_to_space(ins[0], n["attrs"]["r"], name=f"{name}/d2s")
    if op == "s2d":
        return _s2d(tf, n, ins[0], name)
    if op == "resize":
        return _resize(tf, n, ins[0], name)
    if op == "crop":
        a = n["attrs"]
        # STRIDED_SLICE: XNNPACK takes it in int8 too (SLICE only in float)
        return tf.strided_slice(ins[0], [0, a["top"], a["left"], 0],
                                [1, a["top"] + a["height"], a["left"] + a["width"], 0],
                                end_mask=0b1000, name=f"{name}/crop")
    raise ValueError(f"unknown graph op {op!r}")


def build_function(graph: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    """A ``tf.function`` (signature ``input`` → ``{"output": ...}``) computing ``graph``."""
    import tensorflow as tf

    nodes = graph["nodes"]
    shape = [int(s) for s in graph["input_shape"]]

    def run(x: Any) -> Any:
        vals: dict[int, Any] = {}
        for n in nodes:
            ins = [vals[i] for i in n["inputs"]]
            vals[n["id"]] = x if n["op"] == "input" else _op(tf, n, ins, arrays)
        return vals[graph["output"]]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="input")])
    def serve(input: Any) -> dict[str, Any]:
        return {"output": run(input)}

    return serve
