"""Parsers for what phones and benchmark tools print (pure functions, no I/O).

Two ``benchmark_model`` output formats exist (shared toolchain.md §3) and a harness must read both:

* the classic TFLite/LiteRT Interpreter tool: ``count=N first=F curr=C min= max= avg= std= p5=
  median= p95=`` stat lines in microseconds (older builds lack the percentiles; a constant run
  prints only ``count= curr=``), ``Inference timings in us: Init: ..., First inference: ...,
  Warmup (avg): ..., Inference (avg): ...`` with values that may be printed like
  ``1.24027e+06``, memory lines, the delegate coverage line ``Replacing X out of Y node(s)
  with delegate (NAME) node, yielding Z partitions`` and, with ``--enable_op_profiling``,
  per-op tables;
* the LiteRT CompiledModel tool: a ``BENCHMARK RESULTS`` block in milliseconds
  (``Model initialization: 45.32 ms``, ``Inference (avg): 85.23 ms (50 runs)``, ...).

Also: ``adb devices -l``, ``getprop`` and ``dumpsys thermalservice``. Every parser returns plain
dicts (JSON-ready), and the benchmark parser raises :class:`DmadError` when the text is not
benchmark output at all, so a wrong binary is never reported as a 0 ms result.
"""

from __future__ import annotations

import re
from typing import Any

from dmad.compress.errors import DmadError

NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
#: "INFO: " on newer classic builds, nothing on older ones; the CompiledModel tool's LiteRT
#: logger adds the source position: "INFO: [benchmark_litert_model.h:94] "
_PREFIX = r"^(?:[A-Z]+:\s*)?(?:\[[\w./-]+:\d+\]\s*)?"
_COUNT = re.compile(_PREFIX + r"count=\d+", re.M)
_KV = re.compile(r"(\w+)=(" + NUM + r")")
_RUNNING = re.compile(_PREFIX + r"Running benchmark for at least", re.M)
_TIMINGS = re.compile(r"(Average )?[Ii]nference timings in us:\s*(.*)$", re.M)
_COVERAGE = re.compile(
    r"Replacing (\d+) out of (\d+) node\(s\) with delegate \(([^)]*)\) node, yielding (\d+) "
    r"partitions?"
)
_MEM_DELTA = re.compile(
    r"Memory footprint delta from the start of the tool \(MB\): init=(" + NUM + r") overall=("
    + NUM + r")"
)
_MEM_PEAK_OLD = re.compile(
    r"Peak memory footprint \(MB\): init=(" + NUM + r") overall=(" + NUM + r")"
)
_MEM_PEAK = re.compile(
    r"Overall peak memory footprint \(MB\) via periodic monitoring: (" + NUM + r")"
)
_CM_LINE = re.compile(_PREFIX + r"([A-Za-z][A-Za-z ]*?(?: \([^)]*\))?):\s*(" + NUM
                      + r")\s*(ms|MB|us)?", re.M)
_WARNING_PATTERNS = (
    re.compile(r".*acceleration is unsupported on this platform.*"),
    re.compile(r".*Failed to (?:apply|create|initialize) .*delegate.*", re.I),
    re.compile(r".*Could not find the specified NNAPI accelerator.*"),
    re.compile(r".*Following operations are not supported by GPU delegate.*"),
    re.compile(r".*nnapi-reference.*"),
    re.compile(r".*(?:Falling back|fall back) to (?:the )?(?:CPU|TfLite runtime).*", re.I),
    re.compile(r".*will not be executed by the delegate.*"),
    re.compile(r".*accelerator could not be loaded.*", re.I),
    re.compile(r".*Some ops are not accelerated.*"),
    re.compile(r".*Unconsumed cmdline flags.*"),
)
#: the CompiledModel runtime's lines saying an accelerator was registered for the run
_REGISTERED = re.compile(r"(GPU|NPU) accelerator(?:\([^)]*\))? registered", re.I)


def _num(s: str) -> float:
    return float(s)


def _stats_us(line: str) -> dict[str, float]:
    return {k: _num(v) for k, v in _KV.findall(line)}


def _inference_stat_line(text: str) -> str | None:
    """The stat line of the measured runs: the first ``count=`` line after the last
    "Running benchmark for at least" (the warm-up has its own), else the last ``count=`` line.
    Op-profiling blocks print ``Timings (microseconds): count=...``, which the anchored pattern
    does not match."""
    runs = list(_RUNNING.finditer(text))
    m = _COUNT.search(text, runs[-1].end()) if runs else None
    if m is None:
        found = list(_COUNT.finditer(text))
        if not found:
            return None
        m = found[-1]
    end = text.find("\n", m.start())
    return text[m.start() : end if end >= 0 else len(text)]


