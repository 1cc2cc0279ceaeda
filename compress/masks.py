"""DMAD differentiable channel masks: soft step, custom autograd, sparsity losses, attachment.

A mask multiplies channel c of a feature map by m(w_c; b), a C¹ piecewise-quadratic soft step of
a learned scalar w_c with a transition band (−b, b) that a schedule shrinks to 0 (method spec
§2.1, §2.5). At b = 0 the mask is the hard step 1[w > 0] and gets no gradient (DMAD has no
straight-through estimator, so the architecture is final once the bound reaches 0).

Design points that differ from (or pin down) the original ``models/MaskLayer.py``:

* The bound, a "frozen" flag and the residual-group coefficients are **buffers**, so they are in
  every ``state_dict`` and a resumed search continues with the same masks (spec §7.9: DMAD kept
  its step-function coefficients in a plain attribute, stale after a reload).
* Nothing here reads a tensor back to Python in the forward/backward pass: the bound stays a
  tensor and the b = 0 case is selected with ``torch.where``. That means no GPU sync per mask per
  step, and a masked model still runs on the ``meta`` device (used for MAC profiling).
* Masks are attached by *wrapping* the ``.norm`` of the generators' conv units
  (:class:`MaskedNorm`), so the model classes are neither copied nor edited and the mask sits
  exactly where DMAD puts it: after the norm, before the activation (and before UNet dropout).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from dmad.compress.models.resnet import ResnetGenerator
from dmad.compress.models.unet import UnetGenerator

__all__ = [
    "BOUND_KINDS",
    "MIN_QUADRATIC_BOUND",
    "ChannelMask",
    "MaskApply",
    "MaskedNorm",
    "attach_masks",
    "bound_at",
    "bound_loss",
    "detach_masks",
    "find_masks",
    "flush_scores",
    "group_loss",
    "mask_sites",
    "masks_state",
    "relu_loss",
    "soft_step",
    "soft_step_grad",
]

#: DMAD computes the quadratic pieces with ``max(b, 0.005)`` when ``0 < b < 0.005``
#: (``MaskLayer.py:51-52``) while the band edges stay at ±b. It only matters in the last
#: bound update before b = 0 (cube schedule: b ≈ 0.002 at epoch 149 of 150) and keeps the
#: slope 1/b of the step from blowing up; the price is a small jump of m at ±b in that regime.
MIN_QUADRATIC_BOUND = 0.005

BOUND_KINDS = ("cube", "square", "linear")


# --------------------------------------------------------------------------- the soft step


def _bound_tensor(b: float | Tensor, like: Tensor) -> Tensor:
    """The bound as a tensor on ``like``'s device and dtype (no host read, so no sync)."""
    return torch.as_tensor(b, dtype=like.dtype, device=like.device)


def soft_step(w: Tensor, b: float | Tensor) -> Tensor:
    """Mask value m(w; b) of the DMAD soft step, elementwise.

    ``0`` for w < −b; ``½(1 + w/b)²`` on [−b, 0]; ``1 − ½(1 − w/b)²`` on (0, b]; ``1`` for w > b.
    The two quadratics meet at m(0) = ½ with slope 1/b and have zero slope at ±b, so m is C¹ and
    its derivative never has the huge spikes a sigmoid-with-temperature would at small b.
    ``b == 0`` gives the hard step ``1[w > 0]`` (so m(0) = 0 there). For ``0 < b < 0.005`` the
    quadratics use ``b' = 0.005`` (see :data:`MIN_QUADRATIC_BOUND`). ``b`` may be a float or a
    0-dim tensor; a tensor is never read back to the host.
    """
    bt = _bound_tensor(b, w)
    bq = bt.clamp(min=MIN_QUADRATIC_BOUND)  # only used where b > 0
    r = w / bq
    one = torch.ones_like(w)
    soft = torch.where(
        w > bt,
        one,
        torch.where(
            w > 0,
            1 - 0.5 * (1 - r) ** 2,
            torch.where(w >= -bt, 0.5 * (1 + r) ** 2, torch.zeros_like(w)),
        ),
    )
    hard = (w > 0).to(w.dtype)
    return torch.where(bt > 0, soft, hard)


