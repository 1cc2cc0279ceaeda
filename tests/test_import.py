"""Importing pytorch-CycleGAN-and-pix2pix generator checkpoints (compress.importer).

The original generator classes are re-created here (as in the upstream ``models/networks.py``) to
write checkpoints in the real key layout; every import must then compute exactly what the
original module computes.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch import nn

from dmad.compress.checkpoint import load_model, save_model
from dmad.compress.errors import DmadError
from dmad.compress.importer import ImportReport, import_checkpoint, import_to_file
from dmad.compress.models import (
    PatchDiscriminator,
    ResnetGenerator,
    ResnetSpec,
    ResnetWidths,
    UnetSpec,
    build,
)

# ------------------------------------------------ re-creation of the original networks.py classes

BATCH = functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
INSTANCE = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
INSTANCE_AFFINE = functools.partial(nn.InstanceNorm2d, affine=True, track_running_stats=False)


def _use_bias(norm_layer) -> bool:  # type: ignore[no-untyped-def]
    if isinstance(norm_layer, functools.partial):
        return norm_layer.func == nn.InstanceNorm2d
    return norm_layer == nn.InstanceNorm2d


class OrigResnetBlock(nn.Module):
    def __init__(self, dim, padding_type, norm_layer, use_dropout, use_bias):  # type: ignore[no-untyped-def]
        super().__init__()
        self.conv_block = self.build_conv_block(dim, padding_type, norm_layer, use_dropout,
                                                use_bias)

    def build_conv_block(self, dim, padding_type, norm_layer, use_dropout, use_bias):  # type: ignore[no-untyped-def]
        conv_block: list[nn.Module] = []
        p = 0
        if padding_type == "reflect":
            conv_block += [nn.ReflectionPad2d(1)]
        elif padding_type == "zero":
            p = 1
        conv_block += [nn.Conv2d(dim, dim, kernel_size=3, padding=p, bias=use_bias),
                       norm_layer(dim), nn.ReLU(True)]
        if use_dropout:
            conv_block += [nn.Dropout(0.5)]
        p = 0
        if padding_type == "reflect":
            conv_block += [nn.ReflectionPad2d(1)]
        elif padding_type == "zero":
            p = 1
        conv_block += [nn.Conv2d(dim, dim, kernel_size=3, padding=p, bias=use_bias),
                       norm_layer(dim)]
        return nn.Sequential(*conv_block)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return x + self.conv_block(x)


class OrigResnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, ngf=64, norm_layer=BATCH, use_dropout=False,  # type: ignore[no-untyped-def]
                 n_blocks=6, padding_type="reflect"):
        super().__init__()
        use_bias = _use_bias(norm_layer)
        model: list[nn.Module] = [nn.ReflectionPad2d(3),
                                  nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
                                  norm_layer(ngf), nn.ReLU(True)]
        n_downsampling = 2
        for i in range(n_downsampling):
            mult = 2**i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1,
                                bias=use_bias),
                      norm_layer(ngf * mult * 2), nn.ReLU(True)]
        mult = 2**n_downsampling
        for _ in range(n_blocks):
            model += [OrigResnetBlock(ngf * mult, padding_type=padding_type, norm_layer=norm_layer,
                                      use_dropout=use_dropout, use_bias=use_bias)]
        for i in range(n_downsampling):
            mult = 2 ** (n_downsampling - i)
            model += [nn.ConvTranspose2d(ngf * mult, int(ngf * mult / 2), kernel_size=3, stride=2,
                                         padding=1, output_padding=1, bias=use_bias),
                      norm_layer(int(ngf * mult / 2)), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3)]
        model += [nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0)]
        model += [nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.model(x)


class OrigUnetSkipConnectionBlock(nn.Module):
    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False,  # type: ignore[no-untyped-def]
                 innermost=False, norm_layer=BATCH, use_dropout=False):
        super().__init__()
        self.outermost = outermost
        use_bias = _use_bias(norm_layer)
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            down = [downconv]
            up = [uprelu, upconv, nn.Tanh()]
            model = [*down, submodule, *up]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1,
                                        bias=use_bias)
            down = [downrelu, downconv]
            up = [uprelu, upconv, upnorm]
            model = down + up
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1,
                                        bias=use_bias)
            down = [downrelu, downconv, downnorm]
            up = [uprelu, upconv, upnorm]
            if use_dropout:
                model = [*down, submodule, *up, nn.Dropout(0.5)]
            else:
                model = [*down, submodule, *up]
        self.model = nn.Sequential(*model)

    def forward(self, x):  # type: ignore[no-untyped-def]
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)  # x was changed in place by downrelu


class OrigUnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm_layer=BATCH,  # type: ignore[no-untyped-def]
                 use_dropout=False):
        super().__init__()
        block_cls = OrigUnetSkipConnectionBlock
        block = block_cls(ngf * 8, ngf * 8, input_nc=None, submodule=None, norm_layer=norm_layer,
                          innermost=True)
        for _ in range(num_downs - 5):
            block = block_cls(ngf * 8, ngf * 8, input_nc=None, submodule=block,
                              norm_layer=norm_layer, use_dropout=use_dropout)
        block = block_cls(ngf * 4, ngf * 8, input_nc=None, submodule=block, norm_layer=norm_layer)
        block = block_cls(ngf * 2, ngf * 4, input_nc=None, submodule=block, norm_layer=norm_layer)
        block = block_cls(ngf, ngf * 2, input_nc=None, submodule=block, norm_layer=norm_layer)
        self.model = block_cls(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True,
                               norm_layer=norm_layer)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.model(x)


# ------------------------------------------------------------------------------------- helpers


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial norm parameters and running stats, so that copying them is actually tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d):
                if m.weight is not None:
                    m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                    m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
                if m.running_mean is not None:
                    m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                    m.num_batches_tracked.fill_(7)
    return model.eval()


def _same(a: nn.Module, b: nn.Module, shape: tuple[int, ...], seed: int = 1) -> float:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ya, yb = a.eval()(x.clone()), b.eval()(x.clone())
    assert ya.shape == yb.shape
    return float((ya - yb).abs().max())


def _resnet(norm_layer=INSTANCE, **kw) -> OrigResnetGenerator:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    opts = {"ngf": 8, "n_blocks": 3, **kw}
    return _randomize(OrigResnetGenerator(3, 3, norm_layer=norm_layer, **opts))  # type: ignore[return-value]


def _unet(num_downs: int = 6, ngf: int = 4, norm_layer=BATCH, **kw) -> OrigUnetGenerator:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = OrigUnetGenerator(3, 3, num_downs, ngf=ngf, norm_layer=norm_layer, **kw)
    return _randomize(net)  # type: ignore[return-value]


def _save(obj: object, tmp_path: Path, name: str = "latest_net_G.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _renamed(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every module renamed to an arbitrary name, order and parameter names kept."""
    out: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}
    for key, value in sd.items():
        prefix, _, leaf = key.rpartition(".")
        names.setdefault(prefix, f"mine_{len(names)}.layer")
        out[f"{names[prefix]}.{leaf}"] = value
    return out


