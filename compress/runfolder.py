"""Output-folder safety: one writer per output, inputs never under ``--out``, writable checks.

A user's files are sacred. Three rules hold for every command that writes:

* **one writer**: :func:`run_lock` holds an exclusive lock on an output (a folder or a file) for
  the command's life. The lock is a ``flock`` on ``.NAME.dmad-lock`` beside the output, so the
  kernel releases it when its process dies however it dies; a second writer gets one line
  naming the holder (pid, host, command, start time) instead of silently racing the first.
* **no output over an input**: :func:`refuse_out_over_inputs` refuses an ``--out`` that is, is
  inside or contains one of the command's inputs, so ``--force`` can never delete what the
  command reads.
* **no late surprise**: :func:`check_writable` proves an output folder can take a file before a
  long measurement starts, and :func:`keep_results` writes results somewhere when the folder
  refuses them at the end, printing where.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dmad.compress.errors import DmadError

LOCK_SUFFIX = ".dmad-lock"

#: Locks this process holds: lock path → [fd, depth]. Re-entrant, because one command's verb
#: calls others that lock their own outputs (``dmad compress`` runs search, fine-tune, export).
_HELD: dict[str, list[int]] = {}


def _close_in_child() -> None:
    """A forked child (a DataLoader worker) must not keep its parent's locks alive: after a
    ``kill -9`` of the parent, a worker still holding the fd would lock out ``--resume``."""
    for fd, _depth in list(_HELD.values()):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def lock_path(out: str | os.PathLike[str]) -> Path:
    """The lock file of ``out``: ``.NAME.dmad-lock`` beside it (works for files and folders,
    and is never moved or deleted by a command that replaces the output as a whole). Named
    after the real path, so two spellings of one folder (a symlink, ``..``) share one lock."""
    p = Path(os.path.abspath(out))
    p = Path(os.path.realpath(p)) if p.exists() else Path(os.path.realpath(p.parent)) / p.name
    return p.parent / f".{p.name}{LOCK_SUFFIX}"


def _inside_lock_path(out: str | os.PathLike[str]) -> Path:
    """Where the lock goes when the folder beside ``out`` is read-only: inside ``out``."""
    return Path(os.path.realpath(out)) / LOCK_SUFFIX


def is_lock_file(path: Path) -> bool:
    """A lock file (a killed run's may stay behind: it is never the user's content)."""
    return path.name.endswith(LOCK_SUFFIX)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return (f"pid {info['pid']} on {info['host']} since {info['started']}: "
                f"{info.get('command', '?')}")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(path: Path) -> bool:
    """A lock file whose recorded holder, a process of this host, is dead (used only where the
    file system has no flock). An unreadable or half-written record is not stale: the holder
    may be writing it now."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return info["host"] == socket.gethostname() and not _pid_alive(int(info["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def _busy(path: Path, out: Path) -> DmadError:
    why = _holder(path)
    try:
        if not _pid_alive(int(json.loads(path.read_text(encoding="utf-8"))["pid"])):
            why += "; that process is gone, a child it left still holds the lock"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return DmadError(f"{out}: in use by another dmad run ({why}); wait for it to finish or "
                     f"give another --out")


def _open_locked(path: Path, out: Path, wait: bool = False) -> int:
    """An fd of ``path`` holding its exclusive flock (the file re-checked to be the one on disk,
    so a holder unlinking it at release never lets two processes hold two inodes). The kernel
    alone says whether the lock is held: a record naming a dead pid is never overridden."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _busy(path, out) from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                return _open_exclusive(path, out)
            raise
        if _same_file(fd, path):
            return fd
        os.close(fd)


def _open_exclusive(path: Path, out: Path) -> int:
    """Fallback where the file system has no flock: O_EXCL creation, a dead holder's file of
    this host removed first."""
    for _ in range(2):
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if not _stale(path):
                raise _busy(path, out) from None
            path.unlink(missing_ok=True)
    raise DmadError(f"{out}: cannot take the run lock {path}")


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, deepest first."""
    made = []
    p = folder
    while not p.exists():
        made.append(p)
        p = p.parent
    for d in reversed(made):
        d.mkdir()
    return made


def _acquire(out: Path, wait: bool) -> tuple[Path, int, list[Path]]:
    """(lock file, its locked fd, folders created for it). Beside ``out``; inside an existing
    ``out`` folder when the folder beside it takes no file (a read-only parent)."""
    path = lock_path(out)
    made: list[Path] = []
    try:
        made = _make_parents(path.parent)
        return path, _open_locked(path, out, wait), made
    except (PermissionError, OSError) as exc:
        for d in made:
            with contextlib.suppress(OSError):
                d.rmdir()
        if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) \
                and out.is_dir():
            inside = _inside_lock_path(out)
            try:
                return inside, _open_locked(inside, out, wait), []
            except OSError:
                pass
        blocker = next((p for p in Path(os.path.abspath(out)).parents
                        if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker else (exc.strerror or exc)
        raise DmadError(f"{out}: cannot write here ({why})") from None


@contextlib.contextmanager
def run_lock(out: str | os.PathLike[str], command: str | None = None, *,
             wait: bool = False) -> Iterator[Path]:
    """Hold the exclusive lock of output ``out`` for the ``with`` block (re-entrant). A held
    lock is refused in one line, or with ``wait`` waited for (a shared dataset that another
    run is generating). Folders created only to hold the lock are removed again if they are
    still empty at the end, so a refused command leaves nothing behind."""
    key = str(lock_path(out))
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield Path(key)
        finally:
            _HELD[key][1] -= 1
        return
    path, fd, made = _acquire(Path(out), wait)
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "command": command or " ".join(["dmad", *sys.argv[1:]])[:300]}
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    _HELD[key] = [fd, 1]
    try:
        yield path
    finally:
        del _HELD[key]
        if _same_file(fd, path):  # never another holder's file
            with contextlib.suppress(OSError):
                path.unlink()
        os.close(fd)
        for d in made:
            with contextlib.suppress(OSError):
                d.rmdir()  # only while empty: a folder the command filled stays


def holds_user_files(folder: Path) -> bool:
    """``folder`` holds something besides lock files of dmad runs (a killed run's lock stays)."""
    return folder.is_dir() and any(not is_lock_file(p) for p in folder.iterdir())


def _resolved(p: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(p))))


