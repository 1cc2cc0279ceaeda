"""The stages ``dmad compress`` (and so ``dmad demo``) chains after training: a stage runner that
skips, resumes or runs a stage folder; the export of both generators; the full-vs-compressed
comparison and its report.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dmad.compress.train import distributed, loop

if TYPE_CHECKING:
    from dmad.benchmark.api import CompareConfig
    from dmad.export.api import ExportConfig


def run_stage(name: str, run_dir: Path, train: Callable[..., Any], force: bool,
              times: dict[str, float], tag: str = "demo") -> None:
    """Skip a finished stage, resume an unfinished one, or run it; record and print its time."""
    t = time.time()
    if (run_dir / loop.DONE).exists() and not force:
        status = "skipped (finished)"
    else:
        resume = (run_dir / loop.CHECKPOINT).exists() and not force
        train(run_dir, resume=resume, force=force)
        status = "resumed" if resume else "done"
    times[name] = time.time() - t
    if distributed.is_main():
        print(f"[{tag}] {name:<9} {times[name]:7.1f} s  {status}")


def export_both(template: ExportConfig, sources: dict[str, Path], out: Path, *,
                force: bool, tag: str = "compress") -> None:
    """Export the compressed student and the full teacher the same way: ``template``'s
    settings (variants, size, calibration and parity images, floors), each source into
    ``out/LABEL`` with its PyTorch file beside it so the comparison covers the torch backend
    too. A finished export is kept unless ``force``."""
    from dmad.compress.io import atomic_write
    from dmad.export.api import export_model

    for label, run in sources.items():
        dest = out / label
        if (dest / "parity.json").exists() and not force:
            print(f"[{tag}] export {label}: skipped (finished)")
            continue
        src_kw = {"model": run, "run": None} if run.is_file() else {"run": run, "model": None}
        res = export_model(dataclasses.replace(template, out=dest, **src_kw,
                                               android_label=label, force=True))
        src = run if run.is_file() else next(
            run / n for n in ("student_G_AtoB.pt", "G_AtoB.pt") if (run / n).exists())
        with atomic_write(dest / "generator.pt") as fh:
            fh.write(src.read_bytes())
        print(f"[{tag}] export {label}: {len(res.files)} files in {res.seconds:.0f} s")
        print(res.table)
        for note in res.report["warnings"]:
            print(f"warning: {label}: {note}")


def _say_compare(msg: str) -> None:
    print(f"[compare] {msg}", flush=True)


def compare_both(cfg: CompareConfig, force: bool) -> None:
    """Benchmark full vs compressed on the host backends (``cfg``: the two export folders,
    backends, threads, runs) and write ``cfg.out/report.md``; when the files are smaller than
    phones run, both ``.pt`` models are timed at that size too."""
    from dmad.benchmark.api import compare

    out = Path(cfg.out)
    if (out / "report.md").exists() and not force:
        print("[compare] skipped (finished)")
        return
    grid = out / "eval" / "grid.png"
    compare(dataclasses.replace(cfg, force=True, grid=grid if grid.exists() else cfg.grid),
            _say_compare)
    _compare_at_phone_size(cfg)
    md = (out / "report.md").read_text().splitlines()
    head = next((line for line in md if "faster" in line), "")
    if head:
        print(f"[compare] {head.strip('# ')}")


#: the input side phones run these generators at
PHONE_SIZE = 256


def _compare_at_phone_size(cfg: CompareConfig) -> None:
    """The demo trains and exports at a small size; users run 256². Time both ``.pt`` models
    at 256² too (PyTorch and ONNX Runtime: the .tflite files are fixed at the export size) into
    ``out/report_256`` and add its headline to the main report, so the speedup phones would
    see is not left to a guess from the small size."""
    from dmad.benchmark.api import compare
    from dmad.benchmark.model_info import static_size
    from dmad.benchmark.report import headline

    out = Path(cfg.out)
    pts = [next(iter(sorted((out / "export" / side).glob("*.pt"))), None)
           for side in ("full", "compressed")]
    if None in pts:
        return
    fixed = {static_size(f) for side in ("full", "compressed")
             for f in (out / "export" / side).glob("*.tflite")} - {None}
    if fixed == {PHONE_SIZE}:
        return  # already measured at the phone's size
    sub = out / f"report_{PHONE_SIZE}"
    backends = tuple(b for b in cfg.backends if b in ("torch", "ort")) or ("torch", "ort")
    compare(dataclasses.replace(cfg, full=pts[0], compressed=pts[1], out=sub,  # type: ignore[arg-type]
                                size=PHONE_SIZE, force=True, backends=backends, grid=None),
            _say_compare)
    import json

    rows = json.loads((sub / "results.json").read_text())["comparison"]
    text = (f"\n## At {PHONE_SIZE}² (the size phones run)\n\n**{headline(rows)[0]}** — "
            f"PyTorch and ONNX Runtime on the .pt models at {PHONE_SIZE}x{PHONE_SIZE} (the "
            f".tflite files are fixed at the export size); details in "
            f"[report_{PHONE_SIZE}/report.md](report_{PHONE_SIZE}/report.md).\n")
    from dmad.compress.io import atomic_write_text

    md = out / "report.md"
    atomic_write_text(md, md.read_text() + text)
    htm = out / "report.html"
    if htm.exists():
        page = htm.read_text()
        para = (f"<h2>At {PHONE_SIZE}² (the size phones run)</h2><p>{headline(rows)[0]} "
                f"(PyTorch and ONNX Runtime on the .pt models; <a href=\"report_{PHONE_SIZE}/"
                f"report.html\">details</a>)</p>")
        page = page.replace("</body>", para + "</body>") if "</body>" in page else page + para
        atomic_write_text(htm, page)
