"""Writing results: JSON (everything), CSV (one row per measurement), markdown, and the
full-vs-compressed report (markdown + the same as HTML + a matplotlib PNG).

Every file goes through :mod:`compress.io`'s atomic writers: a report is never seen half-written.
The report is built once as a list of blocks and rendered twice (markdown, HTML), so the two never
disagree.
"""

from __future__ import annotations

import csv
import html
import io
import math
from pathlib import Path
from typing import Any

from dmad.compress.io import atomic_write, atomic_write_json, atomic_write_text

CSV_FIELDS = (
    "platform", "device", "model", "backend", "precision", "threads", "runs", "warmup",
    "median_ms", "p90_ms", "p95_ms", "min_ms", "mean_ms", "std_ms", "gmacs_true", "gmacs_per_s",
    "efficiency", "flags", "path", "latency_ms", "latency_stat",
)
BACKEND_NAMES = {
    "torch": "PyTorch eager",
    "ort": "ONNX Runtime",
    "tflite-xnnpack": "TFLite XNNPACK",
    "tflite-builtin": "TFLite built-in kernels",
}

Block = tuple[Any, ...]


def backend_name(b: str) -> str:
    if b.startswith("android-"):
        return f"Android {b[len('android-'):]}"
    return BACKEND_NAMES.get(b, b)


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.{digits}f}"
    return str(v)


def results_csv(results: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in results:
        row = dict(r)
        row["flags"] = "; ".join(r.get("flags") or [])
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})
    return buf.getvalue()


def results_table(results: list[dict[str, Any]]) -> Block:
    rows = []
    for r in results:
        eff = r.get("efficiency")
        rows.append([
            r["model"], backend_name(r["backend"]), r.get("precision") or "–", str(r["threads"]),
            (f"{_fmt(r.get('latency_ms'))} (avg: no median printed)"
             if r.get("latency_stat") == "avg" else _fmt(r.get("median_ms"))),
            _fmt(r.get("p90_ms", r.get("p95_ms"))),
            _fmt(r.get("min_ms")), _fmt(r.get("std_ms")), _fmt(r.get("gmacs_per_s"), 1),
            f"{eff * 100:.0f} %" if eff else "–", "; ".join(r.get("flags") or []) or "",
        ])
    return ("table", ["model", "backend", "precision", "threads", "median ms", "p90/p95 ms",
                      "min ms", "std ms", "GMAC/s", "of peak", "flags"], rows)


def machine_blocks(data: dict[str, Any]) -> list[Block]:
    m = data.get("machine") or {}
    out: list[Block] = []
    if m:
        libs = ", ".join(f"{k} {v}" for k, v in (m.get("libraries") or {}).items() if v)
        isa = " ".join(m.get("isa", []))
        out.append(("p", f"Host: {m.get('cpu')}, {m.get('usable_cores')} usable of "
                         f"{m.get('logical_cores')} logical cores, ISA {isa}; "
                         f"{libs}; Python {m.get('python')}; load average before/after "
                         f"{m.get('load_avg')} / {m.get('load_avg_after')}."))
    peak = data.get("peak") or {}
    if peak:
        out.append(("p", "Measured peak (fp32 GEMM 1024², best of 8, same session): " + ", ".join(
            f"{v['gmacs_per_s']:.1f} GMAC/s at {k} thread(s)" for k, v in peak.items()) + "."))
    dev = data.get("android_device")
    if dev:
        p = dev.get("props", {})
        soc = p.get("ro.soc.model") or p.get("ro.board.platform", "?")
        out.append(("p", f"Phone {dev.get('serial')}: {p.get('ro.product.manufacturer', '')} "
                         f"{p.get('ro.product.model', '?')}, SoC {soc}, Android "
                         f"{p.get('ro.build.version.release', '?')} (SDK {dev.get('sdk')})."))
    return out


def render_md(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + b[1])
        elif kind == "p":
            out.append(b[1])
        elif kind == "table":
            head, rows = b[1], b[2]
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "|".join("---" for _ in head) + "|")
            out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})")
        elif kind == "pre":
            out.append("```\n" + b[1] + "\n```")
        out.append("")
    return "\n".join(out)


