"""Issue 25's cases, one named test each, through the real ``dmad`` CLI (a subprocess).

Numbers in the test names are the issue's: 1 data deleting images, 2 export deleting its run,
3 no lock, 4 --resume with nothing to resume, 5 silent overwrites, 6 segfault, 7 tracebacks,
8 silent success on bad input, 9 misleading messages, 10 leftovers of killed exports.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import dmad_cmd
from tests.reliability.conftest import (
    ROOT,
    TINY,
    Corpus,
    Stages,
    cli_environ,
    error_line,
    run_cli,
    snapshot,
)

BENCH = ["--backends", "tflite", "--runs", "1", "--warmup", "0", "--threads", "1"]


def _png(path: Path, seed: int = 0) -> Path:
    arr = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- 1. dmad data never deletes the user's images --------------------------------------------


def test_1_data_refuses_a_folder_of_user_images(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "u" / "unaligned" / "trainA" / f"photo{i}.png", i)
    before = snapshot(tmp_path / "u")
    line = error_line(run_cli("data", "--out", str(tmp_path / "u"), "--size", "32"))
    assert "holds no dataset made by `dmad data`" in line and str(tmp_path / "u") in line
    assert snapshot(tmp_path / "u") == before
    # --force does not change that: --force replaces only a dataset dmad made
    error_line(run_cli("data", "--out", str(tmp_path / "u"), "--size", "32", "--force"))
    assert snapshot(tmp_path / "u") == before


def test_1_data_refuses_a_finished_teacher_run(stages: Stages, tmp_path: Path) -> None:
    run = _copy(stages.teacher, tmp_path / "teacher")
    before = snapshot(run)
    error_line(run_cli("data", "--out", str(run), "--size", "32"))
    assert snapshot(run) == before  # DONE.json of the run untouched


def test_1_data_replaces_its_own_dataset_only_with_force(tmp_path: Path) -> None:
    out = tmp_path / "d"
    assert run_cli("data", "--out", str(out), "--size", "16", "--n-train", "2",
                   "--n-test", "1").returncode == 0
    before = snapshot(out)
    line = error_line(run_cli("data", "--out", str(out), "--size", "32", "--n-train", "2",
                              "--n-test", "1"))
    assert "other settings" in line and snapshot(out) == before
    r = run_cli("data", "--out", str(out), "--size", "32", "--n-train", "2", "--n-test", "1",
                "--force")
    assert r.returncode == 0, r.stderr
    assert Image.open(next((out / "unaligned" / "trainA").glob("*.png"))).size == (32, 32)


# -- 2. --out over an input -----------------------------------------------------------------


@pytest.mark.parametrize("where", ["same", "parent"])
def test_2_export_never_writes_over_the_run_it_exports(stages: Stages, tmp_path: Path,
                                                       where: str) -> None:
    run = _copy(stages.finetune, tmp_path / "runs" / "finetune")
    out = run if where == "same" else run.parent
    before = snapshot(run)
    line = error_line(run_cli("export", "--run", str(run), "--out", str(out), "--force",
                              "--quant", "fp32", "--size", "32"))
    assert ("is the input --run" if where == "same" else "contains the input --run") in line
    assert snapshot(run) == before


def test_2_out_inside_an_input_folder_is_refused(stages: Stages, tmp_path: Path) -> None:
    data = _copy(stages.data, tmp_path / "data")
    line = error_line(run_cli("teacher", "--data", str(data), "--out", str(data / "run"),
                              *TINY, "--steps", "1"))
    assert "is inside the input --data" in line
    assert not (data / "run").exists()


def test_2_import_over_its_own_checkpoint_is_refused(stages: Stages, tmp_path: Path) -> None:
    f = tmp_path / "G.pt"
    shutil.copy(stages.teacher / "G_AtoB.pt", f)
    before = f.read_bytes()
    line = error_line(run_cli("import", str(f), "--out", str(f), "--force"))
    assert "is the input checkpoint" in line and f.read_bytes() == before


# -- 3. one writer per run folder ------------------------------------------------------------


def _teacher_argv(stages: Stages, out: Path, steps: int) -> list[str]:
    return ["teacher", "--data", str(stages.data), "--out", str(out), *TINY, "--steps",
            str(steps), "--checkpoint-every", "1000", "--log-every", "1"]


def test_3_second_writer_gets_one_line_naming_the_holder(stages: Stages, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = subprocess.Popen(dmad_cmd(*_teacher_argv(stages, out, 400)), env=cli_environ(),
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / ".run.dmad-lock"
        deadline = time.time() + 60
        while not (lock.exists() and lock.stat().st_size) and time.time() < deadline:
            time.sleep(0.05)
        assert lock.exists(), "the first run never took its lock"
        line = error_line(run_cli(*_teacher_argv(stages, out, 2)))
        assert "in use by another dmad run" in line and f"pid {first.pid}" in line
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    done = json.loads((out / "DONE.json").read_text())
    assert done["steps"] == 400  # the outputs are the first run's, not a second one's
    assert not lock.exists()  # released at exit


def test_3_stale_lock_of_a_dead_process_is_taken_over(stages: Stages, tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = tmp_path / ".run.dmad-lock"
    lock.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename,
                                "started": "2026-01-01T00:00:00+00:00", "command": "killed"}))
    r = run_cli(*_teacher_argv(stages, tmp_path / "run", 2))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "run" / "DONE.json").is_file() and not lock.exists()


def test_3_a_forked_child_does_not_keep_a_killed_runs_lock(tmp_path: Path) -> None:
    """A DataLoader worker is a fork of the run: after a ``kill -9`` of the run it may live on
    for a while. It must not hold the lock, or ``--resume`` would be refused meanwhile."""
    import sys

    out = tmp_path / "run"
    script = ("import os, sys, time\n"
              "from dmad.compress.runfolder import run_lock\n"
              "with run_lock(sys.argv[1]):\n"
              "    if os.fork() == 0:\n"
              "        time.sleep(60); os._exit(0)\n"
              "    print('locked', flush=True)\n"
              "    time.sleep(60)\n")
    run = subprocess.Popen([sys.executable, "-c", script, str(out)], env=cli_environ(),
                           cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert run.stdout is not None and run.stdout.readline().strip() == "locked"
        # while the run lives, its lock holds
        assert "in use by another dmad run" in error_line(
            run_cli("bench", str(tmp_path / "none.tflite"), "--out", str(out)))
        run.kill()  # kill -9 of the run alone: its forked child lives on
        run.wait()
        r = run_cli("data", "--out", str(out), "--size", "16", "--n-train", "1", "--n-test",
                    "1")
        assert r.returncode == 0, r.stderr[-2000:]
    finally:
        os.killpg(run.pid, signal.SIGKILL)


def test_3_two_spellings_of_one_folder_share_one_lock(tmp_path: Path) -> None:
    from dmad.compress.runfolder import lock_path

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert lock_path(tmp_path / "link") == lock_path(tmp_path / "real")
    assert lock_path(tmp_path / "real" / ".." / "real") == lock_path(tmp_path / "real")


def test_3_a_refused_command_leaves_no_folder_behind(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "bench"
    error_line(run_cli("bench", str(tmp_path / "missing.tflite"), "--out", str(out)))
    assert list(tmp_path.iterdir()) == []


# -- 4. --resume with nothing to resume ------------------------------------------------------


@pytest.mark.parametrize("stage", ["teacher", "search", "finetune", "compress"])
def test_4_resume_of_an_empty_folder_is_an_error(stage: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    line = error_line(run_cli(stage, "--out", str(empty), "--resume"))
    assert "nothing to resume" in line and str(empty) in line
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("stage", ["teacher", "search", "finetune"])
def test_4_resume_of_a_finished_run_changes_nothing(stage: str, stages: Stages,
                                                    tmp_path: Path) -> None:
    run = _copy(getattr(stages, stage), tmp_path / stage)
    before = snapshot(run)
    r = run_cli(stage, "--out", str(run), "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "finished already, nothing to resume" in r.stderr
    assert snapshot(run) == before


# -- 5. no silent overwrites -----------------------------------------------------------------


def test_5_bench_keeps_earlier_results_without_force(corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "b"
    assert run_cli("bench", corpus.tflite, "--out", str(out), *BENCH).returncode == 0
    before = snapshot(out)
    line = error_line(run_cli("bench", corpus.tflite, "--out", str(out), *BENCH))
    assert "earlier benchmark results" in line and "--force" in line
    assert snapshot(out) == before
    assert run_cli("bench", corpus.tflite, "--out", str(out), *BENCH, "--force").returncode == 0
    assert snapshot(out) != before


def test_5_compare_keeps_earlier_results_without_force(corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "c"
    argv = ["compare", "--full", corpus.tflite, "--compressed", corpus.tflite, "--out",
            str(out), *BENCH]
    assert run_cli(*argv).returncode == 0
    before = snapshot(out)
    assert "earlier comparison results" in error_line(run_cli(*argv))
    assert snapshot(out) == before


def test_5_eval_keeps_earlier_results_without_force(corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "e"
    argv = ["eval", "--student", corpus.student_g, "--teacher", corpus.teacher_g, "--images",
            corpus.images, "--size", "32", "--device", "cpu", "--out", str(out)]
    assert run_cli(*argv).returncode == 0
    before = snapshot(out)
    assert "earlier evaluation results" in error_line(run_cli(*argv))
    assert snapshot(out) == before
    assert run_cli(*argv, "--force").returncode == 0


def test_5_import_keeps_an_existing_model_file(stages: Stages, tmp_path: Path) -> None:
    out = tmp_path / "mine.pt"
    out.write_bytes(b"the user's own file")
    line = error_line(run_cli("import", str(stages.teacher / "G_AtoB.pt"), "--out", str(out)))
    assert "exists; use --force" in line and out.read_bytes() == b"the user's own file"


# -- 6. a corrupt .tflite never kills the harness --------------------------------------------


def test_6_corrupt_tflite_is_one_line_not_a_segfault(corpus: Corpus, tmp_path: Path) -> None:
    src = Path(corpus.tflite).read_bytes()
    rng = np.random.default_rng(0)
    for i in range(4):
        b = bytearray(src)
        for pos in rng.integers(8, 4096, 20):
            b[int(pos)] = int(rng.integers(0, 256))
        f = tmp_path / f"bad{i}.tflite"
        f.write_bytes(bytes(b))
        r = run_cli("bench", str(f), "--out", str(tmp_path / f"o{i}"), *BENCH)
        line = error_line(r, only_line=False)
        assert str(f) in line and "tflite" in line
        assert not (tmp_path / f"o{i}").exists()


# -- 7. tracebacks become one line -----------------------------------------------------------


@pytest.mark.parametrize("cmd", ["macs", "import", "bench", "eval", "latency-table"])
def test_7_a_text_file_as_checkpoint(cmd: str, corpus: Corpus, tmp_path: Path) -> None:
    x = tmp_path / "x.pt"
    x.write_text("hello\n")
    argv = {"macs": ["macs", str(x)],
            "import": ["import", str(x), "--out", str(tmp_path / "m.pt")],
            "bench": ["bench", str(x), "--out", str(tmp_path / "b"), "--backends", "torch"],
            "eval": ["eval", "--student", str(x), "--teacher", corpus.teacher_g, "--images",
                     corpus.images, "--out", str(tmp_path / "e")],
            "latency-table": ["latency-table", "--generator", str(x), "--out",
                              str(tmp_path / "t.json")]}[cmd]
    line = error_line(run_cli(*argv))
    assert f"{x}: is a text file, not a PyTorch checkpoint" in line


def test_7_one_byte_prefixed_checkpoints(stages: Stages, tmp_path: Path) -> None:
    body = (stages.teacher / "G_AtoB.pt").read_bytes()
    for b in (0, 0x80, ord("P"), 0xFF, ord("{")):
        f = tmp_path / f"p{b}.pt"
        f.write_bytes(bytes([b]) + body)
        assert str(f) in error_line(run_cli("macs", str(f)))


@pytest.mark.parametrize("content", [b"\x00\x01\x02binary", b'{"format": "dmad-split"}',
                                     b'{"format": "dmad-split", "root": 1, "layout": "x", '
                                     b'"train": "a", "val": [], "val_source": ""}', b"[]"])
@pytest.mark.parametrize("cmd", ["eval", "export"])
def test_7_corrupt_split_json(cmd: str, content: bytes, corpus: Corpus, tmp_path: Path) -> None:
    split = tmp_path / "split.json"
    split.write_bytes(content)
    argv = {"eval": ["eval", "--student", corpus.student_g, "--teacher", corpus.teacher_g,
                     "--images", str(split), "--size", "32", "--out", str(tmp_path / "e")],
            "export": ["export", "--model", corpus.student_g, "--split", str(split), "--out",
                       str(tmp_path / "x"), "--quant", "fp32", "--size", "32"]}[cmd]
    assert str(split) in error_line(run_cli(*argv))
    assert not (tmp_path / "e").exists() and not (tmp_path / "x").exists()


def test_7_corrupt_split_json_in_compress_resume(compress_run: Path, tmp_path: Path) -> None:
    run = _copy(compress_run, tmp_path / "run")
    (run / "DONE.json").unlink()
    for content in (b"\xff\xfe garbage", b'{"format": "dmad-split", "train": 3}'):
        (run / "split.json").write_bytes(content)
        before = snapshot(run)
        line = error_line(run_cli("compress", "--out", str(run), "--resume"))
        assert "split.json" in line
        assert snapshot(run) == before
    (run / "compress.json").write_text("[1, 2]")
    assert "compress.json" in error_line(run_cli("compress", "--out", str(run), "--resume"))


@pytest.mark.parametrize("cmd,flag,value", [("search", "--target-gmacs", "inf"),
                                            ("search", "--target-gmacs", "nan"),
                                            ("teacher", "--lr", "nan"),
                                            ("teacher", "--lr", "-inf")])
def test_7_non_finite_numbers(cmd: str, flag: str, value: str, stages: Stages,
                              tmp_path: Path) -> None:
    out = tmp_path / "o"
    argv = ["search", "--teacher", str(stages.teacher), f"{flag}={value}"] if cmd == "search" \
        else ["teacher", "--data", str(stages.data), f"{flag}={value}"]
    line = error_line(run_cli(*argv, "--out", str(out)))
    assert "finite" in line and flag.strip("-").replace("-", "_") in line
    assert not out.exists()


@pytest.mark.parametrize("size", ["7", "8"])
def test_7_eval_size_below_the_ssim_window(size: str, corpus: Corpus, tmp_path: Path) -> None:
    line = error_line(run_cli("eval", "--student", corpus.student_g, "--teacher",
                              corpus.teacher_g, "--images", corpus.images, "--size", size,
                              "--out", str(tmp_path / "e")))
    assert "SSIM window" in line
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("cmd", ["bench", "compare"])
def test_7_out_is_a_file_fails_before_measuring(cmd: str, corpus: Corpus, tmp_path: Path) -> None:
    f = tmp_path / "results"
    f.write_text("mine")
    argv = ["bench", corpus.tflite] if cmd == "bench" else [
        "compare", "--full", corpus.tflite, "--compressed", corpus.tflite]
    r = run_cli(*argv, "--out", str(f), *BENCH)
    assert "exists and is a file" in error_line(r)
    assert "tflite-xnnpack" not in r.stderr  # refused before any timing started
    assert f.read_text() == "mine"


def test_7_write_failure_keeps_the_results(corpus: Corpus, tmp_path: Path) -> None:
    """Under ``ulimit -f`` the results files cannot be written: one line, and the measurements
    are in a temporary file it names."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    r = subprocess.run(dmad_cmd("bench", corpus.tflite, "--out", str(tmp_path / "b"), *BENCH),
                       env=cli_environ(), cwd=ROOT, capture_output=True, text=True,
                       preexec_fn=limit, timeout=300)
    line = error_line(r, only_line=False)
    assert "results.json: cannot be written (File too large)" in line
    # the limit holds for every file, the temporary folder's too: the results come on stdout
    assert "printed on stdout" in line
    assert json.loads(r.stdout[r.stdout.index("{"):])["results"]


