"""``dmad compress GENERATOR --images DIR --out RUN --target-gmacs G``: the product's main use.

An engineer has one trained generator (a dmad model file, a ``dmad teacher`` run folder, or a
raw pytorch-CycleGAN-and-pix2pix checkpoint such as ``latest_net_G_A.pth``, imported on the fly)
and a folder of the images it will see. One resumable run folder takes it through search →
prune → fine-tune → eval → export → compare:

* everything a user can get wrong is checked before anything is written (the generator, the
  images, the held-out folder, the budget against the smallest reachable architecture), so a
  refused run leaves no half-made folder;
* the images are split once (``split.json``): training batches and int8 calibration use the
  training side, the best-checkpoint choice, evaluation and export parity use whole held-out
  images at the export size;
* with a single generator (no discriminator, no reverse generator) the search and fine-tune
  distil the teacher's outputs (teacher-G-only); a teacher run folder with both generators and
  discriminators on its own dataset layout gets DMAD's full objective;
* ``compress.json`` records the arguments; ``--resume`` continues the first unfinished stage
  and refuses arguments that differ from the ones the run started with.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmad.compress.config import make_config, opt, read_config_file, to_dict
from dmad.compress.data.split import ImageSplit, extra_photographs
from dmad.compress.deploy_transforms import check_deploy, parse_deploy
from dmad.compress.errors import DmadError
from dmad.compress.io import atomic_write_json
from dmad.compress.runfolder import holds_user_files, is_lock_file
from dmad.compress.train import distributed, loop
from dmad.compress.train.objective import OBJECTIVES
from dmad.stages import compare_both, export_both, run_stage

ARGS = "compress.json"
SPLIT = "split.json"
#: Fields that may change when a run is resumed (where it runs, not what it computes).
RESUMABLE_CHANGES = {"device", "tensorboard"}
STAGES = ("search", "finetune", "eval", "export", "compare")
#: what DONE.json keeps of each evaluation
EVAL_KEYS = ("images", "size", "side", "psnr_vs_teacher", "ssim_vs_teacher",
             "psnr_worst_vs_teacher", "psnr_worst_image_vs_teacher", "ssim_worst_vs_teacher",
             "colour_mean_shift_max", "colour_flag", "held_out", "ratios")
#: the training images the final evaluation also judges (whole, as the held-out ones)
EVAL_TRAIN_IMAGES = 50


@dataclass
class CompressConfig:
    """Settings of ``dmad compress``; ``[search]`` / ``[finetune]`` tables of ``--config`` may set
    any other field of those stages."""

    generator: str = opt(
        "",
        "dmad model file, `dmad teacher` run folder, or pytorch-CycleGAN-and-pix2pix checkpoint "
        "(e.g. latest_net_G_A.pth)",
    )
    images: str = opt(
        "",
        "folder of the images the generator will see: flat or nested, trainA/ (unaligned) or "
        "train/ of A|B pairs (aligned)",
    )
    generator_class: str = opt("", "package.module:Class of a generator dmad has no mapping "
                               "for; GENERATOR is then its state dict (the current folder is "
                               "searched first for the module)")
    kwargs: str = opt("", "keyword arguments of --generator-class, a JSON object")
    target_gmacs: float = opt(0.0, "MAC budget of the compressed generator, in G at macs_size²")
    target_gmacs_BtoA: float = opt(
        0.0,
        "MAC budget of the B→A generator when GENERATOR is a two-direction teacher run "
        "(DMAD's configs differ per direction); 0 = --target-gmacs",
    )
    target_ms: float = opt(0.0, "latency budget in ms as --latency-table predicts it, instead "
                           "of --target-gmacs (0 = the MAC budget)")
    latency_table: str = opt("", "a `dmad latency-table` file of the target: needed by "
                             "--target-ms; the predicted and, after export, the measured "
                             "latency go into search/architecture.json")
    width_multiple: int = opt(-1, "round searched widths to multiples of this many channels; "
                              "-1 = the latency table's measured multiple, else off")
    macs_convention: str = opt("paper", "paper (thop, as the papers report) | true")
    macs_size: int = opt(256, "side in pixels at which the budget's MACs are counted")
    size: int = opt(0, "training crop side in pixels; 0 = the generator's training size, else 256")
    export_size: int = opt(256, "input side of the exported models, the held-out evaluation size")
    steps: int = opt(2000, "search steps")
    finetune_steps: int = opt(4000, "fine-tune steps")
    batch_size: int = opt(0, "images per step in each process (global batch = batch_size × "
                          "processes under torchrun); 0 = each stage's (the search: the "
                          "generator's, 1 for a checkpoint; the fine-tune: 4 with the fast "
                          "objective, the search's with dmad)")
    objective: str = opt("auto", "fine-tune objective: auto (fast with a generator alone, "
                         "dmad with a full teacher) | fast (L1 + SSIM + colour moments to the "
                         "teacher, weight average, multi-scale crops) | dmad (DMAD's: GAN + "
                         "co-attention + L1); see `dmad finetune --help` for each weight")
    extra_images: str = opt("", "a folder of unlabelled photographs the fine-tune adds to its "
                            "training images (the teacher labels them)")
    deploy: str = opt("", "distilled deploy transforms applied to the pruned student before "
                      "its fine-tune, comma list: fold-norms (InstanceNorm statistics averaged "
                      "over training images folded into the convolutions: no norm at run "
                      "time), zero-pad (residual blocks pad with zeros inside the "
                      "convolution); ResNet students")
    precision: str = opt("fp32", "fp32 | bf16 | fp16: autocast precision of the search and "
                         "fine-tune forward passes")
    workers: int = opt(-1, "DataLoader worker processes; -1 = 0 on CPU, up to 4 per GPU")
    quant: tuple[str, ...] = opt(("fp32", "fp16", "dynamic", "int8"),
                                 "TFLite variants, comma list of fp32, fp16, dynamic, int8")
    calib: str = opt("", "int8 calibration folder ('' = the training images of the split)")
    num_calib: int = opt(60, "int8 calibration images")
    val: str = opt("", "held-out folder ('' = testA/ or val/ of --images, else a 5 % split)")
    arch: str = opt("", "resnet | unet for a raw checkpoint ('' = inferred from its weights)")
    norm_stats: str = opt("instance", "raw checkpoints: instance (drop InstanceNorm running "
                          "statistics, as the reference loader) | running (keep them)")
    eval_every: int = opt(0, "fine-tune steps between held-out evaluations (0 = 10 per run)")
    quant_aware: bool = opt(False, "fine-tune the second half under fake int8 that mirrors "
                            "the export's int8 recipe (quantisation-aware distillation)")
    inception: str = opt("", "pytorch-fid Inception weights: FID/KID in the fine-tune and eval")
    export: bool = opt(True, "export both models to ONNX/TFLite with parity on held-out images")
    compare: bool = opt(True, "benchmark full vs compressed on this CPU and write report.md "
                        "(needs export)")
    compare_runs: int = opt(20, "timed runs per setting of the comparison")
    threads: tuple[int, ...] = opt((1, 2), "thread counts of the comparison, comma list")
    compare_backends: tuple[str, ...] = opt(("torch", "ort", "tflite"),
                                            "backends of the comparison, comma list")
    compare_warmup: int = opt(3, "untimed runs before each setting of the comparison")
    android: bool = opt(False, "copy the compressed and full .tflite with model.json into "
                        "android_demo's assets (the variant that meets its floor)")
    seed: int = opt(0, "seed of weights, batch order and the augmentation")
    skip_bad: bool = opt(False, "skip unreadable/too-small images with a count instead of stopping")
    device: str = opt("auto", "auto (CUDA when present) | cpu | cuda | cuda:N")
    checkpoint_every: int = opt(100, "steps between atomic checkpoints of the search/fine-tune")
    log_every: int = opt(10, "steps between log.jsonl lines and progress updates")
    tensorboard: bool = opt(True, "write TensorBoard event files of the search and fine-tune "
                            "(their tensorboard/ folders; `tensorboard --logdir OUT`)")

    def __post_init__(self) -> None:
        if not self.generator:
            raise DmadError("GENERATOR: required (a model file, a teacher run folder or a "
                            "pytorch-CycleGAN-and-pix2pix checkpoint)")
        if not self.images:
            raise DmadError("--images: required (the folder of images the generator will see)")
        if self.target_ms < 0:
            raise DmadError(f"--target-ms: must be >= 0, got {self.target_ms}")
        if self.target_ms > 0 and not self.latency_table:
            raise DmadError("--latency-table: required by --target-ms (make one with `dmad "
                            "latency-table`)")
        if not self.target_gmacs > 0 and not self.target_ms > 0:
            raise DmadError(f"--target-gmacs: must be > 0, got {self.target_gmacs} (or give "
                            "--target-ms with --latency-table)")
        if self.target_gmacs_BtoA < 0:
            raise DmadError(f"--target-gmacs-BtoA: must be >= 0, got {self.target_gmacs_BtoA}")
        if self.macs_convention not in ("paper", "true"):
            raise DmadError(f"--macs-convention: {self.macs_convention!r} is not paper or true")
        if self.norm_stats not in ("instance", "running"):
            raise DmadError(f"--norm-stats: {self.norm_stats!r} is not instance or running")
        if self.kwargs and not self.generator_class:
            raise DmadError("--kwargs: only with --generator-class")
        if self.arch not in ("", "resnet", "unet"):
            raise DmadError(f"--arch: {self.arch!r} is not resnet or unet")
        if self.batch_size < 0:
            raise DmadError(f"--batch-size: must be >= 0, got {self.batch_size}")
        if self.objective not in OBJECTIVES:
            raise DmadError(f"--objective: {self.objective!r} is not one of "
                            f"{', '.join(OBJECTIVES)}")
        if parse_deploy(self.deploy) and (self.target_ms or self.latency_table):
            raise DmadError("--deploy: not with a latency table (it predicts the searched "
                            "form, not the rebuilt one); give --target-gmacs alone")
        if self.extra_images and not Path(self.extra_images).is_dir():
            raise DmadError(f"--extra-images {self.extra_images}: not a folder")
        for name in ("steps", "finetune_steps", "export_size", "num_calib"):
            if getattr(self, name) < 1:
                raise DmadError(f"--{name.replace('_', '-')}: must be >= 1, got "
                                f"{getattr(self, name)}")
        bad = [q for q in self.quant if q not in ("fp32", "fp16", "dynamic", "int8")]
        if bad or not self.quant:
            raise DmadError(f"--quant: {','.join(bad) or 'empty'} is not a list of fp32, fp16, "
                            "dynamic, int8")


@dataclass
class _Teacher:
    """The generator to compress, resolved: the file or run the stages read, and how."""

    ref: str  # what SearchConfig.teacher gets (a model file or a teacher run folder)
    full_objective: bool  # DMAD's full objective (both G + D on the task layout) vs G-only
    imported: Any = None  # an in-memory import, saved into RUN/teacher/ once checks passed
    report: str = ""
    file: str = ""  # the A->B model file (for eval and the full model's export)
    size: int = 0  # training size recorded in the model, 0 if none


def _resolve_generator(cfg: CompressConfig) -> _Teacher:
    from dmad.compress.checkpoint import load_generator
    from dmad.compress.importer import import_checkpoint, infer_arch
    from dmad.compress.io import safe_load

    path = Path(cfg.generator)
    if not path.exists():
        raise DmadError(f"{path}: generator not found")
    if path.is_dir():
        if not (path / loop.DONE).exists() or not (path / "G_AtoB.pt").is_file():
            raise DmadError(f"{path}: not a finished `dmad teacher` run (no {loop.DONE} or "
                            "G_AtoB.pt); give the run folder of a finished teacher or a model file")
        run_cfg = read_config_file(path / loop.CONFIG)
        gs, ds = sorted(path.glob("G_*.pt")), sorted(path.glob("D_*.pt"))
        full = len(ds) == len(gs) and (len(gs) == 2 or run_cfg.get("task") == "pix2pix")
        return _Teacher(ref=str(path), full_objective=full, file=str(path / "G_AtoB.pt"),
                        size=int(run_cfg.get("size") or 0))
    if cfg.generator_class:
        return _user_class(cfg, path)
    obj = safe_load(path)
    if isinstance(obj, dict) and obj.get("format") == "dmad-model":
        _, meta = load_generator(path)  # refuses a discriminator with a one-line error
        return _Teacher(ref=str(path), full_objective=False, file=str(path),
                        size=int(meta.get("size") or 0))
    if isinstance(obj, dict) and obj.get("format") == "dmad-search":
        raise DmadError(f"{path}: is a search result; compress the teacher it came from")
    del obj
    if not cfg.arch:
        from dmad.compress.importer import recognised_public

        public = recognised_public(path)
        if public is not None:  # CUT / FastCUT or pix2pixHD: through its traced graph
            return _Teacher(ref="", full_objective=False, imported=public,
                            report=f"[compress] {path}: recognised as "
                                   f"{public.spec.builder.rsplit(':', 1)[1]} "
                                   f"{public.spec.kwargs}")
    arch = cfg.arch or infer_arch(path)
    if arch is None:
        raise DmadError(f"{path}: cannot tell resnet from unet by its weights (not a generator "
                        "checkpoint?); give --arch")
    model, report = import_checkpoint(path, arch, norm_stats=cfg.norm_stats)
    return _Teacher(ref="", full_objective=False, imported=model, report=str(report))


def _user_class(cfg: CompressConfig, path: Path) -> _Teacher:
    """A user's own generator class with its state dict, as a traced teacher."""
    from dmad.compress.graph_model import graph_teacher
    from dmad.compress.user_class import load_user_generator

    model = load_user_generator(cfg.generator_class, path, cfg.kwargs or None)
    model = graph_teacher(model, cfg.generator_class, json.loads(cfg.kwargs or "{}"))
    return _Teacher(ref="", full_objective=False, imported=model,
                    report=f"[compress] {path}: {cfg.generator_class}"
                           f"(**{cfg.kwargs or '{}'}), structure from its traced graph")


