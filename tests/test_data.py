"""Tests for compress.data: default dataset, preprocessing, datasets and bad-input errors."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from dmad.compress.data import (
    AlignedDataset,
    CropFlip,
    FolderDataset,
    TransformConfig,
    UnalignedDataset,
    apply,
    batch,
    draw_params,
    list_images,
    load_rgb,
    make_default_dataset,
    open_dataset,
    scan,
    to_image,
    to_tensor,
)
from dmad.compress.errors import DmadError

SMALL = {"size": 32, "n_train": 6, "n_test": 2}
CFG = TransformConfig(load_size=36, crop_size=32)


# --------------------------------------------------------------------------- helpers


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr)


def _write_folder(folder: Path, n: int, size: int = 40, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i:02d}.png"
        _noise(size, size, seed + i).save(p)
        paths.append(p)
    return paths


def _unaligned(root: Path, n_a: int = 3, n_b: int = 5) -> Path:
    _write_folder(root / "trainA", n_a, seed=0)
    _write_folder(root / "trainB", n_b, seed=100)
    _write_folder(root / "testA", 2, seed=200)
    _write_folder(root / "testB", 2, seed=300)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bad_truncated_png(folder: Path) -> Path:
    p = folder / "bad_trunc.png"
    _noise(40, 40, 7).save(p)
    _truncate(p)
    return p


def _bad_truncated_jpeg(folder: Path) -> Path:
    p = folder / "bad_trunc.jpg"
    _noise(40, 40, 7).save(p, quality=90)
    _truncate(p)
    return p


def _bad_zero_bytes(folder: Path) -> Path:
    p = folder / "bad_empty.png"
    p.write_bytes(b"")
    return p


def _bad_not_image(folder: Path) -> Path:
    p = folder / "bad_text.png"
    p.write_text("this is not a png\n")
    return p


def _bad_gray(folder: Path) -> Path:
    p = folder / "bad_gray.png"
    _noise(40, 40, 7).convert("L").save(p)
    return p


def _bad_rgba(folder: Path) -> Path:
    p = folder / "bad_rgba.png"
    _noise(40, 40, 7).convert("RGBA").save(p)
    return p


def _bad_small(folder: Path) -> Path:
    p = folder / "bad_small.png"
    _noise(20, 20, 7).save(p)
    return p


BAD_CASES = {
    "truncated_png": (_bad_truncated_png, "truncated"),
    "truncated_jpeg": (_bad_truncated_jpeg, "truncated"),
    "zero_bytes": (_bad_zero_bytes, "0 bytes"),
    "not_an_image": (_bad_not_image, "unreadable"),
    "grayscale": (_bad_gray, "mode L, expected RGB"),
    "rgba": (_bad_rgba, "mode RGBA, expected RGB"),
    "smaller_than_crop": (_bad_small, "20x20 is smaller than the crop 32x32"),
}


@pytest.fixture(scope="module")
def default_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_default_dataset(tmp_path_factory.mktemp("default"), **SMALL)


# --------------------------------------------------------------------------- default dataset


def test_default_layout_and_sizes(default_root: Path) -> None:
    marker = json.loads((default_root / "dmad-data.json").read_text())
    assert {k: marker[k] for k in ("size", "n_train", "n_test", "seed")} == {**SMALL, "seed": 0}
    for sub, n in [("trainA", 6), ("trainB", 6), ("testA", 2), ("testB", 2)]:
        paths = list_images(default_root / "unaligned" / sub)
        assert len(paths) == n
        assert all(load_rgb(p).size == (32, 32) for p in paths)
    for sub, n in [("train", 6), ("val", 2)]:
        paths = list_images(default_root / "aligned" / sub)
        assert len(paths) == n
        assert all(load_rgb(p).size == (64, 32) for p in paths)
    assert not list(default_root.glob(".default-gen-*"))


def test_default_day_is_bright_and_night_is_dark(default_root: Path) -> None:
    def mean(p: Path) -> float:
        return float(np.asarray(load_rgb(p), dtype=np.float32).mean())

    for p in list_images(default_root / "unaligned" / "trainA"):
        assert mean(p) > 120
    for p in list_images(default_root / "unaligned" / "trainB"):
        assert mean(p) < 110
    for p in list_images(default_root / "aligned" / "train"):
        arr = np.asarray(load_rgb(p), dtype=np.float32)
        day, night = arr[:, :32], arr[:, 32:]
        assert day.mean() > night.mean() + 40
        # day: warm shapes (red > blue) on blue sky; night: cool shapes (blue >= red)
        assert night[..., 2].mean() > night[..., 0].mean()


def test_default_same_seed_is_byte_identical(tmp_path: Path) -> None:
    a = make_default_dataset(tmp_path / "a", **SMALL, seed=3)
    b = make_default_dataset(tmp_path / "b", **SMALL, seed=3)
    fa, fb = _files(a), _files(b)
    assert len(fa) == 6 * 3 + 2 * 3 + 1
    assert fa == fb


def test_default_other_seed_differs(tmp_path: Path) -> None:
    a = _files(make_default_dataset(tmp_path / "a", **SMALL, seed=0))
    b = _files(make_default_dataset(tmp_path / "b", **SMALL, seed=1))
    images = [k for k in a if k.endswith(".png")]
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in images)


def test_default_rerun_does_not_rewrite(tmp_path: Path) -> None:
    root = make_default_dataset(tmp_path / "d", **SMALL)
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*")}
    assert make_default_dataset(root, **SMALL) == root
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*")}
    assert before == after


def test_default_other_params_regenerate_cleanly(tmp_path: Path) -> None:
    root = make_default_dataset(tmp_path / "d", **SMALL)
    (root / "notes.txt").write_text("user file")
    before = _files(root)
    with pytest.raises(DmadError, match=r"other settings.*--force"):
        make_default_dataset(root, size=32, n_train=3, n_test=1)
    assert _files(root) == before
    make_default_dataset(root, size=32, n_train=3, n_test=1, force=True)
    assert len(list_images(root / "unaligned" / "trainA")) == 3
    assert len(list_images(root / "aligned" / "val")) == 1
    assert json.loads((root / "dmad-data.json").read_text())["n_train"] == 3
    assert (root / "notes.txt").read_text() == "user file"
    fresh = _files(make_default_dataset(tmp_path / "fresh", size=32, n_train=3, n_test=1))
    assert {k: v for k, v in _files(root).items() if k != "notes.txt"} == fresh


def test_default_interrupted_run_is_redone(tmp_path: Path) -> None:
    root = make_default_dataset(tmp_path / "d", **SMALL)
    reference = _files(root)
    # A kill mid-generation: the marker says incomplete, a file is missing, a stale
    # temporary folder is left.
    marker = json.loads((root / "dmad-data.json").read_text())
    (root / "dmad-data.json").write_text(json.dumps({**marker, "complete": False}))
    (root / "unaligned" / "trainB" / "0003.png").unlink()
    (root / ".default-gen-stale").mkdir()
    make_default_dataset(root, **SMALL)
    assert _files(root) == reference
    assert not (root / ".default-gen-stale").exists()
    # A marker whose files were deleted later is not trusted either.
    (root / "aligned" / "train" / "0000.png").unlink()
    make_default_dataset(root, **SMALL)
    assert _files(root) == reference


def test_default_never_writes_into_a_folder_it_did_not_make(tmp_path: Path) -> None:
    mine = tmp_path / "u" / "unaligned" / "trainA" / "photo.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's photo")
    for force in (False, True):
        with pytest.raises(DmadError, match="holds no dataset made by `dmad data`"):
            make_default_dataset(tmp_path / "u", size=32, n_train=2, n_test=1, force=force)
    assert mine.read_bytes() == b"the user's photo"
    assert sorted(p.name for p in (tmp_path / "u").rglob("*")) == ["photo.png", "trainA",
                                                                  "unaligned"]


def test_default_old_marker_is_still_ours(tmp_path: Path) -> None:
    root = make_default_dataset(tmp_path / "d", **SMALL)
    (root / "dmad-data.json").rename(root / "DONE.json")  # a dataset made before the rename
    before = _files(root)
    assert make_default_dataset(root, **SMALL) == root
    assert _files(root) == before


def test_default_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(DmadError, match="size"):
        make_default_dataset(tmp_path, size=4)
    with pytest.raises(DmadError, match="seed"):
        make_default_dataset(tmp_path, seed=-1)


# --------------------------------------------------------------------------- transforms


def test_transform_config_rejects_crop_larger_than_load() -> None:
    with pytest.raises(DmadError, match="crop_size"):
        TransformConfig(load_size=32, crop_size=64)
    with pytest.raises(DmadError, match="load_size"):
        TransformConfig(load_size=0, crop_size=0)


def test_to_tensor_range_and_roundtrip() -> None:
    img = _noise(17, 9)
    t = to_tensor(img)
    assert t.dtype == torch.float32 and t.shape == (3, 9, 17)
    assert t.min() >= -1 and t.max() <= 1
    arr = np.array(img)
    assert torch.allclose(t, torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1, atol=1e-6)
    assert np.array_equal(np.asarray(to_image(t)), arr)
    assert np.array_equal(np.asarray(to_image(t[None])), arr)


def test_to_image_clamps_and_rounds() -> None:
    t = torch.tensor([-5.0, 5.0, 0.0, float("nan")]).view(1, 1, 4).expand(3, 1, 4)
    arr = np.asarray(to_image(t))
    assert arr[0, :, 0].tolist() == [0, 255, 128, 0]


def test_apply_test_time_is_plain_bicubic_resize() -> None:
    img = _noise(50, 40)
    expected = to_tensor(img.resize((32, 32), Image.Resampling.BICUBIC))
    assert torch.equal(apply(img, CFG, None), expected)


def test_apply_crop_and_flip_match_manual() -> None:
    img = _noise(50, 40)
    resized = np.asarray(img.resize((36, 36), Image.Resampling.BICUBIC))
    out = apply(img, CFG, CropFlip(x=3, y=1, flip=False))
    assert np.array_equal(np.asarray(to_image(out)), resized[1:33, 3:35])
    flipped = apply(img, CFG, CropFlip(x=3, y=1, flip=True))
    assert torch.equal(flipped, out.flip(-1))


def test_draw_params_only_uses_given_generator() -> None:
    def draws(seed: int) -> list[CropFlip]:
        g = torch.Generator().manual_seed(seed)
        return [draw_params(CFG, g) for _ in range(20)]

    torch.manual_seed(1)
    random.seed(1)
    first = draws(5)
    torch.manual_seed(999)
    random.seed(999)
    assert draws(5) == first
    assert draws(6) != first
    assert {p.flip for p in first} == {True, False}
    assert all(0 <= p.x <= 4 and 0 <= p.y <= 4 for p in first)
    no_flip = TransformConfig(36, 32, flip=False)
    g = torch.Generator().manual_seed(5)
    assert not any(draw_params(no_flip, g).flip for _ in range(20))


# --------------------------------------------------------------------------- datasets


def test_unaligned_batch_shapes_and_ranges(default_root: Path) -> None:
    ds = UnalignedDataset(default_root / "unaligned", "train", CFG)
    assert len(ds) == 6
    b = batch(ds, [0, 1, 2, 3], torch.Generator().manual_seed(0))
    for key in ("A", "B"):
        assert b[key].shape == (4, 3, 32, 32) and b[key].dtype == torch.float32
        assert b[key].min() >= -1 and b[key].max() <= 1
        assert b[key].std() > 0.1
    assert len(b["A_path"]) == 4 and all("trainA" in p for p in b["A_path"])
    assert all("trainB" in p for p in b["B_path"])


def test_unaligned_len_is_max_and_index_wraps(tmp_path: Path) -> None:
    ds = UnalignedDataset(_unaligned(tmp_path, n_a=3, n_b=5), "train", CFG)
    assert len(ds) == 5
    item = ds.get(4, None)
    assert item["A_path"].endswith("img01.png") and item["B_path"].endswith("img04.png")
    with pytest.raises(IndexError):
        ds.get(5, None)


def test_unaligned_test_time_is_deterministic(default_root: Path) -> None:
    ds = UnalignedDataset(default_root / "unaligned", "test", CFG)
    a, b = ds.get(1, None), ds.get(1, None)
    assert torch.equal(a["A"], b["A"]) and a["B_path"] == b["B_path"]
    expected = to_tensor(load_rgb(Path(a["A_path"])).resize((32, 32), Image.Resampling.BICUBIC))
    assert torch.equal(a["A"], expected)


def test_same_generator_seed_same_batch_other_seed_differs(default_root: Path) -> None:
    ds = UnalignedDataset(default_root / "unaligned", "train", CFG)

    def run(seed: int) -> dict:
        return batch(ds, [0, 1, 2, 3, 4, 5], torch.Generator().manual_seed(seed))

    torch.manual_seed(0)
    x = run(1)
    torch.manual_seed(123)  # the global RNG must not matter
    y = run(1)
    z = run(2)
    assert torch.equal(x["A"], y["A"]) and torch.equal(x["B"], y["B"])
    assert x["B_path"] == y["B_path"]
    assert not torch.equal(x["A"], z["A"])


def test_resume_from_generator_state_reproduces_batches(default_root: Path) -> None:
    ds = AlignedDataset(default_root / "aligned", "train", CFG)
    g = torch.Generator().manual_seed(7)
    batch(ds, [0, 1], g)
    state = g.get_state()
    step2 = batch(ds, [2, 3], g)
    resumed = torch.Generator()
    resumed.set_state(state)
    again = batch(ds, [2, 3], resumed)
    assert torch.equal(step2["A"], again["A"]) and torch.equal(step2["B"], again["B"])


def test_global_rng_untouched(default_root: Path) -> None:
    ds = UnalignedDataset(default_root / "unaligned", "train", CFG)
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    batch(ds, [0, 1, 2], torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state


def test_aligned_batch_shapes(default_root: Path) -> None:
    ds = AlignedDataset(default_root / "aligned", "train", CFG)
    assert len(ds) == 6
    b = batch(ds, [0, 5], torch.Generator().manual_seed(0))
    assert b["A"].shape == b["B"].shape == (2, 3, 32, 32)
    assert b["A"].min() >= -1 and b["B"].max() <= 1
    assert b["A_path"] == b["B_path"]
    # AtoB: A is the bright day half, B the dark night half.
    assert b["A"].mean() > b["B"].mean()


def test_aligned_halves_get_the_same_crop_and_flip(tmp_path: Path) -> None:
    half = _noise(40, 40, 3)
    pair = Image.new("RGB", (80, 40))
    pair.paste(half, (0, 0))
    pair.paste(half, (40, 0))
    (tmp_path / "train").mkdir()
    pair.save(tmp_path / "train" / "pair.png")
    ds = AlignedDataset(tmp_path, "train", CFG)
    g = torch.Generator().manual_seed(0)
    outs = [ds.get(0, g) for _ in range(12)]
    for item in outs:
        assert torch.equal(item["A"], item["B"])
    # ... and augmentation really happened: the 12 draws are not all the same crop.
    assert len({item["A"].sum().item() for item in outs}) > 1


def test_aligned_direction_swaps_halves(tmp_path: Path) -> None:
    left, right = _noise(40, 40, 1), _noise(40, 40, 2)
    pair = Image.new("RGB", (80, 40))
    pair.paste(left, (0, 0))
    pair.paste(right, (40, 0))
    (tmp_path / "val").mkdir()
    pair.save(tmp_path / "val" / "p.png")
    ab = AlignedDataset(tmp_path, "val", CFG).get(0, None)
    ba = AlignedDataset(tmp_path, "val", CFG, direction="BtoA").get(0, None)
    assert torch.equal(ab["A"], apply(left, CFG, None))
    assert torch.equal(ab["B"], apply(right, CFG, None))
    assert torch.equal(ba["A"], ab["B"]) and torch.equal(ba["B"], ab["A"])
    # split "test" falls back to val/ when there is no test/
    assert AlignedDataset(tmp_path, "test", CFG).folder == tmp_path / "val"


def test_folder_dataset(tmp_path: Path) -> None:
    _write_folder(tmp_path / "imgs", 3, size=50)
    _noise(20, 20).save(tmp_path / "imgs" / "tiny.PNG")  # upper-case, smaller than size: ok
    (tmp_path / "imgs" / "readme.txt").write_text("not an image, ignored")
    (tmp_path / "imgs" / "._img00.png").write_bytes(b"\0\0")  # macOS junk, ignored
    ds = FolderDataset(tmp_path / "imgs", 24)
    assert len(ds) == 4
    b = batch(ds, [0, 3], None)
    assert b["image"].shape == (2, 3, 24, 24)
    assert b["path"][1].endswith("tiny.PNG")


def test_open_dataset_picks_layout(default_root: Path) -> None:
    cg = open_dataset(default_root, "cyclegan", "train", CFG)
    assert isinstance(cg, UnalignedDataset)
    px = open_dataset(default_root / "aligned", "pix2pix", "test", CFG)
    assert isinstance(px, AlignedDataset) and len(px) == 2


def test_palette_png_without_transparency_is_accepted(tmp_path: Path) -> None:
    img = _noise(40, 40).quantize(16)
    img.save(tmp_path / "pal.png")
    out = load_rgb(tmp_path / "pal.png")
    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(img.convert("RGB")))
    img.save(tmp_path / "paltr.png", transparency=0)
    with pytest.raises(DmadError, match=r"paltr\.png: image mode P with transparency"):
        load_rgb(tmp_path / "paltr.png")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_image_is_named(tmp_path: Path, case: str) -> None:
    root = _unaligned(tmp_path / "data")
    make, words = BAD_CASES[case]
    bad = make(root / "trainB")
    with pytest.raises(DmadError) as info:
        UnalignedDataset(root, "train", CFG)
    msg = str(info.value)
    assert str(bad) in msg and words in msg
    assert "\n" not in msg
    # no chained PIL traceback behind the one-line message
    exc = info.value
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_skip_bad_drops_and_reports(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _unaligned(tmp_path / "data", n_a=3, n_b=5)
    make, _ = BAD_CASES[case]
    bad = make(root / "trainB")
    make(root / "trainA")
    ds = UnalignedDataset(root, "train", CFG, skip_bad=True)
    err = capsys.readouterr().err
    assert f"warning: skipped 1 unreadable/invalid image(s) in {root / 'trainB'}" in err
    assert f"(first: {bad}: " in err
    assert len(ds.A_paths) == 3 and len(ds.B_paths) == 5
    assert bad not in ds.B_paths
    b = batch(ds, list(range(len(ds))), torch.Generator().manual_seed(0))
    assert b["B"].shape == (5, 3, 32, 32)


def test_truncated_image_rejected_even_if_pil_flag_flipped(tmp_path: Path) -> None:
    bad = _bad_truncated_png(tmp_path)
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(DmadError, match="truncated"):
            load_rgb(bad)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def test_skip_bad_with_only_bad_files_fails(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    _bad_rgba(folder)
    _bad_zero_bytes(folder)
    with pytest.raises(DmadError) as info:
        FolderDataset(folder, 32, skip_bad=True)
    assert str(folder) in str(info.value) and "no usable images" in str(info.value)
    with pytest.raises(DmadError, match="no usable images"):
        scan(list_images(folder), skip_bad=True)


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DmadError, match=r"empty: no images \(\.jpg/") as info:
        list_images(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DmadError, match="nowhere: folder not found"):
        list_images(tmp_path / "nowhere")
    with pytest.raises(DmadError, match="nowhere: folder not found"):
        FolderDataset(tmp_path / "nowhere", 32)
    with pytest.raises(DmadError, match="nowhere: folder not found"):
        open_dataset(tmp_path / "nowhere", "cyclegan", "train", CFG)


def test_missing_split_folder(tmp_path: Path) -> None:
    root = _unaligned(tmp_path / "x")
    shutil.rmtree(root / "trainB")
    with pytest.raises(DmadError) as info:
        UnalignedDataset(root, "train", CFG)
    msg = str(info.value)
    assert str(root / "trainB") + ": folder not found" in msg
    assert "trainA/ trainB/ testA/ testB/" in msg
    assert len(UnalignedDataset(root, "test", CFG)) == 2  # the test split is still fine
    (root / "train").mkdir()
    with pytest.raises(DmadError, match=r"x/val: folder not found"):
        AlignedDataset(root, "val", CFG)


def test_aligned_odd_width_and_small_halves(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    folder.mkdir()
    _noise(80, 40).save(folder / "good.png")
    _noise(81, 40).save(folder / "odd.png")
    with pytest.raises(DmadError, match=r"odd\.png: aligned image width 81 is odd"):
        AlignedDataset(tmp_path, "train", CFG)
    (folder / "odd.png").unlink()
    _noise(40, 40).save(folder / "narrow.png")
    with pytest.raises(DmadError, match=r"narrow\.png: .*halves 20x40, smaller than the crop"):
        AlignedDataset(tmp_path, "train", CFG)


def test_wrong_layout_is_explained(tmp_path: Path, default_root: Path) -> None:
    unaligned = default_root / "unaligned"
    with pytest.raises(DmadError) as info:
        open_dataset(unaligned, "pix2pix", "train", CFG)
    msg = str(info.value)
    assert str(unaligned) in msg and "expected train/ val/" in msg
    assert "found testA/, testB/, trainA/, trainB/" in msg
    aligned = default_root / "aligned"
    with pytest.raises(DmadError) as info:
        open_dataset(aligned, "cyclegan", "train", CFG)
    msg = str(info.value)
    assert "expected trainA/ trainB/ testA/ testB/" in msg and "found train/, val/" in msg
    with pytest.raises(DmadError, match="found no subfolders"):
        open_dataset(tmp_path, "cyclegan", "train", CFG)
