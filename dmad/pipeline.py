"""``dmad demo``: the whole mission on the embedded default, or on the user's data via --config.

Each stage writes its outputs into its own folder under the demo run; a stage whose folder holds
a finished run is skipped, an unfinished one is resumed, and ``--force`` redoes everything. Stage
times are printed so users see where the minutes go.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from dmad.compress.config import make_config, read_config_file
from dmad.compress.errors import DmadError
from dmad.compress.train import distributed, loop

#: The demo config ships inside the package (``dmad.configs``), so ``dmad demo`` runs from any
#: folder of a non-editable install.
DEFAULT_CONFIG = Path(str(resources.files("dmad.configs").joinpath("demo.toml")))


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


#: What a demo run folder holds: a folder with none of these is not one (it is the user's).
DEMO_PARTS = ("teacher", "search", "finetune", "eval", "export", "report.md")


def _check_out(out: Path) -> None:
    """The demo writes only into a new or empty folder or an earlier demo run, ``--force``
    included: it would otherwise replace files of the user's that share its names."""
    from dmad.compress.runfolder import holds_user_files

    if out.exists() and not out.is_dir():
        raise DmadError(f"{out}: exists and is not a folder")
    if holds_user_files(out) and not any((out / p).exists() for p in DEMO_PARTS):
        raise DmadError(f"{out}: is not empty and holds no dmad demo run; give a new or empty "
                        "--out")


def _read_settings(path: Path) -> dict[str, Any]:
    settings = read_config_file(path)
    known = {"data", "teacher", "search", "finetune", "eval", "export", "compare"}
    unknown = set(settings) - known
    if unknown:
        raise DmadError(
            f"{path}: unknown section(s) {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(known))})"
        )
    return settings


def _data_stage(settings: dict[str, Any], path: Path, force: bool,
                times: dict[str, float]) -> None:
    from dmad.compress.data import make_default_dataset

    t = time.time()
    data = settings.get("data", {"generate": False})
    extra = set(data) - {"root", "size", "n_train", "n_test", "seed", "generate"}
    if extra:
        raise DmadError(f"{path}: unknown key(s) in [data]: {', '.join(sorted(extra))}")
    if data.get("generate", True):
        make_default_dataset(
            Path(data.get("root", "data/default")),
            size=int(data.get("size", 64)),
            n_train=int(data.get("n_train", 200)),
            n_test=int(data.get("n_test", 24)),
            seed=int(data.get("seed", 0)),
            force=force,
        )
    times["data"] = time.time() - t
    print(f"[demo] data      {times['data']:7.1f} s")


def _teacher_stage(settings: dict[str, Any], path: Path, out: Path, force: bool,
                   times: dict[str, float]) -> tuple[Path, int]:
    """The demo's teacher (trained, or the user's run folder or imported file) and its size;
    prints each generator's cost at that size and at 256²."""
    from dmad.compress.arch import profile
    from dmad.compress.checkpoint import load_model
    from dmad.compress.train.teacher import TeacherConfig, train_teacher

    if "teacher" in settings:
        tcfg = make_config(TeacherConfig, path, section="teacher")
        tdir = out / "teacher"
        run_stage("teacher", tdir, lambda d, **kw: train_teacher(tcfg, d, **kw), force, times)
        size = tcfg.size
    else:  # the user's own teacher: a run folder or an imported generator
        ref = settings.get("search", {}).get("teacher", "")
        if not ref:
            raise DmadError(f"{path}: needs a [teacher] table, or `teacher = ...` in [search] "
                            "(a teacher run folder or a `dmad import`ed generator file)")
        tdir = Path(ref)
        size = int(settings.get("search", {}).get("size", 0)) or 256
    for g in [tdir] if tdir.is_file() else sorted(tdir.glob("G_*.pt")):
        model, _ = load_model(g)
        for size_ in (size, 256):
            prof = profile(model, (1, model.spec.input_nc, size_, size_))
            print(f"[demo] {g.name} at {size_}x{size_}: params {prof.params:,}  "
                  f"{prof.macs_paper / 1e9:.3f} GMACs (paper)  "
                  f"{prof.macs_true / 1e9:.3f} GMACs (true)")
    return tdir, size


