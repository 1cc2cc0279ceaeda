"""Compress a generator trained on natural photographs, judged on whole held-out photographs.

``python scripts/photo_teacher.py --wheels scikit_image-*.whl scikit_learn-*.whl [--steps 3000]``
(prints numbers; not a test). The default data's flat shapes are too easy to judge a compressor
by, and nothing may be downloaded at run time, so the photographs come from packages on the
registries, fetched beforehand with ``pip download --no-deps scikit-image==0.24.0
scikit-learn==1.5.2`` (their wheels ship sample photographs) plus matplotlib's
``grace_hopper.jpg`` from this venv:

1. a teacher is trained here: a Pix2Pix-objective ResNet-9 (ngf 64) colouriser, grey photo →
   colour photo, at 128² on tiles of the training photographs;
2. ``dmad compress`` takes its ``G_AtoB.pt`` alone (G-only) with the grey photos as the images
   it will see, at ~10× fewer MACs, exports both models and compares them;
3. it prints PSNR/SSIM vs the teacher on the whole held-out photographs at 256² (photographs
   the teacher and the student never trained on) and the wall time of each stage.
"""

from __future__ import annotations

import argparse
import json
import time
import zipfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
#: colour photographs of the wheels / matplotlib, and which are held out
TRAIN = ("astronaut.png", "chelsea.png", "ihc.png", "hubble_deep_field.jpg",
         "motorcycle_left.png", "retina.jpg", "china.jpg")
HELD = ("coffee.png", "rocket.jpg", "flower.jpg", "grace_hopper.jpg", "motorcycle_right.png")
#: grey photographs: held-out inputs only (no colour ground truth, none is needed vs teacher)
HELD_GREY = ("camera.png", "moon.png", "coins.png", "grass.png", "gravel.png", "brick.png")


def extract(wheels: list[Path], dst: Path) -> dict[str, Path]:
    """The named photographs from the wheels (and matplotlib's sample data)."""
    import matplotlib

    dst.mkdir(parents=True, exist_ok=True)
    want = set(TRAIN + HELD + HELD_GREY)
    found: dict[str, Path] = {}
    for whl in wheels:
        with zipfile.ZipFile(whl) as z:
            for n in z.namelist():
                name = n.rsplit("/", 1)[-1]
                if name in want and ("skimage/data/" in n or "datasets/images/" in n):
                    (dst / name).write_bytes(z.read(n))
                    found[name] = dst / name
    gh = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if gh.is_file():
        found["grace_hopper.jpg"] = gh
    missing = sorted(want - set(found))
    if missing:
        raise SystemExit(f"photographs not found in the wheels: {', '.join(missing)}")
    return found


def grey(img: Image.Image) -> Image.Image:
    return img.convert("L").convert("RGB")


def build(photos: dict[str, Path], root: Path, tile: int = 160) -> Path:
    """root/train: grey|colour tiles of the training photos at three scales; root/val: the
    held-out photographs whole, 256² per half (grey ones with themselves as the B half)."""
    train, val = root / "train", root / "val"
    if (root / ".done").exists():
        return root
    train.mkdir(parents=True, exist_ok=True)
    val.mkdir(parents=True, exist_ok=True)
    k = 0
    for name in TRAIN:
        img = Image.open(photos[name]).convert("RGB")
        for short in (tile, 2 * tile, 3 * tile):
            w, h = img.size
            s = short / min(w, h)
            im = img.resize((max(tile, round(w * s)), max(tile, round(h * s))), Image.BICUBIC)
            for y in range(0, im.size[1] - tile + 1, tile):
                for x in range(0, im.size[0] - tile + 1, tile):
                    c = im.crop((x, y, x + tile, y + tile))
                    pair = Image.new("RGB", (2 * tile, tile))
                    pair.paste(grey(c), (0, 0))
                    pair.paste(c, (tile, 0))
                    pair.save(train / f"{k:04d}.png")
                    k += 1
    for name in HELD + HELD_GREY:
        img = Image.open(photos[name]).convert("RGB").resize((256, 256), Image.BICUBIC)
        pair = Image.new("RGB", (512, 256))
        pair.paste(grey(img), (0, 0))
        pair.paste(img, (256, 0))
        pair.save(val / f"{Path(name).stem}.png")
    (root / ".done").write_text(str(k))
    return root


