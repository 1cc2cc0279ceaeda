"""Hybrid convolutions in an int8 file: int8 weights, float activations in and out.

Why: a layer the int8 chooser keeps float is kept for its *activations* (a convolution whose
output an InstanceNorm stretches back to unit variance on a flat photograph, so a per-tensor
int8 grid set on other images is too coarse there); its weights round harmlessly (int8
weights alone cost nothing measurable). A float convolution at full resolution runs at the
fp32 rate and was most of what an int8 student lost to its float layers. TFLite's hybrid
convolution keeps the float input and output but stores the weights in int8 per output
channel; XNNPACK runs it as a dynamically quantised convolution (the input rounded to int8 with
the range of this image's tensor, 1×1 convolutions per pixel) at the int8 rate where the CPU
has int8 dot products, and its output, the tensor that needed the precision, stays float.

Runs in the converter subprocess on the quantiser's output: the layers were kept float there
(``denylisted_nodes``), and their filters are rewritten here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

__all__ = ["hybridize", "int8_per_channel"]

#: TFLite schema codes
_CONV_2D = 3
_FLOAT32, _INT8 = 0, 9


def int8_per_channel(w: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 in ``[-127, 127]`` per slice along ``axis`` (TFLite's per-channel
    convolution weights): ``(q, scale)`` with ``w ≈ q * scale``; an all-zero channel gets
    scale 1 (any scale represents it)."""
    w = np.asarray(w, np.float32)
    other = tuple(d for d in range(w.ndim) if d != axis)
    peak = np.abs(w).max(axis=other) if w.size else np.zeros(w.shape[axis], np.float32)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def hybridize(model: bytes, conv_outputs: Iterable[str]) -> tuple[bytes, list[str]]:
    """``model`` with the float CONV_2D ops whose output tensor is named in ``conv_outputs``
    turned hybrid (int8 per-channel filter, float input, bias and output). Returns the new
    flatbuffer and the output names of the convolutions it changed."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils as fb

    want = set(conv_outputs)
    m = fb.read_model_from_bytearray(bytearray(model))
    sub = m.subgraphs[0]
    readers = Counter(t.buffer for g in m.subgraphs for t in g.tensors)
    op_reads = Counter(i for op in sub.operators for i in op.inputs)
    done: list[str] = []
    for op in sub.operators:
        code = m.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) != _CONV_2D:
            continue
        name = sub.tensors[op.outputs[0]].name
        name = name.decode() if isinstance(name, bytes) else name
        filt = sub.tensors[op.inputs[1]]
        data = m.buffers[filt.buffer].data if filt.buffer else None
        if (name not in want or filt.type != _FLOAT32 or data is None or not len(data)
                or op_reads[op.inputs[1]] > 1):  # a filter another op reads stays as it is
            continue
        w = np.frombuffer(bytes(bytearray(data)), np.float32).reshape(filt.shape)
        q, scale = int8_per_channel(w, axis=0)  # CONV_2D filters are O×H×W×I
        data = np.frombuffer(q.tobytes(), np.uint8)
        if readers[filt.buffer] == 1:
            m.buffers[filt.buffer].data = data
        else:  # never change a buffer another tensor reads
            buf = schema.BufferT()
            buf.data = data
            m.buffers.append(buf)
            filt.buffer = len(m.buffers) - 1
        filt.type = _INT8
        qp = schema.QuantizationParametersT()
        qp.scale = scale.tolist()
        qp.zeroPoint = [0] * len(scale)
        qp.quantizedDimension = 0
        filt.quantization = qp
        done.append(name)
    return bytes(fb.convert_object_to_bytearray(m)), done
