"""A user's own generator class, named on the command line: ``--generator-class pkg.mod:Class``.

Why: most generators are neither dmad's nor pytorch-CycleGAN-and-pix2pix's, and their weights
are a state dict that means nothing without the class that made them. The class is imported
from the user's own code (the current folder is searched first, as ``python -m`` would), built
with ``--kwargs`` (a JSON object), and given the state dict loaded with ``weights_only=True``;
every failure on the way is one line that says which of the three went wrong. Importing the
module runs the user's code: that is what naming one's own class asks for. A model file that
names a class (a traced generator's spec) did not ask: it may only name modules the user
already trusts (:func:`import_class` with ``from_file``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

from dmad.compress.errors import DmadError
from dmad.compress.importer import checkpoint_state

__all__ = ["import_class", "load_user_generator"]


#: top-level modules a model file may name besides dmad's own and the current folder's
TRUST_ENV = "DMAD_TRUST_MODULES"


def import_class(path: str, what: str = "--generator-class", *,
                 from_file: bool = False) -> type[nn.Module]:
    """The ``nn.Module`` subclass ``path`` (``package.module:Class``) names; anything else
    (a function, a class that is not a module) is refused before it is called. ``what`` is
    where the name came from, for the one-line errors.

    ``from_file``: the name was read from a file, not typed by the user. Importing runs the
    module's code, so a file may only name dmad's modules, modules of the current folder,
    modules this process has already imported (the class a run was started with), or top-level
    packages listed in ``$DMAD_TRUST_MODULES``; a crafted file cannot make dmad import
    anything else."""
    mod_name, sep, cls_name = path.partition(":")
    if not sep or not mod_name or not cls_name:
        raise DmadError(f"{what} {path!r}: expected package.module:ClassName")
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        if from_file and not _trusted(mod_name, Path(cwd)):
            top = mod_name.split(".")[0]
            raise DmadError(f"{what} {path}: the file names module {mod_name}, which is neither "
                            f"dmad's, in the current folder, nor already imported; run from "
                            f"the folder that holds it, or set {TRUST_ENV}={top}")
        module = importlib.import_module(mod_name)
    except DmadError:
        raise
    except Exception as exc:  # the user's module: any error it raises is theirs, said in one line
        raise DmadError(f"{what} {path}: cannot import {mod_name} "
                        f"({type(exc).__name__}: {exc}); run dmad from the folder that holds "
                        "it, or install it") from None
    finally:
        if added:
            sys.path.remove(cwd)
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise DmadError(f"{what} {path}: {mod_name} has no nn.Module class "
                        f"{cls_name!r}")
    return cls


def _trusted(mod_name: str, cwd: Path) -> bool:
    """May a model file make dmad import ``mod_name`` (see :func:`import_class`)? Decided
    without importing anything: a top-level module's spec is found, not run."""
    top = mod_name.split(".")[0]
    trusted = {t.strip() for t in os.environ.get(TRUST_ENV, "").split(",") if t.strip()}
    if top == "dmad" or top in trusted or mod_name in sys.modules:
        return True
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    where = spec.origin if spec is not None and spec.origin not in (None, "built-in",
                                                                    "frozen") else None
    if where is None and spec is not None and spec.submodule_search_locations:
        where = next(iter(spec.submodule_search_locations), None)
    return where is not None and cwd.resolve() in Path(where).resolve().parents


def load_user_generator(class_path: str, weights: Path | None,
                        kwargs_json: str | None = None) -> nn.Module:
    """``Class(**kwargs)`` from ``class_path``, with ``weights`` loaded strictly (module doc);
    in eval mode."""
    cls = import_class(class_path)
    try:
        kwargs = json.loads(kwargs_json or "{}")
    except json.JSONDecodeError as exc:
        raise DmadError(f"--kwargs: not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(kwargs, dict):
        raise DmadError(f"--kwargs: expected a JSON object of keyword arguments, got "
                        f"{type(kwargs).__name__}")
    try:
        model = cls(**kwargs)
    except Exception as exc:  # the user's constructor
        raise DmadError(f"--generator-class {class_path}: {cls.__name__}(**{kwargs}) failed "
                        f"({type(exc).__name__}: {exc})") from None
    if weights is not None:
        state = checkpoint_state(weights)
        missing, unexpected = _compare(model, state)
        if missing or unexpected:
            parts = [f"missing {', '.join(missing[:3])}" if missing else "",
                     f"unexpected {', '.join(unexpected[:3])}" if unexpected else ""]
            raise DmadError(f"{weights}: does not fit {cls.__name__}(**{kwargs}): "
                            + "; ".join(p for p in parts if p)
                            + " (check --kwargs: widths and block counts)")
        model.load_state_dict(state, strict=True)
    return model.eval()


def _compare(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """(missing, unexpected-or-misshapen) keys of ``state`` against ``model``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    bad = [k for k in state if k not in own]
    bad += [f"{k} {tuple(state[k].shape)} (model {tuple(own[k].shape)})" for k in state
            if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    return missing, bad
