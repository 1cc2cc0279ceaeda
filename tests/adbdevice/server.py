"""A loopback adb *server* with emulated phones behind it, for testing without a phone.

The real ``adb`` client talks to an adb server over TCP with the "smart socket" protocol: a request
is 4 hex digits of length plus the text; the answer is ``OKAY`` or ``FAIL`` + a length-prefixed
message. Host services (``host:version``, ``host:devices-l``, ``host-serial:S:features``,
``host-serial:S:get-state``, ``host:kill``) are answered and the connection is closed (the client
waits for that close). Transport selection (``host:transport:S``, ``host:transport-any``, and the
``host:tport:serial:S`` / ``host:tport:any`` form adb 1.0.41 uses, which also returns an 8-byte
transport id) turns the connection into a stream to one device, which then serves one of:

* ``shell:CMD`` (v1: raw output, then close) and ``shell,v2,...:CMD`` (packets ``id u8, len u32le``:
  stdout 1, stderr 2, exit 3; the client's stdin 0 / close-stdin 4 / window-size 5 are read and
  ignored). We advertise ``shell_v2`` so the client gets exit codes, as on every phone since
  Android 7.
* ``sync:`` with ``STAT``, ``LIST``, ``SEND`` (``DATA``… ``DONE`` → ``OKAY``/``FAIL``), ``RECV``
  (``DATA``… ``DONE``) and ``QUIT``: what ``adb push`` / ``adb pull`` send.

Because the real client drives this end to end, the harness's quoting, error handling and parsing
are tested exactly as they run against a phone. The device's shell is :mod:`tests.adbdevice.shell`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import socketserver
import stat
import struct
import threading
from pathlib import Path
from typing import Any

from tests.adbdevice.shell import DeviceShell

SERVER_VERSION = 41  # adb 1.0.41 (Debian's adb 29.0.6); the client kills servers of other versions
FEATURES = "shell_v2,cmd"  # no stat_v2/ls_v2: the client then uses STAT/LIST v1, which we implement
SYNC_DATA_MAX = 64 * 1024
REMOTE_ROOT = "/data/local/tmp"


@dataclasses.dataclass
class EmulatedDevice:
    """One emulated phone: its serial, adb state, properties and configurable faults.

    ``root`` is a host folder standing for ``/data/local/tmp``. Faults: ``push_error`` (SEND is
    answered FAIL with this text), ``noexec`` (chmod does not set the exec bit, as on a noexec
    mount), ``bench_exit`` (the stand-in benchmark exits with this code after an error line),
    ``bench_garbage`` (it prints text that is not benchmark output), ``thermal_status``,
    ``thermal_statuses`` (readings ``dumpsys thermalservice`` gives first, one per call, before
    it settles on ``thermal_status``: a phone cooling down), ``fail_delegate`` (runs with that
    delegate fail as the real tool does when it cannot apply it), ``hang_s`` (a benchmark run
    whose --graph contains ``hang_graph`` hangs this long unless killed: ``pgrep``/``kill``
    see it in :attr:`procs`), ``gpu``
    (the CompiledModel stand-in finds a GPU accelerator).
    """

    serial: str
    root: Path
    state: str = "device"  # device | unauthorized | offline
    props: dict[str, str] = dataclasses.field(default_factory=dict)
    push_error: str | None = None
    noexec: bool = False
    bench_exit: int | None = None
    bench_garbage: bool = False
    thermal_status: int = 0
    thermal_statuses: list[int] = dataclasses.field(default_factory=list)
    fail_delegate: str | None = None
    hang_s: float | None = None
    hang_graph: str = ""
    gpu: bool = False
    transport_id: int = 1
    #: running stand-in processes: pid → {"cmdline": str, "killed": threading.Event}
    procs: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    killed: list[int] = dataclasses.field(default_factory=list)  # pids killed with kill -9
    next_pid: int = 4242
    commands: list[str] = dataclasses.field(default_factory=list)  # every shell command received

    def __post_init__(self) -> None:
        defaults = {
            "ro.product.model": "Emulated Pixel",
            "ro.product.manufacturer": "dmad",
            "ro.soc.manufacturer": "Loopback",
            "ro.soc.model": "LB1000",
            "ro.board.platform": "loopback",
            "ro.build.version.sdk": "35",
            "ro.build.version.release": "15",
            "ro.product.cpu.abi": "arm64-v8a",
        }
        self.props = {**defaults, **self.props}
        self.root.mkdir(parents=True, exist_ok=True)

    def features(self) -> str:
        return FEATURES

    def read_thermal(self) -> int:
        """The next thermal reading: the scripted ones first, then the steady status."""
        return self.thermal_statuses.pop(0) if self.thermal_statuses else self.thermal_status

    def spawn(self, cmdline: str) -> tuple[int, threading.Event]:
        pid = self.next_pid
        self.next_pid += 1
        ev = threading.Event()
        self.procs[pid] = {"cmdline": cmdline, "killed": ev}
        return pid, ev


def _proto(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return b"%04x" % len(data) + data


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return bytes(buf)


class _Handler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        with contextlib.suppress(ConnectionError, OSError):
            self._serve(sock)

    # -- host services -------------------------------------------------------------------------

    def _fail(self, sock: socket.socket, msg: str) -> None:
        sock.sendall(b"FAIL" + _proto(msg))

    def _serve(self, sock: socket.socket) -> None:
        emu = self.server.emu
        while True:
            n = int(_recv_exact(sock, 4), 16)
            req = _recv_exact(sock, n).decode("utf-8", "replace")
            emu.log.append(req)
            if req == "host:version":
                sock.sendall(b"OKAY" + _proto(f"{emu.version:04x}"))
                return
            if req == "host:kill":
                sock.sendall(b"OKAY")
                return
            if req in ("host:devices", "host:devices-l"):
                sock.sendall(b"OKAY" + _proto(emu.devices_text(long=req.endswith("-l"))))
                return
            if req.startswith("host-serial:") or req in (
                "host:features",
                "host:get-state",
                "host:get-serialno",
            ):
                self._host_query(sock, req)
                return
            if req.startswith(("host:transport", "host:tport:")):
                dev = self._select(sock, req)
                if dev is None:
                    return
                self._device_service(sock, dev)
                return
            self._fail(sock, f"unknown host service '{req}'")
            return

    def _host_query(self, sock: socket.socket, req: str) -> None:
        """``host[-serial:S]:features|get-state|get-serialno``."""
        emu = self.server.emu
        if req.startswith("host-serial:"):
            serial, _, what = req[len("host-serial:") :].rpartition(":")
            dev, err = emu.find(serial)
        else:
            what = req.rsplit(":", 1)[1]
            dev, err = emu.find(None)
        if dev is None:
            self._fail(sock, err)
            return
        if what == "get-state":
            sock.sendall(b"OKAY" + _proto(dev.state))
        elif what == "get-serialno":
            sock.sendall(b"OKAY" + _proto(dev.serial))
        elif what == "features":
            sock.sendall(b"OKAY" + _proto(dev.features()))
        else:
            self._fail(sock, f"unknown host service '{req}'")

    def _select(self, sock: socket.socket, req: str) -> EmulatedDevice | None:
        emu = self.server.emu
        tport = req.startswith("host:tport:")
        rest = req.split(":", 2)[2] if tport else req[len("host:transport") :]
        serial: str | None
        if tport:
            serial = rest[len("serial:") :] if rest.startswith("serial:") else None
        else:
            serial = rest[1:] if rest.startswith(":") else None
        dev, err = emu.find(serial)
        if dev is None:
            self._fail(sock, err)
            return None
        if dev.state == "unauthorized":
            self._fail(
                sock,
                "device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set\n"
                "Try 'adb kill-server' if that seems wrong.\n"
                "Otherwise check for a confirmation dialog on your device.",
            )
            return None
        if dev.state != "device":
            self._fail(sock, "device offline")
            return None
        sock.sendall(b"OKAY" + (struct.pack("<Q", dev.transport_id) if tport else b""))
        return dev

    # -- device services -----------------------------------------------------------------------

    def _device_service(self, sock: socket.socket, dev: EmulatedDevice) -> None:
        n = int(_recv_exact(sock, 4), 16)
        req = _recv_exact(sock, n).decode("utf-8", "replace")
        self.server.emu.log.append(f"{dev.serial}> {req}")
        if req.startswith("shell"):
            head, _, cmd = req.partition(":")
            opts = head.split(",")[1:]
            sock.sendall(b"OKAY")
            self._shell(sock, dev, cmd, v2="v2" in opts)
        elif req == "sync:":
            sock.sendall(b"OKAY")
            self._sync(sock, dev)
        else:
            self._fail(sock, f"closed (unsupported service {req.split(':')[0]!r})")

    def _shell(self, sock: socket.socket, dev: EmulatedDevice, cmd: str, v2: bool) -> None:
        dev.commands.append(cmd)
        out, err, rc = DeviceShell(dev).run(cmd)
        if not v2:
            sock.sendall(out + err)
            return
        for pid, data in ((1, out), (2, err)):
            for i in range(0, len(data), SYNC_DATA_MAX):
                chunk = data[i : i + SYNC_DATA_MAX]
                sock.sendall(struct.pack("<BI", pid, len(chunk)) + chunk)
        sock.sendall(struct.pack("<BIB", 3, 1, rc & 0xFF))
        # Give the client a moment to read everything before we close (it drains on close anyway).
        sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            sock.settimeout(2)
            while sock.recv(4096):
                pass

    def _sync(self, sock: socket.socket, dev: EmulatedDevice) -> None:
        shell = DeviceShell(dev)
        while True:
            sid, n = struct.unpack("<4sI", _recv_exact(sock, 8))
            if sid == b"QUIT":
                return
            arg = _recv_exact(sock, n).decode("utf-8", "replace")
            self.server.emu.log.append(f"{dev.serial}> sync {sid.decode()} {arg}")
            if sid == b"STAT":
                p = shell.host_path(arg)
                if p is not None and p.exists():
                    st = p.stat()
                    mode = st.st_mode if p.is_dir() else dev_mode(p)
                    sock.sendall(b"STAT" + struct.pack("<III", mode, st.st_size, int(st.st_mtime)))
                elif arg.rstrip("/") in ("/data/local", "/data", ""):
                    sock.sendall(b"STAT" + struct.pack("<III", stat.S_IFDIR | 0o771, 4096, 0))
                else:
                    sock.sendall(b"STAT" + struct.pack("<III", 0, 0, 0))
            elif sid == b"LIST":
                p = shell.host_path(arg)
                if p is not None and p.is_dir():
                    for child in sorted(p.iterdir()):
                        if child.name.startswith(".mode."):
                            continue
                        name = child.name.encode()
                        st = child.stat()
                        sock.sendall(
                            b"DENT"
                            + struct.pack("<IIII", dev_mode(child), st.st_size, int(st.st_mtime),
                                          len(name))
                            + name
                        )
                sock.sendall(b"DONE" + struct.pack("<IIII", 0, 0, 0, 0))
            elif sid == b"SEND":
                path, _, mode_s = arg.rpartition(",")
                self._recv_file(sock, dev, shell, path, int(mode_s or "420"))
            elif sid == b"RECV":
                p = shell.host_path(arg)
                if p is None or not p.is_file():
                    sock.sendall(b"FAIL" + struct.pack("<I", 25) + b"No such file or directory")
                    continue
                data = p.read_bytes()
                for i in range(0, len(data), SYNC_DATA_MAX):
                    chunk = data[i : i + SYNC_DATA_MAX]
                    sock.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
                sock.sendall(b"DONE" + struct.pack("<I", 0))
            else:
                msg = f"unknown sync request {sid!r}".encode()
                sock.sendall(b"FAIL" + struct.pack("<I", len(msg)) + msg)
                return

    def _recv_file(
        self, sock: socket.socket, dev: EmulatedDevice, shell: DeviceShell, path: str, mode: int
    ) -> None:
        data = bytearray()
        while True:
            sid, n = struct.unpack("<4sI", _recv_exact(sock, 8))
            if sid == b"DATA":
                data += _recv_exact(sock, n)
            elif sid == b"DONE":
                break  # n is the mtime
            else:
                raise ConnectionError(f"unexpected {sid!r} during SEND")
        err = dev.push_error
        target = shell.host_path(path)
        if err is None and target is None:
            err = f"couldn't create file: {path}: Read-only file system"
        if err is not None:
            msg = err.encode()
            sock.sendall(b"FAIL" + struct.pack("<I", len(msg)) + msg)
            return
        assert target is not None
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(bytes(data))
        set_dev_mode(target, stat.S_IFREG | (mode & 0o7777))
        sock.sendall(b"OKAY" + struct.pack("<I", 0))


def dev_mode(p: Path) -> int:
    """The device-side mode bits of a file (kept in a side file: host modes may differ)."""
    if p.is_dir():
        return stat.S_IFDIR | 0o771
    side = p.parent / f".mode.{p.name}"
    if side.exists():
        return int(side.read_text())
    return stat.S_IFREG | 0o644


def set_dev_mode(p: Path, mode: int) -> None:
    (p.parent / f".mode.{p.name}").write_text(str(mode))


class _TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    emu: EmulatedAdbServer


class EmulatedAdbServer:
    """Start with :meth:`start`; point the client at it with :attr:`socket_spec`
    (``ADB_SERVER_SOCKET=tcp:127.0.0.1:PORT``)."""

    def __init__(self, root: Path, version: int = SERVER_VERSION) -> None:
        self.root = root
        self.version = version  # must equal the client's, or it kills us and starts its own
        self.devices: list[EmulatedDevice] = []
        self.log: list[str] = []
        self._server: _TCPServer | None = None
        self._thread: threading.Thread | None = None

    def add_device(self, serial: str, **kw: Any) -> EmulatedDevice:
        dev = EmulatedDevice(
            serial, self.root / serial, transport_id=len(self.devices) + 1, **kw
        )
        self.devices.append(dev)
        return dev

    def find(self, serial: str | None) -> tuple[EmulatedDevice | None, str]:
        """The device a request addresses, or the error text the real server gives."""
        if serial is not None:
            for d in self.devices:
                if d.serial == serial:
                    return d, ""
            return None, f"device '{serial}' not found"
        if not self.devices:
            return None, "no devices/emulators found"
        if len(self.devices) > 1:
            return None, "more than one device/emulator"
        return self.devices[0], ""

    def devices_text(self, long: bool) -> str:
        lines = []
        for d in self.devices:
            line = f"{d.serial}\t{d.state}"
            if long:
                line = f"{d.serial:<22} {d.state}"
                if d.state == "device":
                    model = d.props["ro.product.model"].replace(" ", "_")
                    line += f" product:emu model:{model} device:emu transport_id:{d.transport_id}"
                else:
                    line += f" transport_id:{d.transport_id}"
            lines.append(line)
        return "".join(f"{line}\n" for line in lines)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def socket_spec(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def start(self) -> EmulatedAdbServer:
        self._server = _TCPServer(("127.0.0.1", 0), _Handler)
        self._server.emu = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
