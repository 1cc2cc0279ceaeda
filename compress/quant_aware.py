"""Quantisation-aware training: fake int8 that mirrors the export's full-int8 recipe.

Why: the exported int8 file rounds every convolution's weights to 255 levels per output channel
and every activation tensor around the convolutions to 256 levels per tensor. A student trained
in float never sees that noise; one trained under it learns weights whose rounding costs less.
The fake quantisation only helps if it is the *same* rounding the export applies, so this module
copies the export's recipe (``export.tflite.Int8Recipe`` defaults, ``export.equalize``) point by
point, on the PyTorch model (compress must not import export; the recipe is restated here):

* **weights**: symmetric int8 per output channel, ``[-127, 127]``, scale ``max|w_c| / 127``
  (TFLite's per-channel convolution weights);
* **convolution inputs**: asymmetric int8 per tensor (``[-128, 127]`` with a zero point; the
  range always contains 0, as TFLite nudges it). A conv reading the ResNet residual stream sees
  it with every channel brought to the same peak first (the export's stream balancing);
* **convolution outputs**: asymmetric int8 per tensor. Where the conv feeds an InstanceNorm the
  export drops the bias and divides each output channel by its spread (``export.equalize``), so
  the tensor quantised is ``(y - b) / spread``; that is what is rounded here too;
* **Tanh output**: int8 with TFLite's fixed scale 1/128, zero point 0;
* InstanceNorm, the residual adds and the norms' statistics stay float, as in the export
  (``float_ops`` MEAN, SUB, MUL, ADD, RSQRT).

Ranges hold a high percentile of each tensor (a new extreme at once, old ones fading slowly): the
export's ranges, measured on a photo-trained teacher, sit near the extremes of the calibration
images, and a range that clips where the int8 file does not costs far more than a coarser grid.
The export recalibrates its own ranges on the float weights this trains, so they need not match
exactly; the rounding noise they cause must. Gradients pass straight through the
rounding and are zero where a value is clipped (``torch.fake_quantize_*``).

One verb with a config, as ``quantize_(model, config)`` in torchao: :func:`quant_aware_`
attaches, :func:`set_quant_aware` switches it on or off (a buffer, so a resumed run continues
in the same state), :func:`strip_quant_aware_` removes it and leaves the float weights as
trained. Attaching renames the conv weights' state-dict keys (``parametrizations.weight.
original``): save or ship only stripped models.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from dmad.compress.masks import MaskedNorm

__all__ = [
    "QuantAwareConfig",
    "QuantAwareReport",
    "is_quant_aware",
    "observe_ranges",
    "quant_aware_",
    "set_quant_aware",
    "strip_quant_aware_",
    "switch_layers",
]

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)
_PADS = (nn.ReflectionPad2d, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReplicationPad2d, nn.Identity)
#: values sampled per tensor for its percentile (a strided subsample: deterministic, cheap)
_SAMPLE = 1 << 16


@dataclass(frozen=True)
class QuantAwareConfig:
    """How the fake quantisation rounds (defaults: the export's int8 recipe)."""

    #: activation range: this percentile of each batch at the top, 100 − it at the bottom (100:
    #: the batch's extremes), held (see ``range_decay``): the percentile whose fake int8 noise
    #: came closest to the int8 file's on the photo teacher (the raw extremes give a grid too
    #: coarse, a per-batch 99.99 clips)
    percentile: float = 99.999
    #: weight of the newest batch in the moving averages of the channel spreads and peaks
    momentum: float = 0.01
    #: fraction by which a held range extreme fades toward the newest batch's, per step
    range_decay: float = 0.002
    #: round conv outputs feeding an InstanceNorm per-channel equalised, as the export does
    equalize: bool = True
    #: bring the residual stream's channels to one peak before its readers round it
    stream: bool = True

    def __post_init__(self) -> None:
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile: must be in (50, 100], got {self.percentile}")
        if not 0.0 < self.momentum <= 1.0:
            raise ValueError(f"momentum: must be in (0, 1], got {self.momentum}")
        if not 0.0 <= self.range_decay <= 1.0:
            raise ValueError(f"range_decay: must be in [0, 1], got {self.range_decay}")


@dataclass
class QuantAwareReport:
    """What :func:`quant_aware_` attached (written into the fine-tune's DONE.json)."""

    convs: int = 0
    equalized_outputs: int = 0
    stream_readers: int = 0
    tanh_outputs: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ema(buf: Tensor, new: Tensor, seen: Tensor, m: float) -> None:
    buf.copy_(torch.where(seen, (1 - m) * buf + m * new, new))


class _Switch(nn.Module):
    """On/off state kept twice: a buffer (saved, so a resumed run continues in the same state)
    and a Python flag the forward reads (reading the buffer would sync the GPU every call)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("enabled", torch.zeros((), dtype=torch.bool))
        self.on = False

    def switch(self, on: bool) -> None:
        self.enabled.fill_(on)
        self.on = on

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.on = bool(self.enabled)


class _WeightFQ(_Switch):
    """Parametrisation of a conv weight: symmetric int8 per output channel (``axis``)."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, w: Tensor) -> Tensor:
        if not self.on:
            return w
        dims = [d for d in range(w.dim()) if d != self.axis]
        wf = w.float()
        scale = (wf.detach().abs().amax(dim=dims) / 127.0).clamp_min(1e-12)
        zp = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(wf, scale, zp, self.axis, -127,
                                                      127).to(w.dtype)


class _ActFQ(_Switch):
    """Per-tensor asymmetric int8 of an activation, optionally of a per-channel normalised view.

    ``mode``: ``plain`` rounds ``x``; ``spread`` rounds ``(x - bias) / spread_c`` (spread = the
    per-image standard deviation of each channel, the export's equalisation); ``peak`` rounds
    ``x / peak_c`` (peak = each channel's largest magnitude, the stream balancing); ``tanh``
    rounds to TFLite's fixed Tanh output grid (scale 1/128, zero point 0).
    """

    def __init__(self, channels: int, mode: str, cfg: QuantAwareConfig) -> None:
        super().__init__()
        self.mode = mode
        #: round with each image's own range instead (a hybrid layer's input; not saved)
        self.dynamic = False
        self.q = cfg.percentile / 100.0
        self.m = cfg.momentum
        self.decay = cfg.range_decay
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("chan", torch.ones(channels))

    def extra_repr(self) -> str:
        return f"mode={self.mode}, channels={self.chan.numel()}"

    def _chan_stat(self, x: Tensor) -> Tensor:
        xd = x.detach()
        if self.mode == "spread":
            s = xd.var(dim=(2, 3), unbiased=False).mean(0).sqrt()
        else:
            s = xd.abs().amax(dim=(0, 2, 3))
        top = s.amax().clamp_min(1e-30)
        return torch.where(s > 1e-6 * top, s, top)  # a dead channel is 0 on any grid

    def _observe(self, z: Tensor) -> None:
        flat = z.detach().flatten()
        if self.q >= 1.0:
            lo, hi = flat.amin(), flat.amax()
        else:
            if flat.numel() > _SAMPLE:
                flat = flat[:: flat.numel() // _SAMPLE]
            lo, hi = torch.quantile(flat, torch.tensor([1 - self.q, self.q], device=flat.device))
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
        # a decaying max-hold: a new extreme is taken at once (clipping costs far more than a
        # coarser grid), an old one fades by range_decay per step as the weights change
        m = self.decay
        self.lo.copy_(torch.where(self.seen, torch.minimum(lo, (1 - m) * self.lo + m * lo), lo))
        self.hi.copy_(torch.where(self.seen, torch.maximum(hi, (1 - m) * self.hi + m * hi), hi))

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        if not self.on:
            return x
        xf = x.float()
        if self.dynamic:
            return _per_image(xf).to(x.dtype)
        if self.mode == "tanh":
            scale = xf.new_tensor(1.0 / 128.0)
            zp = torch.zeros((), dtype=torch.int32, device=x.device)
            return torch.fake_quantize_per_tensor_affine(xf, scale, zp, -128, 127).to(x.dtype)
        view = (1, -1, 1, 1)
        b = bias.float().view(view) if (self.mode == "spread" and bias is not None) else 0.0
        y = xf - b
        if self.mode in ("spread", "peak"):
            if self.training:
                _ema(self.chan, self._chan_stat(y), self.seen, self.m)
            # a copy: the buffer changes in place on the next call (CycleGAN runs G twice a
            # step) while this call's graph still needs the value it divided by
            chan = self.chan.clone().view(view)
            z = y / chan
        else:
            z = y
        if self.training:
            self._observe(z)
            self.seen.fill_(True)
        elif not bool(self.seen):
            return x  # never observed: nothing to round to yet
        scale = ((self.hi - self.lo) / 255.0).clamp_min(1e-8)
        zp = (-128 - torch.round(self.lo / scale)).clamp(-128, 127).to(torch.int32)
        zq = torch.fake_quantize_per_tensor_affine(z, scale, zp, -128, 127)
        if self.mode in ("spread", "peak"):
            zq = zq * chan
        return (zq + b).to(x.dtype)


def _per_image(x: Tensor) -> Tensor:
    """Asymmetric int8 with each image's own extremes (the range contains 0): how XNNPACK
    rounds a hybrid convolution's float input at run time (its 1×1 convolutions round each
    pixel apart, finer than this)."""
    lo = x.detach().amin(dim=(1, 2, 3)).clamp(max=0.0)
    hi = x.detach().amax(dim=(1, 2, 3)).clamp(min=0.0)
    scale = ((hi - lo) / 255.0).clamp_min(1e-12)
    zp = (-128 - torch.round(lo / scale)).clamp(-128, 127).to(torch.int32)
    return torch.fake_quantize_per_channel_affine(x, scale, zp, 0, -128, 127)


def _input_hook(mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (mod.dmad_qa_in(args[0]), *args[1:])


def _output_hook(mod: nn.Module, _args: tuple[Any, ...], out: Tensor) -> Tensor:
    return mod.dmad_qa_out(out, mod.bias)


def _tanh_hook(mod: nn.Module, _args: tuple[Any, ...], out: Tensor) -> Tensor:
    return mod.dmad_qa_out(out)


class _Tracer(torch.fx.Tracer):
    """Stops at torch.nn layers and at channel-mask wrappers (their norm is what matters)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, MaskedNorm) or super().is_leaf_module(m, qualname)


def _is_inorm(m: nn.Module) -> bool:
    inner = m.norm if isinstance(m, MaskedNorm) else m
    return isinstance(inner, nn.InstanceNorm2d)


def _sites(model: nn.Module) -> tuple[list[str], set[str], set[str], list[str]]:
    """(conv names, convs whose output feeds only an InstanceNorm, convs reading the residual
    stream, Tanh names), read off a module-level trace of ``model``."""
    graph = _Tracer().trace(model)
    mods = dict(model.named_modules())

    def mod(n: torch.fx.Node) -> nn.Module | None:
        return mods.get(str(n.target)) if n.op == "call_module" else None

    convs, to_norm, tanhs = [], set(), []
    adds = [n for n in graph.nodes if n.op == "call_function"
            and n.target in (operator.add, torch.add)
            and all(isinstance(a, torch.fx.Node) for a in n.args[:2])]
    for n in graph.nodes:
        m = mod(n)
        if isinstance(m, _CONVS):
            convs.append(str(n.target))
            users = list(n.users)
            um = mod(users[0]) if len(users) == 1 else None
            if um is not None and _is_inorm(um):
                to_norm.add(str(n.target))
        elif isinstance(m, nn.Tanh):
            tanhs.append(str(n.target))
    stream: set[torch.fx.Node] = set()
    add_set = set(adds)
    for a in adds:
        ins = [x for x in a.args[:2] if isinstance(x, torch.fx.Node)]
        branch = [x for x in ins if x not in add_set and len(x.users) == 1]
        writer = branch[0] if len(branch) == 1 else None
        while writer is not None and isinstance(mod(writer), (nn.Identity, nn.Dropout)):
            writer = writer.args[0] if isinstance(writer.args[0], torch.fx.Node) else None
        if writer is None or mod(writer) is None or not _is_inorm(mod(writer)):
            return convs, to_norm, set(), tanhs  # not the ResNet pattern: no balancing
        stream.add(a)
        stream.update(x for x in ins if x is not branch[0])
    readers: set[str] = set()
    for v in stream:
        for u in v.users:
            while isinstance(mod(u), _PADS) and len(u.users) == 1:
                u = next(iter(u.users))
            if isinstance(mod(u), _CONVS):
                readers.add(str(u.target))
    return convs, to_norm, readers, tanhs


def quant_aware_(model: nn.Module, config: QuantAwareConfig | None = None) -> QuantAwareReport:
    """Attach fake int8 (module doc) to every convolution and Tanh of ``model``, in place.

    Starts switched off (:func:`set_quant_aware`). Idempotent: an attached model is left as it
    is. The model must trace with torch.fx at module level (every generator here does).
    """
    cfg = config or QuantAwareConfig()
    report = QuantAwareReport(config=asdict(cfg))
    if is_quant_aware(model):
        return _report(model, report)
    convs, to_norm, readers, tanhs = _sites(model)
    mods = dict(model.named_modules())
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    for name in convs:
        c = mods[name]
        axis = 1 if isinstance(c, nn.ConvTranspose2d) else 0
        parametrize.register_parametrization(c, "weight", _WeightFQ(axis).to(dev))
        in_mode = "peak" if cfg.stream and name in readers else "plain"
        out_mode = "spread" if cfg.equalize and name in to_norm else "plain"
        c.dmad_qa_in = _ActFQ(c.in_channels, in_mode, cfg).to(dev)
        c.dmad_qa_out = _ActFQ(c.out_channels, out_mode, cfg).to(dev)
        c.register_forward_pre_hook(_input_hook)
        c.register_forward_hook(_output_hook)
    for name in tanhs:
        t = mods[name]
        t.dmad_qa_out = _ActFQ(1, "tanh", cfg).to(dev)
        t.register_forward_hook(_tanh_hook)
    return _report(model, report)


def _report(model: nn.Module, report: QuantAwareReport) -> QuantAwareReport:
    for m in model.modules():
        if isinstance(m, _CONVS) and hasattr(m, "dmad_qa_in"):
            report.convs += 1
            report.equalized_outputs += m.dmad_qa_out.mode == "spread"
            report.stream_readers += m.dmad_qa_in.mode == "peak"
        elif isinstance(m, nn.Tanh) and hasattr(m, "dmad_qa_out"):
            report.tanh_outputs += 1
    return report


def is_quant_aware(model: nn.Module) -> bool:
    """Whether fake quantisation is attached anywhere in ``model``."""
    return any(isinstance(m, (_WeightFQ, _ActFQ)) for m in model.modules())


def set_quant_aware(model: nn.Module, enabled: bool) -> None:
    """Switch the fake quantisation of ``model`` on or off (ranges start observing when on)."""
    for m in model.modules():
        if isinstance(m, _Switch):
            m.switch(enabled)
        if isinstance(m, _ActFQ):
            m.dynamic = False  # training rounds as the static int8 file does


def strip_quant_aware_(model: nn.Module) -> nn.Module:
    """Remove every trace of :func:`quant_aware_`: plain float weights (as trained, unrounded)
    and the model's original state-dict keys. Returns ``model``."""
    for m in list(model.modules()):
        if parametrize.is_parametrized(m, "weight") and isinstance(
                m.parametrizations.weight[0], _WeightFQ):
            # by hand, not remove_parametrizations: that deletes the property from the class
            # parametrize made, which a deepcopy of the model shares with this one
            w = m.parametrizations.weight.original
            del m._modules["parametrizations"]
            m.__class__ = m.__class__.__bases__[0]
            m.register_parameter("weight", w)
        for attr in ("dmad_qa_in", "dmad_qa_out"):
            if attr in m._modules:
                del m._modules[attr]
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for k, h in list(hooks.items()):
                if h in (_input_hook, _output_hook, _tanh_hook):
                    del hooks[k]
    return model


def switch_layers(model: nn.Module, names: set[str] | None, *, tanh: bool = True,
                  hybrid: set[str] | frozenset[str] = frozenset()) -> None:
    """Fake int8 on for the convolutions named (weights, input and output; every one when
    ``names`` is None) and for the Tanh output; of the other convolutions those in ``hybrid``
    run as the export's hybrid layers (int8 weights, the input rounded with each image's own
    range, the output float), the rest in float. Per-layer sensitivity switches one layer at
    a time."""
    for name, m in model.named_modules():
        on = None
        if isinstance(m, _CONVS) and hasattr(m, "dmad_qa_in"):
            on = names is None or name in names
            hyb = not on and name in hybrid
            m.parametrizations.weight[0].switch(on or hyb)
            m.dmad_qa_in.switch(on or hyb)
            m.dmad_qa_in.dynamic = hyb
            m.dmad_qa_out.switch(on)
        elif isinstance(m, nn.Tanh) and hasattr(m, "dmad_qa_out"):
            m.dmad_qa_out.switch(tanh)


@torch.no_grad()
def observe_ranges(model: nn.Module, batches: list[Tensor]) -> None:
    """Set every range and channel statistic from ``batches`` with all fake int8 on: only the
    observers run in training mode (norms and dropout stay in eval), so the model is the one
    the export quantises and nothing else of it changes."""
    model.eval()
    switch_layers(model, None)
    observers = [m for m in model.modules() if isinstance(m, _ActFQ)]
    for m in observers:
        m.train()
    try:
        for x in batches:
            model(x)
    finally:
        for m in observers:
            m.eval()
