"""MAC-budget vs latency-budget architectures: MACs, predicted and measured ms, PSNR (prints).

Two parts, both at 256², all files of one part timed in the same rounds (every round runs each
file blocked: warm-up, then its runs; speedups are per-round paired ratios with a bootstrap
95 % interval):

* ``demo``: fine-tuned students of the demo teacher given as ``NAME=FINETUNE_RUN`` (e.g. the
  demo's MAC-budget search, the same MAC budget with widths rounded to the measured multiple,
  a ``--target-ms`` search). Each is exported (fp32 and the export's int8 on the default
  data's training images) and timed at 1 and 2 threads; PSNR/SSIM vs the teacher on the
  default data's held-out images at 256².
* ``resnet9``: the full ResNet-9 ngf 64 (random weights: no PSNR) as users export it (fp32
  TFLite) against architectures fitted to a MAC budget and to a latency budget with a latency
  table of that family; and the headline: the full fp32 file vs the best compressed int8 file
  given (``--best-int8``), same rounds, 1 thread.

    python scripts/latency_search.py demo --teacher runs/demo/teacher \
        --table runs/lat/demo_xnn1.json [--table-int8 runs/lat/demo_int8.json] \
        mac=runs/demo/finetune round=runs/ls/round_ft ms=runs/ls/ms_ft
    python scripts/latency_search.py resnet9 --table runs/lat/r9_xnn1.json --gmacs 4.0 \
        [--best-int8 runs/ls/export/ms/generator_int8.tflite]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from dmad.benchmark.runners import time_blocked
from dmad.benchmark.stats import speedup_stats
from dmad.compress.arch import profile_spec
from dmad.compress.latency import LatencyTable
from dmad.compress.models import ResnetSpec, ResnetWidths

SIZE = 256


def _widths(spec: ResnetSpec) -> ResnetWidths:
    return spec.resolved_widths()


def _w(w: ResnetWidths) -> str:
    return f"{w.stem}/{w.down1}/{w.stream}/[{','.join(map(str, w.blocks))}]/{w.up1}/{w.up2}"


def _time(files: dict[str, Path], threads: int, rounds: int, runs: int
          ) -> dict[str, list[float]]:
    names = list(files)
    got = time_blocked([(files[n], (1, 3, SIZE, SIZE)) for n in names], "tflite-xnnpack",
                       threads, runs, 2, rounds)
    return dict(zip(names, got, strict=True))


def _export(model: Path, out: Path, calib: Path) -> Path:
    from dmad.export.api import ExportConfig, export_model

    if not (out / "generator_int8.tflite").is_file():
        export_model(ExportConfig(model=model, out=out, size=SIZE, quant=("fp32", "int8"),
                                  calib=calib, num_calib=20, force=True))
    return out


def demo(args: argparse.Namespace) -> None:
    from dmad.compress.checkpoint import load_model
    from dmad.compress.evaluate import EvalConfig, evaluate

    tables = {"fp32": LatencyTable.load(args.table)}
    if args.table_int8:
        tables["int8"] = LatencyTable.load(args.table_int8)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    split = work / "split.json"
    if not split.is_file():  # held-out = the default data's testA, evaluated whole at 256²
        from dmad.compress.data.split import make_split
        from dmad.compress.io import atomic_write_json

        atomic_write_json(split, make_split(Path(args.data), None, size=64,
                                            skip_bad=False).to_dict())
    rows: dict[str, dict] = {}
    files: dict[str, dict[str, Path]] = {"fp32": {}, "int8": {}}
    for item in args.students:
        name, run = item.split("=", 1)
        pt = Path(run) / "student_G_AtoB.pt"
        model, _ = load_model(pt)
        spec = model.spec
        prof = profile_spec(spec, (1, 3, SIZE, SIZE))
        pred = {k: t.predict(spec).ms for k, t in tables.items()}
        ev = evaluate(EvalConfig(student=run, teacher=args.teacher, size=SIZE,
                                 images=str(split), device="cpu"), work / "eval" / name)
        ex = _export(pt, work / "export" / name, Path(args.calib))
        files["fp32"][name] = ex / "generator_fp32.tflite"
        files["int8"][name] = ex / "generator_int8.tflite"
        rows[name] = {"widths": _w(_widths(spec)), "gmacs_paper": prof.macs_paper / 1e9,
                      "gmacs_true": prof.macs_true / 1e9, "predicted": pred,
                      "psnr": ev["psnr_vs_teacher"], "ssim": ev["ssim_vs_teacher"]}
    ref = next(iter(rows))
    measured: dict[tuple[str, int], dict[str, list[float]]] = {}
    for prec in ("fp32", "int8"):
        for th in (1, 2):
            measured[prec, th] = _time(files[prec], th, args.rounds, args.runs)
    print(f"\n## demo teacher's students at {SIZE}² (TFLite XNNPACK; speedup vs {ref}, paired "
          "per round, 95 % CI)\n")
    print("| arch | widths stem/down1/stream/[blocks]/up1/up2 | GMACs paper | GMACs true | "
          "pred fp32 ms | pred int8 ms | fp32 1t | fp32 2t | int8 1t | int8 2t | "
          "speedup fp32 1t | speedup int8 1t | PSNR vs teacher | SSIM |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    out = {}
    for name, r in rows.items():
        ms = {k: float(np.median(v[name])) for k, v in measured.items()}
        sp = {prec: speedup_stats(measured[prec, 1][ref], measured[prec, 1][name])
              for prec in ("fp32", "int8")}
        p = r["predicted"]
        print(f"| {name} | {r['widths']} | {r['gmacs_paper']:.3f} | {r['gmacs_true']:.3f} | "
              f"{p.get('fp32', float('nan')):.1f} | {p.get('int8', float('nan')):.1f} | "
              f"{ms['fp32', 1]:.1f} | {ms['fp32', 2]:.1f} | {ms['int8', 1]:.1f} | "
              f"{ms['int8', 2]:.1f} | "
              + " | ".join(f"{s['paired_median']:.2f}× [{s['ci95'][0]:.2f}–{s['ci95'][1]:.2f}]"
                           for s in sp.values())
              + f" | {r['psnr']:.2f} | {r['ssim']:.3f} |")
        out[name] = {**r, "measured_ms": {f"{k[0]}_{k[1]}t": v for k, v in ms.items()},
                     "speedup_vs_" + ref: sp}
    (work / "demo.json").write_text(json.dumps(out, indent=1))


def resnet9(args: argparse.Namespace) -> None:
    from dmad.compress import budget
    from dmad.compress.masks import attach_masks
    from dmad.compress.models import ResnetGenerator
    from dmad.export.api import ExportConfig, export_model

    table = LatencyTable.load(args.table)
    spec = ResnetSpec(ngf=64, n_blocks=9)
    work = Path(args.work) / "resnet9"
    torch.manual_seed(0)
    g = ResnetGenerator(spec)
    masks = attach_masks(g)
    # a trained model's Taylor scores do not exist for random weights: seeded random scores
    # stand in (the same for every fit, so the fits differ by their budget only)
    gen = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(m.channels, generator=gen) for n, m in masks.items()}
    target = int(args.gmacs * 1e9)
    _, _, by_macs = budget.fit_to_budget(spec, masks, target, "paper", SIZE, scores=scores,
                                         latency=table)
    _, _, by_macs_r = budget.fit_to_budget(spec, masks, target, "paper", SIZE, scores=scores,
                                           latency=table, multiple=table.multiple)
    ms_target = float(by_macs.ms or 0) / args.speedup
    _, _, by_ms = budget.fit_to_budget(spec, masks, ms_target, "ms", SIZE, scores=scores,
                                       latency=table, multiple=table.multiple)
    archs = {"full": spec.resolved_widths(), "mac": by_macs.widths,
             "mac_rounded": by_macs_r.widths, "ms": by_ms.widths}
    files: dict[str, Path] = {}
    int8: dict[str, Path] = {}
    for name, w in archs.items():
        import dataclasses

        s = dataclasses.replace(spec, widths=w)
        from dmad.compress.checkpoint import save_model
        from dmad.compress.models import build

        d = work / name
        d.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        save_model(build(s).eval(), d / "model.pt")
        quant = ("fp32",) if name == "full" else ("fp32", "int8")
        if not (d / "generator_fp32.tflite").is_file():
            export_model(ExportConfig(model=d / "model.pt", out=d / "x", size=SIZE,
                                      quant=quant, force=True, num_eval=2,
                                      calib=Path(args.calib), num_calib=8))
            for f in (d / "x").iterdir():
                f.replace(d / f.name)
        files[name] = d / "generator_fp32.tflite"
        if name != "full":
            int8[name] = d / "generator_int8.tflite"
    if args.best_int8:
        int8["best"] = Path(args.best_int8)
    allf = {**{f"{k}_fp32": v for k, v in files.items()}, **{f"{k}_int8": v for k, v in
                                                               int8.items()}}
    meas = _time(allf, 1, args.rounds, args.runs)
    print(f"\n## ResNet-9 ngf 64 at {SIZE}², 1 thread, TFLite XNNPACK (random weights); MAC "
          f"target {args.gmacs} G paper, latency target {ms_target:.1f} ms predicted\n")
    print("| arch | widths | GMACs paper | GMACs true | predicted fp32 ms | fp32 ms | int8 ms | "
          "full fp32 ÷ this fp32 | full fp32 ÷ this int8 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    full = meas["full_fp32"]
    for name, w in archs.items():
        s = ResnetSpec(ngf=64, n_blocks=9, widths=w)
        prof = profile_spec(s, (1, 3, SIZE, SIZE))
        f32 = meas[f"{name}_fp32"]
        i8 = meas.get(f"{name}_int8")
        sp32 = speedup_stats(full, f32)
        sp8 = speedup_stats(full, i8) if i8 else None
        print(f"| {name} | {_w(w)} | {prof.macs_paper / 1e9:.2f} | {prof.macs_true / 1e9:.2f} | "
              f"{table.predict(spec, w).ms:.1f} | {np.median(f32):.1f} | "
              f"{np.median(i8) if i8 else float('nan'):.1f} | "
              f"{sp32['paired_median']:.2f}× | "
              + (f"{sp8['paired_median']:.2f}× [{sp8['ci95'][0]:.1f}–{sp8['ci95'][1]:.1f}]"
                 if sp8 else "–") + " |")
    if "best_int8" in meas or "best" in int8:
        b = meas["best_int8"]
        s = speedup_stats(full, b)
        print(f"\nheadline: full ResNet-9 fp32 TFLite {np.median(full):.0f} ms vs best "
              f"compressed int8 ({args.best_int8}) {np.median(b):.2f} ms: "
              f"{s['paired_median']:.1f}× [95 % CI {s['ci95'][0]:.1f}–{s['ci95'][1]:.1f}] "
              f"(1 thread, {SIZE}², {args.rounds} paired rounds)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="part", required=True)
    d = sub.add_parser("demo", help="the demo teacher's fine-tuned students")
    d.add_argument("students", nargs="+", help="NAME=FINETUNE_RUN (the first is the reference)")
    d.add_argument("--teacher", required=True, help="the teacher run folder or model file")
    d.add_argument("--table", required=True, help="latency table, XNNPACK fp32")
    d.add_argument("--table-int8", help="latency table, XNNPACK int8 (optional)")
    d.add_argument("--data", default="data/default/unaligned",
                   help="the teacher's data: its testA images are the held-out set")
    r = sub.add_parser("resnet9", help="full ResNet-9 ngf 64: MAC vs latency fits, headline")
    r.add_argument("--table", required=True, help="latency table of ResNet-9 ngf 64")
    r.add_argument("--gmacs", type=float, default=4.0, help="MAC budget (paper, G)")
    r.add_argument("--speedup", type=float, default=1.5,
                   help="latency target = the MAC fit's predicted ms ÷ this")
    r.add_argument("--best-int8", help="the best compressed int8 .tflite for the headline")
    for s in (d, r):
        s.add_argument("--calib", default="runs/ls/calib256",
                       help="int8 calibration images at 256² (at least)")
        s.add_argument("--work", default="runs/latency_search", help="output folder")
        s.add_argument("--rounds", type=int, default=5, help="timing rounds")
        s.add_argument("--runs", type=int, default=5, help="runs per file and round")
    args = p.parse_args(argv)
    {"demo": demo, "resnet9": resnet9}[args.part](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
