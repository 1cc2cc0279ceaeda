"""The embedded default dataset: "day" -> "night" scenes of simple shapes, made in seconds.

dmad must run end to end with no download, so a small dataset is generated from a seed with
numpy and PIL only. Each scene is 2-4 circles, rectangles and triangles. Domain A ("day")
renders them as warm filled shapes (red, orange, yellow) on a light sky-blue gradient; domain B
("night") renders the same kind of geometry as cool glowing shapes (cyan, azure, aquamarine,
each the fixed counterpart of one warm colour, with a soft halo) on a dark navy gradient. The
mapping is a mostly per-pixel recolouring plus a local glow, which a tiny generator learns in a
few hundred steps, and a wrong result is obvious at a glance.

Layouts written under ``root``:

* ``unaligned/{trainA,trainB,testA,testB}``: A and B from *different* random scenes (CycleGAN);
* ``aligned/{train,val}``: ``2*size`` x ``size`` images, the day rendering of a scene on the
  left and the night rendering of the *same* scene on the right (Pix2Pix, AtoB = day -> night).

Files are PNG (lossless, so the same seed gives byte-identical files). Each image is seeded by
``(seed, split, index)``, so it does not depend on generation order. Generation writes into a
hidden temporary folder that is renamed into place, and ``DONE.json`` (the parameters) is
written last: a killed run leaves no marker and is redone on the next call; a call with the
parameters of the marker returns at once.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dmad.compress.errors import DmadError
from dmad.compress.io import atomic_write_json
from dmad.compress.runfolder import is_lock_file, run_lock

#: The dataset's marker: its parameters, written last. Its name is dmad-data.json (DONE.json in
#: datasets made before; still recognised) so a dataset never shares a marker with a run folder.
MARKER = "dmad-data.json"
OLD_MARKER = "DONE.json"
_VERSION = "dmad-default-shapes-v1"
_SS = 4  # supersampling factor for anti-aliased edges

# Warm day colours and their fixed night counterparts (glow colour, bright core colour).
_DAY = np.array([[222, 60, 42], [244, 140, 32], [246, 210, 52]], dtype=np.float32)
_NIGHT_GLOW = np.array([[40, 220, 240], [70, 150, 255], [90, 250, 190]], dtype=np.float32)
_NIGHT_CORE = np.array([[170, 250, 255], [180, 215, 255], [190, 255, 230]], dtype=np.float32)
_SKY = (np.array([140, 195, 240], np.float32), np.array([205, 232, 250], np.float32))
_NAVY = (np.array([8, 12, 40], np.float32), np.array([22, 34, 78], np.float32))

# Split ids feed the per-image seed; they must never change (they define the data).
_SPLITS = {"trainA": 1, "trainB": 2, "testA": 3, "testB": 4, "train": 5, "val": 6}

Scene = list[tuple[str, int, list[tuple[float, float]]]]


def _scene(rng: np.random.Generator, size: int) -> Scene:
    """Random shapes as (kind, colour index, points in pixel units of the output size)."""
    shapes: Scene = []
    for _ in range(int(rng.integers(2, 5))):
        kind = ("circle", "rect", "triangle")[int(rng.integers(0, 3))]
        colour = int(rng.integers(0, 3))
        cx, cy = rng.uniform(0.15, 0.85, size=2) * size
        r = float(rng.uniform(0.09, 0.2)) * size
        if kind == "circle":
            pts = [(cx - r, cy - r), (cx + r, cy + r)]
        elif kind == "rect":
            w, h = r * rng.uniform(0.6, 1.3, size=2)
            pts = [(cx - w, cy - h), (cx + w, cy + h)]
        else:
            a0 = float(rng.uniform(0, 2 * np.pi))
            angles = a0 + np.arange(3) * (2 * np.pi / 3) + rng.uniform(-0.3, 0.3, size=3)
            pts = [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles]
        shapes.append((kind, colour, [(float(x), float(y)) for x, y in pts]))
    return shapes


def _masks(scene: Scene, size: int) -> list[np.ndarray]:
    """Anti-aliased coverage (H x W x 1 in [0, 1]) of each shape, drawn at 4x and box-reduced."""
    out = []
    for kind, _, pts in scene:
        canvas = Image.new("L", (size * _SS, size * _SS), 0)
        draw = ImageDraw.Draw(canvas)
        big = [(x * _SS, y * _SS) for x, y in pts]
        if kind == "circle":
            draw.ellipse(big, fill=255)
        elif kind == "rect":
            draw.rectangle(big, fill=255)
        else:
            draw.polygon(big, fill=255)
        small = canvas.reduce(_SS)
        out.append(np.asarray(small, dtype=np.float32)[..., None] / 255.0)
    return out


def _gradient(size: int, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    return np.broadcast_to(top * (1 - t) + bottom * t, (size, size, 3)).copy()


def _day(scene: Scene, masks: list[np.ndarray], size: int) -> np.ndarray:
    img = _gradient(size, *_SKY)
    for (_, colour, _), a in zip(scene, masks, strict=True):
        img = img * (1 - a) + _DAY[colour] * a
    return img


def _night(scene: Scene, masks: list[np.ndarray], size: int) -> np.ndarray:
    img = _gradient(size, *_NAVY)
    radius = max(1.0, size / 16)
    for (_, colour, _), a in zip(scene, masks, strict=True):
        halo = Image.fromarray(np.round(a[..., 0] * 255).astype(np.uint8))
        halo_a = np.asarray(halo.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255.0
        img = img + _NIGHT_GLOW[colour] * (0.9 * halo_a[..., None])
    img = np.minimum(img, 255.0)
    for (_, colour, _), a in zip(scene, masks, strict=True):
        img = img * (1 - a) + _NIGHT_CORE[colour] * a
    return img


def _png(arr: np.ndarray) -> bytes:
    img = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLITS[split], index])


def _expected(n_train: int, n_test: int) -> dict[str, int]:
    return {
        "unaligned/trainA": n_train,
        "unaligned/trainB": n_train,
        "unaligned/testA": n_test,
        "unaligned/testB": n_test,
        "aligned/train": n_train,
        "aligned/val": n_test,
    }


def _is_complete(root: Path, params: dict, marker: str = MARKER) -> bool:
    """True when the marker holds ``params`` and every folder has its file count."""
    try:
        if json.loads((root / marker).read_text(encoding="utf-8")) != params:
            return False
        for sub, n in _expected(params["n_train"], params["n_test"]).items():
            if sum(1 for p in (root / sub).iterdir() if p.suffix == ".png") != n:
                return False
    except (OSError, ValueError):
        return False
    return True


def _generate(tmp: Path, size: int, n_train: int, n_test: int, seed: int) -> None:
    for sub, n in _expected(n_train, n_test).items():
        layout, split = sub.split("/")
        folder = tmp / sub
        folder.mkdir(parents=True)
        for i in range(n):
            scene = _scene(_rng(seed, split, i), size)
            masks = _masks(scene, size)
            if layout == "aligned":
                arr = np.concatenate([_day(scene, masks, size), _night(scene, masks, size)], 1)
            elif split.endswith("A"):
                arr = _day(scene, masks, size)
            else:
                arr = _night(scene, masks, size)
            with open(folder / f"{i:04d}.png", "wb") as fh:
                fh.write(_png(arr))
                fh.flush()
                os.fsync(fh.fileno())  # durable before the marker says "complete"


def _owned(root: Path) -> dict | None:
    """The parameters of a dataset ``dmad data`` wrote in ``root`` (None: not one of ours)."""
    for name in (MARKER, OLD_MARKER):
        try:
            got = json.loads((root / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(got, dict) and got.get("generator") == _VERSION:
            return got
    return None


def _claim(root: Path, params: dict, force: bool) -> None:
    """Refuse to write into a folder dmad did not make, or over another dataset without force.

    Only an empty (or new) folder, or one holding a dataset of ours, is written; ``--force``
    lets a dataset of ours with other parameters be replaced, never a folder of the user's."""
    if root.exists() and not root.is_dir():
        raise DmadError(f"{root}: exists and is a file, expected a dataset folder")
    if not root.is_dir() or not any(p for p in root.iterdir() if not p.name.startswith(
            ".default-gen-") and not is_lock_file(p)):
        return
    got = _owned(root)
    if got is None:
        raise DmadError(f"{root}: is not empty and holds no dataset made by `dmad data`; give "
                        "an empty or new --out (nothing there was changed)")
    if {k: v for k, v in got.items() if k != "complete"} != params and not force:
        raise DmadError(f"{root}: holds a default dataset made with other settings "
                        f"({got.get('size')}px, {got.get('n_train')} training images, seed "
                        f"{got.get('seed')}); "
                        "use --force to replace it or give another --out")


