"""``compress/graph_prune.py``: masks on the traced sites and exact pruning of any generator the
structure tracer reads. Property test: random masks (a share of channels exactly 0, the rest
soft values, sometimes a whole space zeroed) on every supported architecture; the pruned
``GraphModule`` must equal the masked model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dmad.compress.graph_prune import ChannelScale, attach_graph_masks, prune_graph
from dmad.compress.masks import MaskedNorm
from dmad.compress.models import ResnetSpec, UnetSpec, build
from dmad.compress.structure import derive_structure
from tests.reference_generators import (
    CutResnet,
    GroupNormNet,
    InHouse,
    Pix2PixHDGlobal,
    PreNorm,
    ShuffleUp,
)

ARCHS = {
    "resnet": lambda: build(ResnetSpec(ngf=8, n_blocks=3)),
    "separable": lambda: build(ResnetSpec(ngf=8, n_blocks=2, separable=True)),
    "unet": lambda: build(UnetSpec(ngf=4, num_downs=5)),
    "cut-antialias": lambda: CutResnet(ngf=8, n_blocks=2, antialias=True),
    "cut": lambda: CutResnet(ngf=8, n_blocks=2, antialias=False),
    "pix2pixhd": lambda: Pix2PixHDGlobal(ngf=4, n_down=3, n_blocks=2),
    "in-house": lambda: InHouse(ngf=8),
    "pixel-shuffle": lambda: ShuffleUp(ngf=8),
    "groupnorm": lambda: _affine(GroupNormNet(ngf=8)),
    "pre-norm": lambda: _affine(PreNorm()),
}


def _affine(m: nn.Module) -> nn.Module:
    """GroupNorm's affine away from 1/0, so that a wrongly pruned group shows."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.GroupNorm):
                mod.weight.uniform_(0.5, 1.5, generator=g)
                mod.bias.uniform_(-0.5, 0.5, generator=g)
    return m


