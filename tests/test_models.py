"""Generators and discriminator: shapes for every variant, widths as data, spec round trips."""

from __future__ import annotations

import pytest
import torch

from dmad.compress.models import (
    DiscriminatorSpec,
    PatchDiscriminator,
    ResnetGenerator,
    ResnetSpec,
    ResnetWidths,
    UnetGenerator,
    UnetSpec,
    UnetWidths,
    build,
    spec_from_dict,
    spec_to_dict,
)


@pytest.mark.parametrize("norm", ["instance", "instance_affine", "batch"])
@pytest.mark.parametrize("padding", ["reflect", "zero"])
@pytest.mark.parametrize("separable", [False, True])
def test_resnet_variants_keep_image_shape(norm: str, padding: str, separable: bool) -> None:
    g = ResnetGenerator(ResnetSpec(ngf=4, n_blocks=2, norm=norm, padding=padding,
                                   separable=separable)).eval()
    y = g(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 3, 32, 32)
    assert y.abs().max() <= 1.0  # Tanh head


def test_resnet_custom_widths_and_removed_block() -> None:
    widths = ResnetWidths(stem=3, down1=5, stream=7, blocks=(2, 0, 1), up1=4, up2=6)
    g = ResnetGenerator(ResnetSpec(ngf=8, n_blocks=3, widths=widths)).eval()
    assert g(torch.randn(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    assert isinstance(g.blocks[1], torch.nn.Identity)  # removed block keeps its position
    assert g.blocks[0].conv1.conv.out_channels == 2
    assert g.down2.conv.out_channels == 7 and g.up1.conv.in_channels == 7
    assert g.head.conv.in_channels == 6
    assert widths.as_list() == [3, 5, 7, 2, 7, 0, 0, 1, 7, 4, 6]


def test_resnet_separable_structure() -> None:
    g = ResnetGenerator(ResnetSpec(ngf=4, n_blocks=1, separable=True))
    conv = g.blocks[0].conv1.conv
    assert conv.depthwise.groups == conv.depthwise.in_channels == 16
    assert conv.pointwise.kernel_size == (1, 1)


def test_resnet_rejects_bad_specs() -> None:
    with pytest.raises(ValueError, match="norm"):
        ResnetSpec(norm="group")
    with pytest.raises(ValueError, match="blocks"):
        ResnetSpec(ngf=4, n_blocks=2, widths=ResnetWidths(1, 1, 1, (1,), 1, 1))
    with pytest.raises(ValueError, match=">= 1"):
        ResnetSpec(ngf=4, n_blocks=1, widths=ResnetWidths(0, 1, 1, (1,), 1, 1))


@pytest.mark.parametrize("num_downs,size", [(5, 32), (6, 64), (8, 256)])
def test_unet_shapes(num_downs: int, size: int) -> None:
    g = UnetGenerator(UnetSpec(ngf=2, num_downs=num_downs)).eval()
    assert g(torch.randn(1, 3, size, size)).shape == (1, 3, size, size)


def test_unet_custom_widths_and_dropout_placement() -> None:
    widths = UnetWidths(down=(3, 5, 2, 4, 6, 1), up=(2, 7, 1, 3, 5))
    g = UnetGenerator(UnetSpec(ngf=4, num_downs=6, widths=widths)).eval()
    assert g(torch.randn(2, 3, 64, 64)).shape == (2, 3, 64, 64)
    # block 2 up conv: [skip of block 3 = down[2] = 2] + [up output of block 3 = up[2] = 1]
    assert g.up_block(2).conv.in_channels == 2 + 1
    assert g.up_block(0).conv.in_channels == 3 + 2 and g.up_block(0).conv.out_channels == 3
    dropouts = [k for k in range(6) if isinstance(g.up_block(k).dropout, torch.nn.Dropout)]
    assert dropouts == [4]  # num_downs - 5 = 1 block of 8·ngf with dropout
    full = UnetGenerator(UnetSpec(ngf=2, num_downs=8))
    assert [k for k in range(8) if isinstance(full.up_block(k).dropout, torch.nn.Dropout)] == [
        4, 5, 6]


def test_unet_eval_is_deterministic_train_uses_dropout() -> None:
    g = UnetGenerator(UnetSpec(ngf=2, num_downs=6))
    x = torch.randn(1, 3, 64, 64)
    g.eval()
    assert torch.equal(g(x), g(x))
    g.train()
    assert not torch.equal(g(x), g(x))


@pytest.mark.parametrize("input_nc,norm", [(3, "instance"), (6, "batch")])
def test_discriminator_patch_map(input_nc: int, norm: str) -> None:
    d = PatchDiscriminator(DiscriminatorSpec(input_nc=input_nc, ndf=4, norm=norm))
    assert d(torch.randn(2, input_nc, 256, 256)).shape == (2, 1, 30, 30)
    assert d.last_hidden == "model.10"
    # original key layout (pytorch-CycleGAN-and-pix2pix NLayerDiscriminator)
    keys = set(d.state_dict())
    assert {"model.0.weight", "model.2.weight", "model.5.weight", "model.8.weight",
            "model.11.weight"} <= keys


@pytest.mark.parametrize("spec", [
    ResnetSpec(ngf=4, n_blocks=2, separable=True, widths=ResnetWidths(1, 2, 3, (0, 4), 5, 6)),
    UnetSpec(ngf=2, num_downs=6, widths=UnetWidths((1, 2, 3, 4, 5, 6), (7, 8, 9, 1, 2))),
    DiscriminatorSpec(input_nc=6, ndf=8, norm="batch"),
])
def test_spec_dict_round_trip(spec) -> None:  # type: ignore[no-untyped-def]
    d = spec_to_dict(spec)
    assert spec_from_dict(d) == spec
    model = build(spec_from_dict(d))
    assert model.spec == spec


def test_spec_from_dict_names_bad_field() -> None:
    with pytest.raises(ValueError, match="bogus"):
        spec_from_dict({"family": "resnet", "bogus": 1})
    with pytest.raises(ValueError, match="family"):
        spec_from_dict({"family": "vgg"})
