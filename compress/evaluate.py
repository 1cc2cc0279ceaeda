"""``dmad eval``: how faithful is the student? PSNR/SSIM against the teacher (and the ground
truth where the data is paired), FID/KID with the user's Inception weights, an image grid and a
JSON summary with MACs/params in both conventions and the compression ratios.

FID needs pytorch-fid's Inception weights file (``--inception PATH``); without it FID and KID
are skipped with a message. Nothing is ever downloaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dmad.compress.arch import profile
from dmad.compress.checkpoint import load_generator
from dmad.compress.config import opt
from dmad.compress.errors import DmadError
from dmad.compress.io import atomic_write_json
from dmad.compress.metrics import psnr
from dmad.compress.train.common import (
    eval_loader,
    open_train_test,
    pick_device,
    resolve_data,
    save_grid,
)


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004: 11×11 Gaussian σ 1.5, K1 0.01, K2 0.03) of images in
    [-1, 1], computed on [0, 1] per channel and averaged; valid windows only."""
    x, y = (a.double() + 1) / 2, (b.double() + 1) / 2
    c = x.shape[1]
    w = _gauss().to(x.device).expand(c, 1, 11, 11)
    if min(x.shape[-2:]) < 11:
        raise ValueError("SSIM needs images of at least 11x11")

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)

    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


#: A channel whose mean moves by more than this many levels of 255 between teacher and student
#: is flagged. A uniform shift of 3 sRGB levels in one channel of a grey between 64 and 192 is
#: ΔE*ab 1.1–2.6, around the just-noticeable colour difference (ΔE ≈ 2.3, Sharma 2003): a cast
#: above it over a whole photograph is what a viewer notices first, however high the PSNR.
COLOUR_SHIFT_FLAG = 3.0


def image_fidelity(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, Any]:
    """One image (1×C×H×W in [-1, 1]) against the teacher's: PSNR, SSIM (NaN under the SSIM
    window) and the per-channel shift of the mean and of the standard deviation, student minus
    teacher, in levels of 255."""
    s, t = student.double(), teacher.double()
    sm, tm = s.mean((0, 2, 3)), t.mean((0, 2, 3))
    ss, ts = s.std((0, 2, 3), unbiased=False), t.std((0, 2, 3), unbiased=False)
    small = min(s.shape[-2:]) < SSIM_WINDOW
    return {"psnr": psnr(s, t), "ssim": float("nan") if small else ssim(s, t),
            "colour_mean_shift": [round(float(v) * 127.5, 3) for v in sm - tm],
            "colour_std_shift": [round(float(v) * 127.5, 3) for v in ss - ts]}


