"""``dmad bench --android`` end to end against the loopback emulated phone, via the real adb client.

Covers a full run (push, chmod, per-delegate/threads runs, parsing, fallback flags, thermal and
device properties, cleanup), quoting of hostile file names, and every error the issue lists.
"""

# Fixtures imported from tests.adbdevice.fixtures reappear as test arguments:
# ruff: noqa: F811
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmad.benchmark.adb import Adb, AndroidConfig, SweepAborted, run_android, shell_join
from dmad.cli import main
from dmad.compress.errors import DmadError
from tests.adbdevice import EmulatedAdbServer
from tests.adbdevice.fixtures import (  # noqa: F401 - pytest fixtures
    adb_server,
    bench_models,
    env_for,
    standin_binary,
)


def _cfg(models: list[Path], binary: Path, **kw: object) -> AndroidConfig:
    base: dict[str, object] = {"runs": 3, "warmup": 1, "cooldown_s": 0.0, "threads": (1,)}
    base.update(kw)
    return AndroidConfig(models=models, benchmark_binary=binary, **base)  # type: ignore[arg-type]


def _device_files(server: EmulatedAdbServer, serial: str) -> list[str]:
    root = next(d.root for d in server.devices if d.serial == serial)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_full_run_every_delegate(adb_server: EmulatedAdbServer, bench_models: dict[str, Path],
                                 standin_binary: Path, tmp_path: Path) -> None:
    dev = adb_server.add_device("emu-1", thermal_status=0)
    # A hostile but legal file name: it must reach the phone as one argument.
    hostile = tmp_path / "my model;rm -rf $(x) `y`.tflite"
    shutil.copy(bench_models["wide_tflite"], hostile)
    got = run_android(_cfg([hostile, bench_models["narrow_tflite"]], standin_binary,
                           delegates=("cpu", "xnnpack", "gpu", "nnapi"), threads=(1, 2),
                           taskset="f0"), log_dir=tmp_path / "logs")
    res = got["results"]
    assert len(res) == 4 * 2 * 2
    assert got["device"]["props"]["ro.product.model"] == "Emulated Pixel"
    assert got["device"]["sdk"] == 35
    by = {(Path(r["path"]).name, r["delegate"], r["threads"]): r for r in res}
    cpu = by[(hostile.name, "cpu", 1)]
    assert cpu["median_ms"] > 0 and cpu["runs"] == 3 and cpu["flags"] == []
    assert cpu["thermal_before"]["status"] == 0 and cpu["thermal_after"]["status_name"] == "none"
    xnn = by[(hostile.name, "xnnpack", 2)]
    assert xnn["coverage"][0]["delegate"] == "TfLiteXNNPackDelegate"
    # MIRROR_PAD is not taken by XNNPACK: partial delegation must be flagged.
    assert any(f.startswith("partially delegated: 3 of 4") for f in xnn["flags"])
    assert any(f.startswith("FELL BACK TO CPU") for f in by[(hostile.name, "gpu", 1)]["flags"])
    nn = by[(hostile.name, "nnapi", 1)]["flags"]
    assert any("FELL BACK TO CPU" in f for f in nn)
    assert any("deprecated since Android 15 (this device: SDK 35)" in f for f in nn)
    # Every command went through the strict shell (no refusals), pinned with taskset.
    runs = [c for c in dev.commands if "--graph=" in c]
    assert runs and all(c.startswith("taskset f0 ") for c in runs)
    assert all("refusing" not in Path(r["log"]).read_text() for r in res)
    # Models interleaved per setting: wide, narrow, wide, narrow ...
    order = [Path(r["path"]).name for r in res[:4]]
    assert order == [hostile.name, "narrow_fp32.tflite"] * 2
    # What was pushed is gone.
    assert _device_files(adb_server, "emu-1") == []


def test_rounds_alternate_the_models_on_the_phone(adb_server: EmulatedAdbServer,
                                                   bench_models: dict[str, Path],
                                                   standin_binary: Path, tmp_path: Path) -> None:
    dev = adb_server.add_device("emu-r")
    models = [bench_models["wide_tflite"], bench_models["narrow_tflite"]]
    got = run_android(_cfg(models, standin_binary, rounds=3, delegates=("cpu",)),
                      log_dir=tmp_path / "logs")
    res = got["results"]
    # one setting, three rounds: wide narrow wide narrow wide narrow, each a benchmark_model run
    assert [(Path(r["path"]).name, r["round"]) for r in res] == [
        (m.name, k) for k in (1, 2, 3) for m in models]
    graphs = [c.split("--graph=")[1].split()[0] for c in dev.commands if "--graph=" in c]
    assert len(graphs) == 6 and graphs[0] != graphs[1] and graphs[0] == graphs[2]
    assert len({r["log"] for r in res}) == 6  # one log per run, none overwritten
    with pytest.raises(DmadError, match="--android-rounds"):
        run_android(_cfg(models, standin_binary, rounds=0))


