"""The installed package: one ``dmad`` namespace, package data, layers that point down, and a
CLI whose every option explains itself.

The wheel is built from a copy of the source tree and installed (unzipped, as pip does) into a
fresh virtual environment that sees this venv's dependencies but not its editable ``dmad``, so
what is checked is what a user's ``pip install .`` gets.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: top-level folders that are not source (a user's build products, runs and data)
SKIP = {".venv", "runs", "data", ".git", "build", ".pytest_cache", ".ruff_cache", ".hypothesis",
        "dmad.egg-info"}


def _ignore(folder: str, names: list[str]) -> list[str]:
    top = Path(folder) == ROOT
    return [n for n in names if n == "__pycache__" or (top and n in SKIP)]


def _load_script(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel --no-deps .`` of a copy of the source tree."""
    src = tmp_path_factory.mktemp("src") / "dmad-src"
    shutil.copytree(ROOT, src, ignore=_ignore)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(src)], check=True, capture_output=True)
    (whl,) = out.glob("dmad-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed (non-editable) and this venv's deps on its path."""
    env_dir = tmp_path_factory.mktemp("venv") / "v"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig;print(sysconfig.get_paths()"
                                   "['purelib'])"], check=True, capture_output=True,
                                  text=True).stdout.strip())
    with zipfile.ZipFile(wheel) as z:
        z.extractall(purelib)
    # dependencies from this venv; a plain path entry does not run its __editable__ .pth hooks,
    # so the source tree's editable dmad stays invisible.
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    (env_dir / "bin" / "dmad").write_text(
        f"#!{py}\nimport sys\nfrom dmad.cli import main\nsys.exit(main())\n")
    (env_dir / "bin" / "dmad").chmod(0o755)
    return env_dir


def _run(env_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([*args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def test_wheel_holds_only_the_dmad_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"dmad", wheel.name.split("-py3")[0] + ".dist-info"}, top
    assert "dmad/configs/demo.toml" in names  # package data
    for pkg in ("compress/prune.py", "compress/train/search.py", "export/api.py",
                "benchmark/api.py", "cli.py", "pipeline.py", "__main__.py"):
        assert f"dmad/{pkg}" in names
    # measuring scripts are not library code
    assert not [n for n in names if "train_step" in n or "bench_export" in n or "perf_goal" in n]


def test_installed_cli_runs_from_any_folder(installed: Path, tmp_path: Path) -> None:
    py, dmad = str(installed / "bin" / "python"), str(installed / "bin" / "dmad")
    res = _run(installed, py, "-c", "import dmad, dmad.pipeline as p; print(dmad.__file__); "
               "print(p.DEFAULT_CONFIG, p.DEFAULT_CONFIG.is_file())", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    where, config = res.stdout.splitlines()
    assert str(installed) in where and config.endswith("demo.toml True")
    for name in ("compress", "export", "benchmark"):
        res = _run(installed, py, "-c", f"import {name}", cwd=tmp_path)
        assert res.returncode == 1 and "ModuleNotFoundError" in res.stderr, name
    res = _run(installed, dmad, "demo", "--help", cwd=tmp_path)
    assert res.returncode == 0 and "--config" in res.stdout, res.stderr
    res = _run(installed, dmad, "macs", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "params 11,378,179" in res.stdout and "56.832 G" in res.stdout
    res = _run(installed, py, "-m", "dmad", "macs", "--arch", "unet", cwd=tmp_path)
    assert res.returncode == 0 and "params 54,413,955" in res.stdout, res.stderr
    # no source checkout beside an installed wheel: --android needs an explicit folder
    res = _run(installed, py, "-c", "from dmad.export.android import default_assets;"
               "print(default_assets())", cwd=tmp_path)
    assert res.stdout.strip() == "None", res.stdout + res.stderr


def test_layer_contract_kept_and_an_upward_import_breaks_it(tmp_path: Path) -> None:
    layers = _load_script("check_layers")
    clean = layers.stage(tmp_path / "clean")
    res = layers.check(clean)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 kept, 0 broken" in res.stdout
    for victim, upward in (("compress/masks.py", "dmad.export.onnx"),
                           ("export/parity.py", "dmad.benchmark.parse"),
                           ("compress/train/loop.py", "dmad.pipeline")):
        bad = layers.stage(tmp_path / victim.replace("/", "_"))
        path = bad / "dmad" / victim
        path.write_text(path.read_text() + f"\n\ndef _late() -> None:\n    import {upward}\n")
        res = layers.check(bad)
        assert res.returncode != 0, f"{victim} importing {upward} was not caught"
        assert "BROKEN" in res.stdout and upward in res.stdout


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_option_of_every_subcommand_has_a_help_line() -> None:
    from dmad.cli import build_parser

    subs = _subparsers(build_parser())
    assert {"data", "teacher", "search", "finetune", "eval", "import", "macs", "export", "bench",
            "compare", "demo"} <= set(subs)
    missing = []
    for name, sub in subs.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = (action.help or "").strip()
            # a bare default is not an explanation: the old flags read "default: ''"
            if not text or text.startswith("default:") or "\n" in text:
                missing.append(f"{name} {action.option_strings or action.dest}")
    assert not missing, missing


def test_config_flag_helps_come_from_the_dataclass_fields() -> None:
    from dmad.benchmark.api import BenchConfig, CompareConfig
    from dmad.cli import build_parser
    from dmad.compress.config import field_help
    from dmad.compress.evaluate import EvalConfig
    from dmad.compress.train.finetune import FinetuneConfig
    from dmad.compress.train.search import SearchConfig
    from dmad.compress.train.teacher import TeacherConfig
    from dmad.export.api import ExportConfig

    for cls in (TeacherConfig, SearchConfig, FinetuneConfig, EvalConfig, ExportConfig,
                BenchConfig, CompareConfig):
        bare = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")]
        assert not bare, f"{cls.__name__} fields without help: {bare}"
    subs = _subparsers(build_parser())
    for name, cls in (("teacher", TeacherConfig), ("search", SearchConfig),
                      ("finetune", FinetuneConfig), ("eval", EvalConfig)):
        flags = {a.dest[4:]: a.help for a in subs[name]._actions if a.dest.startswith("cfg_")}
        assert set(flags) == {f.name for f in dataclasses.fields(cls)}
        for field in dataclasses.fields(cls):
            shown = flags[field.name].replace("%%", "%")  # argparse's escape
            assert shown.startswith(field.metadata["help"]), (name, field.name)
    teacher_task = next(a for a in subs["teacher"]._actions if a.dest == "cfg_task")
    assert "pix2pix" in teacher_task.help and "cyclegan" in teacher_task.help
    export_size = next(a for a in subs["export"]._actions if a.dest == "size")
    assert export_size.help.startswith(field_help(ExportConfig, "size"))
