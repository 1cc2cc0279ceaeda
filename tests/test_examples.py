"""The examples run as a user runs them: ``python examples/compress_in_python.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_compress_in_python_runs_through_the_api(tmp_path: Path) -> None:
    out = tmp_path / "api"
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "compress_in_python.py"),
                        "--out", str(out)], capture_output=True, text=True, timeout=900,
                       cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "student:" in r.stdout and "median ms:" in r.stdout
    done = json.loads((out / "run" / "DONE.json").read_text())
    assert done["eval"]["images"] > 0
    for name in ("full", "student"):
        rep = json.loads((out / "export" / name / "parity.json").read_text())
        assert rep["artifacts"]["int8"]["parity"]["per_image"]
    bench = json.loads((out / "bench" / "results.json").read_text())
    assert {Path(x["model"]).parent.name for x in bench["results"]} == {"full", "student"}
