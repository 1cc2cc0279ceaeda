"""Import public generator checkpoints (pytorch-CycleGAN-and-pix2pix layout) into dmad models.

The original repo saves ``latest_net_G.pth`` / ``latest_net_G_A.pth`` as a raw ``state_dict`` of
its ``ResnetGenerator`` (one ``nn.Sequential`` with ``ResnetBlock.conv_block`` children) or
``UnetGenerator`` (nested ``UnetSkipConnectionBlock``). dmad's generators hold the same layers in
the same order under other names, so weights are mapped **by module order and shape**, never by
key string: source and target tensors are grouped by module (key minus its last component), the
groups are zipped in state-dict order, and each pair must have the same parameter names
(``weight``, ``bias``, ``running_mean``, ...) and shapes. Any naming scheme (the original's, a
``module.`` DataParallel prefix, a re-implementation's own names) imports as long as the layers
come in the same order with the same shapes.

Options not given are inferred from the tensors (ngf, n_blocks / num_downs, input/output
channels, norm). Known variants handled:

* BatchNorm (running stats copied; ``num_batches_tracked`` missing in old checkpoints → 0);
* affine InstanceNorm (1-D weight/bias after each conv);
* InstanceNorm checkpoints from PyTorch < 0.4 that carry ``running_mean`` / ``running_var`` /
  ``num_batches_tracked``: dropped when the target norm is an InstanceNorm, as the original's
  ``__patch_instance_norm_state_dict`` does;
* ``norm='none'`` originals, whose convs have no bias (dmad's carry one): filled with zeros;
* separable (mobile) ResNet generators (``separable=True``); dmad model files of the same family.

Every problem a user can cause is a one-line :class:`~compress.errors.DmadError` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dmad.compress.checkpoint import FORMAT, refuse_nonfinite, save_model
from dmad.compress.errors import DmadError
from dmad.compress.io import safe_load
from dmad.compress.models import ResnetSpec, UnetSpec, build, spec_from_dict, spec_to_dict

ARCHES = ("resnet", "unet")
WRAPPER_KEYS = ("state_dict", "model", "netG", "G", "params", "generator", "params_ema")
RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class ImportReport:
    """What :func:`import_checkpoint` did: which spec it built and how the tensors were mapped."""

    source: Path
    arch: str
    spec: dict[str, Any]
    tensors: int
    renamed: int
    dropped: list[str] = field(default_factory=list)
    inferred: dict[str, Any] = field(default_factory=dict)
    filled: list[str] = field(default_factory=list)
    norm_note: str = ""  # which statistics the imported norms use, when the file had a choice

    def __str__(self) -> str:
        keys = ("ngf", "n_blocks", "num_downs", "norm", "padding", "separable", "dropout",
                "input_nc", "output_nc")
        opts = " ".join(f"{k}={self.spec[k]}" for k in keys if k in self.spec)
        lines = [f"imported {self.source.name} as {self.arch} ({opts})",
                 f"  {self.tensors} tensors mapped by module order and shape, "
                 f"{self.renamed} under new names"]
        if self.inferred:
            lines.append("  inferred: " + ", ".join(f"{k}={v}" for k, v in self.inferred.items()))
        if self.dropped:
            more = f" (+{len(self.dropped) - 5} more)" if len(self.dropped) > 5 else ""
            lines.append(f"  dropped {len(self.dropped)}: {', '.join(self.dropped[:5])}{more}")
        if self.filled:
            more = f" (+{len(self.filled) - 5} more)" if len(self.filled) > 5 else ""
            lines.append(f"  filled {len(self.filled)} missing: {', '.join(self.filled[:5])}{more}")
        if self.norm_note:
            lines.append(f"  {self.norm_note}")
        return "\n".join(lines)


@dataclass
class _Group:
    """The tensors of one module: leaf name → (full key, tensor), in state-dict order."""

    prefix: str
    items: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.items)

    def tensor(self, name: str) -> torch.Tensor:
        return self.items[name][1]

    def conv_weight(self) -> torch.Tensor | None:
        w = self.items.get("weight")
        return w[1] if w is not None and w[1].dim() == 4 else None

    @property
    def is_norm(self) -> bool:
        return all(t.dim() <= 1 for _, t in self.items.values())


def _group(items: list[tuple[str, torch.Tensor]]) -> list[_Group]:
    """Consecutive keys with the same module prefix form one group."""
    groups: list[_Group] = []
    for key, t in items:
        prefix, _, leaf = key.rpartition(".")
        if not groups or groups[-1].prefix != prefix or leaf in groups[-1].items:
            groups.append(_Group(prefix))
        groups[-1].items[leaf] = (key, t)
    return groups


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(s) for s in t.shape) if t.dim() else "scalar"


# --------------------------------------------------------------------------------------- loading

def _is_tensor_dict(obj: Any) -> bool:
    return (isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj)
            and any(isinstance(v, torch.Tensor) for v in obj.values())
            and not any(isinstance(v, dict) for v in obj.values()))


def _find_state_dict(obj: Any, depth: int = 0) -> dict[str, Any] | None:
    if _is_tensor_dict(obj):
        return obj
    if not isinstance(obj, dict) or depth >= 2:
        return None
    for key in WRAPPER_KEYS:
        found = _find_state_dict(obj.get(key), depth + 1)
        if found is not None:
            return found
    return None


def _load(path: Path) -> tuple[list[tuple[str, torch.Tensor]], dict[str, Any] | None, list[str]]:
    """(tensor items with ``module.`` stripped, dmad spec dict or None, dropped keys)."""
    obj = safe_load(path)
    file_spec = None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        file_spec, obj = obj.get("spec"), obj.get("state_dict")
        if not isinstance(file_spec, dict) or not isinstance(obj, dict):
            raise DmadError(f"{path}: broken dmad model file (no spec or state_dict)")
    if not isinstance(obj, dict):
        raise DmadError(f"{path}: not a state dict (it holds a {type(obj).__name__})")
    if not obj:
        raise DmadError(f"{path}: holds an empty dict, no weights to import")
    sd = _find_state_dict(obj)
    if sd is None:
        keys = ", ".join(str(k) for k in list(obj)[:8]) + (", ..." if len(obj) > 8 else "")
        raise DmadError(f"{path}: no generator state dict found in it (keys: {keys}; looked for a "
                        f"dict of tensors at the top level or under {', '.join(WRAPPER_KEYS)})")
    items: list[tuple[str, torch.Tensor]] = []
    dropped: list[str] = []
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            dropped.append(key)
            continue
        while key.startswith("module."):
            key = key[len("module."):]
        items.append((key, value))
    refuse_nonfinite(path, dict(items))
    return items, file_spec, dropped


def checkpoint_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The generator state dict in a checkpoint file: wrappers (:data:`WRAPPER_KEYS`) and
    ``module.`` prefixes undone, non-finite weights refused, every failure one line."""
    items, _spec, _dropped = _load(Path(path))
    return dict(items)