def _timings(text: str) -> dict[str, float]:
    """``Inference timings in us: Init: 1, First inference: 2, ...`` → {init_us: 1, ...}."""
    out: dict[str, float] = {}
    found = list(_TIMINGS.finditer(text))
    if not found:
        return out
    m = found[-1]
    names = {
        "init": "init_us",
        "first inference": "first_us",
        "warmup (avg)": "warmup_avg_us",
        "warmup": "warmup_avg_us",
        "inference (avg)": "inference_avg_us",
        "inference": "inference_avg_us",
    }
    for part in m.group(2).split(","):
        key, _, val = part.partition(":")
        key = key.strip().lower()
        val = val.strip()
        if key in names and re.fullmatch(NUM, val):
            out[names[key]] = _num(val)
    return out


def parse_coverage(text: str) -> list[dict[str, Any]]:
    """Every ``Replacing X out of Y node(s) with delegate (NAME) ...`` line, in order."""
    return [
        {"delegated": int(a), "total": int(b), "delegate": name, "partitions": int(p)}
        for a, b, name, p in _COVERAGE.findall(text)
    ]


def parse_warnings(text: str) -> list[str]:
    """Lines that say a delegate was not (fully) used; kept verbatim for the results."""
    out: list[str] = []
    for line in text.splitlines():
        if any(p.fullmatch(line.strip()) for p in _WARNING_PATTERNS):
            s = line.strip()
            if s not in out:
                out.append(s)
    # The GPU delegate lists the unsupported ops on the lines after its header.
    m = re.search(r"Following operations are not supported by GPU delegate:\s*\n((?:.+\n?)+?)"
                  r"(?:\n|$|\S+: )", text)
    if m:
        ops = [ln.strip() for ln in m.group(1).splitlines() if ln.strip()]
        out += [f"GPU unsupported: {o}" for o in ops if not o.startswith(("INFO", "WARNING"))]
    return out


def parse_op_profile(text: str) -> list[dict[str, Any]]:
    """The last "Summary by node type" table (``--enable_op_profiling``): one row per op type.

    The tool prints one table for initialisation and one for the regular runs; the last one is
    the runs'. Rows are tab/space separated: type, count, avg ms, avg %, cdf %, mem KB, called.
    """
    heads = [m.end() for m in re.finditer(r"=+ Summary by node type =+\s*\n", text)]
    if not heads:
        return []
    rows: list[dict[str, Any]] = []
    for line in text[heads[-1] :].splitlines()[1:]:
        parts = line.split()
        if len(parts) < 5 or not re.fullmatch(r"\d+", parts[-6] if len(parts) >= 7 else ""):
            if rows:
                break
            continue
        *name, count, avg_ms, avg_pct, _cdf, mem_kb, called = parts
        if name and name[0] in ("INFO:",):
            name = name[1:]
        rows.append(
            {
                "node_type": " ".join(name),
                "count": int(count),
                "avg_ms": float(avg_ms),
                "percent": float(avg_pct.rstrip("%")),
                "mem_kb": float(mem_kb),
                "times_called": int(float(called)),
            }
        )
    return rows


_RUN_ORDER = re.compile(r"=+ Run Order =+[ \t]*\n([^\n]*\[node type\][^\n]*)\n")


def parse_op_runs(text: str) -> list[dict[str, Any]]:
    """The per-op "Run Order" table of the regular runs (``--enable_op_profiling``): one row
    per op in execution order, with its name (``[output tensor]:node``), first and average ms,
    share and cumulative share of the run, memory and call count.

    The tool prints one such table for initialisation and one for the regular runs; the last
    one is the runs'. Fields are tab-separated and right-aligned; older builds have an extra
    ``[start]`` column (``tsl/util/stats_calculator.cc``)."""
    heads = list(_RUN_ORDER.finditer(text))
    if not heads:
        return []
    m = heads[-1]
    cols = [c.strip() for c in m.group(1).split("\t") if c.strip()]
    cols = [c for c in cols if not re.fullmatch(r"[A-Z]+:", c)]
    rows: list[dict[str, Any]] = []
    for line in text[m.end():].splitlines():
        fields = [f.strip() for f in line.split("\t")]
        fields = [f for f in fields if f and not re.fullmatch(r"[A-Z]+:", f)]
        if len(fields) != len(cols) or line.lstrip().startswith("="):
            break
        row = dict(zip(cols, fields, strict=True))
        try:
            rows.append({"index": len(rows), "node_type": row["[node type]"],
                         "name": row["[Name]"], "first_ms": float(row["[first]"]),
                         "avg_ms": float(row["[avg ms]"]),
                         "percent": float(row["[%]"].rstrip("%")),
                         "cdf_percent": float(row["[cdf%]"].rstrip("%")),
                         "mem_kb": float(row["[mem KB]"]),
                         "times_called": int(float(row["[times called]"]))})
        except (KeyError, ValueError):
            break
    return rows