def test_quoting_reaches_the_phone_as_one_argument(adb_server: EmulatedAdbServer) -> None:
    adb_server.add_device("emu-1")
    adb = Adb(shutil.which("adb") or "adb", serial="emu-1")
    rc, out = adb.shell(["echo", "a b;c", "$(id)", "`x`", "'q'"])
    assert rc == 0 and out == "a b;c $(id) `x` 'q'\n"
    # The same text unquoted is refused by the emulated shell: proof the check has teeth.
    r = adb.run("shell", "echo a;id")
    assert r.returncode == 2 and "refusing unquoted ';'" in r.stderr
    assert shell_join(["rm", "-f", "x y"]) == "rm -f 'x y'"


def test_cli_android_end_to_end(adb_server: EmulatedAdbServer, bench_models: dict[str, Path],
                                standin_binary: Path, tmp_path: Path) -> None:
    adb_server.add_device("emu-1")
    adb_server.add_device("emu-2")
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "dmad", "bench", str(bench_models["narrow_tflite"]),
         "--android", "--no-host", "--serial", "emu-2", "--delegate", "xnnpack",
         "--threads", "1", "--runs", "2", "--warmup", "1", "--cooldown", "0",
         "--benchmark-binary", str(standin_binary), "--out", str(out)],
        env=env_for(adb_server), capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    import json

    data = json.loads((out / "results.json").read_text())
    assert data["android_device"]["serial"] == "emu-2"
    assert [x["backend"] for x in data["results"]] == ["android-xnnpack"]
    assert "android-xnnpack" in (out / "results.csv").read_text()
    assert "partially delegated" in (out / "results.md").read_text()
    assert (out / "android_logs" / "0_narrow_fp32_xnnpack_1t.log").is_file()


# -- errors ------------------------------------------------------------------------------------


def _err(cfg: AndroidConfig) -> str:
    with pytest.raises(DmadError) as ei:
        run_android(cfg)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_adb_missing(bench_models: dict[str, Path], standin_binary: Path,
                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    for var in ("ADB", "ADBUTILS_ADB_PATH"):
        monkeypatch.delenv(var, raising=False)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "adbutils" else real(n, *a))
    msg = _err(_cfg([bench_models["narrow_tflite"]], standin_binary))
    assert msg.startswith("adb not found") and "apt-get install adb" in msg
    msg = _err(_cfg([bench_models["narrow_tflite"]], standin_binary, adb=str(tmp_path / "nope")))
    assert "not an executable file" in msg


@pytest.mark.parametrize(
    ("setup", "serial", "expected"),
    [
        ([], None, "no Android device found"),
        ([("a", "unauthorized")], None, "device a is unauthorized: unlock it and accept"),
        ([("a", "offline")], None, "device a is offline: reconnect"),
        ([("a", "device"), ("b", "device")], None, "several devices attached (a (device), b "
                                                   "(device)): choose one with --serial"),
        ([("a", "device")], "zz", "--serial zz: no such device (attached: a)"),
    ],
)
def test_device_selection_errors(adb_server: EmulatedAdbServer, bench_models: dict[str, Path],
                                 standin_binary: Path, setup: list[tuple[str, str]],
                                 serial: str | None, expected: str) -> None:
    for s, state in setup:
        adb_server.add_device(s, state=state)
    msg = _err(_cfg([bench_models["narrow_tflite"]], standin_binary, serial=serial))
    assert expected in msg


def test_push_failure_is_reported_and_cleaned(adb_server: EmulatedAdbServer,
                                              bench_models: dict[str, Path],
                                              standin_binary: Path) -> None:
    adb_server.add_device("a", push_error="couldn't create file: No space left on device")
    msg = _err(_cfg([bench_models["narrow_tflite"]], standin_binary))
    assert msg.startswith(f"push of {standin_binary} to a:/data/local/tmp/dmad-bench-")
    assert "No space left on device" in msg
    assert _device_files(adb_server, "a") == []


