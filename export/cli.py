"""``dmad export``: parse flags into an :class:`~export.api.ExportConfig`, call
:func:`~export.api.export_model`, print the parity table.

Errors the user can cause arrive as :class:`~compress.errors.DmadError` and are printed by
``dmad.cli.main`` as one line (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dmad.compress.errors import DmadError
from dmad.export.ranges import METHODS as RANGES
from dmad.export.sensitivity import LOW_CONTRAST


def _names(text: str | None) -> tuple[str, ...]:
    """A comma list, each name once, in order."""
    return tuple(dict.fromkeys(x.strip() for x in (text or "").split(",") if x.strip()))


def _quant_list(text: str) -> tuple[str, ...]:
    return tuple(q.strip() for q in text.split(",") if q.strip())


def cmd_export(args: argparse.Namespace) -> int:
    """Handler of ``dmad export``."""
    from dmad.export.api import ExportConfig, export_model

    if args.num_calib < 1:
        raise DmadError(f"--num-calib: must be >= 1, got {args.num_calib}")
    import dataclasses

    from dmad.export.api import DEFAULT_RECIPE

    if args.int8_ranges not in RANGES:
        raise DmadError(f"--int8-ranges: {args.int8_ranges!r} is not one of {', '.join(RANGES)}")
    if not 50.0 < args.int8_percentile <= 100.0:
        raise DmadError(f"--int8-percentile: {args.int8_percentile} is not in (50, 100]")
    recipe = dataclasses.replace(
        DEFAULT_RECIPE, ranges=args.int8_ranges, percentile=args.int8_percentile,
        float_layers=_names(args.int8_float_layers), hybrid_layers=_names(args.int8_hybrid_layers))
    cfg = ExportConfig(
        out=args.out,
        split=args.split,
        num_eval=args.num_eval,
        converter=args.converter,
        subpixel=args.subpixel,
        phases=args.phases,
        equalize=not args.no_equalize,
        recipe=recipe,
        int8_auto_float=args.int8_auto_float,
        int8_kinds=_names(args.int8_kinds),
        int8_screen=args.int8_screen,
        int8_contrast=args.int8_contrast,
        psnr_bar=args.floor_int8,
        floor_fp16=args.floor_fp16,
        floor_dynamic=args.floor_dynamic,
        strict=args.strict,
        run=args.run,
        model=args.model,
        generator_class=args.generator_class,
        generator_kwargs=args.generator_kwargs,
        direction=args.direction,
        size=args.size,
        quant=_quant_list(args.quant),
        int8_io=args.int8_io,
        calib=args.calib,
        num_calib=args.num_calib,
        rewrite=not args.no_rewrite,
        android=args.android,
        android_assets=args.android_assets,
        android_variant=args.android_variant,
        android_label=args.android_label,
        force=args.force,
    )
    res = export_model(cfg)
    print(res.table)
    for note in res.report["warnings"]:
        print(f"warning: {note}", file=sys.stderr)
    names = sorted(p.name for p in res.out.iterdir() if p.suffix in (".onnx", ".tflite"))
    print(f"wrote {res.out} (parity.json, {', '.join(names)}) in {res.seconds:.0f} s")
    if res.android is not None:
        from dmad.export.android import asset_name

        print(f"android: {res.android.parent} ({res.android.name} + "
              f"{asset_name(args.android_label)})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the export subcommands to the ``dmad`` parser; each flag's help is its
    :class:`~dmad.export.api.ExportConfig` field's."""
    from dmad.compress.config import field_help
    from dmad.export.api import CONVERTERS, DEFAULT_RECIPE, SUBPIXEL, ExportConfig

    def h(name: str, default: object = None) -> str:
        text = field_help(ExportConfig, name)
        text = text if default is None else f"{text} (default: {default})"
        return text.replace("%", "%%")

    s = sub.add_parser(
        "export",
        help="export a generator to ONNX and TFLite (fp32/fp16/int8) with verified parity",
    )
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help=h("run"))
    src.add_argument("--model", type=Path, help=h("model"))
    s.add_argument("--generator-class", help=h("generator_class"))
    s.add_argument("--kwargs", dest="generator_kwargs", help=h("generator_kwargs"))
    s.add_argument("--direction", choices=("AtoB", "BtoA"), default="AtoB",
                   help=h("direction", "AtoB"))
    s.add_argument("--out", type=Path, required=True, help=h("out"))
    s.add_argument("--size", type=int, default=256, help=h("size", 256))
    s.add_argument("--quant", default="fp32,fp16,dynamic,int8",
                   help=h("quant", "fp32,fp16,dynamic,int8"))
    s.add_argument("--int8-io", action="store_true",
                   help=h("int8_io"))
    s.add_argument("--calib", type=Path, help=h("calib"))
    s.add_argument("--num-calib", type=int, default=60, help=h("num_calib", 60))
    s.add_argument("--no-rewrite", action="store_true",
                   help="export the graph as is; without it: " + h("rewrite"))
    s.add_argument("--android", action="store_true",
                   help=h("android"))
    s.add_argument("--android-assets", type=Path, help=h("android_assets"))
    s.add_argument("--android-variant", choices=("fp32", "fp16", "dynamic", "int8", "int8_io"),
                   help=h("android_variant"))
    s.add_argument("--android-label", choices=("full", "compressed"), default="compressed",
                   help=h("android_label", "compressed"))
    s.add_argument("--split", type=Path, help=h("split"))
    s.add_argument("--num-eval", type=int, default=8, help=h("num_eval", 8))
    s.add_argument("--converter", choices=CONVERTERS, default="graph",
                   help=h("converter", "graph"))
    s.add_argument("--subpixel", choices=SUBPIXEL, default="auto", help=h("subpixel", "auto"))
    s.add_argument("--phases", choices=SUBPIXEL, default="auto", help=h("phases", "auto"))
    s.add_argument("--no-equalize", action="store_true",
                   help="skip it; without this flag: " + h("equalize"))
    s.add_argument("--int8-ranges", default=DEFAULT_RECIPE.ranges,
                   help="int8 activation ranges: minmax (TensorFlow's calibrator), percentile "
                        "or mse (clipped), auto (of a few percentiles scored on the "
                        "calibration images, the widest that clears --floor-int8 + 1 dB, else "
                        f"the best) (default: {DEFAULT_RECIPE.ranges})")
    s.add_argument("--int8-percentile", type=float, default=DEFAULT_RECIPE.percentile,
                   help=f"percentile kept by --int8-ranges percentile (default: "
                        f"{DEFAULT_RECIPE.percentile})")
    s.add_argument("--int8-float-layers", default="",
                   help="comma list of PyTorch layer names (e.g. head.conv) whose convolution "
                        "stays float32 in the int8 files")
    s.add_argument("--int8-hybrid-layers", default="",
                   help="comma list of PyTorch layer names (e.g. up2.conv) whose convolution "
                        "is hybrid in the int8 files: int8 weights, float input and output")
    s.add_argument("--int8-kinds", default="float,hybrid", help=h("int8_kinds", "float,hybrid"))
    s.add_argument("--int8-auto-float", type=int, default=3, help=h("int8_auto_float", 3))
    s.add_argument("--int8-screen", type=int, default=32, help=h("int8_screen", 32))
    s.add_argument("--int8-contrast", type=float, default=LOW_CONTRAST,
                   help=h("int8_contrast", LOW_CONTRAST))
    s.add_argument("--floor-int8", type=float, default=35.0, help=h("psnr_bar", 35.0))
    s.add_argument("--floor-fp16", type=float, default=60.0, help=h("floor_fp16", 60.0))
    s.add_argument("--floor-dynamic", type=float, default=40.0, help=h("floor_dynamic", 40.0))
    s.add_argument("--strict", action="store_true", help=h("strict"))
    s.add_argument("--force", action="store_true", help=h("force"))
    s.set_defaults(func=cmd_export)
