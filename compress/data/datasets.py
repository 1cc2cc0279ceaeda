"""CycleGAN (unaligned), Pix2Pix (aligned) and plain-folder datasets.

Plain classes, no ``torch.utils.data.DataLoader``: :func:`batch` builds a batch from a list of
indices and one ``torch.Generator``, in order, so the batches of a run are a pure function of the
generator state and a resumed run sees exactly the same data. Every file is decoded once when a
dataset is built (:func:`~compress.data.images.scan`), so bad input fails before training.

Items are dicts: ``A``/``B`` (3 x H x W float32 in [-1, 1]) and ``A_path``/``B_path`` (str) for
the paired datasets, ``image``/``path`` for :class:`FolderDataset`. ``get(index, gen)`` with a
generator applies train-time augmentation drawn from it; with ``None`` it is test-time (resize
only, deterministic).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

import torch
from PIL import Image

from dmad.compress.data.images import BadImageError, list_images, load_rgb, scan
from dmad.compress.data.transforms import TransformConfig, apply, draw_params
from dmad.compress.errors import DmadError

Item = dict[str, torch.Tensor | str]

_UNALIGNED_DIRS = ("trainA", "trainB", "testA", "testB")
_ALIGNED_DIRS = ("train", "val")
_UNALIGNED_HINT = "unaligned layout needs trainA/ trainB/ testA/ testB/"
_ALIGNED_HINT = "aligned layout needs train/ val/ holding A|B side-by-side images"


class Dataset(Protocol):
    """What :func:`batch` needs from a dataset."""

    def __len__(self) -> int: ...

    def get(self, index: int, gen: torch.Generator | None = None) -> Item: ...


def _one_of(field: str, value: str, allowed: tuple[str, ...], where: str = "") -> None:
    if value not in allowed:
        raise DmadError(f"{field}: {value!r} is not one of {', '.join(allowed)}{where}")


def _check_root(root: Path, cfg: TransformConfig | bool | None = True) -> Path:
    """The dataset folder, checked; a dataset class also needs its ``cfg``."""
    if cfg is None:
        raise DmadError("cfg: a TransformConfig is required")
    root = Path(root)
    if not root.is_dir():
        what = "not a folder" if root.exists() else "folder not found"
        raise DmadError(f"{root}: {what}")
    return root


def _check_index(index: int, n: int, name: str) -> None:
    if not 0 <= index < n:
        raise IndexError(f"{name}: index {index} out of range for {n} items")


class UnalignedDataset:
    """CycleGAN layout ``root/{trainA,trainB,testA,testB}``: two unpaired image folders.

    ``len`` is ``max(len(A), len(B))`` and B is drawn at random when a generator is given, as
    in the original with ``serial_batches=False``; A and B get independent augmentations.
    """

    def __init__(
        self,
        root: Path,
        split: Literal["train", "test"] = "train",
        cfg: TransformConfig | None = None,
        *,
        skip_bad: bool = False,
    ) -> None:
        _one_of("split", split, ("train", "test"), " (unaligned layout)")
        self.root = _check_root(root, cfg)
        self.split = split
        self.cfg = cfg
        crop = (cfg.crop_size, cfg.crop_size)
        lists: list[list[Path]] = []
        for side in ("A", "B"):
            folder = self.root / f"{split}{side}"
            if not folder.is_dir():
                raise DmadError(f"{folder}: folder not found ({_UNALIGNED_HINT})")
            good, _ = scan(list_images(folder), min_size=crop, skip_bad=skip_bad, folder=folder)
            lists.append(good)
        self.A_paths, self.B_paths = lists

    def __len__(self) -> int:
        return max(len(self.A_paths), len(self.B_paths))

    def get(self, index: int, gen: torch.Generator | None = None) -> Item:
        """Item ``index``: A is ``A_paths[index % nA]``; B random from ``gen``, else ``index % nB``.

        Draw order from ``gen``: B's index, A's crop/flip, B's crop/flip.
        """
        _check_index(index, len(self), str(self.root))
        a_path = self.A_paths[index % len(self.A_paths)]
        if gen is not None:
            b_index = int(torch.randint(0, len(self.B_paths), (1,), generator=gen).item())
        else:
            b_index = index % len(self.B_paths)
        b_path = self.B_paths[b_index]
        pa = draw_params(self.cfg, gen) if gen is not None else None
        pb = draw_params(self.cfg, gen) if gen is not None else None
        return {
            "A": apply(load_rgb(a_path), self.cfg, pa),
            "B": apply(load_rgb(b_path), self.cfg, pb),
            "A_path": str(a_path),
            "B_path": str(b_path),
        }


def _split_halves(img: Image.Image) -> tuple[Image.Image, Image.Image]:
    w, h = img.size
    half = w // 2
    return img.crop((0, 0, half, h)), img.crop((half, 0, w, h))


class AlignedDataset:
    """Pix2Pix layout ``root/{train,val}``: each image is A (left half) | B (right half).

    Both halves get the same crop and flip, so the pair stays aligned. ``direction="BtoA"``
    swaps them. ``split="test"`` reads ``root/test`` if present, else ``root/val`` (the pix2pix
    datasets ship train/ and val/ only, and val is what the original recipes test on).
    """

    def __init__(
        self,
        root: Path,
        split: Literal["train", "val", "test"] = "train",
        cfg: TransformConfig | None = None,
        *,
        skip_bad: bool = False,
        direction: Literal["AtoB", "BtoA"] = "AtoB",
    ) -> None:
        _one_of("split", split, ("train", "val", "test"), " (aligned layout)")
        _one_of("direction", direction, ("AtoB", "BtoA"))
        self.root = _check_root(root, cfg)
        self.cfg = cfg
        self.direction = direction
        folder = self.root / split
        if split == "test" and not folder.is_dir() and (self.root / "val").is_dir():
            folder = self.root / "val"
        if not folder.is_dir():
            raise DmadError(f"{folder}: folder not found ({_ALIGNED_HINT})")
        self.folder = folder
        self.split = split
        crop = cfg.crop_size

        def check(path: Path, img: Image.Image) -> None:
            w, h = img.size
            if w % 2:
                raise BadImageError(
                    path,
                    f"aligned image width {w} is odd, expected A|B side by side "
                    "(two halves of equal width)",
                )
            if w // 2 < crop or h < crop:
                raise BadImageError(
                    path,
                    f"aligned image {w}x{h} has halves {w // 2}x{h}, smaller than the "
                    f"crop {crop}x{crop}",
                )

        self.paths, _ = scan(list_images(folder), skip_bad=skip_bad, check=check, folder=folder)

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: int, gen: torch.Generator | None = None) -> Item:
        """Item ``index`` with one crop/flip from ``gen`` applied to both halves (none if None)."""
        _check_index(index, len(self), str(self.folder))
        path = self.paths[index]
        a, b = _split_halves(load_rgb(path))
        if self.direction == "BtoA":
            a, b = b, a
        params = draw_params(self.cfg, gen) if gen is not None else None
        return {
            "A": apply(a, self.cfg, params),
            "B": apply(b, self.cfg, params),
            "A_path": str(path),
            "B_path": str(path),
        }


class FolderDataset:
    """A flat folder of images resized to ``size`` x ``size`` (calibration, inference).

    No minimum size: inference input is whatever the user has, and resizing it is the point.
    """

    def __init__(self, folder: Path, size: int, *, skip_bad: bool = False) -> None:
        self.folder = Path(folder)
        self.cfg = TransformConfig(load_size=size, crop_size=size, flip=False)
        self.paths, _ = scan(list_images(self.folder), skip_bad=skip_bad, folder=self.folder)

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: int, gen: torch.Generator | None = None) -> Item:
        """Item ``index`` resized test-time; ``gen`` is accepted for :func:`batch` and unused."""
        _check_index(index, len(self), str(self.folder))
        path = self.paths[index]
        return {"image": apply(load_rgb(path), self.cfg, None), "path": str(path)}


def _subdirs(root: Path) -> list[str]:
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _found(root: Path) -> str:
    names = _subdirs(root)
    if not names:
        return "found no subfolders"
    shown = ", ".join(f"{n}/" for n in names[:8])
    return f"found {shown}" + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def open_dataset(
    root: Path,
    task: Literal["cyclegan", "pix2pix"],
    split: str,
    cfg: TransformConfig,
    skip_bad: bool = False,
    *,
    direction: Literal["AtoB", "BtoA"] = "AtoB",
) -> UnalignedDataset | AlignedDataset:
    """Open ``root`` with the layout ``task`` needs, or say clearly why it does not fit.

    A root holding ``unaligned/`` and ``aligned/`` (as :func:`make_default_dataset` writes) is
    entered automatically. For pix2pix, ``split="test"`` falls back to ``val/``.
    """
    root = _check_root(root)
    if task not in ("cyclegan", "pix2pix"):
        raise DmadError(f"task: {task!r} is not one of cyclegan, pix2pix")
    names = set(_subdirs(root))
    is_unaligned = any(d in names for d in _UNALIGNED_DIRS)
    is_aligned = any(d in names for d in (*_ALIGNED_DIRS, "test"))
    if task == "cyclegan":
        if not is_unaligned and "unaligned" in names:
            return open_dataset(root / "unaligned", task, split, cfg, skip_bad)
        if not is_unaligned:
            kind = " (an aligned pix2pix layout)" if is_aligned else ""
            raise DmadError(
                f"{root}: not a cyclegan dataset, expected trainA/ trainB/ testA/ testB/, "
                f"{_found(root)}{kind}"
            )
        if split not in ("train", "test"):
            raise DmadError(f"split: {split!r} is not one of train, test (cyclegan)")
        return UnalignedDataset(root, split, cfg, skip_bad=skip_bad)
    if not is_aligned and "aligned" in names:
        return open_dataset(root / "aligned", task, split, cfg, skip_bad, direction=direction)
    if not is_aligned:
        kind = " (an unaligned cyclegan layout)" if is_unaligned else ""
        raise DmadError(
            f"{root}: not a pix2pix dataset, expected train/ val/ with A|B side-by-side "
            f"images, {_found(root)}{kind}"
        )
    if split not in ("train", "val", "test"):
        raise DmadError(f"split: {split!r} is not one of train, val, test (pix2pix)")
    return AlignedDataset(root, split, cfg, skip_bad=skip_bad, direction=direction)


def batch(dataset: Dataset, indices: list[int], gen: torch.Generator | None) -> dict:
    """Stack ``dataset.get(i, gen)`` over ``indices``: tensors to B x C x H x W, strings to lists.

    Items are fetched strictly in the order given with the one generator, so the same indices and
    generator state always give the same batch.
    """
    if not indices:
        raise ValueError("batch: indices is empty")
    items = [dataset.get(i, gen) for i in indices]
    out: dict[str, torch.Tensor | list[str]] = {}
    for key, first in items[0].items():
        if isinstance(first, torch.Tensor):
            out[key] = torch.stack([it[key] for it in items])  # type: ignore[misc]
        else:
            out[key] = [str(it[key]) for it in items]
    return out
