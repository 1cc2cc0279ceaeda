"""Input augmentation for teacher-G-only distillation: the teacher labels whatever it is shown.

A student distilled from a generator alone needs no target images, so its inputs can be varied
freely: colour and exposure jitter, zoom and rotation, and mixing of two photographs (a
rectangle of one pasted into another). Each widens the inputs the student sees beyond the crops
of a few photographs; each also moves them away from the photographs the generator will meet,
so none is on by default without a measurement saying it helps (``docs/results.md``).

Applied on the batch tensor (on its device) with parameters drawn from a generator seeded by
``(seed, step)``: a resumed run draws the same augmentation, and the loader is unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dmad.compress.errors import DmadError

KINDS = ("colour", "exposure", "zoom", "rotate", "mix")


def parse_kinds(text: str, field: str = "augment") -> tuple[str, ...]:
    """``"colour,zoom"`` → ``("colour", "zoom")``; ``""``/``"none"`` → ``()``."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip() and k.strip() != "none")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise DmadError(f"field {field}: {', '.join(bad)} not one of {', '.join(KINDS)}")
    return kinds


def _u(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def _photometric(x: torch.Tensor, kinds: tuple[str, ...], gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    img = (x + 1) / 2  # [0, 1]
    bright, contrast, sat = _u(gen, n, -0.1, 0.1), _u(gen, n, 0.8, 1.25), _u(gen, n, 0.7, 1.3)
    gamma = torch.exp(_u(gen, n, math.log(0.7), math.log(1.4)))
    shape = (n, 1, 1, 1)
    if "colour" in kinds:
        grey = img.mean(1, keepdim=True)
        img = grey + (img - grey) * sat.view(shape).to(img)
        mean = img.mean((1, 2, 3), keepdim=True)
        img = mean + (img - mean) * contrast.view(shape).to(img) + bright.view(shape).to(img)
    if "exposure" in kinds:
        img = img.clamp(0, 1) ** gamma.view(shape).to(img)
    return img.clamp(0, 1) * 2 - 1


def _geometric(x: torch.Tensor, kinds: tuple[str, ...], gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    angle = _u(gen, n, -15.0, 15.0) * math.pi / 180 if "rotate" in kinds else torch.zeros(n)
    zoom = torch.exp(_u(gen, n, math.log(0.7), math.log(1.4))) if "zoom" in kinds else \
        torch.ones(n)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(n)], 1),
                         torch.stack([sin, cos, torch.zeros(n)], 1)], 1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def _mix(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Paste a random rectangle (a quarter to half of each side) of the next image in the
    batch into each image (CutMix without labels: the teacher labels the result)."""
    n, _, h, w = x.shape
    if n < 2:
        return x
    out = x.clone()
    for i in range(n):
        rh = int(h * float(_u(gen, 1, 0.25, 0.5)))
        rw = int(w * float(_u(gen, 1, 0.25, 0.5)))
        y0 = int(torch.randint(0, h - rh + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, w - rw + 1, (1,), generator=gen))
        out[i, :, y0:y0 + rh, x0:x0 + rw] = x[(i + 1) % n, :, y0:y0 + rh, x0:x0 + rw]
    return out


def augment_inputs(x: torch.Tensor, kinds: tuple[str, ...], seed: int) -> torch.Tensor:
    """The batch ``x`` (N×C×H×W in [-1, 1]) with the ``kinds`` of augmentation applied, their
    parameters drawn from ``seed`` alone."""
    if not kinds:
        return x
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if {"colour", "exposure"} & set(kinds):
            x = _photometric(x, kinds, gen)
        if {"zoom", "rotate"} & set(kinds):
            x = _geometric(x, kinds, gen)
        if "mix" in kinds:
            x = _mix(x, gen)
    return x
