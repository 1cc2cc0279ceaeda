"""Do full-resolution layers on the image's phases (``export/s2d.py``) make a student faster?

    python scripts/s2d_front_probe.py --models runs/frontier/div10/finetune/student_G_AtoB.pt \
        runs/frontier/div40/finetune/student_G_AtoB.pt --split runs/frontier/split.json \
        [--quant fp32,int8] [--runs 30]

Each model is exported as it is (``--phases off``), with its stem and first downsampling on the
image's 2×2 phases, and with its head on them too (``--phases on``), all exact; every file is
timed on LiteRT XNNPACK, 1 thread, 256², in the same
interleaved rounds, and its int8 parity against PyTorch is printed. Run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import dmad
from dmad.compress.checkpoint import load_generator
from dmad.export.s2d import to_phase_head, to_s2d_front

SIZE = 256


def _export(module: torch.nn.Module, out: Path, split: Path, quant: tuple[str, ...],
            phase: str = "off") -> dict[str, Any]:
    if not (out / "parity.json").is_file():
        dmad.export_generator(module, out, quant=quant, split=split, size=SIZE, num_eval=11,
                              phases=phase)
    return json.loads((out / "parity.json").read_text())["artifacts"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", type=Path, required=True, help="dmad model files")
    ap.add_argument("--split", type=Path, required=True, help="split.json of the photographs")
    ap.add_argument("--quant", default="fp32,int8", help="variants to export and time")
    ap.add_argument("--runs", type=int, default=30, help="timed runs per file")
    ap.add_argument("--work", type=Path, default=Path("runs/s2d_probe"), help="output folder")
    args = ap.parse_args()
    quant = tuple(args.quant.split(","))
    files: dict[str, Path] = {}
    for path in args.models:
        model, _ = load_generator(path)
        s2d, why = to_s2d_front(model.eval())
        if why is not None:
            raise SystemExit(f"{path}: {why}")
        x = torch.rand(1, 3, SIZE, SIZE) * 2 - 1
        with torch.no_grad():
            print(f"{path.parent.parent.name}: s2d vs original, max |diff| "
                  f"{(s2d(x) - model(x)).abs().max().item():.2e}")
        both, _ = to_phase_head(s2d)
        with torch.no_grad():
            print(f"  with the head too: max |diff| {(both(x) - model(x)).abs().max().item():.2e}")
        tag_dir = {t: args.work / f"{path.parent.parent.name}_{t}" for t in ("orig", "s2d", "s2dh")}
        arts = {"orig": _export(model, tag_dir["orig"], args.split, quant),
                "s2d": _export(s2d, tag_dir["s2d"], args.split, quant),
                "s2dh": _export(model, tag_dir["s2dh"], args.split, quant, "on")}
        for tag, art in arts.items():
            for q in quant:
                name = f"{path.parent.parent.name} {tag} {q}"
                files[name] = tag_dir[tag] / f"generator_{q}.tflite"
                print(f"{name}: worst image {art[q]['parity']['psnr_worst_db']:.2f} dB vs "
                      "PyTorch fp32")
    with tempfile.TemporaryDirectory() as tmp:
        res = dmad.bench_files(list(files.values()), Path(tmp) / "bench",
                               backends=("tflite-xnnpack",), threads=(1,), size=SIZE,
                               runs=args.runs)
    by_path = {r["path"]: r for r in res["results"]}
    for name, p in files.items():
        if name.split()[1] != "orig":
            continue
        a = np.array(by_path[str(p)]["samples_ms"])
        for tag in ("s2d", "s2dh"):
            q = files[name.replace(" orig ", f" {tag} ")]
            b = np.array(by_path[str(q)]["samples_ms"])
            print(f"{name.replace(' orig', '')} {tag}: {np.median(a):.2f} → {np.median(b):.2f} "
                  f"ms, paired speedup {np.median(a / b):.3f}×")


if __name__ == "__main__":
    main()
