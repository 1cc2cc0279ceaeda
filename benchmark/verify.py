"""Model files checked before anything loads them in the dmad process.

LiteRT's Python interpreter does not verify a flatbuffer: a ``.tflite`` with a few bytes changed
kills the process with SIGSEGV in the constructor, before any Python exception can be raised, so
a benchmark would die with no message (and not always: the same file may crash one run in four,
so a child-process probe alone proves nothing). A file is therefore checked in three steps: its
header (the ``TFL3`` identifier, a root table inside the file); the whole flatbuffer read in
Python with every index checked against what it names (:func:`_structure`); then one load,
allocation and invoke in a child process, whose crash becomes one line naming the file and the
signal. ``.onnx`` files go through ``onnx.checker``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from dmad.compress.errors import DmadError
from dmad.compress.filekind import describe, sniff

#: Files that passed, by (path, size, mtime): a file is probed once per process.
_PASSED: set[tuple[str, int, int]] = set()

_PROBE = """
import sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
for kind in (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, OpResolverType.AUTO):
    try:
        it = Interpreter(sys.argv[1], experimental_op_resolver_type=kind, num_threads=1)
        it.allocate_tensors()
        for d in it.get_input_details():
            it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        it.invoke()
    except Exception as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        print(text[:200], file=sys.stderr)
        sys.exit(3)
"""

#: Seconds a probe may take (a full ResNet-9 at 256² invokes in about a second).
PROBE_TIMEOUT_S = 300


def _key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _header(path: Path) -> None:
    """The flatbuffer's identifier and root offset: cheap refusals of files that are no model."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    size = path.stat().st_size
    if len(head) < 8 or head[4:8] != b"TFL3":
        kind = sniff(path)
        raise DmadError(f"{path}: is {describe(kind)}, not a .tflite model (no TFL3 identifier)")
    root = int.from_bytes(head[:4], "little")
    if not 8 <= root < size:
        raise DmadError(f"{path}: not a valid .tflite (its root table lies outside the file: "
                        "truncated or corrupt)")


#: Bytes per element of the tensor types whose constant data size is checked (TensorType ids).
_ITEMSIZE = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8}


def _indices(values: object) -> list[int]:
    return [] if values is None else [int(v) for v in values]  # type: ignore[attr-defined]


def _structure(path: Path) -> None:
    """Every table and vector of the flatbuffer read in Python, where an out-of-range offset is
    an exception rather than a wild read, and every index checked against what it points to:
    what LiteRT's Python interpreter would otherwise dereference unchecked."""
    from ai_edge_litert import schema_py_generated as fb

    data = path.read_bytes()
    try:
        model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    except Exception as exc:  # struct.error, ValueError, IndexError, UnicodeDecodeError...
        raise DmadError(f"{path}: not a valid .tflite (its flatbuffer does not parse: "
                        f"{type(exc).__name__}; truncated or corrupt)") from None
    buffers = model.buffers or []
    n_codes = len(model.operatorCodes or [])
    if not model.subgraphs:
        raise DmadError(f"{path}: not a valid .tflite (no subgraph)")

    def bad(what: str) -> DmadError:
        return DmadError(f"{path}: not a valid .tflite ({what}; corrupt)")

    for b in buffers:
        if (b.offset or 0) > 1 and (b.offset + (b.size or 0)) > len(data):
            raise bad("a buffer lies outside the file")
    for sg in model.subgraphs:
        tensors = sg.tensors or []
        for t in tensors:
            if not 0 <= t.buffer < max(len(buffers), 1):
                raise bad(f"tensor {t.buffer} names a missing buffer")
            shape = _indices(t.shape)
            if any(d < 0 for d in shape):
                raise bad("a tensor has a negative dimension")
            payload = buffers[t.buffer].data if buffers and t.buffer < len(buffers) else None
            size = _ITEMSIZE.get(t.type)
            if payload is not None and len(payload) and size is not None and \
                    len(payload) < size * int(np.prod(shape, dtype=np.int64)):
                raise bad("a constant tensor is larger than its data")
        for i in _indices(sg.inputs) + _indices(sg.outputs):
            if not 0 <= i < len(tensors):
                raise bad(f"graph input/output {i} is not a tensor")
        for op in sg.operators or []:
            if not 0 <= op.opcodeIndex < n_codes:
                raise bad(f"operator code {op.opcodeIndex} does not exist")
            for i in _indices(op.inputs) + _indices(op.outputs):
                if not -1 <= i < len(tensors):
                    raise bad(f"an operator names tensor {i} of {len(tensors)}")


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def _seen(path: Path) -> tuple[str, int, int] | None:
    """The file's cache key, or None when it already passed in this process."""
    if not path.is_file():
        raise DmadError(f"{path}: no such file")
    key = _key(path)
    return None if key in _PASSED else key


def verify_tflite(path: str | os.PathLike[str]) -> None:
    """Refuse a ``.tflite`` LiteRT cannot load, allocate or run, without risking this process."""
    path = Path(path)
    key = _seen(path)
    if key is None:
        return
    _header(path)
    _structure(path)
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True,
                           text=True, timeout=PROBE_TIMEOUT_S,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    except subprocess.TimeoutExpired:
        raise DmadError(f"{path}: LiteRT did not finish loading and running it in "
                        f"{PROBE_TIMEOUT_S} s; a corrupt .tflite?") from None
    if r.returncode < 0:
        raise DmadError(f"{path}: the LiteRT interpreter crashed on it "
                        f"({_signal_name(r.returncode)}); the .tflite is corrupt or truncated")
    if r.returncode != 0:
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        why = lines[-1][:200] if lines else f"exit code {r.returncode}"
        raise DmadError(f"{path}: not a loadable .tflite ({why})")
    _PASSED.add(key)


def verify_onnx(path: str | os.PathLike[str]) -> None:
    """Refuse an ``.onnx`` that does not parse or fails ``onnx.checker``."""
    import onnx

    path = Path(path)
    key = _seen(path)
    if key is None:
        return
    kind = sniff(path)
    if kind not in ("onnx", "unknown"):
        raise DmadError(f"{path}: is {describe(kind)}, not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf and checker errors have no common base
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DmadError(f"{path}: not a valid ONNX model ({text})") from None
    if not model.graph.input or not model.graph.node:
        raise DmadError(f"{path}: not a valid ONNX model (an empty graph)")
    _PASSED.add(key)


__all__ = ["PROBE_TIMEOUT_S", "verify_onnx", "verify_tflite"]