def _check_budget(teacher_file: str | None, model: Any, cfg: CompressConfig) -> None:
    """Refuse a target the search would refuse, before anything is written."""
    from dmad.compress import budget
    from dmad.compress.checkpoint import load_generator
    from dmad.compress.train.mask_schedule import reachable_floor

    g = model if model is not None else load_generator(Path(str(teacher_file)))[0]
    check_deploy(g, parse_deploy(cfg.deploy))
    spec = budget.cost_spec(g, cfg.macs_size)
    if cfg.latency_table:
        from dmad.compress.latency import load_table

        table = load_table(cfg.latency_table)
        table.check_spec(spec)
        if cfg.target_ms > 0:
            try:
                budget.check_target_ms(spec, cfg.target_ms, table)
            except DmadError as exc:
                raise DmadError(f"--target-ms: {str(exc).split(': ', 1)[-1]}") from None
            floor_ms = reachable_floor(g, "ms", cfg.macs_size, table)
            if floor_ms > cfg.target_ms:
                raise DmadError(f"--target-ms: {cfg.target_ms} is below the smallest "
                                f"architecture the search can reach ({floor_ms:.4g} ms "
                                "predicted, one channel per layer)")
            return
    for flag, gmacs in (("--target-gmacs", cfg.target_gmacs),
                        ("--target-gmacs-BtoA", cfg.target_gmacs_BtoA)):
        if not gmacs:
            continue  # B→A defaults to --target-gmacs
        try:
            target = budget.check_target(spec, gmacs, cfg.macs_convention, cfg.macs_size)
        except DmadError as exc:
            raise DmadError(f"{flag}: {str(exc).split(': ', 1)[-1]}") from None
        floor = reachable_floor(g, cfg.macs_convention, cfg.macs_size)
        if floor > target:
            raise DmadError(f"{flag}: {gmacs} is below the smallest architecture the search can "
                            f"reach ({floor / 1e9:.4g} GMACs {cfg.macs_convention}, one channel "
                            "per layer)")


