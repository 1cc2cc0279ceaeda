"""The Python API: the CLI's verbs taking and returning objects, for notebooks and scripts.

    import dmad
    run = dmad.compress_generator(generator, "photos/", "runs/mine", target_gmacs=5.7)
    run.student                      # the fine-tuned, physically pruned nn.Module
    files = dmad.export_generator(run.student, "runs/mine/x", quant=("fp32", "int8"),
                                  calib="photos/")
    dmad.bench_files([files.files["fp32"], files.files["int8"]], "runs/mine/bench")

``generator`` is an ``nn.Module`` (a dmad generator, or a pytorch-CycleGAN-and-pix2pix
ResnetGenerator / UnetGenerator instance, mapped as ``dmad import`` maps its checkpoint) or a
path. Each call runs the same function as its CLI command (``dmad compress``, ``dmad export``,
``dmad bench``), with the same run folder, resume and ``--force`` rules; a mistake raises
:class:`dmad.compress.errors.DmadError` with the CLI's one-line message. The lower verbs are
re-exported from their modules: :func:`attach_masks` (DMAD's differentiable channel masks as a
wrapper on a generator), :func:`prune` (a masked generator to a dense one, exactly).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dmad.compress.errors import DmadError

__all__ = ["Compressed", "bench_files", "compress_generator", "export_generator"]


@dataclass
class Compressed:
    """What :func:`compress_generator` made: the student, its run folder and its summary."""

    student: nn.Module
    out: Path
    summary: dict[str, Any]


def _generator_file(generator: nn.Module | str | Path, scratch: Path) -> str:
    """A path the compress verb reads: a dmad model file for a dmad generator, the state dict
    for any other module (the importer maps it by module order and shape)."""
    if not isinstance(generator, nn.Module):
        return str(generator)
    if hasattr(generator, "spec"):
        from dmad.compress.checkpoint import save_model

        save_model(generator, scratch / "generator.pt")
        return str(scratch / "generator.pt")
    torch.save({k: v.detach().cpu() for k, v in generator.state_dict().items()},
               scratch / "latest_net_G.pth")
    return str(scratch / "latest_net_G.pth")


def _mapped(path: Path) -> bool:
    """A state dict dmad reads without its class: pytorch-CycleGAN-and-pix2pix's layouts, CUT's
    and pix2pixHD's."""
    from dmad.compress.importer import infer_arch, recognised_public

    return infer_arch(path) is not None or recognised_public(path) is not None


def compress_generator(generator: nn.Module | str | Path, images: str | Path, out: str | Path,
                       *, resume: bool = False, force: bool = False,
                       **fields_: Any) -> Compressed:
    """Compress ``generator`` on ``images`` into the run folder ``out`` (``dmad compress``):
    search, prune, fine-tune, evaluate, export and compare; any :class:`CompressConfig` field
    as a keyword (``target_gmacs=5.7``, ``steps=300``, ``export=False`` …).

    A module of any other class is compressed through its traced graph: its class is rebuilt
    from ``package.module:Class`` with ``kwargs`` (a dict of its constructor's arguments; the
    weights must then load strictly), so later stages and files can rebuild it too. A class
    defined in a notebook or script (``__main__``) rebuilds only in that session."""
    from dmad.compress.checkpoint import load_generator
    from dmad.compress_run import CompressConfig, run_compress

    known = {f.name for f in fields(CompressConfig)}
    bad = sorted(set(fields_) - known)
    if bad:
        raise DmadError(f"compress_generator: unknown field(s) {', '.join(bad)}")
    out = Path(out)
    if isinstance(fields_.get("kwargs"), dict):
        fields_["kwargs"] = json.dumps(fields_["kwargs"])
    with tempfile.TemporaryDirectory(prefix="dmad-api-") as scratch:
        path = _generator_file(generator, Path(scratch))
        if isinstance(generator, nn.Module) and not fields_.get("generator_class") \
                and not hasattr(generator, "spec") \
                and (fields_.get("kwargs") or not _mapped(Path(path))):
            cls = type(generator)  # its own class, rebuilt with ``kwargs``, traced
            fields_["generator_class"] = f"{cls.__module__}:{cls.__qualname__}"
        cfg = CompressConfig(generator=path, images=str(images), **fields_)
        summary = run_compress(cfg, out, resume=resume, force=force)
    student, _ = load_generator(out / "finetune" / "student_G_AtoB.pt")
    return Compressed(student=student.eval(), out=out, summary=summary)


def export_generator(model: nn.Module | str | Path, out: str | Path, **fields_: Any) -> Any:
    """Export ``model`` (a module, a dmad model file or run folder) to ONNX and TFLite with
    parity checks (``dmad export``); any :class:`ExportConfig` field as a keyword. Returns the
    :class:`~dmad.export.api.ExportResult` (``.files``, ``.table``, ``.report``)."""
    from dmad.export.api import ExportConfig, export_model

    src: dict[str, Any]
    if isinstance(model, nn.Module):
        src = {"module": model}
    else:
        p = Path(model)
        src = {"run": p} if p.is_dir() else {"model": p}
    for key in ("calib", "split", "android_assets"):
        if fields_.get(key) is not None:
            fields_[key] = Path(fields_[key])
    if "quant" in fields_:
        fields_["quant"] = tuple(fields_["quant"])
    return export_model(ExportConfig(out=Path(out), **src, **fields_))


def bench_files(files: list[str | Path], out: str | Path, **fields_: Any) -> dict[str, Any]:
    """Time model files on this CPU, or a phone with ``android=True`` (``dmad bench``); any
    :class:`BenchConfig` field as a keyword. Returns the results (also in ``out``)."""
    import json

    from dmad.benchmark.api import BenchConfig, bench

    folder = bench(BenchConfig(models=[Path(f) for f in files], out=Path(out), **fields_))
    return dict(json.loads((Path(folder) / "results.json").read_text()))