def make_default_dataset(
    root: Path, *, size: int = 64, n_train: int = 200, n_test: int = 24, seed: int = 0,
    force: bool = False,
) -> Path:
    """Write (or reuse) the default dataset under ``root`` and return ``root``.

    Idempotent: if the marker records the same parameters and the files are all there, nothing
    is written. A folder is written only when it is new, empty or a dataset of ours (other
    parameters: only with ``force``); then ``unaligned/`` and ``aligned/`` are regenerated."""
    root = Path(root)
    for name, value, low in (("size", size, 16), ("n_train", n_train, 1), ("n_test", n_test, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DmadError(f"{name}: must be an integer >= {low}, got {value!r}")
    if n_train > 100_000 or n_test > 100_000:
        raise DmadError("n_train/n_test: at most 100000 images per side, got "
                        f"{max(n_train, n_test)}")
    from dmad.compress.limits import check_side

    check_side("size", size)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DmadError(f"seed: must be an integer >= 0, got {seed!r}")
    params = {
        "generator": _VERSION,
        "size": size,
        "n_train": n_train,
        "n_test": n_test,
        "seed": seed,
    }
    # two runs generating into one folder would remove each other's files: the second waits
    # for the first, then finds the dataset complete
    with run_lock(root, wait=True):
        return _make(root, params, force)


def _make(root: Path, params: dict, force: bool) -> Path:
    size, n_train, n_test, seed = (params[k] for k in ("size", "n_train", "n_test", "seed"))
    for name in (MARKER, OLD_MARKER):
        if _owned(root) == params and _is_complete(root, params, name):
            return root
    _claim(root, params, force)
    try:
        root.mkdir(parents=True, exist_ok=True)
        # Marker first, so a kill from here on leaves the folder marked incomplete.
        (root / MARKER).unlink(missing_ok=True)
        if _owned(root) is not None:
            (root / OLD_MARKER).unlink(missing_ok=True)
        for stale in root.glob(".default-gen-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=".default-gen-", dir=root))
        # Marked as ours, incomplete, before anything else is written: a kill leaves a folder
        # the next run may finish, never one it would refuse as the user's.
        atomic_write_json(root / MARKER, {**params, "complete": False})
    except OSError as exc:
        why = exc.strerror or exc
        raise DmadError(f"{root}: cannot write the default dataset ({why})") from None
    try:
        _generate(tmp, size, n_train, n_test, seed)
        for layout in ("unaligned", "aligned"):
            target = root / layout
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp / layout, target)
        atomic_write_json(root / MARKER, params)
    except OSError as exc:
        why = exc.strerror or exc
        raise DmadError(f"{root}: cannot write the default dataset ({why})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