def _random_masks(masks: dict, seed: int, chunks: dict[str, int] | None = None) -> None:
    """Random masks; a GroupNorm site (``chunks``) is switched off by whole groups, else almost
    none of its groups would ever empty."""
    g = torch.Generator().manual_seed(seed)
    # a residual branch's inner width zeroed whole (the branch then adds only constants); a
    # space on the only path from the input would leave a network of rounding noise alone,
    # which two summation orders need not agree on
    inner = [n for n in masks if n.endswith(("conv1.norm", "conv_block.2"))]
    emptied = inner[int(torch.randint(len(inner), (1,), generator=g))] if inner else None
    with torch.no_grad():
        for name, mk in masks.items():
            size = (chunks or {}).get(name, 1)
            off = (torch.rand(mk.channels // size, generator=g) < 0.5).repeat_interleave(size)
            if name == emptied:
                off[:] = True  # a whole space zeroed: the branch that reads it gets nothing
            mk.weight.copy_(torch.where(off, -5.0, 0.05 + torch.rand(mk.channels, generator=g)))
            mk.bound.fill_(0.5)  # soft values in (0, 1] where kept, exactly 0 where not


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_pruned_equals_masked(arch: str, seed: int) -> None:
    torch.manual_seed(seed)
    m = ARCHS[arch]().eval()
    st = derive_structure(m)
    masks = attach_graph_masks(m)
    assert list(masks) == [s.name for s in st.sites]
    _random_masks(masks, seed, st.chunks)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        ref, pruned = m(x), prune_graph(m)
        out = pruned(x)
    assert (out - ref).abs().max().item() < 1e-5
    n0 = sum(p.numel() for p in m.parameters())
    n1 = sum(p.numel() for p in pruned.parameters())
    # GroupNorm spaces go by whole groups, grouped convolutions and pre-norm streams whole
    assert n1 < (0.9 if arch in ("groupnorm", "pre-norm") else 0.8) * n0
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # untouched
    assert not any(isinstance(mod, MaskedNorm) for mod in pruned.modules())


def test_masks_of_one_are_dropped_and_values_are_carried() -> None:
    m = InHouse(ngf=8).eval()
    masks = attach_graph_masks(m)
    assert attach_graph_masks(m) == masks  # idempotent
    with torch.no_grad():
        for mk in masks.values():
            mk.weight.fill_(5.0)
            mk.bound.fill_(0.0)  # every mask exactly 1
        masks["up.2"].weight[:3] = -5.0
    pruned = prune_graph(m)
    assert not any(isinstance(mod, ChannelScale) for mod in pruned.modules())
    assert pruned.get_submodule("up.1").out_channels == 5
    assert pruned.get_submodule("head").in_channels == 5 + 8  # the long skip keeps stem's 8
    with torch.no_grad():
        masks["stem.1"].bound.fill_(0.5)
        masks["stem.1"].weight.fill_(0.1)  # soft: carried as a fixed scale
    pruned = prune_graph(m)
    assert isinstance(pruned.get_submodule("stem.1"), nn.Sequential)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert (pruned(x) - m(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "cut-antialias"])
def test_graph_macs_equal_the_profile_of_the_pruned_model(arch: str) -> None:
    """The budget's graph count (both conventions) equals ``arch.profile`` of the real model,
    full and pruned, at a side other than the one traced (MACs scale with the side²)."""
    from dmad.compress.arch import profile
    from dmad.compress.graph_cost import GraphSpec

    torch.manual_seed(0)
    m = ARCHS[arch]().eval()
    spec = GraphSpec.of(m, side=64)
    p = profile(m, (1, 3, 128, 128))
    assert spec.macs({}, 128)[:2] == (p.macs_paper, p.macs_true)
    masks = attach_graph_masks(m)
    _random_masks(masks, 3)
    p = profile(prune_graph(m), (1, 3, 128, 128))
    assert spec.macs(spec.kept(masks), 128)[:2] == (p.macs_paper, p.macs_true)


def test_a_residual_branch_pruned_to_nothing_is_folded_into_a_constant(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """CUT with one block's inner mask all zero: the block's layers are gone, what it still
    added is one per-channel constant (``ChannelShift``), the output is unchanged, the budget's
    MACs are the pruned model's, and the export is exact; a branch that feeds a concatenation
    (the in-house generator's long skip) is never folded."""
    from dmad.compress.arch import profile
    from dmad.compress.graph_cost import GraphSpec
    from dmad.compress.graph_prune import ChannelShift
    from dmad.export.api import ExportConfig, export_model

    torch.manual_seed(0)
    m = CutResnet(ngf=8, n_blocks=3, antialias=False).eval()
    spec = GraphSpec.of(m, side=64)
    masks = attach_graph_masks(m)
    _random_masks(masks, 5)
    with torch.no_grad():
        masks["model.11.conv_block.2"].weight.fill_(-5.0)
        masks["model.11.conv_block.2"].bound.fill_(0.5)
    pruned = prune_graph(m)
    names = [n for n, _ in pruned.named_modules()]
    assert not any(n.startswith("model.11.") for n in names)
    assert sum(isinstance(x, ChannelShift) for x in pruned.modules()) >= 1
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert (pruned(x) - m(x)).abs().max() < 1e-5
    p = profile(pruned, (1, 3, 128, 128))
    assert spec.macs(spec.kept(masks), 128)[:2] == (p.macs_paper, p.macs_true)
    rep = export_model(ExportConfig(out=tmp_path / "o", module=pruned, size=64, quant=("fp32",),
                                    num_eval=2)).report
    assert rep["artifacts"]["fp32"]["parity"]["psnr_worst_db"] >= 100
    h = InHouse(ngf=8).eval()
    hm = attach_graph_masks(h)
    with torch.no_grad():
        hm["stem.1"].weight.fill_(-5.0)  # the stem feeds the long concatenated skip
        hm["stem.1"].bound.fill_(0.5)
    assert GraphSpec.of(InHouse(ngf=8), 64).removable == {}
    hp = prune_graph(h)
    assert not any(isinstance(x, ChannelShift) for x in hp.modules())
    with torch.no_grad():
        assert (hp(x) - h(x)).abs().max() < 1e-5