def recognised_public(path: str | os.PathLike[str]) -> nn.Module | None:
    """The CUT or pix2pixHD generator a checkpoint holds (``models.public``), with the spec
    that rebuilds it (``graph_model.graph_teacher``), or None for any other file (a dmad model
    file, a pytorch-CycleGAN-and-pix2pix layout, not a checkpoint)."""
    from dmad.compress.graph_model import graph_teacher
    from dmad.compress.models.public import public_builder, public_generator

    try:
        items, spec, _dropped = _load(Path(path))
    except DmadError:
        return None
    if spec is not None:
        return None
    state = dict(items)
    model, found = public_generator(state), public_builder(state)
    return None if model is None or found is None else graph_teacher(model, *found)


# ------------------------------------------------------------------------------------- inference

def _infer_norm(groups: list[_Group]) -> str:
    norms = [g for g in groups if g.is_norm]
    affine = any("weight" in g.items and "bias" in g.items for g in norms)
    running = any("running_mean" in g.items for g in norms)
    first = next((g for g in groups if g.conv_weight() is not None), None)
    conv_bias = first is not None and "bias" in first.items
    if affine and running:
        return "batch"
    if affine:
        return "instance_affine"
    if running:
        return "instance"  # PyTorch < 0.4 InstanceNorm: running stats, no weight/bias
    # The original gives convs a bias only before an InstanceNorm; norm 'none' has none.
    return "instance" if conv_bias else "none"


