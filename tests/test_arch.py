"""MAC and parameter counts: the published figures, both conventions, per-layer rules."""

from __future__ import annotations

import pytest
import torch

from dmad.compress.arch import format_table, profile
from dmad.compress.models import ResnetGenerator, ResnetSpec, ResnetWidths, UnetGenerator


def test_resnet9_ngf64_published_figures() -> None:
    prof = profile(ResnetGenerator(), (1, 3, 256, 256))
    assert prof.params == 11_378_179
    assert round(prof.macs_paper / 1e9, 1) == 56.8
    assert round(prof.macs_true / 1e9, 2) == 49.55


def test_unet256_ngf64_params() -> None:
    prof = profile(UnetGenerator(), (1, 3, 256, 256))
    assert round(prof.params / 1e6, 2) == 54.41
    assert round(prof.macs_true / 1e9, 2) == 6.05


def test_conventions_differ_only_by_convtranspose_grid_bias_and_norms() -> None:
    prof = profile(ResnetGenerator(ResnetSpec(ngf=8, n_blocks=1)), (1, 3, 64, 64))
    rows = {r.name: r for r in prof.layers}
    up = rows["up1.conv"]  # 32 -> 16 channels, 16² -> 32²
    assert up.macs_true == 16 * 16 * 32 * 16 * 9
    assert up.macs_paper == 32 * 32 * 16 * (32 * 9 + 1)
    stem = rows["stem.conv"]
    assert stem.macs_true == 64 * 64 * 8 * 3 * 49
    assert stem.macs_paper == stem.macs_true + 64 * 64 * 8  # + bias


def test_profile_does_not_touch_the_model() -> None:
    g = ResnetGenerator(ResnetSpec(ngf=4, n_blocks=1))
    before = {k: v.clone() for k, v in g.state_dict().items()}
    profile(g, (1, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())
    assert next(g.parameters()).device.type == "cpu"


def test_pruned_widths_cost_less_and_removed_block_costs_nothing() -> None:
    full = profile(ResnetGenerator(ResnetSpec(ngf=8, n_blocks=2)), (1, 3, 64, 64))
    w = ResnetWidths(8, 16, 32, (32, 0), 16, 8)
    half = profile(ResnetGenerator(ResnetSpec(ngf=8, n_blocks=2, widths=w)), (1, 3, 64, 64))
    block = sum(r.macs_true for r in full.layers if r.name.startswith("blocks.1."))
    assert full.macs_true - half.macs_true == block


def test_separable_is_cheaper_and_counts_groups() -> None:
    dense = profile(ResnetGenerator(ResnetSpec(ngf=16, n_blocks=2)), (1, 3, 64, 64))
    sep = profile(ResnetGenerator(ResnetSpec(ngf=16, n_blocks=2, separable=True)), (1, 3, 64, 64))
    assert sep.macs_true < dense.macs_true
    dw = next(r for r in sep.layers if r.name == "blocks.0.conv1.conv.depthwise")
    assert dw.macs_true == 16 * 16 * 64 * 9  # one input channel per group


def test_macs_scale_with_area_and_table_lists_layers() -> None:
    g = ResnetGenerator(ResnetSpec(ngf=4, n_blocks=1))
    a, b = profile(g, (1, 3, 32, 32)), profile(g, (1, 3, 64, 64))
    assert b.macs_true == 4 * a.macs_true
    table = format_table(a)
    assert "up2.conv" in table and "total" in table
    with pytest.raises(ValueError):
        a.macs("thop")
