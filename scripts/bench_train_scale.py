"""Training throughput of the three stages: images/s by batch, loader workers and precision.

Runs the real stages (``dmad teacher``, ``dmad search``, ``dmad finetune`` through their Python
verbs, the same code the CLI runs) for a few steps each on the embedded default data at the
given size, and reads the per-step times from their ``log.jsonl``: the first step (set-up,
first-touch allocations, loader start) is dropped; images/s = global batch × steps / seconds of
the remaining steps. Every setting runs in this one invocation, so the ratios between rows are
measured on the same machine state. Prints a table (and ``--json``). A script that prints
numbers, not a timed test.

    python scripts/bench_train_scale.py [--size 256] [--ngf 16] [--batches 1,4] \\
        [--workers 0,2] [--precisions fp32,bf16] [--steps 4] [--device auto] [--nproc 1]

``--nproc 1,2`` also runs the teacher under ``torchrun --nproc_per_node=N`` (one GPU per
process on CUDA) and prints the scaling from 1 to N processes at the same per-process batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def _rate(run: Path, global_batch: int) -> float:
    times = [json.loads(x)["time"] for x in (run / "log.jsonl").read_text().splitlines()]
    if len(times) < 2:
        return float("nan")
    return global_batch * (len(times) - 1) / (times[-1] - times[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256, help="crop side in pixels (default 256)")
    ap.add_argument("--ngf", type=int, default=16,
                    help="teacher ResNet-9 width (64 = the full CycleGAN generator; 16 keeps a "
                         "2-core CPU run within minutes)")
    ap.add_argument("--batches", default="1,4", help="per-process batch sizes, comma list")
    ap.add_argument("--workers", default="0,2", help="DataLoader worker counts, comma list")
    ap.add_argument("--precisions", default="fp32,bf16", help="fp32/bf16/fp16, comma list")
    ap.add_argument("--stages", default="teacher,search,finetune", help="stages, comma list")
    ap.add_argument("--steps", type=int, default=4, help="steps per setting (first dropped)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--nproc", default="1", help="process counts for the torchrun teacher rows")
    ap.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = ap.parse_args()

    from dmad.compress.data import make_default_dataset
    from dmad.compress.train.finetune import FinetuneConfig, finetune
    from dmad.compress.train.search import SearchConfig, search
    from dmad.compress.train.teacher import TeacherConfig, train_teacher

    work = Path(tempfile.mkdtemp(prefix="dmad-bench-train-"))
    data = make_default_dataset(work / "data", size=args.size, n_train=16, n_test=2)
    device = args.device
    dev = "cuda" if device == "auto" and torch.cuda.is_available() else (
        "cpu" if device == "auto" else device)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, device {dev}"
          + (f" ({torch.cuda.get_device_name()})" if dev.startswith("cuda") else ""))
    if not dev.startswith("cuda"):
        print("# no CUDA device here: CPU rows only (GPU scaling and utilisation not measured)")
    base = {"data": str(data), "ngf": args.ngf, "n_blocks": 9, "size": args.size,
            "device": device, "log_every": 1, "checkpoint_every": 10_000}
    teacher = work / "teacher"
    train_teacher(TeacherConfig(**base, steps=1), teacher)
    srch = work / "search0"
    search(SearchConfig(teacher=str(teacher), target_gmacs=0.25 * (args.ngf / 64) ** 2 * 56.8,
                        steps=2, device=device, log_every=1), srch)
    rows = []
    print(f"{'stage':<9} {'batch':>5} {'workers':>7} {'precision':>9} {'images/s':>9}")
    for stage in args.stages.split(","):
        for b in map(int, args.batches.split(",")):
            for w in map(int, args.workers.split(",")):
                for prec in args.precisions.split(","):
                    out = work / f"{stage}-{b}-{w}-{prec}"
                    run = {"steps": args.steps, "batch_size": b, "workers": w,
                           "precision": prec}
                    if stage == "teacher":
                        train_teacher(TeacherConfig(**{**base, **run}), out)
                    elif stage == "search":
                        search(SearchConfig(teacher=str(teacher), device=device, log_every=1,
                                            target_gmacs=0.25 * (args.ngf / 64) ** 2 * 56.8,
                                            checkpoint_every=10_000, **run), out)
                    else:
                        finetune(FinetuneConfig(search=str(srch), device=device, log_every=1,
                                                checkpoint_every=10_000, **run), out)
                    r = _rate(out, b)
                    rows.append({"stage": stage, "batch": b, "workers": w, "precision": prec,
                                 "images_per_s": r})
                    print(f"{stage:<9} {b:>5} {w:>7} {prec:>9} {r:>9.2f}", flush=True)
    nprocs = [int(n) for n in args.nproc.split(",")]
    if nprocs != [1]:
        torchrun = Path(sys.executable).with_name("torchrun")
        b = int(args.batches.split(",")[-1])
        rates = {}
        for n in nprocs:
            out = work / f"ddp-{n}"
            cmd = [str(torchrun), "--standalone", f"--nproc_per_node={n}", "--no-python",
                   sys.executable, "-m", "dmad", "teacher", "--out", str(out), "--data",
                   str(data), "--ngf", str(args.ngf), "--size", str(args.size), "--steps",
                   str(args.steps), "--batch-size", str(b), "--device", device,
                   "--log-every", "1", "--checkpoint-every", "10000"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            rates[n] = _rate(out, b * n)
            rows.append({"stage": "teacher-ddp", "nproc": n, "batch_per_process": b,
                         "images_per_s": rates[n]})
            print(f"teacher under torchrun, {n} process(es) × batch {b}: {rates[n]:.2f} images/s"
                  + (f", scaling {rates[n] / rates[nprocs[0]]:.2f}× for {n / nprocs[0]:.0f}×"
                     if n != nprocs[0] else ""))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
