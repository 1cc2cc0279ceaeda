"""Where an int8 .tflite loses the picture: its tensors against the fp32 file's, one photograph.

Usage::

    python scripts/int8_trace.py EXPORT_DIR PHOTO [--size 256] [--all]

``EXPORT_DIR`` is a ``dmad export`` folder holding ``generator_fp32.tflite`` and
``generator_int8.tflite`` (converted from the same graph, so their tensors share names; only
tensors with an fp32 twin are listed: where the int8 file runs its stem convolution on the
image's phases, its graph has two more nodes and the unnamed ones, the residual additions,
are numbered differently; export with ``--phases off`` to trace every tensor). Both run
on LiteRT's reference kernels with every intermediate tensor kept; for each int8 tensor (the
quantised activations) the script prints its SNR against the fp32 tensor (dB, against the fp32
tensor's variance), the SNR of the per-channel mean error alone (a colour or brightness shift),
the share of fp32 values outside the int8 range (clipping) and the two ranges. A drop in SNR
from one line to the next names the tensor whose rounding costs the most on this photograph.
This is how the re-quantised output of float layers was found (``docs/results.md``, frontier).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from dmad.export.parity import make_interpreter


def _tensors(path: Path, x: np.ndarray) -> dict[str, tuple[np.ndarray, tuple[float, float] | None]]:
    """Every 4-D tensor of ``path`` after one run on ``x``, dequantised; the int8 range too."""
    it = make_interpreter(path, None, delegate=False, keep_tensors=True)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    out = {}
    for d in it.get_tensor_details():
        try:
            t = it.get_tensor(d["index"])
        except ValueError:
            continue
        if t is None or t.ndim != 4:
            continue
        rng = None
        if d["dtype"] == np.int8:
            s, z = d["quantization"]
            if s == 0:
                continue
            rng = ((-128 - z) * s, (127 - z) * s)
            t = (t.astype(np.float32) - z) * s
        out[d["name"]] = (t.astype(np.float32), rng)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export", type=Path, help="a dmad export folder (fp32 and int8 .tflite)")
    ap.add_argument("photo", type=Path, help="one photograph")
    ap.add_argument("--size", type=int, default=256, help="side the files were exported at")
    ap.add_argument("--all", action="store_true",
                    help="also the padding's slices and concatenations")
    args = ap.parse_args()
    im = Image.open(args.photo).convert("RGB").resize((args.size, args.size), Image.BICUBIC)
    x = (np.asarray(im, np.float32) / 127.5 - 1.0)[None]
    ref = _tensors(args.export / "generator_fp32.tflite", x)
    q = _tensors(args.export / "generator_int8.tflite", x)
    print(f"{'SNR dB':>7} {'mean-shift SNR':>14} {'clipped %':>9}  int8 range / fp32 range  tensor")
    for name, (t, rng) in q.items():
        if rng is None or name not in ref or ref[name][0].shape != t.shape:
            continue
        if not args.all and ("StridedSlice" in name or name.startswith("concat")):
            continue
        a = ref[name][0]
        err = t - a
        var = max(float(a.var()), 1e-30)
        snr = 10 * np.log10(var / max(float((err**2).mean()), 1e-30))
        shift = err.mean(axis=(0, 1, 2))
        msnr = 10 * np.log10(var / max(float((shift**2).mean()), 1e-30))
        clip = float(((a < rng[0]) | (a > rng[1])).mean() * 100)
        print(f"{snr:7.2f} {msnr:14.2f} {clip:9.4f}  [{rng[0]:.2f}, {rng[1]:.2f}] / "
              f"[{a.min():.2f}, {a.max():.2f}]  {name}")


if __name__ == "__main__":
    main()
