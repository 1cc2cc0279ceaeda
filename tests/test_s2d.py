"""``export/s2d.py``: a ResNet generator's stem and first downsampling on the image's 2×2 phases.

The rewrite must be exact (float64, any widths, affine or plain InstanceNorm, odd stem kernels),
refuse what it does not fit with a reason, and survive the converter bit for bit (fp32 file
within 100 dB of PyTorch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dmad.compress.models import ResnetSpec, ResnetWidths, UnetSpec, build
from dmad.export.s2d import PhaseStem, to_s2d_front

F64 = torch.float64


@pytest.mark.parametrize("spec", [
    ResnetSpec(ngf=4, n_blocks=2),
    ResnetSpec(ngf=8, n_blocks=1, norm="instance_affine"),
    ResnetSpec(ngf=4, n_blocks=2, widths=ResnetWidths(3, 5, 16, (2, 0), 8, 4)),
])
@pytest.mark.parametrize("side", [16, 22])
def test_front_on_phases_is_exact(spec: ResnetSpec, side: int) -> None:
    torch.manual_seed(0)
    m = build(spec).eval().to(F64)
    with torch.no_grad():  # affine norms away from 1/0, so a misplaced γ or β shows
        for mod in m.modules():
            if isinstance(mod, nn.InstanceNorm2d) and mod.affine:
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    s2d, why = to_s2d_front(m)
    assert why is None and isinstance(s2d.stem, PhaseStem)
    assert s2d.stem.conv.kernel_size == (4, 4) and s2d.down1.conv.kernel_size == (2, 2)
    x = torch.rand(2, 3, side, side, dtype=F64) * 2 - 1
    with torch.no_grad():
        assert (s2d(x) - m(x)).abs().max().item() < 1e-12
    assert isinstance(m.stem.conv, nn.Conv2d) and m.stem.conv.kernel_size == (7, 7)  # untouched


def test_what_it_does_not_fit_is_returned_with_the_reason() -> None:
    unet = build(UnetSpec(ngf=4, num_downs=5))
    same, why = to_s2d_front(unet)
    assert same is unet and why is not None and "ResNet" in why
    batch = build(ResnetSpec(ngf=4, n_blocks=1, norm="batch"))
    same, why = to_s2d_front(batch)
    assert same is batch and why is not None and "InstanceNorm" in why


def test_export_puts_a_narrow_stem_on_phases_and_the_file_is_exact(tmp_path: Path) -> None:
    """``--phase-front auto`` rewrites the TFLite graph of a stem under 16 channels (fp32 file
    within 100 dB of the original PyTorch model), and leaves a wide one as it is."""
    from dmad.export.api import ExportConfig, export_model
    from tests.test_export_graph import _photos

    torch.manual_seed(0)
    for ngf, applied in ((8, True), (16, False)):
        cfg = ExportConfig(out=tmp_path / f"o{ngf}", module=build(ResnetSpec(ngf=ngf, n_blocks=1)),
                           size=32, quant=("fp32",), calib=_photos(tmp_path), num_calib=2,
                           num_eval=2)
        rep = export_model(cfg).report
        front = rep["graph"]["phase_front"]
        assert front["applied"] is applied, front
        assert rep["artifacts"]["fp32"]["parity"]["psnr_worst_db"] >= 100
        assert (rep["graph"]["ops"].get("s2d", 0) == 1) is applied