def _crafted(stages: Stages, tmp_path: Path, name: str, change) -> Path:  # type: ignore[no-untyped-def]
    obj = torch.load(stages.teacher / "G_AtoB.pt", weights_only=True)
    change(obj)
    f = tmp_path / f"{name}.pt"
    torch.save(obj, f)
    return f


@pytest.mark.parametrize("name,change,says", [
    ("meta-string", lambda o: o.__setitem__("meta", "x"), "'meta' is not a table"),
    ("widths-string", lambda o: o["spec"].__setitem__("widths", "abc"), "invalid model spec"),
    ("state-none", lambda o: o.__setitem__("state_dict", None), "'state_dict' is not a table"),
    ("state-list", lambda o: o.__setitem__("state_dict", [1, 2]), "'state_dict' is not a table"),
    ("huge-ngf", lambda o: o["spec"].__setitem__("ngf", 10**9), "spec"),
])
@pytest.mark.parametrize("cmd", ["macs", "export", "eval"])
def test_7_crafted_model_files(name: str, change, says: str, cmd: str,  # type: ignore[no-untyped-def]
                               stages: Stages, corpus: Corpus, tmp_path: Path) -> None:
    f = _crafted(stages, tmp_path, name, change)
    argv = {"macs": ["macs", str(f)],
            "export": ["export", "--model", str(f), "--out", str(tmp_path / "x"), "--size",
                       "32", "--quant", "fp32"],
            "eval": ["eval", "--student", str(f), "--teacher", corpus.teacher_g, "--images",
                     corpus.images, "--out", str(tmp_path / "e")]}[cmd]
    line = error_line(run_cli(*argv))
    assert says in line and str(f) in line