def render_html(blocks: list[Block], title: str) -> str:
    e = html.escape
    out = [
        "<!doctype html>", "<html><head><meta charset='utf-8'>", f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
        "</style></head><body>",
    ]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{e(b[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in b[1]) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in b[2]]
            out.append("</table>")
        elif kind == "img":
            out.append(f"<p><img src='{e(b[1])}' alt='{e(b[2])}'></p>")
        elif kind == "pre":
            out.append(f"<pre>{e(b[1])}</pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


#: The files ``dmad bench`` and ``dmad compare`` write (kept unless ``--force``).
BENCH_FILES = ("results.json", "results.csv", "results.md")
COMPARE_FILES = (*BENCH_FILES, "report.md", "report.html", "latency.png")


def write_bench(data: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json (everything, raw samples included), results.csv, results.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.json", out_dir / "results.csv", out_dir / "results.md"]
    atomic_write_json(paths[0], data)
    atomic_write_text(paths[1], results_csv(data["results"]))
    blocks: list[Block] = [("h1", "dmad bench"), results_table(data["results"])]
    flagged = [r for r in data["results"] if r.get("flags")]
    if flagged:
        blocks.append(("p", f"{len(flagged)} result(s) carry flags (delegate fallback, partial "
                            "delegation, deprecation or thermal throttling): read them before "
                            "comparing numbers."))
    failed = [r for r in data["results"] if r.get("status") == "failed"]
    if failed:
        blocks.append(("p", f"{len(failed)} run(s) failed; every other result stands. "
                            + " ".join(f"{r['model']} ({backend_name(r['backend'])}, "
                                       f"{r['threads']} threads): {r.get('error')}."
                                       for r in failed)))
    if data.get("android_error"):
        blocks.append(("p", f"The phone sweep stopped early: {data['android_error']}"))
    blocks += [("p", n) for n in data.get("notes", [])]
    blocks += op_profile_blocks(data["results"])
    blocks += [("h2", "Machine"), *machine_blocks(data)]
    atomic_write_text(paths[2], render_md(blocks))
    return paths


#: per-op rows shown per profiled run (the slowest first); results.json keeps them all
OP_ROWS = 25


def op_profile_blocks(results: list[dict[str, Any]]) -> list[Block]:
    """Per layer, where a phone run spends its time: each profiled run's ops (from its separate
    profiling run), slowest first, with their share of the run."""
    out: list[Block] = []
    for r in results:
        ops = r.get("op_profile")
        if not ops:
            continue
        out.append(("h2", f"Per layer: {r['model']}, {backend_name(r['backend'])}, "
                          f"{r['threads']} thread(s), round {r.get('round', 1)}"))
        rows = sorted(ops, key=lambda o: -o["avg_ms"])[:OP_ROWS]
        out.append(("table", ["#", "op", "layer", "avg ms", "% of run", "cumulative %"],
                    [[o["index"], o["node_type"], o["name"], _fmt(o["avg_ms"], 3),
                      _fmt(o["percent"], 1), _fmt(o.get("cdf_percent"), 1)] for o in rows]))
        if len(ops) > OP_ROWS:
            out.append(("p", f"{len(ops) - OP_ROWS} faster ops not shown (results.json has "
                             "every one)."))
    return out


# -- compare report ----------------------------------------------------------------------------


def compare_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Pair full and compressed results of the same backend/precision/threads/order; the
    speedup is the paired median of per-round ratios (interleaved) or the ratio of medians
    (blocked), each with a bootstrap 95 % interval (:mod:`benchmark.stats`)."""
    from dmad.benchmark.stats import speedup_stats

    by: dict[tuple[str, str, int, str], dict[str, dict[str, Any]]] = {}
    for r in data["results"]:
        key = (r["backend"], r.get("precision") or "", r["threads"], r.get("order", "interleaved"))
        by.setdefault(key, {})[r["model"]] = r
    rows = []
    for (backend, prec, th, order), pair in by.items():
        f, c = pair.get("full"), pair.get("compressed")
        if not f or not c or f.get("median_ms") is None or c.get("median_ms") is None:
            continue  # a failed run: its reason is in the results table
        mac_ratio = (f["gmacs_true"] / c["gmacs_true"]) if f.get("gmacs_true") and c.get(
            "gmacs_true") else None
        if f.get("samples_ms") and c.get("samples_ms"):
            st = speedup_stats(f["samples_ms"], c["samples_ms"], order)
        else:  # results without raw samples (older files): the ratio of medians only
            st = {"order": order, "ratio_of_medians": f["median_ms"] / c["median_ms"],
                  "paired_median": None, "ci95": None, "ci_method": None}
        speedup = st["paired_median"] or st["ratio_of_medians"]
        fsize = data["sizes"].get(f["path"])
        csize = data["sizes"].get(c["path"])
        rows.append({
            "backend": backend, "precision": prec, "threads": th, "order": order,
            "full_ms": f["median_ms"], "compressed_ms": c["median_ms"], "speedup": speedup,
            "speedup_ci95": st["ci95"], "ratio_of_medians": st["ratio_of_medians"],
            "speedup_method": ("paired median of per-round ratios" if st["paired_median"]
                               else "ratio of medians"), "ci_method": st["ci_method"],
            "mac_ratio": mac_ratio,
            "speedup_over_mac_ratio": speedup / mac_ratio if mac_ratio else None,
            "size_ratio": fsize / csize if fsize and csize else None,
            "full_gmacs_per_s": f.get("gmacs_per_s"), "compressed_gmacs_per_s": c.get(
                "gmacs_per_s"),
            "gmacs_per_s_ratio": (c["gmacs_per_s"] / f["gmacs_per_s"]) if f.get("gmacs_per_s")
            and c.get("gmacs_per_s") else None,
            "full_efficiency": f.get("efficiency"), "compressed_efficiency": c.get("efficiency"),
        })
    rows.sort(key=lambda r: (r["threads"], r["backend"], r["precision"], r["order"]))
    return rows


HEADLINE_ORDER = ("tflite-xnnpack", "ort", "torch", "tflite-builtin")
#: the headline's timing order when both were measured: blocked runs each model back to back,
#: as an app does, so a large model cannot evict the small one's weights between its runs
HEADLINE_TIMING = ("blocked", "interleaved")


def _ci(r: dict[str, Any]) -> str:
    ci = r.get("speedup_ci95")
    return f" [95 % CI {ci[0]:.1f}–{ci[1]:.1f}]" if ci else ""


def headline(rows: list[dict[str, Any]]) -> tuple[str, dict[str, Any] | None]:
    """"compressed is X× faster on <backend> … [95 % CI]" for the deployment-like backend
    (TFLite XNNPACK, else ORT, else PyTorch), fp32, at the most threads measured, in blocked
    order when measured (the interleaved figure beside it)."""
    if not rows:
        return "no backend measured both models", None

    def key(r: dict[str, Any]) -> tuple[int, int, int, int]:
        order = HEADLINE_ORDER.index(r["backend"]) if r["backend"] in HEADLINE_ORDER else 99
        timing = HEADLINE_TIMING.index(r["order"]) if r["order"] in HEADLINE_TIMING else 9
        return (order, 0 if r["precision"] == "fp32" else 1, -r["threads"], timing)

    r = sorted(rows, key=key)[0]
    mac = f"MACs ÷{r['mac_ratio']:.1f}" if r["mac_ratio"] else "MACs ÷?"
    size = f"size ÷{r['size_ratio']:.1f}" if r["size_ratio"] else "size ÷?"
    text = (f"compressed is {r['speedup']:.1f}×{_ci(r)} faster on {backend_name(r['backend'])} "
            f"({r['precision']}, {r['threads']} thread{'s' if r['threads'] > 1 else ''}, "
            f"{r['order']} order) ({mac}, {size})")
    other = [o for o in rows if (o["backend"], o["precision"], o["threads"]) ==
             (r["backend"], r["precision"], r["threads"]) and o["order"] != r["order"]]
    if other:
        text += f"; {other[0]['order']} order: {other[0]['speedup']:.1f}×{_ci(other[0])}"
    return text, r


def chart_png(rows: list[dict[str, Any]]) -> bytes:
    """Two panels, one row per setting grouped by thread count: latency full → compressed
    (log scale), and the speedup with its 95 % interval against the MAC ratio. Horizontal bars:
    labels stay readable with many rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: (r["threads"], r["backend"], r["precision"], r["order"]))
    labels = [f"{r['threads']}t  {backend_name(r['backend'])} {r['precision']} ({r['order']})"
              for r in rows]
    y = list(range(len(rows)))
    h = max(3.0, 0.34 * len(rows) + 1.5)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, h), sharey=True)
    a1.hlines(y, [r["compressed_ms"] for r in rows], [r["full_ms"] for r in rows],
              color="0.7", lw=2)
    a1.plot([r["full_ms"] for r in rows], y, "o", label="full")
    a1.plot([r["compressed_ms"] for r in rows], y, "o", label="compressed")
    a1.set_xscale("log")
    a1.set_xlabel("median latency (ms, log)")
    a1.set_yticks(y, labels, fontsize=8)
    a1.invert_yaxis()
    a1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 if len(rows) > 4 else -0.25),
               ncol=2, fontsize=8)
    a1.set_title("latency: full → compressed")
    for i in range(1, len(rows)):  # a rule between thread-count groups
        if rows[i]["threads"] != rows[i - 1]["threads"]:
            for a in (a1, a2):
                a.axhline(i - 0.5, color="0.85", lw=0.8)
    sp = [r["speedup"] for r in rows]
    lo = [r["speedup"] - r["speedup_ci95"][0] if r.get("speedup_ci95") else 0 for r in rows]
    hi = [r["speedup_ci95"][1] - r["speedup"] if r.get("speedup_ci95") else 0 for r in rows]
    a2.barh(y, sp, 0.6, xerr=[lo, hi], capsize=2, label="measured speedup (95 % CI)")
    a2.plot([r["mac_ratio"] or float("nan") for r in rows], y, "k|", ms=14, mew=2,
            label="MAC ratio")
    a2.set_xlabel("× (full ÷ compressed)")
    a2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 if len(rows) > 4 else -0.25),
               ncol=2, fontsize=8)
    a2.set_title("speedup vs MAC reduction")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def fidelity_blocks(grid: Path) -> list[tuple[Any, ...]]:
    """The student-vs-teacher table of the ``eval.json`` beside the grid (none when absent or
    unreadable: the report never fails over it)."""
    import json

    try:
        ev = json.loads((grid.parent / "eval.json").read_text(encoding="utf-8"))
        cells = [f"{ev['images']} × {ev['size']}²",
                 f"{ev['psnr_vs_teacher']:.2f} / {ev['psnr_worst_vs_teacher']:.2f} dB "
                 f"({ev['psnr_worst_image_vs_teacher']})",
                 f"{ev['ssim_vs_teacher']:.3f} / {ev['ssim_worst_vs_teacher']:.3f}",
                 f"{ev['colour_mean_shift_max']:.1f}/255"
                 + (" (above the flag)" if ev.get("colour_flag") else "")]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [("table", ["held-out images", "PSNR vs teacher mean / worst",
                       "SSIM mean / worst", "largest channel-mean shift"], [cells]),
            ("p", "Rows of the grid: the held-out images furthest from the teacher, worst "
                  "first (input | teacher | student), each with its PSNR, SSIM and colour "
                  "shift. A channel-mean shift above 3/255 is about the just-noticeable colour "
                  "difference over a whole photograph.")]


