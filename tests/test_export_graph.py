"""The default TFLite converter (PyTorch → NHWC graph → TensorFlow's converter), its exact
rewrites (range equalisation, sub-pixel upsampling) and the int8 recipe they serve.

The size sweep converts every generator family at sizes from 64 to 512 in one TensorFlow
process (a subprocess, like the export's), so the ~8 s TensorFlow import is paid once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dmad.compress.errors import DmadError
from dmad.compress.models import ResnetSpec, UnetSpec, build
from dmad.compress.models.resnet import ResnetWidths
from dmad.export.equalize import equalize
from dmad.export.graph import trace
from dmad.export.ranges import _quant_mse, best_range

ROOT = Path(__file__).resolve().parent.parent

# Runs graphs with TensorFlow directly (``tf`` mode) or through an fp32 .tflite (``tflite``).
_RUNNER = textwrap.dedent("""
    import json, sys, numpy as np
    from pathlib import Path
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter
    from dmad.export.tfgraph import build_function
    work = Path(sys.argv[1])
    for job in json.loads((work / "jobs.json").read_text()):
        fn = build_function(json.loads((work / job["graph"]).read_text()),
                            dict(np.load(work / job["arrays"])))
        x = np.load(work / job["input"])
        if job["mode"] == "tf":
            y = fn(tf.constant(x))["output"].numpy()
        else:
            cf = fn.get_concrete_function()
            blob = tf.lite.TFLiteConverter.from_concrete_functions([cf], fn).convert()
            it = Interpreter(model_content=blob)
            it.allocate_tensors()
            it.set_tensor(it.get_input_details()[0]["index"], x)
            it.invoke()
            y = it.get_tensor(it.get_output_details()[0]["index"])
            ops = sorted({o["op_name"] for o in it._get_ops_details()})
            (work / (job["name"] + ".ops.json")).write_text(json.dumps(ops))
        np.save(work / (job["name"] + ".out.npy"), y)
