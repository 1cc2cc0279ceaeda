"""DMAD search: budget fitting, folding, schedule, outputs, resume and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dmad.compress import budget
from dmad.compress.errors import DmadError
from dmad.compress.graph_cost import channel_groups
from dmad.compress.masks import attach_masks, find_masks
from dmad.compress.models import ResnetGenerator, ResnetSpec, UnetGenerator, UnetSpec
from dmad.compress.train.fold import fold_scale
from dmad.compress.train.search import SearchConfig, load_search, search
from dmad.compress.train.teacher import TeacherConfig, train_teacher


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from dmad.compress.data import make_default_dataset

    root = tmp_path_factory.mktemp("search")
    data = make_default_dataset(root / "data", size=32, n_train=16, n_test=4)
    out = {}
    for name, extra in {"cyclegan": {"task": "cyclegan", "n_blocks": 3},
                        "separable": {"task": "cyclegan", "n_blocks": 2, "separable": True},
                        "pix2pix": {"task": "pix2pix", "num_downs": 5}}.items():
        cfg = TeacherConfig(data=str(data), ngf=8, ndf=4, size=32, steps=3, device="cpu", **extra)
        train_teacher(cfg, root / name)
        out[name] = root / name
    return out


def _search(teacher: Path, out: Path, target: float, **kw: object) -> dict:
    cfg = SearchConfig(teacher=str(teacher), target_gmacs=target, steps=kw.pop("steps", 16),
                       bound_updates=8, device="cpu", log_every=1, checkpoint_every=4, **kw)
    search(cfg, out)
    return json.loads((out / "architecture.json").read_text())


@pytest.mark.parametrize("kind,target,convention", [
    ("cyclegan", 0.2, "paper"), ("cyclegan", 0.15, "true"), ("separable", 0.15, "paper"),
    ("pix2pix", 0.03, "paper"),
])
def test_search_lands_within_three_percent_under_target(teachers: dict[str, Path],
                                                        tmp_path: Path, kind: str,
                                                        target: float, convention: str) -> None:
    arch = _search(teachers[kind], tmp_path / "s", target, macs_convention=convention)
    assert arch["directions"], "no direction searched"
    for d, e in arch["directions"].items():
        got = e[f"gmacs_{convention}"]
        assert 0.97 * target <= got <= target, (d, got)
        assert e["gmacs_paper"] < e["full_gmacs_paper"] and e["params"] < e["full_params"]
        model, masks, entry = load_search(tmp_path / "s" / e["file"])
        assert entry == e
        assert all(bool(m.frozen) and float(m.bound) == 0.0 for m in masks.values())
        for name, m in masks.items():
            assert len(e["kept_channels"][name]) == int(m.kept().sum())
        cost = budget.cost(model.spec, masks, None, 256)
        assert cost.macs(convention) == pytest.approx(got * 1e9)
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    if kind == "pix2pix":
        assert list(arch["directions"]) == ["AtoB"]
    else:
        assert set(arch["directions"]) == {"AtoB", "BtoA"}


def test_one_direction_and_scratch_init(teachers: dict[str, Path], tmp_path: Path) -> None:
    arch = _search(teachers["cyclegan"], tmp_path / "s", 0.2, directions="BtoA", init="scratch")
    assert list(arch["directions"]) == ["BtoA"] and arch["init"] == "scratch"


def test_progress_log_has_bound_and_macs(teachers: dict[str, Path], tmp_path: Path) -> None:
    _search(teachers["cyclegan"], tmp_path / "s", 0.2)
    log = [json.loads(x) for x in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    bounds = [r["bound"] for r in log if "bound" in r]
    assert bounds and bounds == sorted(bounds, reverse=True)
    assert any("gmacs_AtoB" in r for r in log) and all("mask" in r for r in log[:2])


def test_search_resume_equals_uninterrupted(teachers: dict[str, Path], tmp_path: Path) -> None:
    kw = dict(teacher=str(teachers["cyclegan"]), target_gmacs=0.2, steps=16, bound_updates=8,
              device="cpu", checkpoint_every=3)
    search(SearchConfig(**kw), tmp_path / "a")
    search(SearchConfig(**kw), tmp_path / "b", max_steps=7)
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    bounds = [v for k, v in ckpt["modules"]["G_AtoB"].items() if k.endswith("mask.bound")]
    assert bounds and all(float(b) < 1.0 for b in bounds)  # mask state is in the checkpoint
    search(SearchConfig(**kw), tmp_path / "b", resume=True)
    for f in ("search_G_AtoB.pt", "search_G_BtoA.pt"):
        a = torch.load(tmp_path / "a" / f, weights_only=True)["state_dict"]
        b = torch.load(tmp_path / "b" / f, weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), f


def test_unet_resume_with_per_layer_frozen_masks_is_bit_identical(
        teachers: dict[str, Path], tmp_path: Path) -> None:
    # frozen_threshold 0.05: UNet layers freeze one by one early, the path that used to drift
    # (their mask weights kept requires_grad after a resume and Adam's momentum moved them)
    kw = dict(teacher=str(teachers["pix2pix"]), target_gmacs=0.03, steps=16, bound_updates=8,
              device="cpu", checkpoint_every=3, frozen_threshold=0.05)
    search(SearchConfig(**kw), tmp_path / "a")
    search(SearchConfig(**kw), tmp_path / "b", max_steps=10)
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    frozen = [k for k, v in ckpt["modules"]["G_AtoB"].items()
              if k.endswith("mask.frozen") and bool(v)]
    assert frozen, "no UNet layer was frozen before the interruption: the test needs one"
    search(SearchConfig(**kw), tmp_path / "b", resume=True)
    a = torch.load(tmp_path / "a" / "search_G_AtoB.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "search_G_AtoB.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_per_direction_targets(teachers: dict[str, Path], tmp_path: Path) -> None:
    arch = _search(teachers["cyclegan"], tmp_path / "s", 0.2, target_gmacs_BtoA=0.12)
    for d, target in (("AtoB", 0.2), ("BtoA", 0.12)):
        e = arch["directions"][d]
        assert e["target_gmacs"] == target
        assert 0.97 * target <= e["gmacs_paper"] <= target, (d, e["gmacs_paper"])
        cut = e["cut"]  # the record of who made the cut: masks vs the final fit
        assert abs(cut["cut_by_masks"] + cut["cut_by_fit"] - 1) < 1e-6
        assert cut["gmacs_final"] == pytest.approx(e["gmacs_paper"])


@pytest.mark.parametrize("target,match", [(1000.0, "not below the full model"),
                                          (1e-6, "below the smallest"), (0.0, "> 0")])
def test_impossible_targets_fail_before_training(teachers: dict[str, Path], tmp_path: Path,
                                                 target: float, match: str) -> None:
    with pytest.raises(DmadError, match=match):
        _search(teachers["cyclegan"], tmp_path / "s", target)
    assert not (tmp_path / "s" / "checkpoint.pt").exists()


def test_missing_teacher_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DmadError, match="teacher not found"):
        search(SearchConfig(teacher=str(tmp_path / "none"), target_gmacs=1.0), tmp_path / "s")
    with pytest.raises(DmadError, match="teacher"):
        SearchConfig(target_gmacs=1.0)


def _soften(masks: dict, name: str, b: float) -> None:
    with torch.no_grad():
        m = masks[name]
        m.bound.fill_(b)
        m.weight.copy_(torch.linspace(0.05, 0.9, m.channels) * b)  # all in band, m in (0.5, 1)


@pytest.mark.parametrize("model,name", [
    (ResnetGenerator(ResnetSpec(ngf=4, n_blocks=2)), "stem"),
    (ResnetGenerator(ResnetSpec(ngf=4, n_blocks=2)), "up1"),
    (ResnetGenerator(ResnetSpec(ngf=4, n_blocks=2)), "block1.conv1"),
    (ResnetGenerator(ResnetSpec(ngf=4, n_blocks=2, separable=True)), "block0.conv1"),
    (ResnetGenerator(ResnetSpec(ngf=4, n_blocks=2, norm="batch")), "down2"),
    (UnetGenerator(UnetSpec(ngf=2, num_downs=5)), "down2"),
    (UnetGenerator(UnetSpec(ngf=2, num_downs=5)), "down0"),
    (UnetGenerator(UnetSpec(ngf=2, num_downs=5)), "down4"),
])
def test_fold_scale_keeps_the_function_when_a_mask_jumps_to_one(model, name: str) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model.eval()
    masks = attach_masks(model)
    for m in masks.values():
        with torch.no_grad():
            m.weight.fill_(1.0)
            m.bound.fill_(0.0)
    _soften(masks, name, 0.5)
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    m = find_masks(model)[name]
    scale = m.value().detach()
    folded = fold_scale(model, name, scale)
    with torch.no_grad():
        m.weight.fill_(1.0)  # the mask jumps to 1
    after = model(x)
    if model.spec.family == "resnet" and model.spec.separable and name.endswith("conv1"):
        # not folded: the depthwise conv's InstanceNorm cancels a positive scale (up to its eps)
        assert not folded and torch.allclose(before, after, atol=1e-3)
    else:
        assert folded and torch.allclose(before, after, atol=1e-5)


def _fit_case(frac: float):  # type: ignore[no-untyped-def]
    """A masked ResNet and a target at ``frac`` of its full MACs."""
    torch.manual_seed(0)
    g = ResnetGenerator(ResnetSpec(ngf=8, n_blocks=2))
    masks = attach_masks(g)
    full = budget.cost(g.spec, masks, {n: torch.ones_like(m.kept()) for n, m in masks.items()})
    return g, masks, int(frac * full.macs_paper)


def test_fit_to_budget_prunes_lowest_weights_first_and_fills_up() -> None:
    g, masks, target = _fit_case(0.5)
    _, keep, c = budget.fit_to_budget(g.spec, masks, target, "paper")
    assert 0.97 * target <= c.macs_paper <= target
    stream = {"down2"} | {n for n in masks if n.endswith(".conv2")}
    for n, m in masks.items():
        if n in stream or keep[n].all() or not keep[n].any():
            continue  # stream channels cost depends on the union; skip full/empty layers
        w = m.weight.detach()
        assert w[keep[n]].min() > w[~keep[n]].max(), n  # lowest weights pruned first
        # and the best pruned channel of the layer no longer fits
        trial = {k: v.clone() for k, v in keep.items()}
        trial[n][int(torch.argmax(torch.where(keep[n], -1e9, w)))] = True
        assert budget.cost(g.spec, masks, trial).macs_paper > target, n


def test_removed_block_costs_nothing_and_is_reported() -> None:
    from dmad.compress.groups import removed_blocks

    g = ResnetGenerator(ResnetSpec(ngf=8, n_blocks=3))
    masks = attach_masks(g)
    with torch.no_grad():
        for m in masks.values():
            m.weight.fill_(1.0)
            m.bound.fill_(0.0)
        masks["block1.conv1"].weight.fill_(-1.0)
    assert removed_blocks(masks) == [1]
    c = budget.cost(g.spec, masks)
    assert c.widths.blocks == (32, 0, 32)
    # independently: the physically pruned module, profiled by forward hooks on its layers
    from dmad.compress.arch import profile
    from dmad.compress.prune import prune

    real = profile(prune(g), (1, 3, 256, 256))
    full = profile(ResnetGenerator(ResnetSpec(ngf=8, n_blocks=3)), (1, 3, 256, 256))
    assert (c.macs_paper, c.macs_true, c.params) == (real.macs_paper, real.macs_true, real.params)
    assert c.macs_paper < full.macs_paper  # the removed block's MACs are gone
    # the masked model equals the model with that block made an identity
    x = torch.randn(1, 3, 32, 32)
    g.eval()
    y = g(x)
    g.blocks[1] = torch.nn.Identity()
    assert torch.allclose(y, g(x), atol=1e-6)


def _stage(teacher: Path, **kw: object):  # type: ignore[no-untyped-def]
    from dmad.compress.train.search import SearchStage
    from dmad.compress.train.teacher_run import load_teacher, training_config

    cfg = SearchConfig(teacher=str(teacher), target_gmacs=kw.pop("target", 0.2),
                       steps=kw.pop("steps", 8), bound_updates=kw.pop("bound_updates", 4),
                       device="cpu", **kw)
    t = load_teacher(cfg)
    return SearchStage(cfg, training_config(cfg, t), t)


@pytest.mark.parametrize("kind", ["cyclegan", "pix2pix"])
def test_each_mask_gets_dmads_loss_and_group_coefficients_reach_it(
        teachers: dict[str, Path], kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import dmad.compress.train.mask_schedule as S

    stage = _stage(teachers[kind], target=0.2 if kind == "cyclegan" else 0.03)
    seen: dict[str, str] = {}
    names = {id(m): n for d in stage.searched for n, m in stage.masks[d].items()}
    for fn in ("relu_loss", "bound_loss", "group_loss"):
        def rec(m, fn=fn):  # type: ignore[no-untyped-def]
            seen[names[id(m)]] = fn
            return m.weight.sum() * 0 + 1.0
        monkeypatch.setattr(S, fn, rec)
    total = stage.extra_generator_loss()["mask"]
    n_masks = sum(len(stage.masks[d]) for d in stage.searched)
    assert set(seen) == set(names.values())  # every mask of every searched direction has a term
    for name, fn in seen.items():
        if kind == "pix2pix":
            want = "relu_loss"  # UNet: DMAD's plain sparsity on every mask
        elif name in ("stem", "down1", "up1", "up2"):
            want = "bound_loss"  # polarisation, ×upconv_coeff
        elif name == "down2" or name.endswith(".conv2"):
            want = "group_loss"  # the residual stream: adaptive cross-block group sparsity
        else:
            want = "relu_loss"
        assert fn == want, (name, fn)
    # the weights: bound terms ×upconv_coeff, everything ×mask_weight_decay
    n_bound = sum(1 for f in seen.values() if f == "bound_loss") * len(stage.searched)
    n_other = n_masks - n_bound
    expect = stage.mask_wd * (stage.scfg.upconv_coeff * n_bound + n_other)
    assert float(total.detach()) == pytest.approx(expect)
    monkeypatch.undo()
    if kind == "cyclegan":  # group coefficients scale the stream masks' term
        from dmad.compress.masks import group_loss

        m = stage.masks["AtoB"]["down2"]
        with torch.no_grad():
            m.bound.fill_(0.5)
            m.weight.fill_(0.1)  # all in band
            m.coeff.fill_(0.0)
        assert float(group_loss(m).detach()) == 0.0
        with torch.no_grad():
            m.coeff.fill_(2.0)
        assert float(group_loss(m).detach()) == pytest.approx(2.0 * m.channels * 0.6)


# --------------------------------------------------------------------------- the exact freeze

def _in_band_everywhere(masks: dict, b: float, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in masks.values():
            m.bound.fill_(b)
            m.weight.copy_((torch.rand(m.channels, generator=g) * 2 - 0.9) * b)  # mostly in band


@pytest.mark.parametrize("norm", ["instance", "instance_affine", "batch", "none"])
def test_freezing_mid_band_keeps_the_function_for_every_mask_and_pruning_keeps_it(
        norm: str) -> None:
    """Every kept channel jumps from m(w) < 1 to 1 at the freeze; the residual-stream writers
    after an affine-free InstanceNorm carry m(w) in the mask and then as the pruned writer
    norm's γ (stream_affine); elsewhere it is folded into weights."""
    from dmad.compress.masks import soft_step
    from dmad.compress.prune import prune
    from dmad.compress.train.fold import hold_scale

    torch.manual_seed(0)
    g = ResnetGenerator(ResnetSpec(ngf=8, n_blocks=3, norm=norm)).eval()
    masks = attach_masks(g)
    _in_band_everywhere(masks, 0.3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = g(x)
        keep = {n: m.kept() for n, m in masks.items()}
        where = {}
        for n, m in masks.items():
            s = torch.where(keep[n], soft_step(m.weight, m.bound), 1.0)
            where[n] = hold_scale(g, n, m, s)
        budget.apply_keep(masks, keep)
        after = g(x)
        pruned = prune(g)
        dense = pruned(x)
    assert torch.allclose(before, after, atol=1e-5), float((before - after).abs().max())
    assert torch.allclose(before, dense, atol=1e-5), float((before - dense).abs().max())
    writers = [n for n in masks if n == "down2" or n.endswith(".conv2")]
    if norm == "instance":
        assert {where[n] for n in writers} == {"carried"} and pruned.spec.stream_affine
        assert not torch.equal(pruned.down2.norm.weight, torch.ones_like(pruned.down2.norm.weight))
    else:
        assert {where[n] for n in writers} == {"folded"} and not pruned.spec.stream_affine
    # the pruned file round-trips with its spec (the fine-tune and the export rebuild it)
    from dmad.compress.models import build, spec_from_dict, spec_to_dict

    again = build(spec_from_dict(spec_to_dict(pruned.spec))).eval()
    again.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(again(x), dense)


def test_old_masks_without_the_new_buffers_still_load() -> None:
    from dmad.compress.masks import ChannelMask

    m = ChannelMask(5)
    old = {k: v for k, v in m.state_dict().items() if k in ("weight", "bound", "frozen", "coeff")}
    fresh = ChannelMask(5)
    with torch.no_grad():
        fresh.scale.fill_(0.5)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.scale, torch.ones(5)) and bool(fresh.alive.all())
    assert torch.equal(fresh.weight, m.weight)


