"""The input pipeline, mixed precision and epoch schedules of every training stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from dmad.compress.masks import ChannelMask
from dmad.compress.train.common import BatchSource, StepBatches
from dmad.compress.train.teacher import TeacherConfig, train_teacher


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_loader_workers_give_the_same_batches_and_weights(tiny_teacher: dict,
                                                         tmp_path: Path) -> None:
    from dmad.compress.data import open_dataset
    from dmad.compress.data.transforms import TransformConfig

    ds = open_dataset(Path(str(tiny_teacher["data"])), "cyclegan", "train",
                      TransformConfig(36, 32, True))
    a = BatchSource(ds, 3, 1, torch.device("cpu"), workers=0)
    b = BatchSource(ds, 3, 1, torch.device("cpu"), workers=2, prefetch=1)
    for step in (0, 1, 2, 9, 3):  # a jump back (a resume) restarts the loader at that step
        ba, bb = a.get(step), b.get(step)
        assert torch.equal(ba["A"], bb["A"]) and torch.equal(ba["B"], bb["B"])
    assert b._it is not None and b.workers == 2
    outs = {}
    for w in (0, 2):
        cfg = TeacherConfig(**{**tiny_teacher, "steps": 4, "workers": w, "batch_size": 2})
        train_teacher(cfg, tmp_path / f"w{w}")
        outs[w] = _weights(tmp_path / f"w{w}" / "G_AtoB.pt")
    assert all(torch.equal(outs[0][k], outs[2][k]) for k in outs[0])


def test_a_bad_image_read_by_a_worker_is_one_line(tiny_teacher: dict, tmp_path: Path) -> None:
    """A file that goes bad after the scan fails at the step that reads it, with the file named
    (not a worker traceback)."""
    import shutil

    from dmad.compress.data import open_dataset
    from dmad.compress.data.transforms import TransformConfig
    from dmad.compress.errors import DmadError

    root = tmp_path / "data"
    shutil.copytree(Path(str(tiny_teacher["data"])), root)
    ds = open_dataset(root, "cyclegan", "train", TransformConfig(36, 32, True))
    for p in ds.A_paths:
        p.write_bytes(b"not an image")
    src = BatchSource(ds, 2, 0, torch.device("cpu"), workers=2)
    with pytest.raises(DmadError, match="not a recognised image format") as exc:
        src.get(0)
    assert "\n" not in str(exc.value)


def test_epochs_set_the_steps_at_the_global_batch(tiny_teacher: dict, tmp_path: Path) -> None:
    cfg = TeacherConfig(**{**tiny_teacher, "epochs": 1.0, "decay_epochs": 0.5, "batch_size": 4})
    done = train_teacher(cfg, tmp_path / "e")
    n = 24  # training images per side of the tiny default set
    assert done["steps"] == math.ceil(n / 4) == 6
    saved = json.loads((tmp_path / "e" / "config.json").read_text())
    assert saved["steps"] == 6 and saved["decay_steps"] == 3


def _masked_net() -> tuple[nn.Module, ChannelMask]:
    torch.manual_seed(0)
    mask = ChannelMask(8)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8), mask, nn.ReLU(),
                        nn.Conv2d(8, 3, 3, padding=1))
    return net, mask


def test_mask_backward_under_bf16_autocast_matches_fp32() -> None:
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    grads, scores = {}, {}
    for name in ("fp32", "bf16"):
        net, mask = _masked_net()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
            y = net(x)
            loss = (y.float() - 0.3).abs().mean()
        if name == "bf16":
            assert y.dtype == torch.bfloat16  # the convolutions did run in bf16
        loss.backward()
        assert mask.weight.grad is not None and mask.weight.grad.dtype == torch.float32
        grads[name], scores[name] = mask.weight.grad.clone(), mask.score.clone()
    rel = (grads["bf16"] - grads["fp32"]).norm() / grads["fp32"].norm()
    assert rel < 0.05, float(rel)
    srel = (scores["bf16"] - scores["fp32"]).norm() / scores["fp32"].norm()
    assert srel < 0.05, float(srel)
    assert grads["fp32"].abs().sum() > 0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_search_and_finetune_steps_are_finite(tiny_teacher: dict, tmp_path: Path,
                                                            precision: str) -> None:
    from dmad.compress.train.finetune import FinetuneConfig, finetune
    from dmad.compress.train.search import SearchConfig, search

    t = tmp_path / "t"
    train_teacher(TeacherConfig(**{**tiny_teacher, "steps": 2, "precision": precision}), t)
    s = tmp_path / "s"
    search(SearchConfig(teacher=str(t), target_gmacs=0.08, steps=3, bound_updates=2,
                        device="cpu", log_every=1, precision=precision), s)
    f = tmp_path / "f"
    finetune(FinetuneConfig(search=str(s), steps=2, device="cpu", log_every=1,
                            precision=precision), f)
    for run in (t, s, f):
        lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        assert lines and all(math.isfinite(v) for r in lines for k, v in r.items()
                             if isinstance(v, float))
        assert json.loads((run / "config.json").read_text()).get(
            "precision", json.loads((run / "config.json").read_text()).get("training", {})
            .get("precision")) == precision
    ck = torch.load(f / "checkpoint.pt", weights_only=True)
    scaler = ck["extra"]["scalers"]["G"]  # the loss scaler's state is checkpointed (fp16)
    assert (scaler["scale"] > 0) if precision == "fp16" else scaler == {}


def test_step_batches_depend_only_on_seed_and_step(tiny_teacher: dict) -> None:
    from dmad.compress.data import open_dataset
    from dmad.compress.data.transforms import TransformConfig

    ds = open_dataset(Path(str(tiny_teacher["data"])), "cyclegan", "train",
                      TransformConfig(36, 32, True))
    a, b = StepBatches(ds, 2, seed=5), StepBatches(ds, 2, seed=5)
    assert torch.equal(a[3]["A"], b[3]["A"])  # b never built steps 0-2
    assert not torch.equal(a[3]["A"], StepBatches(ds, 2, seed=6)[3]["A"])


def test_folder_validation_is_cached_and_redone_for_changed_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from dmad.compress.data import images
    from dmad.compress.errors import DmadError

    monkeypatch.setenv("DMAD_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (40, 30), (i * 40, 0, 0)).save(folder / f"{i}.png")
    (folder / "bad.png").write_bytes(b"junk")
    decoded: list[str] = []
    real = images.load_rgb
    monkeypatch.setattr(images, "load_rgb", lambda p, **kw: (decoded.append(p.name),
                                                             real(p, **kw))[1])
    files = images.list_images(folder)
    good, bad = images.scan(files, skip_bad=True)
    assert len(good) == 6 and [b[0].name for b in bad] == ["bad.png"]
    assert sorted(decoded) == sorted(p.name for p in files)
    decoded.clear()
    good2, bad2 = images.scan(files, skip_bad=True)  # all from the cache
    assert decoded == [] and good2 == good and bad2 == bad
    with pytest.raises(DmadError, match=r"bad\.png: unreadable"):  # a cached refusal still stops
        images.scan(files)
    with pytest.raises(DmadError, match="smaller than the crop 48x48"):  # sizes are cached
        images.scan(files[:6], min_size=(48, 48))
    assert decoded == []
    Image.new("RGB", (40, 30)).save(folder / "bad.png")  # repaired: decoded again, now good
    good3, bad3 = images.scan(images.list_images(folder), skip_bad=True)
    assert decoded == ["bad.png"] and len(good3) == 7 and not bad3


@pytest.mark.parametrize("name", ["horse2zebra", "edges2shoes_unet", "cityscapes_unet",
                                  "edges2shoes_separable", "cityscapes_separable"])
def test_presets_are_valid_stage_configs(name: str) -> None:
    """Every packaged preset resolves by name and fills every stage's config without an
    unknown field; the paper settings it names are the ones that land in the config."""
    from dmad.cli import resolve_preset
    from dmad.compress.config import make_config
    from dmad.compress.train.finetune import FinetuneConfig
    from dmad.compress.train.search import SearchConfig

    path = resolve_preset(Path(name))
    t = make_config(TeacherConfig, path, {}, section="teacher")
    s = make_config(SearchConfig, path, {"teacher": "x"}, section="search")
    f = make_config(FinetuneConfig, path, {"search": "x"}, section="finetune")
    assert t.size == 256 and t.epochs == s.epochs == f.epochs == 200
    assert t.decay_epochs == s.decay_epochs == f.decay_epochs == 100
    assert f.lambda_distill == 0.0  # DMAD's exact fine-tune objective
    expect = {"horse2zebra": ("resnet", 64, 4.0), "edges2shoes_unet": ("unet", 48, 3.0),
              "cityscapes_unet": ("unet", 48, 4.0), "edges2shoes_separable": ("resnet", 48, 4.5),
              "cityscapes_separable": ("resnet", 48, 4.5)}[name]
    assert (t.arch, t.ngf, s.target_gmacs) == expect
    if t.task == "pix2pix":
        assert t.ndf == 128 and not t.flip and t.load_size == t.size
    assert t.separable == name.endswith("separable")


def test_an_unknown_preset_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from dmad.cli import main

    assert main(["teacher", "--config", "horse3zebra", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a preset" in err and "horse2zebra" in err and "\n" not in err


def test_resume_keeps_the_saved_global_batch_and_epoch_steps(tiny_teacher: dict,
                                                             tmp_path: Path) -> None:
    """A resumed run trains with the interrupted run's global batch whatever batch_size it is
    given now (as under another world size), so an epoch schedule keeps its step count."""
    run = tmp_path / "r"
    base = {**tiny_teacher, "epochs": 1.0, "steps": 1}
    train_teacher(TeacherConfig(**{**base, "batch_size": 2}), run, max_steps=4)
    done = train_teacher(TeacherConfig(**{**base, "batch_size": 1}), run, resume=True)
    assert done["steps"] == 12  # 24 images / global batch 2, not 24 / 1
    ref = tmp_path / "ref"
    train_teacher(TeacherConfig(**{**base, "batch_size": 2}), ref)
    a, b = _weights(run / "G_AtoB.pt"), _weights(ref / "G_AtoB.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
