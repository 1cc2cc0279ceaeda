"""Co-attention distillation and evaluation: maps, taps, frozen teachers, the tiny pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dmad.compress.attention import (
    attention_loss,
    attention_map,
    co_attention_loss,
    generator_taps,
    normalize_map,
    recording,
    resize_map,
)
from dmad.compress.evaluate import EvalConfig, evaluate, psnr, ssim
from dmad.compress.models import ResnetGenerator, ResnetSpec, ResnetWidths, UnetGenerator, UnetSpec
from dmad.compress.train.finetune import FinetuneConfig, FinetuneStage, finetune
from dmad.compress.train.search import SearchConfig, search
from dmad.compress.train.teacher import TeacherConfig, train_teacher


def test_attention_map_on_crafted_tensors() -> None:
    f = torch.zeros(2, 3, 2, 2)
    f[0, 0] = 1.0
    f[0, 1] = 2.0  # sample 0: (1 + 4 + 0) / 3 everywhere
    f[1, 2, 0, 0] = 3.0  # sample 1: 9/3 at one pixel
    a = attention_map(f)
    assert a.shape == (2, 1, 2, 2)
    assert torch.allclose(a[0], torch.full((1, 2, 2), 5 / 3))
    assert a[1, 0, 0, 0] == 3.0 and a[1].sum() == 3.0
    n = normalize_map(a)
    assert torch.allclose(n.flatten(1).norm(dim=1), torch.ones(2))
    assert float(attention_loss(a, 7 * a)) == pytest.approx(0.0, abs=1e-12)  # scale-free
    assert float(attention_loss(a, a.flip(0))) > 0


def test_resize_is_per_sample_area_pooling() -> None:
    a = torch.arange(2 * 16.0).view(2, 1, 4, 4)
    r = resize_map(a, (2, 2))
    assert torch.allclose(r[1, 0, 0, 0], a[1, 0, :2, :2].mean())  # not sample 0 broadcast
    assert not torch.equal(r[0], r[1])


def test_taps_stay_aligned_when_blocks_are_removed() -> None:
    teacher = ResnetGenerator(ResnetSpec(ngf=4, n_blocks=6)).eval()
    slim = ResnetGenerator(ResnetSpec(ngf=4, n_blocks=6, widths=ResnetWidths(
        2, 3, 5, (4, 0, 0, 2, 0, 1), 3, 2))).eval()
    t_taps, s_taps = generator_taps(teacher), generator_taps(slim)
    assert list(t_taps) == list(s_taps) == ["stem", "block2", "block4", "block6"]
    assert isinstance(s_taps["block2"], torch.nn.Identity)  # a removed block, same position
    x = torch.randn(1, 3, 32, 32)
    with recording(t_taps) as rt, recording(s_taps) as rs:
        teacher(x)
        slim(x)
    for k in t_taps:  # same resolution at every tap, channel counts may differ
        assert rt.first()[k].shape[-2:] == rs.first()[k].shape[-2:]
    loss = co_attention_loss(rs.first(), rt.first(), None)
    assert torch.isfinite(loss) and float(loss.detach()) > 0


def test_unet_taps_shapes() -> None:
    u = UnetGenerator(UnetSpec(ngf=2, num_downs=8)).eval()
    with recording(generator_taps(u)) as r:
        u(torch.randn(1, 3, 256, 256))
    shapes = {k: tuple(v.shape[-2:]) for k, v in r.first().items()}
    assert shapes == {"down1": (64, 64), "down3": (16, 16), "up4": (16, 16), "up2": (64, 64)}


def test_psnr_and_ssim() -> None:
    a = torch.rand(1, 3, 32, 32) * 2 - 1
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    b = (a + 0.1).clamp(-1, 1)
    assert 20 < psnr(a, b) < 40 and ssim(a, b) < 1.0
    assert ssim(a, -a) < 0.5


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from dmad.compress.data import make_default_dataset

    root = tmp_path_factory.mktemp("ft")
    data = make_default_dataset(root / "data", size=32, n_train=16, n_test=4)
    train_teacher(TeacherConfig(data=str(data), ngf=8, n_blocks=3, ndf=8, size=32, steps=60,
                                device="cpu"), root / "teacher")
    search(SearchConfig(teacher=str(root / "teacher"), target_gmacs=0.12, steps=12,
                        bound_updates=6, device="cpu"), root / "search")
    return {"root": root, "data": data, "teacher": root / "teacher", "search": root / "search"}


def test_finetune_improves_student_teacher_psnr(pipeline: dict[str, Path]) -> None:
    root = pipeline["root"]
    before = evaluate(EvalConfig(student=str(pipeline["search"]),
                                 teacher=str(pipeline["teacher"]), device="cpu"), root / "e0")
    summary = finetune(FinetuneConfig(search=str(pipeline["search"]), steps=40, device="cpu",
                                      log_every=1), root / "ft")
    # the automatic objective with a full teacher (G and D): DMAD's
    assert summary["g_only"] is False and summary["objective"].startswith("dmad: task loss")
    after = evaluate(EvalConfig(student=str(root / "ft"), device="cpu"), root / "e1")
    assert after["psnr_vs_teacher"] > before["psnr_vs_teacher"] + 1.0
    assert after["ratios"]["macs_paper"] > 1.5
    log = [json.loads(x) for x in (root / "ft" / "log.jsonl").read_text().splitlines()]
    assert {"att_AtoB", "dfeat_AtoB", "distill_AtoB", "cycle_A"} <= set(log[0])
    assert (root / "e1" / "grid.png").is_file()
    saved = json.loads((root / "e1" / "eval.json").read_text())
    assert saved["fid"] is None and "--inception" in saved["fid_note"]


def test_teachers_are_frozen(pipeline: dict[str, Path]) -> None:
    from dmad.compress.train.finetune import _students
    from dmad.compress.train.teacher_run import load_teacher, training_config

    cfg = FinetuneConfig(search=str(pipeline["search"]), steps=3, device="cpu")
    students, ds, tpath = _students(cfg)
    cfg = FinetuneConfig(search=str(pipeline["search"]), teacher=tpath, steps=3, device="cpu")
    teacher = load_teacher(cfg)
    stage = FinetuneStage(cfg, training_config(cfg, teacher), teacher, students, ds)
    before = {d: {k: v.clone() for k, v in g.state_dict().items()} for d, g in stage.T.items()}
    stage.train_step(0)
    for d, g in stage.T.items():
        assert not g.training and all(not p.requires_grad and p.grad is None
                                      for p in g.parameters())
        assert all(torch.equal(before[d][k], v) for k, v in g.state_dict().items())
    for D in stage.TD.values():
        assert not D.training and all(p.grad is None for p in D.parameters())
    # the student did learn
    assert any(p.grad is not None for p in stage.G["AtoB"].parameters())


def test_g_only_mode_from_an_imported_generator(pipeline: dict[str, Path], tmp_path: Path) -> None:
    from dmad.compress.importer import import_to_file

    raw = torch.load(pipeline["teacher"] / "G_AtoB.pt", weights_only=True)["state_dict"]
    torch.save(raw, tmp_path / "latest_net_G_A.pth")
    import_to_file(tmp_path / "latest_net_G_A.pth", "resnet", tmp_path / "imported.pt")
    search(SearchConfig(teacher=str(tmp_path / "imported.pt"), task="pix2pix", data=str(
        pipeline["data"]), size=32, target_gmacs=0.12, steps=6, bound_updates=3, device="cpu"),
        tmp_path / "search")
    s = finetune(FinetuneConfig(search=str(tmp_path / "search"), steps=20, device="cpu",
                                log_every=1), tmp_path / "ft")
    assert s["g_only"] is True
    log = [json.loads(x) for x in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    # the automatic objective with a generator alone is fast: the teacher's outputs alone, no
    # discriminator, no attention
    assert {"distill_AtoB", "ssim_AtoB", "colour_AtoB"} <= set(log[0])
    assert not {"att_AtoB", "dfeat_AtoB", "G_AtoB", "D"} & set(log[0])
    assert "EMA 0.999" in s["objective"] and s["inputs"]["inputs_seen"] == 20 * 4
    ev = evaluate(EvalConfig(student=str(tmp_path / "ft"), device="cpu", data=str(
        pipeline["data"]), task="pix2pix", size=32), tmp_path / "e")
    assert ev["psnr_vs_teacher"] > 10 and ev["psnr_vs_ground_truth"] is not None


def test_finetune_resume_equals_uninterrupted(pipeline: dict[str, Path], tmp_path: Path) -> None:
    kw = dict(search=str(pipeline["search"]), steps=8, device="cpu", checkpoint_every=3)
    finetune(FinetuneConfig(**kw), tmp_path / "a")
    finetune(FinetuneConfig(**kw), tmp_path / "b", max_steps=4)
    finetune(FinetuneConfig(**kw), tmp_path / "b", resume=True)
    a = torch.load(tmp_path / "a" / "student_G_AtoB.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "student_G_AtoB.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("side", [31, 63, 127])  # D's last hidden map at 128², 256², 512² input
def test_d_feature_gradient_has_dmads_scale_at_every_resolution(side: int) -> None:
    from dmad.compress.attention import d_feature_loss

    g = torch.Generator().manual_seed(side)
    t = torch.randn(1, 16, side, side, generator=g)
    s = (t + 0.1 * torch.randn(1, 16, side, side, generator=g)).requires_grad_(True)
    lam = 1e-4
    (lam * d_feature_loss(s, t)).backward()
    ours = s.grad.clone()
    s.grad = None
    (lam * torch.norm(s - t)).backward()  # DMAD's form, batch 1: un-squared Frobenius norm
    assert torch.allclose(ours, s.grad, rtol=1e-5, atol=1e-12)
    # unit gradient length times λ whatever the map size (a mean squared error would give
    # 2·‖d‖/N, thousands of times weaker at these sizes)
    assert abs(float(ours.norm()) - lam) < 1e-9
    # batch-size independent: two copies of the sample give the same loss
    two = d_feature_loss(torch.cat([s, s]).detach(), torch.cat([t, t]))
    assert torch.isclose(two, d_feature_loss(s.detach(), t))


def test_quant_aware_finetune_resumes_and_ships_plain_float_weights(
        pipeline: dict[str, Path], tmp_path: Path) -> None:
    from dmad.compress.checkpoint import load_model
    from dmad.compress.train import loop

    kw = dict(search=str(pipeline["search"]), steps=8, device="cpu", checkpoint_every=3,
              eval_every=2, eval_images=2, quant_aware=True, quant_aware_from=0.5)
    a = finetune(FinetuneConfig(**kw), tmp_path / "a")
    finetune(FinetuneConfig(**kw), tmp_path / "b", max_steps=5)  # killed under fake int8
    finetune(FinetuneConfig(**kw), tmp_path / "b", resume=True)
    sa = torch.load(tmp_path / "a" / "student_G_AtoB.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "student_G_AtoB.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa["state_dict"][k], sb[k]) for k in sa["state_dict"])
    g, meta = load_model(tmp_path / "a" / "student_G_AtoB.pt")  # a plain model file
    assert not any("parametrizations" in k or "dmad_qa" in k for k in g.state_dict())
    assert meta["quant_aware"]["from_step"] == 5 and meta["quant_aware"]["convs"] > 0
    assert "under fake int8 from step 5" in a["objective"]
    evals = a["evals"]
    assert [e["step"] for e in evals if e.get("fake_int8")] == [6, 8]
    assert a["best"]["step"] in (6, 8)  # chosen among the fake-int8 evaluations only
    done = json.loads((tmp_path / "a" / loop.DONE).read_text())
    assert done["quant_aware"]["tanh_outputs"] == 1
    with pytest.raises(Exception, match="quant_aware_from"):
        FinetuneConfig(search="x", quant_aware=True, quant_aware_from=1.5)
