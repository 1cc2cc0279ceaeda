"""Distilled deploy transforms (compress/deploy_transforms.py): the norm fold is exact on the image
whose statistics it folded and only there; zero padding keeps the weights; bad requests are one
line before any training; `dmad compress --deploy` ships a student without norms or mirror
padding in its file."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from dmad.compress.errors import DmadError
from dmad.compress.models import ResnetGenerator, ResnetSpec, UnetGenerator, UnetSpec
from tests.conftest import dmad_cmd


def _resnet(**kw: object) -> ResnetGenerator:
    torch.manual_seed(0)
    g = ResnetGenerator(ResnetSpec(ngf=8, n_blocks=2, **kw)).eval()  # type: ignore[arg-type]
    for m in g.modules():  # affine norms away from the identity, so their fold is tested
        if isinstance(m, nn.InstanceNorm2d) and m.weight is not None:
            m.weight.data.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.5, 0.5)
    return g


def _images(n: int, side: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(3)) * 2 - 1


@pytest.mark.parametrize("kw", [{}, {"norm": "instance_affine"}, {"stream_affine": True}])
def test_fold_norms_is_exact_on_the_image_it_folded_and_only_there(kw: dict) -> None:
    from dmad.compress.deploy_transforms import fold_norms

    g, x = _resnet(**kw), _images(2)
    f = fold_norms(g, x[:1])
    assert f.spec.norm == "none" and not f.spec.stream_affine
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in f.modules())
    with torch.no_grad():
        assert (f(x[:1]) - g(x[:1])).abs().max() < 1e-4  # its own statistics: exact
        assert (f(x[1:]) - g(x[1:])).abs().max() > 1e-2  # another image's: distilled


def test_fold_norms_takes_the_average_statistics() -> None:
    """Two images folded: each layer's shift is minus the mean of the two images' means."""
    from dmad.compress.deploy_transforms import fold_norms

    g, x = _resnet(), _images(2)
    with torch.no_grad():
        pre = torch.stack([g.stem.conv(g.stem.pad(x[i:i + 1])).mean(dim=(2, 3))[0]
                           for i in range(2)]).mean(0)
        f = fold_norms(g, x)
        folded = f.stem.conv(f.stem.pad(x))  # the stem's output, normalised the folded way
    got = folded.mean(dim=(0, 2, 3))  # the two images' normalised means average to zero
    var = folded.var(dim=(2, 3), unbiased=False).mean(0)  # and their variances to one
    assert torch.allclose(got, torch.zeros_like(got), atol=1e-4)
    assert torch.allclose(var, torch.ones_like(var), atol=1e-3)
    assert pre.abs().max() > 1e-3  # there was a mean to remove


def test_zero_padding_keeps_the_weights_and_only_the_blocks_change() -> None:
    from dmad.compress.deploy_transforms import zero_padding

    g = _resnet()
    z = zero_padding(g)
    assert z.spec.padding == "zero"
    assert all(torch.equal(a, b) for a, b in zip(g.state_dict().values(),
                                                 z.state_dict().values(), strict=True))
    assert isinstance(z.stem.pad, nn.ReflectionPad2d) and isinstance(z.head.pad,
                                                                     nn.ReflectionPad2d)
    assert not any(isinstance(m, nn.ReflectionPad2d) for m in z.blocks.modules())
    with torch.no_grad():
        x = _images(1)
        assert (z(x) - g(x)).abs().max() > 1e-3  # the border changed: distilled, not exact


def test_deploy_refusals_are_one_line() -> None:
    from dmad.compress.deploy_transforms import check_deploy, parse_deploy

    assert parse_deploy(" zero-pad, fold-norms ,zero-pad") == ("zero-pad", "fold-norms")
    with pytest.raises(DmadError, match="field deploy: fold-norm not among"):
        parse_deploy("fold-norm")
    unet = UnetGenerator(UnetSpec(ngf=2, num_downs=5))
    with pytest.raises(DmadError, match="ResNet generators; this one is UnetGenerator"):
        check_deploy(unet, ("zero-pad",))
    with pytest.raises(DmadError, match="separable"):
        check_deploy(_resnet(separable=True), ("fold-norms",))
    with pytest.raises(DmadError, match="norm is 'batch'"):
        check_deploy(_resnet(norm="batch"), ("fold-norms",))


def _op_names(path: Path) -> Counter[str]:
    from dmad.export.parity import make_interpreter

    it = make_interpreter(path, None, delegate=False, allocate=False)
    return Counter(o["op_name"] for o in it._get_ops_details())


def test_compress_deploy_ships_a_student_without_norms_or_mirrored_borders(
        tmp_path: Path, default_data: Path, cli_env: dict[str, str]) -> None:
    from dmad.compress.checkpoint import load_generator, save_model

    teacher = tmp_path / "t.pt"
    save_model(_resnet(), teacher, source="test", arch="resnet", task="cyclegan",
               direction="AtoB", role="teacher")
    out = tmp_path / "run"
    args = [str(teacher), "--images", str(default_data / "unaligned"), "--steps", "4",
            "--finetune-steps", "4", "--size", "32", "--export-size", "32", "--quant", "fp32",
            "--compare", "false", "--device", "cpu"]
    res = subprocess.run(dmad_cmd("compress", *args, "--out", str(out), "--target-gmacs",
                                  "0.1", "--deploy", "fold-norms,zero-pad"),
                         env=cli_env, capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    student, _ = load_generator(out / "finetune" / "student_G_AtoB.pt")
    assert student.spec.norm == "none" and student.spec.padding == "zero"
    cfg = json.loads((out / "finetune" / "config.json").read_text())["finetune"]
    assert cfg["deploy"] == "fold-norms,zero-pad"
    exp = out / "export" / "compressed"
    ops = _op_names(exp / "generator_fp32.tflite")
    assert not set(ops) & {"MEAN", "SQUARED_DIFFERENCE", "RSQRT"}, ops  # no norm statistics
    full = _op_names(out / "export" / "full" / "generator_fp32.tflite")
    assert {"MEAN", "RSQRT"} <= set(full)  # the teacher's file still computes them
    copies = ("STRIDED_SLICE", "SLICE", "CONCATENATION")  # how the export mirrors a border
    assert sum(ops[k] for k in copies) < sum(full[k] for k in copies)  # stem and head only
    parity = json.loads((exp / "parity.json").read_text())
    assert parity["artifacts"]["fp32"]["parity"]["psnr_worst_db"] > 60
    bad = subprocess.run(dmad_cmd("compress", *args, "--deploy", "fold-norms", "--target-ms",
                                  "3", "--latency-table", str(tmp_path / "no.json"), "--out",
                                  str(tmp_path / "r2")),
                         env=cli_env, capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2 and "--deploy: not with a latency table" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "r2").exists()
    _resume_is_exact_and_keeps_the_transforms(out, teacher, tmp_path)


def _resume_is_exact_and_keeps_the_transforms(run: Path, teacher: Path, tmp_path: Path) -> None:
    """A fine-tune with the transforms killed and resumed equals one run through (the
    statistics are taken from the same images again); resuming with other transforms is
    refused (the checkpoint's weights would load into another network without complaint)."""
    from dmad.compress.train.finetune import FinetuneConfig, finetune

    kw = dict(search=str(run / "search"), images=str(run / "split.json"), teacher=str(teacher),
              steps=4, size=32, eval_size=32, device="cpu", checkpoint_every=2,
              deploy="fold-norms,zero-pad", tensorboard=False)
    finetune(FinetuneConfig(**kw), tmp_path / "a")
    finetune(FinetuneConfig(**kw), tmp_path / "b", max_steps=2)
    finetune(FinetuneConfig(**kw), tmp_path / "b", resume=True)
    # zero padding changes no weight's name or shape: only the recorded transforms tell
    finetune(FinetuneConfig(**{**kw, "deploy": "zero-pad"}), tmp_path / "c", max_steps=2)
    with pytest.raises(DmadError, match="started with --deploy 'zero-pad'; resume with the"):
        finetune(FinetuneConfig(**{**kw, "deploy": ""}), tmp_path / "c", resume=True)
    a = torch.load(tmp_path / "a" / "student_G_AtoB.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "student_G_AtoB.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_folded_narrow_stem_still_runs_on_the_phases_exactly() -> None:
    """The export puts a stem under 16 channels on the image's 2×2 phases; a stem without
    its norm (folded) takes the same exact form."""
    from dmad.compress.deploy_transforms import fold_norms
    from dmad.export.s2d import to_phases

    x = _images(2)
    f = fold_norms(_resnet(), x[:1])
    phased, info = to_phases(f, "auto")
    assert info["front"] is True and info["head"] is True
    with torch.no_grad():
        assert (phased(x) - f(x)).abs().max() < 1e-5