def refuse_out_over_inputs(out: str | os.PathLike[str] | None,
                           inputs: Mapping[str, Any], *, contains: bool = True) -> None:
    """Refuse an ``--out`` equal to, inside, or (``contains``) holding an input path.

    ``inputs`` maps the option's name to a path (``None``/``""`` and paths that do not exist
    are ignored). ``contains=False`` suits commands that write only their own named files
    (``eval.json``, ``results.json``): their ``--out`` may sit beside, inside or around the
    inputs, since nothing there is ever deleted; only an ``--out`` that *is* an input is
    refused."""
    if out is None or str(out) == "":
        return
    o = _resolved(out)
    for flag, value in inputs.items():
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if item is None or str(item) == "" or not Path(str(item)).exists():
                continue
            q = _resolved(item)
            if o == q:
                raise DmadError(f"--out {out}: is the input {flag} {item}; writing there would "
                                "destroy it, give another --out")
            if not contains:
                continue
            if q.is_dir() and q in o.parents:
                raise DmadError(f"--out {out}: is inside the input {flag} {item}; give an "
                                "--out outside it")
            if o in q.parents:
                raise DmadError(f"--out {out}: contains the input {flag} {item}; --force "
                                "could delete it, give another --out")


def check_writable(folder: str | os.PathLike[str]) -> None:
    """Prove ``folder`` takes a file before a long job fills it: an existing folder is probed
    with a real file; a missing one needs its nearest existing parent to be a writable folder
    (nothing is created, so a command refused later leaves no empty folder behind)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DmadError(f"{folder}: exists and is a file, expected an output folder")
    if not folder.exists():
        parent = next((p for p in Path(os.path.abspath(folder)).parents if p.exists()), None)
        if parent is None or not parent.is_dir():
            raise DmadError(f"{folder}: cannot be created ({parent} is not a folder)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise DmadError(f"{folder}: cannot be created ({parent} is not writable)")
        return
    try:
        fd, probe = tempfile.mkstemp(prefix=".dmad-write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DmadError(f"{folder}: cannot write here ({exc.strerror or exc})") from None


def refuse_overwrite(paths: list[Path], force: bool, what: str = "results") -> None:
    """Files a command would replace: refused unless ``--force``."""
    if force:
        return
    found = [p for p in paths if p.exists()]
    if found:
        raise DmadError(f"{found[0]}: earlier {what} are there; use --force to replace them or "
                        "give another --out")


def keep_results(text: str, name: str, exc: BaseException) -> DmadError:
    """Results the output folder refused: saved in the temporary folder, or printed on stdout
    when no file can take them (a file-size limit, a full disk), and the error says where."""
    why = getattr(exc, "strerror", None) or str(exc)
    path = None
    try:
        fd, path = tempfile.mkstemp(prefix=f"dmad-{Path(name).stem}-", suffix=Path(name).suffix)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError:
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return DmadError(f"{name}: cannot be written ({why}); no file could take the results, "
                         "they are printed on stdout above")
    return DmadError(f"{name}: cannot be written ({why}); the results are kept in {path}")


__all__ = ["LOCK_SUFFIX", "check_writable", "holds_user_files", "is_lock_file", "keep_results",
           "lock_path", "refuse_out_over_inputs", "refuse_overwrite", "run_lock"]


@contextlib.contextmanager
def staged_output(out: Path, force: bool, marker: str, what: str) -> Iterator[Path]:
    """A scratch folder beside ``out`` that becomes ``out`` only when the block finishes, so a
    killed or failed command leaves the old ``out`` (or none) and never half of one.

    ``out`` must be new, empty, or an earlier output of this command (it holds ``marker``),
    which ``force`` replaces; a folder of the user's is never replaced. Scratch folders of an
    earlier killed run are removed first: the caller holds ``out``'s lock, so no live command
    owns them."""
    if out.exists() and not out.is_dir():
        raise DmadError(f"{out}: exists and is a file, expected an output folder")
    if holds_user_files(out):
        if not (out / marker).is_file():
            raise DmadError(f"{out}: is not empty and holds no dmad {what}; give a new or empty "
                            "--out (--force replaces only an earlier one)")
        if not force:
            raise DmadError(f"{out}: holds an earlier dmad {what}; --force replaces it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for stale in out.parent.glob(f".{out.name}.dmad-*-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out.parent / f".{out.name}.dmad-tmp-{os.getpid()}"
        tmp.mkdir()
    except OSError as exc:
        raise DmadError(f"{out}: cannot create ({exc.strerror or exc})") from None
    try:
        yield tmp
        old = out.parent / f".{out.name}.dmad-old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