def _record_measured(out: Path, table_path: str, export_size: int) -> None:
    """Time the exported compressed file the latency table describes (its backend and threads,
    on this CPU) and write it beside the prediction in ``search/architecture.json``."""
    from dmad.benchmark.latency_table import measure_file
    from dmad.compress.latency import load_table

    table = load_table(table_path)
    arch_path = out / "search" / "architecture.json"
    arch = json.loads(arch_path.read_text())
    entry = arch["directions"]["AtoB"]
    lat = entry.get("latency")
    if lat is None:
        return
    backend = str(table.key.get("backend"))
    name = {"tflite-xnnpack": "generator_fp32.tflite", "tflite-int8": "generator_int8.tflite",
            "ort": "generator.onnx"}[backend]
    f = out / "export" / "compressed" / name
    from dmad.benchmark.machine import machine_info

    other = table.key.get("machine") not in (None, machine_info()["cpu"])
    if table.key.get("device") or other or not f.is_file() or export_size != table.size:
        why = ("the table is of a phone" if table.key.get("device") else
               f"the table is of another machine ({table.key.get('machine')})" if other else
               f"no {name} in the export" if not f.is_file() else
               f"export size {export_size} is not the table's {table.size}")
        lat["measured_ms"], lat["measured_note"] = None, f"not measured: {why}"
    else:
        spec = entry["spec"]
        shape = (1, int(spec.get("input_nc", 3)), export_size, export_size)
        ms = measure_file(f, backend, shape, int(table.key.get("threads") or 1),
                          timing=str(table.key.get("timing", "median")))
        lat.update(measured_ms=round(ms, 3), measured_file=str(f),
                   measured_error=round(lat["predicted_ms"] / ms - 1.0, 4))
        print(f"[compress] latency   {lat['predicted_ms']:.2f} ms predicted, {ms:.2f} ms measured "
              f"({backend}, {table.key.get('threads')} thread(s), {export_size}²)")
    if backend == "tflite-int8":  # a phone's table holds for the same plan as this CPU's
        _compare_int8_plan(lat, table.key.get("int8_plan"), f.parent / "parity.json")
    atomic_write_json(arch_path, arch)


