"""``dmad compress``: one generator and a folder of images to a verified .tflite, resumably.

Covers the image split (layouts, determinism, held-out never trained on), the teacher-G-only
search and fine-tune (losses, best checkpoint), ``--norm-stats``, the run end to end from a raw
pytorch-CycleGAN-and-pix2pix checkpoint through the real CLI, and every bad input the issue
names (one line, exit 2, nothing written).
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from dmad.compress.data.split import ImageSplit, detect_layout, make_split
from dmad.compress.errors import DmadError
from dmad.compress.importer import import_checkpoint, infer_arch
from tests.conftest import dmad_cmd
from tests.test_import import OrigResnetGenerator, _randomize, _resnet, _same, _save


def _images(folder: Path, n: int, size: int = 32, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        px = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(px).save(folder / f"img_{i:03d}.png")
    return folder


# ------------------------------------------------------------------------------------ split


def test_flat_folder_split_is_deterministic_disjoint_and_at_least_eight(tmp_path: Path) -> None:
    root = _images(tmp_path / "photos", 30)
    _images(root / "nested" / "deeper", 5, seed=1)  # nested folders count too
    a, b = make_split(root, size=32), make_split(root, size=32)
    assert a.train == b.train and a.val == b.val  # same folder, same split
    assert len(a.val) == 8 and len(a.train) == 27  # 5 % of 35 < 8: at least 8 held out
    assert not set(a.train) & set(a.val)
    assert any("deeper" in p for p in a.train + a.val)
    assert a.layout == "folder" and "deterministic" in a.val_source
    # adding images never moves an image held out by its hash into training
    _images(root / "more", 300, seed=2)
    c = make_split(root, size=32)
    assert 8 <= len(c.val) < 40 and not set(c.train) & set(c.val)
    from dmad.compress.data.split import _key

    by_hash = [p for p in a.val if _key(Path(p).relative_to(root).as_posix()) < 0.05]
    assert set(by_hash) <= set(c.val)


def test_layouts_unaligned_uses_testA_aligned_uses_left_half(tmp_path: Path,
                                                            default_data: Path) -> None:
    s = make_split(default_data / "unaligned", size=32)
    assert s.layout == "unaligned" and all("trainA" in p for p in s.train)
    assert all("testA" in p for p in s.val) and "testA" in s.val_source
    layout, train, held, _ = detect_layout(default_data / "aligned")
    assert layout == "aligned" and held is not None and train
    s = make_split(default_data / "aligned", size=32)
    assert s.paired and s.layout == "aligned"
    from dmad.compress.data.split import split_datasets

    tr, _ = split_datasets(s, 32, 32, False)
    assert set(tr.get(0, None)) == {"A", "A_path"}  # the B half only when asked
    tr, _ = split_datasets(s, 32, 32, False, paired=True)
    item = tr.get(0, None)
    img = Image.open(s.train[0]).convert("RGB")
    left = torch.tensor(list(img.crop((0, 0, 32, 32)).get_flattened_data()), dtype=torch.float32)
    assert torch.allclose(item["A"].permute(1, 2, 0).reshape(-1, 3), left / 127.5 - 1, atol=1e-5)
    assert "B" in item


def test_val_folder_overlapping_training_images_is_refused(tmp_path: Path) -> None:
    root = _images(tmp_path / "train", 12)
    val = tmp_path / "val"
    val.mkdir()
    shutil.copy(root / "img_003.png", val / "renamed.png")  # same content, other name
    with pytest.raises(DmadError, match="same content as the training"):
        make_split(root, val, size=32)
    with pytest.raises(DmadError, match="also a training image"):
        make_split(root, root, size=32)
    ok = _images(tmp_path / "val2", 3, seed=9)
    s = make_split(root, ok, size=32)
    assert len(s.train) == 12 and len(s.val) == 3 and "--val" in s.val_source


def test_no_usable_image_and_too_few_images(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("hi")
    with pytest.raises(DmadError, match="no images"):
        make_split(empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DmadError, match=r"broken\.png"):
        make_split(bad)
    few = _images(tmp_path / "few", 8)
    with pytest.raises(DmadError, match="at least 9"):
        make_split(few)


# ------------------------------------------------------------------------------ norm stats


def test_norm_stats_running_matches_a_fork_that_tested_with_them(tmp_path: Path) -> None:
    fork = _resnet(functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=True))
    path = _save(fork.state_dict(), tmp_path)
    inst, rep_i = import_checkpoint(path, "resnet")
    run, rep_r = import_checkpoint(path, "resnet", norm_stats="running")
    assert _same(fork, run, (2, 3, 32, 32)) < 1e-5  # the fork's eval mode (running stats)
    assert _same(fork, inst, (2, 3, 32, 32)) > 1e-2  # per-image statistics differ from it
    ref = OrigResnetGenerator(3, 3, ngf=8, n_blocks=3, norm_layer=functools.partial(
        nn.InstanceNorm2d, affine=False, track_running_stats=False))
    ref.load_state_dict({k: v for k, v in fork.state_dict().items()
                         if "running" not in k and "num_batches" not in k})
    assert _same(ref, inst, (2, 3, 32, 32)) < 1e-5  # the reference loader's output
    assert "dropped the InstanceNorm running statistics" in str(rep_i)
    assert "kept the InstanceNorm running statistics" in str(rep_r)
    assert infer_arch(path) == "resnet"


# ----------------------------------------------------------------- G-only search, fine-tune


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory, default_data: Path) -> Path:
    """A tiny trained-looking generator file: one direction, no discriminator."""
    from dmad.compress.checkpoint import save_model
    from dmad.compress.models import ResnetGenerator, ResnetSpec

    torch.manual_seed(0)
    g = _randomize(ResnetGenerator(ResnetSpec(ngf=8, n_blocks=3)))
    path = tmp_path_factory.mktemp("teacher") / "G_AtoB.pt"
    save_model(g, path, task="cyclegan", direction="AtoB", size=32)
    return path


def test_g_only_search_trains_on_teacher_outputs_and_meets_budget(
        tmp_path: Path, teacher_file: Path, default_data: Path) -> None:
    from dmad.compress.train.search import SearchConfig, search

    cfg = SearchConfig(teacher=str(teacher_file), images=str(default_data / "unaligned"),
                       target_gmacs=0.25, steps=12, bound_updates=6, checkpoint_every=6,
                       log_every=1, device="cpu", size=32)
    search(cfg, tmp_path / "s")
    log = [json.loads(line) for line in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    keys = set().union(*log)
    assert {"recon_AtoB", "G_AtoB", "att_AtoB", "mask", "D"} <= keys  # the G-only objective
    assert "cycle_A" not in keys and "idt_A" not in keys  # no reverse generator needed
    arch = json.loads((tmp_path / "s" / "architecture.json").read_text())
    e = arch["directions"]["AtoB"]
    assert 0.97 * 0.25 <= e["gmacs_paper"] <= 0.25
    assert list(arch["directions"]) == ["AtoB"]
    split = ImageSplit.load(tmp_path / "s" / "split.json")
    assert split.val and all("testA" in p for p in split.val)


def test_finetune_keeps_best_and_last_and_reports_the_step(
        tmp_path: Path, teacher_file: Path, default_data: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from dmad.compress.checkpoint import load_model
    from dmad.compress.train import finetune as ft
    from dmad.compress.train.search import SearchConfig, search

    search(SearchConfig(teacher=str(teacher_file), images=str(default_data / "unaligned"),
                        target_gmacs=0.25, steps=6, bound_updates=3, checkpoint_every=6,
                        device="cpu", size=32), tmp_path / "s")
    # a scripted held-out score: best at step 4 of 8 (evaluated every 2 steps)
    scores = iter([20.0, 25.0, 22.0, 21.0])
    monkeypatch.setattr(ft.FinetuneStage, "evaluate_students",
                        lambda self: {"psnr": next(scores), "ssim": 0.5, "psnr_worst": 1.0,
                                      "ssim_worst": 0.1, "colour_shift_max": 0.0})
    done = ft.finetune(ft.FinetuneConfig(search=str(tmp_path / "s"), steps=8, eval_every=2,
                                         checkpoint_every=4, device="cpu"), tmp_path / "f")
    assert done["best"]["step"] == 4 and done["best"]["psnr"] == 25.0
    assert [e["step"] for e in done["evals"]] == [2, 4, 6, 8]
    best, meta = load_model(tmp_path / "f" / "student_G_AtoB.pt")
    last, _ = load_model(tmp_path / "f" / "last_student_G_AtoB.pt")
    assert meta["step"] == 4 and "L1 to teacher outputs" in meta["objective"]
    diff = max(float((a - b).abs().max()) for a, b in zip(best.state_dict().values(),
                                                         last.state_dict().values(), strict=True)
               if a.is_floating_point())
    assert diff > 0  # four more steps moved the last weights away from the best ones
    # the fine-tune trained on the search's split file, not a new split of its own
    cfg = json.loads((tmp_path / "f" / "config.json").read_text())["finetune"]
    assert not (tmp_path / "f" / "split.json").exists() and cfg["images"] == ""


# ------------------------------------------------------------------------- the CLI, e2e


@pytest.fixture(scope="module")
def raw_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pytorch-CycleGAN-and-pix2pix ResNet generator file (original layout, random weights)."""
    return _save(_resnet().state_dict(), tmp_path_factory.mktemp("raw"), "latest_net_G_A.pth")


