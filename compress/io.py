"""Atomic file writes and safe checkpoint loading.

Nothing dmad writes may ever be seen half-written: a kill at any point leaves either the previous
complete file or none. Every writer goes through :func:`atomic_write`, which writes a temporary
file in the destination folder, fsyncs it and renames it over the target (``os.replace`` is
atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

from dmad.compress.errors import DmadError
from dmad.compress.filekind import TORCH_KINDS, describe, sniff


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temporary file next to ``path``; on clean exit fsync it and rename it into place.

    Under torchrun only rank 0 may write: N ranks renaming N copies over one checkpoint would
    be a race, so a write from another rank is a bug and stops the run here."""
    path = Path(path)
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        raise RuntimeError(f"{path}: rank {dist.get_rank()} tried to write; only rank 0 writes")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise DmadError(f"{path}: cannot write here ({exc.strerror or exc})") from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600: give the file the usual mode
        with os.fdopen(fd, mode) as fh:
            yield fh  # type: ignore[misc]
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except OSError as exc:  # a full disk, a file-size limit: the file named, the old one kept
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if exc.filename not in (None, tmp, str(path)):
            raise  # the caller failed to read another file: not this write's failure
        raise DmadError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through :func:`atomic_write` (serialised in memory first, then written)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_write(path) as fh:
        fh.write(buf.getbuffer())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file atomically."""
    with atomic_write(path) as fh:
        fh.write(text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON (indented, trailing newline) atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | os.PathLike[str], obj: Any) -> None:
    """Append one JSON line and flush it to disk: a log of results as they arrive, which a
    kill or a later failure cannot take back (each earlier line stays whole)."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(obj, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise DmadError(f"{p}: cannot be written ({exc.strerror or exc})") from None


def safe_load(path: str | os.PathLike[str]) -> Any:
    """Load a checkpoint with ``weights_only=True``; every failure becomes a one-line DmadError.

    ``weights_only`` refuses pickled code, so a checkpoint from an untrusted source cannot run
    anything on load.
    """
    path = Path(path)
    if not path.exists():
        raise DmadError(f"{path}: no such file")
    if path.is_dir():
        raise DmadError(f"{path}: is a folder, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise DmadError(f"{path}: file is empty (0 bytes)")
    try:
        kind = sniff(path)
    except OSError as exc:
        raise DmadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if kind not in TORCH_KINDS:
        raise DmadError(f"{path}: is {describe(kind)}, not a PyTorch checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling failed"
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise DmadError(
                f"{path}: refused, the checkpoint holds pickled code or objects other than "
                "tensors (loaded with weights_only=True)"
            ) from None
        raise DmadError(f"{path}: not a readable checkpoint ({first[:200]})") from None
    except MemoryError:
        raise DmadError(f"{path}: too large to load into this machine's memory") from None
    except Exception as exc:  # any failure of a corrupt file is the file's fault
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DmadError(
            f"{path}: not a readable checkpoint, truncated or corrupt ({msg[:200]})"
        ) from None
