"""The images a user brings for compressing their own generator, split once into training and
held-out images.

``dmad compress GENERATOR --images DIR`` accepts any folder: a flat or nested folder of images,
an unaligned CycleGAN layout (its A side: ``trainA/``, with ``testA/`` as the held-out images),
or an aligned Pix2Pix layout (the A half of each A|B image; ``val/`` or ``test/`` held out; the B
half becomes ground truth only when asked). Without a held-out folder, a deterministic split
takes 5 % of the images (at least 8) by a hash of each file's relative path, so adding images
moves few others between the sides and the same folder always splits the same way.

The split is written to the run folder (``split.json``) and every stage reads it from there:
training batches and int8 calibration come from ``train``, evaluation, best-checkpoint choice
and export parity from ``val`` — whole images, never crops of training images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dmad.compress.data.datasets import Item
from dmad.compress.data.images import IMG_EXTENSIONS, is_image_file, load_rgb, scan
from dmad.compress.data.transforms import TransformConfig, apply, draw_params
from dmad.compress.errors import DmadError

SPLIT_FORMAT = "dmad-split"
#: Held-out share of a folder without its own held-out images, and the least held out.
VAL_FRACTION = 0.05
MIN_VAL = 8


@dataclass
class ImageSplit:
    """Which files train and which are held out; JSON-able (``split.json``)."""

    root: str
    layout: str  # folder | unaligned | aligned
    train: list[str]
    val: list[str]
    val_source: str  # how the held-out images were chosen, for the record
    paired: bool = False  # aligned layout: the B half exists (ground truth on request)
    skipped: list[list[str]] = field(default_factory=list)  # [path, reason] with --skip-bad

    def to_dict(self) -> dict[str, Any]:
        return {"format": SPLIT_FORMAT, "version": 1, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, obj: dict[str, Any], where: str = "split.json") -> ImageSplit:
        if not isinstance(obj, dict) or obj.get("format") != SPLIT_FORMAT:
            raise DmadError(f"{where}: not a dmad image split")
        want = {"root": str, "layout": str, "train": list, "val": list, "val_source": str}
        for key, tp in want.items():
            if not isinstance(obj.get(key), tp):
                raise DmadError(f"{where}: field {key!r} is missing or not a {tp.__name__}; "
                                "not a valid image split")
        for key in ("train", "val"):
            if not all(isinstance(p, str) and p for p in obj[key]):
                raise DmadError(f"{where}: field {key!r} must list image paths")
        if obj["layout"] not in ("folder", "unaligned", "aligned"):
            raise DmadError(f"{where}: field 'layout' is {obj['layout']!r}, not folder, "
                            "unaligned or aligned")
        if not obj["train"] and not obj["val"]:
            raise DmadError(f"{where}: lists no images")
        skipped = obj.get("skipped", [])
        if not isinstance(skipped, list) or not isinstance(obj.get("paired", False), bool):
            raise DmadError(f"{where}: fields 'skipped'/'paired' have the wrong type")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})

    @classmethod
    def load(cls, path: Path) -> ImageSplit:
        try:
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            why = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:160]
            raise DmadError(f"{path}: cannot read the image split ({why})") from None
        return cls.from_dict(obj, str(path))


def _walk(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (nested too), sorted by relative path."""
    out = [p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and is_image_file(p)
           and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def detect_layout(root: Path) -> tuple[str, list[Path], list[Path] | None, str]:
    """``(layout, training files, held-out files or None, where the held-out files came from)``.

    Raises a one-line DmadError when the folder is missing or holds no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DmadError(f"{root}: {'not a folder' if root.exists() else 'folder not found'}")
    if (root / "unaligned").is_dir() and not (root / "trainA").is_dir():
        root = root / "unaligned"  # the embedded default dataset's two layouts
    if (root / "trainA").is_dir():
        held = root / "testA"
        return "unaligned", _walk(root / "trainA"), (_walk(held) if held.is_dir() else None), \
            f"{held}/"
    if (root / "train").is_dir():
        held = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
        files = _walk(root / "train")
        kind = "aligned" if files and _looks_aligned(files[0]) else "folder"
        if files and (kind == "aligned" or held is not None):
            return kind, files, (_walk(held) if held is not None else None), f"{held}/"
    files = _walk(root)
    if not files:
        exts = "/".join(sorted(IMG_EXTENSIONS))
        raise DmadError(f"{root}: no images ({exts}) in the folder or its subfolders")
    return "folder", files, None, ""


def _looks_aligned(path: Path) -> bool:
    """An A|B image is twice as wide as it is high (the pix2pix datasets' convention)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except Exception:
        return False
    return w == 2 * h


def _digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _key(rel: str) -> float:
    """A uniform number in [0, 1) fixed by the file's relative path."""
    return int(hashlib.sha1(rel.encode("utf-8")).hexdigest()[:13], 16) / 16**13


def make_split(images: Path, val: Path | None = None, *, size: int = 0, skip_bad: bool = False,
               fraction: float = VAL_FRACTION, min_val: int = MIN_VAL) -> ImageSplit:
    """Validate the user's images and split them (see the module docstring).

    ``size``: training crop side; smaller images are refused (a folder of thumbnails is nearly
    always the wrong folder), as everywhere else in dmad. ``val``: a folder of held-out images,
    which must share no file (by path or by content) with the training images.
    """
    layout, train_files, held, held_where = detect_layout(Path(images))
    half = layout == "aligned"
    min_size = (2 * size, size) if half and size else ((size, size) if size else None)

    def check(files: list[Path], where: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
        if not files:
            raise DmadError(f"{where}: no images in the folder or its subfolders")
        return scan(files, min_size=min_size, skip_bad=skip_bad, folder=where)

    train, bad = check(train_files, Path(images))
    if val is not None:
        vlayout, vfiles, vheld, _ = detect_layout(Path(val))
        held_files = vfiles + (vheld or [])
        vgood, vbad = check(held_files, Path(val))
        bad += vbad
        source = f"--val {val}"
        _refuse_overlap(train, vgood, Path(val))
        if vlayout != layout and "aligned" in (layout, vlayout):
            raise DmadError(f"--val {val}: is a {vlayout} layout but --images is {layout}; "
                            "give held-out images of the same kind")
    elif held:
        vgood, vbad = check(held, Path(held_where))
        bad += vbad
        source = held_where
        _refuse_overlap(train, vgood, Path(held_where))
    else:
        n = len(train)
        if n < min_val + 1:
            raise DmadError(f"{images}: only {n} usable image(s); a held-out split needs at "
                            f"least {min_val + 1} ({min_val} held out), or give --val DIR")
        root = Path(images)
        keys = {p: _key(p.relative_to(root).as_posix()) for p in train}
        # each image is held out when its hash falls under the fraction, so adding images never
        # moves one of those into training; the smallest hashes top the split up to min_val
        held_set = {p for p, k in keys.items() if k < fraction}
        for p in sorted(train, key=keys.__getitem__):
            if len(held_set) >= min_val:
                break
            held_set.add(p)
        n_val = len(held_set)
        vgood = [p for p in train if p in held_set]
        train = [p for p in train if p not in held_set]
        source = (f"deterministic split: {n_val} of {n} images held out (path hash < "
                  f"{fraction:.0%}, at least {min_val})")
    return ImageSplit(root=str(images), layout=layout, train=[str(p) for p in train],
                      val=[str(p) for p in vgood], val_source=source, paired=half,
                      skipped=[[str(p), r] for p, r in bad])


def _refuse_overlap(train: list[Path], val: list[Path], where: Path) -> None:
    """Held-out images must not be training images: by resolved path, then by content."""
    by_path = {p.resolve(): p for p in train}
    for v in val:
        if v.resolve() in by_path:
            raise DmadError(f"{where}: {v} is also a training image; held-out images must not be "
                            "trained on")
    sizes: dict[int, list[Path]] = {}
    for p in train:
        sizes.setdefault(p.stat().st_size, []).append(p)
    digests: dict[str, Path] = {}
    for v in val:  # hash only files whose size matches a training file's
        same = sizes.get(v.stat().st_size)
        if not same:
            continue
        for p in same:
            digests.setdefault(_digest(p), p)
        twin = digests.get(_digest(v))
        if twin is not None:
            raise DmadError(f"{where}: {v} has the same content as the training image {twin}; "
                            "held-out images must not be trained on")


class ImageListDataset:
    """Images from a list of files: ``A`` (3×H×W in [-1, 1]); ``B`` too when ``paired``.

    ``aligned``: each file is A|B side by side and ``A`` is the left half (``B`` the right, with
    the same crop and flip). Train-time augmentation when ``get`` is given a generator (the
    original recipe's resize then random crop and flip), test-time resize otherwise.
    """

    def __init__(self, paths: list[str], cfg: TransformConfig, *, aligned: bool = False,
                 paired: bool = False, extra: list[str] | None = None) -> None:
        if not paths and not extra:
            raise DmadError("dataset: no images")
        #: ``extra``: unlabelled whole photographs after the split's own (never A|B halves)
        self.paths = [Path(p) for p in paths] + [Path(p) for p in extra or []]
        self.n_own = len(paths)
        self.cfg = cfg
        self.aligned = aligned
        self.paired = paired and aligned

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: int, gen: torch.Generator | None = None) -> Item:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        path = self.paths[index]
        img = load_rgb(path)
        b = None
        if self.aligned and index < self.n_own:
            w, h = img.size  # halves of one width: an odd width's last column is dropped
            a, b = img.crop((0, 0, w // 2, h)), img.crop((w // 2, 0, 2 * (w // 2), h))
        else:
            a = img
        params = draw_params(self.cfg, gen) if gen is not None else None
        out: Item = {"A": apply(a, self.cfg, params), "A_path": str(path)}
        if self.paired and b is not None:
            out["B"] = apply(b, self.cfg, params)
            out["B_path"] = str(path)
        return out


def split_datasets(split: ImageSplit, size: int, load_size: int, flip: bool, *,
                   paired: bool = False, scale_max: int = 0,
                   extra: list[str] | None = None) -> tuple[ImageListDataset, ImageListDataset]:
    """Training set (augmented crops; ``scale_max``: multi-scale, see :class:`TransformConfig`;
    ``extra``: unlabelled photographs added) and held-out set (whole images resized to
    ``size``)."""
    aligned = split.layout == "aligned"
    train = ImageListDataset(split.train, TransformConfig(load_size, size, flip, scale_max),
                             aligned=aligned, paired=paired, extra=extra)
    return train, whole_images(split, size, paired=paired)


def whole_images(split: ImageSplit, size: int, side: str = "val", *,
                 paired: bool = False) -> ImageListDataset:
    """One side of the split, whole images resized to ``size`` (what evaluation judges)."""
    files = split.val if side == "val" else split.train
    return ImageListDataset(files, TransformConfig(size, size, False),
                            aligned=split.layout == "aligned", paired=paired)


def extra_photographs(folder: Path, split: ImageSplit, size: int) -> list[str]:
    """Every image under ``folder`` (sorted, nested too) as extra unlabelled distillation
    inputs; a held-out image among them is refused (it would be trained on)."""
    files = _walk(Path(folder)) if Path(folder).is_dir() else []
    if not files:
        why = "no images in the folder" if Path(folder).is_dir() else "folder not found"
        raise DmadError(f"{folder}: {why} (field extra_images)")
    good, _ = scan(files, min_size=(size, size), skip_bad=False, folder=Path(folder))
    _refuse_overlap(good, [Path(p) for p in split.val], Path(folder))
    return [str(p) for p in good]


__all__ = ["ImageListDataset", "ImageSplit", "detect_layout", "extra_photographs", "make_split",
           "split_datasets", "whole_images"]


#: the split a run saved in its folder, reused on resume
SPLIT = "split.json"


def resolve_split(images: str, val: str, saved: Path, *, size: int, skip_bad: bool,
                  resume: bool) -> ImageSplit:
    """The image split of a run: a ``split.json`` given as ``images``, the one saved in the run
    folder when resuming (so a resumed run trains on exactly the same files), or a new one."""
    path = Path(images)
    if path.is_file():
        return ImageSplit.load(path)
    if resume and saved.is_file():
        return ImageSplit.load(saved)
    return make_split(path, Path(val) if val else None, size=size, skip_bad=skip_bad)
