"""The fast distillation objective: its terms, the weight average, the input it sees, the
fidelity metrics a person reads (worst image, colour shift), and exact resume with all of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dmad.compress.data.augment import augment_inputs, parse_kinds
from dmad.compress.data.transforms import ScaleCropFlip, TransformConfig, apply, draw_params
from dmad.compress.distill import (
    FeatureAdapters,
    WeightAverage,
    colour_moment_loss,
    ssim_loss,
    tap_widths,
)
from dmad.compress.errors import DmadError
from dmad.compress.evaluate import (
    COLOUR_SHIFT_FLAG,
    fidelity_summary,
    grid_caption,
    image_fidelity,
    ssim,
)
from dmad.compress.train.finetune import FinetuneConfig, finetune


# -- metrics against hand-computed values -----------------------------------------------------
def _flat(values: tuple[float, float, float], side: int = 16) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, side,
                                                                            side).clone()


def test_colour_shift_is_channel_mean_and_std_difference_in_levels() -> None:
    t = _flat((0.0, 0.2, -0.4))
    s = t.clone()
    s[:, 0] += 0.04  # red +0.04 of the [-1, 1] range = +5.1 levels of 255
    s[:, 1] -= 0.02  # green −2.55 levels
    s[0, 2, ::2] += 0.1  # blue: half the rows +0.1 → mean +0.05 (6.375), std 0.05 (6.375)
    r = image_fidelity(s, t)
    assert r["colour_mean_shift"] == [5.1, -2.55, 6.375]
    assert r["colour_std_shift"] == [0.0, 0.0, 6.375]
    mse = (0.04**2 + 0.02**2 + 0.1**2 / 2) / 3
    assert r["psnr"] == pytest.approx(10 * np.log10(4 / mse), abs=1e-9)
    assert r["ssim"] == pytest.approx(ssim(s, t))


def test_fidelity_summary_names_the_worst_image_and_flags_a_cast() -> None:
    t = _flat((0.0, 0.0, 0.0))
    rows = []
    for name, shift in (("a.png", 0.01), ("b.png", 0.03), ("c.png", 0.02)):
        r = image_fidelity(t + shift, t)  # grey shift on all channels: levels 127.5·shift
        rows.append({**r, "name": name})
    f = fidelity_summary(rows)
    assert f["psnr_worst"] == pytest.approx(10 * np.log10(4 / 0.03**2))
    assert f["psnr_worst_image"] == "b.png" and f["ssim_worst_image"] == "b.png"
    assert f["psnr_mean"] == pytest.approx(sum(r["psnr"] for r in rows) / 3)
    assert f["colour_mean_shift_max"] == pytest.approx(3.825)  # 0.03 · 127.5
    assert f["colour_mean_shift_mean"] == pytest.approx(127.5 * 0.06 / 3)
    assert f["colour_flag"] is True and COLOUR_SHIFT_FLAG == 3.0
    assert fidelity_summary(rows[:1])["colour_flag"] is False  # 1.275 levels: under the flag
    assert "R +3.8 G +3.8 B +3.8 /255  > flag" in grid_caption(rows[1])


def test_ssim_loss_is_one_minus_the_reported_ssim_and_differentiable() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 24, 24, generator=g) * 2 - 1
    b = (a + 0.2 * torch.randn(2, 3, 24, 24, generator=g)).clamp(-1, 1)
    assert float(1 - ssim_loss(a, b)) == pytest.approx(ssim(a, b), abs=1e-5)
    x = b.clone().requires_grad_(True)
    ssim_loss(a, x).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_colour_moment_loss_by_hand() -> None:
    t = _flat((0.0, 0.0, 0.0), 4).float()
    s = t.clone()
    s[:, 0] += 0.3  # mean +0.3 in one channel of three
    s[0, 1, :2] = 0.2  # half of green at 0.2: mean 0.1, std 0.1
    assert float(colour_moment_loss(s, t)) == pytest.approx((0.3 + 0.1) / 3 + 0.1 / 3)


# -- the weight average, adapters ------------------------------------------------------------
def test_weight_average_warms_up_then_follows_decay() -> None:
    m = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(m.weight)
    avg = WeightAverage(m, 0.9)
    with torch.no_grad():
        m.weight.fill_(1.0)
    avg.update(m)  # d = min(0.9, 2/11)
    assert float(avg.shadow["weight"]) == pytest.approx(1 - 2 / 11)
    for _ in range(200):
        avg.update(m)
    assert float(avg.shadow["weight"]) == pytest.approx(1.0, abs=1e-6)
    copy = WeightAverage(m, 0.9)
    copy.load_state_dict(avg.state_dict())
    assert copy.updates == 201 and torch.equal(copy.shadow["weight"], avg.shadow["weight"])


def test_adapters_map_student_width_to_teacher_width() -> None:
    from dmad.compress.attention import generator_taps
    from dmad.compress.models import ResnetGenerator, ResnetSpec, ResnetWidths

    teacher = ResnetGenerator(ResnetSpec(ngf=8, n_blocks=3))
    slim = ResnetGenerator(ResnetSpec(ngf=8, n_blocks=3, widths=ResnetWidths(
        4, 6, 10, (4, 0, 2), 6, 4)))
    slim.train()
    x = torch.randn(1, 3, 32, 32)
    widths = tap_widths(slim, teacher, generator_taps(slim), generator_taps(teacher), x)
    assert widths == {"stem": (10, 32), "block1": (10, 32), "block2": (10, 32),
                      "block3": (10, 32)}
    assert slim.training  # the probe put the student back in training mode
    ad = FeatureAdapters(widths)
    s = {k: torch.randn(1, w[0], 8, 8) for k, w in widths.items()}
    t = {k: torch.randn(1, w[1], 8, 8) for k, w in widths.items()}
    loss = ad(s, t)
    loss.backward()
    assert all(c.weight.grad is not None for c in ad.convs)


# -- inputs: multi-scale crops, augmentation --------------------------------------------------
def test_multi_scale_crops_draw_a_short_side_in_range_and_repeat_by_seed() -> None:
    from PIL import Image

    cfg = TransformConfig(36, 32, True, scale_max=64)
    img = Image.fromarray(np.arange(100 * 150 * 3, dtype=np.uint8).reshape(100, 150, 3))
    shorts = set()
    for k in range(40):
        p = draw_params(cfg, torch.Generator().manual_seed(k))
        assert isinstance(p, ScaleCropFlip) and 32 <= p.short <= 64
        shorts.add(p.short)
        out = apply(img, cfg, p)
        assert out.shape == (3, 32, 32)
        assert torch.equal(out, apply(img, cfg, draw_params(cfg, torch.Generator().manual_seed(k))))
    assert len(shorts) > 10  # many scales, not one
    with pytest.raises(DmadError, match="scale_max"):
        TransformConfig(36, 32, True, scale_max=16)


def test_augmentation_is_drawn_from_the_seed_and_changes_the_input() -> None:
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    kinds = parse_kinds("colour,exposure,zoom,rotate,mix")
    a, b = augment_inputs(x, kinds, 5), augment_inputs(x, kinds, 5)
    assert torch.equal(a, b) and not torch.equal(a, augment_inputs(x, kinds, 6))
    assert a.shape == x.shape and float(a.abs().max()) <= 1.0 + 1e-6
    assert torch.equal(augment_inputs(x, (), 5), x)
    mixed = augment_inputs(x, ("mix",), 1)  # a rectangle of the next image pasted in
    for i in range(3):
        changed = (mixed[i] != x[i]).any(0)
        assert changed.any()
        assert torch.equal(mixed[i][:, changed], x[(i + 1) % 3][:, changed])
    with pytest.raises(DmadError, match="field augment: blur"):
        parse_kinds("colour,blur")


# -- the fine-tune with the new terms ---------------------------------------------------------
@pytest.fixture(scope="module")
def gonly(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny one-direction generator file, a folder of its images at 64² and a G-only search."""
    from dmad.compress.checkpoint import save_model
    from dmad.compress.data import make_default_dataset
    from dmad.compress.models import ResnetGenerator, ResnetSpec
    from dmad.compress.train.search import SearchConfig, search

    root = tmp_path_factory.mktemp("gonly")
    data = make_default_dataset(root / "data", size=64, n_train=12, n_test=4, seed=3)
    torch.manual_seed(0)
    g = ResnetGenerator(ResnetSpec(ngf=8, n_blocks=3))
    with torch.no_grad():
        for p in g.parameters():
            p.normal_(0, 0.1)
    save_model(g, root / "G.pt", task="cyclegan", direction="AtoB", size=32)
    images = data / "unaligned" / "trainA" if (data / "unaligned").is_dir() else data / "trainA"
    held = images.parent / "testA"
    search(SearchConfig(teacher=str(root / "G.pt"), images=str(images), val=str(held), size=32,
                        target_gmacs=0.12, steps=6, bound_updates=3, device="cpu"),
           root / "search")
    return {"root": root, "search": root / "search", "images": images, "held": held,
            "teacher": root / "G.pt"}