def soft_step_grad(w: Tensor, b: float | Tensor) -> Tensor:
    """dm/dw: the exact derivative inside the open band (−b, b), 0 outside and when b == 0.

    Zero at b = 0 is deliberate (DMAD, spec §2.1): no straight-through gradient, a hard mask is
    a decided mask.
    """
    bt = _bound_tensor(b, w)
    bq = bt.clamp(min=MIN_QUADRATIC_BOUND)
    r = w / bq
    inside = (w > -bt) & (w < bt)  # empty when b == 0
    slope = torch.where(w > 0, (1 - r) / bq, (1 + r) / bq)
    return torch.where(inside, slope, torch.zeros_like(w))


def _channel_view(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-channel vector to broadcast over ``x`` of shape (N, C, *spatial)."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class MaskApply:
    """``x · m(w; b)[None, :, None, None]`` with DMAD's hand-written backward.

    ``dx = g · m`` and ``dw_c = m'(w_c) · Σ_{n,h,w} g·x`` — the per-channel reduction is one
    tensor op, and m' is exactly 0 outside the band and at b = 0 (no straight-through). A custom
    Function rather than plain autograd so the b = 0 case has a defined (zero) gradient and ``x``
    is only kept for backward when ``w`` needs a gradient. Device- and dtype-agnostic: m is
    computed in ``w``'s dtype, then cast to ``x``'s (autocast-friendly). This entry point
    computes m and m' itself; :class:`ChannelMask` caches them per weight version.
    """

    @staticmethod
    def apply(x: Tensor, w: Tensor, b: float | Tensor) -> Tensor:
        bt = _bound_tensor(b, w)
        wd = w.detach()
        return _MaskApplyCached.apply(x, w, soft_step(wd, bt), soft_step_grad(wd, bt), None)


class _MaskApplyCached(torch.autograd.Function):
    """:class:`MaskApply` with m and m' precomputed by the caller (same maths, fewer ops).

    A generator calls each mask several times per step (fake, cycle, identity passes) while w
    only changes at the optimiser step, so :class:`ChannelMask` computes m(w; b) and m'(w; b)
    once per weight version; per call only ``x·m`` (and ``g·m``, ``Σ g·x``) remain.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, w: Tensor, m: Tensor, dm: Tensor,  # type: ignore[override]
                score: Tensor | list[Tensor] | None) -> Tensor:
        if x.dim() < 2 or x.shape[1] != w.shape[0]:
            raise ValueError(
                f"mask of {w.shape[0]} channels applied to a tensor of shape {tuple(x.shape)}"
            )
        need_dw = ctx.needs_input_grad[1]  # type: ignore[attr-defined]
        ctx.save_for_backward(x if need_dw else None, w, m, dm)  # type: ignore[attr-defined]
        ctx.score = score  # type: ignore[attr-defined]
        return x * _channel_view(m, x).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:  # type: ignore[override]
        x, w, m, dm = ctx.saved_tensors
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = g * _channel_view(m, g).to(g.dtype)
        if ctx.needs_input_grad[1]:
            dims = [0, *range(2, g.dim())]
            gx = torch.sum(g * x, dim=dims, dtype=torch.promote_types(g.dtype, w.dtype))
            dw = (gx.to(w.dtype) * dm).contiguous()
            if isinstance(ctx.score, list):  # deferred: reduced over ranks before the abs
                ctx.score.append(gx.to(w.dtype) * m)
            elif ctx.score is not None:  # first-order Taylor: |dL/dm_c · m_c|, summed over calls
                ctx.score.add_((gx.to(w.dtype) * m).abs())
        return dx, dw, None, None, None


# --------------------------------------------------------------------------- the mask module


class ChannelMask(nn.Module):
    """One per-channel differentiable mask (DMAD ``Mask``), applied after a norm.

    ``weight`` (C,) is the learned w, initialised N(0, 0.2) from torch's global RNG (so
    ``torch.manual_seed`` makes a search reproducible); at init most masks are 0.2–0.8.
    Buffers (checkpointed, restored on resume): ``bound`` (0-dim, starts at 1.0), ``frozen``
    (0-dim bool) and ``coeff`` (C,) — the residual-group sparsity coefficients written by
    :func:`compress.groups.update_group_coefficients` (0 = no group pressure, also for masks
    outside the group, whose group loss is therefore 0). Three more serve the exact freeze and
    the final fit:

    * ``scale`` (C,), ones: a fixed factor on the mask's output. A channel whose mask value
      m(w) < 1 becomes m = 1 when the band shrinks past it or at the freeze; where the network
      has no exact place to absorb m(w) (the residual-stream writers after an affine-free
      InstanceNorm) it is kept here, and pruning carries it as the writer norm's γ.
    * ``score`` (C,): the first-order Taylor importance |∂L/∂m_c · m_c| of each channel,
      accumulated over every backward pass since the last bound update (the search reads and
      resets it there, into ``importance``).
    * ``importance`` (C,): the running importance the final fit ranks channels by;
      ``alive`` (C,) bool: the channels that were kept (w > −b) just before the last bound
      update shrank the band.
    """

    weight: nn.Parameter
    bound: Tensor
    frozen: Tensor
    coeff: Tensor
    scale: Tensor
    score: Tensor
    importance: Tensor
    alive: Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"a mask needs at least one channel, got {channels}")
        self.weight = nn.Parameter(torch.empty(channels))
        nn.init.normal_(self.weight, 0.0, 0.2)
        self.register_buffer("bound", torch.tensor(1.0))
        self.register_buffer("frozen", torch.tensor(False))
        self.register_buffer("coeff", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("score", torch.zeros(channels))
        self.register_buffer("importance", torch.zeros(channels))
        self.register_buffer("alive", torch.ones(channels, dtype=torch.bool))

    #: Buffers added after the first search files were written, with the value a mask saved
    #: before them had in effect (so older ``search_G_*.pt`` files and checkpoints still load).
    _LATER_BUFFERS: ClassVar[dict[str, float | bool]] = {
        "scale": 1.0, "score": 0.0, "importance": 0.0, "alive": True}

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        for name, fill in self._LATER_BUFFERS.items():
            if prefix + name not in state_dict and prefix + "weight" in state_dict:
                state_dict[prefix + name] = torch.full_like(getattr(self, name), fill)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def channels(self) -> int:
        return self.weight.shape[0]

    def extra_repr(self) -> str:
        return f"channels={self.channels}"

    def value(self) -> Tensor:
        """Current mask values m(w; b), shape (C,); differentiable (autograd) w.r.t. ``weight``.

        Includes the carried ``scale``. Use it to fold the mask into neighbouring weights before
        binarising (spec §7.2).
        """
        return soft_step(self.weight, self.bound) * self.scale

    def set_bound(self, b: float) -> None:
        """Set the band half-width b ≥ 0. A frozen mask ignores it and stays hard (b = 0).

        The schedule calls this on every mask at each update; a mask frozen early (MAC budget
        reached, or the UNet per-layer sparsity freeze) must not become soft again.
        """
        b = float(b)
        if not b >= 0.0 or b == float("inf"):
            raise ValueError(f"mask bound must be a finite number >= 0, got {b}")
        if bool(self.frozen):
            return
        self.bound.fill_(b)

    @torch.no_grad()
    def freeze(self) -> None:
        """Binarise: w ← +1 on kept channels, −1 elsewhere; b ← 0; frozen ← True.

        "Kept" is :meth:`kept` at the current bound, i.e. every channel whose mask is non-zero
        (w > −b) while b > 0 — DMAD's early-stop rule: the MAC budget was measured on exactly
        that architecture, so binarising must keep all of it. Channels with 0 < m < 1 jump to
        m = 1; fold :meth:`value` into the neighbouring weights first if that matters.
        ``weight.requires_grad`` is left on (the optimiser's parameter list does not change) but
        its gradient is exactly 0 at b = 0; ±1 leaves a margin of 1 so leftover Adam momentum
        cannot flip a channel.
        """
        keep = self.kept()
        self.weight.copy_(torch.where(keep, 1.0, -1.0).to(self.weight.dtype))
        self.bound.fill_(0.0)
        self.frozen.fill_(True)

    def kept(self) -> Tensor:
        """Bool (C,): channels that survive — w > −b (non-zero mask) when b > 0, w > 0 at b = 0."""
        w, b = self.weight.detach(), self.bound
        return torch.where(b > 0, w > -b, w > 0)

    def in_band(self) -> Tensor:
        """Bool (C,): channels in the open transition band −b < w < b (none when b = 0)."""
        w, b = self.weight.detach(), self.bound
        return (w > -b) & (w < b)

    def _values(self) -> tuple[Tensor, Tensor]:
        """(m, m') for the current weight and bound, recomputed only when either changed
        (in-place updates bump a tensor's version; a move to another device changes it)."""
        w, b, s = self.weight, self.bound, self.scale
        key = (w._version, b._version, s._version, w.device, w.dtype)
        if getattr(self, "_cache_key", None) != key:
            with torch.no_grad():
                self._cache = (soft_step(w.detach(), b) * s,
                               soft_step_grad(w.detach(), b) * s)
            self._cache_key = key
        return self._cache

    def forward(self, x: Tensor) -> Tensor:
        m, dm = self._values()
        sink = self.pending_scores if self.pending_scores is not None else self.score
        return _MaskApplyCached.apply(x, self.weight, m, dm, sink)

    #: when a list, each backward call appends its signed dL/dm_c · m_c here instead of adding
    #: |…| to ``score``: data-parallel training averages these over ranks first, so the score is
    #: that of the global batch (:func:`flush_scores`)
    pending_scores: list[Tensor] | None = None


def flush_scores(masks: list[ChannelMask], reduce: Any = None) -> None:
    """Add the deferred Taylor terms of the last backward to each mask's ``score``.

    ``reduce`` (e.g. an in-place all-reduce mean) is applied once to all masks' terms
    concatenated, so N processes that each backpropagated their share of a batch add exactly
    what one process with the whole batch would: |mean over ranks of dL/dm_c · m_c| per call."""
    parts = [t for m in masks if m.pending_scores for t in m.pending_scores]
    if not parts:
        return
    flat = torch.cat(parts)
    if reduce is not None:
        reduce(flat)
    i = 0
    for m in masks:
        if not m.pending_scores:
            continue
        for t in m.pending_scores:
            m.score.add_(flat[i:i + t.numel()].abs())
            i += t.numel()
        m.pending_scores.clear()


# --------------------------------------------------------------------------- sparsity losses


def _band(mask: ChannelMask) -> Tensor:
    return mask.in_band().to(mask.weight.dtype)


def relu_loss(mask: ChannelMask) -> Tensor:
    """Σ_c 1[−b<w_c<b]·(w_c + b): a constant push of in-band w down towards −b (mask → 0).

    DMAD's default sparsity term; no penalty once a channel has left the band either way, and 0
    at b = 0.
    """
    return torch.sum(_band(mask) * (mask.weight + mask.bound))


def bound_loss(mask: ChannelMask) -> Tensor:
    """‖ b − |w_c| over in-band c ‖₂ (un-squared, as DMAD): *polarisation*, not sparsity.

    It pushes in-band |w| towards b, i.e. towards a binary decision in either direction. Out-of-
    band entries are zeroed rather than indexed out, which keeps the shape static (no sync); the
    norm's gradient at an all-zero vector is 0 in torch, so an empty band gives a zero gradient.
    """
    w = mask.weight
    return torch.linalg.vector_norm(_band(mask) * (mask.bound - w.abs()))


def group_loss(mask: ChannelMask) -> Tensor:
    """Σ_c 1[in band]·(w_c + b)·coeff_c: the relu term weighted by the residual-group coefficient.

    ``coeff`` comes from :func:`compress.groups.update_group_coefficients`; it is 0 until the
    first update, so the first epoch has no group pressure (DMAD started at 1.0 whatever λ_u
    was — spec §7.10 — an accident rather than a design).
    """
    return torch.sum(_band(mask) * (mask.weight + mask.bound) * mask.coeff)


# --------------------------------------------------------------------------- attachment


class MaskedNorm(nn.Module):
    """``mask(norm(x))`` — drop-in replacement for a conv unit's ``.norm``."""

    def __init__(self, norm: nn.Module, mask: ChannelMask) -> None:
        super().__init__()
        self.norm = norm
        self.mask = mask

    def forward(self, x: Tensor) -> Tensor:
        return self.mask(self.norm(x))


def mask_sites(model: nn.Module) -> Iterator[tuple[str, nn.Module, int]]:
    """(name, module whose ``.norm`` carries the mask, channels) in DMAD mask order.

    The sites are those the model's traced graph gives (``compress/structure.py``: each conv's
    output after its norm, never the layer that writes the image), the derivation every other
    generator gets; here they are only named in DMAD's terms. ResNet: stem, down1, down2,
    block{i}.conv1/.conv2 (removed blocks, Identity, have none), up1, up2; in the separable
    variant the unit's own ``.norm`` (after the pointwise conv), not the depthwise's inner one.
    UNet: down0..down{n-1} (outer→inner; the outermost and innermost norms are Identity and get
    wrapped all the same, so the mask still follows the conv), then up{n-1}..up1 (inner→outer;
    the outermost up writes the image). Channel counts are the traced ones (the spec's widths).
    """
    if not isinstance(model, ResnetGenerator | UnetGenerator):
        raise TypeError(f"masks attach to ResnetGenerator or UnetGenerator, not {type(model)}")
    from dmad.compress.structure import derive_structure

    for site in derive_structure(model).sites:
        unit = (site.norm or "").removesuffix(".norm")
        if not unit or unit == site.norm:
            raise TypeError(f"{type(model).__name__}: site {site.name} is not a unit's norm")
        yield _dmad_name(model, unit), model.get_submodule(unit), site.channels


def _dmad_name(model: nn.Module, unit: str) -> str:
    """DMAD's name of a unit path: ``blocks.3.conv1`` → ``block3.conv1``, UNet ``downs.k`` →
    ``down{k}`` and ``ups.j`` → ``up{k}`` (k counted from the outermost, 0)."""
    parts = unit.split(".")
    if parts[0] == "blocks":
        return f"block{parts[1]}.{'.'.join(parts[2:])}"
    if parts[0] == "downs":
        return f"down{parts[1]}"
    if parts[0] == "ups":
        return f"up{len(model.ups) - 1 - int(parts[1])}"  # type: ignore[arg-type]
    return unit


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def attach_masks(model: nn.Module) -> dict[str, ChannelMask]:
    """Wrap the right norms of a generator in :class:`MaskedNorm`; return masks by name.

    Masks are created in DMAD order (so a seed gives the same initial masks every run) on the
    model's device. Idempotent: sites already wrapped keep their mask (resuming on a model that
    was masked before loading is safe). Note that wrapping renames the norm's state-dict keys
    (``stem.norm.weight`` → ``stem.norm.norm.weight``): load masked checkpoints into a masked
    model, or :func:`detach_masks` first. A traced generator (a ``graph`` spec) gets its masks
    where its traced structure says.
    """
    if getattr(getattr(model, "spec", None), "family", None) == "graph":
        from dmad.compress.graph_prune import attach_graph_masks

        return attach_graph_masks(model)
    masks: dict[str, ChannelMask] = {}
    for name, unit, channels in mask_sites(model):
        norm = unit.norm
        if isinstance(norm, MaskedNorm):
            masks[name] = norm.mask
            continue
        mask = ChannelMask(channels).to(_device_of(unit))
        unit.norm = MaskedNorm(norm, mask)
        masks[name] = mask
    return masks


def find_masks(model: nn.Module) -> dict[str, ChannelMask]:
    """The masks currently attached to ``model``, by name in DMAD order (empty if none)."""
    return {
        name: unit.norm.mask
        for name, unit, _ in mask_sites(model)
        if isinstance(unit.norm, MaskedNorm)
    }


def detach_masks(model: nn.Module) -> dict[str, ChannelMask]:
    """Restore the plain norms; return the masks that were removed (for pruning decisions)."""
    removed: dict[str, ChannelMask] = {}
    for name, unit, _ in mask_sites(model):
        if isinstance(unit.norm, MaskedNorm):
            removed[name] = unit.norm.mask
            unit.norm = unit.norm.norm
    return removed


# --------------------------------------------------------------------------- schedule, summary


def bound_at(t: float, total: float, kind: str = "cube") -> float:
    """Band half-width b at progress ``t`` of ``total`` (images, steps or epochs — same unit).

    ``cube`` (DMAD default): b = 1 − (t / 0.75T)^(1/3); ``square``: exponent 1/2 (DMAD's other
    rule); ``linear``: 1 − t / 0.75T. b = 0 from 75 % of training on (hard masks, frozen
    architecture, weights keep training). The cube root drops fast early (b = 0.6 after 10 % of
    the search window) so decisions start early but the last ones are slow.
    """
    if kind not in BOUND_KINDS:
        raise ValueError(f"bound schedule must be one of {', '.join(BOUND_KINDS)}, got {kind!r}")
    if not total > 0:
        raise ValueError(f"total must be > 0, got {total}")
    frac = max(float(t), 0.0) / (0.75 * float(total))
    if frac >= 1.0:
        return 0.0
    if kind == "cube":
        b = 1.0 - frac ** (1.0 / 3.0)
    elif kind == "square":
        b = 1.0 - frac**0.5
    else:
        b = 1.0 - frac
    return max(b, 0.0)


def masks_state(masks: Mapping[str, ChannelMask]) -> dict[str, dict[str, Any]]:
    """Small JSON-able per-mask summary for progress lines and logs (reads tensors: syncs)."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in masks.items():
        out[name] = {
            "channels": m.channels,
            "kept": int(m.kept().sum()),
            "in_band": int(m.in_band().sum()),
            "bound": float(m.bound),
            "frozen": bool(m.frozen),
        }
    return out
