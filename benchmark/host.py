"""Host CPU latency: PyTorch eager, ONNX Runtime and the LiteRT interpreter, measured honestly.

Honesty rules, and why:

* **One input for every model and backend** (seeded, uniform in [-1, 1]; NHWC models get the same
  values transposed), so no backend is timed on easier data.
* **Warm-up runs are excluded** (first runs pay for allocation, weight packing, thread start-up).
* **Interleaved runs** (A B A B ...): the models being compared are timed in alternation inside one
  backend/thread setting, so frequency drift, a neighbour's load burst or thermal change hits both
  alike instead of biasing whichever ran second. This matters on a shared 2-core machine.
* **Robust statistics**: median (reported), p90, min, mean, std over all timed runs.
* **A physical limit**: a GEMM probe (``torch.matmul`` of two 1024² fp32 matrices, same thread
  count, same session) measures what this CPU reaches on the friendliest workload; results are
  reported as achieved GMAC/s (true MACs ÷ median time) and as a fraction of that peak.
* ORT runs sequentially with ``intra_op_num_threads`` set and spinning off: a spinning idle pool of
  model A would steal a core from model B's run when they are interleaved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dmad.benchmark.stats import ORDERS
from dmad.compress.errors import DmadError

KINDS = {".pt": "torch", ".pth": "torch", ".onnx": "onnx", ".tflite": "tflite"}
BACKENDS = ("torch", "ort", "tflite-xnnpack", "tflite-builtin")
BACKEND_ALIASES = {"tflite": ("tflite-xnnpack", "tflite-builtin"), "litert": ("tflite-xnnpack",
                   "tflite-builtin"), "onnxruntime": ("ort",), "pytorch": ("torch",)}


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


#: CPU features reported with every benchmark: the vector width and the int8 dot-product
#: extensions (VNNI, AMX, dotprod, i8mm) that decide fp32 and int8 speed
REPORTED_ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
            "amx_bf16", "amx_int8", "neon", "asimddp", "i8mm")


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


# -- machine ---------------------------------------------------------------------------------


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, ISA flags that matter for these kernels, library versions, load."""
    cpu, flags, named = platform.processor() or platform.machine(), set(), False
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not named:
                cpu, named = line.split(":", 1)[1].strip(), True
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    load = None
    with contextlib.suppress(OSError, AttributeError):
        load = [round(x, 2) for x in os.getloadavg()]
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        # the int8 kernels' speed depends on these: without VNNI (AVX2 only) XNNPACK's int8
        # convolutions run at about the fp32 rate; with VNNI/AMX several times faster
        "isa": sorted(f for f in flags if f in REPORTED_ISA),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": {p: _version(p) for p in ("torch", "onnxruntime", "ai-edge-litert", "numpy")},
        "load_avg": load,
    }


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def gemm_peak(threads: int, n: int = 1024, reps: int = 8) -> dict[str, float]:
    """Best-of-``reps`` fp32 ``n×n @ n×n`` with ``threads`` threads, as GMAC/s.

    The best (not median) run is the closest to what the hardware can do; that is the limit the
    models' achieved GMAC/s are compared with.
    """
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.rand(n, n, generator=g)
    b = torch.rand(n, n, generator=g)
    with torch_threads(threads), torch.inference_mode():
        for _ in range(2):
            torch.matmul(a, b)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - t0)
    best = min(times)
    return {"threads": threads, "n": n, "best_ms": best * 1e3, "gmacs_per_s": n**3 / best / 1e9}


# -- runners ---------------------------------------------------------------------------------