def test_bound_update_folds_channels_leaving_the_band(teachers: dict[str, Path]) -> None:
    """Channels whose w rises above the new, smaller bound jump from m(w; b_old) to 1: the
    update holds their value (folded, or carried on the stream writers), so the function of a
    masked generator whose in-band channels all leave at once does not change."""
    from dmad.compress.masks import bound_at

    stage = _stage(teachers["cyclegan"], target=0.05)
    n = stage.interval
    b_new = bound_at(n, stage.cfg.steps, stage.scfg.bound_schedule)
    g = stage.G["AtoB"].eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in stage.masks["AtoB"].values():
            m.bound.fill_(0.6)
            r = torch.rand(m.channels, generator=gen)  # leaving (b_new, 0.6], on, or off
            m.weight.copy_(torch.where(r < 0.6, (b_new + 0.6) / 2 + 0.1 * (r - 0.3),
                                       torch.where(r < 0.8, torch.tensor(0.9), -0.9)))
    assert 0.6 > b_new + 0.1
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = g(x)
    stage.after_step(n - 1)
    assert "AtoB" not in stage.frozen_at  # still above budget: an ordinary update
    assert float(next(iter(stage.masks["AtoB"].values())).bound) == pytest.approx(b_new)
    with torch.no_grad():
        after = g(x)
    assert torch.allclose(before, after, atol=1e-5), float((before - after).abs().max())