def _infer(arch: str, groups: list[_Group], separable: bool) -> dict[str, Any]:
    convs = [w for g in groups if (w := g.conv_weight()) is not None]
    if not convs:
        return {}
    out: dict[str, Any] = {"ngf": convs[0].shape[0], "input_nc": convs[0].shape[1]}
    if arch == "resnet":
        out["output_nc"] = convs[-1].shape[0]
        if separable:
            n = sum(1 for w in convs if w.shape[1] == 1 and tuple(w.shape[2:]) == (3, 3))
        else:
            n = sum(1 for w in convs if w.shape[0] == w.shape[1] and tuple(w.shape[2:]) == (3, 3))
        out["n_blocks"] = n // 2
    else:
        out["output_nc"] = convs[-1].shape[1]  # ConvTranspose2d weight: in × out × k × k
        out["num_downs"] = sum(1 for w in convs if tuple(w.shape[2:]) == (4, 4)) // 2
    out["norm"] = _infer_norm(groups)
    return out


def _hint(arch: str, groups: list[_Group], separable: bool) -> str:
    """A guess at what the file really is, appended to a mismatch error."""
    convs = [w for g in groups if (w := g.conv_weight()) is not None]
    if not convs:
        return " (no conv weights in it: not a generator checkpoint)"
    first, last = convs[0], convs[-1]
    if last.shape[0] == 1 and tuple(last.shape[2:]) == (4, 4) and tuple(first.shape[2:]) == (4, 4):
        return " (looks like a PatchGAN discriminator, not a generator)"
    if arch == "resnet" and tuple(first.shape[2:]) == (4, 4):
        return " (looks like a unet checkpoint: try arch unet)"
    if arch == "unet" and tuple(first.shape[2:]) == (7, 7):
        return " (looks like a resnet checkpoint: try arch resnet)"
    if arch == "resnet":
        depthwise = any(w.shape[1] == 1 and tuple(w.shape[2:]) == (3, 3) for w in convs)
        if depthwise and not separable:
            return " (it has depthwise convs: pass separable=True)"
        if separable and not depthwise:
            return " (it has no depthwise convs: drop separable)"
    return ""


def _describe(spec: dict[str, Any]) -> str:
    if spec["family"] == "resnet":
        s = f"resnet ngf={spec['ngf']} n_blocks={spec['n_blocks']} norm={spec['norm']}"
        return s + (" separable" if spec["separable"] else "")
    return f"unet ngf={spec['ngf']} num_downs={spec['num_downs']} norm={spec['norm']}"