NEW_TERMS = dict(objective="fast", lambda_features=0.5, augment="colour,exposure,zoom,rotate,mix",
                 lambda_gan=0.5, gan_from=0.5, ema=0.9, crop_scale=2.0, lr_schedule="cosine")


def test_resume_after_a_kill_is_bit_identical_with_every_new_term(
        gonly: dict[str, Path], tmp_path: Path) -> None:
    kw = dict(search=str(gonly["search"]), steps=8, device="cpu", checkpoint_every=3,
              eval_every=4, eval_images=2, batch_size=2, log_every=1, **NEW_TERMS)
    a = finetune(FinetuneConfig(**kw), tmp_path / "a")
    finetune(FinetuneConfig(**kw), tmp_path / "b", max_steps=5)  # killed after step 5
    b = finetune(FinetuneConfig(**kw), tmp_path / "b", resume=True)
    for name in ("student_G_AtoB.pt", "last_student_G_AtoB.pt"):
        sa = torch.load(tmp_path / "a" / name, weights_only=True)["state_dict"]
        sb = torch.load(tmp_path / "b" / name, weights_only=True)["state_dict"]
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert [e["psnr"] for e in a["evals"]] == [e["psnr"] for e in b["evals"]]
    log = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert {"feat_AtoB", "ssim_AtoB", "colour_AtoB", "distill_AtoB"} <= set(log[0])
    assert "G_AtoB" not in log[0] and "G_AtoB" in log[-1]  # the GAN term from half-way
    for words in ("features via 1×1 adapters ×0.5", "GAN ×0.5 from step 5", "EMA 0.9",
                  "multi-scale crops (short side ≤ 64 px)", "zoom+rotate+mix", "cosine LR"):
        assert words in a["objective"], words