def _compare_int8_plan(lat: dict[str, Any], timed: dict[str, str] | None, parity: Path
                       ) -> None:
    """Record which units the shipped int8 file kept out of int8 beside those the table timed
    that way, and say so when they differ: the prediction holds for the table's plan."""
    from dmad.benchmark.latency_table import file_int8_plan

    got = file_int8_plan(parity)
    if got is None:
        return
    kept, layers = got
    lat.update(file_int8_plan=kept, file_int8_layers=layers, table_int8_plan=timed or {})
    if kept != (timed or {}):
        def show(p: dict[str, str]) -> str:
            return ", ".join(f"{u}:{k}" for u, k in sorted(p.items())) or "none"

        print(f"[compress] latency   note: the int8 file kept {show(kept)} out of int8, the "
              f"table timed {show(timed or {})} (dmad latency-table --int8-plan)")


def _saved_args(out: Path) -> dict[str, Any] | None:
    path = out / ARGS
    if not path.is_file():
        return None
    saved = read_config_file(path)
    if not isinstance(saved.get("config"), dict) or not isinstance(saved.get("tables", {}), dict):
        raise DmadError(f"{path}: not a dmad compress record (no 'config' table); use --force "
                        "to start the run over")
    return saved


def _check_same(saved: dict[str, Any], given: dict[str, Any], out: Path) -> None:
    """A resumed run must be given the arguments it started with (or none)."""
    cfg_saved = saved.get("config", {})
    for key, value in given.items():
        if key in RESUMABLE_CHANGES or key not in cfg_saved:
            continue
        was = cfg_saved[key]
        now = list(value) if isinstance(value, tuple) else value
        if was != now:
            flag = "GENERATOR" if key == "generator" else f"--{key.replace('_', '-')}"
            raise DmadError(f"{out / ARGS}: {flag} was {was!r} when this run started, not "
                            f"{now!r}; resume with the same arguments, or --force to start over")