def test_fit_revives_only_channels_alive_at_the_previous_update(
        teachers: dict[str, Path]) -> None:
    """When the masks already cut below the tolerance band, the fit may bring back channels
    that were alive one update ago (recorded), never channels switched off before that."""
    stage = _stage(teachers["cyclegan"], target=0.2)
    masks = stage.masks["AtoB"]
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in masks.values():
            m.bound.fill_(0.2)
            r = torch.rand(m.channels, generator=gen)
            m.weight.copy_(torch.where(r < 0.15, torch.tensor(0.5), torch.tensor(-0.9)))
            m.weight[0] = 0.5  # every layer keeps a channel
            m.alive.copy_(r < 0.6)  # alive one update ago: these may come back
            m.importance.copy_(torch.rand(m.channels, generator=gen))
    now = {n: m.kept().clone() for n, m in masks.items()}
    alive = {n: (m.alive | now[n]).clone() for n, m in masks.items()}
    assert stage._cost("AtoB").macs_paper < 0.97 * stage.target["AtoB"]
    stage._freeze_to_budget("AtoB", 4, "under budget")
    kept = {n: m.kept() for n, m in masks.items()}
    revived = sum(int((kept[n] & ~now[n]).sum()) for n in masks)
    assert revived > 0 and stage.cut["AtoB"]["channels_revived"] == revived
    for n in masks:
        assert not bool((kept[n] & ~alive[n]).any()), n  # nothing stale came back
    assert stage.events[-1]["revived"] == revived


