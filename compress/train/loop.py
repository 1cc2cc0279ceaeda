"""The one training loop shared by teacher training, search and fine-tuning.

A stage plugs in its modules, optimisers and one ``train_step``; the loop owns everything that
must be the same everywhere: the learning-rate schedule (constant, then linear decay to zero, a
pure function of the step so nothing about it needs saving), atomic checkpoints at an interval,
exact resume (weights, optimisers, step, RNG state and the stage's own extra state), a progress
bar with ETA and losses, a JSON-lines log, and the NaN/inf guard that stops a run while keeping
the last good checkpoint.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from dmad.compress.errors import DmadError
from dmad.compress.io import atomic_save, atomic_write_json, atomic_write_text, safe_load
from dmad.compress.runfolder import holds_user_files
from dmad.compress.train import distributed
from dmad.compress.train.events import EventWriter

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
TENSORBOARD = "tensorboard"
CONFIG = "config.json"
DONE = "DONE.json"


@dataclass(frozen=True)
class Schedule:
    """Step count and learning-rate shape: ``steps - decay_steps`` constant, then linear to 0."""

    steps: int
    decay_steps: int
    #: linear (the originals') | cosine (half a cosine from 1 to 0 over all the steps)
    shape: str = "linear"

    def factor(self, step: int) -> float:
        """LR multiplier at 0-based ``step``: the original `1 - max(0, e - n) / (n_decay + 1)`."""
        if self.shape == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * step / max(1, self.steps)))
        constant = self.steps - self.decay_steps
        return 1.0 - max(0, step - constant) / float(self.decay_steps + 1)


class Stage(ABC):
    """What a training stage provides to :func:`run`."""

    name: str = "stage"

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Every module whose weights are trained or needed to resume."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers; their param groups' ``initial_lr`` is scaled by the schedule."""

    @abstractmethod
    def train_step(self, step: int) -> dict[str, torch.Tensor | float]:
        """One optimisation step; returns named losses (checked for NaN/inf, logged)."""

    def after_step(self, step: int) -> dict[str, Any]:
        """Hook after each step (e.g. the search's bound updates); returns extra log fields."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """State besides modules/optimisers that a resumed run needs (pools, mask bounds)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore :meth:`extra_state`."""

    def progress_fields(self) -> dict[str, str]:
        """Extra fields for the progress bar (e.g. bound and current MACs for the search)."""
        return {}

    @abstractmethod
    def finish(self, run_dir: Path) -> dict[str, Any]:
        """Write the stage's final outputs into ``run_dir``; returns a summary for DONE.json."""


def prepare_run_dir(run_dir: Path, *, resume: bool, force: bool) -> None:
    """Refuse to clobber work: a finished run needs ``--force``; an unfinished one needs
    ``--resume`` (continue) or ``--force`` (start over). Under torchrun rank 0 checks and
    prepares the folder and every rank gets its verdict."""
    distributed.on_main(lambda: _prepare_run_dir(run_dir, resume=resume, force=force))


def run_lock(run_dir: Path):  # type: ignore[no-untyped-def]
    """The run folder's lock for a stage called from Python (the CLI already holds it: the lock
    is re-entrant); only rank 0 takes it, the other ranks of a torchrun job never write."""
    import contextlib

    from dmad.compress.runfolder import run_lock as lock

    main = distributed.is_main() and distributed.env_rank() == 0
    return lock(run_dir) if main else contextlib.nullcontext()