""")


def _run_graphs(tmp: Path, jobs: list[tuple[str, object, np.ndarray, str]]
                ) -> dict[str, np.ndarray]:
    """``jobs``: (name, Graph, NCHW input, "tf" | "tflite"); returns NCHW outputs by name."""
    desc = []
    for name, g, x, mode in jobs:
        gj, arrays = g.to_json()  # type: ignore[attr-defined]
        (tmp / f"{name}.json").write_text(json.dumps(gj))
        np.savez(tmp / f"{name}.npz", **arrays)
        np.save(tmp / f"{name}.in.npy", np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
        desc.append({"name": name, "graph": f"{name}.json", "arrays": f"{name}.npz",
                     "input": f"{name}.in.npy", "mode": mode})
    (tmp / "jobs.json").write_text(json.dumps(desc))
    env = {"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", _RUNNER, str(tmp)], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return {name: np.load(tmp / f"{name}.out.npy").transpose(0, 3, 1, 2)
            for name, *_ in jobs}


def _torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def _input(size: int, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 3, size, size, generator=g) * 2 - 1).numpy()


def _random_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def _family(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "resnet8":
        return build(ResnetSpec(ngf=8))
    if name == "resnet32":  # the demo teacher that onnx2tf mis-converted at 256²
        return build(ResnetSpec(ngf=32))
    if name == "resnet64":
        return build(ResnetSpec(ngf=64, n_blocks=2))
    if name == "pruned":  # uneven searched widths, affine stream writers, a removed block
        spec = ResnetSpec(ngf=16, norm="instance", stream_affine=True,
                          widths=ResnetWidths(stem=11, down1=23, stream=37,
                                              blocks=(9, 0, 17, 5, 0, 3, 8, 1, 30), up1=19,
                                              up2=7))
        return build(spec)
    if name == "separable":
        return build(ResnetSpec(ngf=16, separable=True))
    if name == "batchnorm":
        return _random_bn(build(ResnetSpec(ngf=8, norm="batch", padding="zero")))
    if name == "unet256":
        return _random_bn(build(UnetSpec(ngf=8, num_downs=8)))
    raise KeyError(name)


# Every family at sizes 64-512 (UNet-256: the multiples of 256 it accepts).
# sides off every power of two (68, 100, 132, 260: odd halvings), and the largest ones
_SWEEP = [("resnet8", s) for s in (64, 68, 100, 132, 260, 512)] + [
    ("resnet32", 256), ("resnet64", 128), ("pruned", 64), ("pruned", 132),
    ("separable", 100), ("separable", 512), ("batchnorm", 68), ("unet256", 256),
    ("unet256", 512)]


def test_every_family_converts_at_every_size(tmp_path: Path) -> None:
    jobs, refs = [], {}
    for fam, size in _SWEEP:
        m = _family(fam)
        x = _input(size)
        name = f"{fam}_{size}"
        jobs.append((name, trace(m, (1, 3, size, size)), x, "tflite"))
        refs[name] = _torch(m, x)
    outs = _run_graphs(tmp_path, jobs)
    worst = {n: float(np.abs(outs[n] - refs[n]).max()) for n in refs}
    bad = {n: e for n, e in worst.items() if not e <= 1e-4}
    assert not bad, bad
    # the graph is NHWC by construction: one input, NHWC shapes, no layout transposes
    for fam, size in _SWEEP:
        ops = json.loads((tmp_path / f"{fam}_{size}.ops.json").read_text())
        assert "TRANSPOSE" not in ops and "MIRROR_PAD" not in ops, (fam, size, ops)


def test_subpixel_graph_has_no_transpose_conv_and_is_exact(tmp_path: Path) -> None:
    from dmad.export.subpixel import to_subpixel

    m = _family("pruned")
    sub, n = to_subpixel(m)
    assert n == 2
    x = _input(64)
    outs = _run_graphs(tmp_path, [("sub", trace(sub, (1, 3, 64, 64)), x, "tflite"),
                                  ("plain", trace(m, (1, 3, 64, 64)), x, "tflite")])
    ref = _torch(m, x)
    assert np.abs(outs["sub"] - ref).max() <= 1e-4
    assert "TRANSPOSE_CONV" not in json.loads((tmp_path / "sub.ops.json").read_text())
    assert "DEPTH_TO_SPACE" in json.loads((tmp_path / "sub.ops.json").read_text())
    assert "TRANSPOSE_CONV" in json.loads((tmp_path / "plain.ops.json").read_text())


def _unequal(model: nn.Module, seed: int = 1) -> nn.Module:
    """Scale each output channel of every conv before an InstanceNorm by 10^U(-2.5, 1): the
    float model is unchanged up to eps (the norm removes the scale), int8 ranges are not."""
    g = torch.Generator().manual_seed(seed)
    mods = dict(model.named_modules())
    with torch.no_grad():
        for name, m in mods.items():
            if name.endswith(".conv") and isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                norm = mods.get(name[: -len("conv")] + "norm")
                if isinstance(norm, nn.InstanceNorm2d):
                    dim = 1 if isinstance(m, nn.ConvTranspose2d) else 0
                    c = m.weight.shape[dim]
                    s = 10 ** (torch.rand(c, generator=g) * 3.5 - 2.5)
                    shape = [1] * m.weight.dim()
                    shape[dim] = c
                    m.weight.mul_(s.view(shape))
                    if m.bias is not None:
                        m.bias.mul_(s)
    return model


def test_equalisation_is_exact_including_the_epsilon(tmp_path: Path) -> None:
    from dmad.export.subpixel import to_subpixel

    m = _unequal(_family("pruned"))
    sub, _ = to_subpixel(m)
    x = _input(64)
    calib = np.concatenate([_input(64, s) for s in range(1, 4)])
    ref = _torch(m, x)
    jobs = []
    for name, model in (("plain", m), ("sub", sub)):
        g = trace(model, (1, 3, 64, 64))
        rep = equalize(g, calib)
        assert rep.layers == 19 and rep.stream_channels == 37  # 5 + 2 per live block
        jobs.append((name, g, x, "tf"))
    # the epsilon must scale with the channel: without it the small channels drift
    g_bad = trace(m, (1, 3, 64, 64))
    equalize(g_bad, calib)
    for n in g_bad.nodes:
        if n.op == "inorm":
            n.weights["eps"] = np.full_like(n.weights["eps"], 1e-5)
    jobs.append(("no_eps", g_bad, x, "tf"))
    outs = _run_graphs(tmp_path, jobs)
    assert np.abs(outs["plain"] - ref).max() <= 1e-4
    assert np.abs(outs["sub"] - ref).max() <= 1e-4
    assert np.abs(outs["no_eps"] - ref).max() > 1e-3


def test_equalisation_and_percentile_ranges_rescue_int8(tmp_path: Path) -> None:
    import dataclasses

    from dmad.export.api import DEFAULT_RECIPE, ExportConfig, export_model

    torch.manual_seed(0)
    m = _unequal(build(ResnetSpec(ngf=8, n_blocks=3)))
    psnr = {}
    for name, eq, ranges in (("plain", False, "minmax"), ("recipe", True, "percentile")):
        rep = export_model(ExportConfig(
            out=tmp_path / name, module=m, size=64, quant=("int8",), num_calib=12,
            num_eval=4, calib=_photos(tmp_path), equalize=eq, int8_auto_float=0,  # the
            recipe=dataclasses.replace(DEFAULT_RECIPE, ranges=ranges))).report  # recipe alone
        psnr[name] = rep["artifacts"]["int8"]["parity"]["psnr_db"]
        assert rep["artifacts"]["int8"]["precision"]["int8_mac_fraction"] == 1.0
        # fp32 is always converted and checked, and not kept unless asked for
        assert rep["artifacts"]["fp32"]["kept"] is False
        assert rep["artifacts"]["fp32"]["parity"]["max_abs"] <= 1e-3
        assert not (tmp_path / name / "generator_fp32.tflite").exists()
    assert psnr["recipe"] >= psnr["plain"] + 6, psnr


def _photos(tmp: Path, n: int = 16) -> Path:
    """Smooth, textured RGB images (not flat shapes) written once."""
    from PIL import Image

    d = tmp / "photos"
    if d.is_dir():
        return d
    d.mkdir()
    g = torch.Generator().manual_seed(7)
    for i in range(n):
        low = torch.rand(3, 6, 6, generator=g)
        img = torch.nn.functional.interpolate(low[None], size=(80, 80), mode="bicubic")[0]
        img = (img + 0.15 * torch.rand(3, 80, 80, generator=g)).clamp(0, 1)
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(
            d / f"{i:02d}.png")
    return d


def _op_dtypes(path: Path) -> dict[tuple[str, str], tuple[str, str, str]]:
    """(op name, layer prefix of its output tensor) → (the op that made its first input, that
    input's dtype, its output's dtype)."""
    from dmad.export.parity import make_interpreter

    it = make_interpreter(path.read_bytes(), None, allocate=False)
    t = {d["index"]: d for d in it.get_tensor_details()}
    ops = it._get_ops_details()
    made_by = {i: o["op_name"] for o in ops for i in o["outputs"]}
    out = {}
    for o in ops:
        name = t[o["outputs"][0]]["name"]
        layer = next((p.split("/")[0] for p in name.split(";") if "/" in p), name)
        for key in ("_conv_shuffle", "_conv_conv"):
            layer = layer.replace(key, "_conv")
        out[o["op_name"], layer] = (made_by.get(o["inputs"][0], "input"),
                                    t[o["inputs"][0]]["dtype"].__name__,
                                    t[o["outputs"][0]]["dtype"].__name__)
    return out


def test_float_layers_and_the_precision_report(tmp_path: Path) -> None:
    import dataclasses

    from dmad.export.api import DEFAULT_RECIPE, ExportConfig, export_model

    torch.manual_seed(0)
    m = build(ResnetSpec(ngf=8, n_blocks=2))
    recipe = dataclasses.replace(DEFAULT_RECIPE, float_layers=("head.conv",))
    # the plain graph (--phases off): the MAC and dtype arithmetic below is that of the
    # full-resolution head; on phases the same layer is named and kept float (test_s2d)
    rep = export_model(ExportConfig(out=tmp_path / "o", module=m, size=32, quant=("int8",),
                                    calib=_photos(tmp_path), num_calib=8, num_eval=2,
                                    recipe=recipe, phases="off")).report
    prec = rep["artifacts"]["int8"]["precision"]
    # the head alone stays float: a 7x7 conv, 8 → 3 channels, at every one of the 32² pixels
    head = 32 * 32 * 49 * 8 * 3
    assert prec["int8_mac_fraction"] == pytest.approx(1 - head / prec["macs"], abs=1e-3)
    assert prec["float_ops"].get("CONV_2D") == 1
    # float means float in and out: the padding in front of the head (slices + concatenation)
    # is not rounded to int8 just before the float convolution
    dtypes = _op_dtypes(tmp_path / "o" / "generator_int8.tflite")
    assert dtypes["CONV_2D", "head_conv"] == ("CONCATENATION", "float32", "float32")
    # a strided ConvTranspose the export turned into sub-pixel form keeps its PyTorch name
    up = dataclasses.replace(DEFAULT_RECIPE, float_layers=("up1.conv",))
    rep = export_model(ExportConfig(out=tmp_path / "u", module=m, size=32, quant=("int8",),
                                    calib=_photos(tmp_path), num_calib=8, num_eval=2,
                                    recipe=up, phases="off")).report
    assert rep["artifacts"]["int8"]["precision"]["float_ops"].get("CONV_2D") == 1
    # and its output reaches the InstanceNorm through the depth-to-space still in float
    dtypes = _op_dtypes(tmp_path / "u" / "generator_int8.tflite")
    assert dtypes["DEPTH_TO_SPACE", "up1_conv"] == ("CONV_2D", "float32", "float32")
    assert dtypes["CONV_2D", "head_conv"] == ("CONCATENATION", "int8", "int8")
    with pytest.raises(DmadError, match="no convolution named nope"):
        export_model(ExportConfig(out=tmp_path / "p", module=m, size=32, quant=("int8",),
                                  calib=_photos(tmp_path), num_calib=8, num_eval=2,
                                  recipe=dataclasses.replace(recipe, float_layers=("nope",))))


def test_hybrid_float_layers_keep_float_activations_with_int8_weights(tmp_path: Path) -> None:
    """``hybrid_layers``: the layer kept out of int8 reads and writes float but its
    filter is int8 per channel, XNNPACK takes the whole file, and the picture is as close to
    fp32 as with the fp32 layer (its input rounding per image is the only difference)."""
    import dataclasses

    from dmad.export.api import DEFAULT_RECIPE, ExportConfig, export_model

    torch.manual_seed(0)
    m = build(ResnetSpec(ngf=8, n_blocks=2))
    reps = {}
    for kind in ("float", "hybrid"):
        recipe = dataclasses.replace(DEFAULT_RECIPE, **{f"{kind}_layers": ("up1.conv",)})
        reps[kind] = export_model(ExportConfig(
            out=tmp_path / kind, module=m, size=32, quant=("int8",), calib=_photos(tmp_path),
            num_calib=8, num_eval=2, recipe=recipe, phases="off")).report
    art = reps["hybrid"]["artifacts"]["int8"]
    prec = art["precision"]
    assert prec["float_ops"].get("CONV_2D") == 1 and reps["hybrid"]["int8_recipe"][
        "hybrid_layers"] == ["up1.conv"]
    frac = reps["float"]["artifacts"]["int8"]["precision"]["int8_mac_fraction"]
    assert prec["int8_mac_fraction"] == pytest.approx(frac)
    assert prec["int8_weight_float_activation_mac_fraction"] == pytest.approx(1 - frac, abs=1e-3)
    assert art["xnnpack"]["fully_delegated"]
    dtypes = _op_dtypes(tmp_path / "hybrid" / "generator_int8.tflite")
    assert dtypes["DEPTH_TO_SPACE", "up1_conv"] == ("CONV_2D", "float32", "float32")
    fl = reps["float"]["artifacts"]["int8"]["parity"]["psnr_db"]
    assert art["parity"]["psnr_db"] > fl - 2.0, (art["parity"]["psnr_db"], fl)
    assert (tmp_path / "hybrid" / "generator_int8.tflite").stat().st_size < \
        (tmp_path / "float" / "generator_int8.tflite").stat().st_size
    from dmad.export.hybrid import int8_per_channel

    q, scale = int8_per_channel(np.stack([np.full((3, 3, 2), 0.5), np.zeros((3, 3, 2))]))
    assert scale.tolist() == [pytest.approx(0.5 / 127), 1.0] and q[0].max() == 127
    assert not q[1].any()  # an all-zero channel: any scale, zeros
    with pytest.raises(DmadError, match="--int8-kinds: float,half"):
        export_model(ExportConfig(out=tmp_path / "h", module=m, size=32, quant=("int8",),
                                  calib=_photos(tmp_path), int8_kinds=("float", "half")))


def test_nan_output_fails_and_writes_nothing(tmp_path: Path) -> None:
    from dmad.export.api import ExportConfig, export_model

    torch.manual_seed(0)
    m = build(ResnetSpec(ngf=8, n_blocks=1))
    with torch.no_grad():
        m.head.conv.bias.fill_(float("nan"))
    with pytest.raises(DmadError, match="output holds NaN/inf"):
        export_model(ExportConfig(out=tmp_path / "o", module=m, size=32, quant=("fp32",)))
    assert not (tmp_path / "o").exists()


def test_strict_floor_refuses_and_gpu_report_is_written(tmp_path: Path) -> None:
    from dmad.export.api import ExportConfig, export_model

    torch.manual_seed(0)
    m = build(ResnetSpec(ngf=8, n_blocks=1))
    with pytest.raises(DmadError, match="--strict: fp16 below the floor"):
        export_model(ExportConfig(out=tmp_path / "o", module=m, size=32,
                                  quant=("fp32", "fp16"), floor_fp16=500.0, strict=True))
    assert not (tmp_path / "o").exists()
    res = export_model(ExportConfig(out=tmp_path / "o", module=m, size=32,
                                    quant=("fp32", "fp16"), subpixel="off", floor_fp16=500.0))
    arts = res.report["artifacts"]
    assert arts["fp16"]["below_bar"] and arts["fp16"]["floor_db"] == 500.0
    assert any("fp16" in w and "floor" in w for w in res.report["warnings"])
    for v in ("fp32", "fp16"):
        gpu = arts[v]["gpu"]
        assert isinstance(gpu["compatible"], bool) and "Analyzer" in gpu["checker"]
    assert "GPU check" in res.table and "500 LOW" in res.table
    assert res.report["graph"]["subpixel"]["layers"] == 0


def test_onnx_int8(tmp_path: Path) -> None:
    import onnx

    from dmad.export.api import ExportConfig, export_model

    torch.manual_seed(0)
    m = build(ResnetSpec(ngf=8, n_blocks=2))
    res = export_model(ExportConfig(out=tmp_path / "o", module=m, size=32,
                                    quant=("onnx-int8",), calib=_photos(tmp_path),
                                    num_calib=8, num_eval=2))
    a = res.report["artifacts"]["onnx-int8"]
    assert (tmp_path / "o" / a["file"]).is_file()
    ops = {n.op_type for n in onnx.load(tmp_path / "o" / a["file"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert 20 <= a["parity"]["psnr_db"] < 100  # quantised: close, not identical
    assert a["quantization"]["format"] == "QDQ"
    # dmad bench/compare count its MACs through the DequantizeLinear weights, as int8
    from dmad.benchmark.model_info import count_onnx

    q = count_onnx(tmp_path / "o" / a["file"], (1, 3, 32, 32))
    f = count_onnx(tmp_path / "o" / "generator.onnx", (1, 3, 32, 32))
    assert q[0] == f[0] > 0 and q[3] == "int8" and f[3] == "fp32"


def test_calibration_and_parity_images_are_disjoint(tmp_path: Path) -> None:
    from dmad.export.api import _folder_images

    photos = _photos(tmp_path, n=5)
    cal, ev, note, names = _folder_images(photos, 32, 20, 8)
    assert len(cal) == 4 and len(ev) == 1 and "held-out" in note and len(names) == 1
    for e in ev:
        assert not any(np.array_equal(e, c) for c in cal)
    cal, ev, _, _ = _folder_images(photos, 32, 2, 8)
    assert len(cal) == 2 and len(ev) == 3


def test_best_range() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 100_000), [60.0, -50.0]])
    assert best_range(x, "minmax") == (x.min(), x.max())
    lo, hi = best_range(x, "percentile", 99.99)
    assert -6 < lo < -3 and 3 < hi < 6
    # MSE weighs the two outliers by their count: keeping them costs less than clipping them
    lo, hi = best_range(x, "mse")
    assert lo < -30 and hi > 40
    # a heavy (Laplace) tail: clipping lowers the error, and MSE finds a clipped range
    lap = rng.laplace(0, 1, 100_000)
    lo, hi = best_range(lap, "mse")
    assert lap.min() < lo < -3 and 3 < hi < lap.max()
    assert _quant_mse(lap, lo, hi) < 0.9 * _quant_mse(lap, lap.min(), lap.max())
    relu = np.abs(rng.normal(0, 1, 10_000))
    assert best_range(relu, "percentile")[0] == relu.min()
    assert best_range(x, "percentile", 100.0) == best_range(x, "minmax")  # `auto`'s last


_ONE_CONV = textwrap.dedent("""
    import sys
    import tensorflow as tf
    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((8, 8, 3), batch_size=1)
    out = tf.keras.layers.Conv2D(3, 3, padding="same", activation="tanh")(inp)
    blob = tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inp, out)).convert()
    open(sys.argv[1], "wb").write(blob)
