"""Shared set-up of the photo benchmarks (``distill_objectives.py``, ``fidelity_vs_time.py``).

The teacher is ``scripts/photo_teacher.py``'s colouriser (grey photograph → colour); the student
is trained on the grey versions of its seven training photographs, whole (the fine-tune draws
its crops from them), and judged on eleven held-out grey photographs of other subjects, whole,
at 256², against the teacher. Nothing here downloads anything: the photographs come from the
scikit-image/scikit-learn wheels (see ``photo_teacher.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from photo_teacher import HELD, HELD_GREY, TRAIN, extract

ROOT = Path(__file__).resolve().parent.parent
WHEELS_HELP = "scikit-image and scikit-learn wheels (pip download --no-deps)"


def student_folders(wheels: list[Path], work: Path) -> tuple[Path, Path]:
    """(training photographs, held-out photographs): grey, whole, one PNG each."""
    train, held = work / "student_images", work / "student_heldout"
    if (work / ".student-done").exists():
        return train, held
    photos = extract(wheels, work / "photos")
    for folder, names in ((train, TRAIN), (held, HELD + HELD_GREY)):
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            img = Image.open(photos[name]).convert("L").convert("RGB")
            img.save(folder / f"{Path(name).stem}.png")
    (work / ".student-done").write_text("ok")
    return train, held


def shared_search(teacher: Path, train: Path, held: Path, out: Path, *, steps: int,
                  ratio: float, seed: int = 0, extra: dict[str, Any] | None = None) -> Path:
    """One search at ÷``ratio`` paper MACs on the photographs (reused when finished)."""
    from dmad.compress.arch import profile
    from dmad.compress.checkpoint import load_model
    from dmad.compress.train.search import SearchConfig, search

    if (out / "DONE.json").exists():
        return out
    g, _ = load_model(teacher)
    target = round(profile(g, (1, 3, 256, 256)).macs_paper / 1e9 / ratio, 3)
    search(SearchConfig(teacher=str(teacher), images=str(train), val=str(held), size=128,
                        target_gmacs=target, steps=steps, seed=seed, device="cpu",
                        checkpoint_every=100, log_every=25, **(extra or {})), out,
           resume=(out / "checkpoint.pt").exists())
    return out


def judge(student: Path, teacher: Path, split: Path, out: Path, size: int = 256) -> dict[str, Any]:
    """Held-out and training photographs, whole at ``size``², against the teacher."""
    from dmad.compress.evaluate import EvalConfig, evaluate

    res = {}
    for side in ("val", "train"):
        done = out / side / "eval.json"
        if done.is_file() and done.stat().st_mtime >= student.stat().st_mtime:
            res[side] = json.loads(done.read_text())  # judged already, the student unchanged
            continue
        res[side] = evaluate(EvalConfig(student=str(student), teacher=str(teacher),
                                        images=str(split), side=side, size=size, device="cpu"),
                             out / side, force=True)
    return res


def row(ev: dict[str, Any]) -> str:
    """PSNR mean/worst, SSIM mean/worst, colour shift: one table row's cells."""
    return (f"{ev['psnr_vs_teacher']:.2f} / {ev['psnr_worst_vs_teacher']:.2f} | "
            f"{ev['ssim_vs_teacher']:.3f} / {ev['ssim_worst_vs_teacher']:.3f} | "
            f"{ev['colour_mean_shift_max']:.1f}")


def photo_arguments(description: str, work: str) -> argparse.ArgumentParser:
    """The options both photo benchmarks take: the wheels, the teacher, the work folder."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--wheels", type=Path, nargs="+", required=True, help=WHEELS_HELP)
    ap.add_argument("--teacher", type=Path, default=ROOT / "runs/photo64/teacher/G_AtoB.pt",
                    help="the photo-trained teacher (scripts/photo_teacher.py --teacher-only)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / work,
                    help="work folder (finished runs are reused)")
    return ap
