"""The Android demo app (android_demo/), checked without an Android SDK.

* Build files: the Gradle Kotlin DSL files parse (balanced, the expected blocks), every plugin
  and library comes from gradle/libs.versions.toml with the intended coordinates and versions,
  minSdk 26, the namespace, noCompress "tflite", a real Gradle 8.x wrapper; manifest and resource
  XML are well-formed, every resource the sources name exists, the launcher activity exists.
* The pixel <-> tensor arithmetic: PixelMapping.kt has a Python twin here (constants and
  formulas, one for one; a test fails when they differ), and the twin agrees with
  compress/data/transforms.py.
* The asset contract (android_demo/MODEL_JSON.md): a tiny ResNet generator is exported once per
  session with onnx2tf to float32, full-int8 and int8-with-float-I/O .tflite files; a model.json
  written per the contract (per-delegate files included: each file against its own tensors)
  agrees with what the LiteRT interpreter reports, the twin of ModelSpec.kt's validation
  catches every kind of disagreement, and the twin wrapped around the
  interpreter reproduces PyTorch: float32 max |err| <= 1e-3 in tensor space and <= 1 level in
  pixels; int8 PSNR >= 25 dB (range 2), the floor measured for full-size InstanceNorm ResNets in
  the shared toolchain notes §9 (25.5-26.3 dB; this tiny model gives ~30 dB).
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tomllib
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from dmad.compress.arch import profile
from dmad.compress.data.transforms import to_image
from dmad.compress.data.transforms import to_tensor as torch_to_tensor
from dmad.compress.models import ResnetGenerator, ResnetSpec

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "android_demo"
MAIN = APP / "app/src/main"
PKG = "dev.dmad.demo"
SRC = MAIN / "java" / Path(*PKG.split("."))
ANDROID_NS = "{http://schemas.android.com/apk/res/android}"

# ---------------------------------------------------------------------------------------------
# Intended build configuration
# ---------------------------------------------------------------------------------------------

INTENDED_LIBRARIES = {
    "com.google.ai.edge.litert:litert": "1.4.0",
    "com.google.ai.edge.litert:litert-gpu": "1.4.0",
    "com.google.ai.edge.litert:litert-gpu-api": "1.4.0",
    "com.google.ai.edge.litert:litert-support": "1.4.0",
    "androidx.core:core-ktx": "1.15.0",
    "androidx.appcompat:appcompat": "1.7.0",
    "androidx.activity:activity-ktx": "1.10.1",
    "androidx.lifecycle:lifecycle-runtime-ktx": "2.8.7",
    "org.jetbrains.kotlinx:kotlinx-coroutines-android": "1.10.1",
    "androidx.exifinterface:exifinterface": "1.4.2",
    "junit:junit": "4.13.2",
}
# Libraries the app's JVM unit tests use (testImplementation), not packed into the APK.
TEST_LIBRARIES = {"junit"}
INTENDED_PLUGINS = {"com.android.application": "8.13.0", "org.jetbrains.kotlin.android": "2.2.20"}
# Minimum Gradle per AGP minor (developer.android.com AGP release notes).
AGP_MIN_GRADLE = {
    "8.7": (8, 9),
    "8.8": (8, 10, 2),
    "8.9": (8, 11, 1),
    "8.10": (8, 11, 1),
    "8.11": (8, 13),
    "8.12": (8, 13),
    "8.13": (8, 13),
}


# ---------------------------------------------------------------------------------------------
# A small Gradle Kotlin DSL reader: strip comments and strings, check brackets, cut out blocks
# ---------------------------------------------------------------------------------------------


def kts_code(text: str) -> tuple[str, list[str]]:
    """Code with comments removed, string literals replaced by "" and char literals by '', plus
    the string literals.

    Raises ValueError on an unterminated string/comment or unbalanced (), {}, [].
    """
    out: list[str] = []
    strings: list[str] = []
    stack: list[str] = []
    pairs = {")": "(", "}": "{", "]": "["}
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise ValueError("unterminated /* comment")
            i = j + 2
            continue
        if text.startswith('"""', i):
            j = text.find('"""', i + 3)
            if j < 0:
                raise ValueError('unterminated """ string')
            strings.append(text[i + 3 : j])
            out.append('""')
            i = j + 3
            continue
        if c == "'":  # a Kotlin char literal: '"', '{', '\'', '\u0022'
            m = re.match(r"'(?:\\u[0-9a-fA-F]{4}|\\.|[^'\\\n])'", text[i:])
            if not m:
                raise ValueError(f"bad char literal: {text[i:i + 8]!r}")
            out.append("''")
            i += m.end()
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                if text[j] == "\n":
                    raise ValueError(f"string not closed on its line: {text[i:j][:60]!r}")
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise ValueError("unterminated string")
            strings.append(text[i + 1 : j])
            out.append('""')
            i = j + 1
            continue
        if c in "({[":
            stack.append(c)
        elif c in ")}]":
            if not stack or stack.pop() != pairs[c]:
                raise ValueError(f"unbalanced {c!r} at offset {i}")
        out.append(c)
        i += 1
    if stack:
        raise ValueError(f"unclosed {stack[-1]!r}")
    return "".join(out), strings


def kts_block(text: str, name: str) -> str:
    """The body of the first ``name { ... }`` block in ``text`` (comments allowed)."""
    m = re.search(rf"(?<![\w.]){re.escape(name)}\s*\{{", text)
    if not m:
        raise KeyError(f"no {name} {{ }} block")
    depth, i = 1, m.end()
    while depth:
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
        i += 1
    return text[m.end() : i - 1]


def kts_assignment(block: str, key: str) -> str:
    m = re.search(rf"^\s*{re.escape(key)}\s*=\s*(.+?)\s*$", block, re.M)
    if not m:
        raise KeyError(f"{key} = ... not found")
    return m.group(1)


def catalog() -> dict[str, Any]:
    return tomllib.loads((APP / "gradle/libs.versions.toml").read_text())


def accessor(alias: str) -> str:
    """Catalog alias -> Gradle accessor path (``litert-gpu-api`` -> ``litert.gpu.api``)."""
    return re.sub(r"[-_]", ".", alias)


def resolved_libraries() -> dict[str, tuple[str, str]]:
    """accessor -> (group:name, version) for every library in the catalog."""
    cat = catalog()
    out = {}
    for alias, lib in cat["libraries"].items():
        coord = lib["module"] if "module" in lib else f"{lib['group']}:{lib['name']}"
        v = lib["version"]
        version = cat["versions"][v["ref"]] if isinstance(v, dict) else v
        out[accessor(alias)] = (coord, version)
    return out


def resolved_plugins() -> dict[str, tuple[str, str]]:
    cat = catalog()
    return {
        accessor(alias): (p["id"], cat["versions"][p["version"]["ref"]])
        for alias, p in cat["plugins"].items()
    }


GRADLE_FILES = ["settings.gradle.kts", "build.gradle.kts", "app/build.gradle.kts"]


@pytest.mark.parametrize("name", GRADLE_FILES)
def test_gradle_files_parse(name: str) -> None:
    kts_code((APP / name).read_text())


