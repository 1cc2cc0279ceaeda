"""Property-based hostile input through the real CLI (issue 25).

Hypothesis generates hostile files from real ones (random bytes, truncations, byte flips,
a one-byte prefix, text a user might save by mistake, crafted dmad model dicts, JSON of the
wrong shape) and feeds each to a file-taking option of a subcommand. Every case must end the
user-facing way:

* no signal, no timeout, no ``Traceback``, no ``dmad: internal error``;
* exit 0 (the mutation left a valid file: accepted) or exit 2 with exactly one
  ``dmad: error:`` line, the last one on stderr;
* no file changed, added or removed outside ``--out`` (the inputs and the shared runs included).

The command lines run in children forked from a zygote that imported ``dmad`` once
(``zygote.py``), so thousands of cases take minutes. ``DMAD_HOSTILE_EXAMPLES`` sets the cases
per target (CI: the seeded default below; ``DMAD_HOSTILE_EXAMPLES=100`` runs over 2,000).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.conftest import Corpus, shared_zygote
from tests.reliability.zygote import Zygote

PER_TARGET = int(os.environ.get("DMAD_HOSTILE_EXAMPLES", "6"))
#: Totals over the session, printed by conftest's terminal summary.
COUNTS = {"cases": 0, "accepted": 0, "refused": 0}

TEXTS = (
    "hello\n",
    "<!DOCTYPE html><html><head><title>Sign in</title></head><body>...</body></html>\n",
    "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a2146\nsize 45577014\n",
    '{"format": "dmad-model", "version": 1}',
    "[1, 2, 3]",
    "NaN",
    "\x00" * 64,
    "[teacher]\nsteps = 'many'\n",
)


@pytest.fixture(scope="module")
def zygote() -> Zygote:
    return shared_zygote()


# -- hostile bytes -------------------------------------------------------------------------


def _json_values() -> st.SearchStrategy:
    leaf = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | \
        st.text(max_size=12)
    return st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(
        st.text(max_size=8), c, max_size=4), max_leaves=8)


@st.composite
def _crafted_model(draw: st.DrawFn, base: bytes) -> bytes:
    """A dmad model dict with one part replaced by something of the wrong kind or value."""
    obj = torch.load(io.BytesIO(base), weights_only=True)
    part = draw(st.sampled_from(["spec", "state_dict", "meta", "nan", "spec-field", "shape"]))
    if part == "nan":
        key = draw(st.sampled_from(sorted(obj["state_dict"])))
        t = obj["state_dict"][key]
        if t.is_floating_point():
            obj["state_dict"][key] = torch.full_like(t, draw(st.sampled_from(
                [float("nan"), float("inf")])))
    elif part == "spec-field":
        key = draw(st.sampled_from(sorted(obj["spec"])))
        obj["spec"][key] = draw(st.none() | st.integers(-5, 10**9) | st.text(max_size=6)
                                | st.lists(st.integers(-3, 9), max_size=4) | st.floats())
    elif part == "shape":
        key = draw(st.sampled_from(sorted(obj["state_dict"])))
        obj["state_dict"][key] = torch.zeros(draw(st.lists(st.integers(0, 5), max_size=4)))
    else:
        obj[part] = draw(st.none() | st.text(max_size=6) | st.integers()
                         | st.lists(st.integers(), max_size=3))
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@st.composite
def _crafted_json(draw: st.DrawFn, base: bytes) -> bytes:
    obj = json.loads(base)
    if draw(st.booleans()) or not isinstance(obj, dict) or not obj:
        obj = draw(_json_values())
    else:
        key = draw(st.sampled_from(sorted(obj)))
        if draw(st.booleans()):
            obj[key] = draw(_json_values())
        else:
            del obj[key]
    return json.dumps(obj).encode()


@st.composite
def hostile(draw: st.DrawFn, base: bytes, kind: str) -> bytes:
    how = ["random", "truncate", "flip", "flip-head", "prefix", "text", "append"]
    if kind in ("model",):
        how += ["crafted"] * 3
    if kind in ("split", "architecture", "latency"):
        how += ["json"] * 3
    way = draw(st.sampled_from(how))
    if way == "random":
        return draw(st.binary(min_size=0, max_size=2048))
    if way == "truncate":
        return base[:draw(st.integers(0, len(base) - 1))]
    if way in ("flip", "flip-head"):
        b = bytearray(base)
        top = min(len(b), 4096) if way == "flip-head" else len(b)
        for _ in range(draw(st.integers(1, 20))):
            b[draw(st.integers(0, top - 1))] = draw(st.integers(0, 255))
        return bytes(b)
    if way == "prefix":
        return bytes([draw(st.integers(0, 255))]) + base
    if way == "text":
        return draw(st.sampled_from(TEXTS)).encode()
    if way == "append":
        return base + draw(st.binary(min_size=1, max_size=64))
    if way == "crafted":
        return draw(_crafted_model(base))
    return draw(_crafted_json(base))


# -- targets -------------------------------------------------------------------------------

TRAIN = ["--steps", "1", "--size", "32", "--device", "cpu", "--checkpoint-every", "1",
         "--log-every", "1", "--batch-size", "1"]
TIMING = ["--runs", "1", "--warmup", "0", "--threads", "1"]


@dataclass(frozen=True)
class Target:
    """A file-taking option: the base kind mutated, the file's name, the command line.

    ``run`` names a finished stage run that is copied into the case and gets the hostile file
    at ``name`` (``--search RUN``, ``--run RUN``, or ``--resume --out RUN``)."""

    kind: str
    name: str
    argv: Callable[[str, str, Corpus], list[str]]
    run: str | None = None
    out_is_run: bool = False


TARGETS: dict[str, Target] = {
    "macs": Target("model", "g.pt", lambda f, o, c: ["macs", f]),
    "import": Target("raw", "latest_net_G.pth", lambda f, o, c: ["import", f, "--out",
                                                                 f"{o}/m.pt"]),
    "import-dmad": Target("model", "g.pt", lambda f, o, c: ["import", f, "--arch", "resnet",
                                                            "--out", f"{o}/m.pt"]),
    "eval-student": Target("model", "g.pt", lambda f, o, c: [
        "eval", "--student", f, "--teacher", c.teacher_g, "--images", c.images, "--size", "32",
        "--device", "cpu", "--max-images", "2", "--out", o]),
    "eval-teacher": Target("model", "g.pt", lambda f, o, c: [
        "eval", "--student", c.student_g, "--teacher", f, "--images", c.images, "--size", "32",
        "--device", "cpu", "--max-images", "2", "--out", o]),
    "eval-split": Target("split", "split.json", lambda f, o, c: [
        "eval", "--student", c.student_g, "--teacher", c.teacher_g, "--images", f, "--size",
        "32", "--device", "cpu", "--max-images", "2", "--out", o]),
    "eval-inception": Target("model", "pt_inception.pth", lambda f, o, c: [
        "eval", "--student", c.student_g, "--teacher", c.teacher_g, "--images", c.images,
        "--size", "32", "--device", "cpu", "--max-images", "2", "--inception", f, "--out", o]),
    "bench-tflite": Target("tflite", "g.tflite", lambda f, o, c: [
        "bench", f, "--out", o, "--backends", "tflite", *TIMING]),
    "bench-onnx": Target("onnx", "g.onnx", lambda f, o, c: [
        "bench", f, "--out", o, "--backends", "ort", *TIMING]),
    "bench-pt": Target("model", "g.pt", lambda f, o, c: [
        "bench", f, "--out", o, "--backends", "torch", "--size", "32", *TIMING]),
    "compare-full": Target("tflite", "full.tflite", lambda f, o, c: [
        "compare", "--full", f, "--compressed", c.tflite, "--out", o, "--backends", "tflite",
        *TIMING]),
    "compare-grid": Target("png", "grid.png", lambda f, o, c: [
        "compare", "--full", c.tflite, "--compressed", c.tflite, "--grid", f, "--out", o,
        "--backends", "tflite", *TIMING]),
    "export-model": Target("model", "g.pt", lambda f, o, c: [
        "export", "--model", f, "--out", o, "--quant", "fp32", "--size", "32",
        "--num-eval", "2"]),
    "export-split": Target("split", "split.json", lambda f, o, c: [
        "export", "--model", c.student_g, "--split", f, "--out", o, "--quant", "fp32",
        "--size", "32", "--num-eval", "2"]),
    "export-run": Target("model", "student_G_AtoB.pt", lambda f, o, c: [
        "export", "--run", str(Path(f).parent), "--out", o, "--quant", "fp32", "--size", "32",
        "--num-eval", "2"], run="finetune"),
    "search-teacher": Target("model", "G_AtoB.pt", lambda f, o, c: [
        "search", "--teacher", f, "--data", str(c.stages.data), "--target-gmacs", "0.08",
        "--directions", "AtoB", *TRAIN, "--out", o]),
    "search-latency-table": Target("latency", "latency.json", lambda f, o, c: [
        "search", "--teacher", c.teacher_g, "--data", str(c.stages.data), "--target-ms",
        "4.5", "--latency-table", f, "--directions", "AtoB", *TRAIN, "--out", o]),
    "finetune-search": Target("architecture", "architecture.json", lambda f, o, c: [
        "finetune", "--search", str(Path(f).parent), *TRAIN, "--out", o], run="search"),
    "finetune-search-model": Target("model", "search_G_AtoB.pt", lambda f, o, c: [
        "finetune", "--search", str(Path(f).parent), *TRAIN, "--out", o], run="search"),
    "teacher-config": Target("toml", "teacher.toml", lambda f, o, c: [
        "teacher", "--config", f, "--data", str(c.stages.data), "--ngf", "4", "--n-blocks",
        "2", "--ndf", "4", *TRAIN, "--out", o]),
    "teacher-resume": Target("checkpoint", "checkpoint.pt", lambda f, o, c: [
        "teacher", "--resume", "--out", str(Path(f).parent)], run="teacher", out_is_run=True),
    "compress-generator": Target("raw", "latest_net_G.pth", lambda f, o, c: [
        "compress", f, "--images", c.images, "--target-gmacs", "0.05", "--steps", "1",
        "--finetune-steps", "1", "--size", "32", "--export-size", "32", "--export", "false",
        "--compare", "false", "--device", "cpu", "--out", o]),
}


def _listing(*folders: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file under ``folders`` (not under ``skip``): (size, mtime) as a change witness."""
    got = {}
    for folder in folders:
        for p in folder.rglob("*"):
            if skip is not None and (p == skip or skip in p.parents):
                continue
            if p.is_file() or p.is_symlink():
                st_ = p.lstat()
                got[str(p)] = (st_.st_size, st_.st_mtime_ns)
    return got


