"""Pytest fixtures shared by the benchmark tests: tiny models of every kind, the emulated phone.

Import them into a test module (``from tests.adbdevice.fixtures import bench_models``). The
models are built once per session into a fixed folder under pytest's base temp dir, so several
modules importing the fixture share one build (the TensorFlow one costs a few seconds).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adbdevice import EmulatedAdbServer, write_standin_binary

SIZE = 32

_TF_SCRIPT = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
tf.random.set_seed(0)
def build(width, path):
    w1 = tf.constant(tf.random.normal([3, 3, 3, width], stddev=0.1))
    w2 = tf.constant(tf.random.normal([3, 3, width, 3], stddev=0.1))
    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32)])
    def f(x):
        y = tf.nn.relu(tf.nn.conv2d(x, w1, 1, "SAME"))
        y = tf.pad(y, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
        return tf.tanh(tf.nn.conv2d(y, w2, 1, "VALID"))
    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()])
    open(path, "wb").write(conv.convert())
SIZE = int(sys.argv[3])
build(32, sys.argv[1])
build(4, sys.argv[2])
"""


def _build(root: Path) -> None:
    import torch

    from dmad.compress.checkpoint import save_model
    from dmad.compress.models import ResnetGenerator, ResnetSpec, ResnetWidths

    torch.manual_seed(0)
    full = ResnetGenerator(ResnetSpec(ngf=8, n_blocks=2)).eval()
    small = ResnetGenerator(
        ResnetSpec(ngf=8, n_blocks=2, widths=ResnetWidths(4, 4, 8, (4, 0), 4, 4))
    ).eval()
    for name, m in (("full", full), ("small", small)):
        (root / name).mkdir()
        save_model(m, root / name / "model.pt")
        with torch.no_grad():
            torch.onnx.export(
                m, (torch.zeros(1, 3, SIZE, SIZE),), str(root / name / "model.onnx"),
                opset_version=17, input_names=["input"], output_names=["output"], dynamo=False,
            )
    tfl = root / "tflite"
    tfl.mkdir()
    subprocess.run(
        [sys.executable, "-c", _TF_SCRIPT, str(tfl / "wide_fp32.tflite"),
         str(tfl / "narrow_fp32.tflite"), str(SIZE)],
        check=True, capture_output=True, timeout=300,
    )


@pytest.fixture(scope="session")
def bench_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """full/small ResNet (.pt + .onnx, 32²) and two .tflite convnets (wide, narrow, 32²)."""
    root = tmp_path_factory.getbasetemp() / "bench-models"
    done = root / ".done"
    if not done.exists():
        if root.exists():
            shutil.rmtree(root)
        root.mkdir()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _build(root)
        done.touch()
    return {
        "full_pt": root / "full" / "model.pt",
        "small_pt": root / "small" / "model.pt",
        "full_onnx": root / "full" / "model.onnx",
        "small_onnx": root / "small" / "model.onnx",
        "full_dir": root / "full",
        "small_dir": root / "small",
        "wide_tflite": root / "tflite" / "wide_fp32.tflite",
        "narrow_tflite": root / "tflite" / "narrow_fp32.tflite",
    }


def _client_version() -> int:
    """The adb client's protocol version ("Android Debug Bridge version 1.0.41" → 41)."""
    import re

    out = subprocess.run(["adb", "version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"version 1\.0\.(\d+)", out)
    return int(m.group(1)) if m else 41


@pytest.fixture
def adb_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatedAdbServer]:
    """The loopback adb server (no device yet: tests add theirs), wired in via
    ``ADB_SERVER_SOCKET`` so the real adb client and the harness talk to it."""
    if shutil.which("adb") is None:
        pytest.skip("the adb client is not installed (Debian: apt-get install adb); CI installs it")
    server = EmulatedAdbServer(tmp_path / "phones", version=_client_version()).start()
    monkeypatch.setenv("ADB_SERVER_SOCKET", server.socket_spec)
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    monkeypatch.delenv("ADB", raising=False)
    monkeypatch.delenv("ADBUTILS_ADB_PATH", raising=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def standin_binary(tmp_path: Path) -> Path:
    return write_standin_binary(tmp_path / "benchmark_model")


def env_for(server: EmulatedAdbServer) -> dict[str, str]:
    """Environment for a ``dmad`` subprocess that must reach the emulated server."""
    env = dict(os.environ)
    env["ADB_SERVER_SOCKET"] = server.socket_spec
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env
