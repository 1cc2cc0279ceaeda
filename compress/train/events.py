"""TensorBoard event files written directly: training curves without importing TensorFlow.

Why not ``torch.utils.tensorboard``: its writer imports TensorFlow when it is installed (4 s
and a screenful of log lines at the start of every stage, and TensorFlow is not needed to
train). The format is small and stable: a TFRecord file (each record: length, masked CRC-32C
of the length, the bytes, masked CRC-32C of the bytes) of ``Event`` protocol buffers carrying
``Summary`` scalar values. TensorBoard and its readers open these files as their own.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

__all__ = ["EventWriter", "crc32c"]


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord files."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked(data: bytes) -> bytes:
    c = crc32c(data)
    return struct.pack("<I", (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2) + _varint(len(data)) + data


def _event(wall_time: float, step: int, *, version: str = "",
           scalars: dict[str, float] | None = None) -> bytes:
    """An ``Event``: wall_time (1, double), step (2, int64), file_version (3) or summary (5) of
    ``Summary.Value`` entries (tag 1, simple_value 2 as float)."""
    msg = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(step)
    if version:
        msg += _bytes_field(3, version.encode())
    if scalars:
        values = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5)
                         + struct.pack("<f", float(v)))
            for tag, v in scalars.items())
        msg += _bytes_field(5, values)
    return msg


class EventWriter:
    """Scalars into one event file in ``folder`` (created), as TensorBoard reads them.

    ``purge_from``: a resumed run restarts at this step; an event marks the steps from there on
    as superseded (TensorBoard's ``purge_step``), so the curve shows the resumed run once."""

    def __init__(self, folder: Path, purge_from: int | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}"
        self.path = folder / name
        self._fh = open(self.path, "ab")
        self._write(_event(now, 0, version="brain.Event:2"))
        if purge_from is not None:
            # SessionLog START (field 7, status 1) at the resume step: readers drop later events
            self._write(_event(now, purge_from) + _bytes_field(7, _field(1, 0) + _varint(1)))

    def _write(self, record: bytes) -> None:
        head = struct.pack("<Q", len(record))
        self._fh.write(head + _masked(head) + record + _masked(record))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One event with every value of this step (tags such as ``finetune/distill_AtoB``)."""
        if values:
            self._write(_event(time.time(), step, scalars=values))
            self._fh.flush()

    def close(self) -> None:
        self._fh.close()
