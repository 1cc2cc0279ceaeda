"""Preprocessing as in the original pytorch-CycleGAN-and-pix2pix recipes.

Train time (``resize_and_crop``): resize to ``load_size`` x ``load_size`` (bicubic), random crop
of ``crop_size``, random horizontal flip; test time: resize straight to ``crop_size`` (the
original test options set ``load_size = crop_size``, which makes the crop a no-op). Tensors are
float32 C x H x W in [-1, 1], i.e. ``(x / 255 - 0.5) / 0.5`` as ``ToTensor`` + ``Normalize``.

The random choices are split from their application: :func:`draw_params` draws a crop position
and flip from an explicit ``torch.Generator`` (never the global RNG or ``random``), and
:func:`apply` applies them. So a run resumed at step k with the saved generator state draws
exactly the same batches, and the two halves of an aligned pair get the same crop and flip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from dmad.compress.errors import DmadError


@dataclass(frozen=True)
class TransformConfig:
    """Sizes of the preprocessing: resize to ``load_size``, then crop ``crop_size``."""

    load_size: int
    crop_size: int
    flip: bool = True
    #: multi-scale crops: > 0 = the image's short side is drawn in [crop_size, scale_max]
    #: (aspect kept) before the random crop, instead of the resize to load_size²
    scale_max: int = 0

    def __post_init__(self) -> None:
        for name in ("load_size", "crop_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DmadError(f"{name}: must be a positive integer, got {value!r}")
        if self.scale_max and self.scale_max < self.crop_size:
            raise DmadError(f"scale_max: {self.scale_max} is smaller than the crop "
                            f"({self.crop_size})")
        if self.crop_size > self.load_size:
            raise DmadError(
                f"crop_size: {self.crop_size} is larger than load_size {self.load_size} "
                "(the crop is cut from the image resized to load_size)"
            )


@dataclass(frozen=True)
class CropFlip:
    """One draw of the train-time augmentation: crop corner (x, y) and whether to flip."""

    x: int
    y: int
    flip: bool


@dataclass(frozen=True)
class ScaleCropFlip:
    """One draw of the multi-scale augmentation: short side, crop position as fractions of the
    room left (so the draw does not depend on the image's size), flip."""

    short: int
    u: float
    v: float
    flip: bool


def draw_params(cfg: TransformConfig, gen: torch.Generator) -> CropFlip | ScaleCropFlip:
    """Draw a crop corner (or a scale and a position) and flip from ``gen`` (and only from it).

    The flip coin is drawn even when ``cfg.flip`` is off, so the generator advances by the same
    amount per image whatever the flip setting.
    """
    if cfg.scale_max:
        short = int(torch.randint(cfg.crop_size, cfg.scale_max + 1, (1,), generator=gen).item())
        u, v, coin = (float(t) for t in torch.rand(3, generator=gen, dtype=torch.float64))
        return ScaleCropFlip(short=short, u=u, v=v, flip=coin < 0.5 and cfg.flip)
    span = cfg.load_size - cfg.crop_size + 1
    x = int(torch.randint(0, span, (1,), generator=gen).item())
    y = int(torch.randint(0, span, (1,), generator=gen).item())
    coin = bool(torch.rand(1, generator=gen).item() < 0.5)
    return CropFlip(x=x, y=y, flip=coin and cfg.flip)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 3 x H x W tensor in [-1, 1] (``ToTensor`` then ``Normalize``)."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
    return t.to(torch.float32).div(255).sub(0.5).div(0.5)


def to_image(tensor: torch.Tensor) -> Image.Image:
    """3 x H x W (or 1 x 3 x H x W) tensor in [-1, 1] -> uint8 RGB PIL image, for saving outputs.

    Values are clamped and rounded (not truncated as the original ``tensor2im``), so
    ``to_image(to_tensor(img))`` gives back ``img`` exactly; NaN becomes black.
    """
    t = tensor.detach().to("cpu", torch.float32)
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"to_image expects a 3 x H x W tensor, got shape {tuple(tensor.shape)}")
    t = torch.nan_to_num(t, nan=-1.0).clamp(-1.0, 1.0)
    arr = ((t + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(arr)


def _scale_crop(img: Image.Image, crop: int, p: ScaleCropFlip) -> Image.Image:
    w, h = img.size
    s = p.short / min(w, h)
    size = (max(crop, round(w * s)), max(crop, round(h * s)))
    out = img if img.size == size else img.resize(size, Image.Resampling.BICUBIC)
    x = int(p.u * (size[0] - crop + 1))
    y = int(p.v * (size[1] - crop + 1))
    return out.crop((x, y, x + crop, y + crop))


def apply(img: Image.Image, cfg: TransformConfig,
          params: CropFlip | ScaleCropFlip | None) -> torch.Tensor:
    """Preprocess one image: train-time with ``params``, test-time (resize only) with None."""
    if params is None:
        size = (cfg.crop_size, cfg.crop_size)
        out = img if img.size == size else img.resize(size, Image.Resampling.BICUBIC)
        return to_tensor(out)
    if isinstance(params, ScaleCropFlip):
        out = _scale_crop(img, cfg.crop_size, params)
        if params.flip:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(out)
    if not (0 <= params.x <= cfg.load_size - cfg.crop_size) or not (
        0 <= params.y <= cfg.load_size - cfg.crop_size
    ):
        raise ValueError(f"crop corner {params} does not fit {cfg}")
    size = (cfg.load_size, cfg.load_size)
    out = img if img.size == size else img.resize(size, Image.Resampling.BICUBIC)
    out = out.crop((params.x, params.y, params.x + cfg.crop_size, params.y + cfg.crop_size))
    if params.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_tensor(out)
