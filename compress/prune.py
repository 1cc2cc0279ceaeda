"""Prune a masked (searched) generator into the thin dense model it describes (method spec §3).

:func:`prune` builds the *same* generator class with the surviving widths
(:func:`compress.groups.widths_from_masks`) and copies the kept weights, so that the dense model's
output equals the masked model's (eval mode). Beyond DMAD's slicing rules, a few things are needed
for that equality to be exact with every norm the specs allow:

* Residual-stream writers (``down2``, every kept block's ``conv2``) output the stream union U;
  rows of U that a writer's own mask has off get zero weights, zero bias and a zero norm affine
  (BatchNorm/affine InstanceNorm would otherwise turn the zero map into a constant).
* Layers forced up to width 1 with nothing kept get the same all-zero treatment: the masked model
  outputs 0 there, and so does the pruned one.
* A removed block (conv1 mask empty) is an Identity in the pruned model, but in the masked model
  it still adds ``mask2 · norm2(conv2(0))`` to the stream — 0 with plain InstanceNorm, a
  per-channel constant with BatchNorm, affine InstanceNorm or no norm. That constant is folded
  into the conv2 output of the preceding kept block (exact), or, for removed blocks before the
  first kept block, into the first kept block (exact with reflect padding, where a constant
  input shift through conv1 is a constant). Where no exact fold exists (zero padding, or no kept
  block at all) an :class:`InexactPruneWarning` is emitted.
* A writer mask frozen mid-band carries its mask values as ``mask.scale`` (the search's exact
  freeze, :func:`compress.train.search.hold_scale`). After an affine-free InstanceNorm the pruned
  model is built with ``stream_affine`` (affine writer norms) and takes them as γ (β = 0);
  with an affine norm they multiply γ and β, with no norm the conv's output filters.
  Any other mask with a carried scale is refused (the search folds those into weights).
* Separable convs: a pruned-away input channel is 0, but the depthwise bias turns it into a
  constant that the pointwise conv mixes into every output; that constant is folded into the
  pointwise bias.

"Exact" means in real arithmetic. When masks cut the image path (e.g. the stem all off), the
masked model runs InstanceNorm on spatially constant maps: exactly 0 in real arithmetic, but in
floating point the rounding noise of the mean is amplified by 1/sqrt(eps) ≈ 316 per norm, so
the masked model's output is amplified rounding noise (~1e-5 in float64, O(1) in float32) that
even changes under mathematically neutral edits of the masked model. The pruned model computes
the same real-arithmetic function; it cannot (and does not try to) reproduce that noise, and no
warning is emitted for it.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dmad.compress.arch import profile_spec
from dmad.compress.graph_cost import stream_writers
from dmad.compress.groups import residual_keep, widths_from_masks
from dmad.compress.masks import ChannelMask, MaskedNorm, find_masks
from dmad.compress.models import ResnetBlock, ResnetGenerator, ResnetSpec, UnetGenerator, build
from dmad.compress.models.layers import SeparableConv2d

__all__ = ["InexactPruneWarning", "prune", "prune_search_file", "zero_filter_report"]


class InexactPruneWarning(UserWarning):
    """The pruned model cannot reproduce the masked model exactly (see module docstring)."""


# --------------------------------------------------------------------------- index helpers


@dataclasses.dataclass(frozen=True)
class _Sel:
    """Kept source indices and the pruned width (``max(len(idx), 1)``, or the full width)."""

    idx: Tensor
    size: int

    @property
    def n(self) -> int:
        return int(self.idx.numel())


def _sel_of(keep: Tensor) -> _Sel:
    idx = torch.nonzero(keep.detach().cpu()).flatten()
    return _Sel(idx, max(int(idx.numel()), 1))


def _all(n: int) -> _Sel:
    return _Sel(torch.arange(n), n)


def _take(t: Tensor, dim: int, sel: _Sel, offset: int = 0) -> Tensor:
    """``t`` restricted to ``sel`` along ``dim`` (source offset ``offset``), zero-padded to
    ``sel.size`` (the forced single channel of an empty layer)."""
    out = t.index_select(dim, (sel.idx + offset).to(t.device))
    missing = sel.size - sel.n
    if missing > 0:
        shape = list(out.shape)
        shape[dim] = missing
        out = torch.cat([out, out.new_zeros(shape)], dim)
    return out


def _take_cat(t: Tensor, dim: int, parts: list[tuple[_Sel, int]]) -> Tensor:
    """Concatenated input: each (selection, full width of that part) in order."""
    pieces, off = [], 0
    for sel, full in parts:
        pieces.append(_take(t, dim, sel, off))
        off += full
    return torch.cat(pieces, dim)


def _set(dst: Tensor, value: Tensor) -> None:
    if dst.shape != value.shape:
        raise RuntimeError(
            f"pruning produced shape {tuple(value.shape)}, model has {tuple(dst.shape)}"
        )
    dst.copy_(value)


# --------------------------------------------------------------------------- layer copies


def _copy_conv(
    src: nn.Module, dst: nn.Module, out: _Sel, inp: _Sel | list[tuple[_Sel, int]]
) -> None:
    """Dense conv or ConvTranspose: weight sliced [out, in] (ConvT stores [in, out])."""
    assert isinstance(src, nn.Conv2d | nn.ConvTranspose2d)
    assert isinstance(dst, nn.Conv2d | nn.ConvTranspose2d)
    o_dim, i_dim = (1, 0) if isinstance(src, nn.ConvTranspose2d) else (0, 1)
    w = _take(src.weight, o_dim, out)
    w = _take_cat(w, i_dim, inp) if isinstance(inp, list) else _take(w, i_dim, inp)
    _set(dst.weight, w)
    if src.bias is not None and dst.bias is not None:
        _set(dst.bias, _take(src.bias, 0, out))


def _copy_norm(src: nn.Module, dst: nn.Module, out: _Sel) -> None:
    """Affine params and running stats sliced by the kept outputs; padded rows get a zero
    affine (so a forced all-zero channel stays 0) and unit variance."""
    if isinstance(src, MaskedNorm):
        src = src.norm
    if isinstance(src, nn.BatchNorm2d | nn.InstanceNorm2d):
        assert type(dst) is type(src)
        if src.weight is not None:
            _set(dst.weight, _take(src.weight, 0, out))
            _set(dst.bias, _take(src.bias, 0, out))
        if src.running_mean is not None:
            _set(dst.running_mean, _take(src.running_mean, 0, out))
            var = _take(src.running_var, 0, out)
            var[out.n :] = 1.0
            _set(dst.running_var, var)
            dst.num_batches_tracked.copy_(src.num_batches_tracked)


def _norm_const(norm: nn.Module, c: Tensor) -> Tensor:
    """Eval-mode output of ``norm`` on a spatially constant map of per-channel value ``c``."""
    if isinstance(norm, MaskedNorm):
        return norm.mask.value() * _norm_const(norm.norm, c)
    if isinstance(norm, nn.BatchNorm2d):
        y = (c - norm.running_mean) * torch.rsqrt(norm.running_var + norm.eps)
        return y * norm.weight + norm.bias if norm.affine else y
    if isinstance(norm, nn.InstanceNorm2d):  # (c - mean) = 0
        return norm.bias.detach().clone() if norm.affine else torch.zeros_like(c)
    if isinstance(norm, nn.Identity):
        return c
    raise TypeError(f"unexpected norm {type(norm).__name__}")


def _zero_input_out(conv: nn.Module, out_ch: int, like: Tensor) -> Tensor:
    """Output of a (dense or separable) conv on an all-zero input: a per-channel constant."""
    if isinstance(conv, SeparableConv2d):
        v = _norm_const(conv.norm, conv.depthwise.bias)
        return conv.pointwise.weight[:, :, 0, 0] @ v + conv.pointwise.bias
    if conv.bias is not None:
        return conv.bias.detach().clone()
    return like.new_zeros(out_ch)


def _copy_unit_conv(src: nn.Module, dst: nn.Module, out: _Sel, inp: _Sel) -> None:
    """A ResNet block conv: dense, or separable (depthwise by ``inp``, pointwise [out, inp]).

    Separable: dropped input channels are 0 in the masked model, yet the depthwise bias makes
    them a constant that the pointwise mixes in; that constant goes into the pointwise bias."""
    if not isinstance(src, SeparableConv2d):
        _copy_conv(src, dst, out, inp)
        return
    assert isinstance(dst, SeparableConv2d)
    _set(dst.depthwise.weight, _take(src.depthwise.weight, 0, inp))
    _set(dst.depthwise.bias, _take(src.depthwise.bias, 0, inp))
    _copy_norm(src.norm, dst.norm, inp)
    _copy_conv(src.pointwise, dst.pointwise, out, inp)
    dropped = torch.ones(src.depthwise.in_channels, dtype=torch.bool)
    dropped[inp.idx] = False
    if dropped.any():
        v = _norm_const(src.norm, src.depthwise.bias) * dropped.to(src.depthwise.bias)
        delta = src.pointwise.weight[:, :, 0, 0] @ v
        dst.pointwise.bias.add_(_take(delta, 0, out))


def _out_params(conv: nn.Module) -> tuple[Tensor, Tensor | None]:
    """(weight rows by output channel, bias) of the layer producing a unit's output."""
    if isinstance(conv, SeparableConv2d):
        return conv.pointwise.weight, conv.pointwise.bias
    assert isinstance(conv, nn.Conv2d)
    return conv.weight, conv.bias


