"""Data-parallel training under the real ``torchrun`` on CPU (gloo, 2 ranks).

Two processes with batch 1 each must train as one process with batch 2: the same batches
(sharded from one deterministic order), gradients averaged by DDP, the image pool and the
search's Taylor scores taken over the global batch. Adam turns float round-off in a gradient
that is exactly zero in exact arithmetic (the bias of a conv followed by InstanceNorm) into ±lr
steps, so weights are compared without those biases, at a tolerance far below one step's move.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dmad.compress.train.common import StepBatches

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
TINY = ["--ngf", "4", "--n-blocks", "2", "--ndf", "4", "--size", "32", "--device", "cpu",
        "--log-every", "1"]

pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun(n: int, *args: str) -> list[str]:
    return [str(TORCHRUN), f"--nproc_per_node={n}", "--standalone", "--no-python",
            sys.executable, *args]


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _teacher(out: Path, data: Path, n: int, batch: int, steps: int, extra: tuple = ()) -> list[str]:
    args = ["-m", "dmad", "teacher", "--out", str(out), "--data", str(data), *TINY,
            "--steps", str(steps), "--checkpoint-every", "2", "--batch-size", str(batch),
            "--pool-size", "2", *extra]  # a small pool: its random swaps start at step 2
    return _torchrun(n, *args) if n > 1 else [sys.executable, *args]


def _losses(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _assert_losses_close(a: Path, b: Path, rtol: float = 1e-4, until: int = 10**9) -> None:
    la = [r for r in _losses(a) if r["step"] <= until]
    lb = [r for r in _losses(b) if r["step"] <= until]
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    for ra, rb in zip(la, lb, strict=True):
        for k, v in ra.items():
            if k in ("time", "lr_factor", "step") or not isinstance(v, float):
                continue
            assert rb[k] == pytest.approx(v, rel=rtol, abs=1e-6), (ra["step"], k, v, rb[k])


def _assert_weights_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                          atol: float = 2e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if k.endswith("bias") or not a[k].is_floating_point():
            continue
        diff = (a[k].float() - b[k].float()).abs().max().item()
        assert diff <= atol, (k, diff)


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict:
    """A 2-rank teacher run (batch 1 each) and a 1-process run at the same global batch 2."""
    data = request.getfixturevalue("default_data")
    root = tmp_path_factory.mktemp("ddp")
    two, one = root / "two", root / "one"
    _run(_teacher(two, data, 2, 1, 8))
    _run(_teacher(one, data, 1, 2, 8))
    return {"data": data, "root": root, "two": two, "one": one}


def test_shards_of_the_ranks_make_the_single_process_batch(default_data: Path) -> None:
    from dmad.compress.data import open_dataset
    from dmad.compress.data.transforms import TransformConfig

    ds = open_dataset(default_data, "cyclegan", "train", TransformConfig(36, 32, True))
    whole = StepBatches(ds, 4, seed=3)
    shards = [StepBatches(ds, 4, seed=3, rank=r, world=2) for r in range(2)]
    for step in (0, 5, 7):  # step 6 crosses into the second epoch (24 images, 4 per step)
        joined = torch.cat([s[step]["A"] for s in shards])
        assert torch.equal(joined, whole[step]["A"])
        assert torch.equal(torch.cat([s[step]["B"] for s in shards]), whole[step]["B"])
    assert not torch.equal(whole[0]["A"], whole[1]["A"])
    with pytest.raises(Exception, match="not divisible"):
        StepBatches(ds, 3, seed=0, rank=0, world=2)


def test_two_ranks_train_as_one_process_with_the_global_batch(refs: dict) -> None:
    two, one = refs["two"], refs["one"]
    _assert_losses_close(one, two)
    for f in ("G_AtoB.pt", "G_BtoA.pt", "D_AtoB.pt", "D_BtoA.pt"):
        _assert_weights_close(_weights(one / f), _weights(two / f))
    done = json.loads((two / "DONE.json").read_text())
    assert done["world_size"] == 2 and done["global_batch"] == 2
    # rank 0 alone logged: one line per step, not two
    assert [r["step"] for r in _losses(two)] == list(range(1, 9))


def test_per_rank_batches_without_ddp_would_not_match(refs: dict, tmp_path: Path) -> None:
    """The comparison above can fail: one process with batch 1 (what each rank would train
    alone) already differs at step 2."""
    solo = tmp_path / "solo"
    _run(_teacher(solo, refs["data"], 1, 1, 2))
    la, lb = _losses(refs["two"]), _losses(solo)
    assert abs(la[1]["G"] - lb[1]["G"]) > 1e-3


def _processes_naming(run: Path) -> list[int]:
    """Live processes whose command line names ``run`` (the ranks of a job writing there)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes()
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(run).encode() in cmd and state != "Z":
            pids.append(int(d.name))
    return pids


