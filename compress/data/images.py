"""Finding, opening and validating training images.

Every image dmad reads goes through :func:`load_rgb`, so a corrupt file, a grayscale or RGBA
picture or a thumbnail smaller than the network input fails the same way everywhere: one
:class:`~compress.errors.DmadError` line naming the file, never a PIL traceback. Datasets call
:func:`scan` on all their files when they are built, so a bad file stops a run before training
starts instead of at step 5000.

Palette images: a ``P`` (indexed colour) PNG without transparency holds exactly RGB colours, so
it is converted to RGB losslessly and accepted (tools such as pngquant and some scrapers write
them for ordinary photos). A palette image with transparency is refused like RGBA, because what
the transparent pixels should become is not ours to guess.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from dmad.compress.errors import DmadError

#: File name endings that count as images (compared lower-cased, so ``.PNG`` is an image too).
_EXT_ORDER = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IMG_EXTENSIONS: frozenset[str] = frozenset(_EXT_ORDER)

_EXT_HINT = "/".join(_EXT_ORDER)

# A truncated image must be an error, not an image with a grey bottom half that the generator
# then learns from. PIL's default is already False; it is a process-wide switch that any library
# may flip, so load_rgb sets it again before every decode.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Everything PIL (and the codecs under it) raise for a file it cannot decode.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
)


class BadImageError(DmadError):
    """A DmadError about one image file; keeps ``path`` and ``reason`` apart for skip reports."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = " ".join(reason.split())


def is_image_file(path: Path) -> bool:
    """True for a visible file with an image extension.

    Dot files are skipped: macOS ``._name.png`` resource forks and our own ``.name.tmp`` partial
    writes carry image-like names but are not images.
    """
    return (
        path.suffix.lower() in IMG_EXTENSIONS and not path.name.startswith(".") and path.is_file()
    )


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (not recursive), sorted by name for a stable order.

    Sorting makes index ``i`` mean the same file on every machine, which resumable training and
    reproducible batches rely on.
    """
    folder = Path(folder)
    if not folder.is_dir():
        if folder.exists():
            raise DmadError(f"{folder}: is a file, expected a folder of images")
        raise DmadError(f"{folder}: folder not found")
    try:
        paths = sorted(p for p in folder.iterdir() if is_image_file(p))
    except OSError as exc:
        raise DmadError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None
    if not paths:
        raise DmadError(f"{folder}: no images ({_EXT_HINT}) in folder")
    return paths


def _reason(exc: BaseException) -> str:
    """A short one-line reason from a decoder exception."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_rgb(path: Path, *, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Open ``path``, decode it completely and return it as an RGB image.

    The full decode (``img.load()``) is what detects a truncated file; ``Image.open`` alone only
    reads the header. ``min_size=(w, h)`` refuses images smaller than the network crop: the
    original recipe would silently upscale them, and a folder of thumbnails is nearly always the
    wrong folder. Raises :class:`BadImageError` (a DmadError) naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise BadImageError(path, "file not found")
    if path.is_dir():
        raise BadImageError(path, "is a folder, expected an image file")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        if path.stat().st_size == 0:
            raise BadImageError(path, "unreadable or truncated image (file is empty, 0 bytes)")
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode == "P":
                has_alpha = "transparency" in img.info or (
                    img.palette is not None and img.palette.mode != "RGB"
                )
                if has_alpha:
                    raise BadImageError(
                        path, "image mode P with transparency, expected RGB (3 channels)"
                    )
                out = img.convert("RGB")
            elif mode == "RGB":
                out = img.copy()
            else:
                raise BadImageError(path, f"image mode {mode}, expected RGB (3 channels)")
    except BadImageError:
        raise
    except _DECODE_ERRORS as exc:
        raise BadImageError(path, f"unreadable or truncated image ({_reason(exc)})") from None
    if min_size is not None:
        w, h = out.size
        mw, mh = min_size
        if w < mw or h < mh:
            raise BadImageError(path, f"image {w}x{h} is smaller than the crop {mw}x{mh}")
    return out


#: A check run on every image during :func:`scan` (it sees the decoded size, ``img.size``);
#: raises BadImageError to reject it.
ImageCheck = Callable[[Path, Image.Image], None]