@pytest.mark.parametrize("cmd", ["macs", "export", "bench", "data", "teacher"])
def test_7_size_beyond_memory(cmd: str, corpus: Corpus, stages: Stages, tmp_path: Path) -> None:
    argv = {"macs": ["macs", "--size", "100000"],
            "export": ["export", "--model", corpus.student_g, "--out", str(tmp_path / "x"),
                       "--size", "100000"],
            "bench": ["bench", corpus.student_g, "--out", str(tmp_path / "b"), "--size",
                      "100000"],
            "data": ["data", "--out", str(tmp_path / "d"), "--size", "100000"],
            "teacher": ["teacher", "--data", str(stages.data), "--out", str(tmp_path / "t"),
                        "--size", "100000"]}[cmd]
    line = error_line(run_cli(*argv))
    assert "too large for this machine's" in line and "GiB of memory" in line
    assert list(tmp_path.iterdir()) == []


# -- 8. silent success on bad input ----------------------------------------------------------


def test_8_import_of_an_all_nan_state_dict(stages: Stages, tmp_path: Path) -> None:
    sd = torch.load(stages.teacher / "G_AtoB.pt", weights_only=True)["state_dict"]
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
           for k, v in sd.items()}
    f = tmp_path / "nan.pth"
    torch.save(nan, f)
    line = error_line(run_cli("import", str(f), "--out", str(tmp_path / "m.pt")))
    assert "holds NaN/inf values" in line and not (tmp_path / "m.pt").exists()


