"""The speed–fidelity frontier of a photo-trained generator and its students.

    python scripts/frontier.py [--ratios 5,10,20,40] [--search-steps 300] \
        [--finetune-steps 600] [--target-ms 8,20 --latency-table T.json] \
        [--deploy fold-norms,zero-pad] [--int8-floors 38] [--no-bench]

The teacher is ``scripts/photo_teacher.py``'s ResNet-9 ngf 64 colouriser (grey photograph →
colour), the images its seven training photographs and eleven held-out ones of other subjects
(``photo_setup.student_folders``). Each student is a ``dmad compress`` run (the defaults: the
fast objective, augmentation) at ÷R paper MACs or at a ``--target-ms`` budget of a latency
table (with ``--deploy``, each MAC budget also with the distilled deploy transforms), exported
to TFLite fp32 and int8 (calibrated on the training photographs, parity on the held-out ones);
the full model is exported the same way once. Then:

* fidelity: every file (PyTorch student, .tflite fp32 and int8, the full int8 too) against the
  teacher's PyTorch output on the whole held-out photographs at 256²: PSNR and SSIM mean and
  worst image, the largest colour shift (levels of 255);
* speed: every .tflite file timed on this CPU (LiteRT XNNPACK, 1 thread, 256²) in the same
  interleaved rounds as the full fp32 file; the speedup is the median over rounds of the full
  file's time ÷ this file's time in that round (paired);
* the Pareto front: the files no other file beats on both speedup and mean PSNR.

Prints a markdown table and writes ``frontier.json`` and ``frontier.png`` in ``--work`` (and
the plot to ``--plot``). Each stage is reused when finished, so a killed run continues; run
nothing else meanwhile when the timing stage runs (``--no-bench`` skips it).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import dmad
from dmad.compress.arch import profile
from dmad.compress.checkpoint import load_generator
from dmad.compress.data.split import ImageSplit, make_split, whole_images
from dmad.compress.evaluate import fidelity_summary, image_fidelity
from dmad.compress.io import atomic_write_json
from dmad.export.parity import run_tflite
from dmad.export.sensitivity import kept_out_of_int8

ROOT = Path(__file__).resolve().parents[1]
SIZE = 256


def _held_out(split: Path) -> torch.Tensor:
    data = whole_images(ImageSplit.load(split), SIZE)
    return torch.stack([data.get(i)["A"] for i in range(len(data))])


def _judge(outputs: np.ndarray | torch.Tensor, ref: torch.Tensor) -> dict[str, Any]:
    """Whole held-out images (N×C×H×W in [-1, 1]) against the teacher's."""
    out = torch.as_tensor(np.asarray(outputs))
    rows = [image_fidelity(out[i:i + 1].float(), ref[i:i + 1]) for i in range(len(ref))]
    s = fidelity_summary(rows)
    return {k: s[k] for k in ("psnr_mean", "psnr_worst", "ssim_mean", "ssim_worst")} | {
        "colour_shift_max": max(abs(v) for r in rows for v in r["colour_mean_shift"])}


def _tflite_outputs(path: Path, x: torch.Tensor) -> np.ndarray:
    y = run_tflite(path, np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy()))
    return y.transpose(0, 3, 1, 2)


def _export(model: Path, out: Path, split: Path, kinds: tuple[str, ...] | None = None,
            floor: float | None = None) -> dict[str, Path]:
    """fp32 and int8 .tflite files of ``model`` with the export's defaults (``kinds``: what
    the int8 file's layers kept out of int8 may be; ``floor``: the int8 floor in dB, which the
    chooser aims over) (reused when the export finished)."""
    if not (out / "parity.json").is_file():
        extra: dict[str, Any] = {} if kinds is None else {"int8_kinds": kinds}
        if floor is not None:
            extra["psnr_bar"] = floor
        dmad.export_generator(model, out, quant=("fp32", "int8"), split=split, size=SIZE,
                              num_eval=100, **extra)
    return {"fp32": out / "generator_fp32.tflite", "int8": out / "generator_int8.tflite"}


def _exports(model: Path, work: Path, name: str, split: Path, variants: list[str],
             floors: Sequence[float] = ()) -> list[tuple[str, Path, dict[str, Path]]]:
    """(precision label, export folder, files): the fp32 file once, an int8 file per variant
    (``default``: the export's defaults; else ``float`` or ``float+hybrid``, the kinds the
    chooser may keep layers out of int8 as, labelled ``int8 <variant>``), then one per int8
    floor of ``floors`` (the defaults otherwise, labelled ``int8 floor <dB>``)."""
    out = []
    for i, v in enumerate(variants):
        folder = work / "export" / (name if v == "default" else f"{name}-{v}")
        files = _export(model, folder, split, None if v == "default" else tuple(v.split("+")))
        if i == 0:
            out.append(("fp32", folder, {"fp32": files["fp32"]}))
        out.append(("int8" if v == "default" else f"int8 {v}", folder, {"int8": files["int8"]}))
    for f in floors:
        folder = work / "export" / f"{name}-floor{f:g}"
        out.append((f"int8 floor {f:g}", folder,
                    {"int8": _export(model, folder, split, floor=f)["int8"]}))
    return out


