"""What a file is, from its first bytes, so a wrong file gets a message that helps.

A user handing dmad an HTML page saved by a browser, a Git LFS pointer, an ONNX model or a
safetensors file where a PyTorch checkpoint belongs should hear exactly that, not an unpickling
error. :func:`sniff` reads at most a few kilobytes and never executes anything.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

#: Kinds :func:`sniff` returns that ``torch.load`` may read.
TORCH_KINDS = ("pytorch-zip", "pickle")

_DESCRIPTIONS = {
    "pytorch-zip": "a PyTorch checkpoint",
    "pickle": "a pickle file (legacy PyTorch checkpoint)",
    "zip": "a ZIP archive that is not a PyTorch checkpoint",
    "lfs-pointer": "a Git LFS pointer, not the weights (run `git lfs pull` to fetch them)",
    "html": "an HTML page (a download that saved a web page instead of the file?)",
    "json": "a JSON file",
    "tflite": "a TensorFlow Lite model (.tflite)",
    "onnx": "an ONNX model",
    "safetensors": "a safetensors file (save it with torch.save, or load and re-save it)",
    "hdf5": "an HDF5 file (a Keras model?)",
    "png": "a PNG image",
    "jpeg": "a JPEG image",
    "gzip": "a gzip archive",
    "text": "a text file",
    "empty": "an empty file (0 bytes)",
    "unknown": "not a PyTorch file (unrecognised bytes)",
}


def describe(kind: str) -> str:
    """A phrase for a sniffed kind, e.g. ``"an ONNX model"``."""
    return _DESCRIPTIONS.get(kind, _DESCRIPTIONS["unknown"])


def _looks_onnx(head: bytes) -> bool:
    # ModelProto starts with ir_version (field 1, varint: 0x08) and names its producer early.
    return head[:1] == b"\x08" and any(t in head[:512] for t in (b"pytorch", b"onnx", b"tf2onnx",
                                                                   b"skl2onnx", b"keras"))


def _looks_safetensors(head: bytes) -> bool:
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n < 100_000_000 and head[8:10] in (b'{"', b"{ ")


def _text_kind(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None:
        return None
    stripped = text.lstrip().lower()
    if stripped.startswith("version https://git-lfs"):
        return "lfs-pointer"
    if stripped.startswith(("<!doctype html", "<html", "<head", "<body")):
        return "html"
    if stripped.startswith(("{", "[")):
        return "json"
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return "text"
    return None


def sniff(path: str | Path, head: bytes | None = None) -> str:
    """The kind of file at ``path`` (see :data:`_DESCRIPTIONS`); reads the first 4 KiB."""
    path = Path(path)
    if head is None:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    if not head:
        return "empty"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return "pytorch-zip"  # truncated: torch.load reports it as corrupt
        return "pytorch-zip" if any(n.endswith("data.pkl") for n in names) else "zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6):
        return "pickle"
    if head[4:8] == b"TFL3":
        return "tflite"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "hdf5"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if _looks_safetensors(head):
        return "safetensors"
    if _looks_onnx(head) or path.suffix.lower() == ".onnx":
        return "onnx"
    kind = _text_kind(head)
    if kind == "json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            kind = "text"
    return kind or "unknown"


__all__ = ["TORCH_KINDS", "describe", "sniff"]
