"""Write the app's bundled sample image: a "day" scene of dmad's embedded default dataset.

The demo generator is trained on that dataset (day -> night), so this sample shows what it does
without a gallery image. Usage (from the repository root):

    .venv/bin/python android_demo/tools/make_sample.py [OUT.png] [--size N]

Default output: android_demo/app/src/main/assets/samples/day_scene.png (committed; < 50 KB).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "android_demo/app/src/main/assets/samples/day_scene.png"
SIZE = 256
SEED = 0
INDEX = 0  # which test image of domain A


def make_sample(out: Path, size: int = SIZE) -> Path:
    """Render the sample PNG at ``size`` x ``size`` into ``out`` and return ``out``."""
    sys.path.insert(0, str(ROOT))
    from compress.data import make_default_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = make_default_dataset(Path(tmp), size=size, n_train=1, n_test=INDEX + 1, seed=SEED)
        src = sorted((root / "unaligned" / "testA").iterdir())[INDEX]
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--size", type=int, default=SIZE)
    args = parser.parse_args(argv)
    path = make_sample(args.out, args.size)
    print(f"{path}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
