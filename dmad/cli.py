"""``dmad``: one console script, one subcommand per stage.

The CLI only parses arguments, builds a stage's config dataclass and calls that stage's one
function. A :class:`DmadError` (and an operating-system refusal such as a full disk) is printed
as a single ``dmad: error: ...`` line with exit code 2; anything else is a bug, printed as one
``dmad: internal error`` line with exit code 70 (the traceback with ``DMAD_TRACEBACK=1``).
Before any command runs, its numbers are checked, its ``--out`` may not overwrite an input, and
the ``--out`` is locked for the command's life (:mod:`dmad.compress.runfolder`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

from dmad.compress.errors import DmadError


def _add_config_flags(p: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name VALUE`` flag per config field (values are typed by make_config)."""
    from dmad.compress.config import field_help, field_types

    g = p.add_argument_group("config fields (override the config file)")
    for name, tp in field_types(cls).items():
        if name in skip:
            continue
        default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
        shown = "''" if default == "" else ("none" if default is None else default)
        if isinstance(shown, bool):
            shown = str(shown).lower()
        tname = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        if typing.get_origin(tp) is tuple:
            tname = "LIST"
            shown = ",".join(str(v) for v in default) if isinstance(default, tuple) else shown
        elif typing.get_origin(tp) is not None:
            tname = str(tp).replace("typing.", "")
        g.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"cfg_{name}",
            metavar=tname.upper(),
            default=None,
            help=f"{field_help(cls, name)} (default: {shown})".replace("%", "%%"),
        )


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    from dmad.compress.config import parse_set

    out.update(parse_set(getattr(args, "set", None)))
    return out


def _run_config(cls: type, args: argparse.Namespace, section: str,
                saved_key: str | None = None) -> Any:
    """A stage config from defaults, the saved config of a resumed run (so ``--resume`` needs
    no flags repeated), the ``--config`` file's ``[section]``, then flags."""
    from dmad.compress.config import make_config, read_config_file
    from dmad.compress.train import loop

    saved = args.out / loop.CONFIG
    base = None
    if args.resume and not (args.out / loop.CHECKPOINT).is_file() \
            and not (args.out / loop.DONE).is_file():
        raise DmadError(f"{args.out}: nothing to resume (no {section} checkpoint there); drop "
                        "--resume to start a new run")
    if args.resume and saved.exists():
        base = read_config_file(saved)
        if saved_key is not None:
            base = base.get(saved_key)
            if not isinstance(base, dict):
                raise DmadError(f"{saved}: has no {saved_key!r} table; not a dmad {section} run")
            if saved_key == "finetune" and "objective" not in base:
                base = {**base, "objective": "dmad"}  # a run from before the objective
    cfg = make_config(cls, args.config, _config_overrides(args), section=section, base=base,
                      base_origin=str(saved))
    guard_inputs(args, cfg)
    return cfg


def _common_run_flags(p: argparse.ArgumentParser, **helps: str) -> None:
    """--config, --set, --out, --resume, --force; ``helps`` rewords them for one subcommand."""
    h = {"config": "TOML or JSON file of config fields, or the name of a packaged preset "
                   "(horse2zebra, edges2shoes_unet, cityscapes_unet, edges2shoes_separable, "
                   "cityscapes_separable)",
         "out": "run folder (config.json, checkpoint.pt, log.jsonl, results)",
         "resume": "continue the interrupted run in --out from its last checkpoint",
         "force": "overwrite a run already in --out", **helps}
    p.add_argument("--config", type=Path, help=h["config"])
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config field, e.g. --set steps=200 (repeatable)")
    p.add_argument("--out", type=Path, required=True, help=h["out"])
    p.add_argument("--resume", action="store_true", help=h["resume"])
    p.add_argument("--force", action="store_true", help=h["force"])


# -- subcommands ---------------------------------------------------------------------------


