"""FID and KID of generated images, computed like pytorch-fid (the numbers DMAD reports).

The feature network is the InceptionV3 variant that pytorch-fid uses (``FIDInception``): the
torchvision ``Inception3`` trunk with the patched blocks that reproduce the TensorFlow graph the
original FID code ran (``pt_inception-2015-12-05`` weights). Its 2048-d pool3 activations feed

* the Fréchet distance between Gaussians fitted to real and fake activations (FID), and
* the unbiased polynomial-kernel MMD² averaged over random subsets (KID, Bińkowski et al. 2018,
  as clean-fid and torch-fidelity compute it).

The weights are never downloaded: :func:`load_inception` reads the file a user names, with
``weights_only=True``, and checks that its keys and shapes are exactly those of the network.

Image path. Generators output [-1, 1]. :meth:`FIDInception.features` first quantises to the
uint8 levels a saved PNG would hold, divides by 255 (what pytorch-fid's loader gives for an image
file), resizes to 299 x 299 bilinearly (``align_corners=False``) and scales to [-1, 1]. Rounding
(``quantize="round"``, the default) makes a real image that went uint8 -> [-1, 1] come back to
exactly its uint8 values, and matches :func:`compress.data.transforms.to_image`. DMAD's own
``util.tensor2imgs`` truncates instead (``clip(...).astype(uint8)``); ``quantize="floor"``
reproduces that bit for bit, quirk included: float error turns 63 of the 256 levels of a real
image into the level below.

Matrix square root without scipy. FID needs only ``tr sqrt(Σ1 Σ2)``. Σ1 Σ2 has the same
non-zero eigenvalues as the symmetric PSD matrix ``Σ1^½ Σ2 Σ1^½``, so the trace is the sum of
the square roots of that matrix's eigenvalues, computed with two symmetric eigendecompositions
(``numpy.linalg.eigh``, float64; the second one restricted to the range of Σ1). This is stable
for the singular covariances of fewer samples than dimensions, where scipy's general ``sqrtm``
of the non-symmetric product can fail or return complex values. On four test cases (D = 64 to
2048, N = 40 to 3000) it agreed with pytorch-fid's scipy formula to 1e-7 relative, and for
identical singular statistics it gives |FID| < 1e-10 where scipy gives -0.02. The eps·I
fallback of pytorch-fid is kept for an eigensolver that does not converge.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dmad.compress.errors import DmadError
from dmad.compress.io import safe_load

__all__ = [
    "FEATURE_DIM",
    "IGNORED_KEYS",
    "FIDInception",
    "activation_stats",
    "extract_features",
    "fid_kid",
    "frechet_distance",
    "kid",
    "load_inception",
    "load_real_stats",
    "quantize_images",
]

FEATURE_DIM = 2048
"""Width of the pool3 activations."""

IGNORED_KEYS = frozenset({"fc.weight", "fc.bias"})
"""Keys of the weights file that the pool3 features do not use (the 1008-class classifier)."""

INPUT_SIZE = 299
"""Side the images are resized to, as pytorch-fid does."""

Quantize = Literal["round", "floor", "none"]

# KID: below this many Gram-matrix entries (n1² + n2² + n1·n2 float64) the full kernel matrices
# are computed once and subsets are read out of them; above, each subset is computed directly.
_MAX_GRAM_ENTRIES = 12_000_000


# --------------------------------------------------------------------------------------------
# network


class BasicConv2d(nn.Module):
    """conv (no bias) + BatchNorm(eps=0.001) + ReLU: the unit of every Inception branch.

    eps=0.001 is TensorFlow's default, which the converted weights were trained with.
    """

    def __init__(self, cin: int, cout: int, **conv: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **conv)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_no_pad(x: torch.Tensor) -> torch.Tensor:
    """3x3/1 average pool that does not count padding, as TensorFlow's average pool does.

    This (``count_include_pad=False``) is the FID patch of blocks A, C and E_1; torchvision's
    stock blocks count the zeros and give different features at the borders.
    """
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """Mixed_5b/c/d: 1x1, 5x5, double 3x3 and pooled branches (64 + 64 + 96 + pool_features)."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_no_pad(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 -> 17 (384 + 96 + cin channels); same as torchvision's."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class FIDInceptionC(nn.Module):
    """Mixed_6b..6e: factorised 7x7 branches (4 x 192 = 768 channels)."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        h = {"kernel_size": (1, 7), "padding": (0, 3)}
        v = {"kernel_size": (7, 1), "padding": (3, 0)}
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **h)
        self.branch7x7_3 = BasicConv2d(c7, 192, **v)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **v)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **h)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **v)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **h)
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool_no_pad(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 -> 8 (320 + 192 + cin channels); same as torchvision's."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class FIDInceptionE(nn.Module):
    """Mixed_7b (``max_pool=False``) and Mixed_7c (``max_pool=True``): 2048 channels out.

    The FID graph pools Mixed_7b's last branch with an average pool that ignores padding
    (FIDInceptionE_1) and Mixed_7c's with a 3x3/1 max pool (FIDInceptionE_2), a quirk of the
    TensorFlow graph that the pool3 statistics of every published FID depend on.
    """

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool_no_pad(x)
        return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """InceptionV3 as pytorch-fid uses it for FID: images in [0, 1] -> 2048-d pool3 features.

    Module names equal torchvision's ``Inception3`` (without ``AuxLogits``), so the
    ``pt_inception-2015-12-05`` state dict loads key for key; its ``fc`` (1008 classes) is not
    part of this module because pool3 comes before it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, c7=128)
        self.Mixed_6c = FIDInceptionC(768, c7=160)
        self.Mixed_6d = FIDInceptionC(768, c7=160)
        self.Mixed_6e = FIDInceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        self.eval()

    @property
    def device(self) -> torch.device:
        """Where the weights are; input batches are moved here."""
        return next(self.parameters()).device

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """pool3 features (N, 2048) of images in [0, 1] (pytorch-fid's input convention)."""
        x = F.interpolate(x01, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                          align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 50,
                 quantize: Quantize = "round") -> torch.Tensor:
        """pool3 features (N, 2048, float32, CPU) of generator outputs in [-1, 1].

        Images are quantised to uint8 levels first (see :func:`quantize_images`) so that
        generated images are measured as the PNGs a user would save, and processed in batches of
        ``batch_size`` in eval mode (BatchNorm must use the stored statistics; the mode is
        restored afterwards).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        images = _as_batch(images)
        was_training = self.training
        self.eval()
        try:
            out = [self(quantize_images(images[i:i + batch_size].to(self.device), quantize))
                   .float().cpu() for i in range(0, images.shape[0], batch_size)]
        finally:
            self.train(was_training)
        if not out:
            return torch.empty(0, FEATURE_DIM)
        return torch.cat(out)


def _as_batch(images: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W float; a single C x H x W image gets a batch axis, grey becomes RGB.

    pytorch-fid converts every image file to RGB, so a one-channel image counts as three
    equal channels.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of images, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images N x 3 x H x W (or 1 channel), got shape "
                         f"{tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.float()


def quantize_images(images: torch.Tensor, mode: Quantize = "round") -> torch.Tensor:
    """[-1, 1] images -> [0, 1] on the 256 uint8 levels (``k / 255``), as a saved PNG holds.

    ``round`` rounds to the nearest level (exact inverse of ``u / 127.5 - 1``), ``floor``
    truncates like DMAD's ``tensor2imgs`` (float32 ``(x + 1) / 2 * 255``, clip, astype uint8),
    ``none`` only rescales. NaN counts as -1 (black), as in :func:`compress.data.transforms.
    to_image`.
    """
    x = torch.nan_to_num(images.float(), nan=-1.0)
    levels = ((x + 1) / 2 * 255).clamp(0, 255)
    if mode == "round":
        levels = levels.round()
    elif mode == "floor":
        levels = levels.floor()
    elif mode != "none":
        raise ValueError(f"quantize must be 'round', 'floor' or 'none', got {mode!r}")
    return levels / 255


# --------------------------------------------------------------------------------------------
# weights


def load_inception(path: str | os.PathLike[str],
                   device: str | torch.device = "cpu") -> FIDInception:
    """The FID network with the weights of ``path`` (``pt_inception-2015-12-05-*.pth``).

    The file is read with ``weights_only=True`` (no pickled code can run) and must hold exactly
    the network's tensors with the right shapes: a wrong file would otherwise give plausible but
    meaningless FIDs. ``fc.weight``/``fc.bias`` are accepted and ignored; ``num_batches_tracked``
    may be absent (files from old torch versions lack it and eval mode never reads it).
    """
    path = Path(path)
    state = safe_load(path)
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise DmadError(f"{path}: not an InceptionV3 FID state dict (expected a mapping of "
                        f"names to tensors, got {type(state).__name__})")
    with torch.device("meta"):  # shapes only: no time spent on a random init of 21.8 M weights
        model = FIDInception()
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    got = {k: v for k, v in state.items() if k not in IGNORED_KEYS}
    missing = sorted(k for k in expected if k not in got and k not in optional)
    unexpected = sorted(k for k in got if k not in expected)
    not_tensor = sorted(k for k, v in got.items() if k in expected
                        and not isinstance(v, torch.Tensor))
    wrong_shape = [f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
                   for k, v in got.items() if k in expected and isinstance(v, torch.Tensor)
                   and v.shape != expected[k].shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected),
                         ("not tensors", not_tensor), ("wrong shape", wrong_shape)):
        if items:
            problems.append(f"{len(items)} {label}, e.g. {', '.join(items[:3])}")
    if problems:
        raise DmadError(f"{path}: not the pt_inception-2015-12-05 FID weights ("
                        + "; ".join(problems) + ")")
    full = {k: (got[k].float() if got[k].is_floating_point() else got[k]) if k in got
            else torch.zeros((), dtype=torch.long) for k in expected}
    model.load_state_dict(full, strict=True, assign=True)
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# statistics


def activation_stats(feats: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N-1) covariance of features (N, D) in float64, as pytorch-fid."""
    x = _as_feats(feats, "feats")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {x.shape[0]}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _as_feats(feats: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """A float64 (N, D) array of finite numbers."""
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().cpu().double().numpy()
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return x


def _drop_round_off(lam: np.ndarray) -> np.ndarray:
    """Eigenvalues with those below ``D·eps·max|λ|`` set to 0 (round-off, not signal).

    A symmetric eigensolver only resolves eigenvalues to about that bound; below it the values
    are noise of either sign, and their square roots (~1e-8 of the largest root each, times
    the ~2000-dim null space of a covariance from fewer samples than dimensions) would bias
    the trace.
    """
    tol = lam.size * np.finfo(np.float64).eps * float(np.abs(lam).max(initial=0.0))
    return np.where(lam > tol, lam, 0.0)


def _check_psd(lam: np.ndarray, what: str) -> None:
    """Clearly negative eigenvalues: not a covariance (pytorch-fid: "Imaginary component")."""
    scale = max(float(np.abs(lam).max(initial=0.0)), np.finfo(np.float64).tiny)
    if lam.size and lam.min() < -1e-6 * scale:
        raise ValueError(f"covariances are not positive semi-definite (eigenvalue "
                         f"{lam.min():.3g} of {what}, largest {scale:.3g})")


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr sqrt(Σ1 Σ2)`` from symmetric eigendecompositions only.

    With ``Σ1 = V diag(w) Vᵀ`` and ``C = V_r diag(√w_r)`` over the r non-zero eigenvalues,
    ``Σ1 Σ2`` has the same non-zero eigenvalues as ``Σ1^½ Σ2 Σ1^½`` and as the r x r symmetric
    PSD ``K = Cᵀ Σ2 C``; the trace is the sum of their square roots. r is below the number of
    samples for the usual FID sets (fewer images than 2048 dimensions), which makes the second
    eigendecomposition small and keeps the null space's round-off out of the trace. Slightly
    negative eigenvalues from round-off are set to 0, the counterpart of pytorch-fid dropping
    tiny imaginary parts of ``sqrtm``; clearly negative ones raise ValueError.
    """
    w, v = np.linalg.eigh(sigma1)
    _check_psd(w, "sigma1")
    w = _drop_round_off(w)
    keep = w > 0
    c = v[:, keep] * np.sqrt(w[keep])
    k = c.T @ sigma2 @ c
    lam = np.linalg.eigvalsh((k + k.T) / 2)
    _check_psd(lam, "Σ1^½ Σ2 Σ1^½")
    return float(np.sqrt(_drop_round_off(lam)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance ``|μ1-μ2|² + tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^½)`` between two Gaussians.

    float64 throughout. If the eigensolver fails on a near-singular product, eps·I is added to
    both covariances and it is tried once more, as pytorch-fid does.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2,
                                                                                  np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2,
                                                                                   np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, "
                         f"sigma2 {s2.shape}")
    for name, arr in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} holds NaN or infinite values")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    try:
        tr_covmean = _trace_sqrt_product(s1, s2)
    except np.linalg.LinAlgError:
        tr_covmean = float("nan")
    if not np.isfinite(tr_covmean):
        offset = np.eye(d) * eps
        tr_covmean = _trace_sqrt_product(s1 + offset, s2 + offset)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def kid(feats1: np.ndarray | torch.Tensor, feats2: np.ndarray | torch.Tensor,
        subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: float | None = None, coef0: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std over ``subsets`` of the unbiased MMD².

    Kernel ``k(x, y) = (gamma x·y + coef0)^degree`` with ``gamma = 1/D`` by default, i.e.
    ``(x·y/D + 1)³``. Each subset draws ``m = min(subset_size, N1, N2)`` rows of each set
    without replacement (``numpy.random.RandomState(seed)``, first from ``feats1`` then from
    ``feats2``, as torch-fidelity) and computes
    ``Σ_{i≠j} k(x_i,x_j)/(m(m-1)) + Σ_{i≠j} k(y_i,y_j)/(m(m-1)) - 2 Σ_{i,j} k(x_i,y_j)/m²``.
    std is the population std (ddof=0) over subsets, as torch-fidelity reports it.
    """
    x, y = _as_feats(feats1, "feats1"), _as_feats(feats2, "feats2")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature widths differ: {x.shape[1]} vs {y.shape[1]}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got subset size {m}")
    g = 1.0 / x.shape[1] if gamma is None else float(gamma)

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (g * (a @ b.T) + coef0) ** degree

    n1, n2 = x.shape[0], y.shape[0]
    full = n1 * n1 + n2 * n2 + n1 * n2 <= min(_MAX_GRAM_ENTRIES, 3 * subsets * m * m)
    if full:
        kxx_all, kyy_all, kxy_all = kernel(x, x), kernel(y, y), kernel(x, y)
    rng = np.random.RandomState(seed)
    mmds = np.empty(subsets)
    for s in range(subsets):
        ix = rng.choice(n1, m, replace=False)
        iy = rng.choice(n2, m, replace=False)
        if full:
            kxx, kyy = kxx_all[np.ix_(ix, ix)], kyy_all[np.ix_(iy, iy)]
            kxy = kxy_all[np.ix_(ix, iy)]
        else:
            xs, ys = x[ix], y[iy]
            kxx, kyy, kxy = kernel(xs, xs), kernel(ys, ys), kernel(xs, ys)
        off_diag = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        mmds[s] = off_diag - 2.0 * kxy.sum() / (m * m)
    return float(mmds.mean()), float(mmds.std())


# --------------------------------------------------------------------------------------------
# convenience


def extract_features(images: Iterable[torch.Tensor] | torch.Tensor, inception: FIDInception,
                     batch_size: int = 50, quantize: Quantize = "round") -> np.ndarray:
    """float64 (N, 2048) pool3 features of a tensor or an iterable of [-1, 1] image batches.

    Each item may be N x C x H x W or one C x H x W image; sizes may differ between items
    (each is resized to 299 x 299).
    """
    if isinstance(images, torch.Tensor):
        images = [images]
    parts = [inception.features(batch, batch_size=batch_size, quantize=quantize)
             for batch in images]
    if not parts:
        return np.empty((0, FEATURE_DIM))
    return torch.cat(parts).double().numpy()


def fid_kid(real_images_iter: Iterable[torch.Tensor] | torch.Tensor,
            fake_images_iter: Iterable[torch.Tensor] | torch.Tensor,
            inception: FIDInception, *, batch_size: int = 50, quantize: Quantize = "round",
            kid_subsets: int = 100, kid_subset_size: int = 1000,
            seed: int = 0) -> dict[str, float | int]:
    """FID and KID between real and generated images (both in [-1, 1]).

    Returns ``{"fid", "kid_mean", "kid_std", "n_real", "n_fake"}``. Both sets go through the
    same quantisation, so a fake identical to its real image scores exactly like it.
    """
    feats = {}
    for name, images in (("real", real_images_iter), ("fake", fake_images_iter)):
        feats[name] = extract_features(images, inception, batch_size, quantize)
        if feats[name].shape[0] < 2:
            raise DmadError(f"FID/KID need at least 2 {name} images, got {feats[name].shape[0]}")
    real, fake = feats["real"], feats["fake"]
    mu_r, sigma_r = activation_stats(real)
    mu_f, sigma_f = activation_stats(fake)
    kid_mean, kid_std = kid(real, fake, subsets=kid_subsets, subset_size=kid_subset_size,
                            seed=seed)
    return {"fid": frechet_distance(mu_r, sigma_r, mu_f, sigma_f), "kid_mean": kid_mean,
            "kid_std": kid_std, "n_real": int(real.shape[0]), "n_fake": int(fake.shape[0])}


def load_real_stats(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` from a pytorch-fid / DMAD ``.npz`` statistics file (float64).

    Read with ``allow_pickle=False`` (an npz can otherwise carry pickled objects); a missing
    file, missing arrays or inconsistent shapes give a one-line DmadError.
    """
    path = Path(path)
    if not path.is_file():
        raise DmadError(f"{path}: no such file" if not path.exists() else
                        f"{path}: is not a file, expected a .npz of FID statistics")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data.files or "sigma" not in data.files:
                raise DmadError(f"{path}: FID statistics need arrays 'mu' and 'sigma', found "
                                f"{sorted(data.files) or 'none'}")
            mu, sigma = data["mu"], data["sigma"]
    except DmadError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DmadError(f"{path}: not a readable .npz of FID statistics ({msg})") from None
    if mu.dtype.kind not in "fiu" or sigma.dtype.kind not in "fiu":
        raise DmadError(f"{path}: 'mu' and 'sigma' must be numeric arrays")
    mu, sigma = mu.astype(np.float64).reshape(-1), np.atleast_2d(sigma.astype(np.float64))
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise DmadError(f"{path}: 'sigma' has shape {sigma.shape}, expected ({d}, {d}) to match "
                        f"'mu'")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DmadError(f"{path}: FID statistics hold NaN or infinite values")
    return mu, sigma


# --------------------------------------------------------------------------------------------
# statistics files (``dmad fid-stats``)


def folder_features(folder: str | os.PathLike[str], inception: FIDInception,
                    batch_size: int = 50) -> tuple[np.ndarray, list[str]]:
    """Pool3 features of every image in ``folder`` at its own size (the network resizes to
    299², as pytorch-fid does), and the file names in order."""
    from dmad.compress.data.images import list_images, load_rgb

    folder = Path(folder)
    if not folder.is_dir():
        raise DmadError(f"{folder}: " + ("no such folder" if not folder.exists()
                                         else "is a file, expected a folder of images"))
    paths = list_images(folder)
    if len(paths) < 2:
        raise DmadError(f"{folder}: FID statistics need at least 2 images, found {len(paths)}")

    def images() -> Iterator[torch.Tensor]:
        for p in paths:
            a = np.asarray(load_rgb(p), np.float32) / 127.5 - 1.0
            yield torch.from_numpy(a.transpose(2, 0, 1).copy())

    return extract_features(images(), inception, batch_size), [p.name for p in paths]


def save_real_stats(path: str | os.PathLike[str], feats: np.ndarray,
                    protocol: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``mu``/``sigma`` of ``feats`` written atomically as a pytorch-fid-compatible ``.npz``,
    with the protocol (which images, how many, which weights) as a JSON string beside them."""
    import json

    from dmad.compress.io import atomic_write

    mu, sigma = activation_stats(feats)
    with atomic_write(path) as fh:
        np.savez(fh, mu=mu, sigma=sigma, protocol=np.array(json.dumps(protocol)))
    return mu, sigma


def stats_protocol(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The protocol a ``dmad fid-stats`` file records (None for other files, e.g. pytorch-fid's
    or DMAD's own statistics)."""
    import json

    try:
        with np.load(Path(path), allow_pickle=False) as data:
            if "protocol" not in data.files:
                return None
            return dict(json.loads(str(data["protocol"])))
    except (OSError, ValueError, zipfile.BadZipFile, json.JSONDecodeError):
        return None


def fid_against_stats(images: Iterable[torch.Tensor] | torch.Tensor, inception: FIDInception,
                      mu: np.ndarray, sigma: np.ndarray, batch_size: int = 50) -> float:
    """FID of generated images against precomputed real statistics (the papers' protocol)."""
    feats = extract_features(images, inception, batch_size)
    if feats.shape[0] < 2:
        raise DmadError(f"FID needs at least 2 generated images, got {feats.shape[0]}")
    if mu.shape[0] != feats.shape[1]:
        raise DmadError(f"FID statistics have {mu.shape[0]} features, the network gives "
                        f"{feats.shape[1]}")
    m, s = activation_stats(feats)
    return frechet_distance(mu, sigma, m, s)