def _student(args: argparse.Namespace, name: str, budget: dict[str, Any]) -> Path:
    """One ``dmad compress`` run (resumed when killed, reused when finished)."""
    out = args.work / name
    if not (out / "DONE.json").is_file():
        dmad.compress_generator(args.teacher, args.train, out, resume=(out / "compress.json")
                                .is_file(), val=str(args.held), size=128,
                                steps=args.search_steps, finetune_steps=args.finetune_steps,
                                export=False, compare=False, seed=args.seed, device="cpu",
                                **budget)
    return out / "finetune" / "student_G_AtoB.pt"


def _budgets(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    full, _ = load_generator(args.teacher)
    gmacs = profile(full, (1, 3, SIZE, SIZE)).macs_paper / 1e9
    budgets = {f"div{r:g}": {"target_gmacs": round(gmacs / r, 3)} for r in args.ratios}
    if args.deploy:
        budgets |= {f"div{r:g}+{args.deploy.replace(',', '+')}": {
            "target_gmacs": round(gmacs / r, 3), "deploy": args.deploy} for r in args.ratios}
    for ms in args.target_ms:
        budgets[f"ms{ms:g}"] = {"target_ms": ms, "latency_table": str(args.latency_table)}
    return budgets


def _speed(files: dict[str, Path], runs: int) -> dict[str, dict[str, float]]:
    """Median ms and the paired speedup against the full fp32 file, same interleaved rounds."""
    import tempfile

    paths = list(files.values())
    with tempfile.TemporaryDirectory() as tmp:
        res = dmad.bench_files(paths, Path(tmp) / "bench", backends=("tflite-xnnpack",),
                               threads=(1,), size=SIZE, runs=runs)
    by_path = {r["path"]: r for r in res["results"]}
    base = np.array(by_path[str(files["full fp32"])]["samples_ms"])
    out = {}
    for label, p in files.items():
        r = by_path[str(p)]
        s = np.array(r["samples_ms"])
        out[label] = {"ms": float(r["median_ms"]), "speedup": float(np.median(base / s))}
    return out


def pareto(points: dict[str, tuple[float, float]]) -> list[str]:
    """Labels no other point beats on both coordinates (higher is better on each)."""
    front = []
    for k, (a, b) in points.items():
        if not any((a2 >= a and b2 >= b) and (a2 > a or b2 > b)
                   for k2, (a2, b2) in points.items() if k2 != k):
            front.append(k)
    return front


def _plot(rows: list[dict[str, Any]], front: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    precs = dict.fromkeys(r["precision"] for r in rows if r["precision"] != "torch")
    for prec, marker in zip(precs, "os^vD", strict=False):
        pts = [r for r in rows if r["precision"] == prec and r.get("speedup")]
        ax.scatter([r["speedup"] for r in pts], [min(r["psnr_mean"], 44.0) for r in pts],
                   marker=marker, label=f".tflite {prec}")
        for r in pts:
            ax.annotate(r["model"], (r["speedup"], min(r["psnr_mean"], 44.0)), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    on = sorted((r for r in rows if r["label"] in front), key=lambda r: r["speedup"])
    ax.plot([r["speedup"] for r in on], [min(r["psnr_mean"], 44.0) for r in on], "k--", lw=1,
            label="Pareto front")
    ax.set_ylim(top=min(45.0, max(r["psnr_mean"] for r in rows) + 3))  # fp32 of the
    ax.set_xscale("log")  # teacher is ~136 dB from itself: drawn at the top edge
    ax.set_xlabel(f"speedup vs the full fp32 file (LiteRT XNNPACK, 1 thread, {SIZE}²)")
    ax.set_ylabel("PSNR vs the teacher, mean of held-out photographs (dB)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _db(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def _table(rows: list[dict[str, Any]], front: list[str]) -> str:
    lines = ["| file | GMACs (paper) | ms | speedup vs full fp32 | PSNR mean / worst | "
             "SSIM mean / worst | colour shift /255 | vs its fp32, worst dB | int8 layers "
             "kept float | front |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = f"{r['ms']:.1f}" if r.get("ms") else "–"
        sp = f"{r['speedup']:.1f}×" if r.get("speedup") else "–"
        lines.append(f"| {r['label']} | {r['gmacs']:.2f} | {ms} | {sp} | {r['psnr_mean']:.2f} / "
                     f"{r['psnr_worst']:.2f} | {r['ssim_mean']:.3f} / {r['ssim_worst']:.3f} | "
                     f"{r['colour_shift_max']:.1f} | {_db(r.get('vs_fp32_worst_db'))} | "
                     f"{', '.join(r.get('float_layers') or []) or '–'} | "
                     f"{'●' if r['label'] in front else ''} |")
    return "\n".join(lines)


def _arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", type=Path, default=ROOT / "runs/photo64/teacher/G_AtoB.pt",
                    help="the photo-trained teacher (scripts/photo_teacher.py --teacher-only)")
    ap.add_argument("--train", type=Path, default=ROOT / "runs/photo_student/student_images",
                    help="the training photographs (photo_setup.student_folders)")
    ap.add_argument("--held", type=Path, default=ROOT / "runs/photo_student/student_heldout",
                    help="the held-out photographs")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "frontier",
                    help="work folder (finished runs are reused)")
    ap.add_argument("--ratios", type=lambda s: [float(x) for x in s.split(",") if x],
                    default=[5.0, 10.0, 20.0, 40.0], help="MAC ratios, comma list")
    ap.add_argument("--target-ms", type=lambda s: [float(x) for x in s.split(",") if x],
                    default=[], help="latency budgets in ms (needs --latency-table)")
    ap.add_argument("--latency-table", type=Path, default=None,
                    help="a `dmad latency-table` file of this CPU for --target-ms")
    ap.add_argument("--search-steps", type=int, default=300, help="search steps per student")
    ap.add_argument("--finetune-steps", type=int, default=600,
                    help="fine-tune steps per student")
    ap.add_argument("--deploy", default="",
                    help="distilled deploy transforms (dmad compress --deploy): each MAC "
                         "budget also gets a student trained with them (named div20+…)")
    ap.add_argument("--int8-kinds", type=lambda s: [x for x in s.split(",") if x],
                    default=["default"], help="int8 files per model, comma list: default (the "
                    "export's defaults), or the kinds its chooser may keep layers out of int8 "
                    "as (dmad export --int8-kinds), + joined: float, hybrid, float+hybrid")
    ap.add_argument("--int8-floors", type=lambda s: [float(x) for x in s.split(",") if x],
                    default=[], help="also an int8 file per model at each of these int8 floors "
                    "in dB (dmad export --floor-int8: the chooser keeps more out of int8), "
                    "comma list")
    ap.add_argument("--runs", type=int, default=10, help="timed rounds")
    ap.add_argument("--seed", type=int, default=0, help="seed of every run")
    ap.add_argument("--no-bench", action="store_true", help="skip the timing stage")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "frontier.png",
                    help="where the plot is also written")
    args = ap.parse_args()
    if args.target_ms and args.latency_table is None:
        ap.error("--target-ms needs --latency-table")
    from dmad.export.api import FLOAT_KINDS

    if not args.int8_kinds or any(v != "default" and set(v.split("+")) - set(FLOAT_KINDS)
                                  for v in args.int8_kinds):
        ap.error(f"--int8-kinds: a comma list of default or +-joined {', '.join(FLOAT_KINDS)}")
    from dmad.compress.deploy_transforms import parse_deploy
    from dmad.compress.errors import DmadError

    try:
        args.deploy = ",".join(parse_deploy(args.deploy))
    except DmadError as exc:
        ap.error(str(exc))
    return args


def main() -> None:
    args = _arguments()
    args.work.mkdir(parents=True, exist_ok=True)
    split = args.work / "split.json"
    if not split.is_file():
        atomic_write_json(split, make_split(args.train, args.held, size=128).to_dict())
    x = _held_out(split)
    teacher, _ = load_generator(args.teacher)
    with torch.no_grad():
        ref = torch.cat([teacher.eval()(x[i:i + 1]) for i in range(len(x))])
    models = {"full": args.teacher}
    for name, budget in _budgets(args).items():
        models[name] = _student(args, name, budget)
        print(f"[frontier] {name}: {models[name]}", flush=True)
    rows, files = [], {}
    for name, pt in models.items():
        gmacs = profile(load_generator(pt)[0], (1, 3, SIZE, SIZE)).macs_paper / 1e9
        if name != "full":
            with torch.no_grad():
                y = torch.cat([load_generator(pt)[0].eval()(x[i:i + 1]) for i in range(len(x))])
            rows.append({"label": f"{name} PyTorch", "model": name, "precision": "torch",
                         "gmacs": gmacs, **_judge(y, ref)})
        for prec, folder, exported in _exports(pt, args.work, name, split, args.int8_kinds,
                                               args.int8_floors):
            parity = json.loads((folder / "parity.json").read_text())
            kept = kept_out_of_int8(parity.get("int8_auto_float"))
            for variant, f in exported.items():
                label = f"{name} {prec}"
                files[label] = f
                rows.append({"label": label, "model": name, "precision": prec,
                             "gmacs": gmacs, "float_layers": kept if variant == "int8" else [],
                             "vs_fp32_worst_db": parity["artifacts"][variant]["parity"]
                             .get("psnr_worst_db"),
                             **_judge(_tflite_outputs(f, x), ref)})
        print(f"[frontier] {name}: exported and judged", flush=True)
    if not args.no_bench:
        speed = _speed(files, args.runs)
        for r in rows:
            r.update(speed.get(r["label"], {}))
    front = pareto({r["label"]: (r["speedup"], r["psnr_mean"]) for r in rows if r.get("speedup")})
    atomic_write_json(args.work / "frontier.json", {"rows": rows, "front": front,
                                                    "images": len(x), "size": SIZE})
    print(_table(rows, front))
    if not args.no_bench:
        _plot(rows, front, args.work / "frontier.png")
        _plot(rows, front, args.plot)


if __name__ == "__main__":
    main()