# ----------------------------------------------------------------------------------- ResNet


def test_resnet_instance_equals_original_and_infers(tmp_path: Path) -> None:
    orig = _resnet()
    path = _save(orig.state_dict(), tmp_path)
    model, report = import_checkpoint(path, "resnet")
    assert _same(orig, model, (2, 3, 32, 32)) < 1e-5
    assert report.inferred["ngf"] == 8 and report.inferred["n_blocks"] == 3
    assert report.inferred["norm"] == "instance"
    assert report.inferred["input_nc"] == 3 and report.inferred["output_nc"] == 3
    assert report.tensors == len(orig.state_dict()) == report.renamed
    assert report.spec["family"] == "resnet" and not report.dropped
    assert "latest_net_G.pth" in str(report) and "ngf=8" in str(report)


def test_resnet_batch_norm_copies_running_stats(tmp_path: Path) -> None:
    orig = _resnet(BATCH)
    model, report = import_checkpoint(_save(orig.state_dict(), tmp_path), "resnet")
    assert report.spec["norm"] == "batch"
    assert _same(orig, model, (2, 3, 32, 32)) < 1e-5
    bn = model.stem.norm  # type: ignore[union-attr]
    assert torch.equal(bn.running_var, orig.model[2].running_var)
    assert int(bn.num_batches_tracked) == 7


