"""Bad input through the real ``dmad`` CLI: every case ends in one ``dmad: error:`` line naming
the file or field, exit code 2, no traceback, and nothing of the user's is overwritten.

One table row per case; each builder makes its bad input under a fresh folder and returns the
command line, the names the message must contain and (optionally) a folder that must be left
byte-identical. Each row is one ``dmad`` subprocess (~1.3 s of CPU, mostly the torch import).
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.reliability.conftest import TINY, Stages, error_line, run_cli, snapshot


@dataclass
class Built:
    argv: list[str]
    names: tuple[str, ...]  # what the error line must name (a path, a field)
    watch: Path | None = None  # a folder that must not change
    marker: Path | None = None  # written if pickled code ran; must not exist


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path, Stages], Built]
    match: str  # substring of the error line saying what is wrong
    bug: str = ""  # known product bug: the case is a strict xfail


# -- builders: images ------------------------------------------------------------------------


def _png(path: Path, size: tuple[int, int] = (32, 32), mode: str = "RGB") -> Path:
    rng = np.random.default_rng(len(str(path)))
    chans = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 255, (size[1], size[0], chans), dtype=np.uint8)
    Image.fromarray(arr.squeeze(-1) if chans == 1 else arr, mode).save(path)
    return path


def _dataset(t: Path) -> Path:
    """A minimal unaligned dataset (two 32² RGB images per folder)."""
    for split in ("trainA", "trainB", "testA", "testB"):
        (t / "ds" / split).mkdir(parents=True)
        for i in range(2):
            _png(t / "ds" / split / f"{i}.png")
    return t / "ds"


def _teacher_on(ds: Path, t: Path, *extra: str) -> list[str]:
    return ["teacher", "--out", str(t / "run"), "--data", str(ds), *TINY, "--steps", "2", *extra]


def _bad_image(write: Callable[[Path], None]) -> Callable[[Path, Stages], Built]:
    """A builder: the minimal dataset plus one bad ``trainA/bad.png`` made by ``write``."""
    def build(t: Path, s: Stages) -> Built:
        ds = _dataset(t)
        bad = ds / "trainA" / "bad.png"
        write(bad)
        return Built(_teacher_on(ds, t), (str(bad),))
    return build


def _truncate(p: Path) -> None:
    _png(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


corrupt_image = _bad_image(lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4))
truncated_image = _bad_image(_truncate)
zero_byte_image = _bad_image(lambda p: p.write_bytes(b""))
grayscale_image = _bad_image(lambda p: _png(p, mode="L"))
rgba_image = _bad_image(lambda p: _png(p, mode="RGBA"))
tiny_image = _bad_image(lambda p: _png(p, size=(16, 16)))


def empty_folder(t: Path, s: Stages) -> Built:
    ds = _dataset(t)
    shutil.rmtree(ds / "trainB")
    (ds / "trainB").mkdir()
    return Built(_teacher_on(ds, t), (str(ds / "trainB"),))


def missing_folder(t: Path, s: Stages) -> Built:
    return Built(_teacher_on(t / "nowhere", t), (str(t / "nowhere"),))


# -- builders: configs -----------------------------------------------------------------------


def _toml(t: Path, text: str) -> Path:
    (t / "c.toml").write_text(text)
    return t / "c.toml"


def toml_unknown_key(t: Path, s: Stages) -> Built:
    cfg = _toml(t, "[teacher]\nngff = 4\n")
    return Built(_teacher_on(s.data, t, "--config", str(cfg)), (str(cfg), "ngff"))


def toml_wrong_type(t: Path, s: Stages) -> Built:
    cfg = _toml(t, '[teacher]\nsteps = "many"\n')
    return Built(["teacher", "--out", str(t / "run"), "--config", str(cfg)], (str(cfg), "steps"))


def set_unknown_key(t: Path, s: Stages) -> Built:
    return Built(_teacher_on(s.data, t, "--set", "nfg=4"), ("nfg",))


def set_wrong_type(t: Path, s: Stages) -> Built:
    return Built(_teacher_on(s.data, t, "--set", "batch_size=two"), ("batch_size",))


# -- builders: run folders -------------------------------------------------------------------


def _copy(src: Path, t: Path) -> Path:
    return Path(shutil.copytree(src, t / "run"))


def out_under_file(t: Path, s: Stages) -> Built:
    (t / "f.txt").write_text("a file, not a folder\n")
    out = t / "f.txt" / "run"
    return Built(["teacher", "--out", str(out), "--data", str(s.data), *TINY, "--steps", "2"],
                 (str(out),))


def teacher_finished(t: Path, s: Stages) -> Built:
    run = _copy(s.teacher, t)
    return Built(_teacher_on(s.data, t), (str(run),), watch=run)


def teacher_unfinished(t: Path, s: Stages) -> Built:
    run = _copy(s.teacher, t)
    (run / "DONE.json").unlink()
    return Built(_teacher_on(s.data, t), (str(run),), watch=run)


def teacher_resume_search_ckpt(t: Path, s: Stages) -> Built:
    (t / "run").mkdir()
    shutil.copy(s.search / "checkpoint.pt", t / "run" / "checkpoint.pt")
    return Built(_teacher_on(s.data, t, "--resume"), (str(t / "run" / "checkpoint.pt"),))


def teacher_resume_truncated_ckpt(t: Path, s: Stages) -> Built:
    run = _copy(s.teacher, t)
    (run / "DONE.json").unlink()
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    return Built(["teacher", "--out", str(run), "--resume"], (str(run / "checkpoint.pt"),))


# -- builders: checkpoints -------------------------------------------------------------------


def _pickled_code(t: Path) -> Path:
    """A checkpoint holding an instance of a custom class from a helper module on disk
    (``payload.py``); unpickling it would write ``t/PWNED``."""
    from tests.reliability.payload import Payload

    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload(t / "PWNED")},
               t / "evil.pt")
    return t / "evil.pt"


def _truncated_model(t: Path, s: Stages) -> Path:
    data = (s.teacher / "G_AtoB.pt").read_bytes()
    (t / "G_cut.pt").write_bytes(data[: len(data) // 2])
    return t / "G_cut.pt"


def _raw(t: Path, s: Stages, arch: str) -> Path:
    from dmad.compress.models import UnetGenerator, UnetSpec

    if arch == "resnet":
        sd = torch.load(s.teacher / "G_AtoB.pt", weights_only=True)["state_dict"]
    else:
        sd = UnetGenerator(UnetSpec(ngf=4, num_downs=5)).state_dict()
    torch.save(sd, t / f"latest_net_{arch}.pth")
    return t / f"latest_net_{arch}.pth"


def _search_cmd(t: Path, teacher: Path | str, target: str = "0.08") -> list[str]:
    return ["search", "--out", str(t / "s"), "--teacher", str(teacher), "--target-gmacs", target,
            "--steps", "2", "--bound-updates", "1", "--device", "cpu"]


def _target(value: str) -> Callable[[Path, Stages], Built]:
    def build(t: Path, s: Stages) -> Built:
        return Built(_search_cmd(t, s.teacher, value), ("target_gmacs",))
    return build


def search_teacher_unfinished(t: Path, s: Stages) -> Built:
    run = _copy(s.teacher, t)
    (run / "DONE.json").unlink()
    return Built(_search_cmd(t, run), (str(run),))


def search_teacher_is_discriminator(t: Path, s: Stages) -> Built:
    return Built(_search_cmd(t, s.teacher / "D_AtoB.pt"), (str(s.teacher / "D_AtoB.pt"),))


def search_finished(t: Path, s: Stages) -> Built:
    run = Path(shutil.copytree(s.search, t / "s"))
    return Built(_search_cmd(t, s.teacher), (str(run),), watch=run)


def _ft_cmd(t: Path, search: Path, *extra: str) -> list[str]:
    return ["finetune", "--out", str(t / "run"), "--search", str(search), "--steps", "2",
            "--device", "cpu", *extra]


def finetune_teacher_one_direction(t: Path, s: Stages) -> Built:
    g = s.teacher / "G_AtoB.pt"
    return Built(_ft_cmd(t, s.search, "--teacher", str(g)), (str(g),))


def finetune_finished(t: Path, s: Stages) -> Built:
    run = _copy(s.finetune, t)
    return Built(_ft_cmd(t, s.search), (str(run),), watch=run)


def finetune_resume_teacher_ckpt(t: Path, s: Stages) -> Built:
    (t / "run").mkdir()
    shutil.copy(s.teacher / "checkpoint.pt", t / "run" / "checkpoint.pt")
    return Built(_ft_cmd(t, s.search, "--resume"), (str(t / "run" / "checkpoint.pt"),))


def _eval_cmd(t: Path, student: Path, *extra: str) -> list[str]:
    return ["eval", "--out", str(t / "e"), "--student", str(student), "--device", "cpu", *extra]


def eval_student_is_discriminator(t: Path, s: Stages) -> Built:
    d = s.teacher / "D_AtoB.pt"
    return Built(_eval_cmd(t, d, "--teacher", str(s.teacher)), (str(d),))


def eval_inception_zero_byte(t: Path, s: Stages) -> Built:
    (t / "inception.pth").write_bytes(b"")
    return Built(_eval_cmd(t, s.finetune, "--inception", str(t / "inception.pth")),
                 (str(t / "inception.pth"),))


def _import(src: Path, arch: str, out: Path) -> list[str]:
    return ["import", str(src), "--arch", arch, "--out", str(out)]


def import_unet_as_resnet(t: Path, s: Stages) -> Built:
    raw = _raw(t, s, "unet")
    return Built(_import(raw, "resnet", t / "g.pt"), (str(raw),))


def import_pickled(t: Path, s: Stages) -> Built:
    evil = _pickled_code(t)
    return Built(_import(evil, "resnet", t / "g.pt"), (str(evil),), marker=t / "PWNED")


def import_truncated(t: Path, s: Stages) -> Built:
    cut = _truncated_model(t, s)
    return Built(_import(cut, "resnet", t / "g.pt"), (str(cut),))


def import_dmad_file_other_family(t: Path, s: Stages) -> Built:
    g = s.teacher / "G_AtoB.pt"
    return Built(_import(g, "unet", t / "g.pt"), (str(g),))


def macs_truncated(t: Path, s: Stages) -> Built:
    cut = _truncated_model(t, s)
    return Built(["macs", str(cut)], (str(cut),))


def demo_unknown_section(t: Path, s: Stages) -> Built:
    cfg = _toml(t, "[teachr]\nsteps = 2\n")
    return Built(["demo", "--config", str(cfg), "--out", str(t / "d")], (str(cfg), "teachr"))


def data_out_under_file(t: Path, s: Stages) -> Built:
    (t / "f.txt").write_text("x")
    out = t / "f.txt" / "ds"
    return Built(["data", "--out", str(out), "--size", "32", "--n-train", "1", "--n-test", "1"],
                 (str(out),))


CASES = [
    # data
    Case("data-out-under-a-file", data_out_under_file, "cannot write"),
    # teacher: images and folders
    Case("teacher-corrupt-image", corrupt_image, "unreadable or truncated image"),
    Case("teacher-truncated-image", truncated_image, "unreadable or truncated image"),
    Case("teacher-zero-byte-image", zero_byte_image, "0 bytes"),
    Case("teacher-grayscale-image", grayscale_image, "image mode L, expected RGB"),
    Case("teacher-rgba-image", rgba_image, "image mode RGBA, expected RGB"),
    Case("teacher-image-smaller-than-crop", tiny_image, "smaller than the crop 32x32"),
    Case("teacher-empty-folder", empty_folder, "no images"),
    Case("teacher-missing-data-folder", missing_folder, "not found"),
    # teacher: configs
    Case("teacher-toml-unknown-key", toml_unknown_key, "unknown config key"),
    Case("teacher-toml-wrong-type", toml_wrong_type, "expected an integer"),
    Case("teacher-set-unknown-key", set_unknown_key, "unknown config key"),
    Case("teacher-set-wrong-type", set_wrong_type, "expected an integer"),
    # teacher: run folders and checkpoints
    Case("teacher-out-under-a-file", out_under_file, "cannot write here"),
    Case("teacher-finished-without-force", teacher_finished, "finished run; use --force"),
    Case("teacher-unfinished-without-resume", teacher_unfinished, "unfinished run; use --resume"),
    Case("teacher-resume-search-checkpoint", teacher_resume_search_ckpt,
         "is a 'search' checkpoint, not 'teacher'"),
    Case("teacher-resume-truncated-checkpoint", teacher_resume_truncated_ckpt,
         "truncated or corrupt"),
    # search
    Case("search-target-above-full-model", _target("1000"), "not below the full model"),
    Case("search-target-zero", _target("0"), "must be > 0"),
    Case("search-target-below-minimum", _target("1e-6"), "below the smallest"),
    Case("search-teacher-unfinished", search_teacher_unfinished, "not a finished teacher run"),
    Case("search-finished-without-force", search_finished, "finished run; use --force"),
    Case("search-teacher-is-discriminator", search_teacher_is_discriminator, "generator"),
    # finetune
    Case("finetune-finished-without-force", finetune_finished, "finished run; use --force"),
    Case("finetune-resume-teacher-checkpoint", finetune_resume_teacher_ckpt,
         "is a 'teacher' checkpoint, not 'finetune'"),
    Case("finetune-teacher-lacks-a-direction", finetune_teacher_one_direction, "BtoA"),
    # eval
    Case("eval-inception-zero-byte", eval_inception_zero_byte, "0 bytes"),
    Case("eval-student-is-discriminator", eval_student_is_discriminator, "generator"),
    # import
    Case("import-unet-as-resnet", import_unet_as_resnet, "looks like a unet checkpoint"),
    Case("import-dmad-resnet-file-as-unet", import_dmad_file_other_family,
         "is a dmad resnet model file, not unet"),
    Case("import-pickled-code", import_pickled, "refused"),
    Case("import-truncated-checkpoint", import_truncated, "truncated or corrupt"),
    # macs
    Case("macs-truncated-model", macs_truncated, "truncated or corrupt"),
    # demo
    Case("demo-unknown-section", demo_unknown_section, "unknown section"),
]


def _params() -> list:  # type: ignore[type-arg]
    out = []
    for c in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=c.bug)] if c.bug else []
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


@pytest.mark.parametrize("case", _params())
def test_bad_input_is_one_line_error(case: Case, stages: Stages, tmp_path: Path) -> None:
    built = case.build(tmp_path, stages)
    before = snapshot(built.watch) if built.watch else {}
    line = error_line(run_cli(*built.argv))
    assert case.match in line, line
    for name in built.names:
        assert name in line, (name, line)
    if built.watch is not None:
        assert snapshot(built.watch) == before, f"{built.watch} was changed"
    if built.marker is not None:
        assert not built.marker.exists(), "code from the checkpoint ran"


def test_cases_cover_every_subcommand() -> None:
    per = Counter(c.id.split("-")[0] for c in CASES)
    assert set(per) == {"data", "teacher", "search", "finetune", "eval", "import", "macs", "demo"}
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)