def _memory(text: str) -> dict[str, float]:
    mem: dict[str, float] = {}
    if m := _MEM_DELTA.search(text):
        mem["init_mb"], mem["overall_mb"] = _num(m.group(1)), _num(m.group(2))
    elif m := _MEM_PEAK_OLD.search(text):
        mem["init_mb"], mem["overall_mb"] = _num(m.group(1)), _num(m.group(2))
    if m := _MEM_PEAK.search(text):
        mem["peak_mb"] = _num(m.group(1))
    return mem


def _parse_compiled(text: str) -> dict[str, Any] | None:
    """The CompiledModel tool's ms block (and the ai-edge-litert Python tool's lines)."""
    if "BENCHMARK RESULTS" not in text and not re.search(r"Inference \(avg\):\s*" + NUM + r"\s*ms",
                                                         text):
        return None
    vals: dict[str, float] = {}
    for key, val, unit in _CM_LINE.findall(text):
        k = key.strip().lower()
        v = _num(val)
        if unit == "us":
            v /= 1e3
        vals.setdefault(k, v)
    # "Inference (min/max/std): a / b / c ms" in some builds
    if m := re.search(r"Inference \(min\s*[|/]\s*max\s*[|/]\s*std\):\s*(" + NUM + r")\s*[|/]\s*("
                      + NUM + r")\s*[|/]\s*(" + NUM + r")", text):
        vals["inference (min)"], vals["inference (max)"], vals["inference (std)"] = map(
            _num, m.groups()
        )
    out: dict[str, Any] = {"format": "compiled"}
    pick = {
        "median_ms": "inference (median)",
        "avg_ms": "inference (avg)",
        "min_ms": "inference (min)",
        "max_ms": "inference (max)",
        "std_ms": "inference (std)",
        "p5_ms": "inference (p5)",
        "p95_ms": "inference (p95)",
        "init_ms": "model initialization",
        "warmup_avg_ms": "warmup (avg)",
    }
    for dst, src in pick.items():
        if src in vals:
            out[dst] = vals[src]
    for first in ("warmup (first)", "first inference"):
        if first in vals:
            out["first_ms"] = vals[first]
            break
    if m := re.search(r"Inference \(avg\):\s*" + NUM + r"\s*ms\s*\((\d+) runs?\)", text):
        out["count"] = int(m.group(1))
    mem = {}
    for dst, src in (("init_mb", "init footprint"), ("overall_mb", "overall footprint"),
                     ("peak_mb", "peak memory")):
        if src in vals:
            mem[dst] = vals[src]
    out["memory"] = mem
    if m := re.search(r"Fully accelerated:\s*(\w+)", text):
        out["fully_accelerated"] = m.group(1).lower() in ("true", "yes", "1")
    if "avg_ms" not in out and "median_ms" not in out:
        return None
    return out