def build_config(args_overrides: dict[str, Any], config_file: Path | None, out: Path,
                 resume: bool, *, tables: dict[str, Any] | None = None,
                 ) -> tuple[CompressConfig, dict[str, Any]]:
    """The run's config: saved arguments when resuming (checked against what was given), then
    ``--config``'s ``[compress]`` table, then flags. Returns it and the file's stage tables
    (or ``tables``, the ones a caller such as ``dmad demo`` made)."""
    saved = _saved_args(out) if resume else None
    if resume and saved is None:
        raise DmadError(f"{out}: nothing to resume (no {ARGS} there); drop --resume to start a "
                        "new run")
    given = dict(args_overrides)
    tables = dict(tables or {})
    if config_file is not None:
        data = read_config_file(config_file)
        tables = {k: v for k, v in data.items() if k in ("search", "finetune")}
        unknown = set(data) - {"compress", "search", "finetune"}
        if unknown:
            raise DmadError(f"{config_file}: unknown table(s) {', '.join(sorted(unknown))} "
                            "(known: compress, search, finetune)")
        given = {**{k.replace("-", "_"): v for k, v in data.get("compress", {}).items()},
                 **given}
    if saved is not None:
        _check_same(saved, given, out)
        tables = tables or saved.get("tables", {})
    base = saved.get("config") if saved else None
    if isinstance(base, dict) and "objective" not in base:
        base = {**base, "objective": "dmad"}  # a run from before the objective: DMAD's
    cfg = make_config(CompressConfig, None, given, base=base, base_origin=str(out / ARGS))
    return cfg, tables