def test_kts_reader_rejects_broken_files() -> None:
    for bad in [
        'android { namespace = "x"',
        'a("x)',
        "dependencies { implementation(libs.a) }}",
        "/* open",
        "f(]",
        "val c = 'ab'",
    ]:
        with pytest.raises(ValueError):
            kts_code(bad)
    # Kotlin char literals hold quotes and brackets without opening strings or blocks.
    code, strings = kts_code(
        """when (c) { '{' -> f('"') ; '\\'' -> g('\\u0022') ; else -> h("x") }"""
    )
    assert code.count("''") == 4 and strings == ["x"]


def test_settings_and_root_build() -> None:
    code, strings = kts_code((APP / "settings.gradle.kts").read_text())
    repos = kts_block(code, "dependencyResolutionManagement")
    assert "google()" in repos and "mavenCentral()" in repos
    assert "google()" in kts_block(code, "pluginManagement")
    assert re.search(r'include\(""\)', code) and ":app" in strings
    root, _ = kts_code((APP / "build.gradle.kts").read_text())
    aliases = set(re.findall(r"alias\(libs\.plugins\.([\w.]+)\)\s*apply\s+false", root))
    assert aliases == set(resolved_plugins())


def test_app_build_config() -> None:
    text = (APP / "app/build.gradle.kts").read_text()
    code, strings = kts_code(text)
    android = kts_block(text, "android")
    default = kts_block(android, "defaultConfig")
    assert kts_assignment(android, "namespace") == f'"{PKG}"'
    assert kts_assignment(default, "applicationId") == f'"{PKG}"'
    assert kts_assignment(default, "minSdk") == "26"
    assert (
        int(kts_assignment(android, "compileSdk"))
        >= int(kts_assignment(default, "targetSdk"))
        >= 34
    )
    resources = kts_block(android, "androidResources")
    assert re.search(r'noCompress\s*\+=\s*"tflite"', resources)
    plugins = set(re.findall(r"alias\(libs\.plugins\.([\w.]+)\)", kts_block(code, "plugins")))
    assert plugins == set(resolved_plugins())
    # Every dependency comes from the catalog: no literal "group:name:version" anywhere.
    assert not [s for s in strings if re.fullmatch(r"[\w.-]+:[\w.-]+:[\w.+-]+", s)]
    deps = kts_block(code, "dependencies")
    used = re.findall(r"(?<!\w)implementation\(libs\.([\w.]+)\)", deps)
    tests = re.findall(r"(?<!\w)testImplementation\(libs\.([\w.]+)\)", deps)
    libs = resolved_libraries()
    assert sorted(used + tests) == sorted(libs), "catalog and (test)implementation lines differ"
    assert set(tests) == TEST_LIBRARIES


def test_catalog_has_the_intended_coordinates_and_versions() -> None:
    libs = dict(resolved_libraries().values())
    assert libs == INTENDED_LIBRARIES
    assert dict(resolved_plugins().values()) == INTENDED_PLUGINS
    cat = catalog()
    # LiteRT is pinned once: every litert artifact refers to the same version entry.
    refs = {
        lib["version"]["ref"]
        for lib in cat["libraries"].values()
        if lib["group"] == "com.google.ai.edge.litert"
    }
    assert refs == {"litert"}
    assert cat["versions"]["kotlin"].startswith("2.")