def teacher_vs_truth(g, data: Path) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    """The teacher's PSNR against the real colours of the held-out colour photographs at 256²:
    how strong a colouriser it is (its task's ground truth, not a student's)."""
    import numpy as np
    import torch

    from dmad.compress.evaluate import psnr

    out = []
    for name in HELD:
        pair = np.asarray(Image.open(data / "val" / f"{Path(name).stem}.png").convert("RGB"))
        t = torch.from_numpy(pair.copy()).permute(2, 0, 1).float().div(127.5).sub(1)[None]
        with torch.no_grad():
            y = g.eval()(t[..., :256])
        out.append((name, psnr(y, t[..., 256:])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheels", type=Path, nargs="+", required=True,
                    help="scikit-image and scikit-learn wheels (pip download --no-deps)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "photo",
                    help="work folder (finished stages are reused)")
    ap.add_argument("--steps", type=int, default=3000, help="teacher steps (default 3000)")
    ap.add_argument("--search-steps", type=int, default=1000, help="search steps (default 1000)")
    ap.add_argument("--finetune-steps", type=int, default=2000,
                    help="fine-tune steps (default 2000)")
    ap.add_argument("--compare", action="store_true",
                    help="also benchmark full vs compressed on this CPU (report.md)")
    ap.add_argument("--ratio", type=float, default=10.0, help="MAC reduction (default 10)")
    ap.add_argument("--ngf", type=int, default=64,
                    help="teacher width (default 64, the released CycleGAN/Pix2Pix ResNet-9)")
    ap.add_argument("--teacher-only", action="store_true",
                    help="train (or finish) the teacher, print its PSNR vs the ground truth, stop")
    ap.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = ap.parse_args()

    from dmad.compress.arch import profile
    from dmad.compress.checkpoint import load_model
    from dmad.compress.train.teacher import TeacherConfig, train_teacher
    from dmad.compress_run import build_config, run_compress

    photos = extract(args.wheels, args.out / "photos")
    data = build(photos, args.out / "aligned")
    n_tiles = len(list((data / "train").glob("*.png")))
    print(f"{n_tiles} training tiles from {len(TRAIN)} photographs; "
          f"{len(HELD) + len(HELD_GREY)} held-out photographs")

    tdir = args.out / "teacher"
    t0 = time.time()
    if not (tdir / "DONE.json").exists():
        tcfg = TeacherConfig(task="pix2pix", arch="resnet", ngf=args.ngf, n_blocks=9,
                             norm="instance", ndf=64, size=128, load_size=144, flip=True,
                             data=str(data),
                             steps=args.steps, checkpoint_every=250, log_every=50,
                             device=args.device)
        train_teacher(tcfg, tdir, resume=(tdir / "checkpoint.pt").exists())
    teacher_s = time.time() - t0
    g, _ = load_model(tdir / "G_AtoB.pt")
    full = profile(g, (1, 3, 256, 256)).macs_paper / 1e9
    truth = teacher_vs_truth(g, data)
    print(f"teacher ResNet-9 ngf {args.ngf}, {args.steps} steps: PSNR vs the true colours of "
          "the held-out photographs at 256²: " + ", ".join(f"{n} {p:.2f}" for n, p in truth)
          + f" dB (mean {sum(p for _, p in truth) / len(truth):.2f})")
    if args.teacher_only:
        return
    target = round(full / args.ratio, 3)

    run = args.out / "compress"
    overrides = {"generator": str(tdir / "G_AtoB.pt"), "images": str(data),
                 "target_gmacs": target, "steps": args.search_steps,
                 "finetune_steps": args.finetune_steps, "size": 128, "export_size": 256,
                 "device": args.device, "checkpoint_every": 250, "compare": args.compare}
    resume = (run / "compress.json").exists()
    cfg, tables = build_config(overrides, None, run, resume)
    done = run_compress(cfg, run, resume=resume, tables=tables)
    ev = done["eval"]
    print(f"\nteacher: pix2pix-objective ResNet-9 ngf {args.ngf} colouriser, {args.steps} "
          "steps at 128² "
          f"({teacher_s:.0f} s this invocation); {full:.3f} GMACs paper at 256²; target "
          f"{target} ({args.ratio:g}x fewer)")
    print(f"student vs teacher on {ev['images']} whole held-out photographs at {ev['size']}²: "
          f"PSNR {ev['psnr_vs_teacher']:.2f} dB, SSIM {ev['ssim_vs_teacher']:.3f}; MACs ÷"
          f"{ev['ratios']['macs_paper']:.1f} (paper) ÷{ev['ratios']['macs_true']:.1f} (true); "
          f"best fine-tune step {done['best_step']}")
    print("stage wall times (s): " + json.dumps(done["seconds"]))
    for label in ("compressed", "full"):
        p = run / "export" / label / "parity.json"
        if p.is_file():
            rep = json.loads(p.read_text())
            arts = rep.get("artifacts", {})
            line = ", ".join(f"{k} {v['parity']['psnr_db']:.1f} dB" for k, v in arts.items()
                             if isinstance(v, dict) and "parity" in v
                             and "psnr_db" in v["parity"])
            print(f"{label} export vs PyTorch on held-out photographs: {line}")


if __name__ == "__main__":
    main()