def test_ema_weights_are_what_is_kept_and_what_export_reads(
        gonly: dict[str, Path], tmp_path: Path) -> None:
    import onnxruntime as ort

    from dmad.compress.checkpoint import load_model
    from dmad.export.api import ExportConfig, export_model

    run = tmp_path / "ft"
    finetune(FinetuneConfig(search=str(gonly["search"]), steps=6, device="cpu", ema=0.5,
                            checkpoint_every=6, eval_every=0), run)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 6  # the last step's state: raw weights and their average
    shadow = ckpt["extra"]["ema"]["AtoB"]["shadow"]
    raw = ckpt["modules"]["G_AtoB"]
    kept, meta = load_model(run / "student_G_AtoB.pt")
    state = kept.state_dict()
    assert all(torch.equal(state[k], shadow[k]) for k in state)
    assert any(not torch.equal(state[k], raw[k]) for k in state if state[k].is_floating_point())
    assert "EMA 0.5" in meta["objective"]
    export_model(ExportConfig(out=tmp_path / "x", run=run, size=32, quant=("onnx-int8",),
                              num_eval=2))
    onnx = tmp_path / "x" / "generator.onnx"
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = kept.eval()(x).numpy()
    assert np.abs(got - want).max() < 1e-4


def test_extra_photographs_are_counted_and_held_out_ones_refused(
        gonly: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    extra = tmp_path / "extra"
    extra.mkdir()
    for p in sorted(gonly["images"].parent.glob("trainB/*"))[:3]:
        shutil.copy(p, extra / p.name)
    s = finetune(FinetuneConfig(search=str(gonly["search"]), steps=2, device="cpu",
                                extra_images=str(extra), eval_every=0), tmp_path / "ft")
    assert s["inputs"]["extra_images"] == 3 and s["inputs"]["source_images"] == 12
    assert s["inputs"]["inputs_seen"] == 2 * 4
    shutil.copy(next(gonly["held"].iterdir()), extra / "held.png")
    with pytest.raises(DmadError, match="held-out images must not be trained on"):
        finetune(FinetuneConfig(search=str(gonly["search"]), steps=2, device="cpu",
                                extra_images=str(extra)), tmp_path / "ft2")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("objective", "best", "field objective: 'best' is not one of auto, fast, dmad"),
    ("ema", 1.5, "field ema: must be in [0, 1)"),
    ("augment", "blur", "field augment: blur not one of"),
    ("crop_scale", 0.5, "field crop_scale: must be 0 (off) or >= 1"),
    ("lr_schedule", "step", "field lr_schedule: 'step' is not linear or cosine"),
    ("gan_from", 1.0, "field gan_from: must be in [0, 1)"),
])
def test_objective_fields_are_checked(field: str, value: object, message: str) -> None:
    with pytest.raises(DmadError) as e:
        FinetuneConfig(search="x", **{field: value})  # type: ignore[arg-type]
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_default_augments_only_where_the_teacher_labels_the_inputs() -> None:
    from dmad.compress.train.objective import augment_kinds

    every = ("colour", "exposure", "zoom", "rotate", "mix")
    fast = FinetuneConfig(search="x", objective="fast")
    assert augment_kinds(fast, g_only=True, images=True) == every
    assert augment_kinds(fast, g_only=True, images=False) == ()  # a task dataset's pairs
    assert augment_kinds(fast, g_only=False, images=True) == ()  # a full teacher's task loss
    assert augment_kinds(FinetuneConfig(search="x", objective="dmad"), True, True) == ()
    assert augment_kinds(FinetuneConfig(search="x", objective="fast", augment="none"),
                         True, True) == ()
    assert augment_kinds(FinetuneConfig(search="x", objective="fast", augment="zoom"),
                         True, True) == ("zoom",)


