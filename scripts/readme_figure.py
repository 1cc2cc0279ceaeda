"""The README's picture: whole held-out photographs through a photo-trained teacher and its
compressed student, side by side, with the time of each on this CPU.

``python scripts/readme_figure.py`` after ``scripts/photo_teacher.py`` and
``scripts/fidelity_vs_time.py`` (their teacher and default-objective student are read from
``runs/``). Writes ``docs/figure.jpg``: one row per photograph (input | full | compressed, PSNR of
the compressed output against the full one), the header giving both generators' median time at
256² with PyTorch on one thread, timed in the same interleaved rounds (``dmad.bench_files``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import dmad
from dmad.compress.checkpoint import load_generator
from dmad.compress.data.images import load_rgb
from dmad.compress.metrics import psnr

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs"
SIDE = 256


def _square(path: Path) -> Image.Image:
    img = load_rgb(path)
    s = min(img.size)
    left, top = (img.width - s) // 2, (img.height - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((SIDE, SIDE), Image.BICUBIC)


def _run(model: torch.nn.Module, img: Image.Image) -> np.ndarray:
    x = torch.from_numpy(np.asarray(img, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = model(x)[0].clamp(-1, 1)
    return ((y.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)


def _times(full: Path, student: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        res = dmad.bench_files([full, student], Path(tmp) / "bench", backends=("torch",),
                               threads=(1,), size=SIDE, runs=10)
    return {str(r["path"]): float(r["median_ms"]) for r in res["results"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", type=Path, default=RUNS / "photo64" / "teacher" / "G_AtoB.pt",
                    help="the full generator (dmad model file)")
    ap.add_argument("--student", type=Path,
                    default=RUNS / "fidelity_vs_time" / "new_aug" / "student_G_AtoB.pt",
                    help="its compressed student")
    ap.add_argument("--split", type=Path,
                    default=RUNS / "fidelity_vs_time" / "search" / "split.json",
                    help="split.json whose held-out photographs are shown")
    ap.add_argument("--photos", default="camera,coffee,chelsea",
                    help="comma list of held-out photograph names (without extension)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figure.jpg",
                    help="the image written (JPEG by its extension)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    full, _ = load_generator(args.teacher)
    student, _ = load_generator(args.student)
    held = {Path(p).stem: Path(p) for p in json.loads(args.split.read_text())["val"]}
    names = [n for n in args.photos.split(",") if n in held]
    ms = _times(args.teacher, args.student)
    t_full, t_student = ms[str(args.teacher)], ms[str(args.student)]
    head, cap, gap = 44, 22, 6
    canvas = Image.new("RGB", (3 * SIDE + 2 * gap, head + len(names) * (SIDE + cap)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(("input (held out)", f"full: {t_full:.0f} ms",
                              f"compressed: {t_student:.0f} ms ({t_full / t_student:.1f}x)")):
        draw.text((i * (SIDE + gap) + 6, 8), text, fill="black")
    draw.text((6, 26), f"PyTorch, 1 thread, {SIDE}x{SIDE}, this CPU", fill="gray")
    for row, name in enumerate(names):
        img = _square(held[name])
        a, b = _run(full, img), _run(student, img)
        y = head + row * (SIDE + cap)
        for col, arr in enumerate((np.asarray(img), a, b)):
            canvas.paste(Image.fromarray(arr), (col * (SIDE + gap), y))
        db = psnr(a, b, data_range=255.0)
        draw.text((6, y + SIDE + 4), f"{name}: compressed vs full {db:.1f} dB", fill="black")
        print(f"{name}: {db:.2f} dB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(f"full {t_full:.1f} ms, compressed {t_student:.1f} ms ({t_full / t_student:.1f}x); "
          f"{args.out}")


if __name__ == "__main__":
    main()
