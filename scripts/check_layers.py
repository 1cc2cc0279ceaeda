"""Check the layer contract (``[tool.importlinter]`` in pyproject.toml) with import-linter.

``python scripts/check_layers.py`` — run by ``make lint`` and ``make test``; exit 0 when the
layers only point down (application → benchmark → export → compress), 1 otherwise.

Why a staging copy: the wheel maps the repository's folders onto one namespace
(``compress/`` → ``dmad.compress`` …) with setuptools ``package-dir``, but import-linter's graph
builder (grimp) walks a package's own directory tree, where ``dmad/`` has no ``compress/``
subfolder. So the Python files are copied into a temporary tree laid out exactly as the wheel
installs them, and the contract is checked there, on the same source the wheel would ship.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """The ``package-dir`` mapping of pyproject.toml: import name → source folder."""
    cfg = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    mapping = cfg["tool"]["setuptools"]["package-dir"]
    return {name: root / folder for name, folder in mapping.items()}


def stage(dst: Path, root: Path = ROOT) -> Path:
    """Copy every package's ``.py`` files into ``dst`` in the installed layout; returns ``dst``."""
    for name, src in package_dirs(root).items():
        target = dst.joinpath(*name.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for path in src.rglob("*.py"):
            rel = path.relative_to(src)
            if any(part == "__pycache__" for part in rel.parts):
                continue
            # subfolders of a mapped folder that are themselves mapped packages are copied once
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
    shutil.copyfile(root / "pyproject.toml", dst / "pyproject.toml")
    return dst


def check(staged: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports on a staged tree (its own copy of the contract); output captured."""
    env = dict(os.environ, PYTHONPATH=os.fspath(staged))
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [os.fspath(exe)] if exe.exists() else [sys.executable, "-m", "importlinter.cli"]
    return subprocess.run([*cmd, "--config", os.fspath(staged / "pyproject.toml"), "--no-cache"],
                          cwd=staged, env=env, capture_output=True, text=True, check=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this one)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dmad-layers-") as tmp:
        res = check(stage(Path(tmp), args.root))
    out = res.stdout + res.stderr
    kept = [ln for ln in out.splitlines() if "KEPT" in ln or "BROKEN" in ln or "->" in ln
            or "Contracts:" in ln or "error" in ln.lower()]
    print("\n".join(kept) if kept else out)
    print("layers: " + ("contract kept" if res.returncode == 0 else "contract BROKEN"))
    return 0 if res.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
