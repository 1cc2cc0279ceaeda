"""Parity and deployability of exported files: PyTorch vs ONNX Runtime vs LiteRT.

Numbers per artifact: max/mean absolute error and PSNR (over the value range 2, since images are
in [-1, 1]) against PyTorch fp32 on held-out images, the I/O tensors (name, NHWC shape, dtype,
quantisation scale/zero point), and how much of the graph LiteRT's default XNNPACK delegate
takes. This LiteRT build does not print the "Replacing X out of Y node(s)" line, so coverage is
read from the interpreter after ``allocate_tensors``: the delegate appends one ``DELEGATE`` node
per partition, whose inputs/outputs are the partition's boundary tensors; walking back from a
partition's outputs to its inputs recovers the original nodes it swallowed. Everything else
runs on LiteRT's reference kernels (slow, and single-threaded for most ops).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from dmad.compress.metrics import psnr

__all__ = [
    "compare",
    "format_per_image",
    "format_table",
    "invoke_tflite",
    "io_details",
    "make_interpreter",
    "op_macs",
    "precision_report",
    "psnr",
    "run_tflite",
    "worst_psnr",
    "xnnpack_coverage",
]


def compare(ref: np.ndarray, out: np.ndarray, names: list[str] | None = None
            ) -> dict[str, Any]:
    """max/mean absolute error and PSNR of ``out`` against ``ref`` (same layout, images along
    the first axis), pooled and per image; ``finite`` is False when ``out`` holds a NaN or an
    infinity (then every figure is NaN, never a pass).

    Why per image: a pooled PSNR averages the squared error of all images, so one photograph
    far from fp32 hides behind several close ones; floors apply to the worst image."""
    out64, ref64 = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    n = len(ref64) if ref64.ndim == 4 else 0
    names = list(names) if names is not None and len(names) == n else [str(i) for i in range(n)]
    if not np.isfinite(out64).all():
        nan = float("nan")
        return {"max_abs": nan, "mean_abs": nan, "psnr_db": nan, "finite": False,
                "psnr_worst_db": nan, "worst_image": None,
                "per_image": [{"image": m, "psnr_db": nan} for m in names]}
    d = np.abs(ref64 - out64)
    res: dict[str, Any] = {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
                           "psnr_db": psnr(ref64, out64), "finite": True}
    if n:
        per = [psnr(ref64[i], out64[i]) for i in range(n)]
        worst = int(np.argmin(per))
        res.update(psnr_worst_db=per[worst], worst_image=names[worst],
                   per_image=[{"image": m, "psnr_db": v} for m, v in zip(names, per,
                                                                          strict=True)])
    return res


def worst_psnr(parity: dict[str, Any]) -> float:
    """The PSNR a floor is judged on: the worst image's (the pooled figure for a record made
    before per-image parity)."""
    return float(parity.get("psnr_worst_db", parity["psnr_db"]))


def make_interpreter(model: Path | bytes, threads: int | None = 1, *, delegate: bool = True,
                     keep_tensors: bool = False, allocate: bool = True) -> Any:
    """The one LiteRT interpreter factory: a file or flatbuffer bytes, with the default XNNPACK
    delegate (or LiteRT's reference kernels), optionally keeping every intermediate tensor,
    tensors allocated unless asked not to (``threads`` None: LiteRT's default)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = (
        OpResolverType.AUTO if delegate else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    src = {"model_content": model} if isinstance(model, bytes | bytearray) else \
        {"model_path": os.fspath(model)}
    it = Interpreter(**src, num_threads=threads, experimental_op_resolver_type=resolver,
                     experimental_preserve_all_tensors=keep_tensors)
    if allocate:
        it.allocate_tensors()
    return it


MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED")


def op_macs(name: str, ins: list[int], outs: list[int], shape: Any) -> tuple[int, int, bool]:
    """(true, paper) MACs of one of :data:`MAC_OPS` and whether it has a bias, from the
    tensor shapes (``shape(index)``): the one TFLite MAC count of the code base. True MACs
    count multiply-adds (a transposed conv: every input pixel meets every filter tap); the
    paper (thop) convention counts output elements times the taps, plus one for the bias."""
    def n(i: int) -> int:
        return int(np.prod(shape(i)))

    w = [int(v) for v in shape(ins[1])]
    has_bias = len(ins) > (3 if name == "TRANSPOSE_CONV" else 2) and ins[-1] >= 0
    bias = int(has_bias)
    out = n(outs[0])
    if name == "CONV_2D":
        k = w[1] * w[2] * w[3]
        return out * k, out * (k + bias), has_bias
    if name == "DEPTHWISE_CONV_2D":
        return out * w[1] * w[2], out * (w[1] * w[2] + bias), has_bias
    if name == "TRANSPOSE_CONV":  # [cout, kh, kw, cin]; the input is operand 2
        return n(ins[2]) * w[0] * w[1] * w[2], out * (w[3] * w[1] * w[2] + bias), has_bias
    return out * w[1], out * w[1], has_bias  # FULLY_CONNECTED [out, in]


def _tensor_info(d: dict[str, Any]) -> dict[str, Any]:
    qp = d["quantization_parameters"]
    scales, zps = qp["scales"], qp["zero_points"]
    quant = None
    if len(scales):
        quant = {"scale": float(scales[0]), "zero_point": int(zps[0])}
    return {
        "name": d["name"],
        "shape": [int(s) for s in d["shape"]],
        "dtype": np.dtype(d["dtype"]).name,
        "quantization": quant,
    }


def io_details(path: Path) -> dict[str, dict[str, Any]]:
    """Name, shape, dtype and (for int8 I/O) scale/zero point of the single input and output."""
    it = make_interpreter(path, delegate=False)
    return {
        "input": _tensor_info(it.get_input_details()[0]),
        "output": _tensor_info(it.get_output_details()[0]),
    }


def invoke_tflite(it: Any, x: np.ndarray) -> np.ndarray:
    """One NHWC float image [1,H,W,C] in [-1,1] through ``it``; quantises int8 I/O as a phone
    would (``q = round(x / scale) + zero_point``, clamped) and returns float output."""
    inp, outd = it.get_input_details()[0], it.get_output_details()[0]
    if inp["dtype"] in (np.int8, np.uint8):
        scale, zp = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(inp["dtype"])
    it.set_tensor(inp["index"], x.astype(inp["dtype"], copy=False))
    it.invoke()
    y = it.get_tensor(outd["index"])
    if outd["dtype"] in (np.int8, np.uint8):
        scale, zp = outd["quantization"]
        y = (y.astype(np.float32) - zp) * scale
    return np.asarray(y, np.float32)


def run_tflite(path: Path, images_nhwc: np.ndarray, threads: int = 1) -> np.ndarray:
    """Run every image of ``images_nhwc`` (N,H,W,C float in [-1,1]); returns N,H,W,C float."""
    it = make_interpreter(path, threads)
    return np.concatenate([invoke_tflite(it, images_nhwc[i : i + 1])
                           for i in range(len(images_nhwc))])


def xnnpack_coverage(path: Path) -> dict[str, Any]:
    """Nodes the XNNPACK delegate takes, partitions, and the ops left on reference kernels."""
    it = make_interpreter(path, 1)
    ops = it._get_ops_details()
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    original = [o for o in ops if o["op_name"] != "DELEGATE"]
    producer: dict[int, dict[str, Any]] = {}
    for o in original:
        for t in o["outputs"]:
            producer[int(t)] = o
    delegated: set[int] = set()
    for d in delegates:
        boundary = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        seen: set[int] = set()
        while stack:
            t = stack.pop()
            if t in seen or t in boundary:
                continue
            seen.add(t)
            node = producer.get(t)
            if node is None or node["index"] in delegated:
                continue
            delegated.add(node["index"])
            stack.extend(int(i) for i in node["inputs"] if int(i) >= 0)
    rest = Counter(o["op_name"] for o in original if o["index"] not in delegated)
    return {
        "nodes": len(original),
        "delegated_nodes": len(delegated),
        "partitions": len(delegates),
        "undelegated_nodes": sum(rest.values()),
        "undelegated_ops": dict(sorted(rest.items())),
        "fully_delegated": not rest and len(delegates) == 1,
    }


_MOVE_OPS = {"QUANTIZE", "DEQUANTIZE"}


def precision_report(path: Path) -> dict[str, Any]:
    """Which arithmetic of a ``.tflite`` runs in int8: the fraction of the convolution MACs whose
    input is int8 (MACs from the filter and output shapes), and every op left in float32 (by op
    name and count; QUANTIZE/DEQUANTIZE, the boundaries, counted apart)."""
    it = make_interpreter(path, delegate=False)
    td = {t["index"]: t for t in it.get_tensor_details()}
    total = int8 = hybrid = 0
    float_ops: Counter[str] = Counter()
    boundaries = 0
    for o in it._get_ops_details():
        name = o["op_name"]
        ins = [td[i] for i in o["inputs"] if i >= 0]
        outs = [td[i] for i in o["outputs"] if i >= 0]
        if name in _MOVE_OPS:
            boundaries += 1
            continue
        if name == "DELEGATE" or not ins:
            continue
        act = ins[2] if name == "TRANSPOSE_CONV" and len(ins) > 2 else ins[0]
        is_int = np.dtype(act["dtype"]) in (np.dtype(np.int8), np.dtype(np.int16))
        int_w = (name in MAC_OPS and len(ins) > 1
                 and np.dtype(ins[1]["dtype"]) == np.int8)  # the filter (TRANSPOSE_CONV too)
        if not is_int:
            float_ops[name] += 1
        if name in MAC_OPS and outs:
            macs = op_macs(name, list(o["inputs"]), list(o["outputs"]),
                           lambda i: td[i]["shape"])[0]
            total += macs
            int8 += macs if is_int else 0
            hybrid += macs if int_w and not is_int else 0
    return {"int8_mac_fraction": round(int8 / total, 4) if total else 0.0,
            "int8_weight_float_activation_mac_fraction":
                round(hybrid / total, 4) if total else 0.0,
            "macs": int(total),
            "float_ops": dict(sorted(float_ops.items())),
            "quantize_dequantize": boundaries}


def _fmt(v: Any, spec: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and np.isinf(v):
        return "inf"
    return format(v, spec)


def format_table(artifacts: dict[str, dict[str, Any]]) -> str:
    """The on-screen parity table (one row per artifact)."""
    head = ("artifact", "max abs", "mean abs", "PSNR dB", "worst dB", "floor", "size KB", "in",
            "out",
            "XNNPACK nodes", "parts", "int8 MACs", "GPU check")
    rows = [head]
    for name, a in artifacts.items():
        p = a.get("parity", {})
        cov = a.get("xnnpack") or {}
        io = a.get("io") or {}
        nodes = (f"{cov['delegated_nodes']}/{cov['nodes']}" if cov else "-")
        prec = a.get("precision") or {}
        gpu = a.get("gpu") or {}
        frac = prec.get("int8_mac_fraction")
        gpu_s = "-" if not gpu else ("ok" if gpu.get("compatible") else
                                     f"{len(gpu.get('issues', []))} issue(s)")
        floor = a.get("floor_db")
        floor_s = "-" if floor is None else (f"{floor:g}" + (" LOW" if a.get("below_bar")
                                                               else ""))
        if a.get("kept") is False:
            name = f"{name} (checked, not kept)"
        rows.append((
            name,
            _fmt(p.get("max_abs"), ".2e"),
            _fmt(p.get("mean_abs"), ".2e"),
            _fmt(p.get("psnr_db"), ".1f"),
            _fmt(p.get("psnr_worst_db"), ".1f"),
            floor_s,
            _fmt(a.get("bytes", 0) / 1024, ".0f"),
            (io.get("input") or {}).get("dtype", "-"),
            (io.get("output") or {}).get("dtype", "-"),
            nodes,
            str(cov.get("partitions", "-")),
            "-" if frac is None else f"{100 * frac:.0f}%",
            gpu_s,
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


#: the files whose per-image PSNR is shown on screen (the float ones sit at 100+ dB)
_REDUCED = ("fp16", "dynamic", "int8", "int8_io", "onnx-int8")


def format_per_image(artifacts: dict[str, dict[str, Any]]) -> str:
    """PSNR vs PyTorch of each reduced-precision file on every held-out image, worst row
    first (empty when no such file carries per-image figures)."""
    cols = [v for v in _REDUCED if (artifacts.get(v) or {}).get("parity", {}).get("per_image")]
    if not cols:
        return ""
    per = {v: {r["image"]: r["psnr_db"] for r in artifacts[v]["parity"]["per_image"]}
           for v in cols}
    names = list(per[cols[0]])
    names.sort(key=lambda m: min(per[v].get(m, float("inf")) for v in cols))
    rows = [("held-out image (PSNR dB vs PyTorch)", *cols)]
    rows += [(m, *(_fmt(per[v].get(m), ".1f") for v in cols)) for m in names]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
