"""Student int8 vs fp32, judged against the teacher (prints numbers; not a test).

``python scripts/int8_vs_teacher.py --teacher G.pt --export EXPORT_DIR --split split.json``

The question a user asks of an int8 student is not how close it is to its own fp32 file but how
much of the student's fidelity to the teacher it keeps: PSNR vs the teacher (PyTorch fp32) of
the student's PyTorch model and of each of its exported .tflite files, on every whole held-out
image of the split at the export size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dmad.compress.checkpoint import load_model
from dmad.export.api import _nhwc, _split_images, _torch_out
from dmad.export.parity import psnr, run_tflite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", type=Path, required=True, help="the teacher's dmad model file")
    ap.add_argument("--export", type=Path, required=True,
                    help="the student's dmad export folder (parity.json, *.tflite)")
    ap.add_argument("--split", type=Path, required=True, help="split.json (held-out images)")
    ap.add_argument("--num", type=int, default=100, help="held-out images at most")
    args = ap.parse_args()
    rep = json.loads((args.export / "parity.json").read_text())
    size = int(rep["size"])
    _, ev, note = _split_images(args.split, None, size, 1, args.num)
    teacher, _ = load_model(args.teacher)
    ref = _nhwc(_torch_out(teacher.eval(), ev))
    student, _ = load_model(Path(rep["source"]["file"]))
    rows = {"student (PyTorch fp32)": _nhwc(_torch_out(student.eval(), ev))}
    for v, a in rep["artifacts"].items():
        f = args.export / a["file"]
        if f.suffix == ".tflite" and f.is_file():
            rows[f"student {v} (.tflite)"] = run_tflite(f, _nhwc(ev))
    print(f"{len(ev)} whole held-out images at {size}² ({note})")
    base = psnr(ref, rows["student (PyTorch fp32)"])
    for k, y in rows.items():
        p = psnr(ref, y)
        print(f"{k:28} PSNR vs teacher {p:6.2f} dB  ({p - base:+.2f} dB vs PyTorch fp32)")


if __name__ == "__main__":
    main()
