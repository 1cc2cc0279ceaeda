"""The Android app's Kotlin sources compile (``make android-check``), a broken copy does not; its
JVM unit tests (``make android-unit-tests``) fail on broken logic; the committed Gradle wrapper
starts.

``make test`` runs ``make android-check`` and ``make android-unit-tests`` on the real sources
first (they print ``compiled N Kotlin files`` and ``N JVM tests passed``); this file checks that
both have teeth and that ``./gradlew`` is usable.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "android_demo"
CHECK = ROOT / "scripts" / "android_check.sh"
UNIT = ROOT / "scripts" / "android_unit_tests.sh"


def _check(src: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = ["bash", str(CHECK)] + (["--src", str(src)] if src is not None else [])
    return subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)


def test_a_misspelt_litert_method_fails_the_check(tmp_path: Path) -> None:
    src = tmp_path / "java"
    shutil.copytree(APP / "app" / "src" / "main" / "java", src)
    runner = next(src.rglob("GeneratorRunner.kt"))
    text = runner.read_text()
    assert "interpreter.run(input, output)" in text
    runner.write_text(text.replace("interpreter.run(input, output)",
                                   "interpreter.runn(input, output)"))
    res = _check(src)
    assert res.returncode != 0, res.stdout + res.stderr
    assert "unresolved reference 'runn'" in res.stderr.lower()
    assert "FAILED" in res.stderr


def test_a_warning_fails_the_check_too(tmp_path: Path) -> None:
    src = tmp_path / "java"
    shutil.copytree(APP / "app" / "src" / "main" / "java", src)
    spec = next(src.rglob("PixelMapping.kt"))
    spec.write_text(spec.read_text() + '\n@Deprecated("old") private fun oldHelper() = 1\n'
                    "private fun usesOld() = oldHelper()\n")
    res = _check(src)
    assert res.returncode != 0, res.stdout
    assert "is deprecated" in res.stderr and "-Werror" in res.stderr, res.stderr[-2000:]


def _unit_tests(src: Path, tests: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(UNIT), "--src", str(src), "--tests", str(tests)],
                          capture_output=True, text=True, timeout=900, check=False)


def _copy_app(tmp_path: Path) -> tuple[Path, Path]:
    src, tests = tmp_path / "main", tmp_path / "test"
    shutil.copytree(APP / "app" / "src" / "main" / "java", src)
    shutil.copytree(APP / "app" / "src" / "test" / "java", tests)
    return src, tests


def test_a_wrong_median_fails_the_jvm_unit_tests(tmp_path: Path) -> None:
    src, tests = _copy_app(tmp_path)
    latency = next(src.rglob("Latency.kt"))
    text = latency.read_text()
    right = "(s[mid - 1] + s[mid]) / 2.0"
    assert right in text
    latency.write_text(text.replace(right, "s[mid]"))  # the upper middle value for an even count
    res = _unit_tests(src, tests)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "medianOfAnEvenCountIsTheMeanOfTheTwoMiddleValues" in out
    assert "pairedSpeedupWithAnEvenCountAveragesTheMiddleRatios" in out
    assert "FAILED: Tests run:" in res.stderr


def test_pure_sources_compile_without_android(tmp_path: Path) -> None:
    """The unit tests compile the pure files on a plain JVM classpath: no android.jar."""
    src, tests = _copy_app(tmp_path)
    geometry = next(src.rglob("InputGeometry.kt"))
    geometry.write_text(geometry.read_text()
                        + "\nfun sdkLevel(): Int = android.os.Build.VERSION.SDK_INT\n")
    res = _unit_tests(src, tests)
    assert res.returncode != 0, res.stdout
    assert "unresolved reference 'android'" in res.stderr.lower(), res.stderr[-2000:]
    assert "do not compile on a plain JVM" in res.stderr


def test_gradle_runs_the_same_unit_tests() -> None:
    gradle = (APP / "app" / "build.gradle.kts").read_text()
    assert "testImplementation(libs.junit)" in gradle
    tests = sorted(p.name for p in (APP / "app" / "src" / "test" / "java").rglob("*Test.kt"))
    assert len(tests) >= 8, tests
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:.*\bandroid-unit-tests\b", makefile, re.M)
    assert "bash scripts/android_unit_tests.sh" in makefile


def test_stubs_name_their_source() -> None:
    stubs = [p for p in (APP / "stubs").rglob("*") if p.suffix in (".java", ".kt", ".xml")]
    assert len(stubs) >= 15
    for p in stubs:
        head = p.read_text().splitlines()[:3]
        assert any("written from the public API" in line or "Stand-in for androidx" in line
                   or "make android-check" in line for line in head), p


def test_wrapper_jar_is_committed_and_starts() -> None:
    jar = APP / "gradle" / "wrapper" / "gradle-wrapper.jar"
    assert "org/gradle/wrapper/GradleWrapperMain.class" in zipfile.ZipFile(jar).namelist()
    props = (APP / "gradle" / "wrapper" / "gradle-wrapper.properties").read_text()
    assert "gradle-8.13-bin.zip" in props
    if shutil.which("java") is None:
        pytest.skip("no java on PATH")
    env = {**os.environ, "GRADLE_USER_HOME": str(APP / "build" / "gradle-home-test")}
    res = subprocess.run([str(APP / "gradlew"), "--version"], cwd=APP, env=env,
                         capture_output=True, text=True, timeout=180, check=False)
    out = res.stdout + res.stderr
    shutil.rmtree(APP / "build" / "gradle-home-test", ignore_errors=True)
    if res.returncode == 0:  # a machine with internet: the pinned Gradle runs
        assert "Gradle 8.13" in out
    else:  # here: the wrapper starts and stops only at the download of the pinned version
        assert "Downloading https://services.gradle.org/distributions/gradle-8.13-bin.zip" in out
        assert "GradleWrapperMain" in out or "UnknownHost" in out or "Connect" in out