def _nan_model(stages: Stages, tmp_path: Path) -> Path:
    def poison(o: dict) -> None:
        key = next(k for k, v in o["state_dict"].items() if v.is_floating_point())
        o["state_dict"][key] = torch.full_like(o["state_dict"][key], float("nan"))

    return _crafted(stages, tmp_path, "nan-model", poison)


def test_8_eval_of_a_nan_model_writes_no_invalid_json(stages: Stages, corpus: Corpus,
                                                      tmp_path: Path) -> None:
    f = _nan_model(stages, tmp_path)
    line = error_line(run_cli("eval", "--student", str(f), "--teacher", corpus.teacher_g,
                              "--images", corpus.images, "--out", str(tmp_path / "e")))
    assert "NaN/inf" in line and str(f) in line
    assert not (tmp_path / "e" / "eval.json").exists()


def test_8_compare_grid_must_be_a_png(corpus: Corpus, tmp_path: Path) -> None:
    grid = tmp_path / "grid.png"
    grid.write_text("not a picture")
    r = run_cli("compare", "--full", corpus.tflite, "--compressed", corpus.tflite, "--grid",
                str(grid), "--out", str(tmp_path / "c"), *BENCH)
    assert "is a text file, expected a PNG image" in error_line(r)
    assert "tflite-xnnpack" not in r.stderr