def _generator_inside(cfg: CompressConfig, out: Path) -> str | None:
    """The name of the entry of ``out`` that holds the generator, else None: ``dmad demo``
    trains its teacher into RUN/teacher and compresses it into RUN (the CLI refuses an --out
    around its input; the Python API is guarded here)."""
    gen, run = Path(cfg.generator).resolve(), out.resolve()
    if gen == run or run not in gen.parents:
        return None
    return gen.relative_to(run).parts[0]


def _only(out: Path, name: str | None) -> bool:
    """``out`` holds nothing of the user's but ``name``."""
    return name is not None and all(p.name == name or is_lock_file(p) for p in out.iterdir())


def _prepare(cfg: CompressConfig, out: Path, *, resume: bool, force: bool,
             tables: dict[str, Any]) -> tuple[_Teacher, Path | None]:
    """All checks, then the run folder: compress.json, split.json, the imported teacher."""
    from dmad.compress.data.split import make_split

    if not force:
        _saved_args(out)  # a corrupt record is one line before anything runs
    if (out / ARGS).is_file() and not resume and not force:
        raise DmadError(f"{out}: holds a dmad compress run; use --resume to continue it or "
                        "--force to start over")
    if out.exists() and not out.is_dir():
        raise DmadError(f"{out}: exists and is not a folder")
    own = _generator_inside(cfg, out)
    if holds_user_files(out) and not (out / ARGS).is_file() and not _only(out, own):
        raise DmadError(f"{out}: is not empty and holds no dmad compress run; give a new or "
                        "empty --out (--force replaces only a dmad compress run)")
    teacher = _resolve_generator(cfg)
    if teacher.imported is not None and resume and (out / "teacher" / "G_AtoB.pt").is_file():
        teacher.imported = None  # imported when the run started
    if teacher.imported is not None or not teacher.ref:
        teacher.ref = teacher.file = str(out / "teacher" / "G_AtoB.pt")
    _check_budget(None if teacher.imported is not None else teacher.file, teacher.imported, cfg)
    if teacher.full_objective and "fold-norms" in parse_deploy(cfg.deploy):
        raise DmadError("--deploy fold-norms: needs a folder of images (the norm statistics "
                        "come from its training images), not a dataset run")
    size = cfg.size or teacher.size or 256
    split = None
    if not teacher.full_objective:
        if resume and (out / SPLIT).is_file():
            from dmad.compress.data.split import ImageSplit

            ImageSplit.load(out / SPLIT)  # checked now, not by the stage that first reads it
            split = None  # the saved one is reused by every stage
        else:
            split = make_split(Path(cfg.images), Path(cfg.val) if cfg.val else None, size=size,
                               skip_bad=cfg.skip_bad)
    # -- checks passed: write
    if force and out.exists():
        for name in ("teacher", *STAGES, ARGS, SPLIT, "report.md", "report.html", "latency.png",
                     "results.json", "results.csv", "results.md", loop.DONE):
            if name == own:
                continue  # the generator being compressed is the user's, never deleted
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if teacher.imported is not None:
        from dmad.compress.checkpoint import save_model

        save_model(teacher.imported, Path(teacher.ref), source=cfg.generator, arch=cfg.arch,
                   task="cyclegan", direction="AtoB", role="teacher (imported)")
        print(teacher.report)
    if split is not None:
        atomic_write_json(out / SPLIT, split.to_dict())
        print(f"[compress] images: {len(split.train)} training, {len(split.val)} held out "
              f"({split.val_source})")
    atomic_write_json(out / ARGS, {"config": to_dict(cfg), "tables": tables})
    return teacher, (out / SPLIT if not teacher.full_objective else None)