def _zero_rows(unit: nn.Module, rows: Tensor) -> None:
    """Make output channels ``rows`` (bool, pruned coords) of a conv unit exactly 0."""
    if not rows.any():
        return
    rows = rows.to(next(unit.parameters()).device)
    w, b = _out_params(unit.conv)
    w[rows] = 0.0
    if b is not None:
        b[rows] = 0.0
    norm = unit.norm
    if isinstance(norm, nn.BatchNorm2d | nn.InstanceNorm2d) and norm.affine:
        norm.weight[rows] = 0.0
        norm.bias[rows] = 0.0


def _add_to_output(unit: nn.Module, k: Tensor) -> None:
    """Add the per-channel constant ``k`` (pruned coords) to a block conv2 unit's output."""
    norm = unit.norm
    if isinstance(norm, nn.BatchNorm2d | nn.InstanceNorm2d) and norm.affine:
        norm.bias.add_(k)
    elif isinstance(norm, nn.Identity):
        b = _out_params(unit.conv)[1]
        assert b is not None  # norm "none" ⇒ convs carry a bias
        b.add_(k)
    elif bool(k.abs().max() > 0):  # plain InstanceNorm: constants are 0 by construction
        warnings.warn(
            "cannot fold a removed block's constant output after a plain "
            "InstanceNorm; the pruned model is not exact",
            InexactPruneWarning,
            stacklevel=4,
        )


