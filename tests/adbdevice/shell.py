"""The emulated device's ``/system/bin/sh``: a deliberately small, strict command interpreter.

It accepts only the commands the harness is meant to send (getprop, dumpsys thermalservice, cat,
chmod, rm, rmdir, mkdir, ls, sleep, echo, taskset, and executing a file under /data/local/tmp),
parsed with :mod:`shlex`. Any *unquoted* shell metacharacter (``; & | < > ( ) $ ` \\n`` and globs)
is refused with exit status 2: a harness that forgot to quote a file name fails loudly here instead
of silently running ``rm`` on a phone. Paths outside /data/local/tmp do not exist, except the
read-only files the harness reads.
"""

from __future__ import annotations

import shlex
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.adbdevice.server import EmulatedDevice

REMOTE_ROOT = "/data/local/tmp"
STANDIN_MARKER = b"# dmad-emulated-benchmark_model"
# Unquoted, these would make a real shell do more than run one command.
METACHARS = set(";&|<>()$`\n*?[]{}~#")

THERMAL_TEMPLATE = """\
IsStatusOverride: false
ThermalEventListeners:
\tcallbacks: 1
\tkilled: false
\tbroadcasts count: -1
ThermalStatusListeners:
\tcallbacks: 1
\tkilled: false
\tbroadcasts count: -1
Thermal Status: {status}
Cached temperatures:
\tTemperature{{mValue=33.1, mType=2, mName=battery, mStatus=0}}
HAL Ready: true
HAL connection:
\tThermalHAL 2.0 connected: yes
Current temperatures from HAL:
\tTemperature{{mValue={cpu:.1f}, mType=0, mName=cpu0-silver-usr, mStatus={status}}}
\tTemperature{{mValue={cpu2:.1f}, mType=0, mName=cpu4-gold-usr, mStatus={status}}}
\tTemperature{{mValue=33.1, mType=2, mName=battery, mStatus=0}}
\tTemperature{{mValue=34.7, mType=3, mName=skin-therm, mStatus=0}}
Current cooling devices from HAL:
\tCoolingDevice{{mValue=0, mType=2, mName=cpu0}}
"""


BATTERY_TEXT = """\
Current Battery Service state:
  AC powered: false
  USB powered: true
  Wireless powered: false
  Max charging current: 500000
  status: 2
  health: 2
  present: true
  level: 87
  scale: 100
  voltage: 4213
  temperature: 312
  technology: Li-ion
"""
CPUFREQ = "/sys/devices/system/cpu/cpufreq"
#: policy → (related cpus, governor, current kHz, max kHz): a phone's three clusters
POLICIES = {"policy0": ("0 1 2 3", "schedutil", 1804800, 1804800),
            "policy4": ("4 5 6", "schedutil", 2419200, 2419200),
            "policy7": ("7", "schedutil", 2841600, 2841600)}


def unquoted_metachar(cmd: str) -> str | None:
    """The first shell metacharacter outside quotes (POSIX sh rules for ' and " and \\)."""
    quote: str | None = None
    i = 0
    while i < len(cmd):
        c = cmd[i]
        if quote == "'":
            if c == "'":
                quote = None
        elif quote == '"':
            if c == "\\":
                i += 1
            elif c == '"':
                quote = None
            elif c in "$`":
                return c
        elif c == "\\":
            i += 1
        elif c in "'\"":
            quote = c
        elif c in METACHARS:
            return c
        i += 1
    return None


