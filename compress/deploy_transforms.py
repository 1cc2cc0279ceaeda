"""Distilled deploy transforms: a pruned ResNet student rebuilt in a form that runs faster on a
phone, before its fine-tune, so distillation teaches it to live without what was removed.

Why: channel pruning shrinks the convolutions, not what every layer pays per pixel whatever its
width. On a narrow student the InstanceNorm statistics (a mean and a variance per channel and
image, then a subtract, a multiply and an add over the whole tensor: memory-bound passes XNNPACK
runs outside its convolutions) and the reflect padding (a copy of the tensor with its border
mirrored, where a zero border comes free inside the convolution) are a large share of the
latency (``scripts/deploy_transform_probe.py`` measures it). Neither is exact, so neither is
done after training: each is applied to the pruned student and the fine-tune distils the
teacher into the new form.

* ``fold-norms``: every InstanceNorm is replaced by its statistics averaged over training
  images, folded into the convolution before it (weights scaled per output channel, the bias
  shifted): the student starts as "InstanceNorm with typical statistics" and has no norm at run
  time. Exact on a single image whose statistics were the ones folded (the test checks it).
* ``zero-pad``: the residual blocks pad with zeros (inside the convolution) instead of
  reflecting; the weights are unchanged. The 7×7 stem and head keep their reflect padding.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from dmad.compress.errors import DmadError
from dmad.compress.models import ResnetGenerator

__all__ = ["DEPLOY_TRANSFORMS", "apply_deploy_transforms", "check_deploy", "fold_norms",
           "parse_deploy", "zero_padding"]

DEPLOY_TRANSFORMS = ("fold-norms", "zero-pad")


def parse_deploy(text: str) -> tuple[str, ...]:
    """``"fold-norms,zero-pad"`` → the transforms, checked (one clear line on a bad name)."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in DEPLOY_TRANSFORMS]
    if bad:
        raise DmadError(f"field deploy: {', '.join(bad)} not among "
                        f"{', '.join(DEPLOY_TRANSFORMS)}")
    return names


def _resnet(model: nn.Module, what: str) -> ResnetGenerator:
    if not isinstance(model, ResnetGenerator) or model.spec.separable:
        kind = "a separable ResNet" if isinstance(model, ResnetGenerator) else \
            type(model).__name__
        raise DmadError(f"field deploy: {what} applies to dmad's ResNet generators; this one "
                        f"is {kind}")
    return model


def check_deploy(model: nn.Module, names: tuple[str, ...]) -> None:
    """Refuse, before any training, transforms ``model``'s students cannot take."""
    for name in names:
        g = _resnet(model, name)
        if name == "fold-norms" and not g.spec.norm.startswith("instance"):
            why = "it has no norms left to fold" if g.spec.norm == "none" else \
                "BatchNorm folds exactly at export already"
            raise DmadError(f"field deploy: fold-norms folds InstanceNorm statistics; this "
                            f"generator's norm is {g.spec.norm!r} ({why})")


def _rebuilt(model: ResnetGenerator, **change: object) -> ResnetGenerator:
    out = ResnetGenerator(dataclasses.replace(model.spec, **change))  # type: ignore[arg-type]
    return out.to(next(model.parameters()).device).train(model.training)


def zero_padding(model: nn.Module) -> ResnetGenerator:
    """``model`` with zero padding in its residual blocks (the same weights)."""
    g = _resnet(model, "zero-pad")
    out = _rebuilt(g, padding="zero")
    out.load_state_dict(g.state_dict())
    return out


def _named_units(model: ResnetGenerator) -> list[tuple[str, nn.Module]]:
    """Every conv → InstanceNorm unit with its name, in forward order."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "conv")
            and isinstance(getattr(m, "norm", None), nn.InstanceNorm2d)]


@torch.no_grad()
def _norm_statistics(model: ResnetGenerator, images: torch.Tensor
                     ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per InstanceNorm: its input's per-channel mean and variance, averaged over the images
    (one image at a time, as the norm sees them)."""
    sums: dict[int, list[torch.Tensor]] = {}

    def hook(norm: nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        x = args[0].double()
        mean, var = x.mean(dim=(2, 3))[0], x.var(dim=(2, 3), unbiased=False)[0]
        got = sums.setdefault(id(norm), [torch.zeros_like(mean), torch.zeros_like(var)])
        got[0] += mean
        got[1] += var

    handles = [u.norm.register_forward_hook(hook) for _, u in _named_units(model)]
    was = model.training
    model.eval()
    p = next(model.parameters())
    try:
        for i in range(len(images)):
            model(images[i:i + 1].to(p.device, p.dtype))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    n = float(len(images))
    return {k: (v[0] / n, v[1] / n) for k, v in sums.items()}


@torch.no_grad()
def fold_norms(model: nn.Module, images: torch.Tensor) -> ResnetGenerator:
    """``model`` without norms: each InstanceNorm's statistics averaged over ``images``
    (N×C×H×W in [-1, 1]) folded into the convolution before it."""
    check_deploy(model, ("fold-norms",))
    g = _resnet(model, "fold-norms")
    if len(images) < 1:
        raise DmadError("field deploy: fold-norms needs training images for the statistics")
    stats = _norm_statistics(g, images)
    out = _rebuilt(g, norm="none", stream_affine=False)
    state = {k: v for k, v in g.state_dict().items() if ".norm." not in k}
    out.load_state_dict(state)
    new_units = dict(out.named_modules())
    for name, unit in _named_units(g):
        norm = unit.norm
        mean, var = stats[id(norm)]
        scale = 1.0 / torch.sqrt(var + norm.eps)
        gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(scale)
        beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(scale)
        conv = new_units[name].conv
        s = gamma * scale
        axis = 1 if isinstance(conv, nn.ConvTranspose2d) else 0
        shape = [1] * conv.weight.dim()
        shape[axis] = -1
        conv.weight.copy_((conv.weight.double() * s.view(shape)).to(conv.weight.dtype))
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(s)
        conv.bias.copy_(((bias - mean) * s + beta).to(conv.bias.dtype))
    return out


def apply_deploy_transforms(model: nn.Module, names: tuple[str, ...],
                            images: torch.Tensor | None) -> nn.Module:
    """``model`` with each named transform applied (norms folded first: their statistics are
    the ones the trained padding gave)."""
    if "fold-norms" in names:
        if images is None:
            raise DmadError("field deploy: fold-norms needs a folder of training images "
                            "(--images) for the norm statistics")
        model = fold_norms(model, images)
    if "zero-pad" in names:
        model = zero_padding(model)
    return model