def _search_and_finetune(settings: dict[str, Any], path: Path, out: Path, tdir: Path,
                         force: bool, times: dict[str, float]) -> None:
    if "search" in settings:
        from dmad.compress.train.search import SearchConfig, search

        sdir = out / "search"
        overrides = {} if "teacher" in settings["search"] else {"teacher": str(tdir)}
        scfg = make_config(SearchConfig, path, overrides, section="search")
        run_stage("search", sdir, lambda d, **kw: search(scfg, d, **kw), force, times)
        arch = read_config_file(sdir / "architecture.json")
        for d, e in arch["directions"].items():
            print(f"[demo] searched G_{d}: {e['gmacs_paper']:.3f} GMACs paper "
                  f"({e['full_gmacs_paper'] / e['gmacs_paper']:.1f}x fewer), "
                  f"{e['gmacs_true']:.3f} true, params {e['params']:,}")
    if "finetune" in settings:
        from dmad.compress.train.finetune import FinetuneConfig, finetune

        fdir = out / "finetune"
        overrides = {} if "search" in settings["finetune"] else {"search": str(out / "search")}
        fcfg = make_config(FinetuneConfig, path, overrides, section="finetune")
        run_stage("finetune", fdir, lambda d, **kw: finetune(fcfg, d, **kw), force, times)


def _eval_stage(settings: dict[str, Any], path: Path, out: Path,
                times: dict[str, float]) -> None:
    from dmad.compress.evaluate import EvalConfig, evaluate

    t = time.time()
    student = out / "finetune" if (out / "finetune" / loop.DONE).exists() else out / "search"
    overrides = {} if "student" in settings["eval"] else {"student": str(student)}
    ecfg = make_config(EvalConfig, path, overrides, section="eval")
    ev = evaluate(ecfg, out / "eval", force=True)  # the demo's own folder
    times["eval"] = time.time() - t
    print(f"[demo] eval      {times['eval']:7.1f} s  PSNR vs teacher "
          f"{ev['psnr_vs_teacher']:.2f} dB, SSIM {ev['ssim_vs_teacher']:.3f}, MACs "
          f"÷{ev['ratios']['macs_paper']:.1f} (paper) ÷{ev['ratios']['macs_true']:.1f} (true)")


def run_demo(config: Path | None, out: Path, *, force: bool = False) -> dict[str, Any]:
    """Run data → teacher → search → finetune → eval → export → compare; returns stage seconds."""
    path = config or DEFAULT_CONFIG
    _check_out(out)
    settings = _read_settings(path)
    times: dict[str, float] = {}
    _data_stage(settings, path, force, times)
    tdir, size = _teacher_stage(settings, path, out, force, times)
    _search_and_finetune(settings, path, out, tdir, force, times)
    if "eval" in settings:
        _eval_stage(settings, path, out, times)
    student_run = out / "finetune" if (out / "finetune" / loop.DONE).exists() else out / "search"
    if "export" in settings:
        t = time.time()
        export_both(settings["export"], path, {"compressed": student_run, "full": tdir},
                    out / "export", size, force)
        times["export"] = time.time() - t
        print(f"[demo] export    {times['export']:7.1f} s")
    if "compare" in settings:
        t = time.time()
        compare_both(settings["compare"], path, out, force)
        times["compare"] = time.time() - t
        print(f"[demo] compare   {times['compare']:7.1f} s  report: {out / 'report.md'}")
    total = sum(times.values())
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
    print(f"[demo] total     {total:7.1f} s  ({parts})")
    print(f"[demo] outputs in {out}")
    return times


