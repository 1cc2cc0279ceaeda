"""How much does a full-int8 file depend on which calibration images are drawn?

    python scripts/int8_calib_spread.py --model runs/photo64/teacher/G_AtoB.pt \
        --split runs/fidelity_vs_time/search/split.json [--draws 5] [--num-calib 20]

Each draw takes ``--num-calib`` random crops (side 128–512 px, seeded by the draw) of the
split's training photographs as the calibration folder and exports the model's full-int8 file
with the default recipe; parity is judged on the split's whole held-out photographs at
``--size``. Prints, per draw, the pooled and the worst-image PSNR against the PyTorch fp32 model
and the per-image figures, then the spread (min / median / max of the worst image).
``--int8-screen 0,32`` exports every draw once per screen size (the same crops), an A/B of the
sensitivity's screen of the hardest calibration images; ``--int8-contrast 0,0.25`` likewise
for the flat copies the screen adds (every screen × contrast pair runs on every draw). A
script that prints numbers, not a test; ``docs/results.md`` keeps its output.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def draw_crops(photos: list[str], n: int, seed: int, out: Path) -> None:
    """``n`` random crops of the photographs into ``out`` (what a folder of training crops
    looks like to the calibrator)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    for i in range(n):
        img = Image.open(photos[int(rng.integers(len(photos)))]).convert("RGB")
        w, h = img.size
        side = int(min(rng.integers(128, 513), w, h))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        img.crop((left, top, left + side, top + side)).save(out / f"crop{i:03d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="dmad model file to export")
    ap.add_argument("--split", type=Path, required=True,
                    help="split.json: training photographs to draw from, held-out ones to judge")
    ap.add_argument("--draws", type=int, default=5, help="calibration draws (default 5)")
    ap.add_argument("--num-calib", type=int, default=20, help="crops per draw (default 20)")
    ap.add_argument("--size", type=int, default=256, help="export size (default 256)")
    ap.add_argument("--int8-screen", default="32",
                    help="comma-separated --int8-screen values, each run on every draw (an A/B "
                         "on the same crops; default 32, the export's default)")
    ap.add_argument("--int8-contrast", default="0.25",
                    help="comma-separated --int8-contrast values, each run on every draw "
                         "(default 0.25, the export's default)")
    args = ap.parse_args()
    pairs = [(int(s), float(c)) for s in args.int8_screen.split(",")
             for c in args.int8_contrast.split(",")]
    sys.path.insert(0, str(ROOT))
    from dmad.export.api import ExportConfig, export_model
    from dmad.export.sensitivity import kept_out_of_int8

    split = json.loads(args.split.read_text())
    worst: dict[tuple[int, float], list[float]] = {sc: [] for sc in pairs}
    with tempfile.TemporaryDirectory(prefix="dmad-calib-") as tmp:
        for d in range(args.draws):
            calib = Path(tmp) / f"calib{d}"
            draw_crops(split["train"], args.num_calib, d, calib)
            for screen, contrast in pairs:
                res = export_model(ExportConfig(
                    out=Path(tmp) / f"x{d}_{screen}_{contrast}", model=args.model,
                    split=args.split, calib=calib, quant=("int8",), size=args.size,
                    num_calib=args.num_calib, num_eval=100, int8_screen=screen,
                    int8_contrast=contrast))
                par = res.report["artifacts"]["int8"]["parity"]
                kept = kept_out_of_int8(res.report.get("int8_auto_float"))
                worst[(screen, contrast)].append(par["psnr_worst_db"])
                per = ", ".join(f"{Path(r['image']).stem} {r['psnr_db']:.1f}"
                                for r in par["per_image"])
                print(f"draw {d} screen {screen} contrast {contrast:g}: pooled "
                      f"{par['psnr_db']:.2f} dB, worst {par['psnr_worst_db']:.2f} "
                      f"({par['worst_image']}); out of int8: {', '.join(kept) or 'none'}; {per}",
                      flush=True)
    for (screen, contrast), w in worst.items():
        print(f"screen {screen} contrast {contrast:g}: worst-image PSNR over {args.draws} "
              f"draws: min {min(w):.2f}, median {statistics.median(w):.2f}, max {max(w):.2f} dB")


if __name__ == "__main__":
    main()