def _check(r: dict, argv: list[str]) -> None:
    where = f"{' '.join(argv)}\n{r['stderr'][-2500:]}"
    assert not r["timed_out"], f"timed out: {where}"
    assert r["signal"] is None, f"killed by signal {r['signal']}: {where}"
    assert "Traceback" not in r["stderr"], where
    assert "internal error" not in r["stderr"], where
    assert r["rc"] in (0, 2), f"exit {r['rc']}: {where}"
    if r["rc"] == 2:
        lines = [x for x in r["stderr"].splitlines() if x.strip()]
        errors = [x for x in lines if x.startswith("dmad: error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], where


def _case(zygote: Zygote, corpus: Corpus, target: Target, payload: bytes) -> None:
    case = Path(tempfile.mkdtemp(prefix="case-", dir=corpus.root))
    try:
        if target.run is not None:
            folder = case / target.run
            shutil.copytree(getattr(corpus.stages, target.run), folder)
            if target.out_is_run:
                (folder / "DONE.json").unlink(missing_ok=True)
            path = folder / target.name
        else:
            path = case / "in" / target.name
            path.parent.mkdir()
        path.write_bytes(payload)
        out = path.parent if target.out_is_run else case / "out"
        argv = target.argv(str(path), str(out), corpus)
        shared = [corpus.stages.data, corpus.stages.teacher, corpus.stages.search,
                  corpus.stages.finetune, corpus.root / "export"]
        before = _listing(case, *shared, skip=out)
        r = zygote.run(argv, case)
        _check(r, argv)
        after = _listing(case, *shared, skip=out)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        assert not changed, f"{' '.join(argv)} changed files outside --out: {changed[:5]}"
        COUNTS["cases"] += 1
        COUNTS["accepted" if r["rc"] == 0 else "refused"] += 1
    finally:
        shutil.rmtree(case, ignore_errors=True)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_hostile_file(name: str, zygote: Zygote, corpus: Corpus) -> None:
    target = TARGETS[name]
    base = corpus.files[target.kind]

    @settings(max_examples=PER_TARGET, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(payload=hostile(base, target.kind))
    def prop(payload: bytes) -> None:
        _case(zygote, corpus, target, payload)

    prop()
