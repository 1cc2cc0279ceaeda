"""``dmad demo``: the whole mission on the embedded default, or on the user's data via --config.

Each stage writes its outputs into its own folder under the demo run; a stage whose folder holds
a finished run is skipped, an unfinished one is resumed, and ``--force`` redoes everything. Stage
times are printed so users see where the minutes go.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any

from dmad.compress.config import make_config, read_config_file
from dmad.compress.errors import DmadError
from dmad.stages import run_stage

#: The demo config ships inside the package (``dmad.configs``), so ``dmad demo`` runs from any
#: folder of a non-editable install.
DEFAULT_CONFIG = Path(str(resources.files("dmad.configs").joinpath("demo.toml")))


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
    known = {"data", "teacher", "compress", "search", "finetune", "eval", "export",
             "compare"}
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


#: Fields of the legacy stage tables that are ``dmad compress`` arguments, as table → {key: field}.
LIFTED = {
    "search": {"teacher": "generator", "data": "images", "steps": "steps",
               **{k: k for k in ("target_gmacs", "target_gmacs_BtoA", "target_ms",
                                 "latency_table", "width_multiple", "macs_convention",
                                 "macs_size", "size", "seed", "device", "precision", "workers",
                                 "batch_size", "skip_bad", "checkpoint_every", "log_every",
                                 "tensorboard")}},
    "finetune": {"steps": "finetune_steps",
                 **{k: k for k in ("objective", "eval_every", "extra_images", "quant_aware",
                                   "inception")}},
    "eval": {"inception": "inception", "device": "device"},
    "export": {"quant": "quant", "num_calib": "num_calib", "size": "export_size",
               "android": "android"},
    "compare": {"threads": "threads", "runs": "compare_runs", "backends": "compare_backends",
                "warmup": "compare_warmup"},
}
#: keys a stage table may hold that the compress run sets itself
SET_BY_RUN = {"finetune": {"search", "teacher"}, "eval": {"student", "teacher"}}


def compress_settings(settings: dict[str, Any], path: Path, tdir: Path,
                      size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The demo file as ``dmad compress`` arguments and its ``[search]``/``[finetune]`` tables.

    ``[compress]`` gives arguments directly; the stage tables' keys that are compress arguments
    (``[search] target_gmacs``, ``[export] quant``, ...) are lifted into them, the rest stay
    in their table. A value in ``[compress]`` wins over a lifted one."""
    args: dict[str, Any] = {"generator": str(tdir), "export_size": size, "size": size}
    if "compress" not in settings:  # the older form: a stage runs when its table is there
        args.update(export="export" in settings, compare="compare" in settings)
    tables: dict[str, Any] = {"search": {}, "finetune": {}}
    for table, lifts in LIFTED.items():
        for key, value in settings.get(table, {}).items():
            if key in lifts:
                args[lifts[key]] = value
            elif key in SET_BY_RUN.get(table, ()):
                continue
            elif table in tables:
                tables[table][key] = value
            else:
                raise DmadError(f"{path}: unknown key {key!r} in [{table}] (known: "
                                f"{', '.join(sorted(lifts))})")
    if "images" not in args:
        args["images"] = str(settings.get("data", {}).get("root", "data/default"))
    args.update({k.replace("-", "_"): v for k, v in settings.get("compress", {}).items()})
    return args, tables


def run_demo(config: Path | None, out: Path, *, force: bool = False) -> dict[str, Any]:
    """Make the data and train the teacher, then ``dmad compress`` it in the same folder
    (search → fine-tune → eval → export → compare); returns stage seconds."""
    from dmad.compress_run import ARGS, build_config, run_compress

    path = config or DEFAULT_CONFIG
    _check_out(out)
    settings = _read_settings(path)
    times: dict[str, float] = {}
    _data_stage(settings, path, force, times)
    tdir, size = _teacher_stage(settings, path, out, force, times)
    args, tables = compress_settings(settings, path, tdir, size)
    resume = (out / ARGS).is_file() and not force
    finished = resume and (out / "DONE.json").is_file()
    cfg, tables = build_config(args, None, out, resume, tables=tables)
    summary = run_compress(cfg, out, resume=resume, force=force, tables=tables)
    if not finished:  # a finished run's seconds are the earlier run's, not this one's
        times.update(summary.get("seconds", {}))
    total = sum(times.values())
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
    print(f"[demo] total     {total:7.1f} s  ({parts})")
    print(f"[demo] outputs in {out}")
    return times
