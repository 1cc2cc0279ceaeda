"""Is the search worth it? DMAD's searched architecture vs a uniform slim-down vs random channels.

``python scripts/search_vs_uniform.py compare --teacher G.pt --images SPLIT_OR_DIR --out DIR``
prints, for each of 3 seeds and in a summary (mean ± sample std over the seeds), PSNR/SSIM vs
the teacher on whole held-out images (at ``--eval-size``, 256² by default) of three students at
the same MACs (within 3 %) and the same fine-tune (steps, objective, seed):

a. **dmad**: ``dmad search`` (teacher-G-only distillation on the images, DMAD's masks and
   schedule, this seed), physically pruned;
b. **uniform**: every width of the teacher scaled by one factor (found by bisection; of the two
   whole-channel neighbours of (a)'s MACs the closer one), keeping each layer's largest-L1
   filters (the stream: largest summed L1 over its writers) — the standard slim-down baseline;
c. **random**: every channel gets a random score (this seed) and the same budget fit as the
   search keeps the best-scored channels under (a)'s MACs: random widths and channels under the
   same pruning rules.

Each student then gets the same G-only fine-tune (``dmad finetune --student``). The searched
student has also trained during the search, so a fourth row, **uniform_long**, gives the uniform
student the search's steps on top of its fine-tune (the same total training steps). Tuning:
``python scripts/search_vs_uniform.py tune ...`` runs searches with other mask settings and
prints how much of the cut the masks made (``architecture.json`` ``cut``) and the pruned
student's PSNR before any fine-tune. Finished runs are reused (delete the folder to redo).
Numbers, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from dmad.compress import budget
from dmad.compress.arch import profile_spec
from dmad.compress.checkpoint import load_generator, save_model
from dmad.compress.evaluate import EvalConfig, evaluate
from dmad.compress.graph_cost import stream_writers
from dmad.compress.masks import attach_masks
from dmad.compress.prune import prune, prune_search_file
from dmad.compress.train.finetune import FinetuneConfig, finetune
from dmad.compress.train.search import SearchConfig, search

ARCHS = ("dmad", "uniform", "random", "uniform_long")


def _macs(model: torch.nn.Module) -> int:
    return profile_spec(model.spec, (1, model.spec.input_nc, 256, 256)).macs_paper


def run_search(a: argparse.Namespace, out: Path, seed: int, **over: Any) -> Path:
    if not (out / "DONE.json").is_file():
        cfg = SearchConfig(teacher=a.teacher, images=a.images, target_gmacs=a.target_gmacs,
                           steps=a.search_steps, size=a.size, seed=seed, bound_updates=50,
                           checkpoint_every=10**6, log_every=50, device=a.device, **over)
        search(cfg, out, force=True)
    return out


def _l1_rows(conv: torch.nn.Module) -> torch.Tensor:
    w = conv.pointwise.weight if hasattr(conv, "pointwise") else conv.weight
    dims = (0, 2, 3) if isinstance(conv, torch.nn.ConvTranspose2d) else (1, 2, 3)
    return w.detach().abs().sum(dims)


def uniform_student(teacher: torch.nn.Module, target: int) -> torch.nn.Module:
    """Every width × one factor (bisection on the factor to land on ``target`` MACs)."""
    from dmad.compress.masks import mask_sites

    def build(alpha: float) -> torch.nn.Module:
        g = load_copy(teacher)
        masks = attach_masks(g)
        units = {n: u for n, u, _ in mask_sites(g)}
        group = stream_writers(g.spec)
        stream = sum(_l1_rows(units[n].conv) for n in group)
        keep = {}
        for n, m in masks.items():
            score = stream if n in group else _l1_rows(units[n].conv)
            k = max(1, round(alpha * m.channels))
            keep[n] = torch.zeros(m.channels, dtype=torch.bool)
            keep[n][torch.topk(score, k).indices] = True
        budget.apply_keep(masks, keep)
        return prune(g)

    lo, hi = 0.0, 1.0
    below, above = build(lo + 1e-9), build(hi)
    for _ in range(30):
        mid = (lo + hi) / 2
        g = build(mid)
        if _macs(g) <= target:
            lo, below = mid, g
        else:
            hi, above = mid, g
    # widths move in whole channels: take the neighbour closest to the target, either side
    return min((below, above), key=lambda g: abs(_macs(g) - target))


def random_student(teacher: torch.nn.Module, target: int, seed: int) -> torch.nn.Module:
    g = load_copy(teacher)
    masks = attach_masks(g)
    gen = torch.Generator().manual_seed(1000 + seed)
    scores = {n: torch.rand(m.channels, generator=gen) for n, m in masks.items()}
    _, keep, _ = budget.fit_to_budget(g.spec, masks, target, "paper", 256, scores=scores)
    budget.apply_keep(masks, keep)
    return prune(g)


def load_copy(teacher: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(teacher).eval()


def run_finetune(a: argparse.Namespace, student: Path, out: Path, seed: int,
                 steps: int) -> Path:
    if not (out / "DONE.json").is_file():
        cfg = FinetuneConfig(student=str(student), teacher=a.teacher, images=a.images,
                             steps=steps, size=a.size, seed=seed,
                             checkpoint_every=10**6, log_every=50, device=a.device,
                             eval_every=10**6)
        finetune(cfg, out, force=True)
    return out


def score(a: argparse.Namespace, student: Path, out: Path) -> dict[str, float]:
    split = a.images if a.images.endswith(".json") else str(out.parent / "split.json")
    r = evaluate(EvalConfig(student=str(student), teacher=a.teacher, images=split,
                            size=a.eval_size, device=a.device), out)
    return {"psnr": r["psnr_vs_teacher"], "ssim": r["ssim_vs_teacher"],
            "gmacs": r["student_cost_256"]["gmacs_paper"]}


def compare(a: argparse.Namespace) -> None:
    teacher, _ = load_generator(a.teacher)
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in ARCHS}
    t0 = time.time()
    for seed in range(a.seeds):
        sd = a.out / f"seed{seed}"
        s_dir = run_search(a, sd / "search", seed)
        if not a.images.endswith(".json"):  # every run reuses the first search's split
            a.images = str(s_dir / "split.json")
        dmad = prune_search_file(s_dir / "search_G_AtoB.pt")
        target = _macs(dmad)
        students = {"dmad": dmad, "uniform": uniform_student(teacher, target),
                    "random": random_student(teacher, target, seed)}
        students["uniform_long"] = students["uniform"]
        for name, g in students.items():
            f = sd / f"{name}.pt"
            save_model(g, f, task="cyclegan", direction="AtoB", role="student", teacher=a.teacher)
            steps = a.finetune_steps + (a.search_steps if name == "uniform_long" else 0)
            ft = run_finetune(a, f, sd / f"ft_{name}", seed, steps)
            r = score(a, ft / "student_G_AtoB.pt", sd / f"eval_{name}")
            r["gap_pct"] = 100 * (r["gmacs"] * 1e9 / target - 1)
            rows[name].append(r)
            print(f"seed {seed} {name:8s} {r['gmacs']:.3f} G ({r['gap_pct']:+.1f} %)  "
                  f"PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}", flush=True)
    print(f"\n{a.seeds} seeds, {a.search_steps} search + {a.finetune_steps} fine-tune steps at "
          f"{a.size}², eval on whole held-out images at {a.eval_size}² "
          f"({time.time() - t0:.0f} s)")
    print("| architecture | GMACs (paper, 256²) | PSNR vs teacher (dB) | SSIM vs teacher |")
    print("|---|---|---|---|")
    summary = {}
    for name in ARCHS:
        v = rows[name]
        ps, ss = [r["psnr"] for r in v], [r["ssim"] for r in v]
        sd_p = statistics.stdev(ps) if len(ps) > 1 else 0.0
        sd_s = statistics.stdev(ss) if len(ss) > 1 else 0.0
        summary[name] = {"psnr": statistics.mean(ps), "psnr_std": sd_p,
                         "ssim": statistics.mean(ss), "runs": v}
        print(f"| {name} | {statistics.mean(r['gmacs'] for r in v):.3f} | "
              f"{statistics.mean(ps):.2f} ± {sd_p:.2f} | {statistics.mean(ss):.4f} ± {sd_s:.4f} |")
    for base in ("uniform", "uniform_long", "random"):
        gain = summary["dmad"]["psnr"] - summary[base]["psnr"]
        print(f"dmad - {base}: {gain:+.2f} dB" + (" (goal >= +0.5 dB)" if base == "uniform"
                                                  else ""))
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))


def tune(a: argparse.Namespace) -> None:
    grid = [dict(json.loads(v)) for v in a.variant] or [{}]
    for over in grid:
        d = a.out / ("tune_" + ("_".join(f"{k}-{v}" for k, v in over.items()) or "default"))
        t0 = time.time()
        run_search(a, d, 0, **over)
        if not a.images.endswith(".json"):
            a.images = str(d / "split.json")
        arch = json.loads((d / "architecture.json").read_text())
        e = arch["directions"]["AtoB"]
        r = score(a, d / "search_G_AtoB.pt", d / "eval")
        cut = e["cut"]
        print(f"{over or 'defaults'}: frozen at step {e['frozen_at_step']} "
              f"({arch['events'][0]['reason']}), masks left {cut['gmacs_left_by_masks']:.2f} G, "
              f"cut by masks {100 * cut['cut_by_masks']:.0f} %, revived "
              f"{cut.get('channels_revived')}, final {e['gmacs_paper']:.3f} G; "
              f"no-fine-tune PSNR {r['psnr']:.2f} dB ({time.time() - t0:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=("compare", "tune"), help="compare the three architectures, "
                    "or tune the search's mask settings")
    ap.add_argument("--teacher", required=True, help="teacher generator model file (A→B)")
    ap.add_argument("--images", required=True, help="image folder or split.json")
    ap.add_argument("--out", type=Path, required=True, help="work folder (finished runs reused)")
    ap.add_argument("--target-gmacs", type=float, default=1.4,
                    help="search budget, G paper MACs at 256² (default 1.4: ~10× on the demo)")
    ap.add_argument("--size", type=int, default=64, help="training crop side (default 64)")
    ap.add_argument("--eval-size", type=int, default=256,
                    help="side of the whole held-out images evaluated (default 256)")
    ap.add_argument("--search-steps", type=int, default=200, help="search steps (default 200)")
    ap.add_argument("--finetune-steps", type=int, default=300,
                    help="fine-tune steps, the same for every student (default 300)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    ap.add_argument("--variant", action="append", default=[],
                    help="tune: JSON of SearchConfig overrides, e.g. "
                    "'{\"mask_weight_decay\": 0.01}' (repeatable)")
    ap.add_argument("--device", default="cpu", help="torch device (default cpu)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    a.teacher = str(a.teacher)
    (compare if a.mode == "compare" else tune)(a)


if __name__ == "__main__":
    main()