def test_resnet_old_batch_norm_without_num_batches_tracked(tmp_path: Path) -> None:
    orig = _resnet(BATCH)
    sd = {k: v for k, v in orig.state_dict().items() if not k.endswith("num_batches_tracked")}
    model, report = import_checkpoint(_save(sd, tmp_path), "resnet")
    assert _same(orig, model, (1, 3, 32, 32)) < 1e-5
    assert len(report.filled) == 11
    assert all(k.endswith("num_batches_tracked") for k in report.filled)
    assert int(model.stem.norm.num_batches_tracked) == 0  # type: ignore[union-attr]


def test_resnet_affine_instance_norm(tmp_path: Path) -> None:
    orig = _resnet(INSTANCE_AFFINE)
    model, report = import_checkpoint(_save(orig.state_dict(), tmp_path), "resnet")
    assert report.inferred["norm"] == "instance_affine"
    assert _same(orig, model, (2, 3, 32, 32)) < 1e-5


@pytest.mark.parametrize("affine", [False, True])
def test_resnet_old_instance_norm_running_stats_dropped(tmp_path: Path, affine: bool) -> None:
    # PyTorch < 0.4 InstanceNorm layers saved running stats; the original repo deletes them.
    old = _resnet(functools.partial(nn.InstanceNorm2d, affine=affine, track_running_stats=True))
    sd = old.state_dict()
    orig = _resnet(INSTANCE_AFFINE if affine else INSTANCE)
    orig.load_state_dict({k: v for k, v in sd.items() if not k.rsplit(".", 1)[1].startswith(
        ("running_", "num_batches"))})
    norm = "instance_affine" if affine else None  # weight+bias+running stats reads as BatchNorm
    model, report = import_checkpoint(_save(sd, tmp_path), "resnet", norm=norm)
    assert _same(orig, model, (2, 3, 32, 32)) < 1e-5
    assert len(report.dropped) == 3 * 11
    assert report.spec["norm"] == ("instance_affine" if affine else "instance")


def test_resnet_dropout_zero_padding_module_prefix_and_wrapper(tmp_path: Path) -> None:
    orig = _resnet(use_dropout=True, padding_type="zero")
    sd = {f"module.{k}": v for k, v in orig.state_dict().items()}
    assert "module.model.10.conv_block.4.weight" in sd  # zero padding: no pad modules
    path = _save({"state_dict": sd, "epoch": 200, "optimizer": {"lr": 2e-4}}, tmp_path)
    model, report = import_checkpoint(path, "resnet", padding="zero", dropout=True)
    assert model.spec.padding == "zero" and model.spec.dropout  # type: ignore[union-attr]
    assert "padding" not in report.inferred and report.dropped == []
    assert _same(orig, model, (2, 3, 32, 32)) < 1e-5
    # dropout shifts the second conv to index 6 of conv_block
    orig2 = _resnet(use_dropout=True)
    assert "model.10.conv_block.6.weight" in orig2.state_dict()
    path2 = _save({"model": orig2.state_dict()}, tmp_path, "latest_net_G_A.pth")
    model2, _ = import_checkpoint(path2, "resnet")
    assert _same(orig2, model2, (1, 3, 32, 32)) < 1e-5


def test_resnet_renamed_keys_still_import(tmp_path: Path) -> None:
    orig = _resnet(BATCH)
    model, report = import_checkpoint(_save(_renamed(orig.state_dict()), tmp_path), "resnet")
    assert _same(orig, model, (2, 3, 32, 32)) < 1e-5
    assert report.renamed == report.tensors


def test_resnet_norm_none_original_has_no_conv_bias(tmp_path: Path) -> None:
    orig = _resnet(lambda c: nn.Identity())
    model, report = import_checkpoint(_save(orig.state_dict(), tmp_path), "resnet")
    assert report.spec["norm"] == "none" and len(report.filled) == 11
    assert _same(orig, model, (1, 3, 32, 32)) < 1e-5


def test_separable_resnet_round_trip_renamed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = _randomize(build(ResnetSpec(ngf=8, n_blocks=3, separable=True, norm="batch")))
    path = _save(_renamed(src.state_dict()), tmp_path)
    model, report = import_checkpoint(path, "resnet", separable=True)
    assert report.inferred["n_blocks"] == 3 and report.spec["norm"] == "batch"
    assert _same(src, model, (2, 3, 32, 32)) < 1e-5
    with pytest.raises(DmadError, match=r"latest_net_G\.pth.*separable=True"):
        import_checkpoint(path, "resnet")


# ------------------------------------------------------------------------------------- UNet