def fidelity_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and worst image of per-image :func:`image_fidelity` rows (with an optional
    ``name``), the largest absolute colour shifts and whether one is above the flag."""
    if not rows:
        raise ValueError("no images to summarise")

    def worst(key: str) -> tuple[float, int]:
        vals = [r[key] for r in rows]
        finite = [(v, i) for i, v in enumerate(vals) if math.isfinite(v)]
        return min(finite) if finite else (float("nan"), 0)

    def mean(key: str) -> float:
        vals = [r[key] for r in rows if math.isfinite(r[key])]
        return sum(vals) / len(vals) if vals else float("nan")

    pw, pi = worst("psnr")
    sw, si = worst("ssim")
    shifts = [abs(v) for r in rows for v in r["colour_mean_shift"]]
    spreads = [abs(v) for r in rows for v in r["colour_std_shift"]]
    return {"psnr_mean": mean("psnr"), "psnr_worst": pw,
            "psnr_worst_image": rows[pi].get("name", pi),
            "ssim_mean": mean("ssim"), "ssim_worst": sw,
            "ssim_worst_image": rows[si].get("name", si),
            "colour_mean_shift_max": max(shifts), "colour_mean_shift_mean": sum(shifts) /
            len(shifts), "colour_std_shift_max": max(spreads),
            "colour_flag": max(shifts) > COLOUR_SHIFT_FLAG,
            "colour_flag_threshold": COLOUR_SHIFT_FLAG}


@dataclass
class EvalConfig:
    """Settings of ``dmad eval``."""

    student: str = opt("", "a student model file, or a finetune/search/teacher run folder")
    teacher: str = opt("", "teacher model file or run folder; '' = from the student's metadata")
    data: str = opt(
        "",
        "dataset root whose held-out split is evaluated; '' = the teacher run's data",
    )
    task: str = opt("", "cyclegan | pix2pix; '' = from the runs")
    direction: str = opt("AtoB", "AtoB | BtoA: which generator to evaluate")
    size: int = opt(0, "image side in pixels; 0 = the training size")
    inception: str = opt(
        "",
        "pytorch-fid weights file (pt_inception-2015-12-05-6726825d.pth) for FID/KID",
    )
    images: str = opt(
        "",
        "held-out images instead of a dataset's test split: a split.json (its held-out side) or "
        "a folder (every image in it); whole images resized to size",
    )
    real_stats: str = opt(
        "",
        "a .npz of real-image Inception statistics (dmad fid-stats, or pytorch-fid's): FID of "
        "the student's and the teacher's outputs against it, the papers' protocol; needs "
        "--inception",
    )
    max_images: int = opt(0, "evaluate at most this many held-out images; 0 = all")
    side: str = opt(
        "val",
        "with --images SPLIT.json: val (the held-out images) | train (the training images, "
        "whole: the gap between the two is how far the student generalises)",
    )
    device: str = opt("auto", "auto (CUDA when present) | cpu | cuda | cuda:N")

    def __post_init__(self) -> None:
        if not self.student:
            raise DmadError("field student: required (a model file or a run folder)")
        if self.side not in ("val", "train"):
            raise DmadError(f"field side: {self.side!r} is not val or train")
        if self.direction not in ("AtoB", "BtoA"):
            raise DmadError(f"field direction: {self.direction!r} is not AtoB or BtoA")
        if self.real_stats and not self.inception:
            raise DmadError("field real_stats: needs --inception (the weights the statistics "
                            "were computed with)")


def _fid(cfg: EvalConfig, device: torch.device, reals: list[torch.Tensor],
         fakes: list[torch.Tensor], teach: list[torch.Tensor]) -> dict[str, Any]:
    """FID/KID of the student's and the teacher's outputs against the held-out real images,
    and with ``real_stats`` against those statistics, the protocol recorded."""
    from dmad.compress.fid import (
        fid_against_stats,
        fid_kid,
        load_inception,
        load_real_stats,
        stats_protocol,
    )

    net = load_inception(Path(cfg.inception)).to(device)
    out: dict[str, Any] = {"fid_kid_student": fid_kid(reals, fakes, net),
                           "fid_kid_teacher": fid_kid(reals, teach, net)}
    if cfg.real_stats:
        mu, sigma = load_real_stats(cfg.real_stats)
        out["fid_vs_real_stats"] = {
            "student": fid_against_stats(fakes, net, mu, sigma),
            "teacher": fid_against_stats(teach, net, mu, sigma),
            "generated_images": len(fakes), "real_stats": str(cfg.real_stats),
            "real_protocol": stats_protocol(cfg.real_stats)
            or "not recorded (a statistics file from another tool)",
            "inception": str(cfg.inception)}
    return out


def _model_from(path: Path, direction: str) -> tuple[nn.Module, dict[str, Any]]:
    """A generator from a model file or a search file (pruned first), or from a run folder:
    student, else searched (pruned), else teacher."""
    from dmad.compress.prune import prune_search_file
    from dmad.compress.search_file import SEARCH_FORMAT

    if path.is_dir():
        for name in (f"student_G_{direction}.pt", f"search_G_{direction}.pt", f"G_{direction}.pt"):
            if (path / name).is_file():
                return _model_from(path / name, direction)
        raise DmadError(f"{path}: no student_G_{direction}.pt, search_G_{direction}.pt or "
                        f"G_{direction}.pt in this run")
    from dmad.compress.io import safe_load

    obj = safe_load(path)
    if isinstance(obj, dict) and obj.get("format") == SEARCH_FORMAT:
        return prune_search_file(path), dict(obj.get("meta") or {})
    return load_generator(path)


def _held_out(path: Path, size: int, side: str = "val"):  # type: ignore[no-untyped-def]
    """Whole images resized to ``size``: a split's held-out (or training) side, or a whole
    folder."""
    from dmad.compress.data.split import ImageListDataset, ImageSplit, detect_layout, whole_images
    from dmad.compress.data.transforms import TransformConfig

    tf = TransformConfig(size, size, False)
    if side != "val" and not path.is_file():
        raise DmadError(f"--side {side}: needs --images SPLIT.json (a folder has no training "
                        "side)")
    if path.is_file():
        split = ImageSplit.load(path)
        if not (split.val if side == "val" else split.train):
            raise DmadError(f"{path}: lists no {side} images")
        return whole_images(split, size, side)
    layout, train, held, _ = detect_layout(path)
    return ImageListDataset([str(p) for p in train + (held or [])], tf,
                            aligned=layout == "aligned")


#: The SSIM window's side: a smaller image has no SSIM.
SSIM_WINDOW = 11
#: Rows of the evaluation grid: the images furthest from the teacher, worst first.
GRID_ROWS = 8


def grid_caption(row: dict[str, Any]) -> str:
    """The line under a grid row: the image, its PSNR/SSIM and its colour shift."""
    r, g, b = row["colour_mean_shift"]
    flag = "  > flag" if max(abs(r), abs(g), abs(b)) > COLOUR_SHIFT_FLAG else ""
    return (f"{row.get('name', '')}  PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.3f}  "
            f"colour mean shift R {r:+.1f} G {g:+.1f} B {b:+.1f} /255{flag}")


def _json_safe(obj: Any) -> Any:
    """NaN/inf become null: ``eval.json`` stays valid JSON whatever a model produced."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def _check_size(size: int, *models: nn.Module) -> None:
    if size < SSIM_WINDOW:
        raise DmadError(f"field size: {size} is below the SSIM window ({SSIM_WINDOW} pixels)")
    for m in models:
        div = getattr(m.spec, "divisor", 4)
        if size % div:
            raise DmadError(f"field size: {size} is not a multiple of {div} for this "
                            f"{m.spec.family} generator")