def _shift_input(unit: nn.Module, k: Tensor) -> None:
    """Make a block conv1 unit behave as if its input were shifted by the constant ``k``
    (exact with reflect padding: the padded shifted map is still constant)."""
    conv = unit.conv
    if isinstance(conv, SeparableConv2d):
        conv.depthwise.bias.add_(k * conv.depthwise.weight.sum((1, 2, 3)))
        return
    delta = conv.weight.sum((2, 3)) @ k
    if conv.bias is not None:
        conv.bias.add_(delta)
    elif isinstance(unit.norm, nn.BatchNorm2d):
        unit.norm.running_mean.sub_(delta)
    # else: plain InstanceNorm without conv bias cancels a constant shift anyway


# --------------------------------------------------------------------------- families


def _carried(masks: Mapping[str, ChannelMask], spec: ResnetSpec) -> bool:
    """Whether any writer mask carries a scale; refuses a carried scale anywhere else."""
    writers = set(stream_writers(spec))
    off = [n for n, m in masks.items() if n not in writers and bool((m.scale != 1).any())]
    if off:
        raise ValueError(f"masks {', '.join(off)} carry a scale; only residual-stream writers "
                         "may (the search folds the others into weights)")
    return any(bool((m.scale != 1).any()) for m in masks.values())


def _scale_rows(unit: nn.Module, s: Tensor) -> None:
    """Multiply a writer unit's output channels (pruned coords) by ``s`` inside its weights."""
    if bool((s == 1).all()):
        return
    norm = unit.norm
    if isinstance(norm, nn.BatchNorm2d | nn.InstanceNorm2d) and norm.affine:
        norm.weight.mul_(s)
        norm.bias.mul_(s)
    elif isinstance(norm, nn.Identity):
        w, b = _out_params(unit.conv)
        w.mul_(s.view(-1, *([1] * (w.dim() - 1))))
        if b is not None:
            b.mul_(s)
    else:  # pragma: no cover - prune() builds stream_affine writers for plain InstanceNorm
        raise AssertionError("a carried scale needs an affine writer norm")


def _check_hard(masks: Mapping[str, ChannelMask]) -> None:
    soft = [n for n, m in masks.items() if float(m.bound) != 0.0]
    if soft:
        raise ValueError(
            f"masks are not hard (bound > 0): {', '.join(soft)}; freeze them before pruning"
        )


