"""The sub-pixel rewrite of strided ConvTranspose layers is exact (issue 15's phone-GPU-safe
graph): single layers of every eligible shape, and whole generators of each family."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dmad.compress.models import ResnetGenerator, ResnetSpec, UnetGenerator, UnetSpec
from dmad.export.subpixel import SubPixelConvTranspose2d, eligible, to_subpixel


@pytest.mark.parametrize(("k", "s", "p", "op"), [(3, 2, 1, 1), (4, 2, 1, 0), (2, 2, 0, 0),
                                                 (5, 2, 2, 1), (6, 3, 2, 1), (3, 3, 0, 0)])
@pytest.mark.parametrize("bias", [True, False])
def test_single_layer_is_exact(k: int, s: int, p: int, op: int, bias: bool) -> None:
    torch.manual_seed(k * 10 + s)
    t = nn.ConvTranspose2d(5, 7, k, s, p, op, bias=bias)
    assert eligible(t)
    sp = SubPixelConvTranspose2d(t)
    for h, w in ((4, 4), (5, 7), (16, 9)):
        x = torch.randn(2, 5, h, w)
        ref, got = t(x), sp(x)
        assert got.shape == ref.shape == (2, 7, s * h, s * w)
        assert (got - ref).abs().max().item() < 1e-5
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in sp.modules())


def test_ineligible_layers_are_refused_or_left() -> None:
    assert not eligible(nn.ConvTranspose2d(4, 4, 3, 2, 1, 0))  # output 2H − 1
    assert not eligible(nn.ConvTranspose2d(4, 4, 3, 1, 1))  # stride 1: nothing to gain
    assert not eligible(nn.ConvTranspose2d(4, 4, 4, 2, 1, groups=2))
    with pytest.raises(ValueError, match="no exact sub-pixel form"):
        SubPixelConvTranspose2d(nn.ConvTranspose2d(4, 4, 3, 2, 1, 0))
    model = nn.Sequential(nn.ConvTranspose2d(4, 4, 3, 2, 1, 0))
    copy, n = to_subpixel(model)
    assert n == 0 and isinstance(copy[0], nn.ConvTranspose2d)


@pytest.mark.parametrize("family", ["resnet", "separable", "unet"])
def test_generators_are_unchanged_and_lose_every_transpose_conv(family: str) -> None:
    torch.manual_seed(0)
    if family == "unet":
        g = UnetGenerator(UnetSpec(ngf=8, num_downs=5, norm="batch", dropout=False))
        sizes, ups = (32, 64), 5
    else:
        g = ResnetGenerator(ResnetSpec(ngf=8, n_blocks=2, separable=family == "separable"))
        sizes, ups = (32, 44), 2
    for m in g.modules():  # non-trivial norm statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    g.eval()
    new, n = to_subpixel(g)
    assert n == ups
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in new.modules())
    assert any(isinstance(m, nn.ConvTranspose2d) for m in g.modules())  # the original is kept
    with torch.no_grad():
        for size in sizes:
            x = torch.randn(1, 3, size, size)
            assert (new(x) - g(x)).abs().max().item() < 1e-5
