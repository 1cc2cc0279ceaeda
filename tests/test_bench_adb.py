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
from pathlib import Path

import pytest

from dmad.benchmark.adb import Adb, AndroidConfig, run_android, shell_join
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
    assert (out / "android_logs" / "narrow_fp32_xnnpack_1t.log").is_file()


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


def test_nonzero_exit_and_garbage(adb_server: EmulatedAdbServer, bench_models: dict[str, Path],
                                  standin_binary: Path, tmp_path: Path) -> None:
    dev = adb_server.add_device("a", bench_exit=3)
    with pytest.raises(DmadError) as ei:
        run_android(_cfg([bench_models["narrow_tflite"]], standin_binary), log_dir=tmp_path)
    msg = str(ei.value)
    assert "exited with status 3 on a for narrow_fp32.tflite (cpu, 1 threads)" in msg
    assert "Benchmarking failed" in msg and "log:" in msg
    dev.bench_exit, dev.bench_garbage = None, True
    msg = _err(_cfg([bench_models["narrow_tflite"]], standin_binary))
    assert "unparsable output" in msg and "Hello from a program" in msg
    assert _device_files(adb_server, "a") == []


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