def export_both(section: dict[str, Any], path: Path, sources: dict[str, Path], out: Path,
                 size: int, force: bool, *, split: Path | None = None,
                 calib: Path | None = None, tag: str = "demo") -> int:
    """Export the compressed student and the full teacher the same way (ONNX + every TFLite
    variant, calibrated on the run's own images, or on ``split``'s training images with parity
    on its held-out ones), each with its PyTorch file beside it so the comparison covers the
    torch backend too. Returns the export size."""
    from dmad.compress.io import atomic_write
    from dmad.export.api import ExportConfig, export_model

    extra = set(section) - {"quant", "num_calib", "android", "size"}
    if extra:
        raise DmadError(f"{path}: unknown key(s) in [export]: {', '.join(sorted(extra))}")
    quant = tuple(section.get("quant", ["fp32", "fp16", "dynamic", "int8"]))
    size = int(section.get("size", 0)) or size
    for label, run in sources.items():
        dest = out / label
        if (dest / "parity.json").exists() and not force:
            print(f"[{tag}] export {label}: skipped (finished)")
            continue
        src_kw = {"model": run} if run.is_file() else {"run": run}
        res = export_model(ExportConfig(out=dest, size=size, **src_kw, split=split, calib=calib,
                                        quant=quant, num_calib=int(section.get("num_calib", 20)),
                                        android=bool(section.get("android", False)),
                                        android_label=label, force=True))
        src = run if run.is_file() else next(
            run / n for n in ("student_G_AtoB.pt", "G_AtoB.pt") if (run / n).exists())
        with atomic_write(dest / "generator.pt") as fh:
            fh.write(src.read_bytes())
        print(f"[{tag}] export {label}: {len(res.files)} files in {res.seconds:.0f} s")
        print(res.table)
        for note in res.report["warnings"]:
            print(f"warning: {label}: {note}")
    return size


def _say_compare(msg: str) -> None:
    print(f"[compare] {msg}", flush=True)


def compare_both(section: dict[str, Any], path: Path, out: Path, force: bool) -> None:
    """Benchmark full vs compressed on the host backends and write ``out/report.md``."""
    from dmad.benchmark.api import CompareConfig, compare

    extra = set(section) - {"backends", "threads", "runs", "warmup"}
    if extra:
        raise DmadError(f"{path}: unknown key(s) in [compare]: {', '.join(sorted(extra))}")
    if (out / "report.md").exists() and not force:
        print("[compare] skipped (finished)")
        return
    compare(CompareConfig(full=out / "export" / "full", compressed=out / "export" / "compressed",
                          out=out, **_timing(section), force=True,
                          grid=out / "eval" / "grid.png" if (out / "eval" / "grid.png").exists()
                          else None), _say_compare)
    _compare_at_phone_size(section, out)
    md = (out / "report.md").read_text().splitlines()
    head = next((line for line in md if "faster" in line), "")
    if head:
        print(f"[compare] {head.strip('# ')}")


#: the input side phones run these generators at
PHONE_SIZE = 256


def _timing(section: dict[str, Any]) -> dict[str, Any]:
    """The [compare] table's timing settings as CompareConfig fields."""
    return {"backends": tuple(section.get("backends", ["torch", "ort", "tflite"])),
            "threads": tuple(int(t) for t in section.get("threads", [1, 2])),
            "runs": int(section.get("runs", 20)), "warmup": int(section.get("warmup", 3))}


def _compare_at_phone_size(section: dict[str, Any], out: Path) -> None:
    """The demo trains and exports at a small size; users run 256². Time both ``.pt`` models
    at 256² too (PyTorch and ONNX Runtime: the .tflite files are fixed at the export size) into
    ``out/report_256`` and add its headline to the main report, so the speedup phones would
    see is not left to a guess from the small size."""
    from dmad.benchmark.api import CompareConfig, compare
    from dmad.benchmark.host import static_size
    from dmad.benchmark.report import headline

    pts = [next(iter(sorted((out / "export" / side).glob("*.pt"))), None)
           for side in ("full", "compressed")]
    if None in pts:
        return
    fixed = {static_size(f) for side in ("full", "compressed")
             for f in (out / "export" / side).glob("*.tflite")} - {None}
    if fixed == {PHONE_SIZE}:
        return  # already measured at the phone's size
    sub = out / f"report_{PHONE_SIZE}"
    timing = _timing(section)
    timing["backends"] = tuple(b for b in timing["backends"] if b in ("torch", "ort")) or (
        "torch", "ort")
    compare(CompareConfig(full=pts[0], compressed=pts[1], out=sub,  # type: ignore[arg-type]
                          size=PHONE_SIZE, force=True, **timing), _say_compare)
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
