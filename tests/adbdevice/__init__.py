"""Loopback emulated Android device for testing ``dmad bench --android`` without a phone.

:class:`EmulatedAdbServer` speaks the adb server protocol on 127.0.0.1 so the real ``adb`` client
drives it (``ADB_SERVER_SOCKET=tcp:127.0.0.1:PORT``); its devices run a strict shell and a host-side
stand-in for ``benchmark_model``. See ``server.py``, ``shell.py`` and ``standin.py``.
"""

from __future__ import annotations

from pathlib import Path

from tests.adbdevice.server import EmulatedAdbServer, EmulatedDevice
from tests.adbdevice.shell import STANDIN_MARKER

__all__ = ["EmulatedAdbServer", "EmulatedDevice", "write_standin_binary"]


def write_standin_binary(path: Path, tool: str = "classic") -> Path:
    """A file the emulated device executes as its benchmark_model (a real phone would not):
    the classic tool's stand-in, or with ``tool="compiled"`` the LiteRT CompiledModel one's."""
    path.write_bytes(b"#!/system/bin/sh\n" + STANDIN_MARKER + f" tool={tool}".encode()
                     + b"\nexit 1\n")
    return path