def _prune_resnet(
    src: ResnetGenerator, dst: ResnetGenerator, masks: Mapping[str, ChannelMask]
) -> None:
    spec = src.spec
    keep = {n: m.kept().detach().cpu() for n, m in masks.items()}
    stem, d1 = _sel_of(keep["stem"]), _sel_of(keep["down1"])
    union = residual_keep(masks, stream_writers(spec)).detach().cpu()
    u = _sel_of(union)

    def own_off(name: str) -> Tensor:  # rows of the pruned stream this writer has off
        off = torch.ones(u.size, dtype=torch.bool)
        off[: u.n] = ~keep[name][u.idx]
        return off

    _copy_conv(src.stem.conv, dst.stem.conv, stem, _all(spec.input_nc))
    _copy_norm(src.stem.norm, dst.stem.norm, stem)
    _copy_conv(src.down1.conv, dst.down1.conv, d1, stem)
    _copy_norm(src.down1.norm, dst.down1.norm, d1)
    def scale_of(name: str) -> Tensor:  # the writer's carried scale on the pruned stream rows
        s = _take(masks[name].scale.detach().cpu(), 0, u).to(ref)
        s[u.n:] = 1.0  # a forced row is zeroed anyway
        return s

    ref = src.stem.conv.weight
    _copy_conv(src.down2.conv, dst.down2.conv, u, d1)
    _copy_norm(src.down2.norm, dst.down2.norm, u)
    _scale_rows(dst.down2, scale_of("down2"))
    _zero_rows(dst.down2, own_off("down2"))

    pending = ref.new_zeros(u.size)  # constants of removed blocks not yet folded
    last_kept: ResnetBlock | None = None
    for i, (sb, db) in enumerate(zip(src.blocks, dst.blocks, strict=True)):
        if not isinstance(sb, ResnetBlock):
            continue  # already absent in the masked model
        if not isinstance(db, ResnetBlock):  # removed: adds mask2 · norm2(conv2(0))
            c = _zero_input_out(sb.conv2.conv, spec.resolved_widths().stream, ref)
            k = _norm_const(sb.conv2.norm, c)
            pending = pending + _take(k, 0, u)
            continue
        inner = _sel_of(keep[f"block{i}.conv1"])
        _copy_unit_conv(sb.conv1.conv, db.conv1.conv, inner, u)
        _copy_norm(sb.conv1.norm, db.conv1.norm, inner)
        _copy_unit_conv(sb.conv2.conv, db.conv2.conv, u, inner)
        _copy_norm(sb.conv2.norm, db.conv2.norm, u)
        _scale_rows(db.conv2, scale_of(f"block{i}.conv2"))
        _zero_rows(db.conv2, own_off(f"block{i}.conv2"))
        if last_kept is None and bool(pending.abs().max() > 0):
            # removed blocks right after down2: this block sees (stream + pending)
            if spec.padding != "reflect":
                warnings.warn(
                    "removed residual blocks before the first kept block add a "
                    "constant that cannot be folded exactly with zero padding",
                    InexactPruneWarning,
                    stacklevel=3,
                )
            _shift_input(db.conv1, pending)
            _add_to_output(db.conv2, pending)
        elif last_kept is not None and bool(pending.abs().max() > 0):
            _add_to_output(last_kept.conv2, pending)
        pending = torch.zeros_like(pending)
        last_kept = db
    if bool(pending.abs().max() > 0):
        if last_kept is None:
            warnings.warn(
                "every residual block was removed and they add a constant to the "
                "stream: the pruned model is not exact",
                InexactPruneWarning,
                stacklevel=3,
            )
        else:
            _add_to_output(last_kept.conv2, pending)

    up1, up2 = _sel_of(keep["up1"]), _sel_of(keep["up2"])
    _copy_conv(src.up1.conv, dst.up1.conv, up1, u)
    _copy_norm(src.up1.norm, dst.up1.norm, up1)
    _copy_conv(src.up2.conv, dst.up2.conv, up2, up1)
    _copy_norm(src.up2.norm, dst.up2.norm, up2)
    _copy_conv(src.head.conv, dst.head.conv, _all(spec.output_nc), up2)


