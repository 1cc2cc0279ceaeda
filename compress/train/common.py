"""Pieces every training stage needs: device choice, seeding, deterministic batches, samples."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from dmad.compress.data import make_default_dataset, open_dataset
from dmad.compress.data.transforms import TransformConfig, to_image
from dmad.compress.errors import DmadError
from dmad.compress.io import atomic_write
from dmad.compress.train import distributed

DEFAULT_DATA = Path("data/default")


def pick_device(name: str) -> torch.device:
    """``auto`` = CUDA when present, else CPU; the same code runs on either. Under torchrun this
    also joins the process group, and ``cuda`` means this process's GPU (``LOCAL_RANK``)."""
    if name == "auto":
        return distributed.setup(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DmadError(f"device: {name!r} requested but CUDA is not available")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DmadError(f"device: {name!r} is not a device (use auto, cpu, cuda, cuda:1)") from None
    return distributed.setup(dev)


def seed_everything(seed: int) -> None:
    """Seed the global RNG (weight init, dropout); data and pool have their own generators."""
    torch.manual_seed(seed)


def resolve_data(data: str, size: int) -> Path:
    """The user's dataset root, or the embedded default at this size (generated on first use,
    idempotent; one folder per size, so runs at different sizes never regenerate each other's)."""
    if data:
        return Path(data)
    size = max(size, 16)
    root = DEFAULT_DATA.with_name(f"default-{size}")
    # under torchrun rank 0 writes it, the others wait and read it
    return distributed.on_main(lambda: make_default_dataset(root, size=size))


def item_seed(seed: int, flat: int) -> int:
    """Seed of the augmentation generator of the ``flat``-th training item of a run (step ×
    global batch + position): one generator per item, so any process or loader worker can build
    any item alone and the batches do not depend on how the work is split."""
    return (seed * 1_000_000_007 + 7_919 * flat + 1) % (2**63)


class StepBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item ``k`` is this rank's share of step ``k``'s batch.

    Step ``k`` of a run with global batch G is the items ``k·G … k·G + G − 1`` of the epoch
    permutations (seeded by ``(seed, epoch)``); rank r of W takes positions ``r·G/W …`` of them
    (DistributedSampler-style sharding of one deterministic order). Each item's augmentation
    comes from its own generator (:func:`item_seed`). Items are therefore a pure function of
    ``(seed, step, rank, world)``: a DataLoader with any number of workers, a resumed run and
    a run split over N processes see the same images. A bad image is returned as an error
    string (a worker cannot raise a DmadError across the process boundary intact).
    """

    def __init__(self, dataset, global_batch: int, seed: int, rank: int = 0,  # type: ignore[no-untyped-def]
                 world: int = 1) -> None:
        if global_batch % world:
            raise DmadError(f"batch_size: the global batch {global_batch} is not divisible by "
                            f"the {world} processes")
        self.dataset = dataset
        self.global_batch = global_batch
        self.per_rank = global_batch // world
        self.seed = seed
        self.rank = rank
        self._perm_epoch = -1
        self._perm: list[int] = []

    def _perm_for(self, epoch: int) -> list[int]:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.dataset), generator=g).tolist()
            self._perm_epoch = epoch
        return self._perm

    def __len__(self) -> int:
        return 2**62  # steps are unbounded; the sampler says which ones are read

    def __getitem__(self, step: int) -> dict:
        n = len(self.dataset)
        items = []
        try:
            for j in range(self.per_rank):
                flat = step * self.global_batch + self.rank * self.per_rank + j
                gen = torch.Generator().manual_seed(item_seed(self.seed, flat))
                items.append(self.dataset.get(self._perm_for(flat // n)[flat % n], gen))
        except DmadError as exc:
            return {"step": step, "error": str(exc)}
        out: dict = {"step": step}
        for key, first in items[0].items():
            if isinstance(first, torch.Tensor):
                out[key] = torch.stack([it[key] for it in items])
        return out


def default_workers(device: torch.device) -> int:
    """Loader processes when ``workers = -1``: none on CPU (they would take cores from the
    training step), and up to 4 per GPU process on CUDA, within the cores of this machine."""
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(4, (cores or 1) // gpus - 1))


class BatchSource:
    """Deterministic batches through a ``torch.utils.data.DataLoader``: step k always yields the
    same batch (:class:`StepBatches`), so resume is exact and the worker count changes nothing.

    ``get(step)`` reads the loader's next item, restarting it at ``step`` when a run begins or
    resumes; workers decode and augment ahead (``prefetch`` batches each), pinned memory and a
    non-blocking copy overlap the host-to-GPU transfer with compute. Nothing here needs saving.
    """

    def __init__(self, dataset, batch_size: int, seed: int, device: torch.device, *,  # type: ignore[no-untyped-def]
                 workers: int = 0, prefetch: int = 2, rank: int = 0, world: int = 1,
                 channels_last: bool = False) -> None:
        if len(dataset) < 1:
            raise DmadError("dataset: no training images")
        self.dataset = dataset
        self.seed = seed
        self.device = device
        self.workers = default_workers(device) if workers < 0 else workers
        self.prefetch = max(1, prefetch)
        self.rank, self.world = rank, world
        self.channels_last = channels_last
        self.set_global_batch(batch_size * world)

    def set_global_batch(self, global_batch: int) -> None:
        """Use this global batch (e.g. a resumed run's, under another world size)."""
        self.steps = StepBatches(self.dataset, global_batch, self.seed, self.rank, self.world)
        self.global_batch = global_batch
        self.batch_size = self.steps.per_rank
        self.close()

    def close(self) -> None:
        self._it = None
        self._next = -1

    def _start(self, step: int) -> None:
        kw: dict = {}
        if self.workers > 0:
            kw = {"num_workers": self.workers, "prefetch_factor": self.prefetch,
                  "persistent_workers": False}
        loader = torch.utils.data.DataLoader(
            self.steps, batch_size=None, sampler=range(step, 2**62),
            pin_memory=self.device.type == "cuda", **kw)
        self._it = iter(loader)
        self._next = step

    def get(self, step: int) -> dict[str, torch.Tensor]:
        if self._it is None or step != self._next:
            self._start(step)
        b = next(self._it)  # type: ignore[call-overload]
        self._next = step + 1
        if "error" in b:
            raise DmadError(b["error"])
        if int(b["step"]) != step:
            raise RuntimeError(f"loader returned step {int(b['step'])} for step {step}")
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return {k: v.to(self.device, non_blocking=True, memory_format=fmt)
                for k, v in b.items() if isinstance(v, torch.Tensor) and v.dim() == 4}


def eval_loader(dataset, device: torch.device, workers: int = -1,  # type: ignore[no-untyped-def]
                limit: int | None = None):
    """Test-time items (tensors) of ``dataset`` in order through a DataLoader, decoded by
    workers ahead of the model (``workers = -1``: :func:`default_workers`); the first
    ``limit``."""
    count = len(dataset) if limit is None else min(limit, len(dataset))

    class _Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return count

        def __getitem__(self, i: int) -> dict:
            try:
                return {k: v for k, v in dataset.get(i, None).items()
                        if isinstance(v, torch.Tensor)}
            except DmadError as exc:
                return {"error": str(exc)}

    n = default_workers(device) if workers < 0 else workers
    loader = torch.utils.data.DataLoader(_Items(), batch_size=None, num_workers=n,
                                         pin_memory=device.type == "cuda")
    for item in loader:
        if "error" in item:
            raise DmadError(item["error"])
        yield item


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
    train, test = (open_dataset(data_root, task, split, transform, skip_bad,  # type: ignore[arg-type]
                                direction=direction)
                   for split, transform in (("train", TransformConfig(load_size, size, flip)),
                                            ("test", TransformConfig(size, size, False))))
    return train, test


def save_grid(rows: list[list[torch.Tensor]], path: Path,
              captions: list[str] | None = None) -> None:
    """Save rows of C×H×W images in [-1, 1] as one PNG (atomically), at full resolution, with
    a line of text under each row when ``captions`` are given."""
    if not rows:
        return
    from PIL import ImageDraw, ImageFont

    tiles = [[to_image(t.detach().cpu()) for t in row] for row in rows]
    w, h = tiles[0][0].size
    cols = max(len(r) for r in tiles)
    band = 16 if captions else 0
    grid = Image.new("RGB", (cols * w, len(tiles) * (h + band)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, row in enumerate(tiles):
        for j, im in enumerate(row):
            grid.paste(im, (j * w, i * (h + band)))
        if captions and i < len(captions):
            draw.text((4, i * (h + band) + h + 2), captions[i], fill=(0, 0, 0), font=font)
    with atomic_write(path) as fh:
        grid.save(fh, format="PNG")


def default_load_size(size: int) -> int:
    """CycleGAN's 286/256 resize-then-crop ratio."""
    return math.floor(size * 286 / 256 + 0.5)
