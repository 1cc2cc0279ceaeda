"""Fake int8 for quantisation-aware distillation: its grids, where it sits, strip, resume, and
that its rounding noise is the exported int8 file's."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dmad.compress.checkpoint import load_model, save_model
from dmad.compress.models import ResnetGenerator, ResnetSpec, ResnetWidths, UnetGenerator, UnetSpec
from dmad.compress.quant_aware import (
    QuantAwareConfig,
    is_quant_aware,
    quant_aware_,
    set_quant_aware,
    strip_quant_aware_,
)
from dmad.compress.train.teacher import init_weights


def _resnet(**kw: object) -> ResnetGenerator:
    torch.manual_seed(0)
    g = ResnetGenerator(ResnetSpec(ngf=8, n_blocks=3, **kw))  # type: ignore[arg-type]
    init_weights(g)
    return g


def _observe(g: nn.Module, n: int = 4, side: int = 32) -> torch.Tensor:
    """Run ``n`` training-mode batches so the ranges see data; return a fixed probe input."""
    torch.manual_seed(1)
    g.train()
    with torch.no_grad():
        for _ in range(n):
            g(torch.rand(2, 3, side, side) * 2 - 1)
    g.eval()
    return torch.rand(1, 3, side, side) * 2 - 1


def test_sites_follow_the_exports_recipe() -> None:
    r = quant_aware_(_resnet())
    # 12 convs; all but the head feed an InstanceNorm; 3 block inputs + up1 read the stream
    assert (r.convs, r.equalized_outputs, r.stream_readers, r.tanh_outputs) == (12, 11, 4, 1)
    removed = ResnetWidths(8, 16, 32, (8, 0, 8), 16, 8)
    r = quant_aware_(_resnet(widths=removed))
    assert (r.convs, r.stream_readers) == (10, 3)
    r = quant_aware_(_resnet(separable=True))  # depthwise→norm and pointwise→norm both equalised
    assert r.convs == 18 and r.equalized_outputs == 17
    r = quant_aware_(_resnet(norm="batch"))  # folded BatchNorm: no equalisation, no balancing
    assert (r.equalized_outputs, r.stream_readers) == (0, 0)
    torch.manual_seed(0)
    r = quant_aware_(UnetGenerator(UnetSpec(ngf=4, num_downs=5)))
    assert r.convs == 10 and r.stream_readers == 0 and r.tanh_outputs == 1


def test_off_is_float_and_on_rounds_to_int8_grids() -> None:
    g = _resnet()
    ref = copy.deepcopy(g).eval()
    quant_aware_(g)
    x = _observe(g)
    with torch.no_grad():
        assert torch.equal(g(x), ref(x))  # attached but off: the float model, bit for bit
    set_quant_aware(g, True)
    _observe(g)
    seen: dict[str, torch.Tensor] = {}

    def grab(name: str, where: str):  # type: ignore[no-untyped-def]
        def pre(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            seen[f"{name}.in"] = args[0].detach()

        def post(_m: nn.Module, _a: object, out: torch.Tensor) -> None:
            seen[f"{name}.out"] = out.detach()
        return pre if where == "in" else post

    convs = {n: m for n, m in g.named_modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)}
    for n, m in convs.items():  # registered after the fake quantisation's own hooks
        m.register_forward_pre_hook(grab(n, "in"))
        m.register_forward_hook(grab(n, "out"))
    g.head.act.register_forward_hook(grab("tanh", "out"))
    with torch.no_grad():
        g(x)
    for n, m in convs.items():
        qi, qo = m.dmad_qa_in, m.dmad_qa_out
        view = (1, -1, 1, 1)
        z_in = seen[f"{n}.in"] / (qi.chan.view(view) if qi.mode == "peak" else 1.0)
        z_out = seen[f"{n}.out"] - (m.bias.view(view) if qo.mode == "spread" else 0.0)
        z_out = z_out / (qo.chan.view(view) if qo.mode == "spread" else 1.0)
        for z, q in ((z_in, qi), (z_out, qo)):
            step = float((q.hi - q.lo) / 255)
            k = (z - z.min()) / step  # every value on one 256-level grid
            assert (k - k.round()).abs().max() < 1e-2, n
            assert k.round().max() <= 255, n
        w = m.weight.detach()
        axis = 1 if isinstance(m, nn.ConvTranspose2d) else 0
        w = w.transpose(0, axis).flatten(1)
        k = w / (w.abs().amax(1, keepdim=True) / 127)
        assert (k - k.round()).abs().max() < 1e-3, n  # symmetric per-channel int8 weights
    t = seen["tanh.out"] * 128
    assert (t - t.round()).abs().max() < 1e-3  # TFLite's fixed Tanh output grid
    with torch.no_grad():
        assert (g(x) - ref(x)).abs().max() > 1e-3  # and it does change the output


def test_hybrid_layers_round_each_images_input_and_keep_the_output_float() -> None:
    """``hybrid=``: what the export's hybrid layers do at run time (LiteRT quantises a
    hybrid convolution's input per image, asymmetric, with that image's extremes)."""
    from dmad.compress.quant_aware import switch_layers

    g = _resnet()
    quant_aware_(g)
    set_quant_aware(g, True)
    _observe(g)
    names = {n for n, m in g.named_modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)}
    switch_layers(g, set(), tanh=False, hybrid=names)
    seen: dict[str, torch.Tensor] = {}
    g.stem.conv.register_forward_pre_hook(lambda _m, a: seen.__setitem__("in", a[0]))
    g.stem.conv.register_forward_hook(lambda _m, _a, out: seen.__setitem__("out", out))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        g(torch.cat([x, 0.1 * x]))  # the second image 10× flatter than the first
    steps = []
    for v in seen["in"]:
        lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
        step = (hi - lo) / 255
        k = (v - lo) / step
        assert (k - k.round()).abs().max() < 1e-2  # this image's own 256-level grid
        steps.append(step)
    assert steps[1] == pytest.approx(0.1 * steps[0], rel=0.05)  # not one range for both
    assert len(torch.unique(seen["out"][0])) > 256  # the output is not rounded
    w = g.stem.conv.weight.detach().flatten(1)
    k = w / (w.abs().amax(1, keepdim=True) / 127)
    assert (k - k.round()).abs().max() < 1e-3  # int8 weights
    switch_layers(g, set(), tanh=False)  # float: nothing rounded
    with torch.no_grad():
        g(x)
    assert len(torch.unique(seen["in"])) > 256


def test_gradients_reach_the_float_weights_and_strip_restores_the_model(tmp_path: Path) -> None:
    g = _resnet()
    plain_keys = set(g.state_dict())
    quant_aware_(g, QuantAwareConfig())
    set_quant_aware(g, True)
    g.train()
    g(torch.rand(2, 3, 32, 32) * 2 - 1).square().mean().backward()
    orig = g.stem.conv.parametrizations.weight.original
    assert orig.grad is not None and orig.grad.abs().sum() > 0
    with torch.no_grad():
        orig.add_(1e-4)  # a float update the int8 grid would round away
    trained = orig.detach().clone()
    strip_quant_aware_(g)
    assert not is_quant_aware(g) and type(g.stem.conv) is nn.Conv2d
    assert set(g.state_dict()) == plain_keys
    assert torch.equal(g.stem.conv.weight, trained)  # float, as trained, not rounded
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in g.modules())
    save_model(g, tmp_path / "s.pt", task="pix2pix", direction="AtoB")
    back, _ = load_model(tmp_path / "s.pt")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), g.eval()(x))


def test_state_dict_carries_ranges_and_switch() -> None:
    a = _resnet()
    quant_aware_(a)
    set_quant_aware(a, True)
    x = _observe(a)
    b = _resnet()
    quant_aware_(b)  # off and unobserved until the state arrives
    b.load_state_dict(a.state_dict())
    b.eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert b.stem.conv.dmad_qa_in.on


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="percentile"):
        QuantAwareConfig(percentile=40)
    with pytest.raises(ValueError, match="momentum"):
        QuantAwareConfig(momentum=0)


def test_fake_int8_noise_is_the_int8_files(tmp_path: Path, default_data: Path) -> None:
    """The point of the mirror: the fake int8 model is as far from float as the exported int8
    file is (same grids, same places), not far closer (noise missing) nor far worse. The file
    is the plain graph the mirror copies (no phases: its stem norm is another op)."""
    from dmad.export.api import ExportConfig, _folder_images, export_model
    from dmad.export.parity import psnr, run_tflite

    g = _resnet().eval()
    size = 48
    export_model(ExportConfig(out=tmp_path / "x", module=g, size=size, quant=("int8",),
                              calib=default_data / "unaligned" / "trainA", num_calib=16,
                              phases="off", int8_auto_float=0))  # all int8, as the mirror
    calib, ev, _, _ = _folder_images(default_data / "unaligned" / "trainA", size, 16, 8)
    with torch.no_grad():
        ref = g(torch.from_numpy(ev)).numpy()
    f = run_tflite(next((tmp_path / "x").glob("*int8.tflite")), ev.transpose(0, 2, 3, 1))
    file_db = psnr(ref, f.transpose(0, 3, 1, 2))
    q = copy.deepcopy(g)
    quant_aware_(q)
    set_quant_aware(q, True)
    q.train()
    with torch.no_grad():
        for _ in range(3):
            for i in range(len(calib)):
                q(torch.from_numpy(calib[i:i + 1]))
        fake_db = psnr(ref, q.eval()(torch.from_numpy(ev)).numpy())
    print(f"int8 file {file_db:.2f} dB, fake int8 {fake_db:.2f} dB vs float")
    assert np.isfinite(file_db) and abs(fake_db - file_db) < 0.75


def test_strip_a_copy_leaves_the_original_attached() -> None:
    a = _resnet()
    quant_aware_(a)
    b = strip_quant_aware_(copy.deepcopy(a))
    assert not is_quant_aware(b) and is_quant_aware(a)
    strip_quant_aware_(a)  # the original strips too (the classes parametrize made are shared)
    assert type(a.stem.conv) is nn.Conv2d and set(a.state_dict()) == set(b.state_dict())