def test_fit_keeps_the_best_scored_eligible_channels() -> None:
    g, masks, target = _fit_case(0.4)
    scores = {n: torch.rand(m.channels) for n, m in masks.items()}  # unrelated to the weights
    eligible = {n: torch.rand(m.channels) < 0.8 for n, m in masks.items()}
    for e in eligible.values():
        e[0] = True
    _, keep, c = budget.fit_to_budget(g.spec, masks, target, "paper", scores=scores,
                                      eligible=eligible)
    assert c.macs_paper <= target
    for n in masks:
        assert not bool((keep[n] & ~eligible[n]).any()), n
        cand = eligible[n] & ~keep[n]
        if n in channel_groups(g.spec)[0] or not keep[n].any() or not cand.any():
            continue  # stream channels cost depends on the union; skip full/empty layers
        assert scores[n][keep[n]].min() > scores[n][cand].max(), n  # by score, not by weight


def test_taylor_score_is_first_order_importance_of_each_channel() -> None:
    """score_c accumulates |∂L/∂m_c · m_c| over backward passes (Molchanov et al.'s first-order
    estimate of the loss change when channel c is removed)."""
    from dmad.compress.masks import ChannelMask, soft_step

    torch.manual_seed(0)
    mask = ChannelMask(4)
    with torch.no_grad():
        mask.bound.fill_(0.5)
        mask.weight.copy_(torch.tensor([0.9, 0.2, -0.1, -0.8]))
    x = torch.randn(2, 4, 3, 3)
    c = torch.randn(2, 4, 3, 3)
    for _ in range(2):
        (mask(x) * c).sum().backward()
    m = soft_step(mask.weight.detach(), mask.bound).requires_grad_(True)
    (x * m.view(1, -1, 1, 1) * c).sum().backward()
    want = 2 * (m.grad * m.detach()).abs()
    assert torch.allclose(mask.score, want, atol=1e-6)
    assert mask.score[3] == 0 and mask.score[0] > 0  # an off channel is worth nothing


