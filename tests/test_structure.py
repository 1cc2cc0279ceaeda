"""``compress/structure.py``: channel structure read off the traced graph. The two families
dmad ships must come out exactly as their hand-written tables (DMAD's mask table, its residual
stream of ``down2`` and every ``block{i}.conv2``), and their MACs counted from the graph must be
those of the profiled pruned class; generators rebuilt from other public repositories
(``tests/reference_generators.py``) must come out as their layers say."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from dmad.compress import budget
from dmad.compress.arch import profile_spec
from dmad.compress.errors import DmadError
from dmad.compress.graph_cost import channel_groups
from dmad.compress.groups import widths_from_masks
from dmad.compress.masks import attach_masks, mask_sites
from dmad.compress.models import ResnetSpec, ResnetWidths, UnetSpec, build
from dmad.compress.structure import derive_structure
from tests.reference_generators import (
    CutResnet,
    InHouse,
    Pix2PixHDGlobal,
    WithAttention,
)

SPECS = {
    "resnet9": ResnetSpec(ngf=8, n_blocks=9),
    "resnet6 (jz)": ResnetSpec(ngf=8, n_blocks=6),
    "separable": ResnetSpec(ngf=8, n_blocks=2, separable=True),
    "pruned, one block removed": ResnetSpec(
        ngf=8, n_blocks=3, widths=ResnetWidths(4, 6, 12, (5, 0, 3), 6, 4)),
    "unet128 (jz)": UnetSpec(ngf=4, num_downs=7),
    "unet256 batch": UnetSpec(ngf=4, num_downs=8, norm="batch"),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_family_costs_from_the_graph_equal_the_profiled_pruned_class(name: str) -> None:
    """The budget counts dmad's own families from their traced graph, as any generator: for
    random keep sets (some emptying every block) paper MACs, true MACs and parameters equal
    those of the class rebuilt with the surviving widths and profiled layer by layer."""
    spec = SPECS[name]
    masks = attach_masks(build(spec))
    side = 256 if isinstance(spec, UnetSpec) else 64
    gen = torch.Generator().manual_seed(0)
    for trial in range(6):
        keep = {n: torch.rand(m.channels, generator=gen) < torch.rand((), generator=gen)
                for n, m in masks.items()}
        if trial % 3 == 0:  # every block removed, the stream still kept
            keep.update({n: torch.zeros_like(k) for n, k in keep.items() if ".conv1" in n})
        got = budget.cost(spec, masks, keep, side)
        widths, _ = widths_from_masks(spec, masks, keep)
        prof = profile_spec(dataclasses.replace(spec, widths=widths), (1, 3, side, side))
        assert (got.macs_paper, got.macs_true, got.params) == \
            (prof.macs_paper, prof.macs_true, prof.params), (name, trial)


def _hand_table(model: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """DMAD's mask table as it was written by hand for the two families (``mask_sites`` now
    derives it from the traced graph): the expectation it must keep meeting."""
    from dmad.compress.models import ResnetBlock, ResnetGenerator

    rows: list[tuple[str, nn.Module, int]] = []
    if isinstance(model, ResnetGenerator):
        w = model.spec.resolved_widths()
        rows += [("stem", model.stem, w.stem), ("down1", model.down1, w.down1),
                 ("down2", model.down2, w.stream)]
        for i, block in enumerate(model.blocks):
            if isinstance(block, ResnetBlock):
                rows += [(f"block{i}.conv1", block.conv1, w.blocks[i]),
                         (f"block{i}.conv2", block.conv2, w.stream)]
        return [*rows, ("up1", model.up1, w.up1), ("up2", model.up2, w.up2)]
    uw, n = model.spec.resolved_widths(), model.spec.num_downs  # type: ignore[union-attr]
    rows += [(f"down{k}", model.downs[k], uw.down[k]) for k in range(n)]  # type: ignore[index]
    return rows + [(f"up{k}", model.up_block(k), uw.up[k - 1])  # type: ignore[operator]
                   for k in range(n - 1, 0, -1)]


@pytest.mark.parametrize("name", list(SPECS))
def test_the_shipped_families_come_out_as_their_tables(name: str) -> None:
    m = build(SPECS[name])
    st = derive_structure(m)
    path = {id(mod): n for n, mod in m.named_modules()}
    want = [(f"{path[id(unit)]}.norm", c) for _, unit, c in _hand_table(m)]
    assert [(s.name, s.channels) for s in st.sites] == want
    # mask_sites, derived from the trace, is the hand table: names, units, channels, order
    assert [(n, id(u), c) for n, u, c in mask_sites(m)] == \
        [(n, id(u), c) for n, u, c in _hand_table(m)]
    masks = attach_masks(build(SPECS[name]))
    if isinstance(SPECS[name], ResnetSpec):  # the residual stream is one group, down2 first
        dmad_names = dict(zip([n for n, _, _ in _hand_table(m)], [w for w, _ in want],
                              strict=True))
        hand = [n for n in masks if n == "down2" or n.endswith(".conv2")]  # DMAD's writers
        assert st.groups == [[dmad_names[n] for n in hand]]
        assert channel_groups(SPECS[name]) == [hand]  # what the search and pruning use
        assert st.output == ["head.conv"]
    else:  # UNet: every up block concatenates the skip (down k) with the up output
        n = SPECS[name].num_downs  # type: ignore[attr-defined]
        assert st.groups == [] and len(st.concats) == n - 1
        assert st.concats[0] == [f"downs.{n - 2}.norm", "ups.0.norm"]
        assert st.output == [f"ups.{n - 1}.conv"]
    # a masked model (MaskedNorm wrappers) has the same structure
    assert [s.name for s in derive_structure(attach_masks_model(SPECS[name])).sites] == \
        [s.name for s in st.sites]


def attach_masks_model(spec: object) -> nn.Module:
    m = build(spec)  # type: ignore[arg-type]
    attach_masks(m)
    return m


def test_cut_with_antialiasing() -> None:
    """CUT's blur layers (fixed filters as buffers, one group per channel, then a crop) keep
    their channels; each stride-1 conv before a blur is a site; the stream is one group."""
    st = derive_structure(CutResnet(ngf=8, n_blocks=2, antialias=True))
    assert [(s.name, s.channels) for s in st.sites] == [
        ("model.2", 8), ("model.5", 16), ("model.9", 32), ("model.12.conv_block.2", 32),
        ("model.12.conv_block.6", 32), ("model.13.conv_block.2", 32),
        ("model.13.conv_block.6", 32), ("model.16", 16), ("model.20", 8)]
    assert st.groups == [["model.9", "model.12.conv_block.6", "model.13.conv_block.6"]]
    assert st.channelwise_filters == ["model.7.filt", "model.11.filt", "model.14.filt",
                                      "model.18.filt"]
    assert st.output == ["model.23"] and st.fixed == [] and st.concats == []
    plain = derive_structure(CutResnet(ngf=8, n_blocks=2, antialias=False))
    assert len(plain.sites) == 9 and plain.channelwise_filters == []


def test_pix2pixhd_global_generator() -> None:
    st = derive_structure(Pix2PixHDGlobal(ngf=4, n_down=4, n_blocks=3))
    chans = [s.channels for s in st.sites]
    assert chans == [4, 8, 16, 32, 64, 64, 64, 64, 64, 64, 64, 32, 16, 8, 4]
    assert st.groups == [["model.14", *(f"model.{i}.conv_block.6" for i in (16, 17, 18))]]
    assert all(s.norm == s.name for s in st.sites)  # a norm after every conv
    bn = derive_structure(Pix2PixHDGlobal(ngf=4, n_down=4, n_blocks=3, in_ch=36,
                                          norm=nn.BatchNorm2d))
    assert [s.channels for s in bn.sites] == chans


def test_in_house_bilinear_and_long_skip() -> None:
    st = derive_structure(InHouse(ngf=8))
    assert [(s.name, s.channels) for s in st.sites] == [("stem.1", 8), ("down.1", 16),
                                                         ("body.1", 16), ("up.2", 8)]
    assert st.concats == [["up.2", "stem.1"]] and st.output == ["head"]


def test_a_residual_from_the_input_image_is_kept_whole() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, 1, 1)
            self.n = nn.InstanceNorm2d(8)
            self.b = nn.Conv2d(8, 3, 3, 1, 1)
            self.c = nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(x + self.b(torch.relu(self.n(self.a(x)))))

    st = derive_structure(Residual())
    assert [s.name for s in st.sites] == ["n"] and st.fixed == ["b"] and st.output == ["c"]


def test_an_unsupported_layer_is_one_line_naming_it_and_its_op() -> None:
    with pytest.raises(DmadError) as ei:
        derive_structure(WithAttention())
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("attn: method .flatten() is not supported")

    class NormOverCat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, 1, 1), nn.Conv2d(3, 4, 3, 1, 1)
            self.n, self.h = nn.GroupNorm(2, 8), nn.Conv2d(8, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.h(self.n(torch.cat([self.a(x), self.b(x)], 1)))

    with pytest.raises(DmadError, match=r"^n: GroupNorm over concatenated channels is not "):
        derive_structure(NormOverCat())


def test_groupnorm_grouped_conv_and_space_to_depth_stem() -> None:
    """GroupNorm spaces are pruned in whole groups (the lcm of the group sizes on one space),
    a grouped convolution's input and output spaces and a GroupNorm(1)'s are kept whole, and a
    PixelUnshuffle of the input image is followed (its channels are the image's: fixed)."""
    from tests.reference_generators import GroupNormNet

    st = derive_structure(GroupNormNet(ngf=8))
    assert [(s.name, s.channels) for s in st.sites] == [
        ("stem.2", 8), ("down.1", 16), ("blocks.0.1", 16), ("blocks.0.4", 16),
        ("blocks.1.1", 16), ("blocks.1.4", 16), ("up.2", 8)]
    # stream groups of 4 (down) and 2 (blocks' GroupNorm(8, 16)) → lcm 4; inner GroupNorm(2)
    assert st.chunks == {"stem.2": 2, "down.1": 4, "blocks.0.1": 8, "blocks.0.4": 4,
                         "blocks.1.1": 8, "blocks.1.4": 4, "up.2": 4}
    assert st.groups == [["down.1", "blocks.0.4", "blocks.1.4"]]
    assert st.fixed == ["mix.1", "mix.4"] and st.output == ["head.0"]
    # pre-norm blocks: the GroupNorms reading the stream are no conv's site, and their β would
    # reach a pruned stream channel's readers, so the stream is kept whole
    from tests.reference_generators import PreNorm

    st = derive_structure(PreNorm())
    assert [s.name for s in st.sites] == ["blocks.0.3", "blocks.1.3"] and st.groups == []
    assert st.fixed == ["stem.1", "blocks.0.5", "blocks.1.5"]


def test_pixel_shuffle_after_a_conv_is_pruned_in_blocks_of_r_squared() -> None:
    """The mask sits on the shuffled channels (after the norm that follows, else on the
    shuffle itself); PixelUnshuffle of a conv's channels, and a shuffle of a conv that feeds
    anything else, are one line each."""
    from tests.reference_generators import ShuffleUp

    st = derive_structure(ShuffleUp(8))
    sites = {s.name: (s.channels, s.norm) for s in st.sites}
    assert sites["up1.2"] == (8, "up1.2") and sites["up2.1"] == (8, None)
    assert "up1.0" not in sites and st.groups == [["down.4", "block.4"]]

    class Unshuffle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.u, self.b = nn.Conv2d(3, 4, 3, 1, 1), nn.PixelUnshuffle(2), \
                nn.Conv2d(16, 3, 3, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.u(self.a(x)))

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.s, self.b = nn.Conv2d(3, 16, 3, 1, 1), nn.PixelShuffle(2), \
                nn.Conv2d(4, 3, 3, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return self.b(self.s(h)) + nn.functional.interpolate(h[:, :3], scale_factor=2.0)

    for m, says in ((Unshuffle(), "u: PixelUnshuffle on pruned channels is not supported"),
                    (Shared(), "s: PixelShuffle is not supported")):
        with pytest.raises(DmadError) as e:
            derive_structure(m)
        assert says in str(e.value) and "\n" not in str(e.value)
