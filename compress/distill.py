"""Distillation terms of the fine-tune: what makes a student look like its teacher, per step.

A teacher-G-only student learns from the teacher's outputs alone. The L1 to those outputs is
the backbone; these terms add what L1 under-weights:

* **SSIM** (structure and local contrast, where halos and over-sharpening show);
* **colour moments**: each output channel's mean and standard deviation against the teacher's,
  per image, which is what the eye reads first (a cast of a few levels over a whole photograph
  is visible although its L1 is tiny);
* **features through 1×1 adapters** at the co-attention taps (GAN Compression's intermediate
  distillation): the student's narrower features are mapped to the teacher's width and matched;
* a **weight average** (EMA) of the student, which is what is evaluated, kept and exported: a
  short, noisy fine-tune's last weights are one sample of a wandering trajectory, their average
  is a better model.

Pure functions and small modules; the fine-tune stage decides which are on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from dmad.compress.errors import DmadError

#: SSIM constants of Wang et al. 2004 on [0, 1] images.
_C1, _C2 = 0.01**2, 0.03**2


def _window(channels: int, device: torch.device, dtype: torch.dtype,
            side: int = 11) -> torch.Tensor:
    x = torch.arange(side, device=device, dtype=dtype) - side // 2
    g = torch.exp(-(x**2) / (2 * 1.5**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, side, side).contiguous()


def ssim_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − SSIM (11×11 Gaussian σ 1.5, valid windows) of images in [-1, 1]; differentiable.

    Computed in float32 whatever the autocast precision: the variance terms are differences of
    squares and lose their digits in bf16. Images under 11 pixels (tiny test runs) use the
    largest odd window that fits, so the term never fails a run."""
    x, y = (a.float() + 1) / 2, (b.float() + 1) / 2
    c = x.shape[1]
    side = min(11, min(x.shape[-2:]))
    w = _window(c, x.device, x.dtype, side - (1 - side % 2))
    with torch.autocast(x.device.type, enabled=False):
        mx, my = F.conv2d(x, w, groups=c), F.conv2d(y, w, groups=c)
        sxx = F.conv2d(x * x, w, groups=c) - mx**2
        syy = F.conv2d(y * y, w, groups=c) - my**2
        sxy = F.conv2d(x * y, w, groups=c) - mx * my
        s = ((2 * mx * my + _C1) * (2 * sxy + _C2)) / ((mx**2 + my**2 + _C1) * (sxx + syy + _C2))
    return 1 - s.mean()


def colour_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and standard deviation (N×C each) of images."""
    flat = x.float().flatten(2)
    return flat.mean(2), flat.std(2, unbiased=False)


def colour_moment_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the per-image channel means plus that of the channel
    standard deviations (in the images' own units, [-1, 1])."""
    ma, sa = colour_moments(a)
    mb, sb = colour_moments(b)
    return (ma - mb).abs().mean() + (sa - sb).abs().mean()


class FeatureAdapters(nn.Module):
    """One learnable 1×1 convolution per tap, from the student's width to the teacher's.

    The loss is the mean squared error between the adapted student feature and the teacher's
    (GAN Compression's choice); adapters train with the student and are never exported."""

    def __init__(self, widths: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        if not widths:
            raise DmadError("field lambda_features: the student and the teacher share no "
                            "feature tap (different architectures); set it to 0")
        self.names = sorted(widths)
        self.convs = nn.ModuleList(nn.Conv2d(s, t, 1) for s, t in (widths[n] for n in self.names))

    def forward(self, student: dict[str, torch.Tensor],
                teacher: dict[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), device=next(iter(teacher.values())).device)
        for name, conv in zip(self.names, self.convs, strict=True):
            total = total + F.mse_loss(conv(student[name]).float(), teacher[name].detach().float())
        return total / len(self.names)


class WeightAverage:
    """Exponential moving average of a module's parameters; its buffers are copied as they are.

    ``decay`` is reached gradually (``min(decay, (1 + n) / (10 + n))`` after n updates, as
    TensorFlow's ExponentialMovingAverage with ``num_updates``), so the average of a short run
    is not dominated by its starting weights. Buffers (BatchNorm statistics, the fake-int8
    ranges of quantisation-aware training) describe the current weights' activations, so an
    average of them would lag what the averaged weights need; they follow the live module. The
    state is plain tensors, saved in checkpoints, so a resumed run averages exactly as an
    uninterrupted one."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.params = {k for k, _ in module.named_parameters()}
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold the module's current weights in (after each optimiser step)."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in module.state_dict().items():
            s = self.shadow[k]
            if k in self.params and v.is_floating_point():
                s.mul_(d).add_(v.detach().to(s.dtype), alpha=1 - d)
            else:
                s.copy_(v)

    def state_dict(self) -> dict[str, object]:
        """Decay, update count and the averaged tensors (on the CPU), for a checkpoint."""
        return {"decay": self.decay, "updates": self.updates,
                "shadow": {k: v.detach().cpu().clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Continue a saved average; another decay than the saved one is refused."""
        if float(state["decay"]) != self.decay:  # type: ignore[arg-type]
            raise DmadError(f"checkpoint.pt: its weight average has decay {state['decay']}, "
                            f"not {self.decay}; resume with the run's --ema")
        self.updates = int(state["updates"])  # type: ignore[call-overload]
        shadow = state["shadow"]
        assert isinstance(shadow, dict)
        for k, v in shadow.items():
            self.shadow[k].copy_(v)


@contextmanager
def swapped(module: nn.Module, weights: dict[str, torch.Tensor] | None) -> Iterator[nn.Module]:
    """Within the block, ``module`` holds ``weights`` (None: its own); its own are restored
    afterwards, whatever happens inside."""
    if weights is None:
        yield module
        return
    saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
    module.load_state_dict(weights)
    try:
        yield module
    finally:
        module.load_state_dict(saved)


def tap_widths(student: nn.Module, teacher: nn.Module, s_taps: dict[str, nn.Module],
               t_taps: dict[str, nn.Module], x: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Channel counts (student, teacher) at the taps both generators share, from one forward."""
    seen: dict[str, list[int]] = {}

    def hook(name: str, slot: int):  # type: ignore[no-untyped-def]
        def fn(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            seen.setdefault(name, [0, 0])[slot] = int(out.shape[1])
        return fn

    handles = [m.register_forward_hook(hook(n, 0)) for n, m in s_taps.items()]
    handles += [m.register_forward_hook(hook(n, 1)) for n, m in t_taps.items()]
    modes = student.training, teacher.training
    try:  # eval mode: a BatchNorm's running statistics must not see this probe
        with torch.no_grad():
            student.eval()(x)
            teacher.eval()(x)
    finally:
        for h in handles:
            h.remove()
        student.train(modes[0])
        teacher.train(modes[1])
    return {n: (s, t) for n, (s, t) in seen.items() if s and t}