def _kill_after(cmd: list[str], run: Path, step: int) -> None:
    """Start ``cmd`` in its own process group and SIGKILL torchrun once ``step`` is logged, as
    a user's ``kill -9`` would: the ranks must die with it (and their loader workers with them),
    not finish the run as orphans."""
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            lines = (run / "log.jsonl").read_text().splitlines() if (run / "log.jsonl").exists() \
                else []
            if len(lines) >= step or proc.poll() is not None:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun's group (each rank has its own session)
        proc.wait()
    deadline = time.time() + 10
    while _processes_naming(run) and time.time() < deadline:
        time.sleep(0.05)
    assert not _processes_naming(run), "the ranks outlived their launcher"
    assert not (run / "DONE.json").exists(), "the job finished before the kill"
    assert (run / "checkpoint.pt").exists()


def test_kill_of_the_whole_job_then_resume_equals_uninterrupted(refs: dict,
                                                                tmp_path: Path) -> None:
    data = refs["data"]
    # long enough to be killed mid-run; the reference is the same 40-step 2-rank job
    ref = tmp_path / "ref"
    _run(_teacher(ref, data, 2, 1, 40))
    killed = tmp_path / "killed"
    _kill_after(_teacher(killed, data, 2, 1, 40), killed, 5)
    again = tmp_path / "again"
    shutil.copytree(killed, again)  # the same interrupted job, resumed two ways
    _run([*_teacher(killed, data, 2, 1, 40), "--resume"])
    for f in ("G_AtoB.pt", "D_BtoA.pt"):
        a, b = _weights(ref / f), _weights(killed / f)
        assert all(torch.equal(a[k], b[k]) for k in a), f  # bit-identical on CPU
    assert [r["step"] for r in _losses(killed)] == list(range(1, 41))
    # resumed by one process (world size 1 divides the global batch 2): the same training up to
    # float round-off, which a GAN amplifies after a few steps (2 ranks vs 1 process at the same
    # global batch agree to ~1e-6 for 8 steps, then diverge), so the steps right after the
    # resume (checkpoint 4 or 6) are compared
    _run([*_teacher(again, data, 1, 1, 40), "--resume"])
    _assert_losses_close(ref, again, rtol=1e-4, until=8)
    assert json.loads((again / "DONE.json").read_text()).get("world_size") is None