def _models_blocks(m: dict[str, Any]) -> list[Block]:
    mrows = []
    for key, label, digits in (("gmacs_true", "GMACs (true: executed multiply-adds)", 3),
                               ("gmacs_paper", "GMACs (paper: thop convention)", 3),
                               ("params_m", "parameters (M)", 3), ("size_mb", "file size (MB)", 2)):
        f, c = m["full"].get(key), m["compressed"].get(key)
        ratio = f"÷{f / c:.2f}" if f and c else "–"
        mrows.append([label, _fmt(f, digits), _fmt(c, digits), ratio])
    blocks: list[Block] = [
        ("h2", "Models"), ("table", ["", "full", "compressed", "reduction"], mrows),
        ("p", f"Full: {m['full']['files']}. Compressed: {m['compressed']['files']}. "
              f"Input {m['input']}.")]
    if m["compressed"].get("objective"):
        step = m["compressed"].get("step")
        blocks.append(("p", f"Compressed generator fine-tuned with: {m['compressed']['objective']}"
                            + (f" (checkpoint of step {step})" if step else "") + "."))
    return blocks


def glance_rows(rows: list[dict[str, Any]], best: dict[str, Any] | None) -> list[list[str]]:
    """The short table a person reads first: the headline's backend and timing order, every
    precision and thread count measured there."""
    if best is None:
        return []
    pick = [r for r in rows if r["backend"] == best["backend"] and r["order"] == best["order"]]
    pick.sort(key=lambda r: (r["precision"] != "fp32", r["precision"], r["threads"]))
    return [[backend_name(r["backend"]), r["precision"], str(r["threads"]), _fmt(r["full_ms"]),
             _fmt(r["compressed_ms"]), f"{r['speedup']:.2f}×"] for r in pick]