class _Sized:
    """What a check sees of a (possibly cached) image: its decoded size."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size


def cache_dir() -> Path:
    """Where validation results are cached: ``$DMAD_CACHE``, else ``~/.cache/dmad``."""
    env = os.environ.get("DMAD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dmad"


def _probe(path: Path) -> tuple[int, int] | str:
    """Decoded size of a valid RGB image, or the reason it is refused."""
    try:
        return load_rgb(path).size
    except BadImageError as exc:
        return exc.reason


def _probe_all(paths: list[Path]) -> list[tuple[int, int] | str]:
    """:func:`_probe` of every file, from the cache where a file's size and mtime match.

    A 50k-image folder costs one full decode per file the first time (on every core: PIL
    decodes outside the GIL), and a ``stat`` per file after that. The cache holds one JSON file
    per folder (the files' common folder), keyed by its absolute path; a file whose size or
    mtime changed is decoded again. It is an
    optimisation only: an unreadable or unwritable cache is ignored, and under torchrun only
    rank 0 writes it."""
    if not paths:
        return []
    absolute = [str(p.absolute()) for p in paths]
    folder = Path(os.path.commonpath([os.path.dirname(a) for a in absolute]))
    cfile = cache_dir() / "scan" / (hashlib.sha1(str(folder).encode()).hexdigest()[:20] + ".json")
    try:
        cached = json.loads(cfile.read_text())
        if cached.get("folder") != str(folder) or cached.get("version") != _CACHE_VERSION:
            cached = {}
    except (OSError, ValueError):
        cached = {}
    entries: dict[str, list] = cached.get("files", {}) if cached else {}
    out: list[tuple[int, int] | str | None] = []
    todo: list[int] = []
    stats: list[tuple[int, int] | None] = []
    for i, p in enumerate(paths):
        try:
            st = p.stat()
            key = (st.st_size, st.st_mtime_ns)
        except OSError:
            key = None
        stats.append(key)
        e = entries.get(absolute[i])
        if key is not None and e is not None and (e[0], e[1]) == key:
            out.append(tuple(e[2]) if isinstance(e[2], list) else e[2])  # type: ignore[arg-type]
        else:
            out.append(None)
            todo.append(i)
    if todo:
        workers = min(16, os.cpu_count() or 1, len(todo))
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                found = list(pool.map(_probe, [paths[i] for i in todo]))
        else:
            found = [_probe(paths[i]) for i in todo]
        for i, r in zip(todo, found, strict=True):
            out[i] = r
        _save_cache(cfile, folder, absolute, stats, out)
    return out  # type: ignore[return-value]


_CACHE_VERSION = 1


def _save_cache(cfile: Path, folder: Path, paths: list[str], stats: list, results: list) -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    files = {p: [k[0], k[1], list(r) if isinstance(r, tuple) else r]
             for p, k, r in zip(paths, stats, results, strict=True)
             if k is not None and r is not None and not (isinstance(r, str) and
                                                          r == "file not found")}
    try:
        cfile.parent.mkdir(parents=True, exist_ok=True)
        tmp = cfile.with_name(f".{cfile.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": _CACHE_VERSION, "folder": str(folder),
                                   "files": files}))
        os.replace(tmp, cfile)
    except OSError:
        pass


def scan(
    paths: Iterable[Path],
    *,
    min_size: tuple[int, int] | None = None,
    skip_bad: bool = False,
    check: ImageCheck | None = None,
    folder: Path | None = None,
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Decode every file once, up front (or read the cached result of an unchanged file,
    :func:`_probe_all`), and return ``(good, bad)``.

    Validating at dataset construction costs one decode per file but turns a crash hours into a
    run into an error before the first step. Without ``skip_bad`` the first bad file raises its
    DmadError. With ``skip_bad`` bad files are dropped and reported in one warning line on
    stderr (``bad`` holds ``(path, reason)`` for each); if none is usable a DmadError is raised.
    ``check`` adds a layout-specific test (e.g. the A|B halves of an aligned image); ``folder``
    only names the folder in messages (default: the first file's folder).
    """
    paths = [Path(p) for p in paths]
    where = Path(folder) if folder is not None else (paths[0].parent if paths else Path("."))
    good: list[Path] = []
    bad: list[tuple[Path, str]] = []
    for p, probe in zip(paths, _probe_all(paths), strict=True):
        try:
            if isinstance(probe, str):
                raise BadImageError(p, probe)
            w, h = probe
            if min_size is not None and (w < min_size[0] or h < min_size[1]):
                raise BadImageError(
                    p, f"image {w}x{h} is smaller than the crop {min_size[0]}x{min_size[1]}")
            if check is not None:
                check(p, _Sized((w, h)))  # type: ignore[arg-type]
        except BadImageError as exc:
            if not skip_bad:
                raise
            bad.append((p, exc.reason))
            continue
        good.append(p)
    if bad:
        first, reason = bad[0]
        print(
            f"warning: skipped {len(bad)} unreadable/invalid image(s) in {where} "
            f"(first: {first}: {reason})",
            file=sys.stderr,
        )
    if not good:
        if bad:
            first, reason = bad[0]
            raise DmadError(
                f"{where}: no usable images, all {len(bad)} were skipped (first: {first}: {reason})"
            )
        raise DmadError(f"{where}: no images ({_EXT_HINT}) in folder")
    return good, bad