@pytest.mark.parametrize("kind,steps,mask_lr,want", [
    ("cyclegan", 8, 0.0, 0.03),  # default mask lr: room 0.5 -> DMAD's 0.001 x 30
    ("cyclegan", 8, 2.5, 0.001),  # room 15 (DMAD's scale): DMAD's own weight
    ("pix2pix", 8, 0.0, 0.01),  # the UNet keeps DMAD's weight
])
def test_default_sparsity_weight_scales_with_the_room_of_a_short_search(
        teachers: dict[str, Path], kind: str, steps: int, mask_lr: float, want: float) -> None:
    stage = _stage(teachers[kind], target=0.2 if kind == "cyclegan" else 0.03, mask_lr=mask_lr)
    assert stage.cfg.steps == steps
    assert stage.mask_wd == pytest.approx(want)
    explicit = _stage(teachers[kind], target=0.2 if kind == "cyclegan" else 0.03,
                      mask_weight_decay=0.005)
    assert explicit.mask_wd == 0.005


def test_a_direction_near_its_budget_is_checked_every_step(teachers: dict[str, Path]) -> None:
    """Between bound updates the search checks a direction within 25 % of its target after each
    step, so it freezes at the step it crosses, not up to an interval later."""
    stage = _stage(teachers["cyclegan"], target=0.2, steps=40, bound_updates=4)
    assert stage.interval > 2
    masks = stage.masks["AtoB"]
    with torch.no_grad():
        for m in masks.values():
            m.bound.fill_(0.5)
            m.weight.fill_(0.9)
    stage.last_cost["AtoB"] = stage._cost("AtoB")
    stage.after_step(0)  # far above the budget, not an update step: nothing happens
    assert "AtoB" not in stage.frozen_at
    far = stage._cost("AtoB").macs_paper
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # the masks cut to just under the target between two updates
        for m in masks.values():
            m.weight.copy_(torch.where(torch.rand(m.channels, generator=gen) < 0.35, 0.9, -0.9))
            m.weight[0] = 0.9
    near = stage._cost("AtoB").macs_paper
    assert near <= stage.target["AtoB"] < far
    stage.last_cost["AtoB"] = budget.Cost(stage.last_cost["AtoB"].widths, (), int(
        1.2 * stage.target["AtoB"]), 0, 0)  # the last check saw it within 25 %
    stage.after_step(0)
    assert stage.frozen_at.get("AtoB") == 1 and 1 % stage.interval
