"""Data for dmad: image validation, the original CycleGAN/Pix2Pix preprocessing, datasets, and
the embedded default dataset (so a run needs no download)."""

from dmad.compress.data.datasets import (
    AlignedDataset,
    FolderDataset,
    Item,
    UnalignedDataset,
    batch,
    open_dataset,
)
from dmad.compress.data.default import make_default_dataset
from dmad.compress.data.images import IMG_EXTENSIONS, BadImageError, list_images, load_rgb, scan
from dmad.compress.data.transforms import (
    CropFlip,
    TransformConfig,
    apply,
    draw_params,
    to_image,
    to_tensor,
)

__all__ = [
    "IMG_EXTENSIONS",
    "AlignedDataset",
    "BadImageError",
    "CropFlip",
    "FolderDataset",
    "Item",
    "TransformConfig",
    "UnalignedDataset",
    "apply",
    "batch",
    "draw_params",
    "list_images",
    "load_rgb",
    "make_default_dataset",
    "open_dataset",
    "scan",
    "to_image",
    "to_tensor",
]