def _score_images(student: nn.Module, teacher: nn.Module, test: Any, n: int,
                  device: torch.device, task: str, direction: str, out: Path) -> dict[str, Any]:
    """Per-image fidelity of the first ``n`` images (and against ground truth where paired),
    the outputs FID needs, and the grid of the worst images, captioned."""
    src_key, dst_key = ("A", "B") if direction == "AtoB" else ("B", "A")
    paths = list(getattr(test, "paths", None) or getattr(test, f"{src_key}_paths", None) or [])
    r: dict[str, Any] = {k: [] for k in ("per_image", "gt_psnr", "gt_ssim", "t_gt_psnr",
                                         "fakes", "reals", "teach")}
    worst: list[tuple[float, int, list[torch.Tensor]]] = []
    with torch.no_grad():
        for i, item in enumerate(eval_loader(test, device, limit=n)):
            x = item[src_key].unsqueeze(0).to(device)
            s, t = student(x), teacher(x)
            m = image_fidelity(s, t)
            m["name"] = Path(paths[i]).name if i < len(paths) else str(i)
            r["per_image"].append(m)
            row = [x[0], t[0], s[0]]
            if task == "pix2pix" and dst_key in item:
                gt = item[dst_key].unsqueeze(0).to(device)
                r["gt_psnr"].append(psnr(s, gt))
                r["gt_ssim"].append(ssim(s, gt))
                r["t_gt_psnr"].append(psnr(t, gt))
                row.append(gt[0])
            worst = sorted([*worst, (m["psnr"], i, [v.cpu() for v in row])],
                           key=lambda w: (w[0], w[1]))[:GRID_ROWS]
            r["fakes"].append(s.cpu())
            r["teach"].append(t.cpu())
            # the user's images have no target side: FID compares with the teacher's outputs
            r["reals"].append(item[dst_key].unsqueeze(0) if dst_key in item else t.cpu())
    save_grid([w for _, _, w in worst], out / "grid.png",
              [grid_caption(r["per_image"][i]) for _, i, _ in worst])
    return r


def evaluate(cfg: EvalConfig, out: Path, *, force: bool = False) -> dict[str, Any]:
    """Compute the metrics, write ``out/eval.json`` and ``out/grid.png``; return the summary.

    Earlier results in ``out`` are kept unless ``force``; ``out`` is proven writable before the
    models run, so a refused folder never costs the evaluation."""
    from dmad.compress.config import read_config_file
    from dmad.compress.runfolder import check_writable, refuse_overwrite, run_lock

    refuse_overwrite([out / "eval.json", out / "grid.png"], force, "evaluation results")
    check_writable(out)
    with run_lock(out):
        return _evaluate(cfg, out, read_config_file)