def run_compress(cfg: CompressConfig, out: Path, *, resume: bool = False, force: bool = False,
                 tables: dict[str, Any] | None = None) -> dict[str, Any]:
    """Search → prune → fine-tune → eval → export → compare in ``out``; returns DONE.json."""
    from dmad.compress.train.finetune import FinetuneConfig, finetune, refuse_incompatible
    from dmad.compress.train.search import SearchConfig, search

    tables = tables or {}
    if resume:
        def finished() -> dict[str, Any] | None:
            if not (out / loop.DONE).is_file():
                return None
            where = out / "report.md" if (out / "report.md").is_file() else out / loop.DONE
            print(f"[compress] {out}: finished already, nothing to resume (results in "
                  f"{where}); use --force to redo it")
            return read_config_file(out / loop.DONE)

        done = distributed.on_main(finished)  # every rank returns, none waits for a peer
        if done is not None:
            return done

    def prepare() -> tuple[_Teacher, Path | None]:
        t, sp = _prepare(cfg, out, resume=resume, force=force, tables=tables)
        t.imported = None  # saved into the run folder by now; not sent to the other ranks
        return t, sp

    # under torchrun rank 0 checks and writes the run folder; every rank trains the stages;
    # rank 0 alone evaluates, exports and compares
    teacher, split = distributed.on_main(prepare)
    size = cfg.size or teacher.size or 256
    times: dict[str, float] = {}
    common = {"size": size, "batch_size": cfg.batch_size, "seed": cfg.seed, "device": cfg.device,
              "skip_bad": cfg.skip_bad, "checkpoint_every": cfg.checkpoint_every,
              "log_every": cfg.log_every, "precision": cfg.precision, "workers": cfg.workers,
              "tensorboard": cfg.tensorboard}
    data = {"images": str(split)} if split is not None else {"data": cfg.images}
    mode = "teacher-G-only distillation" if split is not None else \
        "full objective (the teacher's G and D)"
    if distributed.is_main():
        want = f"{cfg.target_ms} ms predicted by {cfg.latency_table}" if cfg.target_ms else \
            f"{cfg.target_gmacs} GMACs {cfg.macs_convention} at {cfg.macs_size}²"
        print(f"[compress] {cfg.generator}: {mode}, target {want}")

    scfg = make_config(SearchConfig, None, {
        **tables.get("search", {}), **common, **data, "teacher": teacher.ref,
        "target_gmacs": cfg.target_gmacs, "target_gmacs_BtoA": cfg.target_gmacs_BtoA,
        "macs_convention": cfg.macs_convention, "macs_size": cfg.macs_size, "steps": cfg.steps,
        "target_ms": cfg.target_ms, "latency_table": cfg.latency_table,
        "width_multiple": cfg.width_multiple,
        "directions": "AtoB" if split is not None else "both"})
    # the fine-tune's settings are checked before the search spends its time
    fcfg = make_config(FinetuneConfig, None, {
        **tables.get("finetune", {}), **common, **data, "search": str(out / "search"),
        "teacher": teacher.ref, "steps": cfg.finetune_steps, "eval_every": cfg.eval_every,
        "inception": cfg.inception, "objective": cfg.objective,
        "eval_size": cfg.export_size if split is not None else 0,
        **({"extra_images": cfg.extra_images} if cfg.extra_images else {}),
        **({"quant_aware": True} if cfg.quant_aware else {}),
        **({"deploy": cfg.deploy} if cfg.deploy else {})})
    images = ImageSplit.load(split) if split is not None else None
    refuse_incompatible(fcfg, images is not None, images)
    if cfg.extra_images and images is not None:
        extra_photographs(Path(cfg.extra_images), images, size)
    run_stage("search", out / "search", lambda d, **kw: search(scfg, d, **kw), force, times,
              tag="compress")
    if distributed.is_main():
        say_searched(out / "search")
    run_stage("finetune", out / "finetune", lambda d, **kw: finetune(fcfg, d, **kw), force,
              times, tag="compress")
    if not distributed.is_main():
        return distributed.on_main(dict)
    return distributed.on_main(lambda: _finish(cfg, out, teacher, split, times, force))


