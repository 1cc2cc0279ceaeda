"""Tests for compress.masks and compress.groups: soft step, autograd, losses, groups, attachment."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dmad.compress.graph_cost import channel_groups
from dmad.compress.groups import (
    removed_blocks,
    residual_keep,
    update_group_coefficients,
    widths_from_masks,
)
from dmad.compress.masks import (
    ChannelMask,
    MaskApply,
    MaskedNorm,
    attach_masks,
    bound_at,
    bound_loss,
    detach_masks,
    find_masks,
    group_loss,
    masks_state,
    relu_loss,
    soft_step,
    soft_step_grad,
)
from dmad.compress.models import (
    ResnetGenerator,
    ResnetSpec,
    ResnetWidths,
    UnetGenerator,
    UnetSpec,
    UnetWidths,
)

BOUNDS = [0.005, 0.01, 0.13, 0.5, 1.0]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # type: ignore[no-untyped-def]
    """Tiny tensors: intra-op threads only add contention (100× slower on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


D = torch.float64


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=D)


def away_from_kinks(n: int, b: float, seed: int, margin: float = 2e-3) -> torch.Tensor:
    """w in (−2b, 2b) with no value within ``margin`` of −b, 0, b (finite differences are
    only valid away from the points where the quadratic pieces meet)."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(4 * n, generator=g, dtype=D) * 4 - 2) * b
    ok = torch.ones_like(w, dtype=torch.bool)
    for k in (-b, 0.0, b):
        ok &= (w - k).abs() > margin * max(b, 1e-3)
    w = w[ok][:n]
    assert w.numel() == n
    return w


def hard_mask(m: ChannelMask, on: torch.Tensor | None = None) -> None:
    """Set a mask hard: b = 0, w = +1 on ``on`` (default all), −1 elsewhere."""
    with torch.no_grad():
        keep = torch.ones(m.channels, dtype=torch.bool) if on is None else on
        m.weight.copy_(torch.where(keep, 1.0, -1.0))
        m.bound.fill_(0.0)


# --------------------------------------------------------------------------- soft step


@pytest.mark.parametrize("b", BOUNDS)
def test_soft_step_values_and_continuity(b: float) -> None:
    # The Lagrange nodes DMAD interpolates through.
    w = t(-2 * b, -b, -b / 2, 0.0, b / 2, b, 2 * b)
    assert torch.allclose(soft_step(w, b), t(0, 0, 0.125, 0.5, 0.875, 1, 1), atol=1e-12)
    eps = 1e-9
    for k in (-b, 0.0, b):
        left, right = soft_step(t(k - eps), b), soft_step(t(k + eps), b)
        assert abs(float(right - left)) < 1e-6, (b, k)
        gl, gr = soft_step_grad(t(k - eps), b), soft_step_grad(t(k + eps), b)
        assert abs(float(gr - gl)) * b < 1e-6, (b, k)  # derivative is continuous: C¹
    assert float(soft_step(t(0.0), b)) == 0.5
    assert float(soft_step_grad(t(eps), b)) == pytest.approx(1 / b, rel=1e-6)
    assert float(soft_step_grad(t(-b + eps), b)) * b == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("b", BOUNDS)
def test_soft_step_grad_is_the_derivative(b: float) -> None:
    w = away_from_kinks(64, b, seed=1)
    h = 1e-7 * b
    fd = (soft_step(w + h, b) - soft_step(w - h, b)) / (2 * h)
    assert torch.allclose(soft_step_grad(w, b), fd, atol=1e-5 / b)
    outside = (w <= -b) | (w >= b)
    assert outside.any() and (soft_step_grad(w, b)[outside] == 0).all()
    # monotone, in [0, 1]
    grid = torch.linspace(-2 * b, 2 * b, 1001, dtype=D)
    m = soft_step(grid, b)
    assert (m.diff() >= 0).all() and m.min() >= 0 and m.max() <= 1


def test_hard_step_limit_and_b_zero() -> None:
    w = t(-0.3, -1e-3, 0.0, 1e-3, 0.3)
    hard = t(0, 0, 0, 1, 1)
    assert torch.equal(soft_step(w, 0.0), hard)  # m(0) = 0 for the hard step
    assert torch.equal(soft_step(w, torch.tensor(0.0)), hard)
    assert torch.equal(soft_step_grad(w, 0.0), torch.zeros_like(w))
    # b → 0: every w ≠ 0 eventually leaves the band and gets its hard value.
    wn = w[w != 0]
    for b in (1e-4, 1e-6):
        assert torch.equal(soft_step(wn, b), hard[w != 0])


def test_small_bound_uses_dmad_floor_in_the_quadratic() -> None:
    b = 0.002  # 0 < b < 0.005: quadratics use 0.005, band edges stay at ±b
    assert float(soft_step(t(0.001), b)) == pytest.approx(1 - 0.5 * (1 - 0.001 / 0.005) ** 2)
    assert float(soft_step(t(-0.001), b)) == pytest.approx(0.5 * (1 - 0.001 / 0.005) ** 2)
    assert float(soft_step(t(0.0025), b)) == 1.0 and float(soft_step(t(-0.0025), b)) == 0.0
    assert float(soft_step_grad(t(0.001), b)) == pytest.approx((1 - 0.2) / 0.005)


# --------------------------------------------------------------------------- MaskApply


def reference(x: torch.Tensor, w: torch.Tensor, b: float) -> torch.Tensor:
    return x * soft_step(w, b)[None, :, None, None]


@pytest.mark.parametrize("b", [0.05, 0.4, 1.0])
def test_mask_apply_gradcheck_and_reference(b: float) -> None:
    c = 12
    w = away_from_kinks(c, b, seed=2).requires_grad_(True)
    x = torch.randn(2, c, 3, 4, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: MaskApply.apply(x, w, b), (x, w))
    g = torch.randn(2, c, 3, 4, dtype=D)
    out = MaskApply.apply(x, w, b)
    dx, dw = torch.autograd.grad(out, (x, w), g)
    ref = reference(x, w, b)
    rdx, rdw = torch.autograd.grad(ref, (x, w), g)
    assert torch.allclose(out, ref, atol=0, rtol=0)
    assert torch.allclose(dx, rdx, atol=1e-12) and torch.allclose(dw, rdw, atol=1e-10)
    # Finite differences of the scalar <g, out> with respect to each w_c.
    h = 1e-7
    wd = w.detach()
    fd = torch.stack(
        [
            (
                (g * reference(x.detach(), wd + h * e, b)).sum()
                - (g * reference(x.detach(), wd - h * e, b)).sum()
            )
            / (2 * h)
            for e in torch.eye(c, dtype=D)
        ]
    )
    assert torch.allclose(dw, fd, atol=1e-6)


def test_mask_apply_dw_zero_outside_band_and_at_b_zero() -> None:
    b = 0.3
    w = t(-0.9, -0.31, -0.1, 0.0, 0.2, 0.31, 0.9).requires_grad_(True)
    x = torch.randn(3, 7, 2, 2, dtype=D)
    (dw,) = torch.autograd.grad(MaskApply.apply(x, w, b).sum(), (w,))
    outside = (w.detach() <= -b) | (w.detach() >= b)
    assert (dw[outside] == 0).all() and (dw[~outside] != 0).all()
    xg = x.clone().requires_grad_(True)
    out = MaskApply.apply(xg, w, torch.tensor(0.0))
    dx, dw0 = torch.autograd.grad(out.sum(), (xg, w))
    assert torch.equal(dw0, torch.zeros_like(dw0))  # no straight-through at b = 0
    hard = (w.detach() > 0).to(D)[None, :, None, None]
    assert torch.equal(dx, hard.expand_as(dx)) and torch.equal(out, x * hard)


def test_mask_apply_shape_check_and_no_x_saved_without_w_grad() -> None:
    with pytest.raises(ValueError, match="3 channels"):
        MaskApply.apply(torch.zeros(1, 4, 2, 2), torch.zeros(3), 1.0)
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    out = MaskApply.apply(x, torch.zeros(3), 1.0)  # w without grad
    (dx,) = torch.autograd.grad(out.sum(), (x,))
    assert torch.allclose(dx, torch.full_like(x, 0.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_mask_apply_cuda_matches_cpu() -> None:
    m = ChannelMask(8)
    x = torch.randn(2, 8, 5, 5)
    m.set_bound(0.4)
    out = m(x)
    out.square().sum().backward()
    mc = copy.deepcopy(m).cuda()
    mc.weight.grad = None
    outc = mc(x.cuda())
    outc.square().sum().backward()
    assert torch.allclose(outc.cpu(), out, atol=1e-6)
    assert torch.allclose(mc.weight.grad.cpu(), m.weight.grad, atol=1e-4)


# --------------------------------------------------------------------------- ChannelMask


def test_channel_mask_init_state_and_seed() -> None:
    torch.manual_seed(0)
    a = ChannelMask(4000)
    torch.manual_seed(0)
    b = ChannelMask(4000)
    assert torch.equal(a.weight, b.weight)
    w = a.weight.detach()
    assert abs(float(w.std()) - 0.2) < 0.01 and abs(float(w.mean())) < 0.02
    assert float(a.bound) == 1.0 and a.bound.dim() == 0
    assert a.frozen.dtype == torch.bool and not bool(a.frozen)
    assert torch.equal(a.coeff, torch.zeros(4000))
    assert set(a.state_dict()) == {"weight", "bound", "frozen", "coeff", "scale", "score",
                                   "importance", "alive"}
    assert torch.equal(a.scale, torch.ones(4000)) and bool(a.alive.all())
    with pytest.raises(ValueError):
        ChannelMask(0)


def test_kept_in_band_freeze_and_set_bound() -> None:
    m = ChannelMask(6)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([-0.6, -0.5, -0.2, 0.0, 0.3, 0.7]))
    m.set_bound(0.5)
    assert m.kept().tolist() == [False, False, True, True, True, True]  # w > −b
    assert m.in_band().tolist() == [False, False, True, True, True, False]
    assert torch.allclose(m.value(), soft_step(m.weight.detach(), 0.5))
    m.freeze()
    assert m.weight.tolist() == [-1, -1, 1, 1, 1, 1]
    assert float(m.bound) == 0.0 and bool(m.frozen)
    assert m.kept().tolist() == [False, False, True, True, True, True]  # w > 0 now
    assert not m.in_band().any() and m.weight.requires_grad
    m.set_bound(0.3)  # a frozen mask stays hard
    assert float(m.bound) == 0.0
    x = torch.randn(2, 6, 3, 3)
    m(x).sum().backward()
    assert torch.equal(m.weight.grad, torch.zeros(6))
    with pytest.raises(ValueError):
        ChannelMask(2).set_bound(-0.1)
    with pytest.raises(ValueError):
        ChannelMask(2).set_bound(float("nan"))


# --------------------------------------------------------------------------- losses


def crafted(weights: list[float], b: float) -> ChannelMask:
    m = ChannelMask(len(weights))
    with torch.no_grad():
        m.weight.copy_(torch.tensor(weights))
    m.set_bound(b)
    return m


def test_relu_loss_pushes_in_band_channels_down_only() -> None:
    m = crafted([-0.8, -0.2, 0.1, 0.45, 0.9], 0.5)
    loss = relu_loss(m)
    assert loss.item() == pytest.approx((-0.2 + 0.5) + (0.1 + 0.5) + (0.45 + 0.5))
    loss.backward()
    assert m.weight.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    # One SGD step on the loss moves exactly the in-band weights towards −b.
    before = m.weight.detach().clone()
    with torch.no_grad():
        m.weight -= 0.01 * m.weight.grad
    moved = m.weight.detach() - before
    assert (moved[1:4] < 0).all() and (moved[[0, 4]] == 0).all()


def test_bound_and_group_losses() -> None:
    m = crafted([-0.8, -0.2, 0.1, 0.45, 0.9], 0.5)
    expected = torch.tensor([0.3, 0.4, 0.05]).norm()
    assert bound_loss(m).item() == pytest.approx(float(expected), rel=1e-6)
    bound_loss(m).backward()
    g = m.weight.grad
    # descent (−g) moves in-band |w| out towards b on either side; out-of-band untouched
    assert g[0] == 0 and g[4] == 0 and -g[1] < 0 and -g[2] > 0 and -g[3] > 0
    with torch.no_grad():
        m.coeff.copy_(torch.tensor([5.0, 2.0, 0.0, 1.0, 5.0]))
    assert group_loss(m).item() == pytest.approx(2 * 0.3 + 1 * 0.95)


def test_losses_zero_at_b_zero_with_finite_zero_gradient() -> None:
    m = crafted([-0.8, -0.2, 0.1, 0.9], 0.5)
    with torch.no_grad():
        m.coeff.fill_(3.0)
    m.freeze()
    for fn in (relu_loss, bound_loss, group_loss):
        m.weight.grad = None
        loss = fn(m)
        assert loss.dim() == 0 and loss.item() == 0.0
        loss.backward()
        assert torch.equal(m.weight.grad, torch.zeros(4))


# --------------------------------------------------------------------------- schedule, summary


def test_bound_schedule() -> None:
    # After epoch e of a 200-epoch search: b = 1 − (e/150)^(1/3) (method spec §2.5).
    for e, b in [(0, 1.0), (1, 0.81), (10, 0.60), (50, 0.31), (100, 0.13), (150, 0.0)]:
        assert bound_at(e, 200) == pytest.approx(b, abs=0.006)
    assert bound_at(151, 200) == 0.0 and bound_at(200, 200) == 0.0
    assert bound_at(75, 200, "linear") == pytest.approx(0.5)
    assert bound_at(37.5, 200, "square") == pytest.approx(0.5)  # 1 − √(37.5/150)
    assert bound_at(-1, 200) == 1.0
    with pytest.raises(ValueError):
        bound_at(1, 200, "cosine")
    with pytest.raises(ValueError):
        bound_at(1, 0)


def test_masks_state_summary() -> None:
    m = crafted([-0.8, -0.2, 0.1, 0.9], 0.5)
    s = masks_state({"stem": m})
    assert s == {"stem": {"channels": 4, "kept": 3, "in_band": 2, "bound": 0.5, "frozen": False}}


# --------------------------------------------------------------------------- groups


def group_of(rows: list[list[float]], b: float = 0.5) -> tuple[dict[str, ChannelMask], list[str]]:
    names = ["down2", *(f"block{i}.conv2" for i in range(len(rows) - 1))]
    return {n: crafted(r, b) for n, r in zip(names, rows, strict=True)}, names


def test_group_coefficients_on_crafted_states() -> None:
    # 3 members × 4 channels, b = 0.5; columns: one member on | all off | 2 in + 1 off | all in.
    masks, names = group_of(
        [
            [0.9, -0.9, 0.1, 0.1],
            [0.1, -0.9, -0.2, 0.2],
            [-0.9, -0.9, -0.9, -0.3],
        ]
    )
    lam = 2.0
    k = update_group_coefficients(masks, names, lam)
    # k_c = λ·M/n_in (M = 3 members; DMAD's size(0)/in_bound, i.e. λ·10/n_in for 9 blocks)
    assert torch.allclose(k, torch.tensor([0.0, 0.0, lam * 3 / 2, lam * 3 / 3]))
    for n in names:
        assert torch.equal(masks[n].coeff, k)


def test_group_coefficients_ten_members_is_lambda_ten_over_n_in() -> None:
    rows = [[0.1, 0.1]] * 4 + [[-0.9, 0.2]] * 6  # col 0: 4 in band, 6 off; col 1: all 10 in
    masks, names = group_of(rows)
    k = update_group_coefficients(masks, names, 1.5)
    assert torch.allclose(k, torch.tensor([1.5 * 10 / 4, 1.5 * 10 / 10]))
    # Frozen members (b = 0) are on or off, never in band.
    for n in names:
        masks[n].freeze()
    assert torch.equal(update_group_coefficients(masks, names, 1.5), torch.zeros(2))


def test_residual_keep_union_and_removed_blocks() -> None:
    masks, names = group_of(
        [
            [0.9, -0.9, -0.9, -0.9],
            [-0.9, -0.9, 0.4, -0.6],  # 0.4 > −b: kept while b > 0
            [-0.9, -0.9, -0.9, -0.9],
        ]
    )
    assert residual_keep(masks, names).tolist() == [True, False, True, False]
    for n in names:
        masks[n].freeze()
    assert residual_keep(masks, names).tolist() == [True, False, True, False]
    masks["block0.conv1"] = crafted([-0.9, -0.9], 0.5)
    masks["block1.conv1"] = crafted([-0.9, 0.1], 0.5)
    assert removed_blocks(masks) == [0]


def test_widths_from_masks_resnet() -> None:
    spec = ResnetSpec(ngf=2, n_blocks=3)  # stem 2, down1 4, stream 8, blocks 8, up1 4, up2 2
    model = ResnetGenerator(spec)
    masks = attach_masks(model)
    for m in masks.values():
        hard_mask(m, torch.zeros(m.channels, dtype=torch.bool))  # everything off …
    hard_mask(masks["down1"], torch.tensor([True, True, False, True]))
    hard_mask(masks["block0.conv1"], torch.arange(8) < 5)
    hard_mask(masks["block2.conv1"], torch.arange(8) < 1)
    hard_mask(masks["down2"], torch.arange(8) == 0)
    hard_mask(masks["block1.conv2"], torch.arange(8) >= 6)
    hard_mask(masks["up1"], torch.arange(4) < 2)
    hard_mask(masks["up2"], torch.arange(2) < 2)
    widths, forced = widths_from_masks(spec, masks)
    # stem is empty → forced to 1; block1 removed; stream = |{0} ∪ {6, 7}| = 3.
    assert widths == ResnetWidths(1, 3, 3, (5, 0, 1), 2, 2)
    assert forced == ["stem"]
    assert removed_blocks(masks) == [1]
    ResnetSpec(ngf=2, n_blocks=3, widths=widths)  # a valid spec
    with pytest.raises(ValueError, match="channels"):
        widths_from_masks(ResnetSpec(ngf=4, n_blocks=3), masks)


def test_widths_from_masks_unet() -> None:
    spec = UnetSpec(ngf=2, num_downs=5)
    masks = attach_masks(UnetGenerator(spec))
    assert len(masks) == 9
    for i, m in enumerate(masks.values()):
        hard_mask(m, torch.arange(m.channels) < i)  # mask i keeps i channels (0 → forced)
    widths, forced = widths_from_masks(spec, masks)
    full = spec.resolved_widths().as_list()
    expected = [max(1, min(i, c)) for i, c in enumerate(full)]
    assert widths.as_list() == expected
    assert forced == ["down0"]
    assert isinstance(widths, UnetWidths)


# --------------------------------------------------------------------------- attachment


def resnet_order(n: int) -> list[str]:
    blocks = [f"block{i}.conv{j}" for i in range(n) for j in (1, 2)]
    return ["stem", "down1", "down2", *blocks, "up1", "up2"]


@pytest.mark.parametrize("separable", [False, True])
def test_attach_resnet_order_channels_and_exactness(separable: bool) -> None:
    torch.manual_seed(0)
    spec = ResnetSpec(ngf=3, n_blocks=2, separable=separable)
    plain = ResnetGenerator(spec).double()
    model = copy.deepcopy(plain)
    masks = attach_masks(model)
    assert list(masks) == resnet_order(2) and len(masks) == 2 + 1 + 2 * 2 + 2
    assert [m.channels for m in masks.values()] == spec.resolved_widths().as_list()
    assert isinstance(model.head.norm, nn.Identity)  # head never masked
    if separable:  # the mask wraps the unit's outer norm, not the depthwise's inner one
        inner = model.blocks[0].conv1.conv.norm
        assert not isinstance(inner, MaskedNorm)
        assert isinstance(model.blocks[0].conv1.norm, MaskedNorm)
    assert attach_masks(model) == masks and find_masks(model) == masks  # idempotent
    for m in masks.values():
        hard_mask(m)
    x = torch.randn(2, 3, 16, 16, dtype=D)
    assert torch.equal(model(x), plain(x))
    # One channel hard-off zeros that channel after the mask (and nothing else changes there).
    taps: dict[str, torch.Tensor] = {}
    model.blocks[1].conv1.norm.register_forward_hook(lambda m, i, o: taps.update(out=o.clone()))
    model.blocks[1].conv1.norm.norm.register_forward_hook(lambda m, i, o: taps.update(pre=o))
    hard_mask(masks["block1.conv1"], torch.arange(12) != 5)
    model(x)
    assert (taps["out"][:, 5] == 0).all()
    keep = torch.arange(12) != 5
    assert torch.equal(taps["out"][:, keep], taps["pre"][:, keep])
    removed = detach_masks(model)
    assert list(removed) == resnet_order(2) and find_masks(model) == {}
    assert set(model.state_dict()) == set(plain.state_dict())
    assert torch.equal(model(x), plain(x))


def test_attach_skips_removed_blocks() -> None:
    widths = ResnetWidths(2, 4, 8, (8, 0, 3), 4, 2)
    spec = ResnetSpec(ngf=2, n_blocks=3, widths=widths)
    masks = attach_masks(ResnetGenerator(spec))
    assert "block1.conv1" not in masks and masks["block2.conv1"].channels == 3
    # the traced stream: DMAD's writers in block order, the removed block's none
    assert channel_groups(spec) == [["down2", "block0.conv2", "block2.conv2"]]


@pytest.mark.parametrize("num_downs", [6, 8])
def test_attach_unet_order_channels(num_downs: int) -> None:
    spec = UnetSpec(ngf=2, num_downs=num_downs)
    masks = attach_masks(UnetGenerator(spec))
    n = num_downs
    assert len(masks) == 2 * n - 1
    assert list(masks) == [f"down{k}" for k in range(n)] + [f"up{k}" for k in range(n - 1, 0, -1)]
    assert [m.channels for m in masks.values()] == spec.resolved_widths().as_list()


def test_attach_unet_exactness_and_masked_skip() -> None:
    torch.manual_seed(0)
    spec = UnetSpec(ngf=3, num_downs=6)
    plain = UnetGenerator(spec).double().eval()
    model = copy.deepcopy(plain)
    masks = attach_masks(model)
    # the outermost and innermost downs have no norm: their Identity is wrapped
    assert isinstance(model.downs[0].norm.norm, nn.Identity)
    assert isinstance(model.downs[5].norm.norm, nn.Identity)
    assert isinstance(model.up_block(0).norm, nn.Tanh)  # output layer unmasked
    # the up mask sits after the norm and before dropout
    up4 = model.up_block(4)
    assert isinstance(up4.norm, MaskedNorm) and isinstance(up4.dropout, nn.Dropout)
    for m in masks.values():
        hard_mask(m)
    x = torch.randn(2, 3, 64, 64, dtype=D)
    assert torch.equal(model(x), plain(x))
    # Down mask channel off → the down output (hence the skip, LeakyReLU of it) is zero there.
    taps: dict[str, torch.Tensor] = {}
    model.downs[2].register_forward_hook(lambda m, i, o: taps.update(down=o))
    model.up_block(2).register_forward_hook(lambda m, i, o: taps.update(up_in=i[0]))
    hard_mask(masks["down2"], torch.arange(12) != 7)
    model(x)
    assert (taps["down"][:, 7] == 0).all() and (taps["down"][:, 6] != 0).any()
    assert (taps["up_in"][:, 7] == 0).all()  # up 2 input = [skip from down 2, h]


def test_state_dict_round_trip_restores_mask_state() -> None:
    spec = ResnetSpec(ngf=2, n_blocks=2)
    torch.manual_seed(0)
    a = ResnetGenerator(spec)
    ma = attach_masks(a)
    ma["down1"].set_bound(0.37)
    with torch.no_grad():
        ma["down2"].coeff.copy_(torch.arange(8.0))
    ma["up1"].freeze()
    torch.manual_seed(1)
    b = ResnetGenerator(spec)
    mb = attach_masks(b)
    assert not torch.equal(ma["stem"].weight, mb["stem"].weight)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for name in ma:
        for key in ("weight", "bound", "frozen", "coeff"):
            assert torch.equal(getattr(ma[name], key), getattr(mb[name], key)), (name, key)
    assert float(mb["down1"].bound) == pytest.approx(0.37) and bool(mb["up1"].frozen)


def test_masked_model_runs_on_meta_device() -> None:
    model = ResnetGenerator(ResnetSpec(ngf=2, n_blocks=1))
    attach_masks(model)
    meta = copy.deepcopy(model).to("meta")
    out = meta(torch.empty(1, 3, 16, 16, device="meta"))
    assert out.shape == (1, 3, 16, 16)


def test_attach_rejects_other_models() -> None:
    with pytest.raises(TypeError):
        attach_masks(nn.Conv2d(1, 1, 1))


def test_channel_mask_forward_backward_equal_mask_apply_and_follow_updates() -> None:
    from dmad.compress.masks import ChannelMask, MaskApply

    torch.manual_seed(0)
    mask = ChannelMask(6)
    with torch.no_grad():
        mask.bound.fill_(0.4)
    x = torch.randn(2, 6, 5, 5, requires_grad=True)
    for _ in range(2):  # second round after an in-place update: the cache must notice
        y1 = mask(x)
        (y1 * torch.arange(6.0)[None, :, None, None]).sum().backward()
        g_cached, gx_cached = mask.weight.grad.clone(), x.grad.clone()
        mask.weight.grad, x.grad = None, None
        y2 = MaskApply.apply(x, mask.weight, mask.bound)
        (y2 * torch.arange(6.0)[None, :, None, None]).sum().backward()
        assert torch.equal(y1, y2)
        assert torch.allclose(g_cached, mask.weight.grad) and torch.allclose(gx_cached, x.grad)
        mask.weight.grad, x.grad = None, None
        with torch.no_grad():
            mask.weight.add_(0.1)
            mask.bound.fill_(0.2)
