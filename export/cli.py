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


def _quant_list(text: str) -> tuple[str, ...]:
    return tuple(q.strip() for q in text.split(",") if q.strip())


def cmd_export(args: argparse.Namespace) -> int:
    """Handler of ``dmad export``."""
    from dmad.export.api import ExportConfig, export_model

    if args.num_calib < 1:
        raise DmadError(f"--num-calib: must be >= 1, got {args.num_calib}")
    cfg = ExportConfig(
        out=args.out,
        run=args.run,
        model=args.model,
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
    print(f"wrote {res.out} (parity.json, generator.onnx, "
          f"{', '.join(p.name for p in res.files.values())}) in {res.seconds:.0f} s")
    if res.android is not None:
        from dmad.export.android import asset_name

        print(f"android: {res.android.parent} ({res.android.name} + "
              f"{asset_name(args.android_label)})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the export subcommands to the ``dmad`` parser; each flag's help is its
    :class:`~dmad.export.api.ExportConfig` field's."""
    from dmad.compress.config import field_help
    from dmad.export.api import ExportConfig

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
    s.add_argument("--direction", choices=("AtoB", "BtoA"), default="AtoB",
                   help=h("direction", "AtoB"))
    s.add_argument("--out", type=Path, required=True, help=h("out"))
    s.add_argument("--size", type=int, default=256, help=h("size", 256))
    s.add_argument("--quant", default="fp32,fp16,dynamic,int8",
                   help=h("quant", "all"))
    s.add_argument("--int8-io", action="store_true",
                   help=h("int8_io"))
    s.add_argument("--calib", type=Path, help=h("calib"))
    s.add_argument("--num-calib", type=int, default=20, help=h("num_calib", 20))
    s.add_argument("--no-rewrite", action="store_true",
                   help="export the graph as is; without it: " + h("rewrite"))
    s.add_argument("--android", action="store_true",
                   help=h("android"))
    s.add_argument("--android-assets", type=Path, help=h("android_assets"))
    s.add_argument("--android-variant", choices=("fp32", "fp16", "dynamic", "int8", "int8_io"),
                   help=h("android_variant"))
    s.add_argument("--android-label", choices=("full", "compressed"), default="compressed",
                   help=h("android_label", "compressed"))
    s.add_argument("--force", action="store_true", help=h("force"))
    s.set_defaults(func=cmd_export)
