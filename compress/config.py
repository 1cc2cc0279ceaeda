"""Stage configs: dataclasses loadable from a TOML/JSON file and overridable from flags.

Every stage (teacher, search, finetune, export, bench) has one dataclass; the CLI only builds it
and calls one function. Unknown keys and values of the wrong type are one-line errors naming the
file and the field, so a typo in a config never silently trains the wrong model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from dmad.compress.errors import DmadError
from dmad.compress.limits import NONNEGATIVE_FIELDS, SIDE_FIELDS, check_batch, check_side

T = TypeVar("T")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from a file, or a string from a flag) to the field type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in typing.get_args(tp):
                return None
        errors = []
        for a in args:
            try:
                return _coerce(value, a, where)
            except DmadError as exc:
                errors.append(str(exc))
        raise DmadError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise DmadError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise DmadError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise DmadError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise DmadError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise DmadError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise DmadError(f"{where}: expected a string, got {value!r}")
    if origin is tuple:
        (inner, *_rest) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise DmadError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, inner, where) for v in value)
    return value


def opt(default: Any = dataclasses.MISSING, help: str = "", *,
        factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its one-line help, kept beside the field so the two cannot drift.

    ``dmad <stage> --help`` prints this text for the field's flag (with its default), and a test
    requires one on every field of every stage config, choices or unit included.
    """
    return dataclasses.field(default=default, default_factory=factory, metadata={"help": help})


#: Help texts of the run-control fields several stage configs share (one wording everywhere).
RUN_HELP = {
    "checkpoint_every": "steps between atomic checkpoints (what --resume continues from)",
    "log_every": "steps between log.jsonl lines and progress updates",
    "device": "auto (CUDA when present) | cpu | cuda | cuda:N",
    "skip_bad": "true = skip unreadable/grayscale/too-small images with a count instead of "
                "stopping",
    "workers": "DataLoader worker processes decoding images ahead of the step; -1 = 0 on CPU, "
               "up to 4 per GPU on CUDA (the batches are the same for any count)",
    "prefetch": "batches each loader worker prepares ahead",
    "precision": "fp32 | bf16 | fp16: autocast precision of the forward passes (fp16 adds loss "
                 "scaling)",
    "channels_last": "auto | on | off: NHWC memory layout (auto = on for CUDA with bf16/fp16)",
    "epochs": "train for this many passes over the training images instead of --steps "
              "(steps = ceil(epochs · images / global batch)); 0 = use steps",
    "decay_epochs": "with --epochs: epochs of linear LR decay at the end; -1 = half of epochs",
    "tensorboard": "write TensorBoard event files (tensorboard/ in the run folder) beside "
                   "log.jsonl: losses, bound, MACs and periodic evaluations per step",
}


def field_help(cls: type, name: str) -> str:
    """The help text of field ``name`` of config dataclass ``cls`` ("" when it has none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON file into a dict (one-line error naming the file)."""
    path = Path(path)
    if path.is_dir():
        raise DmadError(f"{path}: is a folder, expected a TOML or JSON config file")
    if not path.is_file():
        raise DmadError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except OSError as exc:
        raise DmadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DmadError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'} "
            f"({str(exc)[:200]})"
        ) from None
    if not isinstance(data, dict):
        raise DmadError(f"{path}: expected a table of settings at top level")
    return data


def make_config(
    cls: type[T],
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    section: str | None = None,
    base: dict[str, Any] | None = None,
    base_origin: str = "saved config",
) -> T:
    """Build ``cls`` from defaults, then ``base`` (a resumed run's saved config), then ``file``
    (optionally its ``[section]``), then overrides.

    Raises DmadError for unknown keys or badly typed values, naming the file (or ``flag``) and
    the field.
    """
    types_ = field_types(cls)
    values: dict[str, Any] = {}
    sources: list[tuple[str, dict[str, Any]]] = []
    if base:
        sources.append((base_origin, base))
    if file is not None:
        data = read_config_file(file)
        if section is not None and isinstance(data.get(section), dict):
            data = data[section]
        elif section is not None and any(isinstance(v, dict) for v in data.values()):
            data = {}  # a file of stage tables without this stage's table
        sources.append((str(file), data))
    if overrides:
        sources.append(("flag", {k: v for k, v in overrides.items() if v is not None}))
    for origin, data in sources:
        for key, value in data.items():
            norm = key.replace("-", "_")
            if norm not in types_:
                close = [n for n in types_ if n.startswith(norm[:3])][:3]
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise DmadError(f"{origin}: unknown config key {key!r}{hint}")
            values[norm] = _coerce(value, types_[norm], f"{origin}: field {norm}")
            if norm in SIDE_FIELDS and isinstance(values[norm], int):
                check_side(f"{origin}: field {norm}", values[norm])
            if norm in NONNEGATIVE_FIELDS and isinstance(values[norm], int) and values[norm] < 0:
                raise DmadError(f"{origin}: field {norm}: must be >= 0, got {values[norm]}")
    try:
        cfg = cls(**values)
    except ValueError as exc:
        raise DmadError(str(exc)) from None
    batch, side = getattr(cfg, "batch_size", 0), getattr(cfg, "size", 0)
    if isinstance(batch, int) and isinstance(side, int):
        check_batch("field batch_size", batch, side)
    return cfg


def parse_set(pairs: list[str] | None) -> dict[str, str]:
    """``--set key=value`` flags into a dict."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise DmadError(f"--set {pair!r}: expected key=value")
        k, v = pair.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """Config as a JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))