def _latency_blocks(rows: list[dict[str, Any]]) -> list[Block]:
    """Every setting with its interval and MAC efficiency (the appendix)."""
    trows = [[backend_name(r["backend"]), r["precision"], str(r["threads"]), r["order"],
              _fmt(r["full_ms"]), _fmt(r["compressed_ms"]), f"{r['speedup']:.2f}×",
              (f"{r['speedup_ci95'][0]:.2f}–{r['speedup_ci95'][1]:.2f}"
               if r.get("speedup_ci95") else "–"), f"{r['ratio_of_medians']:.2f}×",
              f"÷{r['mac_ratio']:.2f}" if r["mac_ratio"] else "–",
              _fmt(r["speedup_over_mac_ratio"]), _fmt(r["full_gmacs_per_s"], 1),
              _fmt(r["compressed_gmacs_per_s"], 1),
              f"{(r['full_efficiency'] or 0) * 100:.0f} % / "
              f"{(r['compressed_efficiency'] or 0) * 100:.0f} %"] for r in rows]
    return [("h2", "Latency, every setting"),
            ("table", ["backend", "precision", "threads", "order", "full ms", "compressed ms",
                       "speedup", "95 % CI", "ratio of medians", "MAC ratio",
                       "speedup ÷ MAC ratio", "full GMAC/s", "compr. GMAC/s",
                       "of peak (full / compr.)"], trows),
            ("p", "Latencies are medians, warm-up runs excluded. *Interleaved*: full and "
                  "compressed alternate run by run, so drift hits both alike; the speedup is "
                  "the median of the per-round ratios, its interval a bootstrap over rounds. "
                  "*Blocked*: all runs of one model, then all of the other, as an app runs one "
                  "model (a large model cannot evict the small one's weights from the caches "
                  "between its runs); the speedup is the ratio of medians, its interval a "
                  "bootstrap of both sides. The headline uses blocked order when it was "
                  "measured. Speedup ÷ MAC ratio = 1 means the MAC reduction turned fully into "
                  "time; GMAC/s is true MACs ÷ median time.")]