def _compress(out: Path, *extra: str, env: dict[str, str],
              gen: Path | None = None, images: Path | None = None
              ) -> subprocess.CompletedProcess[str]:
    args = [str(gen)] if gen is not None else []
    if images is not None:
        args += ["--images", str(images)]
    return subprocess.run(dmad_cmd("compress", *args, "--out", str(out), *extra), env=env,
                          capture_output=True, text=True, timeout=900, check=False)


TINY = ("--target-gmacs", "0.25", "--steps", "6", "--finetune-steps", "6", "--size", "32",
        "--export-size", "32", "--quant", "fp32", "--compare", "false", "--device", "cpu",
        "--checkpoint-every", "3")


def test_compress_raw_checkpoint_end_to_end_then_resume_rules(
        tmp_path: Path, raw_checkpoint: Path, default_data: Path,
        cli_env: dict[str, str]) -> None:
    out = tmp_path / "run"
    images = default_data / "unaligned"
    res = _compress(out, *TINY, env=cli_env, gen=raw_checkpoint, images=images)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "imported latest_net_G_A.pth as resnet" in res.stdout
    assert "teacher-G-only distillation" in res.stdout
    for stage in ("search", "finetune"):
        assert f"[compress] {stage}" in res.stdout
    done = json.loads((out / "DONE.json").read_text())
    assert done["eval"]["images"] == 4 and done["best_step"] in (1, 2, 3, 4, 5, 6)
    parity = json.loads((out / "export" / "compressed" / "parity.json").read_text())
    assert "held-out" in json.dumps(parity)
    assert (out / "export" / "compressed" / "generator.pt").is_file()
    assert (out / "export" / "full" / "parity.json").is_file()
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"])
    # a finished run: rerunning needs --resume (then nothing on disk changes) or --force
    res = _compress(out, *TINY, env=cli_env, gen=raw_checkpoint, images=images)
    assert res.returncode == 2 and "--resume" in res.stderr
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    res = _compress(out, "--resume", env=cli_env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "finished already, nothing to resume" in res.stdout
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    # resumed with other arguments: one line naming the field, nothing changed
    before = (out / "compress.json").read_bytes()
    res = _compress(out, "--resume", "--steps", "7", env=cli_env)
    assert res.returncode == 2 and "--steps was 6" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert (out / "compress.json").read_bytes() == before


def test_compress_bad_inputs_one_line_nothing_written(
        tmp_path: Path, raw_checkpoint: Path, teacher_file: Path, default_data: Path,
        cli_env: dict[str, str]) -> None:
    from dmad.compress.checkpoint import save_model
    from dmad.compress.models import DiscriminatorSpec, PatchDiscriminator

    d_file = tmp_path / "D.pt"
    save_model(PatchDiscriminator(DiscriminatorSpec(3, 8, 3, "instance")), d_file)
    raw_d = tmp_path / "latest_net_D_A.pth"
    torch.save(PatchDiscriminator(DiscriminatorSpec(3, 8, 3, "instance")).state_dict(), raw_d)
    empty = tmp_path / "empty"
    empty.mkdir()
    overlap = tmp_path / "overlap"
    overlap.mkdir()
    first = sorted((default_data / "unaligned" / "trainA").iterdir())[0]
    shutil.copy(first, overlap / "copy.png")
    images = default_data / "unaligned"
    cases = [
        ((d_file, images), (), "expected a generator"),
        ((raw_d, images), (), "not a generator"),
        ((tmp_path / "missing.pth", images), (), "generator not found"),
        ((teacher_file, empty), (), "no images"),
        ((teacher_file, images), ("--val", str(overlap)), "same content as the training"),
        ((teacher_file, images), ("--target-gmacs", "0.0001"), "below the smallest"),
        ((teacher_file, images), ("--target-gmacs-BtoA", "0.0001"), "--target-gmacs-BtoA: "),
        ((teacher_file, images), ("--quant", "int4"), "--quant"),
    ]
    for i, ((gen, imgs), extra, msg) in enumerate(cases):
        out = tmp_path / f"out{i}"
        if "--target-gmacs" not in extra:
            extra = ("--target-gmacs", "0.25", *extra)
        args = list(TINY)
        j = args.index("--target-gmacs")
        del args[j:j + 2]
        res = _compress(out, *args, *extra, env=cli_env, gen=gen, images=imgs)
        assert res.returncode == 2, (msg, res.stderr[-1500:])
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dmad: error:") and msg in lines[0], \
            (msg, lines)
        assert not out.exists(), f"{msg}: {out} was written"


def test_compress_teacher_run_folder_uses_the_full_objective(
        tmp_path: Path, tiny_teacher: dict[str, object], default_data: Path,
        cli_env: dict[str, str]) -> None:
    from dmad.compress.train.teacher import TeacherConfig, train_teacher

    cfg = {**tiny_teacher, "ngf": 8, "n_blocks": 3, "ndf": 8, "steps": 4}
    train_teacher(TeacherConfig(**cfg), tmp_path / "teacher")  # type: ignore[arg-type]
    out = tmp_path / "run"
    args = [a for a in TINY]
    res = _compress(out, *args, "--export", "false", "--target-gmacs-BtoA", "0.3",
                    env=cli_env, gen=tmp_path / "teacher",
                    images=default_data)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "full objective (the teacher's G and D)" in res.stdout
    log = (out / "search" / "log.jsonl").read_text()
    assert "cycle_A" in log and "recon_AtoB" not in log  # both generators, cycle losses
    arch = json.loads((out / "search" / "architecture.json").read_text())
    assert set(arch["directions"]) == {"AtoB", "BtoA"}
    for d, target in (("AtoB", 0.25), ("BtoA", 0.3)):  # a budget per direction
        e = arch["directions"][d]
        assert e["target_gmacs"] == target and 0.97 * target <= e["gmacs_paper"] <= target, e
    done = json.loads((out / "DONE.json").read_text())
    # the automatic objective with a full teacher is DMAD's
    assert done["objective"].startswith("dmad: task loss") and "+ D maps" in done["objective"]
    assert not (out / "split.json").exists()  # the dataset's own test split is held out


def test_compress_with_a_latency_budget_records_predicted_and_measured(
        tmp_path: Path, teacher_file: Path, default_data: Path,
        cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    """`--target-ms` with a table: the search budgets in predicted ms, and after the export
    the compressed fp32 file is timed on this CPU beside the prediction; bad latency inputs
    are one line and write nothing."""
    import dataclasses as dc

    from dmad.benchmark.machine import machine_info
    from dmad.compress.models import ResnetSpec
    from tests.test_latency import synthetic_table

    table = dc.replace(synthetic_table(ResnetSpec(ngf=8, n_blocks=3)), size=32)
    table.key["machine"] = machine_info()["cpu"]  # a table of this CPU: measured here
    f = tmp_path / "lat.json"
    f.write_text(json.dumps(table.to_json()))
    target = round(0.4 * table.predict(ResnetSpec(ngf=8, n_blocks=3)).ms, 3)
    args = [a for a in TINY]
    j = args.index("--target-gmacs")
    del args[j:j + 2]
    out = tmp_path / "run"
    res = _compress(out, *args, "--target-ms", str(target), "--latency-table", str(f),
                    env=cli_env, gen=teacher_file, images=default_data / "unaligned")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"target {target} ms predicted" in res.stdout and "ms measured" in res.stdout
    arch = json.loads((out / "search" / "architecture.json").read_text())
    lat = arch["directions"]["AtoB"]["latency"]
    assert arch["metric"] == "ms" and lat["predicted_ms"] <= target
    assert lat["measured_ms"] > 0 and lat["measured_file"].endswith("generator_fp32.tflite")
    # (the record keeps ms to 3 decimals; a tiny model's ms are a few hundredths)
    assert 1 + lat["measured_error"] == pytest.approx(
        lat["predicted_ms"] / lat["measured_ms"], rel=0.05)
    # a table of another machine is not measured against this CPU
    from dmad.compress_run import _record_measured

    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(dc.replace(
        table, key={**table.key, "machine": "another CPU"}).to_json()))
    _record_measured(out, str(elsewhere), 32)
    lat = json.loads((out / "search" / "architecture.json").read_text())["directions"]["AtoB"][
        "latency"]
    assert lat["measured_ms"] is None and "another machine" in lat["measured_note"]
    # an int8 table's record says which units the shipped file kept out of int8 beside the
    # units the table timed that way, and a mismatch is said on screen
    from dmad.compress_run import _compare_int8_plan

    parity = tmp_path / "parity.json"
    parity.write_text(json.dumps({"int8_recipe": {
        "float_layers": ["head.conv"], "hybrid_layers": ["up2.conv", "blocks.2.conv1.conv"]}}))
    rec: dict = {}
    _compare_int8_plan(rec, {"up2": "hybrid"}, parity)
    assert rec["file_int8_plan"] == {"up2": "hybrid", "block": "hybrid", "head": "float"}
    assert rec["table_int8_plan"] == {"up2": "hybrid"}
    assert "kept block:hybrid, head:float, up2:hybrid out of int8, the table timed " \
        "up2:hybrid" in capsys.readouterr().out
    _compare_int8_plan(rec, {"up2": "hybrid", "block": "hybrid", "head": "float"}, parity)
    assert "note" not in capsys.readouterr().out
    other = tmp_path / "lat_batch.json"
    other.write_text(json.dumps(dc.replace(
        table, family={**table.family, "norm": "batch"}).to_json()))
    for i, (extra, msg) in enumerate([
            (("--target-ms", "5"), "--latency-table: required by --target-ms"),
            (("--target-ms", "0.001", "--latency-table", str(f)), "--target-ms: 0.001 is below"),
            (("--target-ms", "1e6", "--latency-table", str(f)), "not below the full model"),
            (("--target-ms", "5", "--latency-table", str(other)), "latency_table: measured for "
                                                                   "norm='batch'"),
            (("--target-ms", "5", "--latency-table", str(tmp_path / "no.json")), "no such file")]):
        o = tmp_path / f"bad{i}"
        res = _compress(o, *args, *extra, env=cli_env, gen=teacher_file,
                        images=default_data / "unaligned")
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and msg in lines[0], (msg, lines)
        assert not o.exists()
