"""MAC and parameter counting from layer shapes, in two conventions.

* ``paper`` — the thop convention the DMAD / GAN Compression papers report: every conv and
  ConvTranspose costs ``output elements × (C_in/groups · k² + bias)``, so a stride-2 ConvTranspose
  is counted on its *output* grid (4× its real work); BatchNorm 2 per element, LeakyReLU 1.
* ``true`` — the multiply-accumulates actually executed: conv ``out elements · C_in/groups · k²``,
  ConvTranspose ``in elements · C_out/groups · k²`` (each input pixel scatters a k×k×C_out patch);
  norms, activations and bias adds are not multiply-accumulates and are not counted.

Shapes come from one forward pass on the ``meta`` device: no memory, no compute, exact shapes.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
from torch import nn

CONVENTIONS = ("paper", "true")


@dataclass(frozen=True)
class LayerCost:
    """One leaf layer's cost at the profiled input size."""

    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: int
    macs_paper: int
    macs_true: int


@dataclass(frozen=True)
class Profile:
    """Per-layer costs plus totals; ``macs(convention)`` picks a convention."""

    input_shape: tuple[int, ...]
    layers: tuple[LayerCost, ...]
    params: int

    @property
    def macs_paper(self) -> int:
        return sum(layer.macs_paper for layer in self.layers)

    @property
    def macs_true(self) -> int:
        return sum(layer.macs_true for layer in self.layers)

    def macs(self, convention: str = "paper") -> int:
        if convention not in CONVENTIONS:
            raise ValueError(f"MAC convention must be one of {CONVENTIONS}, got {convention!r}")
        return self.macs_paper if convention == "paper" else self.macs_true

    def summary(self) -> dict[str, float | int | list[int]]:
        return {
            "input_shape": list(self.input_shape),
            "params": self.params,
            "gmacs_paper": self.macs_paper / 1e9,
            "gmacs_true": self.macs_true / 1e9,
        }


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _costs(m: nn.Module, x: torch.Size, y: torch.Size) -> tuple[int, int]:
    """(paper, true) MACs of one leaf module given its input and output shapes."""
    xs, ys = tuple(x), tuple(y)
    if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
        k = _numel(tuple(m.kernel_size))
        bias = 1 if m.bias is not None else 0
        paper = _numel(ys) * (m.in_channels // m.groups * k + bias)
        if isinstance(m, nn.ConvTranspose2d):
            true = _numel(xs) * (m.out_channels // m.groups) * k
        else:
            true = _numel(ys) * (m.in_channels // m.groups) * k
        return paper, true
    if isinstance(m, nn.BatchNorm2d):
        return 2 * _numel(xs), 0
    if isinstance(m, nn.LeakyReLU):
        return _numel(xs), 0
    return 0, 0


def _drop_instance_norms(model: nn.Module) -> None:
    """InstanceNorm costs nothing in either convention and its meta kernel is a slow
    decomposition; an Identity has the same shapes, which is all the count needs."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.InstanceNorm2d):
            setattr(model, name, nn.Identity())
        else:
            _drop_instance_norms(child)


def profile(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 256, 256)) -> Profile:
    """Count MACs and parameters of ``model`` for an input of ``input_shape``.

    The model is deep-copied to the meta device, so neither it nor any memory is touched.
    Parameters are counted once per tensor (shared tensors once), masks' own scalars included.
    """
    meta = copy.deepcopy(model).to("meta").eval()
    _drop_instance_norms(meta)
    rows: list[LayerCost] = []
    hooks = []

    def hook(name: str):  # type: ignore[no-untyped-def]
        def fn(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            paper, true = _costs(m, inp[0].shape, out.shape)
            params = sum(p.numel() for p in m.parameters(recurse=False))
            rows.append(
                LayerCost(
                    name,
                    type(m).__name__,
                    tuple(inp[0].shape),
                    tuple(out.shape),
                    params,
                    paper,
                    true,
                )
            )

        return fn

    for name, m in meta.named_modules():
        if not any(True for _ in m.children()):
            hooks.append(m.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            meta(torch.empty(input_shape, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return Profile(tuple(input_shape), tuple(rows), params)


def format_table(prof: Profile) -> str:
    """A per-layer table (name, kind, output shape, params, both MAC conventions)."""
    head = (
        f"{'layer':<28} {'kind':<16} {'output':<18} {'params':>10} "
        f"{'MACs paper':>14} {'MACs true':>14}"
    )
    lines = [head, "-" * len(head)]
    for r in prof.layers:
        if r.params == 0 and r.macs_paper == 0 and r.macs_true == 0:
            continue
        shape = "x".join(str(s) for s in r.out_shape[1:])
        lines.append(
            f"{r.name:<28} {r.kind:<16} {shape:<18} {r.params:>10,} "
            f"{r.macs_paper:>14,} {r.macs_true:>14,}"
        )
    lines.append("-" * len(head))
    lines.append(
        f"{'total':<28} {'':<16} {'':<18} {prof.params:>10,} "
        f"{prof.macs_paper:>14,} {prof.macs_true:>14,}"
    )
    return "\n".join(lines)


@functools.lru_cache(maxsize=4096)
def profile_spec(spec, input_shape: tuple[int, ...]) -> Profile:  # type: ignore[no-untyped-def]
    """Profile the model a spec describes, built directly on the meta device (no allocation),
    so searching over candidate widths costs milliseconds even for full-size generators.
    Specs are frozen dataclasses, so results are cached: a search revisits the same widths."""
    from dmad.compress.models import build

    with torch.device("meta"):
        model = build(spec)
    return profile(model, input_shape)