class DeviceShell:
    """Runs one command line on an :class:`EmulatedDevice`; returns (stdout, stderr, status)."""

    def __init__(self, dev: EmulatedDevice) -> None:
        self.dev = dev

    def host_path(self, remote: str) -> Path | None:
        """Map a device path under /data/local/tmp to the device's host folder (else None)."""
        norm = "/" + "/".join(p for p in remote.split("/") if p not in ("", "."))
        if ".." in norm.split("/"):
            return None
        if norm == REMOTE_ROOT:
            return self.dev.root
        if not norm.startswith(REMOTE_ROOT + "/"):
            return None
        return self.dev.root / norm[len(REMOTE_ROOT) + 1 :]

    def run(self, cmd: str) -> tuple[bytes, bytes, int]:
        bad = unquoted_metachar(cmd)
        if bad is not None:
            return b"", f"/system/bin/sh: refusing unquoted {bad!r} in: {cmd}\n".encode(), 2
        try:
            argv = shlex.split(cmd)
        except ValueError as exc:
            return b"", f"/system/bin/sh: syntax error: {exc}\n".encode(), 2
        if not argv:
            return b"", b"", 0
        return self.exec(argv)

    def exec(self, argv: list[str]) -> tuple[bytes, bytes, int]:
        name, args = argv[0], argv[1:]
        handler = getattr(self, f"cmd_{name}", None)
        if handler is not None and "/" not in name:
            return handler(args)  # type: ignore[no-any-return]
        if name.startswith("/"):
            return self.exec_file(name, args)
        return b"", f"/system/bin/sh: {name}: inaccessible or not found\n".encode(), 127

    # -- commands ------------------------------------------------------------------------------

    def cmd_getprop(self, args: list[str]) -> tuple[bytes, bytes, int]:
        props = self.dev.props
        if args:
            return (props.get(args[0], "") + "\n").encode(), b"", 0
        text = "".join(f"[{k}]: [{v}]\n" for k, v in sorted(props.items()))
        return text.encode(), b"", 0

    def cmd_dumpsys(self, args: list[str]) -> tuple[bytes, bytes, int]:
        if args == ["battery"]:
            return BATTERY_TEXT.encode(), b"", 0
        if args != ["thermalservice"]:
            return b"", f"Can't find service: {' '.join(args)}\n".encode(), 0
        s = self.dev.read_thermal()
        text = THERMAL_TEMPLATE.format(status=s, cpu=38.0 + 8 * s, cpu2=39.5 + 8 * s)
        return text.encode(), b"", 0

    def cmd_cat(self, args: list[str]) -> tuple[bytes, bytes, int]:
        out = b""
        for a in args:
            policy, _, leaf = a[len(CPUFREQ) + 1:].partition("/")
            if a.startswith(CPUFREQ + "/") and policy in POLICIES:
                cpus, gov, cur, top = POLICIES[policy]
                files = {"related_cpus": cpus, "scaling_governor": gov,
                         "scaling_cur_freq": cur, "scaling_max_freq": top}
                if leaf not in files:
                    return out, f"cat: {a}: No such file or directory\n".encode(), 1
                out += f"{files[leaf]}\n".encode()
                continue
            if a.startswith("/sys/class/thermal/thermal_zone") and a.endswith("/temp"):
                out += b"%d\n" % (38000 + 8000 * self.dev.thermal_status)
                continue
            p = self.host_path(a)
            if p is None or not p.is_file():
                return out, f"cat: {a}: No such file or directory\n".encode(), 1
            out += p.read_bytes()
        return out, b"", 0

    def cmd_echo(self, args: list[str]) -> tuple[bytes, bytes, int]:
        return (" ".join(args) + "\n").encode(), b"", 0

    def cmd_sleep(self, args: list[str]) -> tuple[bytes, bytes, int]:
        time.sleep(min(float(args[0]) if args else 0.0, 5.0))
        return b"", b"", 0

    def cmd_chmod(self, args: list[str]) -> tuple[bytes, bytes, int]:
        from tests.adbdevice.server import dev_mode, set_dev_mode

        if len(args) < 2:
            return b"", b"chmod: Needs 2 arguments\n", 1
        try:
            mode = int(args[0], 8)
        except ValueError:
            return b"", f"chmod: bad mode {args[0]!r} (this device takes octal only)\n".encode(), 1
        for a in args[1:]:
            p = self.host_path(a)
            if p is None or not p.exists():
                return b"", f"chmod: {a}: No such file or directory\n".encode(), 1
            if self.dev.noexec:
                mode &= ~0o111
            set_dev_mode(p, (dev_mode(p) & ~0o7777) | mode)
        return b"", b"", 0

    def cmd_rm(self, args: list[str]) -> tuple[bytes, bytes, int]:
        flags = {a for a in args if a.startswith("-")}
        force = any("f" in f for f in flags)
        recursive = any("r" in f.lower() for f in flags)
        for a in (a for a in args if not a.startswith("-")):
            p = self.host_path(a)
            if p is None or p == self.dev.root:
                return b"", f"rm: {a}: Permission denied\n".encode(), 1
            if not p.exists():
                if force:
                    continue
                return b"", f"rm: {a}: No such file or directory\n".encode(), 1
            if p.is_dir():
                if not recursive:
                    return b"", f"rm: {a}: is a directory\n".encode(), 1
                import shutil

                shutil.rmtree(p)
            else:
                p.unlink()
                (p.parent / f".mode.{p.name}").unlink(missing_ok=True)
        return b"", b"", 0

    def cmd_rmdir(self, args: list[str]) -> tuple[bytes, bytes, int]:
        for a in args:
            p = self.host_path(a)
            if p is None or not p.is_dir() or p == self.dev.root:
                return b"", f"rmdir: {a}: No such file or directory\n".encode(), 1
            if any(c for c in p.iterdir() if not c.name.startswith(".mode.")):
                return b"", f"rmdir: {a}: Directory not empty\n".encode(), 1
            for c in p.iterdir():
                c.unlink()
            p.rmdir()
        return b"", b"", 0

    def cmd_mkdir(self, args: list[str]) -> tuple[bytes, bytes, int]:
        for a in (a for a in args if a != "-p"):
            p = self.host_path(a)
            if p is None:
                return b"", f"mkdir: {a}: Read-only file system\n".encode(), 1
            p.mkdir(parents=True, exist_ok=True)
        return b"", b"", 0

    def cmd_pgrep(self, args: list[str]) -> tuple[bytes, bytes, int]:
        full = "-f" in args
        pats = [a for a in args if not a.startswith("-")]
        if not full or len(pats) != 1:
            return b"", b"pgrep: this device takes pgrep -f PATTERN\n", 2
        pids = [pid for pid, p in sorted(self.dev.procs.items()) if pats[0] in p["cmdline"]]
        return "".join(f"{p}\n" for p in pids).encode(), b"", 0 if pids else 1

    def cmd_kill(self, args: list[str]) -> tuple[bytes, bytes, int]:
        for a in (a for a in args if not a.startswith("-")):
            proc = self.dev.procs.get(int(a)) if a.isdigit() else None
            if proc is None:
                return b"", f"kill: {a}: No such process\n".encode(), 1
            proc["killed"].set()
            self.dev.killed.append(int(a))
        return b"", b"", 0

    def cmd_ls(self, args: list[str]) -> tuple[bytes, bytes, int]:
        if args == [CPUFREQ]:
            return "".join(f"{p}\n" for p in POLICIES).encode(), b"", 0
        out = []
        for a in args or [REMOTE_ROOT]:
            p = self.host_path(a)
            if p is None or not p.exists():
                return b"", f"ls: {a}: No such file or directory\n".encode(), 1
            if p.is_dir():
                out += sorted(c.name for c in p.iterdir() if not c.name.startswith(".mode."))
            else:
                out.append(a)
        return "".join(f"{n}\n" for n in out).encode(), b"", 0

    def cmd_taskset(self, args: list[str]) -> tuple[bytes, bytes, int]:
        if len(args) < 2:
            return b"", b"taskset: Needs 2 arguments\n", 1
        try:
            mask = int(args[0], 16)
        except ValueError:
            return b"", f"taskset: bad mask {args[0]!r}\n".encode(), 1
        if mask == 0 or mask >= 1 << 8:
            return b"", b"taskset: sched_setaffinity: Invalid argument\n", 1
        return self.exec(args[1:])

    # -- executing a pushed file ---------------------------------------------------------------

    def exec_file(self, path: str, args: list[str]) -> tuple[bytes, bytes, int]:
        from tests.adbdevice.server import dev_mode

        p = self.host_path(path)
        if p is None or not p.is_file():
            return b"", f"/system/bin/sh: {path}: inaccessible or not found\n".encode(), 127
        if not dev_mode(p) & stat.S_IXUSR:
            return b"", f"/system/bin/sh: {path}: can't execute: Permission denied\n".encode(), 126
        head = p.read_bytes()[:256]
        if STANDIN_MARKER not in head:
            kind = "64-bit ELF file" if head.startswith(b"\x7fELF") else "data"
            return b"", f"/system/bin/sh: {path}: not executable: {kind}\n".encode(), 126
        from tests.adbdevice.standin import run_benchmark

        pid, killed = self.dev.spawn(" ".join([path, *args]))
        try:
            return run_benchmark(args, self, killed,
                                 tool="compiled" if b"tool=compiled" in head else "classic")
        finally:
            self.dev.procs.pop(pid, None)