def _prune_unet(src: UnetGenerator, dst: UnetGenerator, masks: Mapping[str, ChannelMask]) -> None:
    spec = src.spec
    full = spec.resolved_widths()
    n = spec.num_downs
    down = [_sel_of(masks[f"down{k}"].kept()) for k in range(n)]
    up = {k: _sel_of(masks[f"up{k}"].kept()) for k in range(1, n)}
    prev = _all(spec.input_nc)
    for k in range(n):
        _copy_conv(src.downs[k].conv, dst.downs[k].conv, down[k], prev)
        _copy_norm(src.downs[k].norm, dst.downs[k].norm, down[k])
        prev = down[k]
    for k in range(n - 1, -1, -1):
        s, d = src.up_block(k), dst.up_block(k)
        out = _all(spec.output_nc) if k == 0 else up[k]
        if k == n - 1:
            inp: _Sel | list[tuple[_Sel, int]] = down[k]
        else:
            inp = [(down[k], full.down[k]), (up[k + 1], full.up[k])]
        _copy_conv(s.conv, d.conv, out, inp)
        if k > 0:
            _copy_norm(s.norm, d.norm, out)


# --------------------------------------------------------------------------- public API


def _full_spec(model: nn.Module) -> Any:
    return getattr(model, "spec_full", None) or model.spec


def prune(model: nn.Module) -> nn.Module:
    """The dense generator a masked one describes, weights copied, in eval mode.

    ``model``: a :class:`ResnetGenerator` or :class:`UnetGenerator` with hard masks attached
    (bound 0; raises ValueError otherwise). Returns the same class built with
    ``widths_from_masks`` widths, on the model's device and dtype, whose eval output equals
    the masked model's eval output. A model without masks is returned as an eval-mode copy.
    A traced generator (a ``graph`` spec) is pruned through its graph.
    """
    if getattr(getattr(model, "spec", None), "family", None) == "graph":
        from dmad.compress.graph_model import prune_graph_model

        return prune_graph_model(model)
    if not isinstance(model, ResnetGenerator | UnetGenerator):
        raise TypeError(f"prune needs a ResnetGenerator or UnetGenerator, not {type(model)}")
    masks = find_masks(model)
    if not masks:
        return copy.deepcopy(model).eval()
    _check_hard(masks)
    spec = _full_spec(model)
    widths, _forced = widths_from_masks(spec, masks)
    ref = next(model.parameters())
    extra: dict[str, Any] = {}
    if isinstance(model, ResnetGenerator) and _carried(masks, spec) and spec.norm == "instance":
        extra["stream_affine"] = True
    pruned = build(dataclasses.replace(spec, widths=widths, **extra))
    pruned = pruned.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        if isinstance(model, ResnetGenerator):
            _prune_resnet(model, pruned, masks)  # type: ignore[arg-type]
        else:
            _prune_unet(model, pruned, masks)  # type: ignore[arg-type]
    return pruned.eval()


def prune_search_file(path: str | Path) -> nn.Module:
    """Prune the masked generator saved by ``dmad search`` (``search_G_*.pt``)."""
    from dmad.compress.search_file import load_search

    model, _masks, _arch = load_search(Path(path))
    return prune(model)


def zero_filter_report(model: nn.Module, size: int = 256) -> dict[str, Any]:
    """Zero filters the union rule leaves in the residual writers of a masked ResNet (§7.8).

    Per writer (``down2``, ``block{i}.conv2`` of kept blocks): ``zero_filters``, the stream
    channels kept by the union but off in its own mask (computed as all-zero rows), and
    ``macs_true``, what they cost per image at ``size``² (true convention, pruned layer shapes).
    Totals under ``zero_filters`` / ``macs_true``. UNets and unmasked models have none.
    """
    report: dict[str, Any] = {"size": size, "writers": {}, "zero_filters": 0, "macs_true": 0}
    if not isinstance(model, ResnetGenerator):  # UNets and traced generators: no union rule
        return report
    masks = find_masks(model)
    if not masks:
        return report
    spec: ResnetSpec = _full_spec(model)
    widths, _ = widths_from_masks(spec, masks)
    pruned_spec = dataclasses.replace(spec, widths=widths)
    prof = profile_spec(pruned_spec, (1, spec.input_nc, size, size))
    by_name = {r.name: r for r in prof.layers}
    union = residual_keep(masks, stream_writers(spec)).detach().cpu()
    writers = [("down2", "down2.conv")]
    for i, inner in enumerate(widths.blocks):
        if inner > 0:
            layer = f"blocks.{i}.conv2.conv" + (".pointwise" if spec.separable else "")
            writers.append((f"block{i}.conv2", layer))
    for name, layer in writers:
        zeros = int((union & ~masks[name].kept().detach().cpu()).sum())
        row = by_name[layer]
        macs = row.macs_true // row.out_shape[1] * zeros
        report["writers"][name] = {"zero_filters": zeros, "macs_true": macs}
        report["zero_filters"] += zeros
        report["macs_true"] += macs
    return report
