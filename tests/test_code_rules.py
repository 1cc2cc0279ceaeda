"""Rules of the code base that no linter checks in full: no private name crosses a module
boundary inside the package (ruff's PLC2701 sees ``dmad/`` importing ``dmad.*`` as one package,
so the app layer is checked here too)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = {"dmad": "dmad", "compress": "dmad.compress", "export": "dmad.export",
           "benchmark": "dmad.benchmark"}


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    base = PACKAGE[parts[0]].split(".")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([*base, *parts[1:]])


def private_imports(source: str, module: str) -> list[str]:
    """``from dmad.x import _name`` of another module (``module`` is the importer's name)."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dmad"):
            if node.module == module:
                continue
            bad += [f"{node.module}.{a.name}" for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")]
    return bad


def test_no_private_name_is_imported_across_modules() -> None:
    found = {}
    for folder in PACKAGE:
        for path in (ROOT / folder).rglob("*.py"):
            bad = private_imports(path.read_text(), _module_of(path))
            if bad:
                found[str(path.relative_to(ROOT))] = bad
    assert found == {}


def test_the_rule_sees_a_private_import() -> None:
    src = "from dmad.export.parity import _fmt, psnr\nfrom dmad.cli import main\n"
    assert private_imports(src, "dmad.pipeline") == ["dmad.export.parity._fmt"]
    assert private_imports("from dmad.cli import _x\n", "dmad.cli") == []


def function_lengths() -> list[tuple[int, str]]:
    """(lines, where) of every function and method of the package, longest first."""
    rows = []
    for folder in PACKAGE:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    rows.append((node.end_lineno - node.lineno + 1,  # type: ignore[operator]
                                 f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(rows, reverse=True)


def test_no_function_is_longer_than_80_lines() -> None:
    rows = function_lengths()
    print("longest:", rows[:3])
    assert rows[0][0] > 40  # the walk found real functions
    assert [r for r in rows if r[0] > 80] == []