def _evaluate(cfg: EvalConfig, out: Path, read_config_file: Any) -> dict[str, Any]:
    device = pick_device(cfg.device)
    spath = Path(cfg.student)
    if not spath.exists():
        raise DmadError(f"{spath}: student not found")
    student, smeta = _model_from(spath, cfg.direction)
    teacher_ref = cfg.teacher or smeta.get("teacher", "")
    if not teacher_ref:
        raise DmadError("field teacher: not given and the student does not name its teacher")
    tpath = Path(teacher_ref)
    if not tpath.exists():
        raise DmadError(f"{tpath}: teacher not found")
    teacher, _ = _model_from(tpath, cfg.direction)
    run_cfg: dict[str, Any] = {}
    if tpath.is_dir() and (tpath / "config.json").exists():
        run_cfg = read_config_file(tpath / "config.json")
    task = cfg.task or smeta.get("task") or run_cfg.get("task") or "cyclegan"
    size = cfg.size or smeta.get("size") or run_cfg.get("size") or 256
    data = cfg.data or run_cfg.get("data", "")
    if not isinstance(size, int) or isinstance(size, bool):
        raise DmadError(f"{smeta.get('source') or spath}: the recorded size {size!r} is not an "
                        "integer; give --size")
    _check_size(size, student, teacher)
    if cfg.images:
        test = _held_out(Path(cfg.images), size, cfg.side)
    else:
        _, test = open_train_test(resolve_data(data, size), task, size, size, False, "AtoB",
                                  False)
    student, teacher = student.to(device).eval(), teacher.to(device).eval()
    n = len(test) if cfg.max_images <= 0 else min(cfg.max_images, len(test))
    sc = _score_images(student, teacher, test, n, device, task, cfg.direction, out)
    per_image, fakes, reals, teach = sc["per_image"], sc["fakes"], sc["reals"], sc["teach"]
    vs_gt_psnr, vs_gt_ssim, t_gt_psnr = sc["gt_psnr"], sc["gt_ssim"], sc["t_gt_psnr"]
    fid = fidelity_summary(per_image)

    def mean(v: list[float]) -> float | None:
        return sum(v) / len(v) if v else None

    sp = profile(student, (1, student.spec.input_nc, 256, 256))
    tp = profile(teacher, (1, teacher.spec.input_nc, 256, 256))
    summary: dict[str, Any] = {
        "student": str(spath), "teacher": str(tpath), "task": task, "direction": cfg.direction,
        "images": n, "size": size,
        "held_out": cfg.images or f"{data or 'default data'} test split",
        "objective": smeta.get("objective"), "best_step": smeta.get("step"),
        "side": cfg.side,
        "psnr_vs_teacher": fid["psnr_mean"], "ssim_vs_teacher": fid["ssim_mean"],
        **{f"{k}_vs_teacher" if k.startswith(("psnr", "ssim")) else k: v
           for k, v in fid.items() if k not in ("psnr_mean", "ssim_mean")},
        "per_image": per_image,
        "psnr_vs_ground_truth": mean(vs_gt_psnr), "ssim_vs_ground_truth": mean(vs_gt_ssim),
        "teacher_psnr_vs_ground_truth": mean(t_gt_psnr),
        "student_cost_256": {"params": sp.params, "gmacs_paper": sp.macs_paper / 1e9,
                             "gmacs_true": sp.macs_true / 1e9},
        "teacher_cost_256": {"params": tp.params, "gmacs_paper": tp.macs_paper / 1e9,
                             "gmacs_true": tp.macs_true / 1e9},
        "ratios": {"macs_paper": tp.macs_paper / sp.macs_paper,
                   "macs_true": tp.macs_true / sp.macs_true, "params": tp.params / sp.params},
        "grid": "grid.png",
    }
    if cfg.inception:
        summary.update(_fid(cfg, device, reals, fakes, teach))
    else:
        summary["fid"] = None
        summary["fid_note"] = ("FID/KID skipped: pass --inception PATH to pytorch-fid's "
                               "pt_inception-2015-12-05 weights (never downloaded)")
    summary = _json_safe(summary)
    atomic_write_json(out / "eval.json", summary)
    return summary
