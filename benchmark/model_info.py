"""What a model file is before it is timed: kind, input shape, precision, MACs and size.

MACs come from the dmad model's spec when the file is a dmad ``.pt`` (exact, both conventions)
and are counted from the graph otherwise (ONNX and TFLite), so any two files compare.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from dmad.compress.errors import DmadError

KINDS = {".pt": "torch", ".pth": "torch", ".onnx": "onnx", ".tflite": "tflite"}


@dataclasses.dataclass
class ModelInfo:
    """What is known about one model file: kind, input shape (NCHW), cost and size."""

    path: Path
    kind: str  # torch | onnx | tflite
    input_shape: tuple[int, ...]  # N, C, H, W as fed (NCHW)
    gmacs_true: float | None
    gmacs_paper: float | None
    params: int | None
    size_bytes: int
    precision: str
    macs_source: str  # "spec" (exact, from the dmad model) or "graph" (counted from the file)
    label: str = ""

    def summary(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        d["input_shape"] = list(self.input_shape)
        return d


# -- model inspection and MAC counting ---------------------------------------------------------


def model_kind(path: Path) -> str:
    """``torch``, ``onnx`` or ``tflite`` by suffix, once the file is shown to be one that loads
    (:mod:`dmad.benchmark.verify`; a dmad model file is checked by its loader)."""
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise DmadError(
            f"{path}: unknown model type {path.suffix!r} (expected a .pt dmad model, .onnx or "
            ".tflite)"
        )
    if not path.is_file():
        raise DmadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DmadError(f"{path}: file is empty (0 bytes)")
    from dmad.benchmark.verify import verify_onnx, verify_tflite

    if kind == "tflite":
        verify_tflite(path)  # a corrupt flatbuffer crashes the interpreter: checked in a child
    elif kind == "onnx":
        verify_onnx(path)
    return kind


def _precision_from_name(name: str) -> str | None:
    n = name.lower()
    # int8_io (int8 input and output tensors) before int8: the two are different files to time
    for key, label in (("full_integer", "int8-full"), ("int8_io", "int8-io"),
                       ("integer_quant", "int8"), ("int8", "int8"),
                       ("dynamic_range", "dynamic-int8"), ("dyn", "dynamic-int8"),
                       ("float16", "fp16"), ("fp16", "fp16"), ("float32", "fp32"),
                       ("fp32", "fp32")):
        if key in n:
            return label
    return None


def _load_onnx_static(path: Path, shape: tuple[int, ...]):  # type: ignore[no-untyped-def]
    """The ONNX graph with its input fixed to ``shape`` and shapes inferred everywhere."""
    import onnx

    try:
        m = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise DmadError(f"{path}: not a readable ONNX model ({exc})") from None
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise DmadError(f"{path}: expected one image input, found {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    for d, v in zip(dims, shape, strict=False):
        d.ClearField("dim_param")
        d.dim_value = v
    with contextlib.suppress(Exception):
        m = onnx.shape_inference.infer_shapes(m)
    return m


def onnx_input_shape(path: Path, size: int | None) -> tuple[int, ...]:
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise DmadError(f"{path}: not a readable ONNX model ({exc})") from None
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise DmadError(f"{path}: expected one image input, found {len(inputs)}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in
            inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise DmadError(f"{path}: expected a 4-D NCHW image input, got {len(dims)} dims")
    n, c, h, w = dims
    return (n or 1, c or 3, h or size or 256, w or size or 256)  # size -1: probe for dynamic


def _onnx_shapes(m, shape: tuple[int, ...]) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    """Static shapes of every tensor the MAC count needs.

    ONNX shape inference cannot see through pads computed at run time (the legacy exporter writes
    ReflectionPad2d that way), so tensors it leaves unknown are measured by one ORT run with them
    added as graph outputs: exact, and a single inference.
    """
    import onnx

    shapes: dict[str, list[int]] = {}
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if dims and all(x > 0 for x in dims):
            shapes[vi.name] = dims
    need = []
    for node in m.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization",
                            "LeakyRelu"):
            need += [n for n in (node.input[0], node.output[0]) if n and n not in shapes]
    if not need:
        return shapes
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    have = {o.name for o in probe.graph.output}
    for n in dict.fromkeys(need):
        if n not in have:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        names = [o.name for o in sess.get_outputs()]
        outs = sess.run(names, {name: np.zeros(shape, np.float32)})
    except Exception:  # an unusual graph: count what shape inference gave
        return shapes
    for n, v in zip(names, outs, strict=True):
        shapes[n] = list(np.shape(v))
    return shapes


def count_onnx(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int, str]:
    """(true MACs, paper MACs, params, precision) counted from an ONNX graph.

    Same conventions as :mod:`compress.arch`: Conv ``out·Cin/g·k²`` (paper adds the bias),
    ConvTranspose true ``in·Cout/g·k²`` / paper ``out·(Cin/g·k²+bias)``, Gemm/MatMul ``M·N·K``,
    BatchNormalization 2 and LeakyRelu 1 per element in the paper convention only.
    """

    m = _load_onnx_static(path, shape)
    shapes = _onnx_shapes(m, shape)
    init = {i.name: list(i.dims) for i in m.graph.initializer}
    params = 0
    for i in m.graph.initializer:
        n = int(np.prod(i.dims)) if len(i.dims) else 1
        if n > 1 and i.data_type in (1, 3, 10, 11, 16):  # float, int8, fp16, double, bf16
            params += n
    quant = any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv")
                for n in m.graph.node)
    t = p = 0
    # QDQ int8 (dmad export --quant onnx-int8): a conv's weight is DequantizeLinear(int8 init)
    dq = {n.output[0]: n.input[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}

    def numel(name: str) -> int:
        s = shapes.get(name) or []
        return int(np.prod(s)) if s and all(x > 0 for x in s) else 0

    for node in m.graph.node:
        attrs = {a.name: a for a in node.attribute}
        g = attrs["group"].i if "group" in attrs else 1
        wname = dq.get(node.input[1], node.input[1]) if len(node.input) > 1 else ""
        if node.op_type in ("Conv", "ConvTranspose") and wname in init:
            w = init[wname]
            k = int(np.prod(w[2:]))
            bias = 1 if len(node.input) > 2 and node.input[2] else 0
            out = numel(node.output[0])
            if node.op_type == "Conv":
                t += out * w[1] * k
                p += out * (w[1] * k + bias)
            else:
                t += numel(node.input[0]) * w[1] * k
                p += out * (w[0] // g * k + bias)
        elif node.op_type in ("Gemm", "MatMul"):
            a, y = shapes.get(node.input[0]) or [], numel(node.output[0])
            if a and y:
                kdim = a[-1]
                t += y * kdim
                p += y * kdim
        elif node.op_type == "BatchNormalization":
            p += 2 * numel(node.input[0])
        elif node.op_type == "LeakyRelu":
            p += numel(node.input[0])
    precision = _precision_from_name(path.name) or ("int8" if quant else "fp32")
    return t, p, params, precision


def count_tflite(path: Path) -> tuple[int, int, int, str, tuple[int, ...], str]:
    """(true MACs, paper MACs, params, precision, input shape NCHW, input layout) of a .tflite.

    Counted from the interpreter's op list and tensor shapes: CONV_2D (weights O·kh·kw·I),
    DEPTHWISE_CONV_2D, TRANSPOSE_CONV (true = input elements · O · k²) and FULLY_CONNECTED.
    """
    from dmad.export.parity import MAC_OPS, make_interpreter, op_macs

    try:
        it = make_interpreter(path, delegate=False, allocate=False)
    except ValueError as exc:
        raise DmadError(f"{path}: not a loadable .tflite ({str(exc).splitlines()[0]})") from None
    tens = {d["index"]: d for d in it.get_tensor_details()}
    ins = it.get_input_details()
    if len(ins) != 1 or len(ins[0]["shape"]) != 4:
        raise DmadError(f"{path}: expected one 4-D image input, found {len(ins)} input(s)")
    s = [int(x) for x in ins[0]["shape"]]
    nhwc = s[3] in (1, 3, 4) and s[1] not in (1, 3, 4)
    shape = (s[0], s[3], s[1], s[2]) if nhwc else tuple(s)
    t = p = 0
    weight_types: set[str] = set()
    consts = set()
    for op in it._get_ops_details():
        name = op["op_name"]
        ins_, outs = [int(x) for x in op["inputs"]], [int(x) for x in op["outputs"]]
        if name in MAC_OPS:
            weight_types.add(np.dtype(tens[ins_[1]]["dtype"]).name)
            consts.add(ins_[1])
            true, paper, bias = op_macs(name, ins_, outs, lambda i: tens[i]["shape"])
            if bias:
                consts.add(ins_[-1])
            t += true
            p += paper
    params = sum(int(np.prod(tens[i]["shape"])) for i in consts)
    in_dtype = np.dtype(ins[0]["dtype"]).name
    precision = _precision_from_name(path.name) or (
        "int8-full" if in_dtype in ("int8", "uint8") else
        "fp16" if "float16" in weight_types else
        "dynamic-int8" if "int8" in weight_types else "fp32"
    )
    return t, p, params, precision, shape, "NHWC" if nhwc else "NCHW"


def static_size(path: Path) -> int | None:
    """The fixed input height of an .onnx/.tflite model (None: dynamic, or a .pt)."""
    kind = model_kind(path)
    if kind == "onnx":
        probe = onnx_input_shape(path, -1)
        return None if probe[2] == -1 else probe[2]
    if kind == "tflite":
        return count_tflite(path)[4][2]
    return None


def resolve_size(paths: list[Path], size: int | None) -> int:
    """``--size`` if given, else the one fixed size the models agree on, else 256."""
    if size is not None and size < 1:
        raise DmadError(f"--size: must be >= 1, got {size}")
    sizes = {p: static_size(p) for p in paths}
    fixed = {s for s in sizes.values() if s is not None}
    if size is not None:
        for p, s in sizes.items():
            if s is not None and s != size:
                raise DmadError(f"{p}: fixed input size {s}x{s}, --size {size} does not apply "
                                "(all models must see the same input)")
        return size
    if len(fixed) > 1:
        raise DmadError(f"models have different fixed input sizes ({sorted(fixed)}): pass models "
                        "of one size")
    return fixed.pop() if fixed else 256


def inspect_model(path: Path, size: int | None = None) -> ModelInfo:
    """Everything :class:`ModelInfo` holds, for any supported model file.

    dmad model files are profiled from their spec with :func:`compress.arch.profile` (exact);
    .onnx/.tflite are counted from their graphs in the same conventions.
    """
    path = Path(path)
    kind = model_kind(path)
    sz = path.stat().st_size
    if kind == "torch":
        from dmad.compress.arch import profile
        from dmad.compress.checkpoint import load_model

        model, _ = load_model(path)
        spec = getattr(model, "spec", None)
        cin = getattr(spec, "input_nc", 3)
        div = getattr(spec, "divisor", 4)
        if (size or 256) % div:
            raise DmadError(f"--size: {size or 256} is not a multiple of {div} for the "
                            f"{getattr(spec, 'family', 'generator')} in {path}")
        shape = (1, cin, size or 256, size or 256)
        prof = profile(model, shape)
        return ModelInfo(path, kind, shape, prof.macs_true / 1e9, prof.macs_paper / 1e9,
                         prof.params, sz, "fp32", "spec")
    if kind == "onnx":
        shape = onnx_input_shape(path, size)
        t, p, params, prec = count_onnx(path, shape)
        return ModelInfo(path, kind, shape, t / 1e9 or None, p / 1e9 or None, params, sz, prec,
                         "graph")
    t, p, params, prec, shape, _ = count_tflite(path)
    return ModelInfo(path, kind, shape, t / 1e9 or None, p / 1e9 or None, params, sz, prec,
                     "graph")


def unique_labels(paths: list[Path]) -> list[str]:
    """A name per file for rows and logs: the file name, or as many trailing folders as make
    two files of the same name (``a/model.tflite``, ``b/model.tflite``) tell apart."""
    parts = [Path(p).resolve().parts for p in paths]
    for k in range(1, max((len(x) for x in parts), default=1) + 1):
        labels = ["/".join(x[-k:]) for x in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{i}:{lab}" for i, lab in enumerate("/".join(x) for x in parts)]
