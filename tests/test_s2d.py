"""``export/s2d.py``: a ResNet generator's full-resolution layers on the image's 2×2 phases
(the stem and first downsampling, the head's convolution, an int8 file's stem convolution).

The rewrites must be exact (float64, any widths, affine or plain InstanceNorm), refuse what they
do not fit with a reason, follow the ``--phases`` rule, and survive the converter (fp32 file
within 100 dB of PyTorch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dmad.compress.models import ResnetSpec, ResnetWidths, UnetSpec, build
from dmad.export.s2d import (
    PhaseHead,
    PhaseStem,
    PhaseStemConv,
    to_phase_head,
    to_phase_stem,
    to_phases,
    to_s2d_front,
)

F64 = torch.float64


def _f64_model(spec: ResnetSpec, seed: int) -> nn.Module:
    """``spec`` built in float64, its affine norms away from 1/0 (a misplaced γ or β shows)."""
    torch.manual_seed(seed)
    m = build(spec).eval().to(F64)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.InstanceNorm2d) and mod.affine:
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m


@pytest.mark.parametrize("spec", [
    ResnetSpec(ngf=4, n_blocks=2),
    ResnetSpec(ngf=8, n_blocks=1, norm="instance_affine"),
    ResnetSpec(ngf=4, n_blocks=2, widths=ResnetWidths(3, 5, 16, (2, 0), 8, 4)),
])
@pytest.mark.parametrize("side", [16, 22])
def test_front_on_phases_is_exact(spec: ResnetSpec, side: int) -> None:
    m = _f64_model(spec, 0)
    s2d, why = to_s2d_front(m)
    assert why is None and isinstance(s2d.stem, PhaseStem)
    assert s2d.stem.conv.kernel_size == (4, 4) and s2d.down1.conv.kernel_size == (2, 2)
    both, why = to_phase_head(s2d)
    assert why is None and isinstance(both.head, PhaseHead) and isinstance(both.stem, PhaseStem)
    x = torch.rand(2, 3, side, side, dtype=F64) * 2 - 1
    with torch.no_grad():
        assert (s2d(x) - m(x)).abs().max().item() < 1e-12
        assert (both(x) - m(x)).abs().max().item() < 1e-12
    assert isinstance(m.stem.conv, nn.Conv2d) and m.stem.conv.kernel_size == (7, 7)  # untouched


@pytest.mark.parametrize("spec", [
    ResnetSpec(ngf=8, n_blocks=1, norm="instance_affine"),
    ResnetSpec(ngf=4, n_blocks=2, widths=ResnetWidths(19, 5, 16, (2, 0), 8, 4)),
])
def test_the_stem_convolution_alone_on_phases_is_exact(spec: ResnetSpec) -> None:
    """An int8 file's stem: its convolution on the phases, depth-to-space back, the stem's own
    norm and activation at full resolution; the rest of the model untouched."""
    m = _f64_model(spec, 1)
    p, why = to_phase_stem(m)
    assert why is None and isinstance(p.stem, PhaseStemConv)
    assert p.stem.conv.kernel_size == (4, 4)
    assert p.stem.conv.out_channels == 4 * spec.resolved_widths().stem
    assert p.down1 is not m.down1 and p.down1.conv.kernel_size == (3, 3)
    x = torch.rand(2, 3, 20, 20, dtype=F64) * 2 - 1
    with torch.no_grad():
        assert (p(x) - m(x)).abs().max().item() < 1e-12
    assert {n for n, _ in p.named_parameters()} == {n for n, _ in m.named_parameters()}
    unet = build(UnetSpec(ngf=4, num_downs=5))
    same, why = to_phase_stem(unet)
    assert same is unet and why is not None


def test_what_it_does_not_fit_is_returned_with_the_reason() -> None:
    unet = build(UnetSpec(ngf=4, num_downs=5))
    same, why = to_s2d_front(unet)
    assert same is unet and why is not None and "ResNet" in why
    batch = build(ResnetSpec(ngf=4, n_blocks=1, norm="batch"))
    same, why = to_s2d_front(batch)
    assert same is batch and why is not None and "InstanceNorm" in why


def test_the_rule_and_the_export(tmp_path: Path) -> None:
    """``--phases auto`` puts the head on phases always and the front below 16 stem channels;
    the exported file is exact (fp32 ≥ 100 dB against the original PyTorch model)."""
    import dataclasses

    from dmad.export.api import DEFAULT_RECIPE, ExportConfig, export_model
    from tests.test_export_graph import _photos

    torch.manual_seed(0)
    wide, info = to_phases(build(ResnetSpec(ngf=16, n_blocks=1)))
    assert info["head"] and not info["front"] and isinstance(wide.head, PhaseHead)
    assert isinstance(wide.stem.conv, nn.Conv2d) and wide.stem.conv.kernel_size == (7, 7)
    assert to_phases(build(ResnetSpec(ngf=16, n_blocks=1)), "on")[1]["front"]
    # an int8 file: the stem's convolution on the phases where the front is not
    wide8, info = to_phases(build(ResnetSpec(ngf=16, n_blocks=1)), int8=True)
    assert info["stem"] and not info["front"] and isinstance(wide8.stem, PhaseStemConv)
    narrow8, info = to_phases(build(ResnetSpec(ngf=8, n_blocks=1)), int8=True)
    assert info["front"] and not info["stem"] and isinstance(narrow8.stem, PhaseStem)
    assert not to_phases(build(ResnetSpec(ngf=16, n_blocks=1)), "off", int8=True)[1]["stem"]
    _, info = to_phases(build(UnetSpec(ngf=4, num_downs=5)))
    assert not (info["head"] or info["front"]) and "ResNet" in str(info["why"])
    recipe = dataclasses.replace(DEFAULT_RECIPE, float_layers=("head.conv",))
    cfg = ExportConfig(out=tmp_path / "o", module=build(ResnetSpec(ngf=8, n_blocks=1)),
                       size=32, quant=("fp32", "int8"), calib=_photos(tmp_path), num_calib=4,
                       num_eval=2, recipe=recipe)
    rep = export_model(cfg).report
    ph = rep["graph"]["phases"]
    assert ph["head"] and ph["front"] and rep["graph"]["ops"]["s2d"] == 2
    assert rep["artifacts"]["fp32"]["parity"]["psnr_worst_db"] >= 100
    # the head on phases keeps its PyTorch name: a float layer chosen by name is found
    assert rep["artifacts"]["int8"]["precision"]["float_ops"].get("CONV_2D") == 1


def _ops(path: Path) -> list[str]:
    from dmad.export.parity import make_interpreter

    it = make_interpreter(path.read_bytes(), None, allocate=False)
    return [o["op_name"] for o in it._get_ops_details()]


def test_the_int8_file_alone_runs_its_stem_convolution_on_phases(tmp_path: Path) -> None:
    """From a stem of 16 channels up (no phase front) the int8 file is converted from its own
    graph, the stem's convolution on the phases (two SPACE_TO_DEPTH: stem and head), and the
    fp32 file from the float graph (one, the head's); both are judged against PyTorch, and a
    layer kept float by name is still found in the int8 form."""
    import dataclasses

    from dmad.export.api import DEFAULT_RECIPE, ExportConfig, export_model
    from tests.test_export_graph import _photos

    torch.manual_seed(0)
    recipe = dataclasses.replace(DEFAULT_RECIPE, float_layers=("stem.conv",))
    cfg = ExportConfig(out=tmp_path / "o", module=build(ResnetSpec(ngf=16, n_blocks=1)),
                       size=32, quant=("fp32", "int8"), calib=_photos(tmp_path), num_calib=4,
                       num_eval=2, recipe=recipe)
    res = export_model(cfg)
    g = res.report["graph"]
    assert not g["phases"]["stem"] and g["int8"]["phases"]["stem"]
    assert g["ops"]["s2d"] == 1 and g["int8"]["ops"]["s2d"] == 2
    assert g["int8"]["phases"]["max_abs_vs_original"] < 1e-4
    assert _ops(res.files["fp32"]).count("SPACE_TO_DEPTH") == 1
    assert _ops(res.files["int8"]).count("SPACE_TO_DEPTH") == 2
    art = res.report["artifacts"]
    assert art["fp32"]["parity"]["psnr_worst_db"] >= 100
    assert art["int8"]["parity"]["psnr_worst_db"] >= 30
    assert art["int8"]["precision"]["float_ops"].get("CONV_2D") == 1


def test_int8_io_and_fp16_beside_the_int8_graph(tmp_path: Path) -> None:
    """The split conversion with the defaults (auto ranges, layers kept out of int8 by the
    chooser): fp16 from the float graph, int8 and int8_io from the int8 one, the int8 conversion's
    ranges and both conversions' seconds in parity.json; with --phases off one graph."""
    from dmad.export.api import ExportConfig, export_model
    from tests.test_export_graph import _photos

    torch.manual_seed(0)
    photos = _photos(tmp_path)
    m = build(ResnetSpec(ngf=16, n_blocks=1))
    res = export_model(ExportConfig(out=tmp_path / "o", module=m, size=32,
                                    quant=("fp16", "int8"), int8_io=True, calib=photos,
                                    num_calib=4, num_eval=2))
    rep = res.report
    assert rep["graph"]["int8"]["phases"]["stem"] and not rep["graph"]["phases"]["stem"]
    assert _ops(res.files["fp16"]).count("SPACE_TO_DEPTH") == 1
    assert _ops(res.files["int8"]).count("SPACE_TO_DEPTH") == 2
    assert _ops(res.files["int8_io"]).count("SPACE_TO_DEPTH") == 2
    assert rep["int8_ranges"]["method"] and rep["int8_ranges"].get("chosen_percentile")
    secs = rep["converter_seconds"]
    assert "fp32" in secs and "int8_calibrate" in secs
    assert rep["artifacts"]["int8_io"]["parity"]["psnr_worst_db"] >= 25
    off = export_model(ExportConfig(out=tmp_path / "off", module=m, size=32, quant=("int8",),
                                    calib=photos, num_calib=4, num_eval=2, phases="off")).report
    assert "int8" not in off["graph"] and not off["graph"]["phases"]["stem"]