def _resolve(path: Path, arch: str, groups: list[_Group], given: dict[str, Any],
             file_spec: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(spec dict to build, options that were inferred rather than given)."""
    if file_spec is not None:
        family = file_spec.get("family")
        if family != arch:
            raise DmadError(f"{path}: is a dmad {family} model file, not {arch}")
        d = dict(file_spec)
        defaults = {"padding": "reflect", "separable": False}  # not told apart from "not given"
        overrides = {k: v for k, v in given.items()
                     if v is not None and d.get(k) != v and defaults.get(k, None) != v}
        if any(k in overrides for k in ("ngf", "n_blocks", "num_downs")):
            d["widths"] = None  # the saved (possibly pruned) widths belong to the saved sizes
        d.update(overrides)
        inferred = {k: v for k, v in file_spec.items()
                    if k not in overrides and k not in ("family", "widths")}
        return d, inferred
    found = _infer(arch, groups, bool(given.get("separable")))
    d: dict[str, Any] = {"family": arch}
    inferred: dict[str, Any] = {}
    fields = ResnetSpec.__dataclass_fields__ if arch == "resnet" else UnetSpec.__dataclass_fields__
    for name in fields:
        if name in ("family", "widths"):
            continue
        if given.get(name) is not None:
            d[name] = given[name]
        elif name in found:
            d[name] = inferred[name] = found[name]
        elif name == "dropout":
            d[name] = arch == "unet"  # no weights: the original's defaults
    return d, inferred


# --------------------------------------------------------------------------------------- mapping

def _match(src: _Group, tgt: _Group, norm: str, running_in: bool = False
           ) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """(target key → tensor, filled keys, problem or '') for one pair of groups.

    ``running_in``: the source norms are affine-free InstanceNorms with running statistics that
    are imported as fixed per-channel norms (``--norm-stats running``): weight 1, bias 0."""
    s_names, t_names = set(src.items), set(tgt.items)
    fills: dict[str, torch.Tensor] = {}
    for name in t_names - s_names:
        t = tgt.tensor(name)
        if name == "num_batches_tracked" and "running_mean" in s_names:
            fills[name] = torch.zeros_like(t)  # BatchNorm saved before PyTorch 0.4.1
        elif running_in and name in ("weight", "bias") and "running_mean" in s_names:
            fills[name] = torch.ones_like(t) if name == "weight" else torch.zeros_like(t)
        elif name == "bias" and norm == "none" and src.conv_weight() is not None:
            fills[name] = torch.zeros_like(t)  # the original's norm='none' convs have no bias
    if s_names | set(fills) != t_names:
        return {}, [], (f"{src.prefix or '<top>'} [{', '.join(src.names)}] vs "
                        f"{tgt.prefix or '<top>'} [{', '.join(tgt.names)}]")
    out: dict[str, torch.Tensor] = {}
    for name in tgt.names:
        key, t = tgt.items[name]
        if name in fills:
            out[key] = fills[name]
            continue
        s_key, s = src.items[name]
        if s.shape != t.shape:
            return {}, [], f"{s_key} {_shape(s)} vs {key} {_shape(t)}"
        out[key] = s
    return out, [tgt.items[n][0] for n in fills], ""


def _fold_conv_bias(groups: list[_Group]) -> list[_Group]:
    """Move each conv's bias into the running mean of the InstanceNorm after it.

    The original gives convs a bias only before an InstanceNorm; imported as a fixed per-channel
    norm (BatchNorm in eval) the conv has none, and ``norm(x + b)`` with running mean ``m``
    equals ``norm(x)`` with running mean ``m - b``: exact."""
    out: list[_Group] = []
    for i, g in enumerate(groups):
        nxt = groups[i + 1] if i + 1 < len(groups) else None
        if (g.conv_weight() is not None and "bias" in g.items and nxt is not None
                and nxt.is_norm and "running_mean" in nxt.items):
            key, rm = nxt.items["running_mean"]
            nxt.items["running_mean"] = (key, rm - g.tensor("bias"))
            g = _Group(g.prefix, {k: v for k, v in g.items.items() if k != "bias"})
        out.append(g)
    return out


def _check(value: Any, allowed: tuple[Any, ...], what: str, path: Path) -> None:
    if value not in allowed:
        choices = ", ".join(str(a) for a in allowed)
        raise DmadError(f"{path}: {what} {value!r} is not one of {choices}")


def _given_options(path: Path, arch: str, **opts: Any) -> dict[str, Any]:
    """The spec options the user gave (None = infer), checked against the family."""
    _check(arch, ARCHES, "arch", path)
    given = {k: opts[k] for k in ("ngf", "n_blocks", "num_downs", "norm", "dropout",
                                  "input_nc", "output_nc")}
    if arch == "resnet":
        _check(opts["padding"], ("reflect", "zero"), "padding", path)
        given.update(padding=opts["padding"], separable=bool(opts["separable"]))
        if opts["num_downs"] is not None:
            raise DmadError(f"{path}: num_downs is a unet option, not a resnet one")
    else:
        if opts["n_blocks"] is not None or opts["padding"] != "reflect" or opts["separable"]:
            raise DmadError(f"{path}: n_blocks, padding and separable are resnet options, "
                            "not unet ones")
        given.pop("n_blocks")
    if opts["norm"] is not None:
        _check(opts["norm"], ("instance", "instance_affine", "batch", "none"), "norm", path)
    return given


def _running_stats(groups: list[Any], spec_d: dict[str, Any], norm_stats: str
                   ) -> tuple[bool, str]:
    """Whether InstanceNorm running statistics are kept (as eval-mode BatchNorm: ``spec_d``'s
    norm becomes ``batch``), and the note that says what happened to them."""
    n_running = sum(1 for g in groups if g.is_norm and "running_mean" in g.items
                    and "weight" not in g.items)
    running_in = norm_stats == "running" and n_running > 0 and spec_d.get("norm") == "instance"
    if running_in:
        spec_d["norm"] = "batch"  # eval-mode BatchNorm = InstanceNorm on its running statistics
        return True, (f"kept the InstanceNorm running statistics of {n_running} layers "
                      "(--norm-stats running): the output matches the checkpoint's eval mode "
                      "with track_running_stats, not the reference loader's per-image "
                      "statistics")
    if n_running and spec_d.get("norm") in ("instance", "instance_affine"):
        return False, (f"dropped the InstanceNorm running statistics of {n_running} layers, as "
                       "the reference loader does: the output uses per-image statistics (the "
                       "reference's test mode); --norm-stats running keeps them, for forks "
                       "that tested with them")
    if norm_stats == "running":
        return False, "--norm-stats running: the checkpoint has no InstanceNorm running statistics"
    return False, ""


def _map_layers(path: Path, groups: list[Any], model: nn.Module, spec: Any, running_in: bool,
                hint: str) -> tuple[dict[str, torch.Tensor], list[str], int]:
    """The source layers matched in order onto the model's: the state dict to load, the
    filled-in tensors and how many keys were renamed; a mismatch is one line naming the
    first layer that does not fit."""
    target = _group([(k, v) for k, v in model.state_dict().items()])
    mapped: dict[str, torch.Tensor] = {}
    filled: list[str] = []
    problems: list[str] = []
    renamed = 0
    for i, (s, t) in enumerate(zip(groups, target, strict=False)):
        out, fills, problem = _match(s, t, spec.norm, running_in)
        if problem:
            problems.append(f"layer {i} {problem}")
            continue
        mapped.update(out)
        filled += fills
        renamed += sum(1 for leaf, (key, _) in s.items.items()
                       if key != t.items[leaf][0])
    if problems or len(groups) != len(target):
        msg = f"{path}: does not fit {_describe(spec_to_dict(spec))}"
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            msg += f": {problems[0]}{more}"
        if len(groups) != len(target):
            msg += f"; source has {len(groups)} layers, target {len(target)}"
        raise DmadError(msg + hint)
    return mapped, filled, renamed


def import_checkpoint(
    path: str | os.PathLike[str],
    arch: str,
    *,
    ngf: int | None = None,
    n_blocks: int | None = None,
    num_downs: int | None = None,
    norm: str | None = None,
    padding: str = "reflect",
    separable: bool = False,
    dropout: bool | None = None,
    input_nc: int | None = None,
    output_nc: int | None = None,
    norm_stats: str = "instance",
) -> tuple[nn.Module, ImportReport]:
    """Load a generator checkpoint at ``path`` into a dmad ``arch`` model (returned in eval mode).

    Options left ``None`` are inferred from the tensors (``dropout``, which has no weights,
    defaults to the original's: off for resnet, on for unet). ``padding`` ('reflect' or 'zero')
    cannot be seen in the weights. ``norm_stats``: what to do with InstanceNorm layers that
    saved running statistics (PyTorch < 0.4, or forks with ``track_running_stats``):
    ``instance`` drops them as the reference loader does (the output uses each image's own
    statistics, the reference's test mode); ``running`` keeps them as fixed per-channel norms,
    matching a fork that ran its test time with them. Raises a one-line :class:`DmadError`
    naming the file when it cannot be read or its layers do not fit.
    """
    path = Path(path)
    given = _given_options(path, arch, ngf=ngf, n_blocks=n_blocks, num_downs=num_downs,
                           norm=norm, padding=padding, separable=separable, dropout=dropout,
                           input_nc=input_nc, output_nc=output_nc)
    _check(norm_stats, ("instance", "running"), "norm_stats", path)
    items, file_spec, dropped = _load(path)
    if not items:
        raise DmadError(f"{path}: holds no tensors, nothing to import")
    groups = _group(items)
    spec_d, inferred = _resolve(path, arch, groups, given, file_spec)
    running_in, note = _running_stats(groups, spec_d, norm_stats)
    hint = _hint(arch, groups, bool(spec_d.get("separable")))
    try:
        spec = spec_from_dict(spec_d)
        model = build(spec)
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        opts = ", ".join(f"{k}={v}" for k, v in spec_d.items() if k not in ("family", "widths"))
        raise DmadError(f"{path}: cannot build {arch} ({opts}): {exc}{hint}") from None

    # PyTorch < 0.4 InstanceNorm layers saved running stats; InstanceNorm targets never have
    # them (the original repo deletes them on load in __patch_instance_norm_state_dict).
    if spec.norm in ("instance", "instance_affine"):
        kept: list[tuple[str, torch.Tensor]] = []
        for g in groups:
            for leaf, (key, t) in g.items.items():
                if g.is_norm and leaf in RUNNING_STATS:
                    dropped.append(key)
                else:
                    kept.append((key, t))
        groups = _group(kept)

    if running_in:
        groups = _fold_conv_bias(groups)
    mapped, filled, renamed = _map_layers(path, groups, model, spec, running_in, hint)
    try:
        model.load_state_dict(mapped, strict=True)
    except (RuntimeError, KeyError) as exc:  # not expected after the checks above
        first = " ".join(str(exc).strip().splitlines()[:2])
        raise DmadError(f"{path}: weights do not load into {arch} ({first})") from None
    report = ImportReport(source=path, arch=arch, spec=spec_to_dict(spec),
                          tensors=len(mapped) - len(filled), renamed=renamed, dropped=dropped,
                          inferred=inferred, filled=[] if running_in else filled,
                          norm_note=note)
    return model.eval(), report


def infer_arch(path: str | os.PathLike[str]) -> str | None:
    """``resnet`` or ``unet`` from the first convolution's kernel (7×7 stem vs 4×4 down), or None
    when the tensors do not say (then ``--arch`` is needed)."""
    items, file_spec, _ = _load(Path(path))
    if file_spec is not None:
        return file_spec.get("family")
    convs = [w for g in _group(items) if (w := g.conv_weight()) is not None]
    if not convs:
        return None
    k = tuple(convs[0].shape[2:])
    last = convs[-1]
    if last.shape[0] == 1 and k == (4, 4):  # a PatchGAN discriminator
        return None
    return {(7, 7): "resnet", (4, 4): "unet"}.get(k)


def check_out(out: str | os.PathLike[str], force: bool) -> Path:
    """The model file ``dmad import`` writes: not a folder, not replaced without ``force``."""
    out = Path(out)
    if out.is_dir():
        raise DmadError(f"--out {out}: is a folder, expected the model file to write")
    if out.exists() and not force:
        raise DmadError(f"--out {out}: exists; use --force to replace it or give another path")
    return out


def import_to_file(
    path: str | os.PathLike[str], arch: str, out: str | os.PathLike[str], *, force: bool = False,
    **opts: Any,
) -> ImportReport:
    """:func:`import_checkpoint` and save the result as a dmad model file at ``out`` (an
    existing file only with ``force``)."""
    out = check_out(out, force)
    model, report = import_checkpoint(path, arch, **opts)
    save_model(model, out, source=str(path), arch=arch)
    return report