def test_binary_missing_or_not_executable(adb_server: EmulatedAdbServer,
                                          bench_models: dict[str, Path], standin_binary: Path,
                                          tmp_path: Path) -> None:
    m = [bench_models["narrow_tflite"]]
    msg = _err(_cfg(m, tmp_path / "nope"))
    assert "--benchmark-binary" in msg and "no such file" in msg and "storage.googleapis" in msg
    text = tmp_path / "readme.txt"
    text.write_text("not a program")
    assert "no ELF header" in _err(_cfg(m, text))
    # noexec: chmod does not stick on the phone
    adb_server.add_device("a", noexec=True)
    msg = _err(_cfg(m, standin_binary))
    assert "not executable on a" in msg and "Permission denied" in msg
    assert _device_files(adb_server, "a") == []
    # A binary for the wrong machine (an ELF the phone cannot run).
    adb_server.devices.clear()
    adb_server.add_device("b")
    elf = tmp_path / "x86_benchmark_model"
    elf.write_bytes(b"\x7fELF" + b"\0" * 60)
    assert "not executable: 64-bit ELF file" in _err(_cfg(m, elf))


def test_nonzero_exit_and_garbage_are_rows_with_their_reason(
        adb_server: EmulatedAdbServer, bench_models: dict[str, Path], standin_binary: Path,
        tmp_path: Path) -> None:
    dev = adb_server.add_device("a", bench_exit=3)
    m = [bench_models["narrow_tflite"]]
    (row,) = run_android(_cfg(m, standin_binary, delegates=("cpu",)),
                         log_dir=tmp_path)["results"]
    assert row["status"] == "failed" and row["median_ms"] is None
    assert "exited with status 3 for narrow_fp32.tflite (cpu, 1 threads)" in row["error"]
    assert "Failed to allocate tensors" in row["error"] and "log:" in row["error"]
    assert row["flags"] == [f"FAILED: {row['error']}"]
    dev.bench_exit, dev.bench_garbage = None, True
    (row,) = run_android(_cfg(m, standin_binary, delegates=("cpu",)))["results"]
    assert row["status"] == "failed" and "unparsable output" in row["error"]
    assert "Hello from a program" in row["error"]
    assert _device_files(adb_server, "a") == []


def test_a_failing_gpu_run_keeps_every_other_result(
        adb_server: EmulatedAdbServer, bench_models: dict[str, Path], standin_binary: Path,
        tmp_path: Path) -> None:
    """The classic tool exits 1 on "Failed to apply GPU delegate.": that run is a row naming
    it, the sweep goes on, and the host results of the same command are kept."""
    adb_server.add_device("emu-g", fail_delegate="gpu")
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "dmad", "bench", str(bench_models["wide_tflite"]),
         str(bench_models["narrow_tflite"]), "--android", "--delegate", "cpu,gpu,xnnpack",
         "--backends", "tflite", "--threads", "1", "--runs", "2", "--warmup", "1",
         "--cooldown", "0", "--benchmark-binary", str(standin_binary), "--out", str(out)],
        env=env_for(adb_server), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import json

    data = json.loads((out / "results.json").read_text())
    phone = [x for x in data["results"] if x.get("platform") == "android"]
    assert len(phone) == 6 and any(x.get("platform") != "android" for x in data["results"])
    failed = [x for x in phone if x["status"] == "failed"]
    assert {x["delegate"] for x in failed} == {"gpu"} and len(failed) == 2
    assert all("ERROR: Failed to apply GPU delegate." in x["error"] for x in failed)
    assert all(x["median_ms"] > 0 for x in phone if x["delegate"] != "gpu")
    md = (out / "results.md").read_text()
    assert "2 run(s) failed" in md and "Failed to apply GPU delegate" in md
    # every row was on disk as it arrived
    lines = (out / "android_logs" / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["status"] for x in lines] == [x["status"] for x in phone]


def test_a_hung_run_is_killed_on_the_phone(adb_server: EmulatedAdbServer,
                                           bench_models: dict[str, Path],
                                           standin_binary: Path, tmp_path: Path) -> None:
    dev = adb_server.add_device("emu-h", hang_s=60.0, hang_graph="wide")
    models = [bench_models["wide_tflite"], bench_models["narrow_tflite"]]
    got = run_android(_cfg(models, standin_binary, timeout_s=4.0, delegates=("cpu",)),
                      log_dir=tmp_path / "logs")
    hung, ok = got["results"]
    assert hung["status"] == "failed" and "no result within 4 s" in hung["error"]
    assert "benchmark_model killed on the phone (pid 4242)" in hung["error"]
    assert dev.killed == [4242] and "kill -9 4242" in dev.commands
    assert any(c.startswith("pgrep -f ") and "dmad-bench-" in c for c in dev.commands)
    assert ok["status"] == "ok" and ok["median_ms"] > 0  # the sweep went on
    deadline = time.monotonic() + 10
    while dev.procs and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dev.procs == {}  # nothing left running on the phone
    assert _device_files(adb_server, "emu-h") == []