def test_unet_equals_original_in_place_leaky_relu(tmp_path: Path) -> None:
    orig = _unet(6, 4, use_dropout=True)
    sd = orig.state_dict()
    model, report = import_checkpoint(_save(sd, tmp_path), "unet")
    assert report.inferred["num_downs"] == 6 and report.inferred["ngf"] == 4
    assert report.spec["norm"] == "batch" and report.spec["dropout"]
    # state-dict order: outer down conv ... innermost down, innermost up ... outermost up
    assert [k for k in model.state_dict() if k.endswith("conv.weight")] == [
        *(f"downs.{i}.conv.weight" for i in range(6)), *(f"ups.{i}.conv.weight" for i in range(6))]
    assert _same(orig, model, (2, 3, 64, 64)) < 1e-5


def test_unet_up_path_consumes_what_the_original_consumes(tmp_path: Path) -> None:
    # The original's in-place LeakyReLU makes block k's skip half LeakyReLU(x); dmad
    # concatenates x. Every concatenation feeds straight into a ReLU and
    # ReLU(LeakyReLU(x)) == ReLU(x), so what each up path consumes must be identical.
    orig = _unet(6, 4)
    model, _ = import_checkpoint(_save(orig.state_dict(), tmp_path), "unet")
    blocks, block = [], orig.model
    while isinstance(block, OrigUnetSkipConnectionBlock):
        blocks.append(block)
        block = next((m for m in block.model if isinstance(m, OrigUnetSkipConnectionBlock)), None)
    assert len(blocks) == 6
    got_orig: dict[int, torch.Tensor] = {}
    got_dmad: dict[int, torch.Tensor] = {}
    for k in range(1, 6):  # output of original block k = input of dmad's up path of block k-1
        blocks[k].register_forward_hook(
            lambda m, i, o, k=k: got_orig.__setitem__(k, o.clone()))  # parent's ReLU is in place
        model.up_block(k - 1).register_forward_pre_hook(  # type: ignore[operator]
            lambda m, i, k=k: got_dmad.__setitem__(k, i[0].clone()))
    _same(orig, model, (1, 3, 64, 64))
    for k in range(1, 6):
        relu = torch.nn.functional.relu
        assert torch.allclose(relu(got_orig[k]), relu(got_dmad[k]), atol=1e-6), k
        assert (got_dmad[k] < 0).any()  # the raw concatenation, before the ReLU


def test_unet_256_tiny(tmp_path: Path) -> None:
    orig = _unet(8, 2)
    model, report = import_checkpoint(_save(orig.state_dict(), tmp_path), "unet")
    assert report.inferred["num_downs"] == 8 and report.inferred["ngf"] == 2
    assert _same(orig, model, (1, 3, 256, 256)) < 1e-5


def test_unet_instance_norm_renamed(tmp_path: Path) -> None:
    orig = _unet(6, 4, INSTANCE)
    path = _save({"netG": _renamed(orig.state_dict())}, tmp_path)
    model, report = import_checkpoint(path, "unet")
    assert report.spec["norm"] == "instance"
    assert _same(orig, model, (2, 3, 64, 64)) < 1e-5


# ------------------------------------------------------------------------ dmad files and saving


def test_import_to_file_and_dmad_model_pass_through(tmp_path: Path) -> None:
    orig = _unet(6, 4)
    src = _save(orig.state_dict(), tmp_path)
    out = tmp_path / "teacher.pt"
    report = import_to_file(src, "unet", out)
    assert isinstance(report, ImportReport)
    model, meta = load_model(out)
    assert meta == {"source": str(src), "arch": "unet"}
    assert _same(orig, model, (1, 3, 64, 64)) < 1e-5
    again, rep2 = import_checkpoint(out, "unet")
    assert rep2.renamed == 0 and _same(orig, again, (1, 3, 64, 64)) < 1e-5
    with pytest.raises(DmadError, match=r"teacher\.pt: is a dmad unet model file, not resnet"):
        import_checkpoint(out, "resnet")


def test_pruned_dmad_model_keeps_its_widths(tmp_path: Path) -> None:
    spec = ResnetSpec(ngf=8, n_blocks=3, widths=ResnetWidths(6, 12, 20, (10, 0, 5), 14, 7))
    src = _randomize(ResnetGenerator(spec))
    save_model(src, tmp_path / "pruned.pt")
    model, _ = import_checkpoint(tmp_path / "pruned.pt", "resnet")
    assert _same(src, model, (1, 3, 32, 32)) < 1e-5