""")


def test_auto_ranges_are_judged_on_the_worst_image(tmp_path: Path) -> None:
    """``Samples.score`` (how ``auto`` ranges are chosen) is the PSNR of the worst of the first
    ``n`` calibration images: one image ruined by a range choice outweighs many easy ones."""
    from dmad.compress.metrics import psnr
    from dmad.export.parity import make_interpreter
    from dmad.export.ranges import Samples

    path = tmp_path / "one.tflite"
    env = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", _ONE_CONV, str(path)], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    blob = path.read_bytes()
    x = np.random.default_rng(0).uniform(-1, 1, (5, 8, 8, 3)).astype(np.float32)
    it = make_interpreter(blob, None)
    exact = []
    for k in range(len(x)):
        it.set_tensor(it.get_input_details()[0]["index"], x[k:k + 1])
        it.invoke()
        exact.append(it.get_tensor(it.get_output_details()[0]["index"]).astype(np.float64))
    # the references the score compares with: image 1 far off, image 4 further but not judged
    off = [0.001, 0.2, 0.01, 0.002, 0.9]
    wave = np.sin(np.arange(exact[0].size)).reshape(exact[0].shape)
    s = object.__new__(Samples)
    s.inputs, s.outputs = x, [e + o * wave for e, o in zip(exact, off, strict=True)]
    each = [psnr(o, e) for o, e in zip(s.outputs, exact, strict=True)]
    pooled = psnr(np.concatenate(s.outputs[:4]), np.concatenate(exact[:4]))
    assert s.score(blob, n=4) == pytest.approx(each[1], abs=1e-6)
    assert s.score(blob, n=4) < pooled - 3.0  # not the pooled figure
    assert s.score(blob, n=5) == pytest.approx(each[4], abs=1e-6)
    assert s.score(blob, n=1) == pytest.approx(each[0], abs=1e-6)


def test_untraceable_model_is_one_line() -> None:
    class Odd(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flip(1)

    with pytest.raises(DmadError, match=r"export: .*flip"):
        trace(Odd(), (1, 3, 8, 8))


@pytest.mark.parametrize("arch", ["cut-antialias-pruned", "in-house", "pix2pixhd",
                                  "pixel-shuffle-pruned", "groupnorm-pruned"])
def test_generators_of_other_repositories_export_exactly(arch: str, tmp_path: Path) -> None:
    """CUT's blur layers (a fixed depthwise filter; its transposed form as one depthwise conv
    per phase, depth-to-space and a crop), edge padding, bilinear upsampling, BatchNorm, a long
    skip, GroupNorm, SiLU, a grouped convolution, a space-to-depth stem and a pruned
    GraphModule (carried mask scales): fp32 within 100 dB of PyTorch; int8 made, reported and
    in one XNNPACK partition."""
    from dmad.compress.graph_prune import attach_graph_masks, prune_graph
    from dmad.export.api import ExportConfig, export_model
    from tests.reference_generators import (
        CutResnet,
        GroupNormNet,
        InHouse,
        Pix2PixHDGlobal,
        ShuffleUp,
    )

    torch.manual_seed(0)
    if arch.endswith("-pruned"):
        makers = {"cut": lambda: CutResnet(ngf=8, n_blocks=2, antialias=True),
                  "pixel": lambda: ShuffleUp(ngf=8), "groupnorm": lambda: GroupNormNet(ngf=8)}
        full = makers[arch.split("-")[0]]().eval()
        masks = attach_graph_masks(full)
        with torch.no_grad():
            for mk in masks.values():
                mk.weight.fill_(1.0)
                mk.bound.fill_(0.5)  # soft values: carried as scales
                mk.weight[::2] = -5.0
        m: torch.nn.Module = prune_graph(full)
    else:
        m = (InHouse(ngf=8) if arch == "in-house" else Pix2PixHDGlobal(ngf=4, n_down=3,
                                                                         n_blocks=2)).eval()
    pruned = arch.endswith("-pruned")
    quant = ("fp32", "int8") if pruned else ("fp32",)
    assets = tmp_path / "assets"
    rep = export_model(ExportConfig(out=tmp_path / "o", module=m, size=64, quant=quant,
                                    calib=_photos(tmp_path), num_calib=8, num_eval=2,
                                    android=pruned, android_assets=assets)).report
    assert rep["artifacts"]["fp32"]["parity"]["psnr_worst_db"] >= 100
    if pruned:
        int8 = rep["artifacts"]["int8"]
        assert int8["parity"]["psnr_db"] > 30 and int8["xnnpack"]["fully_delegated"]
        from tests.test_export_android import _validate

        spec, problems = _validate(assets)  # what the app checks when it starts
        assert problems == [] and [e["label"] for e in spec["models"]] == ["compressed"]


def test_space_to_depth_read_by_more_than_convolutions_is_gathered(tmp_path: Path) -> None:
    """PixelUnshuffle whose output also feeds a concatenation cannot have its readers'
    weights permuted: TensorFlow's channel order is gathered back to PyTorch's in the graph,
    and the file is still exact (fp32 ≥ 100 dB)."""
    from dmad.export.api import ExportConfig, export_model
    from dmad.export.graph import trace

    class Gathered(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unshuffle = torch.nn.PixelUnshuffle(2)
            self.a = torch.nn.Conv2d(12, 8, 3, 1, 1)
            self.b = torch.nn.Conv2d(20, 12, 3, 1, 1)
            self.shuffle = torch.nn.PixelShuffle(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            u = self.unshuffle(x)
            return torch.tanh(self.shuffle(self.b(torch.cat([torch.relu(self.a(u)), u], 1))))

    torch.manual_seed(0)
    m = Gathered().eval()
    s2d = [n for n in trace(m, (1, 3, 16, 16)).nodes if n.op == "s2d"]
    assert len(s2d) == 1 and not s2d[0].attrs.get("tf_order")  # gathered, not permuted
    rep = export_model(ExportConfig(out=tmp_path / "o", module=m, size=32, quant=("fp32",),
                                    calib=_photos(tmp_path), num_calib=2, num_eval=2)).report
    assert rep["artifacts"]["fp32"]["parity"]["psnr_worst_db"] >= 100


def test_auto_ranges_keep_the_widest_percentile_that_clears_the_target() -> None:
    """The student's scores on its calibration images: the best (99.995) clipped a held-out
    photograph under the floor that the widest one clearing floor + margin kept above it."""
    from dmad.export.ranges import pick_percentile

    scores = {99.95: 29.1, 99.98: 34.2, 99.99: 37.8, 99.995: 39.3, 99.999: 36.9, 100.0: 36.4}
    assert pick_percentile(scores) == 99.995  # no target: the best
    assert pick_percentile(scores, 36.0) == 100.0  # min/max clears 36 dB: the least clipping
    assert pick_percentile(scores, 36.5) == 99.999
    assert pick_percentile(scores, 39.0) == 99.995
    assert pick_percentile(scores, 45.0) == 99.995  # none clears it: the best
    with pytest.raises(ValueError):
        pick_percentile({})