def test_same_named_files_stay_apart(adb_server: EmulatedAdbServer,
                                     bench_models: dict[str, Path], standin_binary: Path,
                                     tmp_path: Path) -> None:
    dev = adb_server.add_device("emu-n")
    paths = []
    for d, src in (("a", "wide_tflite"), ("b", "narrow_tflite")):
        (tmp_path / d).mkdir()
        paths.append(tmp_path / d / "model.tflite")
        shutil.copy(bench_models[src], paths[-1])
    res = run_android(_cfg(paths, standin_binary, delegates=("cpu",)),
                      log_dir=tmp_path / "logs")["results"]
    assert [r["model"] for r in res] == ["a/model.tflite", "b/model.tflite"]
    assert [r["path"] for r in res] == [str(p) for p in paths]
    logs = sorted(p.name for p in (tmp_path / "logs").glob("*.log"))
    assert logs == ["0_model_cpu_1t.log", "1_model_cpu_1t.log"]
    graphs = [c.split("--graph=")[1].split()[0] for c in dev.commands if "--graph=" in c]
    assert len(set(graphs)) == 2


def test_thermal_wait_and_the_phone_state_per_run(adb_server: EmulatedAdbServer,
                                                  bench_models: dict[str, Path],
                                                  standin_binary: Path) -> None:
    m = [bench_models["narrow_tflite"]]
    dev = adb_server.add_device("emu-t", thermal_statuses=[2, 2, 0])
    (row,) = run_android(_cfg(m, standin_binary, thermal_wait_s=30.0, thermal_poll_s=0.2,
                              delegates=("cpu",)))["results"]
    assert row["thermal_before"]["status"] == 0 and row["thermal_wait_s"] >= 0.3
    assert not any("thermal" in f for f in row["flags"])
    assert row["cpu_clocks"]["policy4"] == {"cpus": "4 5 6", "governor": "schedutil",
                                            "cur_khz": 2419200, "max_khz": 2419200}
    assert row["battery"] == {"level_pct": 87.0, "temperature_c": 31.2, "status": "charging",
                              "powered": ["USB"]}
    dev.thermal_status = 3  # a phone that never cools: waited on up to the cap, then said
    (row,) = run_android(_cfg(m, standin_binary, thermal_wait_s=0.5, thermal_poll_s=0.2,
                              delegates=("cpu",)))["results"]
    assert row["status"] == "ok" and 0.5 <= row["thermal_wait_s"] < 5
    assert any(f.startswith("thermal status severe before the run") for f in row["flags"])


def test_precision_per_delegate_and_unknown_flags_stop_the_sweep(
        adb_server: EmulatedAdbServer, bench_models: dict[str, Path], standin_binary: Path,
        tmp_path: Path) -> None:
    adb_server.add_device("emu-p")
    m = [bench_models["narrow_tflite"]]
    res = run_android(_cfg(m, standin_binary, delegates=("cpu", "gpu")))["results"]
    assert [r["precision"] for r in res] == ["fp32", "fp16"]  # the GPU delegate runs fp16
    res = run_android(_cfg(m, standin_binary, delegates=("gpu",),
                           extra_args=("--gpu_precision_loss_allowed=false",)))["results"]
    assert res[0]["precision"] == "fp32"
    # a flag the binary does not know: the real tool only warns and runs on; here it stops
    with pytest.raises(SweepAborted, match="ignored flags it does not know: --bogus=1"):
        run_android(_cfg(m, standin_binary, delegates=("cpu",), extra_args=("--bogus=1",)))
    assert _device_files(adb_server, "emu-p") == []