def cmd_data(args: argparse.Namespace) -> int:
    from dmad.compress.data import make_default_dataset

    root = make_default_dataset(
        args.out, size=args.size, n_train=args.n_train, n_test=args.n_test, seed=args.seed,
        force=args.force,
    )
    print(f"default dataset ready in {root} (unaligned/ for CycleGAN, aligned/ for Pix2Pix)")
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    from dmad.compress.train.teacher import TeacherConfig, train_teacher

    cfg = _run_config(TeacherConfig, args, "teacher")
    summary = train_teacher(cfg, args.out, resume=args.resume, force=args.force)
    for name, g in summary["generators"].items():
        print(
            f"teacher G_{name}: {args.out / g['file']}  params {g['params']:,}  "
            f"{g['gmacs_paper_256']:.3f} GMACs paper / {g['gmacs_true_256']:.3f} true at 256²"
        )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from dmad.compress.train.search import SearchConfig, search

    cfg = _run_config(SearchConfig, args, "search", saved_key="search")
    summary = search(cfg, args.out, resume=args.resume, force=args.force)
    arch = json.loads((args.out / "architecture.json").read_text())
    for d, e in arch["directions"].items():
        print(f"search G_{d}: {e['gmacs_paper']:.3f} GMACs paper / {e['gmacs_true']:.3f} true "
              f"(full {e['full_gmacs_paper']:.3f} / {e['full_gmacs_true']:.3f}), params "
              f"{e['params']:,} (full {e['full_params']:,}), target {e['target_gmacs']} "
              f"{cfg.macs_convention}; removed blocks {e['removed_blocks']}")
        if e["forced_to_one"]:
            print(f"warning: layers kept at one channel: {', '.join(e['forced_to_one'])}",
                  file=sys.stderr)
    print(f"architecture: {args.out / summary['architecture']}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from dmad.compress.train.finetune import FinetuneConfig, finetune

    cfg = _run_config(FinetuneConfig, args, "finetune", saved_key="finetune")
    summary = finetune(cfg, args.out, resume=args.resume, force=args.force)
    mode = "teacher-G-only" if summary["g_only"] else "full (teacher G + D)"
    print(f"objective ({mode}): {summary['objective']}")
    for d, s in summary["students"].items():
        print(f"student G_{d}: {args.out / s['file']}  params {s['params']:,}  "
              f"{s['gmacs_paper_256']:.3f} GMACs paper / {s['gmacs_true_256']:.3f} true at 256²")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from dmad.compress.config import make_config
    from dmad.compress.evaluate import EvalConfig, evaluate

    cfg = make_config(EvalConfig, args.config, _config_overrides(args), section="eval")
    guard_inputs(args, cfg)
    s = evaluate(cfg, args.out, force=args.force)

    def fmt(v: float | None, unit: str = "") -> str:
        return "n/a" if v is None else f"{v:.3f}{unit}"

    print(f"images {s['images']}  PSNR vs teacher {fmt(s['psnr_vs_teacher'], ' dB')} (worst "
          f"{fmt(s['psnr_worst_vs_teacher'], ' dB')}, {s['psnr_worst_image_vs_teacher']})  SSIM "
          f"vs teacher {fmt(s['ssim_vs_teacher'])} (worst {fmt(s['ssim_worst_vs_teacher'])})")
    flag = (f"  > above {s['colour_flag_threshold']:g}/255: a visible colour cast"
            if s["colour_flag"] else "")
    print(f"colour: channel means moved by up to {fmt(s['colour_mean_shift_max'])}/255 (mean "
          f"{fmt(s['colour_mean_shift_mean'])}), spreads by up to "
          f"{fmt(s['colour_std_shift_max'])}/255{flag}")
    if s["psnr_vs_ground_truth"] is not None:
        print(f"vs ground truth: student PSNR {fmt(s['psnr_vs_ground_truth'], ' dB')} SSIM "
              f"{fmt(s['ssim_vs_ground_truth'])}; teacher PSNR "
              f"{fmt(s['teacher_psnr_vs_ground_truth'], ' dB')}")
    r = s["ratios"]
    print(f"MACs ÷{r['macs_paper']:.1f} (paper) ÷{r['macs_true']:.1f} (true), params "
          f"÷{r['params']:.1f}")
    if "fid_kid_student" in s:
        print(f"FID student {s['fid_kid_student']['fid']:.2f}  teacher "
              f"{s['fid_kid_teacher']['fid']:.2f}")
    else:
        print(s["fid_note"], file=sys.stderr)
    print(f"wrote {args.out / 'eval.json'} and {args.out / 'grid.png'}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from dmad.compress.importer import import_to_file

    opts = {
        k: v
        for k, v in {
            "ngf": args.ngf,
            "n_blocks": args.n_blocks,
            "num_downs": args.num_downs,
            "norm": args.norm,
            "padding": args.padding,
            "separable": args.separable or None,
            "dropout": args.dropout,
        }.items()
        if v is not None
    }
    if not args.arch and not opts and args.checkpoint.is_file():
        from dmad.compress.importer import recognised_public

        public = recognised_public(args.checkpoint)
        if public is not None:  # CUT / pix2pixHD: a model file of its traced class
            _save_public(public, args)
            return 0
    arch = args.arch or _infer_arch(args.checkpoint)
    report = import_to_file(args.checkpoint, arch, args.out, norm_stats=args.norm_stats,
                            force=args.force, **opts)
    print(report)
    print(f"wrote {args.out}")
    return 0


def _save_public(model: Any, args: argparse.Namespace) -> None:
    from dmad.compress.checkpoint import save_model
    from dmad.compress.importer import check_out

    out = check_out(args.out, args.force)
    save_model(model, out, source=str(args.checkpoint), arch=model.spec.builder)
    print(f"recognised {args.checkpoint} as {model.spec.builder.rsplit(':', 1)[-1]} "
          f"{model.spec.kwargs} (a traced generator)")
    print(f"wrote {out}")


def _infer_arch(path: Path) -> str:
    from dmad.compress.importer import infer_arch

    if not path.is_file():
        raise DmadError(f"{path}: checkpoint not found")
    arch = infer_arch(path)
    if arch is None:
        raise DmadError(f"{path}: cannot tell resnet from unet by its weights (not a "
                        "generator?); give --arch")
    return arch


def _macs_model(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from dmad.compress.checkpoint import load_model
    from dmad.compress.models import ResnetGenerator, ResnetSpec, UnetGenerator, UnetSpec

    if args.generator_class is not None:
        from dmad.compress.user_class import load_user_generator

        return load_user_generator(args.generator_class, args.model, args.kwargs)
    if args.model is not None:
        from dmad.compress.io import safe_load

        obj = safe_load(Path(args.model))
        if isinstance(obj, dict) and obj.get("format") == "dmad-model":
            return load_model(args.model)[0]
        from dmad.compress.importer import recognised_public

        public = recognised_public(args.model)
        if public is not None:  # a CUT or pix2pixHD checkpoint
            return public
        # a pytorch-CycleGAN-and-pix2pix checkpoint, mapped as `dmad import` / `dmad compress`
        from dmad.compress.importer import import_checkpoint, infer_arch

        arch = infer_arch(args.model)
        if arch is None:
            raise DmadError(f"{args.model}: neither a dmad model file nor a ResNet/UNet "
                            "generator checkpoint")
        return import_checkpoint(Path(args.model), arch)[0]
    try:
        if args.arch == "resnet":
            return ResnetGenerator(
                ResnetSpec(
                    ngf=args.ngf,
                    n_blocks=args.n_blocks,
                    norm=args.norm or "instance",
                    separable=args.separable,
                )
            )
        return UnetGenerator(
            UnetSpec(ngf=args.ngf, num_downs=args.num_downs, norm=args.norm or "batch")
        )
    except ValueError as exc:
        raise DmadError(str(exc)) from None


def cmd_macs(args: argparse.Namespace) -> int:
    import torch

    from dmad.compress.arch import format_table, profile

    if args.size < 1:
        raise DmadError(f"--size: must be >= 1, got {args.size}")
    model = _macs_model(args)
    spec = getattr(model, "spec", None)
    first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    family, input_nc = (spec.family, spec.input_nc) if spec is not None else (
        type(model).__name__, first.in_channels if first is not None else 3)
    if family == "graph":  # a traced generator: its class is what the user knows it by
        family = spec.builder.rsplit(":", 1)[-1]
    div = spec.divisor if hasattr(spec, "divisor") else 4
    if args.size % div:
        raise DmadError(
            f"--size: {args.size} is not a multiple of {div} for this {family} generator"
        )
    prof = profile(model, (1, input_nc, args.size, args.size))
    if args.per_layer:
        print(format_table(prof))
    if args.json:
        print(json.dumps({"family": family, **prof.summary()}, indent=2))
        return 0
    src = args.model or f"{args.arch} ngf={args.ngf}"
    print(
        f"{src} at 1x{input_nc}x{args.size}x{args.size}: params {prof.params:,}  "
        f"MACs {prof.macs_paper / 1e9:.3f} G (paper/thop convention)  "
        f"{prof.macs_true / 1e9:.3f} G (true)"
    )
    return 0


def cmd_fid_stats(args: argparse.Namespace) -> int:
    from dmad.compress.fid import folder_features, load_inception, save_real_stats
    from dmad.compress.runfolder import refuse_overwrite

    if args.out.suffix != ".npz":
        raise DmadError(f"--out {args.out}: expected a .npz file name")
    refuse_overwrite([args.out], args.force, "FID statistics")
    net = load_inception(args.inception)
    feats, names = folder_features(args.folder, net, args.batch_size)
    protocol = {"images": str(args.folder), "count": len(names), "size": "each image's own, "
                "resized to 299x299 by the network (pytorch-fid's protocol)",
                "inception": args.inception.name, "tool": "dmad fid-stats"}
    save_real_stats(args.out, feats, protocol)
    print(f"wrote {args.out}: mu and sigma of {len(names)} images of {args.folder}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from dmad.compress_run import build_config, run_compress

    overrides = _config_overrides(args)
    if args.generator is not None:
        overrides["generator"] = str(args.generator)
    cfg, tables = build_config(overrides, args.config, args.out, args.resume)
    guard_inputs(args, cfg)
    run_compress(cfg, args.out, resume=args.resume, force=args.force, tables=tables)
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    from dmad.compress.config import make_config
    from dmad.translate import TranslateConfig, translate

    given = {**_config_overrides(args), "models": tuple(str(m) for m in args.models),
             "images": str(args.images), "out": str(args.out), "force": args.force}
    cfg = make_config(TranslateConfig, None, given)
    s = translate(cfg)
    ms = ", ".join(f"{k} {v:.1f} ms" for k, v in s["median_ms"].items())
    print(f"{s['images']} images: {ms} median per image")
    if "speedup" in s:
        print(f"compressed {s['speedup']:.1f}x faster; PSNR between the outputs "
              f"{s['psnr_mean_db']:.1f} dB mean, worst {s['psnr_worst_db']:.1f} dB "
              f"({s['psnr_worst_image']})")
    print(f"wrote {args.out / 'index.html'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dmad.pipeline import run_demo

    run_demo(args.config, args.out, force=args.force)
    return 0


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes end like every other error: one ``dmad: error:`` line, exit 2 (the usage
    is one ``--help`` away)."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"dmad: error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)",
              file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from dmad import __version__

    p = OneLineParser(
        prog="dmad",
        description="Compress image-to-image GAN generators (DMAD) and ship them to phones.",
    )
    p.add_argument("--version", action="version", version=f"dmad {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_training_commands(sub)
    _add_model_commands(sub)
    _add_pipeline_commands(sub)
    return p


def _add_training_commands(sub: Any) -> None:
    """data, teacher, search, finetune, eval."""
    from dmad.compress.train.teacher import TeacherConfig

    s = sub.add_parser("data", help="generate the embedded default dataset")
    s.add_argument("--out", type=Path, default=Path("data/default"),
                   help="folder to write (default: data/default)")
    s.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    s.add_argument("--n-train", type=int, default=200,
                   help="training images per side (default: 200)")
    s.add_argument("--n-test", type=int, default=24, help="held-out images per side (default: 24)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed; the same seed gives byte-identical images (default: 0)")
    s.add_argument("--force", action="store_true",
                   help="replace a dataset `dmad data` made in --out with other settings (a "
                   "folder dmad did not make is never written)")
    s.set_defaults(func=cmd_data)

    s = sub.add_parser("teacher", help="train a CycleGAN or Pix2Pix teacher")
    _common_run_flags(s)
    _add_config_flags(s, TeacherConfig)
    s.set_defaults(func=cmd_teacher)

    from dmad.compress.train.search import SearchConfig

    s = sub.add_parser("search", help="DMAD search: differentiable masks under a MAC budget")
    _common_run_flags(s)
    _add_config_flags(s, SearchConfig)
    s.set_defaults(func=cmd_search)

    from dmad.compress.evaluate import EvalConfig
    from dmad.compress.train.finetune import FinetuneConfig

    s = sub.add_parser("finetune", help="prune the searched generator, then co-attention "
                       "distillation from the teacher")
    _common_run_flags(s)
    _add_config_flags(s, FinetuneConfig)
    s.set_defaults(func=cmd_finetune)

    s = sub.add_parser("eval", help="PSNR/SSIM vs teacher (and ground truth), FID/KID, grid")
    s.add_argument("--config", type=Path, help="TOML or JSON file of config fields ([eval] table)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config field, e.g. --set max_images=8 (repeatable)")
    s.add_argument("--out", type=Path, required=True, help="folder for eval.json and grid.png")
    s.add_argument("--force", action="store_true",
                   help="replace an earlier eval.json and grid.png in --out")
    _add_config_flags(s, EvalConfig)
    s.set_defaults(func=cmd_eval)


def _add_model_commands(sub: Any) -> None:
    """import, macs, fid-stats."""
    s = sub.add_parser("fid-stats", help="Inception statistics of a folder of real images "
                       "(pytorch-fid-compatible .npz) for `dmad eval --real-stats`")
    s.add_argument("folder", type=Path, help="folder of real images of the target domain")
    s.add_argument("--inception", type=Path, required=True,
                   help="pytorch-fid weights file (pt_inception-2015-12-05-6726825d.pth)")
    s.add_argument("--out", type=Path, required=True, help="the .npz file to write")
    s.add_argument("--batch-size", type=int, default=50, help="images per forward (default: 50)")
    s.add_argument("--force", action="store_true", help="replace an existing --out file")
    s.set_defaults(func=cmd_fid_stats)

    s = sub.add_parser("import", help="convert a pytorch-CycleGAN-and-pix2pix, CUT or "
                       "pix2pixHD generator checkpoint into a dmad model file")
    s.add_argument("checkpoint", type=Path, help="e.g. latest_net_G.pth")
    s.add_argument("--arch", choices=("resnet", "unet"),
                   help="the checkpoint's generator family: resnet (CycleGAN) | unet (Pix2Pix) "
                   "(default: inferred from the first convolution)")
    s.add_argument("--out", type=Path, required=True, help="dmad model file to write")
    s.add_argument("--force", action="store_true", help="replace an existing --out file")
    s.add_argument("--ngf", type=int, help="generator base width (default: inferred)")
    s.add_argument("--n-blocks", type=int, help="ResNet blocks (default: inferred)")
    s.add_argument("--num-downs", type=int, help="UNet down-samplings (default: inferred)")
    s.add_argument(
        "--norm",
        choices=("instance", "instance_affine", "batch"),
        help="norm layers (default: inferred from the weights)",
    )
    s.add_argument("--norm-stats", choices=("instance", "running"), default="instance",
                   help="InstanceNorm running statistics in the file: instance = drop them as "
                   "the reference loader does; running = keep them, matching a fork that tested "
                   "with them (default: instance)")
    s.add_argument("--padding", choices=("reflect", "zero"),
                   help="ResNet padding (default: reflect, as the originals)")
    s.add_argument("--separable", action="store_true", help="mobile (separable) ResNet")
    s.add_argument("--dropout", action=argparse.BooleanOptionalAction, default=None,
                   help="dropout in the generator (default: off resnet, on unet)")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("macs", help="count MACs (paper and true conventions) and parameters")
    s.add_argument("model", type=Path, nargs="?",
                   help="a dmad model file; without it, the standard generator of --arch")
    s.add_argument("--arch", choices=("resnet", "unet"), default="resnet",
                   help="generator family (default: resnet)")
    s.add_argument("--ngf", type=int, default=64, help="base width in channels (default: 64)")
    s.add_argument("--n-blocks", type=int, default=9, help="ResNet blocks (default: 9)")
    s.add_argument("--num-downs", type=int, default=8,
                   help="UNet down-samplings (default: 8 = unet_256)")
    s.add_argument("--norm", choices=("instance", "instance_affine", "batch"),
                   help="norm layers (default: instance resnet, batch unet)")
    s.add_argument("--separable", action="store_true",
                   help="the mobile ResNet with depthwise-separable block convs")
    s.add_argument("--size", type=int, default=256,
                   help="input side in pixels at which MACs are counted (default: 256)")
    s.add_argument("--generator-class", metavar="PKG.MODULE:CLASS",
                   help="your own generator class; MODEL is then its state dict (the current "
                        "folder is searched first)")
    s.add_argument("--kwargs", metavar="JSON",
                   help="keyword arguments of --generator-class, a JSON object")
    s.add_argument("--per-layer", action="store_true", help="print the per-layer table")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=cmd_macs)


def _add_pipeline_commands(sub: Any) -> None:
    """export, bench, compare, latency-table (registered by their stages), compress,
    translate, demo."""
    from dmad.benchmark.cli import register as register_benchmark
    from dmad.export.cli import register as register_export

    register_export(sub)
    register_benchmark(sub)

    from dmad.compress_run import CompressConfig

    s = sub.add_parser(
        "compress", help="compress your generator: checkpoint + image folder -> verified .tflite",
        description="Search, prune, fine-tune, evaluate, export and compare in one resumable run "
                    "folder: dmad compress latest_net_G_A.pth --images photos/ --out runs/mine "
                    "--target-gmacs 5")
    s.add_argument("generator", type=Path, nargs="?",
                   help="dmad model file, `dmad teacher` run folder, or pytorch-CycleGAN-and-"
                   "pix2pix checkpoint (optional with --resume)")
    _common_run_flags(
        s, config="TOML/JSON with a [compress] table (and optional [search] / [finetune] tables "
        "of those stages' fields)", out="run folder (compress.json, split.json, one subfolder "
        "per stage)", resume="continue the run in --out (same arguments, or none)",
        force="delete the run in --out and start over")
    _add_config_flags(s, CompressConfig, skip=("generator",))
    s.set_defaults(func=cmd_compress)

    from dmad.translate import TranslateConfig

    s = sub.add_parser(
        "translate", help="run one or two models (full, compressed) over a folder of images; "
        "outputs + index.html side by side",
        description="dmad translate FULL.tflite SMALL.tflite --images photos/ --out runs/look: "
                    "input | full | compressed per image, the PSNR between the outputs and the "
                    "time per image")
    s.add_argument("models", type=Path, nargs="+", metavar="MODEL",
                   help="a dmad model file or run folder, an .onnx or a .tflite; two for full "
                   "and compressed")
    s.add_argument("--images", type=Path, required=True, help="folder of input images")
    s.add_argument("--out", type=Path, required=True,
                   help="output folder (new or empty; --force replaces an earlier translate)")
    s.add_argument("--force", action="store_true", help="replace an earlier translate output")
    _add_config_flags(s, TranslateConfig, skip=("models", "images", "out", "force"))
    s.set_defaults(func=cmd_translate)

    s = sub.add_parser("demo", help="the whole pipeline on the embedded default (or --config)")
    s.add_argument("--config", type=Path,
                   help="TOML file of stage tables (default: the packaged demo.toml, the "
                   "embedded default data)")
    s.add_argument("--out", type=Path, default=Path("runs/demo"),
                   help="run folder, one subfolder per stage (default: runs/demo)")
    s.add_argument("--force", action="store_true", help="redo finished stages")
    s.set_defaults(func=cmd_demo)


def presets() -> dict[str, Path]:
    """The packaged presets (``configs/presets/*.toml``) by name."""
    from importlib import resources

    folder = resources.files("dmad.configs") / "presets"
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir()
            if str(f).endswith(".toml")} if folder.is_dir() else {}


def resolve_preset(path: Path) -> Path:
    """``--config NAME`` names a packaged preset (e.g. ``horse2zebra``) unless NAME is a file."""
    if path.exists() or path.parent != Path("."):
        return path
    found = presets().get(path.stem)
    if found is None:
        raise DmadError(f"--config {path}: no such file, and not a preset (presets: "
                        f"{', '.join(sorted(presets())) or 'none'})")
    return found


def _join_torchrun(args: argparse.Namespace) -> None:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) join the process group before anything reads or
    writes the run folder, so rank 0 alone prepares it; NCCL unless ``--device cpu``."""
    from dmad.compress.train import distributed

    if distributed.env_world_size() <= 1:
        return
    import torch

    dev = str(getattr(args, "cfg_device", None) or "auto")
    cuda = torch.cuda.is_available() and not dev.startswith("cpu")
    distributed.setup(torch.device("cuda" if cuda else "cpu"))


#: Commands whose --force replaces the output as a whole: their --out may not hold an input.
#: The others write only their own named files, so an --out holding their inputs is normal.
REPLACES_OUT = ("data", "teacher", "search", "finetune", "export", "compress", "demo",
                "translate")


def _check_numbers(args: argparse.Namespace) -> None:
    """Every number given as a flag: finite, and image sides within this machine's memory."""
    from dmad.compress.limits import NONNEGATIVE_FIELDS, SIDE_FIELDS, check_finite, check_side

    for key, value in vars(args).items():
        flag = "--" + key.removeprefix("cfg_").replace("_", "-")
        if isinstance(value, float):
            check_finite(flag, value)
        elif key in SIDE_FIELDS and isinstance(value, int) and not isinstance(value, bool):
            check_side(flag, value)
        elif key in NONNEGATIVE_FIELDS and isinstance(value, int) and value < 0:
            raise DmadError(f"{flag}: must be >= 0, got {value}")


def _input_paths(args: argparse.Namespace) -> dict[str, Any]:
    """The paths a command was given to read (flags and positionals), by option name."""
    found: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in ("out", "config", "func") or value is None:
            continue
        flag = key.removeprefix("cfg_").replace("_", "-")
        flag = flag if key in ("checkpoint", "generator", "models") and \
            not key.startswith("cfg_") else f"--{flag}"
        if isinstance(value, Path):
            found[flag] = value
        elif isinstance(value, list | tuple) and value and all(isinstance(v, Path)
                                                                for v in value):
            found[flag] = list(value)
        elif key.startswith("cfg_") and isinstance(value, str) and value and \
                Path(value).exists():
            found[flag] = value
    return found


def guard_inputs(args: argparse.Namespace, cfg: Any = None) -> None:
    """Refuse an --out equal to, inside, or (for commands replacing it) holding an input: the
    flags' paths, and those a config file or a resumed run's saved config named."""
    from dmad.compress.runfolder import refuse_out_over_inputs

    out = getattr(args, "out", None)
    inputs = _input_paths(args)
    if cfg is not None and dataclasses.is_dataclass(cfg):
        for f in dataclasses.fields(cfg):
            v = getattr(cfg, f.name)
            if f.name != "out" and isinstance(v, str | Path) and str(v) and Path(v).exists():
                inputs.setdefault(f"--{f.name.replace('_', '-')}", v)
    refuse_out_over_inputs(out, inputs, contains=args.command in REPLACES_OUT)
    config = getattr(args, "config", None)
    if isinstance(config, Path):
        refuse_out_over_inputs(out, {"--config": config}, contains=False)


def _output_lock(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The lock of the command's --out (none for commands that write nothing, and only rank 0
    under torchrun: the other ranks never write)."""
    import contextlib

    from dmad.compress.runfolder import run_lock
    from dmad.compress.train import distributed

    out = getattr(args, "out", None)
    if not isinstance(out, Path) or not distributed.is_main() or distributed.env_rank() != 0:
        return contextlib.nullcontext()
    return run_lock(out)


def _internal_error(exc: BaseException) -> int:
    """An exception dmad did not foresee: one line and exit 70, the traceback only on request
    (DMAD_TRACEBACK=1), so a user never faces a stack dump but a bug is still a bug."""
    import os

    if os.environ.get("DMAD_TRACEBACK"):
        raise exc
    first = " ".join(str(exc).split())[:300]
    print(f"dmad: internal error: {type(exc).__name__}: {first} (a bug in dmad; rerun with "
          "DMAD_TRACEBACK=1 and report the traceback)", file=sys.stderr)
    return 70


def main(argv: list[str] | None = None) -> int:
    """The ``dmad`` command; a torchrun rank that left its process group ends here at once."""
    code = _main(argv)
    if _LEFT_GROUP:
        # gloo's worker threads can abort the interpreter's own exit in C++ ("terminate called
        # without an active exception", SIGABRT) after every file is written, failing a run
        # that succeeded; the group is left, every file closed: end without that teardown
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


#: set once this process has left a torchrun process group (:func:`_leave_torchrun`)
_LEFT_GROUP: list[bool] = []


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    finished = False
    try:
        if isinstance(getattr(args, "config", None), Path):
            args.config = resolve_preset(args.config)
        _check_numbers(args)
        guard_inputs(args)
        _join_torchrun(args)
        with _output_lock(args):
            code = int(args.func(args) or 0)
        finished = True
        return code
    except DmadError as exc:
        print(f"dmad: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "dmad: interrupted (the last checkpoint is kept; rerun with --resume)", file=sys.stderr
        )
        return 130
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"dmad: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the last line of defence, see _internal_error
        from dmad.compress.limits import is_out_of_memory

        if is_out_of_memory(exc):
            print(f"dmad: error: out of memory ({' '.join(str(exc).split())[:160]}); a smaller "
                  "model, --size or --batch-size needs less", file=sys.stderr)
            return 2
        return _internal_error(exc)
    finally:
        _leave_torchrun(finished)


def _leave_torchrun(finished: bool) -> None:
    """Leave the process group, if this process joined one (see distributed.teardown)."""
    if "torch.distributed" not in sys.modules:
        return
    from dmad.compress.train import distributed

    if not distributed.active():
        return
    try:
        distributed.teardown(finished)
    except Exception:  # a peer that already died: nothing left to leave cleanly
        pass
    _LEFT_GROUP.append(True)


if __name__ == "__main__":
    sys.exit(main())