def stage_verb(verb: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """What every training verb (teacher, search, finetune) does around its own work: hold the
    run folder's lock, and on ``--resume`` of a finished run return its DONE summary untouched."""
    @functools.wraps(verb)
    def run_verb(cfg: Any, out: Path, *, resume: bool = False, force: bool = False,
                 max_steps: int | None = None) -> dict[str, Any]:
        with run_lock(out):
            done = finished_run(out, resume)
            if done is not None:
                return done
            return verb(cfg, out, resume=resume, force=force, max_steps=max_steps)

    return run_verb


def finished_run(run_dir: Path, resume: bool) -> dict[str, Any] | None:
    """``--resume`` of a finished run: its DONE summary, and nothing on disk changes."""
    def check() -> dict[str, Any] | None:
        if not (resume and (run_dir / DONE).is_file()):
            return None
        from dmad.compress.config import read_config_file

        print(f"{run_dir}: finished already, nothing to resume (use --force to redo it)",
              file=sys.stderr)
        return read_config_file(run_dir / DONE)

    return distributed.on_main(check)


def _holds_run(run_dir: Path) -> bool:
    return any((run_dir / n).exists() for n in (CHECKPOINT, DONE, CONFIG, LOG))


def _prepare_run_dir(run_dir: Path, *, resume: bool, force: bool) -> None:
    done = (run_dir / DONE).exists()
    started = (run_dir / CHECKPOINT).exists()
    if run_dir.exists() and not run_dir.is_dir():
        raise DmadError(f"{run_dir}: exists and is not a folder")
    if resume and not started and not done:
        raise DmadError(f"{run_dir}: nothing to resume (no {CHECKPOINT}); drop --resume to "
                        "start a new run")
    if not _holds_run(run_dir) and holds_user_files(run_dir) and not force:
        raise DmadError(f"{run_dir}: is not empty and holds no dmad run; give a new --out or "
                        "--force to write into it")
    if force and run_dir.exists():
        for name in (CHECKPOINT, LOG, DONE):
            (run_dir / name).unlink(missing_ok=True)
        _drop_partial_writes(run_dir)
        return
    if done and not resume:
        raise DmadError(
            f"{run_dir}: holds a finished run; use --force to redo it or --out elsewhere"
        )
    if started and not resume:
        raise DmadError(
            f"{run_dir}: holds an unfinished run; use --resume to continue it or "
            "--force to start over"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise DmadError(f"{run_dir}: exists and is not a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DmadError(f"{run_dir}: cannot create the run folder ({exc.strerror})") from None
    _drop_partial_writes(run_dir)


def _drop_partial_writes(run_dir: Path) -> None:
    """Temporary files of dmad's atomic writes a ``kill -9`` interrupted (``.NAME.XXXX.tmp``
    of a file a stage writes): never read, so removed by the next run of the folder, which
    holds its lock. Other hidden files are not ours and stay."""
    for p in run_dir.glob(".*.tmp"):
        name = p.name[1:].rsplit(".", 2)[0]
        if p.is_file() and (name in (CHECKPOINT, LOG, CONFIG, DONE) or name.endswith(
                (".pt", ".json", ".png"))):
            p.unlink(missing_ok=True)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def nonfinite_tensors(stage: Stage) -> list[str]:
    """Names of module tensors (weights and buffers such as BatchNorm statistics) holding NaN/inf.

    Finite losses do not prove finite weights: an exploding step can report a finite loss and
    leave NaN weights or an overflowed running variance behind, so this is checked before any
    checkpoint is written."""
    bad = []
    for name, module in stage.modules().items():
        for key, t in module.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad.append(f"{name}.{key}")
    return bad


def _kept_message(ckpt_path: Path) -> str:
    if ckpt_path.exists():
        return f"last good checkpoint kept at {ckpt_path} (step {safe_load(ckpt_path)['step']})"
    return "no checkpoint was written yet"


def save_checkpoint(stage: Stage, run_dir: Path, step: int, config: dict[str, Any]) -> None:
    """Rank 0 writes; every rank must call it (the RNG states of all ranks are gathered, so a
    resume with the same world size restores each rank's dropout stream)."""
    rngs = distributed.gather_objects(_rng_state())
    if not distributed.is_main():
        return
    atomic_save(
        {
            "format": "dmad-checkpoint",
            "stage": stage.name,
            "step": step,
            "config": config,
            "global_batch": global_batch_of(stage),
            "world_size": distributed.world_size(),
            "modules": {k: m.state_dict() for k, m in stage.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in stage.optimizers().items()},
            "rng": rngs[0],
            "rng_ranks": rngs,
            "extra": stage.extra_state(),
        },
        run_dir / CHECKPOINT,
    )


def per_rank_batch(run_dir: Path, resume: bool, batch_size: int) -> int:
    """The per-process batch a (resumed) run uses: ``batch_size``, or on ``--resume`` the saved
    global batch shared by this world size, so the batches, the step count of an epoch schedule
    and the LR schedule stay those of the interrupted run whatever the number of processes."""
    path = run_dir / CHECKPOINT
    if not (resume and path.exists()):
        return batch_size
    ckpt = safe_load(path)
    saved = ckpt.get("global_batch") if isinstance(ckpt, dict) else None
    if saved is None:
        return batch_size
    world = distributed.world_size()
    if saved % world:
        raise DmadError(f"{path}: was trained with a global batch of {saved}, which {world} "
                        "processes cannot share; resume with a world size that divides it")
    return saved // world


def global_batch_of(stage: Stage) -> int | None:
    batches = getattr(stage, "batches", None)
    return getattr(batches, "global_batch", None)


def load_checkpoint(stage: Stage, run_dir: Path) -> int:
    """Restore ``stage`` from ``run_dir``'s checkpoint; returns the step it was taken at."""
    path = run_dir / CHECKPOINT
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != "dmad-checkpoint":
        raise DmadError(f"{path}: not a dmad training checkpoint")
    if ckpt.get("stage") != stage.name:
        raise DmadError(f"{path}: is a {ckpt.get('stage')!r} checkpoint, not {stage.name!r}")
    try:
        for k, m in stage.modules().items():
            m.load_state_dict(ckpt["modules"][k])
        for k, o in stage.optimizers().items():
            o.load_state_dict(ckpt["optimizers"][k])
        stage.load_extra_state(ckpt.get("extra") or {})
        rngs = ckpt.get("rng_ranks") or [ckpt["rng"]]
        same_world = len(rngs) == distributed.world_size()
        _set_rng_state(rngs[distributed.rank()] if same_world else rngs[0])
    except (KeyError, RuntimeError, ValueError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise DmadError(f"{path}: does not match this run's models ({msg})") from None
    return int(ckpt["step"])


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a resumed run restarts from."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    atomic_write_text(path, "".join(k + "\n" for k in keep))


def scalars_of(stage: str, rec: dict[str, Any]) -> dict[str, float]:
    """The numbers of a log line as TensorBoard tags (``stage/name``); step and time are the
    event's own fields."""
    return {f"{stage}/{k}": float(v) for k, v in rec.items()
            if k not in ("step", "time") and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


def _fmt(v: float) -> str:
    return f"{v:.3g}"


class _Losses:
    """Losses kept on the device until a log line, a checkpoint or the end needs them: one host
    sync (and under torchrun one all-reduce) per interval instead of one per loss per step."""

    def __init__(self, stage: str, ckpt_path: Path) -> None:
        self.stage, self.ckpt_path = stage, ckpt_path
        self.pending: list[tuple[int, list[str], torch.Tensor]] = []

    def add(self, n: int, out: dict[str, torch.Tensor | float]) -> None:
        keys = list(out)
        dev = next((v.device for v in out.values() if isinstance(v, torch.Tensor)), None)
        vec = torch.stack([
            v.detach().float().reshape(()) if isinstance(v, torch.Tensor)
            else torch.tensor(float(v), device=dev) for v in out.values()
        ]) if keys else torch.zeros(0)
        self.pending.append((n, keys, vec))

    def flush(self) -> dict[str, float]:
        """Bring the pending losses to the host (averaged over ranks), stop on NaN/inf, return
        the last step's values."""
        if not self.pending:
            return {}
        flat = torch.cat([v for _, _, v in self.pending]).float()
        values = distributed.all_mean_(flat).tolist()
        last: dict[str, float] = {}
        i = 0
        for n_step, keys, v in self.pending:
            vals = dict(zip(keys, values[i:i + v.numel()], strict=True))
            i += v.numel()
            bad = [k for k, x in vals.items() if not math.isfinite(x)]
            if bad:
                raise DmadError(
                    f"{self.stage}: loss {bad[0]} became {vals[bad[0]]} at step "
                    f"{n_step}; stopped, {_kept_message(self.ckpt_path)}. Lower the learning "
                    "rate or check the data"
                )
            last = vals
        self.pending.clear()
        return last


class _RunLog:
    """What rank 0 shows and keeps of a run: the progress bar, ``log.jsonl`` and the
    TensorBoard events (a resumed run repeats the steps after its checkpoint: TensorBoard drops
    the interrupted run's)."""

    def __init__(self, stage: Stage, run_dir: Path, total: int, start: int,
                 tensorboard: bool) -> None:
        main = distributed.is_main()
        self.stage, self.t0 = stage, time.time()
        self.bar = tqdm(total=total, initial=start, desc=stage.name, file=sys.stderr,
                        dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 5.0,
                        disable=not main)
        self.fh = open(run_dir / LOG, "a", encoding="utf-8") if main else None
        self.events = EventWriter(run_dir / TENSORBOARD, purge_from=start + 1 if start else None) \
            if main and tensorboard else None

    def line(self, n: int, factor: float, losses: dict[str, float],
             extras: dict[int, dict[str, Any]]) -> None:
        if self.fh is None:
            return
        rec = {"step": n, "lr_factor": round(factor, 6),
               **{k: round(v, 6) for k, v in losses.items()},
               **{k: v for e in extras.values() for k, v in e.items()},
               "time": round(time.time() - self.t0, 3)}
        self.fh.write(json.dumps(rec) + "\n")
        self.fh.flush()
        if self.events is not None:
            self.events.scalars(n, scalars_of(self.stage.name, rec))
        self.bar.set_postfix_str(" ".join(
            [f"{k}={_fmt(v)}" for k, v in losses.items()]
            + [f"{k}={v}" for k, v in self.stage.progress_fields().items()]), refresh=False)

    def close(self) -> None:
        self.bar.close()
        for h in (self.fh, self.events):
            if h is not None:
                h.close()


def _begin(stage: Stage, run_dir: Path, config: dict[str, Any], resume: bool) -> int:
    """Restore a resumed run (its log trimmed to the checkpoint) or clear an earlier one's log
    and curves; write the config; returns the first step."""
    start = 0
    main = distributed.is_main()
    if resume and (run_dir / CHECKPOINT).exists():
        start = load_checkpoint(stage, run_dir)
        if main:
            _trim_log(run_dir / LOG, start)
    elif not resume and main:
        (run_dir / LOG).unlink(missing_ok=True)
        for f in (run_dir / TENSORBOARD).glob("events.out.tfevents.*"):
            f.unlink()  # a new run's curves start alone
    if main:
        atomic_write_json(run_dir / CONFIG, config)
    for opt in stage.optimizers().values():
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
    return start


def _checkpoint(stage: Stage, run_dir: Path, n: int, config: dict[str, Any]) -> None:
    bad_w = nonfinite_tensors(stage)
    if bad_w:
        raise DmadError(
            f"{stage.name}: weights became NaN/inf by step {n} ({bad_w[0]}, {len(bad_w)} "
            f"tensor(s)); stopped, {_kept_message(run_dir / CHECKPOINT)}. Lower the learning "
            "rate or check the data"
        )
    save_checkpoint(stage, run_dir, n, config)


def _finish(stage: Stage, run_dir: Path, steps: int, t0: float) -> dict[str, Any]:
    """Rank 0 writes the outputs and DONE.json; the other ranks wait and return its summary."""
    if not distributed.is_main():
        return distributed.on_main(dict)

    def finish() -> dict[str, Any]:
        outputs = stage.finish(run_dir)
        summary = {
            "stage": stage.name,
            "steps": steps,
            "seconds_this_invocation": round(time.time() - t0, 2),
            **({"world_size": distributed.world_size(),
                "global_batch": global_batch_of(stage)} if distributed.active() else {}),
            **outputs,
        }
        atomic_write_json(run_dir / DONE, summary)
        return summary

    return distributed.on_main(finish)


def run(
    stage: Stage,
    run_dir: Path,
    schedule: Schedule,
    config: dict[str, Any],
    *,
    resume: bool = False,
    checkpoint_every: int = 100,
    log_every: int = 10,
    max_steps: int | None = None,
    tensorboard: bool = True,
) -> dict[str, Any]:
    """Train ``stage`` to ``schedule.steps`` in ``run_dir``; returns the DONE summary.

    ``max_steps`` stops early after that many steps of *this* invocation (checkpointing first),
    which tests and time-boxed jobs use to split a run. ``tensorboard``: every log line's
    numbers also go to TensorBoard event files in ``run_dir/tensorboard``.
    """
    start = _begin(stage, run_dir, config, resume)
    log = _RunLog(stage, run_dir, schedule.steps, start, tensorboard)
    losses = _Losses(stage.name, run_dir / CHECKPOINT)
    extras: dict[int, dict[str, Any]] = {}
    try:
        for step in range(start, schedule.steps):
            f = schedule.factor(step)
            for opt in stage.optimizers().values():
                for group in opt.param_groups:
                    group["lr"] = group["initial_lr"] * f
            n = step + 1
            losses.add(n, stage.train_step(step))
            extra = stage.after_step(step)
            if extra:
                extras[n] = extra
            log.bar.update(1)
            stop = max_steps is not None and n - start >= max_steps
            log_now = n % log_every == 0 or n == schedule.steps
            if log_now or n % checkpoint_every == 0 or n == schedule.steps or stop:
                last = losses.flush()
                if log_now:
                    log.line(n, f, last, extras)
                    extras.clear()
                if n % checkpoint_every == 0 or n == schedule.steps or stop:
                    _checkpoint(stage, run_dir, n, config)
            if stop and n < schedule.steps:
                distributed.barrier()
                return {"stopped_at": n}
    finally:
        log.close()
        batches = getattr(stage, "batches", None)
        if batches is not None and hasattr(batches, "close"):
            batches.close()
    return _finish(stage, run_dir, schedule.steps, log.t0)