# ---------------------------------------------------------------------------------- mismatches


def _refused(path: Path, arch: str, **opts: object) -> str:
    with pytest.raises(DmadError) as info:
        import_checkpoint(path, arch, **opts)  # type: ignore[arg-type]
    msg = str(info.value)
    assert path.name in msg and "\n" not in msg
    return msg


def test_unet_checkpoint_as_resnet(tmp_path: Path) -> None:
    msg = _refused(_save(_unet(6, 4).state_dict(), tmp_path), "resnet")
    assert "does not fit resnet" in msg and "try arch unet" in msg


def test_resnet_checkpoint_as_unet(tmp_path: Path) -> None:
    msg = _refused(_save(_resnet().state_dict(), tmp_path), "unet")
    assert "try arch resnet" in msg


def test_wrong_n_blocks(tmp_path: Path) -> None:
    msg = _refused(_save(_resnet().state_dict(), tmp_path), "resnet", n_blocks=2)
    assert "does not fit resnet ngf=8 n_blocks=2" in msg
    assert "source has 12 layers, target 10" in msg


def test_wrong_ngf_names_the_layers(tmp_path: Path) -> None:
    msg = _refused(_save(_resnet().state_dict(), tmp_path), "resnet", ngf=4)
    assert "layer 0 model.1.weight 8x3x7x7 vs stem.conv.weight 4x3x7x7 (+" in msg


def test_discriminator_state_dict(tmp_path: Path) -> None:
    path = _save(PatchDiscriminator().state_dict(), tmp_path, "latest_net_D.pth")
    assert "discriminator" in _refused(path, "resnet")
    assert "discriminator" in _refused(path, "unet")


def test_empty_dict_and_non_checkpoint_files(tmp_path: Path) -> None:
    assert "empty" in _refused(_save({}, tmp_path), "resnet")
    assert "no generator state dict" in _refused(_save({"epoch": 3}, tmp_path, "e.pth"), "unet")
    assert "not a state dict" in _refused(_save(torch.zeros(3), tmp_path, "t.pth"), "resnet")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    _refused(text, "resnet")
    _refused(tmp_path / "missing.pth", "resnet")


class Payload:
    """A pickled custom object: weights_only loading must refuse it."""

    def __init__(self) -> None:
        self.weights = torch.zeros(2)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    assert "refused" in _refused(_save({"state_dict": Payload()}, tmp_path), "resnet")


def test_bad_options(tmp_path: Path) -> None:
    path = _save(_resnet().state_dict(), tmp_path)
    _refused(path, "vgg")
    _refused(path, "resnet", norm="group")
    _refused(path, "resnet", num_downs=8)
    _refused(path, "unet", n_blocks=9)
    assert "must be >= 5" in _refused(path, "unet", num_downs=3)
    assert isinstance(build(UnetSpec(ngf=4, num_downs=5)), nn.Module)


def test_an_original_module_in_memory_maps_to_the_same_function() -> None:
    """``MaskSearch`` / ``as_generator`` take a pytorch-CycleGAN-and-pix2pix module as it is."""
    from dmad.compress.mask_search import as_generator

    orig = _randomize(_resnet())
    g = as_generator(orig)
    assert isinstance(g, ResnetGenerator) and g is not orig
    assert _same(orig, g, (1, 3, 32, 32)) < 1e-5
    mine = ResnetGenerator(ResnetSpec(ngf=4, n_blocks=2))
    assert as_generator(mine) is mine
    with pytest.raises(DmadError, match="Linear: not a ResNet or UNet"):
        as_generator(nn.Linear(3, 3))


def test_macs_counts_a_raw_checkpoint_as_its_import(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`dmad macs latest_net_G_A.pth` works as `dmad compress` takes the file (users pick
    --target-gmacs from it), with the same count as the imported model."""
    import json

    from dmad.cli import main

    path = _save(_resnet().state_dict(), tmp_path)
    assert main(["macs", str(path), "--json"]) == 0
    raw = json.loads(capsys.readouterr().out)
    import_to_file(path, "resnet", tmp_path / "g.pt")
    assert main(["macs", str(tmp_path / "g.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == raw and raw["family"] == "resnet"
