"""Pieces every training stage needs: device choice, seeding, deterministic batches, samples."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from dmad.compress.data import batch, make_default_dataset, open_dataset
from dmad.compress.data.transforms import TransformConfig, to_image
from dmad.compress.errors import DmadError
from dmad.compress.io import atomic_write

DEFAULT_DATA = Path("data/default")


def pick_device(name: str) -> torch.device:
    """``auto`` = CUDA when present, else CPU; the same code runs on either."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DmadError(f"device: {name!r} requested but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise DmadError(f"device: {name!r} is not a device (use auto, cpu, cuda, cuda:1)") from None


def seed_everything(seed: int) -> None:
    """Seed the global RNG (weight init, dropout); data and pool have their own generators."""
    torch.manual_seed(seed)


def resolve_data(data: str, size: int) -> Path:
    """The user's dataset root, or the embedded default at this size (generated on first use,
    idempotent; one folder per size, so runs at different sizes never regenerate each other's)."""
    if data:
        return Path(data)
    size = max(size, 16)
    return make_default_dataset(DEFAULT_DATA.with_name(f"default-{size}"), size=size)


class BatchSource:
    """Deterministic batches: step k always yields the same batch, so resume is exact.

    Each epoch is a permutation seeded by ``(seed, epoch)``; augmentation draws come from a
    generator seeded by ``(seed, step)``. Nothing here needs saving in a checkpoint.
    """

    def __init__(self, dataset, batch_size: int, seed: int, device: torch.device) -> None:  # type: ignore[no-untyped-def]
        if len(dataset) < 1:
            raise DmadError("dataset: no training images")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self._perm_epoch = -1
        self._perm: list[int] = []

    def _perm_for(self, epoch: int) -> list[int]:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.dataset), generator=g).tolist()
            self._perm_epoch = epoch
        return self._perm

    def get(self, step: int) -> dict[str, torch.Tensor]:
        n = len(self.dataset)
        idx = []
        for j in range(self.batch_size):
            flat = step * self.batch_size + j
            idx.append(self._perm_for(flat // n)[flat % n])
        gen = torch.Generator().manual_seed(self.seed * 7_919 + step + 1)
        b = batch(self.dataset, idx, gen)
        return {k: v.to(self.device) for k, v in b.items() if isinstance(v, torch.Tensor)}


def set_requires_grad(modules: list[nn.Module], flag: bool) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)


def open_train_test(
    data_root: Path,
    task: str,
    size: int,
    load_size: int,
    flip: bool,
    direction: str,
    skip_bad: bool,
):  # type: ignore[no-untyped-def]
    """Train split with augmentation settings and the held-out split (test/val) without."""
    train = open_dataset(
        data_root,
        task,
        "train",
        TransformConfig(load_size, size, flip),  # type: ignore[arg-type]
        skip_bad,
        direction=direction,
    )  # type: ignore[arg-type]
    test = open_dataset(
        data_root,
        task,
        "test",
        TransformConfig(size, size, False),  # type: ignore[arg-type]
        skip_bad,
        direction=direction,
    )  # type: ignore[arg-type]
    return train, test


def save_grid(rows: list[list[torch.Tensor]], path: Path) -> None:
    """Save rows of C×H×W images in [-1, 1] as one PNG (atomically)."""
    if not rows:
        return
    tiles = [[to_image(t.detach().cpu()) for t in row] for row in rows]
    w, h = tiles[0][0].size
    cols = max(len(r) for r in tiles)
    grid = Image.new("RGB", (cols * w, len(tiles) * h), (255, 255, 255))
    for i, row in enumerate(tiles):
        for j, im in enumerate(row):
            grid.paste(im, (j * w, i * h))
    with atomic_write(path) as fh:
        grid.save(fh, format="PNG")


def default_load_size(size: int) -> int:
    """CycleGAN's 286/256 resize-then-crop ratio."""
    return math.floor(size * 286 / 256 + 0.5)