def test_gradle_wrapper_properties_pin_a_gradle_that_fits_agp() -> None:
    props = dict(
        line.split("=", 1)
        for line in (APP / "gradle/wrapper/gradle-wrapper.properties").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    url = props["distributionUrl"].replace("\\:", ":")
    m = re.fullmatch(
        r"https://services\.gradle\.org/distributions/gradle-(\d+(?:\.\d+)+)-bin\.zip", url
    )
    assert m, url
    gradle = tuple(int(x) for x in m.group(1).split("."))
    assert gradle[0] == 8
    agp = INTENDED_PLUGINS["com.android.application"]
    assert gradle >= AGP_MIN_GRADLE[".".join(agp.split(".")[:2])]


def test_gradlew_scripts_explain_a_missing_wrapper_jar(tmp_path: Path) -> None:
    gradlew = APP / "gradlew"
    assert os.access(gradlew, os.X_OK), "gradlew must be executable"
    assert "gradle-wrapper.jar" in (APP / "gradlew.bat").read_text()
    # the jar is committed (tests/test_android_build.py starts it); a copy without it shows
    # what a user who lost it is told
    shutil.copy2(gradlew, tmp_path / "gradlew")
    (tmp_path / "gradle" / "wrapper").mkdir(parents=True)
    r = subprocess.run(
        ["sh", str(tmp_path / "gradlew"), "--version"], capture_output=True, text=True,
        timeout=30)
    assert r.returncode != 0
    assert "gradle-wrapper.jar is missing" in r.stderr and "gradle wrapper" in r.stderr


# ---------------------------------------------------------------------------------------------
# Manifest, resources, sources
# ---------------------------------------------------------------------------------------------


def xml_files() -> list[Path]:
    return [MAIN / "AndroidManifest.xml", *sorted((MAIN / "res").rglob("*.xml"))]


@pytest.mark.parametrize("path", xml_files(), ids=lambda p: str(p.relative_to(MAIN)))
def test_xml_is_well_formed(path: Path) -> None:
    ET.parse(path)


def kotlin_sources() -> dict[Path, str]:
    return {p: p.read_text() for p in sorted((MAIN / "java").rglob("*.kt"))}


def test_kotlin_sources_parse_and_sit_in_their_package() -> None:
    sources = kotlin_sources()
    assert {p.name for p in sources} >= {
        "MainActivity.kt",
        "ModelSpec.kt",
        "PixelMapping.kt",
        "GeneratorRunner.kt",
        "Json.kt",
        "Latency.kt",
        "AbSchedule.kt",
        "InputGeometry.kt",
    }
    for path, text in sources.items():
        kts_code(text)  # balanced brackets, closed strings and comments
        m = re.match(r"\s*package\s+([\w.]+)", text)
        assert m, path
        assert path.parent == MAIN / "java" / Path(*m.group(1).split(".")), path


def test_launcher_activity_exists_in_the_sources() -> None:
    root = ET.parse(MAIN / "AndroidManifest.xml").getroot()
    assert root.get("package") is None, (
        "the package is the Gradle namespace, not a manifest attribute"
    )
    launchers = []
    for activity in root.iter("activity"):
        for f in activity.iter("intent-filter"):
            actions = {a.get(f"{ANDROID_NS}name") for a in f.iter("action")}
            categories = {c.get(f"{ANDROID_NS}name") for c in f.iter("category")}
            if (
                "android.intent.action.MAIN" in actions
                and "android.intent.category.LAUNCHER" in categories
            ):
                launchers.append(activity)
    assert len(launchers) == 1
    activity = launchers[0]
    assert activity.get(f"{ANDROID_NS}exported") == "true"
    name = activity.get(f"{ANDROID_NS}name")
    full = PKG + name if name.startswith(".") else name
    pkg, _, cls = full.rpartition(".")
    declared = [
        p
        for p, text in kotlin_sources().items()
        if re.search(rf"^package\s+{re.escape(pkg)}\s*$", text, re.M)
        and re.search(rf"^class\s+{cls}\b[^{{]*:\s*\w*Activity\(\)", text, re.M)
    ]
    assert declared, f"{full} is not declared as an Activity subclass in the Kotlin sources"


def defined_resources() -> set[tuple[str, str]]:
    res = MAIN / "res"
    defined: set[tuple[str, str]] = set()
    for d in res.iterdir():
        kind = d.name.split("-")[0]
        for f in d.iterdir():
            if kind == "values":
                for el in ET.parse(f).getroot():
                    defined.add((el.tag, el.get("name")))
            else:
                defined.add((kind, f.name.split(".")[0]))
            if kind == "layout":
                defined |= {("id", i) for i in re.findall(r"@\+id/(\w+)", f.read_text())}
    return defined


def test_every_resource_reference_resolves() -> None:
    defined = defined_resources()
    wanted: set[tuple[str, str]] = set()
    for path in xml_files():
        wanted |= set(
            re.findall(
                r'"@(string|color|drawable|mipmap|layout|style|id)/([\w.]+)"', path.read_text()
            )
        )
    for text in kotlin_sources().values():
        wanted |= set(
            re.findall(r"(?<![\w.])R\.(string|color|drawable|mipmap|layout|style|id)\.(\w+)", text)
        )
    missing = {w for w in wanted if w not in defined}
    assert not missing


def test_format_strings_match_their_use() -> None:
    strings = {
        el.get("name"): el.text for el in ET.parse(MAIN / "res/values/strings.xml").getroot()
    }
    main = (SRC / "MainActivity.kt").read_text()
    for name, args in re.findall(r"getString\(R\.string\.(\w+)((?:,[^)]*)?)\)", main):
        n_args = len([a for a in args.split(",") if a.strip()])
        n_fmt = len(re.findall(r"%\d+\$[sd]", strings[name]))
        assert n_args == n_fmt, name


def test_pixel_constants_live_only_in_pixel_mapping() -> None:
    """No pre/post-processing constants elsewhere that could drift from model.json."""
    for path, text in kotlin_sources().items():
        if path.name != "PixelMapping.kt":
            assert not re.search(r"127\.5|\b255\b", text), path


def test_sample_image_is_bundled_and_reproducible(tmp_path: Path) -> None:
    sample = MAIN / "assets/samples/day_scene.png"
    assert sample.stat().st_size < 50_000
    with Image.open(sample) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        committed = np.asarray(im)
    sys.path.insert(0, str(APP / "tools"))
    try:
        import make_sample
    finally:
        sys.path.remove(str(APP / "tools"))
    fresh = make_sample.make_sample(tmp_path / "s.png")
    with Image.open(fresh) as im:
        assert np.array_equal(np.asarray(im), committed)


def test_readme_names_the_ways_in() -> None:
    text = (APP / "README.md").read_text()
    for needle in (
        "dmad export --android",
        "make android-assets",
        "Android Studio",
        "MODEL_JSON.md",
        "warm-up",
        "gradle wrapper",
    ):
        assert needle in text, needle


# ---------------------------------------------------------------------------------------------
# Python twin of PixelMapping.kt (float32 arithmetic, round half to even, as Kotlin's round)
# ---------------------------------------------------------------------------------------------

TWIN_CONSTANTS: dict[str, int | float | str] = {
    "PIXEL_MAX": 255,
    "VALUE_LOW": -1.0,
    "VALUE_HIGH": 1.0,
    "HALF_SPAN": 127.5,
    "INT8_MIN": -128,
    "INT8_MAX": 127,
    "CHANNELS": 3,
    "TO_TENSOR": "x/127.5 - 1",
    "FROM_TENSOR": "clamp(round((y + 1) * 127.5), 0, 255)",
}
HALF_SPAN = np.float32(TWIN_CONSTANTS["HALF_SPAN"])
INT8_MIN, INT8_MAX = int(TWIN_CONSTANTS["INT8_MIN"]), int(TWIN_CONSTANTS["INT8_MAX"])

# The Kotlin expression bodies the twin functions below follow, formula by formula.
KOTLIN_FORMULAS = {
    "toTensor": "x / HALF_SPAN - 1.0f",
    "quantize": "(round(v / scale).toInt() + zeroPoint).coerceIn(INT8_MIN, INT8_MAX)",
    "dequantize": "(q - zeroPoint) * scale",
    "fromTensor": "if (y.isNaN()) 0 else "
    "round((y + 1.0f) * HALF_SPAN).coerceIn(0.0f, 255.0f).toInt()",
    "bytesPerValue": "if (quant == null) 4 else 1",
}


def twin_to_tensor(x: np.ndarray) -> np.ndarray:
    """toTensor: x / HALF_SPAN - 1.0f."""
    return x.astype(np.float32) / HALF_SPAN - np.float32(1.0)


def twin_quantize(v: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """quantize: (round(v / scale).toInt() + zeroPoint).coerceIn(INT8_MIN, INT8_MAX)."""
    q = np.round(v.astype(np.float32) / np.float32(scale)).astype(np.int64) + zero_point
    return np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8)


def twin_dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """dequantize: (q - zeroPoint) * scale."""
    return (q.astype(np.int32) - zero_point).astype(np.float32) * np.float32(scale)


def twin_from_tensor(y: np.ndarray) -> np.ndarray:
    """fromTensor: NaN -> 0, else round((y + 1.0f) * HALF_SPAN).coerceIn(0, 255)."""
    y = y.astype(np.float32)
    with np.errstate(invalid="ignore"):
        p = np.clip(np.round((y + np.float32(1.0)) * HALF_SPAN), 0.0, 255.0)
    return np.where(np.isnan(y), 0.0, p).astype(np.uint8)


def twin_write_input(pixels: np.ndarray, quant: tuple[float, int] | None) -> np.ndarray:
    """writeInput: ARGB ints -> flat NHWC values (R, G, B per pixel), float32 or int8."""
    p = pixels.astype(np.uint32)
    rgb = np.stack([(p >> 16) & 0xFF, (p >> 8) & 0xFF, p & 0xFF], axis=-1).reshape(-1)
    v = twin_to_tensor(rgb)
    return v if quant is None else twin_quantize(v, *quant)


def twin_read_output(flat: np.ndarray, count: int, quant: tuple[float, int] | None) -> np.ndarray:
    """readOutput: flat NHWC values -> ``count`` opaque ARGB ints."""
    y = flat.reshape(-1)[: count * 3]
    y = y.astype(np.float32) if quant is None else twin_dequantize(y, *quant)
    c = twin_from_tensor(y).astype(np.uint32).reshape(count, 3)
    return (0xFF << 24) | (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]


def pack_argb(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 -> H*W ARGB ints, row-major (Bitmap.getPixels)."""
    c = rgb.reshape(-1, 3).astype(np.uint32)
    return (0xFF << 24) | (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]


def unpack_argb(argb: np.ndarray, h: int, w: int) -> np.ndarray:
    a = argb.astype(np.uint32)
    return (
        np.stack([(a >> 16) & 0xFF, (a >> 8) & 0xFF, a & 0xFF], axis=-1)
        .astype(np.uint8)
        .reshape(h, w, 3)
    )


def kotlin_constants(path: Path) -> dict[str, int | float | str]:
    out: dict[str, int | float | str] = {}
    for name, value in re.findall(r"^\s*const val (\w+)\s*=\s*(.+?)\s*$", path.read_text(), re.M):
        if value.startswith('"'):
            out[name] = ast.literal_eval(value)
        elif value.endswith("f"):
            out[name] = float(value[:-1])
        else:
            out[name] = float(value) if re.search(r"[.eE]", value) else int(value)
    return out


def kotlin_expression_body(text: str, fun: str) -> str:
    m = re.search(rf"fun {fun}\([^)]*\):\s*\w+\s*=\s*(.*?)\n\s*\n", text, re.S)
    assert m, f"fun {fun}(...) = ... not found"
    return " ".join(m.group(1).split())


def test_kotlin_pixel_constants_equal_the_twin() -> None:
    kotlin = kotlin_constants(SRC / "PixelMapping.kt")
    assert kotlin == TWIN_CONSTANTS
    for name, value in kotlin.items():
        assert type(value) is type(TWIN_CONSTANTS[name]), name


def test_kotlin_pixel_formulas_equal_the_twin() -> None:
    text = (SRC / "PixelMapping.kt").read_text()
    for fun, body in KOTLIN_FORMULAS.items():
        assert kotlin_expression_body(text, fun) == body, fun
    public = set(re.findall(r"^    fun (\w+)\(", text, re.M))
    assert public == set(KOTLIN_FORMULAS) | {"writeInput", "readOutput"}
    # The buffer loops: R, G, B in that order from the ARGB int, and back.
    assert re.search(r"\(p shr 16\) and 0xFF.*\n.*\(p shr 8\) and 0xFF.*\n.*p and 0xFF", text)
    assert "(0xFF shl 24) or (r shl 16) or (g shl 8) or b" in text


def test_twin_mapping_equals_the_training_transforms() -> None:
    pixels = np.arange(256, dtype=np.uint8)
    img = Image.fromarray(np.stack([pixels.reshape(16, 16)] * 3, axis=-1))
    ref = torch_to_tensor(img).numpy()[0].reshape(-1)
    assert np.abs(twin_to_tensor(pixels) - ref).max() <= 2e-7
    assert twin_to_tensor(np.array([0, 255])).tolist() == [-1.0, 1.0]
    # from_tensor equals transforms.to_image exactly, ties and out-of-range values included.
    y = np.concatenate(
        [
            np.linspace(-1.2, 1.2, 4801, dtype=np.float32),
            (np.arange(256, dtype=np.float32) + 0.5) / HALF_SPAN - 1,  # ties
            np.array([np.nan, -np.inf, np.inf, -1, 1], dtype=np.float32),
        ]
    )
    y = y[: (len(y) // 3) * 3]
    expected = np.asarray(to_image(torch.from_numpy(y.reshape(1, -1, 3).transpose(2, 0, 1).copy())))
    assert np.array_equal(twin_from_tensor(y), expected.reshape(-1))


def test_twin_quantization_round_trip() -> None:
    scale, zp = 2 / 255, -1
    v = twin_to_tensor(np.arange(256))
    q = twin_quantize(v, scale, zp)
    assert q.dtype == np.int8 and q.min() == -128 and q.max() == 126
    assert np.abs(twin_dequantize(q, scale, zp) - v).max() <= scale / 2 + 1e-6
    assert twin_quantize(np.array([5.0, -5.0], np.float32), scale, zp).tolist() == [127, -128]
    assert twin_dequantize(np.array([0], np.int8), 1 / 128, 0).tolist() == [0.0]


def test_twin_buffer_layout_is_nhwc_rgb() -> None:
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 7
    flat = twin_write_input(pack_argb(rgb), None)
    assert np.array_equal(flat.reshape(1, 2, 3, 3)[0], twin_to_tensor(rgb))
    back = twin_read_output(flat, 6, None)
    assert np.array_equal(unpack_argb(back, 2, 3), rgb)
    assert (back >> 24).tolist() == [0xFF] * 6


# ---------------------------------------------------------------------------------------------
# Python twin of ModelSpec.kt (same rules, same messages)
# ---------------------------------------------------------------------------------------------

SCHEMA_VERSION = 1
MAX_MODELS = 2
SCALE_RTOL = 1e-6
LABELS = ["full", "compressed"]
DTYPES = ["float32", "int8"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return _is_int(v) and v >= 0


def twin_parse_tensor(where: str, value: Any, problems: list[str]) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        problems.append(f"{where}: missing or not an object")
        return None
    before = len(problems)
    if not isinstance(value.get("name"), str):
        problems.append(f"{where}.name: must be a string")
    shape = value.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(_is_int(s) for s in shape)):
        shape = None
    if shape is None or shape[0] != 1 or shape[1] < 1 or shape[2] < 1 or shape[3] != 3:
        problems.append(f"{where}.shape: must be [1, H, W, 3] (NHWC, H and W >= 1)")
    dtype = value.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        problems.append(f"{where}.dtype: must be one of {', '.join(DTYPES)}")
    q = value.get("quantization")
    quant = None
    if dtype == "float32" and q is not None:
        problems.append(f"{where}.quantization: must be null for float32")
    if dtype == "int8":
        scale = q.get("scale") if isinstance(q, dict) else None
        zero_point = q.get("zero_point") if isinstance(q, dict) else None
        scale_ok = _is_number(scale) and math.isfinite(scale) and scale > 0
        zero_ok = _is_int(zero_point) and INT8_MIN <= zero_point <= INT8_MAX
        if not scale_ok or not zero_ok:
            rule = (
                '.quantization: int8 needs {"scale": number > 0, "zero_point": int in [-128, 127]}'
            )
            problems.append(where + rule)
        else:
            quant = (float(np.float32(scale)), zero_point)
    if len(problems) != before:
        return None
    return {"name": value["name"], "shape": shape, "dtype": dtype, "quantization": quant}


def _is_file_name(v: Any) -> bool:
    return isinstance(v, str) and bool(v) and "/" not in v and v.endswith(".tflite")


def twin_parse_file(
    where: str, obj: dict[str, Any], problems: list[str], parity_required: bool
) -> dict[str, Any] | None:
    """ModelSpecParser.parseFile: the keys of one file (the entry itself or an extra file)."""
    before = len(problems)
    file = obj.get("file")
    if not _is_file_name(file):
        problems.append(f"{where}.file: must be a .tflite file name in assets (no folders)")
    inp = twin_parse_tensor(f"{where}.input", obj.get("input"), problems)
    out = twin_parse_tensor(f"{where}.output", obj.get("output"), problems)
    if "variant" in obj and not isinstance(obj["variant"], str):
        problems.append(f"{where}.variant: must be a string")
    if (parity_required or "parity" in obj) and not isinstance(obj.get("parity"), dict):
        problems.append(f"{where}.parity: must be an object")
    if "chosen_because" in obj and not isinstance(obj["chosen_because"], str):
        problems.append(f"{where}.chosen_because: must be a string")
    if "below_floor" in obj and not isinstance(obj["below_floor"], bool):
        problems.append(f"{where}.below_floor: must be true or false")
    if len(problems) != before:
        return None
    return {**obj, "input": inp, "output": out}


def twin_parse_extra_files(
    where: str, obj: dict[str, Any], main_name: str | None, problems: list[str]
) -> list[dict[str, Any]]:
    """ModelSpecParser.parseExtraFiles."""
    if "extra_files" not in obj:
        return []
    items = obj["extra_files"]
    if not isinstance(items, list) or any(not isinstance(x, dict) for x in items):
        problems.append(f"{where}.extra_files: must be a list of objects")
        return []
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        w = f"{where}.extra_files[{i}]"
        f = twin_parse_file(w, item, problems, parity_required=False)
        if f is None:
            continue
        if f["file"] == main_name or any(x["file"] == f["file"] for x in out):
            problems.append(f"{w}.file: {f['file']} is listed twice or is the main file")
            continue
        out.append(f)
    return out


ACCELERATOR_KEYS = ["cpu", "gpu", "nnapi"]  # Accelerator.entries' keys, in their order


def twin_parse_for_delegate(
    where: str,
    obj: dict[str, Any],
    main_name: str | None,
    extras: list[dict[str, Any]],
    problems: list[str],
) -> dict[str, str]:
    """ModelSpecParser.parseForDelegate: keys of unknown accelerators are ignored."""
    if "for_delegate" not in obj:
        return {}
    mapping = obj["for_delegate"]
    if not isinstance(mapping, dict):
        problems.append(
            f"{where}.for_delegate: must be an object mapping cpu, gpu, nnapi to file names"
        )
        return {}
    out = {}
    for key in ACCELERATOR_KEYS:
        if key not in mapping:
            continue
        name = mapping[key]
        if not _is_file_name(name):
            problems.append(
                f"{where}.for_delegate.{key}: must be a .tflite file name in assets (no folders)"
            )
        elif name != main_name and all(x["file"] != name for x in extras):
            why = ", which is not the entry's file or one of its extra_files"
            problems.append(f"{where}.for_delegate.{key}: names {name}{why}")
        else:
            out[key] = name
    return out


def twin_parse_entry(where: str, obj: dict[str, Any], problems: list[str]) -> dict[str, Any] | None:
    before = len(problems)
    label = obj.get("label")
    if not isinstance(label, str) or label not in LABELS:
        problems.append(f"{where}.label: must be one of {', '.join(LABELS)}")
    main = twin_parse_file(where, obj, problems, parity_required=True)
    rng = obj.get("value_range")
    low, high = TWIN_CONSTANTS["VALUE_LOW"], TWIN_CONSTANTS["VALUE_HIGH"]
    if not (
        isinstance(rng, list)
        and len(rng) == 2
        and all(_is_number(v) for v in rng)
        and float(rng[0]) == low
        and float(rng[1]) == high
    ):
        problems.append(f"{where}.value_range: this app supports [{low}, {high}] only")
    mapping = obj.get("pixel_mapping")
    if not (
        isinstance(mapping, dict)
        and mapping.get("to_tensor") == TWIN_CONSTANTS["TO_TENSOR"]
        and mapping.get("from_tensor") == TWIN_CONSTANTS["FROM_TENSOR"]
    ):
        problems.append(
            f'{where}.pixel_mapping: this app implements to_tensor "{TWIN_CONSTANTS["TO_TENSOR"]}" '
            f'and from_tensor "{TWIN_CONSTANTS["FROM_TENSOR"]}" only'
        )
    macs = obj.get("macs")
    if not (
        isinstance(macs, dict) and _is_count(macs.get("paper")) and _is_count(macs.get("true"))
    ):
        problems.append(where + '.macs: must be {"paper": int >= 0, "true": int >= 0}')
    if not _is_count(obj.get("params")):
        problems.append(f"{where}.params: must be an integer >= 0")
    if not isinstance(obj.get("source_run"), str):
        problems.append(f"{where}.source_run: must be a string")
    multiple = obj.get("size_multiple")
    if "size_multiple" in obj and not (_is_int(multiple) and 1 <= multiple <= 2**31 - 1):
        problems.append(f"{where}.size_multiple: must be an integer >= 1")
    if "gpu_delegate" in obj and not isinstance(obj["gpu_delegate"], dict):
        problems.append(f"{where}.gpu_delegate: must be an object")
    main_name = obj.get("file") if isinstance(obj.get("file"), str) else None
    extras = twin_parse_extra_files(where, obj, main_name, problems)
    for_delegate = twin_parse_for_delegate(where, obj, main_name, extras, problems)
    if len(problems) != before:
        return None
    return {**main, "extra_files": extras, "for_delegate": for_delegate}


def twin_file_for(entry: dict[str, Any], key: str) -> dict[str, Any]:
    """ModelEntry.fileFor: the file ``key`` (cpu, gpu, nnapi) runs."""
    name = entry["for_delegate"].get(key)
    return next((x for x in entry["extra_files"] if x["file"] == name), entry)


def twin_parse_model_json(text: str) -> tuple[dict[str, Any] | None, list[str]]:
    """ModelSpecParser.parse: (spec, []) or (None, problems)."""
    try:
        root = json.loads(text)
    except json.JSONDecodeError as e:
        return None, [f"model.json is not valid JSON: {e}"]
    if not isinstance(root, dict):
        return None, ["model.json is not valid JSON: not an object"]
    problems: list[str] = []
    version = root.get("schema_version")
    if not _is_int(version):
        problems.append("model.json: schema_version is missing or not an integer")
    elif version != SCHEMA_VERSION:
        problems.append(
            f"model.json: schema_version is {version}"
            f"; this app reads schema_version {SCHEMA_VERSION}"
        )
    models_json = root.get("models")
    models = []
    if not isinstance(models_json, list) or not 1 <= len(models_json) <= MAX_MODELS:
        problems.append(f"model.json: models must be a list of 1 to {MAX_MODELS} entries")
    else:
        for i, obj in enumerate(models_json):
            if not isinstance(obj, dict):
                problems.append(f"models[{i}]: not an object")
                continue
            entry = twin_parse_entry(f"models[{i}]", obj, problems)
            if entry is not None:
                models.append(entry)
        labels = [m["label"] for m in models]
        if len(set(labels)) != len(labels):
            problems.append("model.json: two models have the same label")
    if problems:
        return None, problems
    return {"schema_version": SCHEMA_VERSION, "models": models}, []


def twin_check_tensor(where: str, spec: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """ModelSpecParser.checkTensor."""
    problems = []
    if spec["shape"] != actual["shape"]:
        problems.append(
            f"{where}: model.json says shape {spec['shape']}, the model has {actual['shape']}"
        )
    if spec["dtype"] != actual["dtype"]:
        problems.append(
            f"{where}: model.json says dtype {spec['dtype']}, the model has {actual['dtype']}"
        )
    elif spec["quantization"] is not None:
        scale, zp = spec["quantization"]
        scale_ok = abs(scale - actual["scale"]) <= SCALE_RTOL * abs(actual["scale"])
        if not scale_ok or zp != actual["zero_point"]:
            problems.append(
                f"{where}: model.json says scale {scale} zero point {zp}, "
                f"the model has scale {actual['scale']} zero point {actual['zero_point']}"
            )
    return problems


def twin_check_against_model(
    entry: dict[str, Any], inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]
) -> list[str]:
    """ModelSpecParser.checkAgainstModel (returns the problems instead of throwing)."""
    problems = []
    f = entry["file"]
    if len(inputs) != 1:
        problems.append(f"{f}: the model has {len(inputs)} inputs; schema 1 needs exactly 1")
    if len(outputs) != 1:
        problems.append(f"{f}: the model has {len(outputs)} outputs; schema 1 needs exactly 1")
    if len(inputs) == 1:
        problems += twin_check_tensor(f"{f} input", entry["input"], inputs[0])
    if len(outputs) == 1:
        problems += twin_check_tensor(f"{f} output", entry["output"], outputs[0])
    return problems


def tensor_info(detail: dict[str, Any]) -> dict[str, Any]:
    """GeneratorRunner.info: the interpreter's view of a tensor."""
    names = {np.dtype(np.float32): "float32", np.dtype(np.int8): "int8"}
    dtype = np.dtype(detail["dtype"])
    scale, zp = detail["quantization"]
    return {
        "shape": [int(s) for s in detail["shape"]],
        "dtype": names.get(dtype, dtype.name),
        "scale": float(np.float32(scale)),
        "zero_point": int(zp),
    }


def test_kotlin_spec_constants_equal_the_twin() -> None:
    text = (SRC / "ModelSpec.kt").read_text()
    assert kotlin_constants(SRC / "ModelSpec.kt") == {
        "SCHEMA_VERSION": SCHEMA_VERSION,
        "MAX_MODELS": MAX_MODELS,
        "SCALE_RTOL": SCALE_RTOL,
    }
    assert re.search(r"val LABELS = listOf\(([^)]*)\)", text).group(1) == ", ".join(
        f'"{x}"' for x in LABELS
    )
    assert re.search(r"val DTYPES = listOf\(([^)]*)\)", text).group(1) == ", ".join(
        f'"{x}"' for x in DTYPES
    )


def test_every_kotlin_rule_has_its_twin() -> None:
    """Each problem message of ModelSpec.kt (its fixed text) appears in the twin's source."""
    kotlin = (SRC / "ModelSpec.kt").read_text()
    literals = re.findall(r'problems \+= "((?:[^"\\]|\\.)*)"', kotlin)
    assert len(literals) >= 30
    twin = "".join(
        inspect.getsource(f)
        for f in (
            twin_parse_tensor,
            twin_parse_file,
            twin_parse_extra_files,
            twin_parse_for_delegate,
            twin_parse_entry,
            twin_parse_model_json,
            twin_check_tensor,
            twin_check_against_model,
        )
    )
    for lit in literals:
        fixed = max(re.split(r"\$\{[^}]*\}|\$\w+", lit), key=len).replace("\\", "")
        assert fixed in twin.replace("\\", ""), f"no twin for the Kotlin rule {lit!r}"


def test_model_json_doc_example_follows_the_contract() -> None:
    doc = (APP / "MODEL_JSON.md").read_text()
    example = re.search(r"```json\n(.*?)```", doc, re.S).group(1)
    spec, problems = twin_parse_model_json(example)
    assert problems == [] and spec is not None
    assert f"Schema version **{SCHEMA_VERSION}**" in doc
    for key in ("to_tensor", "from_tensor"):
        assert json.loads(example)["models"][0]["pixel_mapping"][key] in doc


# ---------------------------------------------------------------------------------------------
# The asset contract on real exports (one onnx2tf conversion per session)
# ---------------------------------------------------------------------------------------------

SIZE = 32
# ngf 8: with ngf 4 at 32x32, onnx2tf 1.29.24 silently writes a float32 model that is wrong
# (max |err| ~1.2 vs PyTorch); its NCHW->NHWC guess fails when channel and spatial sizes
# coincide. Load-testing every converted file against PyTorch is what catches that.
SPEC = ResnetSpec(ngf=8, n_blocks=1)
VARIANTS = {
    "float32": "gen_float32",
    "int8": "gen_full_integer_quant",
    "int8_float_io": "gen_integer_quant",
}
EXPECTED_IO = {"float32": "float32", "int8": "int8", "int8_float_io": "float32"}

ONNX2TF_SCRIPT = r"""
import sys, onnx, onnxsim, onnx2tf
src, calib, out = sys.argv[1:4]
model, ok = onnxsim.simplify(onnx.load(src))
assert ok, "onnxsim check failed"
onnx.save(model, "gen.onnx")
mean_std = [[[[0.5, 0.5, 0.5]]]]
onnx2tf.convert(input_onnx_file_path="gen.onnx", output_folder_path=out, non_verbose=True,
                output_integer_quantized_tflite=True,
                custom_input_op_name_np_data_path=[["input", calib, mean_std, mean_std]])
"""


def _image_array(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory, default_data: Path) -> dict[str, Any]:
    """A tiny ResNet generator, its .tflite exports and test images (converted once)."""
    work = tmp_path_factory.mktemp("android_export")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = ResnetGenerator(SPEC).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, SIZE, SIZE),),
            str(work / "raw.onnx"),
            input_names=["input"],
            output_names=["output"],
            opset_version=17,
            dynamo=False,
        )
    unaligned = default_data / "unaligned"
    calib = np.stack([_image_array(p) for p in sorted((unaligned / "trainA").iterdir())[:16]])
    np.save(work / "calib.npy", calib.astype(np.float32) / 255)
    # onnx2tf 1.29.24 downloads this file unless it is in the working folder (toolchain.md §9).
    rng = np.random.default_rng(0)
    np.save(
        work / "calibration_image_sample_data_20x128x128x3_float32.npy",
        rng.random((20, 128, 128, 3), dtype=np.float32),
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(
        [sys.executable, "-c", ONNX2TF_SCRIPT, "raw.onnx", "calib.npy", "out"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    files = {k: work / "out" / f"{stem}.tflite" for k, stem in VARIANTS.items()}
    assert all(f.exists() for f in files.values()), sorted(os.listdir(work / "out"))
    images = [_image_array(p) for p in sorted((unaligned / "testA").iterdir())]
    return {"model": model, "files": files, "images": images, "work": work}


def interpreter(path: Path) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    return it


def exporter_entry(path: Path, label: str, io_dtype: str, model: torch.nn.Module) -> dict[str, Any]:
    """A model.json entry as the contract tells `dmad export --android` to write it."""
    it = interpreter(path)

    def tensor(detail: dict[str, Any]) -> dict[str, Any]:
        scale, zp = detail["quantization"]
        return {
            "name": detail["name"],
            "shape": [1, SIZE, SIZE, 3],
            "dtype": io_dtype,
            "quantization": None
            if io_dtype == "float32"
            else {"scale": float(scale), "zero_point": int(zp)},
        }

    prof = profile(model, (1, 3, SIZE, SIZE))
    return {
        "file": path.name,
        "label": label,
        "input": tensor(it.get_input_details()[0]),
        "output": tensor(it.get_output_details()[0]),
        "value_range": [-1, 1],
        "pixel_mapping": {
            "to_tensor": TWIN_CONSTANTS["TO_TENSOR"],
            "from_tensor": TWIN_CONSTANTS["FROM_TENSOR"],
        },
        "macs": {"paper": prof.macs_paper, "true": prof.macs_true},
        "params": prof.params,
        "source_run": "tests/test_android_app.py",
        "parity": {"reference": "pytorch"},
    }


def write_assets(folder: Path, entries: list[tuple[Path, dict[str, Any]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for src, _ in entries:
        shutil.copyfile(src, folder / src.name)
    doc = {"schema_version": 1, "models": [e for _, e in entries]}
    (folder / "model.json").write_text(json.dumps(doc, indent=2))
    return folder


def validate_assets(folder: Path) -> list[str]:
    """What the app does on start and on Run: parse model.json, then check each model's tensors."""
    spec, problems = twin_parse_model_json((folder / "model.json").read_text())
    if spec is None:
        return problems
    for entry in spec["models"]:
        for f in [entry, *entry["extra_files"]]:  # each file against its own tensor objects
            path = folder / f["file"]
            if not path.exists():
                problems.append(f"model.json names {f['file']}, but it is not in the app's assets")
                continue
            it = interpreter(path)
            problems += twin_check_against_model(
                f,
                [tensor_info(d) for d in it.get_input_details()],
                [tensor_info(d) for d in it.get_output_details()],
            )
    return problems


def twin_run(path: Path, entry: dict[str, Any], rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The app's Run on one image: returns (output tensor values as float, output pixels)."""
    spec, problems = twin_parse_model_json(json.dumps({"schema_version": 1, "models": [entry]}))
    assert not problems, problems
    e = spec["models"][0]
    it = interpreter(path)
    din, dout = it.get_input_details()[0], it.get_output_details()[0]
    flat = twin_write_input(pack_argb(rgb), e["input"]["quantization"])
    it.set_tensor(din["index"], flat.reshape(e["input"]["shape"]))
    it.invoke()
    raw = it.get_tensor(dout["index"]).reshape(-1)
    q = e["output"]["quantization"]
    values = raw.astype(np.float32) if q is None else twin_dequantize(raw, *q)
    h, w = e["output"]["shape"][1:3]
    argb = twin_read_output(raw, h * w, q)
    return values.reshape(h, w, 3), unpack_argb(argb, h, w)


def torch_run(model: torch.nn.Module, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = torch_to_tensor(Image.fromarray(rgb))[None]
    with torch.no_grad():
        y = model(x)[0]
    return y.permute(1, 2, 0).numpy(), np.asarray(to_image(y))


def test_model_json_agrees_with_float_and_int8_exports(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    files, model = exported["files"], exported["model"]
    entries = [
        (files["float32"], exporter_entry(files["float32"], "full", "float32", model)),
        (files["int8"], exporter_entry(files["int8"], "compressed", "int8", model)),
    ]
    folder = write_assets(tmp_path / "assets", entries)
    assert validate_assets(folder) == []
    spec, _ = twin_parse_model_json((folder / "model.json").read_text())
    int8 = spec["models"][1]
    assert int8["input"]["quantization"] is not None and int8["output"]["quantization"] is not None
    # Tanh's int8 output is fixed by the TFLite spec: scale 1/128, zero point 0.
    assert int8["output"]["quantization"] == (1 / 128, 0)


def test_model_json_agrees_with_int8_float_io_export(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    f = exported["files"]["int8_float_io"]
    folder = write_assets(
        tmp_path / "assets", [(f, exporter_entry(f, "compressed", "float32", exported["model"]))]
    )
    assert validate_assets(folder) == []


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_interpreter_reports_the_expected_io(exported: dict[str, Any], variant: str) -> None:
    it = interpreter(exported["files"][variant])
    for d in (it.get_input_details(), it.get_output_details()):
        assert len(d) == 1
        info = tensor_info(d[0])
        assert info["shape"] == [1, SIZE, SIZE, 3]
        assert info["dtype"] == EXPECTED_IO[variant]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(4.0 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_twin_around_litert_reproduces_pytorch(exported: dict[str, Any], variant: str) -> None:
    path, model = exported["files"][variant], exported["model"]
    entry = exporter_entry(path, "full", EXPECTED_IO[variant], model)
    psnrs = []
    for rgb in exported["images"]:
        values, pixels = twin_run(path, entry, rgb)
        ref_values, ref_pixels = torch_run(model, rgb)
        if variant == "float32":
            assert np.abs(values - ref_values).max() <= 1e-3
            assert np.abs(pixels.astype(int) - ref_pixels.astype(int)).max() <= 1
        psnrs.append(_psnr(values, ref_values))
    assert min(psnrs) >= (60.0 if variant == "float32" else 25.0), psnrs


def _entry_for(exported: dict[str, Any], variant: str = "int8") -> tuple[Path, dict[str, Any]]:
    f = exported["files"][variant]
    return f, exporter_entry(f, "compressed", EXPECTED_IO[variant], exported["model"])


MISMATCHES = {
    "input shape": (
        lambda e: e["input"].update(shape=[1, 64, 64, 3]),
        "input: model.json says shape",
    ),
    "output shape": (
        lambda e: e["output"].update(shape=[1, SIZE, SIZE + 1, 3]),
        "output: model.json says shape",
    ),
    "input dtype": (
        lambda e: e["input"].update(dtype="float32", quantization=None),
        "input: model.json says dtype",
    ),
    "zero point": (
        lambda e: e["input"]["quantization"].update(
            zero_point=e["input"]["quantization"]["zero_point"] + 1
        ),
        "input: model.json says scale",
    ),
    "scale": (
        lambda e: e["output"]["quantization"].update(
            scale=e["output"]["quantization"]["scale"] * 1.001
        ),
        "output: model.json says scale",
    ),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_model_json_that_disagrees_with_the_model_is_caught(
    exported: dict[str, Any], tmp_path: Path, case: str
) -> None:
    f, entry = _entry_for(exported)
    edit, needle = MISMATCHES[case]
    edit(entry)
    problems = validate_assets(write_assets(tmp_path / "assets", [(f, entry)]))
    assert len(problems) == 1 and needle in problems[0], problems


def test_model_json_naming_a_missing_file_is_caught(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    f, entry = _entry_for(exported)
    folder = write_assets(tmp_path / "assets", [(f, entry)])
    (folder / f.name).unlink()
    assert validate_assets(folder) == [
        f"model.json names {f.name}, but it is not in the app's assets"
    ]


def _valid_doc() -> dict[str, Any]:
    doc = (APP / "MODEL_JSON.md").read_text()
    return json.loads(re.search(r"```json\n(.*?)```", doc, re.S).group(1))


BAD_DOCS = {
    "schema 2": (lambda d: d.update(schema_version=2), "this app reads schema_version 1"),
    "no schema": (lambda d: d.pop("schema_version"), "schema_version is missing"),
    "no models": (lambda d: d.update(models=[]), "models must be a list of 1 to 2"),
    "three models": (lambda d: d.update(models=d["models"] * 3), "models must be a list of 1 to 2"),
    "same label": (lambda d: d.update(models=d["models"] * 2), "two models have the same label"),
    "bad label": (
        lambda d: d["models"][0].update(label="tiny"),
        ".label: must be one of full, compressed",
    ),
    "file in folder": (
        lambda d: d["models"][0].update(file="a/b.tflite"),
        ".file: must be a .tflite",
    ),
    "not tflite": (lambda d: d["models"][0].update(file="model.onnx"), ".file: must be a .tflite"),
    "NCHW shape": (
        lambda d: d["models"][0]["input"].update(shape=[1, 3, 256, 256]),
        ".input.shape: must be [1, H, W, 3]",
    ),
    "float shape": (
        lambda d: d["models"][0]["output"].update(shape=[1, 256.0, 256, 3]),
        ".output.shape",
    ),
    "uint8": (
        lambda d: d["models"][0]["input"].update(dtype="uint8"),
        ".input.dtype: must be one of float32, int8",
    ),
    "int8 without quantization": (
        lambda d: d["models"][0]["input"].update(quantization=None),
        ".input.quantization: int8 needs",
    ),
    "zero scale": (
        lambda d: d["models"][0]["output"]["quantization"].update(scale=0),
        ".output.quantization: int8 needs",
    ),
    "zero point out of range": (
        lambda d: d["models"][0]["output"]["quantization"].update(zero_point=128),
        ".output.quantization: int8 needs",
    ),
    "float32 with quantization": (
        lambda d: d["models"][0]["input"].update(dtype="float32"),
        ".input.quantization: must be null for float32",
    ),
    "value range 0..1": (
        lambda d: d["models"][0].update(value_range=[0, 1]),
        ".value_range: this app supports [-1.0, 1.0]",
    ),
    "other mapping": (
        lambda d: d["models"][0]["pixel_mapping"].update(to_tensor="x/255"),
        ".pixel_mapping: this app implements",
    ),
    "macs missing": (lambda d: d["models"][0].pop("macs"), ".macs: must be"),
    "params negative": (
        lambda d: d["models"][0].update(params=-1),
        ".params: must be an integer >= 0",
    ),
    "parity list": (lambda d: d["models"][0].update(parity=[]), ".parity: must be an object"),
    "no input": (lambda d: d["models"][0].pop("input"), ".input: missing or not an object"),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCS))
def test_invalid_model_json_is_refused_with_a_message(case: str) -> None:
    _assert_refused(_valid_doc(), *BAD_DOCS[case])


def _assert_refused(doc: dict[str, Any], edit: Any, needle: str) -> None:
    """``doc`` after ``edit`` is refused by the app's checks with a problem naming ``needle``."""
    edit(doc)
    spec, problems = twin_parse_model_json(json.dumps(doc))
    assert spec is None and any(needle in p for p in problems), problems


def test_model_json_extras_and_float_range_are_accepted() -> None:
    doc = _valid_doc()
    doc["exporter"] = "dmad 0.1.0"
    doc["models"][0]["value_range"] = [-1.0, 1.0]
    doc["models"][0]["notes"] = "unknown keys are ignored"
    assert twin_parse_model_json(json.dumps(doc))[1] == []
    assert twin_parse_model_json("{not json")[1][0].startswith("model.json is not valid JSON")


def _per_delegate_doc() -> dict[str, Any]:
    """MODEL_JSON.md's "Per-delegate files" example merged into its main example's entry."""
    blocks = re.findall(r"```json\n(.*?)```", (APP / "MODEL_JSON.md").read_text(), re.S)
    assert len(blocks) >= 2, "MODEL_JSON.md: no per-delegate example"
    doc = json.loads(blocks[0])
    doc["models"][0].update(json.loads(blocks[1]))
    return doc


def test_per_delegate_example_follows_the_contract() -> None:
    doc = _per_delegate_doc()
    spec, problems = twin_parse_model_json(json.dumps(doc))
    assert problems == [] and spec is not None
    entry = spec["models"][0]
    assert twin_file_for(entry, "gpu")["file"] == "compressed_gpu.tflite"
    assert twin_file_for(entry, "gpu")["input"]["dtype"] == "float32"
    for key in ("cpu", "nnapi"):
        assert twin_file_for(entry, key)["file"] == entry["file"]
    # Without for_delegate every accelerator runs the entry's own file.
    del doc["models"][0]["for_delegate"]
    spec, _ = twin_parse_model_json(json.dumps(doc))
    assert twin_file_for(spec["models"][0], "gpu")["file"] == "compressed.tflite"
    text = (APP / "MODEL_JSON.md").read_text()
    assert "## Per-delegate files" in text and "Optional" in text
    for key in ("for_delegate", "extra_files", "below_floor", "size_multiple"):
        assert f"`{key}`" in text or f"`models[].{key}`" in text, key


def _extra(d: dict[str, Any]) -> dict[str, Any]:
    return d["models"][0]["extra_files"][0]


BAD_PER_DELEGATE = {
    "gpu file dtype": (
        lambda d: _extra(d)["input"].update(dtype="uint8"),
        "models[0].extra_files[0].input.dtype: must be one of float32, int8",
    ),
    "gpu file NCHW": (
        lambda d: _extra(d)["output"].update(shape=[1, 3, 256, 256]),
        "models[0].extra_files[0].output.shape: must be [1, H, W, 3]",
    ),
    "gpu file in a folder": (
        lambda d: _extra(d).update(file="gpu/c.tflite"),
        "models[0].extra_files[0].file: must be a .tflite",
    ),
    "gpu file below_floor text": (
        lambda d: _extra(d).update(below_floor="no"),
        "models[0].extra_files[0].below_floor: must be true or false",
    ),
    "extra is the main file": (
        lambda d: _extra(d).update(file=d["models"][0]["file"]),
        "is listed twice or is the main file",
    ),
    "extra_files not a list": (
        lambda d: d["models"][0].update(extra_files={}),
        "models[0].extra_files: must be a list of objects",
    ),
    "for_delegate names another file": (
        lambda d: d["models"][0]["for_delegate"].update(gpu="other.tflite"),
        "models[0].for_delegate.gpu: names other.tflite, which is not the entry's file",
    ),
    "for_delegate not an object": (
        lambda d: d["models"][0].update(for_delegate=["cpu"]),
        "models[0].for_delegate: must be an object",
    ),
    "size_multiple zero": (
        lambda d: d["models"][0].update(size_multiple=0),
        "models[0].size_multiple: must be an integer >= 1",
    ),
    "below_floor number": (
        lambda d: d["models"][0].update(below_floor=1),
        "models[0].below_floor: must be true or false",
    ),
    "gpu_delegate text": (
        lambda d: d["models"][0].update(gpu_delegate="ok"),
        "models[0].gpu_delegate: must be an object",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PER_DELEGATE))
def test_invalid_per_delegate_keys_are_refused_with_a_message(case: str) -> None:
    _assert_refused(_per_delegate_doc(), *BAD_PER_DELEGATE[case])


def test_unknown_accelerator_keys_are_ignored() -> None:
    doc = _per_delegate_doc()
    doc["models"][0]["for_delegate"]["npu"] = "compressed_npu.bin"
    spec, problems = twin_parse_model_json(json.dumps(doc))
    assert problems == [] and "npu" not in spec["models"][0]["for_delegate"]


def test_per_delegate_files_agree_with_real_exports(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    """An int8 file for the CPU and NNAPI and a float32 file for the GPU, each checked against
    its own tensor objects; a GPU file whose tensors model.json misstates is caught."""
    files, model = exported["files"], exported["model"]
    entry = exporter_entry(files["int8"], "compressed", "int8", model)
    gpu = exporter_entry(files["float32"], "compressed", "float32", model)
    extra = {"file": gpu["file"], "variant": "fp32", "input": gpu["input"],
             "output": gpu["output"], "parity": {}, "below_floor": False}
    entry.update(size_multiple=4, below_floor=False, extra_files=[extra],
                 for_delegate={"cpu": entry["file"], "nnapi": entry["file"], "gpu": gpu["file"]})
    folder = write_assets(tmp_path / "assets", [(files["int8"], entry)])
    shutil.copyfile(files["float32"], folder / files["float32"].name)
    assert validate_assets(folder) == []
    # The GPU file's tensors said int8 (the main file's): refused for that file only.
    extra["input"] = dict(entry["input"])
    folder = write_assets(tmp_path / "assets2", [(files["int8"], entry)])
    shutil.copyfile(files["float32"], folder / files["float32"].name)
    problems = validate_assets(folder)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{files['float32'].name} input: model.json says dtype int8")
    # A GPU file missing from the assets is named.
    (folder / files["float32"].name).unlink()
    assert validate_assets(folder) == [
        f"model.json names {files['float32'].name}, but it is not in the app's assets"
    ]


def test_the_apps_own_assets_when_present() -> None:
    """After `make android-assets`: the files in the app's assets follow the contract."""
    assets = MAIN / "assets"
    if not (assets / "model.json").exists():
        pytest.skip("no model in android_demo/app/src/main/assets (run dmad export --android)")
    assert validate_assets(assets) == []
