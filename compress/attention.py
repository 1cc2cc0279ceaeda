"""Co-attention distillation: attention maps, feature taps by position, and the losses.

Attention map A(F) = channel mean of F² (B×1×H×W), so student and teacher never need equal
channel counts. Maps are compared after per-sample L2 normalisation with mean squared error.
Taps are chosen by *position* in the network, never by module index, so a student whose residual
blocks were removed (they stay in place as identities) taps the same depths as its teacher
(method §7.3). Maps at different resolutions are matched by per-sample area pooling (method §7.4
fixed: DMAD resized only sample 0 through uint8).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from dmad.compress.models import PatchDiscriminator, ResnetGenerator, UnetGenerator


def attention_map(feat: torch.Tensor) -> torch.Tensor:
    """A(F) = mean over channels of F², shape B×1×H×W."""
    return feat.pow(2).mean(1, keepdim=True)


def normalize_map(a: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample L2 normalisation of a map over all its pixels."""
    flat = a.flatten(1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(eps)).view_as(a)


def resize_map(a: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-sample area pooling (or bilinear upsampling) of a map to ``size``."""
    if tuple(a.shape[-2:]) == tuple(size):
        return a
    if a.shape[-2] >= size[0] and a.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(a, size)
    return F.interpolate(a, size=size, mode="bilinear", align_corners=False)


def attention_loss(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the normalised student map and the normalised target map (at student size)."""
    t = normalize_map(resize_map(target, tuple(student.shape[-2:])))
    return F.mse_loss(normalize_map(student), t)


class InputOf:
    """A tap on what ``module`` receives (its first input) rather than what it returns: a
    traced generator's residual stream is an addition, not a module, so it is read where the
    next layer takes it in."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module


def generator_taps(model: nn.Module) -> dict[str, nn.Module | InputOf]:
    """Feature taps by position. ResNet: after the downsampling stem, then after the residual
    blocks at 1/3, 2/3 and 3/3 of the depth (removed blocks are identities in place, so the same
    positions exist in teacher and student). UNet: the normed outputs of the second and fourth
    down blocks and of the fifth and third up blocks (DMAD's four taps)."""
    if isinstance(model, ResnetGenerator):
        taps: dict[str, nn.Module] = {"stem": model.down2}
        n = len(model.blocks)
        for frac in (1, 2, 3):
            k = math.ceil(frac * n / 3)
            if k >= 1:
                taps[f"block{k}"] = model.blocks[k - 1]
        return taps
    if isinstance(model, UnetGenerator):
        n = model.spec.num_downs
        out = {"down1": model.downs[1].norm, "down3": model.downs[min(3, n - 2)].norm,
               f"up{min(4, n - 2)}": model.up_block(min(4, n - 2)).norm,
               "up2": model.up_block(2).norm}
        return out
    if getattr(getattr(model, "spec", None), "family", None) == "graph":
        from dmad.compress.graph_model import graph_taps

        return dict(graph_taps(model))
    raise TypeError(f"no attention taps for {type(model).__name__}")


def discriminator_taps(d: PatchDiscriminator) -> tuple[nn.Module, nn.Module]:
    """(attention tap, last hidden activation): D's first normed hidden activation
    (``model.4``, input/4 resolution like the ResNet taps) and the layer before the output conv."""
    return d.model[4], d.model[len(d.model) - 2]


class Recorder:
    """Forward hooks that record module outputs (in call order) until :meth:`clear`."""

    def __init__(self, modules: dict[str, nn.Module] | dict[str, nn.Module | InputOf]) -> None:
        self.out: dict[str, list[torch.Tensor]] = {k: [] for k in modules}
        self.active = True
        self._handles = [m.module.register_forward_pre_hook(self._pre_hook(k))
                         if isinstance(m, InputOf) else m.register_forward_hook(self._hook(k))
                         for k, m in modules.items()]

    def _hook(self, key: str):  # type: ignore[no-untyped-def]
        def fn(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            if self.active:
                self.out[key].append(out)
        return fn

    def _pre_hook(self, key: str):  # type: ignore[no-untyped-def]
        def fn(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if self.active:
                self.out[key].append(args[0])
        return fn

    def clear(self) -> None:
        for v in self.out.values():
            v.clear()

    def first(self) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.out.items() if v}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@contextmanager
def recording(modules: dict[str, nn.Module] | dict[str, nn.Module | InputOf]
              ) -> Iterator[Recorder]:
    rec = Recorder(modules)
    try:
        yield rec
    finally:
        rec.remove()


def co_attention_loss(student_feats: dict[str, torch.Tensor],
                      teacher_feats: dict[str, torch.Tensor],
                      d_map: torch.Tensor | None) -> torch.Tensor:
    """Σ over taps of MSE(norm(A_student), norm(target)); target = 0.5·norm(A_teacherG) +
    0.5·norm(A_teacherD) with the D map resized to each tap (G-only mode: d_map None → the
    teacher G map alone). Each map is normalised before mixing so the 0.5/0.5 weights mean
    equal shares whatever the feature magnitudes. Targets are detached."""
    total = torch.zeros((), device=next(iter(student_feats.values())).device)
    for k, fs in student_feats.items():
        a_s = attention_map(fs)
        size = tuple(a_s.shape[-2:])
        t = normalize_map(resize_map(attention_map(teacher_feats[k].detach()), size))
        if d_map is not None:
            t = 0.5 * t + 0.5 * normalize_map(resize_map(d_map.detach(), size))
        total = total + attention_loss(a_s, t.detach())
    return total


def d_feature_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """DMAD's D-feature term: the un-squared L2 norm of the difference of the teacher D's last
    hidden features on the student's and on the teacher's outputs, per sample, averaged over the
    batch (method §4.3).

    Why this form: DMAD's weight 1e-4 belongs to an un-squared norm, whose gradient has unit
    length whatever the feature-map size; a mean squared error under the same weight is
    2·‖d‖/N weaker (N = C·H·W elements, ~350-3000x at 256²), which switched the term off. The
    per-sample mean equals DMAD's whole-batch norm at its batch size 1 and, unlike it, does not
    grow with the batch (§7.6)."""
    diff = (student_hidden - teacher_hidden.detach()).flatten(1)
    return torch.linalg.vector_norm(diff, dim=1).mean()
