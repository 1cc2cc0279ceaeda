"""``kill -9`` during teacher training, search and fine-tuning, then ``--resume``: the final
weights are bit-identical to an uninterrupted run.

Each stage runs 48 steps (checkpoint every 3) through the real CLI and is killed three times at
different steps: right after step 7 is logged (between the checkpoints at 6 and 9: steps are
lost and redone), right after step 21 (while checkpoint 21 is being written) and after step 35
(one step before checkpoint 36). The uninterrupted reference runs in-process (in a thread, while
the CLI starts) through the same stage function with one torch thread, as the CLI does under
``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.conftest import dmad_cmd
from tests.reliability.conftest import ROOT, TINY, Stages, cli_environ

STEPS, EVERY = 48, 3
KILL_AFTER = (7, 21, 35)  # logged step that triggers each kill: 7 % 3 == 1, 21 % 3 == 0, ...


def _teacher(s: Stages, out: Path) -> tuple[list[str], Callable[[], object]]:
    from dmad.compress.train.teacher import TeacherConfig, train_teacher

    argv = ["teacher", "--out", str(out), "--data", str(s.data), *TINY]
    cfg = TeacherConfig(data=str(s.data), ngf=4, n_blocks=2, ndf=4, size=32, device="cpu",
                        steps=STEPS, checkpoint_every=EVERY, log_every=1)
    return argv, lambda: train_teacher(cfg, out)


def _search(s: Stages, out: Path) -> tuple[list[str], Callable[[], object]]:
    from dmad.compress.train.search import SearchConfig, search

    argv = ["search", "--out", str(out), "--teacher", str(s.teacher), "--target-gmacs", "0.08",
            "--bound-updates", "12", "--device", "cpu"]
    cfg = SearchConfig(teacher=str(s.teacher), target_gmacs=0.08, bound_updates=12,
                       device="cpu", steps=STEPS, checkpoint_every=EVERY, log_every=1)
    return argv, lambda: search(cfg, out)


def _finetune(s: Stages, out: Path) -> tuple[list[str], Callable[[], object]]:
    from dmad.compress.train.finetune import FinetuneConfig, finetune

    argv = ["finetune", "--out", str(out), "--search", str(s.search), "--device", "cpu"]
    cfg = FinetuneConfig(search=str(s.search), device="cpu", steps=STEPS,
                         checkpoint_every=EVERY, log_every=1)
    return argv, lambda: finetune(cfg, out)


STAGES = {
    "teacher": (_teacher, ["G_AtoB.pt", "G_BtoA.pt", "D_AtoB.pt", "D_BtoA.pt"]),
    "search": (_search, ["search_G_AtoB.pt", "search_G_BtoA.pt", "D_AtoB.pt"]),
    "finetune": (_finetune, ["student_G_AtoB.pt", "student_G_BtoA.pt"]),
}


@pytest.fixture
def one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _last_logged(run: Path) -> int:
    try:
        lines = (run / "log.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in lines:
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError):
            continue  # a line being written
    return max(steps)


def _kill_after(argv: list[str], run: Path, step: int) -> tuple[int, int]:
    """Start ``dmad ARGV``, SIGKILL it as soon as ``step`` is logged; returns (last logged
    step, checkpoint step) as found after the kill."""
    proc = subprocess.Popen(dmad_cmd(*argv), env=cli_environ(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while _last_logged(run) < step:
            if proc.poll() is not None:
                pytest.fail(f"run ended before step {step}: {proc.stderr.read()[-2000:]!r}")
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "DONE.json").exists(), "DONE.json after a kill"
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)  # complete, never half-written
    return _last_logged(run), int(ckpt["step"])


@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_9_three_times_then_resume_equals_uninterrupted(
        stage: str, stages: Stages, tmp_path: Path, one_thread: None) -> None:
    make, outputs = STAGES[stage]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _, run_straight = make(stages, straight)
    argv, _ = make(stages, killed)
    first = [*argv, "--steps", str(STEPS), "--checkpoint-every", str(EVERY), "--log-every", "1"]
    resume = [argv[0], "--out", str(killed), "--resume"]
    with ThreadPoolExecutor(max_workers=1) as pool:  # the reference trains while the CLI starts
        reference = pool.submit(run_straight)
        seen = [_kill_after(first if i == 0 else resume, killed, step)
                for i, step in enumerate(KILL_AFTER)]
        reference.result()
    ckpt_steps = [c for _, c in seen]
    assert ckpt_steps == sorted(set(ckpt_steps)), f"kills did not land at different steps: {seen}"
    assert any(logged > c for logged, c in seen), f"no kill between checkpoints: {seen}"
    r = subprocess.run(dmad_cmd(*resume), env=cli_environ(), cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (killed / "DONE.json").exists()
    for name in outputs:
        a = torch.load(straight / name, weights_only=True)["state_dict"]
        b = torch.load(killed / name, weights_only=True)["state_dict"]
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after kill + resume"
    if stage == "search":
        arch = [json.loads((d / "architecture.json").read_text()) for d in (straight, killed)]
        assert arch[0]["directions"] == arch[1]["directions"]
