"""``dmad translate``: run one or two generators over a folder of images and look at them.

What users of pytorch-CycleGAN-and-pix2pix do first (``test.py`` → images + ``index.html``),
for any file dmad makes: a PyTorch model file or run folder, an ``.onnx`` or a ``.tflite``. With
two models (full and compressed) the page shows input | full | compressed side by side with the
PSNR between the two outputs and each model's time per image, so a person sees at once how
faithful and how fast the compressed file is on their own photographs.

Geometry: a file with a fixed input shape (``.onnx``, ``.tflite``) gets each photograph scaled
to cover that shape and centre-cropped. PyTorch generators are fully convolutional: they get
the photograph at its own size, the long side capped at ``max_side`` and each side cropped to
the generator's multiple. When a fixed-shape file is one of the two, both models get its
shape, so the outputs compare pixel for pixel.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmad.compress.config import opt
from dmad.compress.errors import DmadError
from dmad.compress.io import atomic_write_json, atomic_write_text

__all__ = ["TranslateConfig", "translate"]

KINDS = {".pt": "pytorch", ".pth": "pytorch", ".onnx": "onnx", ".tflite": "tflite"}


@dataclass
class TranslateConfig:
    """What ``dmad translate`` runs, on which images, written where."""

    models: tuple[str, ...] = opt((), "one model, or two (full then compressed): a dmad model "
                                  "file or run folder, an .onnx or a .tflite")
    images: str = opt("", "folder of input images (not recursive)")
    out: str = opt("", "output folder (a new or empty one; --force replaces an earlier one)")
    max_side: int = opt(512, "PyTorch models: the long side of an input is scaled down to at "
                        "most this many pixels (fixed-shape files use their own shape)")
    max_images: int = opt(0, "translate only the first N images (0 = all)")
    threads: int = opt(1, "CPU threads of each runtime")
    force: bool = opt(False, "replace an earlier translate output in --out")

    def __post_init__(self) -> None:
        self.models = tuple(str(m) for m in self.models)
        if not 1 <= len(self.models) <= 2:
            raise DmadError(f"MODEL: give one or two models, got {len(self.models)}")
        for name in ("max_side", "threads"):
            if getattr(self, name) < 1:
                raise DmadError(f"--{name.replace('_', '-')}: must be >= 1")
        if self.max_images < 0:
            raise DmadError("--max-images: must be >= 0")


class Runner:
    """One model behind one call: NCHW float images in [-1, 1] in, the same out."""

    def __init__(self, path: Path, threads: int) -> None:
        self.path = path
        self.kind = "pytorch" if path.is_dir() else KINDS.get(path.suffix.lower(), "")
        if not self.kind:
            raise DmadError(f"{path}: not a model dmad can run (.pt/.pth, a run folder, "
                            ".onnx or .tflite)")
        if not path.exists():
            raise DmadError(f"{path}: not found")
        self.fixed: tuple[int, int] | None = None
        self.divisor = 1
        getattr(self, f"_open_{self.kind}")(threads)

    def _open_pytorch(self, threads: int) -> None:
        import torch

        from dmad.compress.checkpoint import load_generator

        path = self.path
        if path.is_dir():
            found = [path / n for n in ("student_G_AtoB.pt", "G_AtoB.pt") if (path / n).is_file()]
            if not found:
                raise DmadError(f"{path}: a folder without student_G_AtoB.pt or G_AtoB.pt")
            path = found[0]
        self.model, _ = load_generator(path)
        self.model.eval()
        torch.set_num_threads(threads)
        self.divisor = int(getattr(self.model.spec, "divisor", 4))

    def _open_onnx(self, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.log_severity_level = 3
        try:
            self.sess = ort.InferenceSession(str(self.path), opts,
                                             providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own types for any unreadable file
            raise DmadError(f"{self.path}: ONNX Runtime cannot open it "
                            f"({' '.join(str(exc).split())[:160]})") from None
        shape = self.sess.get_inputs()[0].shape
        if all(isinstance(s, int) for s in shape[2:]):
            self.fixed = (int(shape[2]), int(shape[3]))

    def _open_tflite(self, threads: int) -> None:
        from dmad.export.parity import make_interpreter

        try:
            self.it = make_interpreter(self.path, threads)
        except (RuntimeError, ValueError) as exc:
            raise DmadError(f"{self.path}: LiteRT cannot open it "
                            f"({str(exc).splitlines()[0][:160]})") from None
        shape = self.it.get_input_details()[0]["shape"]
        self.fixed = (int(shape[1]), int(shape[2]))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "pytorch":
            import torch

            with torch.no_grad():
                return self.model(torch.from_numpy(x)).numpy()
        if self.kind == "onnx":
            return np.asarray(self.sess.run(None, {self.sess.get_inputs()[0].name: x})[0])
        from dmad.export.parity import invoke_tflite

        y = invoke_tflite(self.it, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
        return y.transpose(0, 3, 1, 2)


def fit(img: Any, fixed: tuple[int, int] | None, max_side: int, divisor: int) -> Any:
    """The photograph as the models take it: cover-and-centre-crop to a fixed shape, else at its
    own size (long side at most ``max_side``) cropped to a multiple of ``divisor``."""
    from PIL import Image

    w, h = img.size
    if fixed is not None:
        th, tw = fixed
        s = max(tw / w, th / h)
    else:
        s = min(1.0, max_side / max(w, h))
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC) if (nw, nh) != (w, h) else img
    tw, th = (fixed[1], fixed[0]) if fixed is not None else \
        (nw // divisor * divisor, nh // divisor * divisor)
    if tw < divisor or th < divisor:
        raise DmadError(f"image smaller than the generator's multiple of {divisor} pixels")
    left, top = (nw - tw) // 2, (nh - th) // 2
    return img.crop((left, top, left + tw, top + th))


def _to_array(img: Any) -> np.ndarray:
    a = np.asarray(img, np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(a.transpose(2, 0, 1)[None])


def _to_image(y: np.ndarray) -> Any:
    from PIL import Image

    a = ((np.clip(y[0], -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(a)


def _inputs(cfg: TranslateConfig) -> list[Path]:
    from dmad.compress.data.images import list_images

    folder = Path(cfg.images)
    if not folder.is_dir():
        raise DmadError(f"--images {folder}: " + ("not found" if not folder.exists()
                                                   else "is a file, expected a folder of images"))
    paths = list_images(folder)
    if not paths:
        raise DmadError(f"--images {folder}: holds no images (.png, .jpg, ...)")
    return paths[: cfg.max_images] if cfg.max_images else paths


def _translate_one(path: Path, runners: list[Runner], labels: list[str], cfg: TranslateConfig,
                   tmp: Path, first: bool) -> dict[str, Any]:
    from dmad.compress.data.images import load_rgb
    from dmad.compress.metrics import psnr

    fixed = next((r.fixed for r in runners if r.fixed is not None), None)
    divisor = max(r.divisor for r in runners)
    img = fit(load_rgb(path), fixed, cfg.max_side, divisor)
    x = _to_array(img)
    stem = path.stem
    img.save(tmp / "images" / f"{stem}_input.png")
    row: dict[str, Any] = {"image": path.name, "size": list(img.size), "ms": {}}
    outs = []
    for r, label in zip(runners, labels, strict=True):
        if first:
            r(x)  # warm-up: the first call sets up kernels and buffers
        t = time.perf_counter()
        y = r(x)
        row["ms"][label] = (time.perf_counter() - t) * 1e3
        if y.shape != x.shape:
            raise DmadError(f"{r.path}: gives {tuple(y.shape)} for an input of "
                            f"{tuple(x.shape)}; not an image-to-image generator of this size")
        _to_image(y).save(tmp / "images" / f"{stem}_{label}.png")
        outs.append(y)
    if len(outs) == 2:
        row["psnr_between_db"] = psnr(outs[0], outs[1])
    return row


def summarise(rows: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """Median time per image of each model, and the PSNR between the two outputs (mean and
    worst image)."""
    s: dict[str, Any] = {"images": len(rows), "median_ms": {
        lb: float(np.median([r["ms"][lb] for r in rows])) for lb in labels}}
    if len(labels) == 2:
        s["speedup"] = s["median_ms"][labels[0]] / s["median_ms"][labels[1]]
        vals = [r["psnr_between_db"] for r in rows]
        worst = int(np.argmin(vals))
        s.update(psnr_mean_db=float(np.mean(vals)), psnr_worst_db=vals[worst],
                 psnr_worst_image=rows[worst]["image"])
    return s


def translate(cfg: TranslateConfig) -> dict[str, Any]:
    """Run the model(s) over ``cfg.images`` into ``cfg.out``: the outputs, ``index.html`` and
    ``translate.json``. Returns the summary."""
    from dmad.compress.runfolder import refuse_out_over_inputs, run_lock, staged_output

    if not cfg.out:
        raise DmadError("--out: required")
    out = Path(cfg.out)
    refuse_out_over_inputs(out, {"--images": cfg.images, "MODEL": list(cfg.models)})
    labels = ["full", "compressed"] if len(cfg.models) == 2 else ["output"]
    paths = _inputs(cfg)
    runners = [Runner(Path(m), cfg.threads) for m in cfg.models]
    with run_lock(out), staged_output(out, cfg.force, "translate.json", "translate output") \
            as tmp:
        (tmp / "images").mkdir()
        rows = [_translate_one(p, runners, labels, cfg, tmp, i == 0)
                for i, p in enumerate(paths)]
        summary = {"models": dict(zip(labels, cfg.models, strict=True)), **summarise(
            rows, labels), "threads": cfg.threads, "per_image": rows}
        atomic_write_json(tmp / "translate.json", summary)
        atomic_write_text(tmp / "index.html", page(summary, labels))
    return summary


def page(summary: dict[str, Any], labels: list[str]) -> str:
    """The HTML page: the headline, then one row per image (input | outputs), worst first."""
    esc = html.escape
    ms = summary["median_ms"]
    head = ", ".join(f"{lb} {ms[lb]:.1f} ms" for lb in labels) + " median per image"
    if len(labels) == 2:
        head = (f"compressed is {summary['speedup']:.1f}× faster ({head}); PSNR between the "
                f"outputs {summary['psnr_mean_db']:.1f} dB mean, worst "
                f"{summary['psnr_worst_db']:.1f} dB ({esc(summary['psnr_worst_image'])})")
    rows = sorted(summary["per_image"], key=lambda r: r.get("psnr_between_db", 0.0))
    cells = []
    for r in rows:
        stem = Path(r["image"]).stem
        imgs = "".join(f'<td><a href="images/{esc(stem)}_{c}.png"><img src="images/'
                       f'{esc(stem)}_{c}.png" alt="{c}"></a></td>' for c in ["input", *labels])
        note = " · ".join(f"{lb} {r['ms'][lb]:.1f} ms" for lb in labels)
        if "psnr_between_db" in r:
            note = f"{r['psnr_between_db']:.1f} dB · " + note
        cells.append(f"<tr><th>{esc(r['image'])}<br><small>{note}</small></th>{imgs}</tr>")
    cols = "".join(f"<th>{c}</th>" for c in ["", "input", *labels])
    return ("<!doctype html><html><head><meta charset='utf-8'><title>dmad translate</title>"
            "<style>body{font-family:sans-serif;margin:1em}"
            "img{width:min(30vw,512px);image-rendering:pixelated}"
            "td,th{vertical-align:top;padding:4px}</style></head><body>"
            f"<h1>dmad translate</h1><p>{esc(head)}</p><table><tr>{cols}</tr>"
            + "".join(cells) + "</table></body></html>\n")
