"""What a phone is doing around each benchmark run: heat, clocks, battery, stray processes.

Why per run: a phone's latency moves with its thermal state, its CPU governor and clocks, and
whether it is charging; a number without them cannot be compared with the next one. So before
each run the harness waits until the phone reports a normal thermal status (``dumpsys
thermalservice``, with a cap: a phone that never cools is recorded, not waited on forever), and
records the CPU frequency policies (``/sys/devices/system/cpu/cpufreq/policy*``) and the battery
(``dumpsys battery``). A run that outlives its timeout is killed on the phone too (by pid, found
with ``pgrep -f`` on the pushed binary's unique path): killing only the local adb client would
leave ``benchmark_model`` running and heating the phone for the next run.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from dmad.benchmark.parse import parse_battery, parse_thermal
from dmad.compress.errors import DmadError

if TYPE_CHECKING:
    from dmad.benchmark.adb import Adb

CPUFREQ = "/sys/devices/system/cpu/cpufreq"
__all__ = ["CPUFREQ", "battery", "cpu_clocks", "kill_remote", "thermal", "wait_cool"]


def thermal(adb: Adb) -> dict[str, Any]:
    """The phone's thermal status and temperatures now (status ``None`` when it cannot say)."""
    rc, out = adb.shell(["dumpsys", "thermalservice"], timeout=60)
    if rc != 0:
        return {"status": None, "status_name": None, "error": out.strip()[-200:]}
    return parse_thermal(out)


def wait_cool(adb: Adb, cap_s: float, poll_s: float) -> tuple[dict[str, Any], float]:
    """Poll the thermal status until it is normal (0) or ``cap_s`` has passed; returns the last
    reading and the seconds waited. An unknown status is not waited on."""
    start = time.monotonic()
    state = thermal(adb)
    while (state.get("status") or 0) > 0 and time.monotonic() - start < cap_s:
        time.sleep(min(poll_s, max(cap_s - (time.monotonic() - start), 0.0)))
        state = thermal(adb)
    return state, round(time.monotonic() - start, 2)


def _cat(adb: Adb, path: str) -> str | None:
    rc, out = adb.shell(["cat", path], timeout=30)
    return out.strip() if rc == 0 and out.strip() else None


def cpu_clocks(adb: Adb) -> dict[str, dict[str, Any]]:
    """Each CPU frequency policy: its CPUs, governor and current/max clock in kHz (empty when
    the phone does not expose them)."""
    rc, out = adb.shell(["ls", CPUFREQ], timeout=30)
    if rc != 0:
        return {}
    policies = sorted(p for p in out.split() if p.startswith("policy"))
    state: dict[str, dict[str, Any]] = {}
    for p in policies:
        base = f"{CPUFREQ}/{p}"
        gov = _cat(adb, f"{base}/scaling_governor")
        cur = _cat(adb, f"{base}/scaling_cur_freq")
        top = _cat(adb, f"{base}/scaling_max_freq")
        cpus = _cat(adb, f"{base}/related_cpus")
        state[p] = {"cpus": cpus, "governor": gov,
                    "cur_khz": int(cur) if cur and cur.isdigit() else None,
                    "max_khz": int(top) if top and top.isdigit() else None}
    return state


def battery(adb: Adb) -> dict[str, Any]:
    """Battery level, temperature, charging state (``dumpsys battery``)."""
    rc, out = adb.shell(["dumpsys", "battery"], timeout=30)
    return parse_battery(out) if rc == 0 else {}


def kill_remote(adb: Adb, remote_bin: str) -> list[int]:
    """Kill every process on the phone running ``remote_bin`` (a path unique to this sweep);
    returns the pids killed. Never raises: it runs after a failure already being reported."""
    try:
        rc, out = adb.shell(["pgrep", "-f", remote_bin], timeout=30)
        pids = [int(x) for x in out.split() if x.isdigit()] if rc == 0 else []
        if pids:
            adb.shell(["kill", "-9", *map(str, pids)], timeout=30)
        return pids
    except DmadError:
        return []