def test_8_bench_size_the_generator_cannot_take(corpus: Corpus, tmp_path: Path) -> None:
    line = error_line(run_cli("bench", corpus.student_g, "--out", str(tmp_path / "b"),
                              "--backends", "torch", "--size", "7"))
    assert "not a multiple of 4" in line


# -- 9. messages that say what is wrong ------------------------------------------------------


@pytest.mark.parametrize("content,says", [
    (b"<!DOCTYPE html><html><body>Sign in</body></html>", "an HTML page"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n",
     "a Git LFS pointer"),
    (b'{"state_dict": {}}', "a JSON file"),
    (bytes(range(7, 250)) * 3, "not a PyTorch file"),
])
def test_9_what_the_file_is(content: bytes, says: str, tmp_path: Path) -> None:
    f = tmp_path / "latest_net_G.pth"
    f.write_bytes(content)
    line = error_line(run_cli("import", str(f), "--out", str(tmp_path / "m.pt")))
    assert says in line and "pickled code" not in line


def test_9_an_onnx_file_as_checkpoint(corpus: Corpus, tmp_path: Path) -> None:
    f = tmp_path / "model.pth"
    shutil.copy(corpus.root / "export" / "generator.onnx", f)
    assert "an ONNX model" in error_line(run_cli("macs", str(f)))