def _write_pages(blocks: list[Block], md: Path, title: str) -> list[Path]:
    htm = md.with_suffix(".html")
    atomic_write_text(md, render_md(blocks))
    atomic_write_text(htm, render_html([b if b[0] != "p" else ("p", b[1].replace("**", ""))
                                        for b in blocks], title))
    return [md, htm]


def write_compare(data: dict[str, Any], out_dir: Path, grid: Path | None) -> list[Path]:
    """report.md/.html (the answer first: headline, a short table, fidelity and images,
    models), report_full.md/.html (every setting, every measurement, the machine),
    latency.png (+ grid.png), results.json, results.csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = compare_rows(data)
    data["comparison"] = rows
    head, best = headline(rows)
    data["headline"] = head
    written = write_bench(data, out_dir)
    png = out_dir / "latency.png"
    if rows:
        with atomic_write(png) as fh:
            fh.write(chart_png(rows))
        written.append(png)
    blocks: list[Block] = [("h1", "Full vs compressed"), ("p", f"**{head}**")]
    glance = glance_rows(rows, best)
    if glance:
        blocks.append(("table", ["backend", "precision", "threads", "full ms", "compressed ms",
                                 "speedup"], glance))
    if grid is not None:
        gpath = out_dir / "grid.png"
        if grid.resolve() != gpath.resolve():
            with atomic_write(gpath) as fh:
                fh.write(grid.read_bytes())
        written.append(gpath)
        blocks += [("h2", "Fidelity and images (from dmad eval)"), *fidelity_blocks(grid),
                   ("img", gpath.name, "image grid")]
    blocks += _models_blocks(data["models_summary"])
    if rows:
        blocks.append(("img", png.name, "latency and speedup chart"))
    blocks += [("p", note) for note in data.get("notes", [])]
    blocks.append(("p", "Every setting with its 95 % interval, MAC efficiency, every raw "
                        "measurement and the machine: [report_full.md](report_full.md)."))
    full: list[Block] = [("h1", "Full vs compressed: every measurement"), ("p", f"**{head}**"),
                         *_latency_blocks(rows), ("h2", "All measurements"),
                         results_table(data["results"]), ("h2", "Machine"),
                         *machine_blocks(data)]
    return [*_write_pages(blocks, out_dir / "report.md", "dmad compare"),
            *_write_pages(full, out_dir / "report_full.md", "dmad compare: every measurement"),
            *written]
