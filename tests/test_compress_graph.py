"""``dmad compress`` on generators dmad knows only through their traced graph.

CUT (with and without anti-aliasing), pix2pixHD's global generator and in-house generators
(bilinear upsampling, a long concatenated skip, BatchNorm; pixel shuffle; GroupNorm, SiLU, a
grouped convolution and a space-to-depth stem) go through the same run folder as
dmad's own families: masks found from the graph, the search within 3 % of its budget, the
student pruned exactly and saved as a model file that rebuilds it, export parity fp32 ≥ 100 dB
with int8 reported. The model file replays the pruning from its spec; a spec that names no
module class, or a class far larger than its weights, is refused in one line.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import torch

from dmad.compress.checkpoint import load_generator, load_model, save_model
from dmad.compress.errors import DmadError
from dmad.compress.graph_model import GraphGenerator, graph_taps, graph_teacher
from dmad.compress.masks import attach_masks
from dmad.compress.models.public import CutResnet, Pix2PixHDGlobal, public_builder
from dmad.compress.prune import prune, prune_search_file
from dmad.compress.search_file import load_search
from tests.conftest import dmad_cmd
from tests.reference_generators import GroupNormNet, InHouse
from tests.test_import import _randomize

ROOT = Path(__file__).resolve().parent.parent
RUN = ("--steps", "6", "--finetune-steps", "4", "--size", "32", "--export-size", "32",
       "--macs-size", "64", "--quant", "fp32,int8", "--num-calib", "4", "--compare", "false",
       "--device", "cpu", "--checkpoint-every", "3")


def _compress(out: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(dmad_cmd("compress", *args, "--out", str(out), *RUN), env=env,
                          capture_output=True, text=True, timeout=900, check=False, cwd=ROOT)


def _half_macs(model: torch.nn.Module) -> float:
    from dmad.compress import budget

    spec = budget.cost_spec(graph_teacher(model, "x:y", {}), 64)
    return round(spec.macs({}, 64)[0] / 2 / 1e9, 6)


def _check_run(out: Path, target: float) -> None:
    """Search within 3 % under budget, pruning exact, student file rebuilds, parity gates."""
    arch = json.loads((out / "search" / "architecture.json").read_text())["directions"]["AtoB"]
    assert 0.97 * target <= arch["gmacs_paper"] <= target, arch["gmacs_paper"]
    masked, _masks, _ = load_search(out / "search" / "search_G_AtoB.pt")
    pruned = prune_search_file(out / "search" / "search_G_AtoB.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (pruned(x) - masked(x)).abs().max() < 1e-5
    student, _ = load_generator(out / "finetune" / "student_G_AtoB.pt")
    assert isinstance(student, GraphGenerator) and student.spec.masks
    assert sum(p.numel() for p in student.parameters()) < sum(
        p.numel() for p in masked.parameters())
    for which in ("compressed", "full"):
        art = json.loads((out / "export" / which / "parity.json").read_text())["artifacts"]
        assert art["fp32"]["parity"]["psnr_worst_db"] >= 100, which
        assert 15 < art["int8"]["parity"]["psnr_db"] < 100, which  # reported, quantised
    done = json.loads((out / "DONE.json").read_text())
    assert done["eval"]["images"] == 4


def test_cut_checkpoint_is_recognised_and_compressed_end_to_end(
        tmp_path: Path, default_data: Path, cli_env: dict[str, str]) -> None:
    torch.manual_seed(0)
    teacher = _randomize(CutResnet(ngf=8, n_blocks=3))  # anti-aliased: blur buffers
    ckpt = tmp_path / "latest_net_G.pth"
    torch.save(teacher.state_dict(), ckpt)
    target = _half_macs(CutResnet(ngf=8, n_blocks=3))
    out = tmp_path / "run"
    res = _compress(out, str(ckpt), "--images", str(default_data / "unaligned"),
                    "--target-gmacs", str(target), env=cli_env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "recognised as CutResnet" in res.stdout
    _check_run(out, target)
    full, _ = load_generator(out / "teacher" / "G_AtoB.pt")  # the teacher, by its class
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(full(x), teacher.eval()(x))
    res = subprocess.run(dmad_cmd("compress", "--out", str(out), "--resume"), env=cli_env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0 and "finished already" in res.stdout


@pytest.mark.parametrize("cls,kwargs", [
    ("tests.reference_generators:InHouse", {"ngf": 8}),
    # GroupNormNet also carries PixelShuffle after a conv (ShuffleUp's case, whose other forms
    # the structure, pruning and export tests cover)
    ("tests.reference_generators:GroupNormNet", {"ngf": 8}),
    ("dmad.compress.models.public:CutResnet", {"ngf": 8, "n_blocks": 2, "antialias": False}),
])
def test_user_class_compresses_end_to_end(cls: str, kwargs: dict[str, object], tmp_path: Path,
                                          default_data: Path, cli_env: dict[str, str]) -> None:
    torch.manual_seed(0)
    model = _randomize({"InHouse": InHouse, "CutResnet": CutResnet,
                        "GroupNormNet": GroupNormNet}[cls.rsplit(":", 1)[1]](**kwargs))
    weights = tmp_path / "weights.pth"
    torch.save(model.state_dict(), weights)
    target = _half_macs(copy.deepcopy(model))
    out = tmp_path / "run"
    res = _compress(out, str(weights), "--images", str(default_data / "unaligned"),
                    "--generator-class", cls, "--kwargs", json.dumps(kwargs),
                    "--target-gmacs", str(target), env=cli_env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "structure from its traced graph" in res.stdout
    _check_run(out, target)


def test_api_compresses_a_module_object(tmp_path: Path, default_data: Path) -> None:
    import dmad

    torch.manual_seed(0)
    g = _randomize(Pix2PixHDGlobal(ngf=4, n_down=3, n_blocks=2))
    target = _half_macs(copy.deepcopy(g))
    run = dmad.compress_generator(g, default_data / "unaligned", tmp_path / "run",
                                  kwargs={"ngf": 4, "n_down": 3, "n_blocks": 2},
                                  target_gmacs=target, steps=6, finetune_steps=4, size=32,
                                  export_size=32, macs_size=64, quant=("fp32", "int8"),
                                  num_calib=4, compare=False, device="cpu")
    assert isinstance(run.student, GraphGenerator)
    assert run.student.spec.builder == "dmad.compress.models.public:Pix2PixHDGlobal"
    _check_run(tmp_path / "run", target)
    with pytest.raises(DmadError, match="does not fit InHouse"):  # kwargs are checked
        dmad.compress_generator(InHouse(ngf=4), default_data / "unaligned", tmp_path / "run2",
                                target_gmacs=target, steps=6, device="cpu")
    assert not (tmp_path / "run2").exists()


def test_unsupported_layer_is_one_line_and_nothing_is_written(
        tmp_path: Path, default_data: Path, cli_env: dict[str, str]) -> None:
    from tests.reference_generators import WithAttention

    weights = tmp_path / "w.pth"
    torch.save(WithAttention().state_dict(), weights)
    out = tmp_path / "run"
    res = _compress(out, str(weights), "--images", str(default_data / "unaligned"),
                    "--generator-class", "tests.reference_generators:WithAttention",
                    "--target-gmacs", "0.001", env=cli_env)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "attn" in lines[0] and "not supported" in lines[0], lines
    assert not out.exists()


@pytest.mark.parametrize("make", [lambda: CutResnet(ngf=8, n_blocks=3),
                                  lambda: Pix2PixHDGlobal(ngf=4, n_down=3, n_blocks=2),
                                  lambda: InHouse(ngf=8)], ids=["cut", "pix2pixhd", "in-house"])
@pytest.mark.parametrize("seed", [0, 1])
def test_student_file_replays_the_pruning_exactly(make, seed: int, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    builder = {"CutResnet": "dmad.compress.models.public:CutResnet",
               "Pix2PixHDGlobal": "dmad.compress.models.public:Pix2PixHDGlobal",
               "InHouse": "tests.reference_generators:InHouse"}
    m = _randomize(make(), seed)
    kw = {"CutResnet": {"ngf": 8, "n_blocks": 3}, "InHouse": {"ngf": 8},
          "Pix2PixHDGlobal": {"ngf": 4, "n_down": 3, "n_blocks": 2}}[type(m).__name__]
    t = graph_teacher(m, builder[type(m).__name__], kw)
    masked = copy.deepcopy(t)
    for mask in attach_masks(masked).values():  # soft values with exact zeros, frozen
        with torch.no_grad():
            mask.weight.copy_(torch.randn_like(mask.weight))
            mask.bound.fill_(0.3)
    student = prune(masked.eval())
    save_model(student, tmp_path / "s.pt")
    again, _ = load_model(tmp_path / "s.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (student(x) - masked(x)).abs().max() < 1e-5
        assert torch.equal(again(x), student(x))
    taps_t, taps_s = graph_taps(t), graph_taps(again)
    assert list(taps_t) == list(taps_s) and len(taps_t) >= 3


def test_cut_taps_sit_where_dmads_resnet_taps_do() -> None:
    t = graph_teacher(CutResnet(ngf=8, n_blocks=3), "dmad.compress.models.public:CutResnet",
                      {"ngf": 8, "n_blocks": 3})
    paths = {k: next(n for n, mod in t.named_modules() if mod is v.module)
             for k, v in graph_taps(t).items()}
    # the stream after the stem (block 1 reads it), after blocks 1, 2 and 3 (the next reader)
    assert paths == {"tap0": "model.12.conv_block.1", "tap1": "model.13.conv_block.1",
                     "tap2": "model.14.conv_block.1", "tap3": "model.16"}


def test_public_builder_names_the_class_and_its_arguments() -> None:
    b, kw = public_builder(Pix2PixHDGlobal(ngf=4, n_down=3, n_blocks=2,
                                           norm="batch").state_dict())  # type: ignore[misc]
    assert b.endswith(":Pix2PixHDGlobal") and kw["norm"] == "batch" and kw["n_down"] == 3
    assert public_builder(CutResnet(ngf=8, n_blocks=2, antialias=False).state_dict()) is None


@pytest.mark.parametrize("builder,kwargs,msg", [
    ("os:system", {}, "has no nn.Module class"),
    ("no_such_module_here:G", {}, "neither dmad's, in the current folder, nor already"),
    ("this:G", {}, "set DMAD_TRUST_MODULES=this"),  # never imported: it prints on import
    ("dmad.compress.models.public:CutResnet", {"ngf": 10**6}, "far larger than the weights"),
    ("dmad.compress.models.public:CutResnet", {"bogus": 1}, "invalid model spec"),
])
def test_crafted_graph_specs_are_refused_in_one_line(builder: str, kwargs: dict[str, object],
                                                     msg: str, tmp_path: Path) -> None:
    t = graph_teacher(CutResnet(ngf=8, n_blocks=2), "dmad.compress.models.public:CutResnet",
                      {"ngf": 8, "n_blocks": 2})
    masked = copy.deepcopy(t)
    attach_masks(masked)
    student = prune(masked.eval())
    save_model(student, tmp_path / "s.pt")
    obj = torch.load(tmp_path / "s.pt", weights_only=True)
    obj["spec"].update(builder=builder, kwargs=kwargs)
    torch.save(obj, tmp_path / "bad.pt")
    import sys

    with pytest.raises(DmadError) as e:
        load_model(tmp_path / "bad.pt")
    assert msg in str(e.value) and str(tmp_path / "bad.pt") in str(e.value)
    assert "\n" not in str(e.value) and "this" not in sys.modules


@pytest.mark.parametrize("arch", ["resnet6", "unet128"])
def test_pytorch_cyclegan_reference_checkpoints_compress_end_to_end(
        arch: str, tmp_path: Path, cli_env: dict[str, str]) -> None:
    """junyanz's ResNet-6 and UNet-128 (the originals' layouts, random weights) through the same
    run; UNet-128 has seven downsamplings, so it trains and exports at 128²."""
    from dmad.compress.data import make_default_dataset
    from tests.test_import import _resnet, _unet

    side = 128 if arch == "unet128" else 32
    data = make_default_dataset(tmp_path / "data", size=side, n_train=12, n_test=4, seed=0)
    model = _unet(num_downs=7, ngf=4) if arch == "unet128" else _resnet(n_blocks=6)
    ckpt = tmp_path / "latest_net_G.pth"
    torch.save(model.state_dict(), ckpt)
    from dmad.compress.importer import import_checkpoint

    full, _ = import_checkpoint(ckpt, "unet" if arch == "unet128" else "resnet")
    from dmad.compress.arch import profile

    m = 2 * side if side == 32 else side
    target = round(profile(full, (1, 3, m, m)).macs_paper / 2 / 1e9, 6)
    out = tmp_path / "run"
    args = [str(ckpt), "--images", str(data / "unaligned"), "--target-gmacs", str(target),
            "--size", str(side), "--export-size", str(side), "--macs-size", str(m)]
    assert RUN[4:10] == ("--size", "32", "--export-size", "32", "--macs-size", "64")
    res = subprocess.run(dmad_cmd("compress", *args, "--out", str(out), *RUN[:4], *RUN[10:]),
                         env=cli_env, capture_output=True, text=True, timeout=900, check=False,
                         cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    e = json.loads((out / "search" / "architecture.json").read_text())["directions"]["AtoB"]
    assert 0.97 * target <= e["gmacs_paper"] <= target
    for which in ("compressed", "full"):
        art = json.loads((out / "export" / which / "parity.json").read_text())["artifacts"]
        assert art["fp32"]["parity"]["psnr_worst_db"] >= 100, which
        assert 15 < art["int8"]["parity"]["psnr_db"] < 100, which


def test_graph_search_resume_equals_uninterrupted(tmp_path: Path, default_data: Path) -> None:
    from dmad.compress.train.search import SearchConfig, search

    torch.manual_seed(0)
    t = graph_teacher(_randomize(CutResnet(ngf=8, n_blocks=2)),
                      "dmad.compress.models.public:CutResnet", {"ngf": 8, "n_blocks": 2})
    save_model(t, tmp_path / "t.pt", size=32)
    kw = dict(teacher=str(tmp_path / "t.pt"), images=str(default_data / "unaligned"),
              target_gmacs=_half_macs(CutResnet(ngf=8, n_blocks=2)), macs_size=64, steps=10,
              bound_updates=5, device="cpu", checkpoint_every=3, size=32)
    search(SearchConfig(**kw), tmp_path / "a")
    search(SearchConfig(**kw), tmp_path / "b", max_steps=5)
    search(SearchConfig(**kw), tmp_path / "b", resume=True)
    a = torch.load(tmp_path / "a" / "search_G_AtoB.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "search_G_AtoB.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_dmad_import_writes_a_traced_model_file_for_a_cut_checkpoint(
        tmp_path: Path, cli_env: dict[str, str]) -> None:
    torch.manual_seed(0)
    g = _randomize(CutResnet(ngf=8, n_blocks=2)).eval()
    torch.save(g.state_dict(), tmp_path / "latest_net_G.pth")
    out = tmp_path / "G.pt"
    res = subprocess.run(dmad_cmd("import", str(tmp_path / "latest_net_G.pth"), "--out",
                                  str(out)), env=cli_env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    assert "recognised" in res.stdout and "CutResnet" in res.stdout
    back, _ = load_generator(out)
    assert back.spec.builder == "dmad.compress.models.public:CutResnet"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), g(x))
    again = subprocess.run(dmad_cmd("import", str(tmp_path / "latest_net_G.pth"), "--out",
                                    str(out)), env=cli_env, capture_output=True, text=True,
                           timeout=300, check=False)
    assert again.returncode == 2 and "--force" in again.stderr  # never overwritten silently