def test_9_nan_model_export_names_the_model(stages: Stages, tmp_path: Path) -> None:
    f = _nan_model(stages, tmp_path)
    line = error_line(run_cli("export", "--model", str(f), "--out", str(tmp_path / "x"),
                              "--size", "32", "--quant", "fp32"))
    assert str(f) in line and "generator.onnx" not in line


def test_9_nan_teacher_search_blames_the_teacher(stages: Stages, tmp_path: Path) -> None:
    f = _nan_model(stages, tmp_path)
    line = error_line(run_cli("search", "--teacher", str(f), "--data", str(stages.data),
                              "--target-gmacs", "0.05", "--out", str(tmp_path / "s")))
    assert "NaN/inf" in line and "learning rate" not in line


def test_9_config_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    line = error_line(run_cli("teacher", "--config", str(tmp_path / "cfg"), "--out",
                              str(tmp_path / "t")))
    assert "is a folder, expected a TOML or JSON config file" in line


def test_9_export_false_names_no_tflite_folder(compress_run: Path) -> None:
    log = (compress_run / "stdout.txt").read_text()
    assert "compressed generator:" in log and ".tflite files in" not in log


def test_9_onnx_int8_summary_lists_its_file(stages: Stages, tmp_path: Path) -> None:
    r = run_cli("export", "--model", str(stages.finetune / "student_G_AtoB.pt"), "--out",
                str(tmp_path / "x"), "--size", "32", "--quant", "onnx-int8", "--calib",
                str(stages.data / "unaligned" / "trainA"), "--num-calib", "2", "--num-eval", "2",
                timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "generator_int8.onnx" in r.stdout.splitlines()[-1]


# -- 10. staging folders of killed exports ---------------------------------------------------


def test_10_killed_export_leaves_nothing_after_the_next_run(stages: Stages,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "x"
    argv = ["export", "--model", str(stages.finetune / "student_G_AtoB.pt"), "--out", str(out),
            "--size", "32", "--quant", "fp32", "--num-eval", "2"]
    p = subprocess.Popen(dmad_cmd(*argv), env=cli_environ(), cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".x.dmad-tmp-*")) and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert list(tmp_path.glob(".x.dmad-tmp-*")), "the kill did not land during the export"
    r = run_cli(*argv, "--force", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not list(tmp_path.glob(".x.dmad-*"))
    assert (out / "generator_fp32.tflite").is_file()


def test_10_partial_writes_of_a_killed_run_are_dropped_on_resume(stages: Stages,
                                                                 tmp_path: Path) -> None:
    run = _copy(stages.teacher, tmp_path / "teacher")
    (run / "DONE.json").unlink()
    partial = run / ".checkpoint.pt.k1ll3d.tmp"
    partial.write_bytes(b"half a checkpoint")
    r = run_cli("teacher", "--out", str(run), "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not partial.exists() and (run / "DONE.json").is_file()