def test_psnr_worst_in_periodic_evaluation(gonly: dict[str, Path], tmp_path: Path) -> None:
    s = finetune(FinetuneConfig(search=str(gonly["search"]), steps=4, device="cpu",
                                eval_every=2, eval_images=0, eval_size=64), tmp_path / "ft")
    for e in s["evals"]:
        assert e["psnr_worst"] <= e["psnr"] and e["ssim_worst"] <= e["ssim"]
        assert e["colour_shift_max"] >= 0 and e["seconds"] > 0


def test_compare_report_carries_the_eval_fidelity_table(tmp_path: Path) -> None:
    from dmad.benchmark.report import fidelity_blocks

    grid = tmp_path / "grid.png"
    grid.write_bytes(b"png")
    assert fidelity_blocks(grid) == []  # no eval.json: no table, no failure
    (tmp_path / "eval.json").write_text("{not json")
    assert fidelity_blocks(grid) == []
    ev = {"images": 11, "size": 256, "psnr_vs_teacher": 27.5, "psnr_worst_vs_teacher": 24.25,
          "psnr_worst_image_vs_teacher": "moon.png", "ssim_vs_teacher": 0.9,
          "ssim_worst_vs_teacher": 0.85, "colour_mean_shift_max": 4.2, "colour_flag": True}
    (tmp_path / "eval.json").write_text(json.dumps(ev))
    (kind, header, rows), _ = fidelity_blocks(grid)
    assert kind == "table" and len(header) == 4
    assert rows == [["11 × 256²", "27.50 / 24.25 dB (moon.png)", "0.900 / 0.850",
                     "4.2/255 (above the flag)"]]


def test_compress_refuses_a_bad_objective_before_any_work(tmp_path: Path) -> None:
    from dmad.compress_run import CompressConfig

    with pytest.raises(DmadError, match="--objective: 'slow' is not one of auto, fast, dmad"):
        CompressConfig(generator="g.pt", images="x", target_gmacs=1.0, objective="slow")
    with pytest.raises(DmadError, match=r"--extra-images .*: not a folder"):
        CompressConfig(generator="g.pt", images="x", target_gmacs=1.0,
                       extra_images=str(tmp_path / "none"))


def test_weight_average_copies_buffers_and_refuses_another_decay() -> None:
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    avg = WeightAverage(m, 0.9)
    with torch.no_grad():
        m[1].running_mean.fill_(5.0)  # statistics of the current weights: followed, not averaged
        m[0].weight.add_(1.0)
    avg.update(m)
    assert torch.equal(avg.shadow["1.running_mean"], m[1].running_mean)
    assert not torch.equal(avg.shadow["0.weight"], m[0].weight)
    with pytest.raises(DmadError, match=r"decay 0\.9, not 0\.99"):
        WeightAverage(m, 0.99).load_state_dict(avg.state_dict())


def test_ssim_loss_fits_images_under_the_window() -> None:
    a = torch.rand(1, 3, 8, 8) * 2 - 1
    assert float(ssim_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(ssim_loss(a, -a)) > 0.5


@pytest.mark.parametrize(("fields", "message"), [
    ({"augment": "zoom", "images": ""}, "need --images"),
    ({"extra_images": "x", "lambda_gt": 1.0}, "cannot be combined with lambda_gt"),
])
def test_incompatible_options_are_refused_before_the_run_folder(
        gonly: dict[str, Path], tmp_path: Path, fields: dict[str, object], message: str) -> None:
    from dmad.compress.data.split import ImageSplit
    from dmad.compress.train.finetune import refuse_incompatible

    cfg = FinetuneConfig(search=str(gonly["search"]), **fields)  # type: ignore[arg-type]
    split = None if "images" in fields else ImageSplit.load(gonly["search"] / "split.json")
    with pytest.raises(DmadError, match=message):
        refuse_incompatible(cfg, True, split)
    with pytest.raises(DmadError, match="field eval_size: must be 0"):
        FinetuneConfig(search="x", eval_size=8)