def _finish(cfg: CompressConfig, out: Path, teacher: _Teacher, split: Path | None,
            times: dict[str, float], force: bool) -> dict[str, Any]:
    """Eval → export → compare → DONE.json (rank 0)."""
    from dmad.compress.evaluate import EvalConfig, evaluate

    mode = "teacher-G-only distillation" if split is not None else \
        "full objective (the teacher's G and D)"

    t = time.time()
    ecfg = EvalConfig(student=str(out / "finetune"), teacher=teacher.file,
                      images=str(split) if split is not None else "",
                      data="" if split is not None else cfg.images, size=cfg.export_size,
                      inception=cfg.inception, device=cfg.device)
    ev = evaluate(ecfg, out / "eval", force=True)  # the run's own folder, redone on resume
    tr = evaluate(dataclasses.replace(ecfg, side="train", max_images=EVAL_TRAIN_IMAGES),
                  out / "eval_train", force=True) if split is not None else None
    times["eval"] = time.time() - t
    print(f"[compress] eval      {times['eval']:7.1f} s  {fidelity_line(ev, 'held-out')}")
    if tr is not None:
        print(f"[compress]                     {fidelity_line(tr, 'training')}")

    exports: dict[str, Any] = {}
    # a teacher run folder names its dataset, which calibrates the full model's int8 as it
    # does the student's; a lone file is calibrated on the split's training images
    full_source = Path(teacher.ref) if Path(teacher.ref).is_dir() else Path(teacher.file)
    if cfg.export:
        t = time.time()
        from dmad.export.api import ExportConfig

        template = ExportConfig(out=out / "export", size=cfg.export_size, split=split,
                                calib=Path(cfg.calib) if cfg.calib else None,
                                quant=tuple(cfg.quant), num_calib=cfg.num_calib,
                                android=cfg.android)
        export_both(template, {"compressed": out / "finetune", "full": full_source},
                    out / "export", force=False)
        exports = {"size": cfg.export_size, "compressed": str(out / "export" / "compressed"),
                   "full": str(out / "export" / "full")}
        times["export"] = time.time() - t
        print(f"[compress] export    {times['export']:7.1f} s")
        if cfg.latency_table:
            _record_measured(out, cfg.latency_table, cfg.export_size)
    if cfg.compare and cfg.export:
        t = time.time()
        from dmad.benchmark.api import CompareConfig

        compare_both(CompareConfig(full=out / "export" / "full",
                                   compressed=out / "export" / "compressed", out=out,
                                   backends=tuple(cfg.compare_backends),
                                   threads=tuple(cfg.threads), runs=cfg.compare_runs,
                                   warmup=cfg.compare_warmup), force)
        times["compare"] = time.time() - t
        print(f"[compress] compare   {times['compare']:7.1f} s  report: {out / 'report.md'}")
    done = json.loads((out / "finetune" / loop.DONE).read_text())
    summary = {
        "generator": cfg.generator, "mode": mode, "objective": done.get("objective"),
        "best_step": (done.get("best") or {}).get("step"),
        "eval": {k: ev.get(k) for k in EVAL_KEYS},
        "eval_train": {k: tr.get(k) for k in EVAL_KEYS} if tr is not None else None,
        "exports": exports, "seconds": {k: round(v, 1) for k, v in times.items()},
    }
    atomic_write_json(out / loop.DONE, summary)
    total = sum(times.values())
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
    print(f"[compress] total     {total:7.1f} s  ({parts})")
    where = f"; .tflite files in {out / 'export' / 'compressed'}" if cfg.export else ""
    best = f" (best held-out step {summary['best_step']})" if summary["best_step"] else ""
    print(f"[compress] compressed generator: {out / 'finetune' / 'student_G_AtoB.pt'}{best}"
          f"{where}")
    return summary


def say_searched(search_dir: Path) -> None:
    """Each searched generator's cost against its teacher's, from ``architecture.json``."""
    arch = read_config_file(search_dir / "architecture.json")
    for d, e in arch["directions"].items():
        print(f"[compress] G_{d} searched: {e['gmacs_paper']:.3f} GMACs paper "
              f"({e['full_gmacs_paper'] / e['gmacs_paper']:.1f}x fewer), "
              f"{e['gmacs_true']:.3f} true, params {e['params']:,}")


def fidelity_line(ev: dict[str, Any], what: str) -> str:
    """One line of an eval summary: mean and worst image, colour shift, the flag."""
    flag = (f"  > colour shift above {ev['colour_flag_threshold']:g}/255"
            if ev.get("colour_flag") else "")
    return (f"{ev['images']} whole {what} images at {ev['size']}²: PSNR vs teacher "
            f"{ev['psnr_vs_teacher']:.2f} dB (worst {ev['psnr_worst_vs_teacher']:.2f}, "
            f"{ev['psnr_worst_image_vs_teacher']}), SSIM {ev['ssim_vs_teacher']:.3f} (worst "
            f"{ev['ssim_worst_vs_teacher']:.3f}), colour mean shift ≤ "
            f"{ev['colour_mean_shift_max']:.1f}/255{flag}")


__all__ = ["CompressConfig", "build_config", "fidelity_line", "run_compress"]