def test_resume_with_a_world_size_that_does_not_divide_the_batch_is_refused(
        refs: dict, tmp_path: Path) -> None:
    data = refs["data"]
    run = tmp_path / "odd"
    _run(_teacher(run, data, 1, 3, 4, ("--checkpoint-every", "2")))
    (run / "DONE.json").unlink()
    r = subprocess.run(_torchrun(2, "-m", "dmad", "teacher", "--out", str(run), "--resume"),
                       env=_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode != 0
    assert "global batch of 3" in r.stderr


PROBE = """
import sys, torch
from pathlib import Path
from dmad.compress.train import distributed
from dmad.compress.train.search import SearchConfig, search
out, bs = Path(sys.argv[1]), int(sys.argv[2])
cfg = SearchConfig(teacher=sys.argv[3], target_gmacs=0.08, bound_updates=4, steps=8,
                   checkpoint_every=1, log_every=1, device="cpu", mask_lr=0.002, lr=5e-5,
                   batch_size=bs)
search(cfg, out, max_steps=3)
if distributed.world_size() > 1:
    from dmad.compress.io import atomic_write_text
    try:
        atomic_write_text(out / f"rank{distributed.rank()}.txt", "x")
        line = f"wrote {distributed.rank()}\\n"
    except RuntimeError as exc:
        line = f"refused {distributed.rank()} {exc}\\n"
    for r in range(distributed.world_size()):  # one rank at a time: lines never interleave
        if r == distributed.rank():
            sys.stdout.write(line)
            sys.stdout.flush()
        distributed.barrier()
"""


def test_search_under_two_ranks_equals_one_process(refs: dict, tmp_path: Path) -> None:
    """Three search steps (a bound update at step 2): the same losses, mask weights, bounds
    and Taylor importance as one process with the global batch; and a write from rank 1 is
    refused (only rank 0 writes)."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    one, two = tmp_path / "s1", tmp_path / "s2"
    _run([sys.executable, str(probe), str(one), "2", str(refs["one"])])
    r = _run(_torchrun(2, str(probe), str(two), "1", str(refs["one"])))
    assert "wrote 0" in r.stdout and "refused 1" in r.stdout and "only rank 0 writes" in r.stdout
    assert not (two / "rank1.txt").exists()
    _assert_losses_close(one, two)
    a = torch.load(one / "checkpoint.pt", weights_only=True)["modules"]
    b = torch.load(two / "checkpoint.pt", weights_only=True)["modules"]
    for d in ("G_AtoB", "G_BtoA"):
        names = [k for k in a[d] if ".mask." in k]
        assert any(k.endswith("importance") and a[d][k].abs().sum() > 0 for k in names)
        for k in names:
            if a[d][k].is_floating_point():
                assert torch.allclose(a[d][k], b[d][k], rtol=1e-4, atol=1e-6), (d, k)
        _assert_weights_close(a[d], b[d])


def test_pix2pix_unet_batchnorm_uses_the_global_batch(refs: dict, tmp_path: Path) -> None:
    """BatchNorm on CPU under torchrun normalises over the global batch (torch's SyncBatchNorm
    has no CPU kernel; dmad's GlobalBatchNorm2d does it with autograd-aware all-reduces): a
    Pix2Pix UNet with BatchNorm trains on 2 ranks × 1 as on one process × 2, running statistics
    included."""
    data = refs["data"]
    extra = ("--task", "pix2pix", "--dropout", "false", "--num-downs", "5")
    one, two = tmp_path / "one", tmp_path / "two"
    _run(_teacher(one, data, 1, 2, 4, extra))
    _run(_teacher(two, data, 2, 1, 4, extra))
    _assert_losses_close(one, two)
    a, b = _weights(one / "G_AtoB.pt"), _weights(two / "G_AtoB.pt")
    _assert_weights_close(a, b)
    stats = [k for k in a if k.endswith("running_var")]
    assert stats and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in stats)


def test_compress_under_torchrun_trains_on_both_ranks_and_rank_0_finishes(
        refs: dict, tmp_path: Path) -> None:
    out = tmp_path / "c"
    r = _run(_torchrun(2, "-m", "dmad", "compress", str(refs["one"] / "G_AtoB.pt"), "--images",
                       str(refs["data"] / "unaligned"), "--out", str(out), "--target-gmacs",
                       "0.1", "--steps", "4", "--finetune-steps", "4", "--size", "32",
                       "--export-size", "32", "--export", "false", "--compare", "false",
                       "--device", "cpu", "--checkpoint-every", "2"))
    assert r.stdout.count("[compress] search") == 1  # rank 0 alone reports
    for stage, batch in (("search", 1), ("finetune", 4)):  # per process: each stage's default
        done = json.loads((out / stage / "DONE.json").read_text())
        assert done["world_size"] == 2 and done["global_batch"] == 2 * batch
    summary = json.loads((out / "DONE.json").read_text())
    assert summary["eval"]["images"] == 4


FT_PROBE = """
import sys
from pathlib import Path
from dmad.compress.train.finetune import FinetuneConfig, finetune
from dmad.compress.train.search import SearchConfig, search
if not Path(sys.argv[2], "DONE.json").exists():
    search(SearchConfig(teacher=sys.argv[4], target_gmacs=0.08, bound_updates=2, steps=4,
                        device="cpu", lr=5e-5, batch_size=2), Path(sys.argv[2]))
finetune(FinetuneConfig(search=sys.argv[2], steps=4, batch_size=int(sys.argv[3]), g_only=True,
                        lambda_features=1.0, device="cpu", log_every=1, checkpoint_every=2,
                        eval_every=0), Path(sys.argv[1]))
"""


def test_feature_adapters_under_two_ranks_train_as_one_process(refs: dict,
                                                                 tmp_path: Path) -> None:
    """The 1×1 feature adapters sit outside DDP: their gradients must be averaged over the
    ranks too, or each rank's adapters would drift apart and the losses differ from one
    process with the global batch (the generator's own weights would still agree)."""
    ft = tmp_path / "ft.py"
    ft.write_text(FT_PROBE)
    search_run, one, two = tmp_path / "search", tmp_path / "f1", tmp_path / "f2"
    _run([sys.executable, str(ft), str(one), str(search_run), "2", str(refs["one"])])
    _run(_torchrun(2, str(ft), str(two), str(search_run), "1", str(refs["one"])))
    assert "feat_AtoB" in _losses(one)[0]
    _assert_losses_close(one, two)
    a = torch.load(one / "checkpoint.pt", weights_only=True)["modules"]
    b = torch.load(two / "checkpoint.pt", weights_only=True)["modules"]
    assert "adapters_AtoB" in a
    _assert_weights_close(a["adapters_AtoB"], b["adapters_AtoB"])
    _assert_weights_close(a["G_AtoB"], b["G_AtoB"])