def test_the_profiling_run_is_separate_and_reaches_the_report(
        adb_server: EmulatedAdbServer, bench_models: dict[str, Path], standin_binary: Path,
        tmp_path: Path) -> None:
    dev = adb_server.add_device("emu-o")
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "dmad", "bench", str(bench_models["narrow_tflite"]),
         "--android", "--no-host", "--delegate", "cpu", "--threads", "1", "--runs", "3",
         "--warmup", "1", "--cooldown", "0", "--op-profiling",
         "--benchmark-binary", str(standin_binary), "--out", str(out)],
        env=env_for(adb_server), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    runs = [c for c in dev.commands if "--graph=" in c]
    assert len(runs) == 2 and "--enable_op_profiling" not in runs[0]
    assert "--enable_op_profiling=true" in runs[1]
    import json

    (row,) = json.loads((out / "results.json").read_text())["results"]
    ops = row["op_profile"]
    # every op of the graph in execution order (the stand-in profiles without the delegate)
    assert [o["node_type"] for o in ops] == ["CONV_2D", "MIRROR_PAD", "CONV_2D", "TANH"]
    assert all(o["name"].startswith("[") for o in ops)
    assert abs(ops[-1]["cdf_percent"] - 100.0) < 0.5
    md = (out / "results.md").read_text()
    assert "Per layer: narrow_fp32.tflite, Android cpu, 1 thread(s)" in md
    assert ops[0]["name"].replace("|", "\\|") in md


def test_the_compiled_model_tool_and_its_accelerator_lines(
        adb_server: EmulatedAdbServer, bench_models: dict[str, Path], tmp_path: Path) -> None:
    from tests.adbdevice import write_standin_binary

    binary = write_standin_binary(tmp_path / "benchmark_model", tool="compiled")
    dev = adb_server.add_device("emu-c")
    m = [bench_models["narrow_tflite"]]
    cpu, gpu = run_android(_cfg(m, binary, tool="compiled", delegates=("cpu", "gpu")))["results"]
    assert cpu["status"] == "ok" and cpu["latency_stat"] == "avg" and cpu["latency_ms"] > 0
    assert cpu["init_ms"] > 0 and cpu["flags"] == []
    assert gpu["flags"] == ["FELL BACK TO CPU: WARNING: [gpu_registry.cc:91] GPU accelerator "
                            "could not be loaded and registered."]
    dev.gpu = True  # the runtime registers a GPU accelerator: no false fallback flag
    (gpu,) = run_android(_cfg(m, binary, tool="compiled", delegates=("gpu",)))["results"]
    assert gpu["flags"] == []


def test_bad_settings_refused_before_the_phone(bench_models: dict[str, Path],
                                               standin_binary: Path, tmp_path: Path) -> None:
    m = [bench_models["narrow_tflite"]]
    assert "unknown delegate 'tpu'" in _err(_cfg(m, standin_binary, delegates=("tpu",)))
    assert "hex CPU mask" in _err(_cfg(m, standin_binary, taskset="big"))
    assert "phones run .tflite" in _err(_cfg([bench_models["full_onnx"]], standin_binary))
    assert "needs the LiteRT CompiledModel" in _err(_cfg(m, standin_binary, delegates=("npu",)))


def test_cli_error_is_one_line(tmp_path: Path, bench_models: dict[str, Path],
                               capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", str(bench_models["narrow_tflite"]), "--android", "--no-host",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--android needs --benchmark-binary" in err


def test_a_phone_that_goes_away_keeps_the_rows_so_far(
        adb_server: EmulatedAdbServer, bench_models: dict[str, Path], standin_binary: Path,
        tmp_path: Path) -> None:
    adb_server.add_device("emu-x")
    models = [bench_models["wide_tflite"], bench_models["narrow_tflite"]]
    with pytest.raises(SweepAborted, match="emu-x") as ei:
        run_android(_cfg(models, standin_binary, delegates=("cpu",)),
                    on_result=lambda row: adb_server.devices.clear())  # unplugged after run 1
    assert [r["status"] for r in ei.value.results] == ["ok"]
    assert ei.value.device["serial"] == "emu-x"


def test_a_stopped_sweep_still_writes_the_host_results(
        adb_server: EmulatedAdbServer, bench_models: dict[str, Path], standin_binary: Path,
        tmp_path: Path) -> None:
    adb_server.add_device("emu-s", noexec=True)
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "dmad", "bench", str(bench_models["narrow_tflite"]),
         "--android", "--backends", "tflite", "--delegate", "cpu", "--threads", "1",
         "--runs", "2", "--warmup", "1", "--cooldown", "0",
         "--benchmark-binary", str(standin_binary), "--out", str(out)],
        env=env_for(adb_server), capture_output=True, text=True, timeout=300)
    last = r.stderr.strip().splitlines()[-1]  # progress lines above it, then one error line
    assert r.returncode == 2 and r.stderr.count("dmad: error") == 1
    assert last.startswith("dmad: error: the phone sweep stopped") and "not executable" in last
    import json

    data = json.loads((out / "results.json").read_text())
    assert data["results"] and all(x["platform"] != "android" for x in data["results"])
    assert "not executable" in data["android_error"]
    assert "The phone sweep stopped early" in (out / "results.md").read_text()
