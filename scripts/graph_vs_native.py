"""The traced-graph path against dmad's own ResNet path, on the same photo-trained teacher.

    python scripts/graph_vs_native.py [--native runs/frontier/div10] [--work runs/graph_vs_native]

The teacher of a finished native ``dmad compress`` run (``scripts/frontier.py``'s ÷10 student of
the photo colouriser, ResNet-9 ngf 64) is rewritten into CUT's generator class without
anti-aliasing (the pytorch-CycleGAN-and-pix2pix layout; its outputs are checked equal), and
compressed again through ``--generator-class``: structure, masks, budget, pruning and
co-attention taps then all come from the traced graph. Same images, held-out photographs, budget,
steps, size and seed as the native run; export and comparison off (fidelity is the question).
Prints both runs' search result and their fidelity against the teacher on the whole held-out
photographs at 256² (mean and worst image, SSIM, colour shift). Run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

import dmad
from dmad.compress.checkpoint import load_generator
from dmad.compress.models.public import CutResnet

BUILDER = "dmad.compress.models.public:CutResnet"


def cyclegan_layout(teacher: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """``teacher`` (dmad ResNet) as CUT's class without anti-aliasing, weights copied in layer
    order; returns it and its keyword arguments."""
    spec = teacher.spec  # type: ignore[union-attr]
    kwargs = {"ngf": spec.ngf, "n_blocks": spec.n_blocks, "antialias": False}
    other = CutResnet(**kwargs).eval()
    src = [m for m in teacher.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    dst = [m for m in other.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert len(src) == len(dst), (len(src), len(dst))
    with torch.no_grad():
        for a, b in zip(src, dst, strict=True):
            b.weight.copy_(a.weight)
            if a.bias is not None:
                b.bias.copy_(a.bias)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        err = float((teacher.eval()(x) - other(x)).abs().max())
    assert err < 1e-4, f"the rewritten teacher differs by {err}"
    return other, kwargs


def _line(name: str, run: Path) -> str:
    done = json.loads((run / "DONE.json").read_text())
    e = done["eval"]
    arch = json.loads((run / "search" / "architecture.json").read_text())["directions"]["AtoB"]
    return (f"| {name} | {arch['gmacs_paper']:.3f} | {e['psnr_vs_teacher']:.2f} | "
            f"{e['psnr_worst_vs_teacher']:.2f} | {e['ssim_vs_teacher']:.3f} | "
            f"{e['colour_mean_shift_max']:.1f} | {done['seconds'].get('search', 0):.0f} + "
            f"{done['seconds'].get('finetune', 0):.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--native", type=Path, default=Path("runs/frontier/div10"),
                    help="a finished native dmad compress run of a ResNet teacher")
    ap.add_argument("--work", type=Path, default=Path("runs/graph_vs_native"),
                    help="work folder (its run/ is resumed when unfinished)")
    a = ap.parse_args()
    cfg = json.loads((a.native / "compress.json").read_text())["config"]
    teacher, _ = load_generator(cfg["generator"])
    other, kwargs = cyclegan_layout(teacher)
    a.work.mkdir(parents=True, exist_ok=True)
    weights = a.work / "teacher_cyclegan_layout.pth"
    torch.save(other.state_dict(), weights)
    run = a.work / "run"
    keep = ("target_gmacs", "macs_convention", "macs_size", "steps", "finetune_steps", "size",
            "export_size", "val", "seed", "objective", "batch_size")
    if not (run / "DONE.json").is_file():
        dmad.compress_generator(weights, cfg["images"], run, resume=(run / "compress.json")
                                .is_file(), generator_class=BUILDER, kwargs=json.dumps(kwargs),
                                export=False, compare=False, device="cpu",
                                **{k: cfg[k] for k in keep})
    print("| path | GMACs (paper, 256²) | PSNR vs teacher dB | worst dB | SSIM | colour shift "
          "/255 | seconds (search + fine-tune) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(_line("dmad ResNet (native)", a.native))
    print(_line("traced CycleGAN layout (graph)", run))


if __name__ == "__main__":
    main()