def make_input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """The one input every model/backend sees: NCHW float32 uniform in [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32)


@dataclasses.dataclass
class Target:
    """One model on one backend: the file actually run may be a temporary ONNX export."""

    info: ModelInfo
    backend: str
    run_path: Path
    label: str


def _torch_runner(t: Target, x: np.ndarray, threads: int) -> Callable[[], object]:
    import torch

    from dmad.compress.checkpoint import load_model

    model, _ = load_model(t.run_path)
    xt = torch.from_numpy(x)

    def run() -> object:
        with torch.inference_mode():
            return model(xt)

    return run


def _ort_runner(t: Target, x: np.ndarray, threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(t.run_path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise DmadError(f"{t.run_path}: ONNX Runtime cannot load it ({str(exc)[:200]})") from None
    name = sess.get_inputs()[0].name
    feed = {name: x}
    return lambda: sess.run(None, feed)


def _tflite_runner(t: Target, x: np.ndarray, threads: int) -> Callable[[], object]:
    from dmad.export.parity import make_interpreter

    it = make_interpreter(t.run_path, threads, delegate=t.backend == "tflite-xnnpack")
    d = it.get_input_details()[0]
    xx = x
    if tuple(d["shape"]) != x.shape:
        xx = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    if np.dtype(d["dtype"]) in (np.int8, np.uint8):
        scale, zp = d["quantization"]
        info = np.iinfo(d["dtype"])
        xx = np.clip(np.round(xx / scale + zp), info.min, info.max).astype(d["dtype"])
    it.set_tensor(d["index"], xx)
    return it.invoke


RUNNERS: dict[str, Callable[[Target, np.ndarray, int], Callable[[], object]]] = {
    "torch": _torch_runner,
    "ort": _ort_runner,
    "tflite-xnnpack": _tflite_runner,
    "tflite-builtin": _tflite_runner,
}


def stats_ms(samples: list[float]) -> dict[str, float]:
    arr = np.asarray(samples)
    return {
        "median_ms": float(np.median(arr)),
        "p90_ms": float(np.percentile(arr, 90)),
        "min_ms": float(arr.min()),
        "mean_ms": float(arr.mean()),
        "std_ms": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
    }


def _timed(f: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    f()
    return (time.perf_counter() - t0) * 1e3


def time_blocked(files: list[tuple[Path, tuple[int, ...]]], backend: str, threads: int,
                 runs: int, warmup: int, rounds: int = 1, seed: int = 0) -> list[list[float]]:
    """Median milliseconds of each file in each of ``rounds`` passes over all of them; within a
    pass each file runs blocked (``warmup``, then ``runs`` timed runs), with the runners, input
    and timer of :func:`run_interleaved`. Passes spread a drift of the machine's speed over
    every file alike (``dmad latency-table`` times hundreds of small models and compares their
    sums with whole models). Needs no :class:`ModelInfo`."""
    with torch_threads(threads):
        fns = []
        for path, shape in files:
            t = Target(info=None, backend=backend, run_path=Path(path),  # type: ignore[arg-type]
                       label=Path(path).name)
            fns.append(RUNNERS[backend](t, make_input(shape, seed), threads))
        out: list[list[float]] = [[] for _ in files]
        for _ in range(rounds):
            for i, f in enumerate(fns):
                for _ in range(warmup):
                    f()
                out[i].append(float(np.median([_timed(f) for _ in range(runs)])))
        return out


def run_interleaved(
    targets: list[Target], threads: int, runs: int, warmup: int, x_for: Callable[[Target],
                                                                            np.ndarray],
    order: str = "interleaved",
) -> list[dict[str, Any]]:
    """Time ``targets`` (one backend, one thread count).

    ``interleaved``: in alternation, A B A B … (warm-up runs interleaved too, then excluded);
    round i of every target is then a pair measured at the same moment. ``blocked``: each
    target's warm-up and runs back to back, A A … B B …, as an app runs one model (its weights
    stay in the caches). Each result carries its raw samples and the order.
    """
    if order not in ORDERS:
        raise DmadError(f"--order: {order!r} is not one of {', '.join(ORDERS)}")
    with torch_threads(threads):
        fns = [RUNNERS[t.backend](t, x_for(t), threads) for t in targets]
        samples: list[list[float]] = [[] for _ in targets]
        if order == "interleaved":
            for _ in range(warmup):
                for f in fns:
                    f()
            for _ in range(runs):
                for i, f in enumerate(fns):
                    samples[i].append(_timed(f))
        else:
            for i, f in enumerate(fns):
                for _ in range(warmup):
                    f()
                samples[i] = [_timed(f) for _ in range(runs)]
    out = []
    for t, s in zip(targets, samples, strict=True):
        st = stats_ms(s)
        gm = t.info.gmacs_true
        out.append(
            {
                "platform": "host",
                "model": t.label,
                "path": str(t.info.path),
                "backend": t.backend,
                "precision": t.info.precision,
                "threads": threads,
                "order": order,
                "runs": runs,
                "warmup": warmup,
                **st,
                "gmacs_true": gm,
                "gmacs_per_s": gm / (st["median_ms"] / 1e3) if gm else None,
                "samples_ms": [round(v, 4) for v in s],
            }
        )
    return out


def export_onnx_temp(pt: Path, shape: tuple[int, ...], workdir: Path) -> Path:
    """Export a dmad model to ONNX (opset 17, dynamic H/W) so ORT can time a checkpoint
    without the export stage; the file lives in ``workdir`` and is deleted with it."""
    import torch

    from dmad.compress.checkpoint import load_model

    model, _ = load_model(pt)
    out = workdir / f"{pt.stem}.onnx"
    with warnings_silenced():
        torch.onnx.export(
            model, (torch.zeros(shape),), str(out), opset_version=17, input_names=["input"],
            output_names=["output"], dynamo=False,
        )
    return out


@contextlib.contextmanager
def warnings_silenced() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def expand_backends(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        n = n.strip().lower()
        if not n:
            continue
        for b in BACKEND_ALIASES.get(n, (n,)):
            if b not in BACKENDS:
                raise DmadError(
                    f"--backends: unknown backend {n!r} (choose from torch, ort, tflite, "
                    "tflite-xnnpack, tflite-builtin)"
                )
            if b not in out:
                out.append(b)
    if not out:
        raise DmadError("--backends: no backend given")
    return out


def applicable(info: ModelInfo, backend: str) -> bool:
    return {"torch": info.kind == "torch", "ort": info.kind in ("onnx", "torch"),
            "tflite-xnnpack": info.kind == "tflite",
            "tflite-builtin": info.kind == "tflite"}[backend]


def bench_groups(
    groups: list[list[tuple[ModelInfo, str, str]]],
    threads: list[int],
    runs: int,
    warmup: int,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    orders: tuple[str, ...] = ("interleaved",),
) -> dict[str, Any]:
    """Benchmark groups of (model, backend, label); each group is timed per thread count in
    each of ``orders`` (:func:`run_interleaved`).

    Returns {"machine", "peak", "results", "models"}. A .pt asked to run on ORT is exported to a
    temporary ONNX first. The GEMM probe runs once per thread count in this same session.
    """
    if runs < 1 or warmup < 0:
        raise DmadError(f"--runs must be >= 1 and --warmup >= 0 (got {runs}, {warmup})")
    if not threads or min(threads) < 1:
        raise DmadError(f"--threads: thread counts must be >= 1, got {threads}")
    say = progress or (lambda s: None)
    machine = machine_info()
    results: list[dict[str, Any]] = []
    peak: dict[str, Any] = {}
    inputs: dict[tuple[int, ...], np.ndarray] = {}

    def x_for(t: Target) -> np.ndarray:
        s = t.info.input_shape
        if s not in inputs:
            inputs[s] = make_input(s, seed)
        return inputs[s]

    total, done, t0 = len(threads) * len(groups) * len(orders), 0, time.perf_counter()

    def eta() -> str:
        """``[k/N]`` and the time left, from the mean time of the settings done so far."""
        if not done:
            return f"[1/{total}]"
        left = (time.perf_counter() - t0) / done * (total - done)
        return f"[{done + 1}/{total}, about {left:.0f} s left]"

    with tempfile.TemporaryDirectory(prefix="dmad-bench-") as tmp:
        exported: dict[Path, Path] = {}
        for th in threads:
            say(f"GEMM peak probe, {th} thread(s)")
            peak[str(th)] = gemm_peak(th)
            for group in groups:
                targets = []
                for info, backend, label in group:
                    run_path = info.path
                    if backend == "ort" and info.kind == "torch":
                        if info.path not in exported:
                            say(f"exporting {info.path.name} to ONNX for ORT")
                            exported[info.path] = export_onnx_temp(info.path, info.input_shape,
                                                                   Path(tmp))
                        run_path = exported[info.path]
                    targets.append(Target(info, backend, run_path, label))
                for order in orders:
                    say(f"{eta()} {group[0][1]}, {th} thread(s), {order}: "
                        + " / ".join(t.label for t in targets))
                    done += 1
                    for r in run_interleaved(targets, th, runs, warmup, x_for, order):
                        pk = peak[str(th)]["gmacs_per_s"]
                        r["peak_gmacs_per_s"] = pk
                        r["efficiency"] = r["gmacs_per_s"] / pk if r["gmacs_per_s"] else None
                        results.append(r)
    machine["load_avg_after"] = machine_info()["load_avg"]
    flag_oversubscription(results)
    notes = []
    loads = [x[0] for x in (machine["load_avg"], machine["load_avg_after"]) if x]
    if loads and max(loads) >= machine["usable_cores"]:
        notes.append(
            f"The machine was busy (1-min load average up to {max(loads):.1f} on "
            f"{machine['usable_cores']} cores): other processes competed for the CPU, so "
            "absolute latencies are unreliable; ratios between interleaved models less so."
        )
    return {"machine": machine, "peak": peak, "results": results, "notes": notes}


def flag_oversubscription(results: list[dict[str, Any]]) -> None:
    """Flag a multi-thread result that is much slower than the same model on one thread.

    More threads never make a kernel 1.5× slower on idle cores; when it happens the cores were
    taken (another process, or OpenMP threads spin-waiting for a descheduled peer), and the
    number measures the machine's load, not the model. Said next to the number, not hidden.
    """
    single = {(r["path"], r["backend"]): r["median_ms"] for r in results if r["threads"] == 1}
    for r in results:
        r.setdefault("flags", [])
        base = single.get((r["path"], r["backend"]))
        if r["threads"] > 1 and base and r["median_ms"] > 1.5 * base:
            r["flags"].append(
                f"{r['median_ms'] / base:.1f}x slower with {r['threads']} threads than with 1: "
                "cores oversubscribed (busy machine, or OpenMP spin-waiting; try "
                "OMP_WAIT_POLICY=PASSIVE or an idle machine)"
            )


__all__ = [
    "BACKENDS",
    "ModelInfo",
    "applicable",
    "bench_groups",
    "count_onnx",
    "count_tflite",
    "expand_backends",
    "gemm_peak",
    "inspect_model",
    "machine_info",
    "make_input",
    "stats_ms",
]