def parse_benchmark_output(text: str, source: str = "benchmark_model") -> dict[str, Any]:
    """Parse either tool's output into one dict with times in **milliseconds**.

    Keys (present when printed): format, count, first_ms, min_ms, max_ms, avg_ms, std_ms, p5_ms,
    median_ms, p95_ms, init_ms, warmup_avg_ms, memory{init_mb, overall_mb, peak_mb}, coverage[],
    warnings[], op_profile[], fully_accelerated. ``latency_ms`` is the median when the build
    prints one, else the average (``latency_stat`` says which).
    """
    out = _parse_compiled(text)
    if out is None:
        line = _inference_stat_line(text)
        timings = _timings(text)
        if line is None and "inference_avg_us" not in timings:
            first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "<empty>")
            raise DmadError(
                f"{source}: unparsable output, no 'count=' stats line and no 'Inference timings' "
                f"line (first line: {first[:120]!r})"
            )
        out = {"format": "classic"}
        st = _stats_us(line) if line else {}
        if "count" in st:
            out["count"] = int(st["count"])
        for k in ("first", "min", "max", "avg", "std", "p5", "median", "p95"):
            if k in st:
                out[f"{k}_ms"] = st[k] / 1e3
        if "avg_ms" not in out and "curr" in st:  # a constant run prints only count= curr=
            out["avg_ms"] = st["curr"] / 1e3
        if "inference_avg_us" in timings and "avg_ms" not in out:
            out["avg_ms"] = timings["inference_avg_us"] / 1e3
        for k in ("init", "warmup_avg"):
            if f"{k}_us" in timings:
                out[f"{k}_ms"] = timings[f"{k}_us"] / 1e3
        if "first_us" in timings:
            out.setdefault("first_ms", timings["first_us"] / 1e3)
        out["memory"] = _memory(text)
    out["coverage"] = parse_coverage(text)
    out["warnings"] = parse_warnings(text)
    prof = parse_op_profile(text)
    if prof:
        out["op_profile"] = prof
    runs = parse_op_runs(text)
    if runs:
        out["op_runs"] = runs
    if out["format"] == "compiled":
        out["registered"] = sorted({m.group(1).upper() for m in _REGISTERED.finditer(text)})
    if "median_ms" in out:
        out["latency_ms"], out["latency_stat"] = out["median_ms"], "median"
    else:
        out["latency_ms"], out["latency_stat"] = out["avg_ms"], "avg"
    return out


# -- adb and device text ----------------------------------------------------------------------


def parse_devices(text: str) -> list[dict[str, str]]:
    """``adb devices [-l]`` → [{serial, state, model?, transport_id?...}]."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("List of devices", "*", "adb ")):
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        d = {"serial": parts[0], "state": parts[1]}
        for p in parts[2:]:
            k, sep, v = p.partition(":")
            if sep:
                d[k] = v
        out.append(d)
    return out


def parse_getprop(text: str) -> dict[str, str]:
    """``getprop`` (all properties) → {key: value}."""
    return dict(re.findall(r"^\[([^\]]+)\]: \[(.*)\]\s*$", text, re.M))


THERMAL_NAMES = {0: "none", 1: "light", 2: "moderate", 3: "severe", 4: "critical",
                 5: "emergency", 6: "shutdown"}


def parse_thermal(text: str) -> dict[str, Any]:
    """``dumpsys thermalservice`` → {status, status_name, max_cpu_c, max_skin_c}.

    The status is Android's PowerManager thermal status (0 none … 6 shutdown); temperatures are
    taken from "Current temperatures from HAL" (mType 0 = CPU, 3 = skin).
    """
    out: dict[str, Any] = {"status": None, "status_name": None}
    if m := re.search(r"Thermal Status:\s*(\d+)", text):
        out["status"] = int(m.group(1))
        out["status_name"] = THERMAL_NAMES.get(out["status"], "unknown")
    section = text.split("Current temperatures from HAL:", 1)
    temps = re.findall(r"mValue=(" + NUM + r"), mType=(\d+)", section[1] if len(section) > 1
                       else text)
    for kind, key in ((0, "max_cpu_c"), (3, "max_skin_c")):
        vals = [float(v) for v, t in temps if int(t) == kind]
        out[key] = max(vals) if vals else None
    return out


BATTERY_STATUS = {1: "unknown", 2: "charging", 3: "discharging", 4: "not charging", 5: "full"}


def parse_battery(text: str) -> dict[str, Any]:
    """``dumpsys battery`` → {level_pct, temperature_c, status, powered: [AC, USB, …]}."""
    vals = dict(re.findall(r"^\s*([A-Za-z][A-Za-z ]*):\s*(\S+)\s*$", text, re.M))
    out: dict[str, Any] = {}
    if vals.get("level", "").isdigit():
        scale = int(vals["scale"]) if vals.get("scale", "").isdigit() else 100
        out["level_pct"] = round(100 * int(vals["level"]) / max(scale, 1), 1)
    if re.fullmatch(r"-?\d+", vals.get("temperature", "")):
        out["temperature_c"] = int(vals["temperature"]) / 10  # tenths of a degree
    if vals.get("status", "").isdigit():
        out["status"] = BATTERY_STATUS.get(int(vals["status"]), "unknown")
    out["powered"] = [k.split()[0] for k, v in vals.items()
                      if k.endswith(" powered") and v == "true"]
    return out
