"""Every command's options, declared once: a dataclass field holding its default, type, help and
range (in the spirit of mlx-lm's CONFIG_DEFAULTS and TrainingArgs). The CLI flags, the YAML keys
(`-c file.yaml`, dashes or underscores) and the settings recorded in meta.json all come from it.

Values are filled as defaults < YAML file < flags, then coerced to the declared type and checked
against the declared range before any work starts: a bad value is one line, not a traceback after
the model has loaded.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path

import yaml

from .errors import UserError

PACKAGED = Path(__file__).parent / "configs"


def option(default=None, help: str = "", *, flag: str | None = None, short: str | None = None,
           choices: tuple | None = None, min: float | None = None, max: float | None = None,
           gt: float | None = None, lt: float | None = None, required: bool = False,
           default_text: str | None = None, aliases: tuple[str, ...] = ()):
    """A config field: `default` (lists are copied per instance), one-line `help`, and its valid
    values: `choices`, or bounds `min`/`max` (inclusive) and `gt`/`lt` (exclusive). Floats must be
    finite. `flag` overrides the flag spelling (e.g. "--reset-optimizer/--carry-optimizer");
    `default_text` says what a None default means; `aliases` are other spellings of the flag (and
    YAML key) that mean the same, mlx-lm's where ours differ."""
    meta = {"help": help, "flag": flag, "short": short, "choices": choices, "min": min, "max": max,
            "gt": gt, "lt": lt, "required": required, "default_text": default_text, "aliases": tuple(aliases)}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda d=tuple(default): list(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def fields(cls) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def value_type(cls, name: str):
    """(base type, is_list, optional) of a field: `list[int] | None` -> (int, True, True)."""
    hint = typing.get_type_hints(cls)[name]
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = len(args) < len(typing.get_args(hint)), args[0]
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True, optional
    return hint, False, optional


def default(f: dataclasses.Field):
    """A field's default value (a fresh list for list options)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def default_text(f: dataclasses.Field) -> str:
    if f.metadata.get("default_text"):
        return f.metadata["default_text"]
    value = default(f)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _scalar(name: str, kind, value):
    """One value as `kind`; YAML 1.1 reads `5e-4` as text and flags arrive as text in lists."""
    def bad(what):
        return UserError(f"{flag_name(name)}: expected {what}, got {value!r}")

    if kind is bool:
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if kind is int:
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        try:
            f = float(value) if isinstance(value, (str, float)) else math.nan
        except ValueError:
            raise bad("an integer") from None
        if not math.isfinite(f) or f != int(f):
            raise bad("an integer")
        return int(f)
    if kind is float:
        if isinstance(value, bool):
            raise bad("a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
    if kind is str:
        if isinstance(value, str):
            return value
        raise bad("text")
    raise TypeError(f"option {name}: unsupported type {kind}")


def coerce(cls, name: str, value):
    kind, is_list, _ = value_type(cls, name)
    if value is None:
        return None
    if not is_list:
        return _scalar(name, kind, value.strip() if isinstance(value, str) and kind is not str else value)
    items = value if isinstance(value, (list, tuple)) else (
        [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else [value])
    return [_scalar(name, kind, v) for v in items]


def _check_value(name: str, meta: dict, v) -> None:
    flag = flag_name(name)
    if isinstance(v, float) and not math.isfinite(v):
        raise UserError(f"{flag} must be a finite number (got {v})")
    if meta["choices"] is not None and v not in meta["choices"]:
        raise UserError(f"{flag} {v!r}: choose one of {', '.join(str(c) for c in meta['choices'])}")
    for key, ok, word in (("min", lambda v, b: v >= b, ">="), ("max", lambda v, b: v <= b, "<="),
                          ("gt", lambda v, b: v > b, ">"), ("lt", lambda v, b: v < b, "<")):
        bound = meta[key]
        if bound is not None and not ok(v, bound):
            raise UserError(f"{flag} must be {word} {bound:g} (got {v})")


def check(cfg) -> None:
    """Types, ranges, choices and required options of a filled config: one UserError, first found."""
    for f in fields(type(cfg)):
        v = getattr(cfg, f.name)
        if v is None:
            if f.metadata.get("required"):
                raise UserError(f"{flag_name(f.name)} is required (a flag, or `{f.name.replace('_', '-')}:` "
                                f"in the -c file)")
            continue
        for item in v if isinstance(v, list) else [v]:
            _check_value(f.name, f.metadata, item)


def resolve_config(name: str | Path) -> Path:
    """A YAML path, or the name of a config shipped in mlx_reptilora/configs (e.g. `cpu-small`)."""
    path = Path(name)
    if not path.exists() and (PACKAGED / f"{name}.yaml").exists():
        return PACKAGED / f"{name}.yaml"
    return path


def read_yaml(cls, config_file: str | Path) -> dict:
    path = resolve_config(config_file)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        shipped = ", ".join(sorted(p.stem for p in PACKAGED.glob("*.yaml")))
        raise UserError(f"config file {path} does not exist (shipped configs: {shipped})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {path}: {e}") from None
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must be a mapping of option: value")
    names = {f.name for f in fields(cls)}
    aliases = {a[2:].replace("-", "_"): f.name for f in fields(cls) for a in f.metadata.get("aliases", ())}
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name == "lora_parameters" and "rank" in names:
            values.update(lora_parameters(value, raw, path))
            continue
        name = aliases.get(name, name)
        if name not in names:
            raise UserError(f"config file {path}: unknown option {key!r}")
        if name in values:
            raise UserError(f"config file {path}: {key!r} and another spelling of it are both given")
        values[name] = value
    return values


LORA_PARAMETERS = {"rank": "rank", "scale": "alpha", "dropout": "dropout", "keys": "lora_keys"}
SCALE = "lora_parameters.scale"  # kept until the flags are in: alpha = scale x the rank finally chosen


def lora_parameters(block, raw: dict, path) -> dict:
    """mlx-lm's YAML `lora_parameters: {rank, scale, dropout, keys}` as our options. mlx-lm's scale is
    the multiplier itself (alpha / rank), and a block without keys means every linear layer."""
    if not isinstance(block, dict) or set(map(str, block)) - set(LORA_PARAMETERS):
        raise UserError(f"config file {path}: lora_parameters takes {', '.join(LORA_PARAMETERS)} (mlx-lm's keys)")
    given = {str(k).replace("-", "_") for k in raw}
    both = [LORA_PARAMETERS[k] for k in block if LORA_PARAMETERS[k] in given]
    if both:
        raise UserError(f"config file {path}: {both[0]!r} is given both at the top and in lora_parameters")
    out = {LORA_PARAMETERS[k]: v for k, v in block.items() if k != "scale"}
    out.setdefault("lora_keys", ["all"])
    if "scale" in block:
        scale = block["scale"]
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            scale = math.nan
        if isinstance(block["scale"], bool) or not math.isfinite(scale) or scale <= 0:
            raise UserError(f"config file {path}: lora_parameters.scale must be a number > 0 (got {block['scale']!r})")
        out[SCALE] = scale
    return out


def build(cls, config_file: str | Path | None = None, **flags):
    """A checked instance of `cls`: defaults < YAML < flags (a flag of None was not given)."""
    values = read_yaml(cls, config_file) if config_file else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    scale = values.pop(SCALE, None)
    if scale is not None and flags.get("alpha") is None:  # mlx-lm's scale, at the rank the flags leave
        rank = coerce(cls, "rank", values.get("rank", next(f.default for f in fields(cls) if f.name == "rank")))
        values["alpha"] = scale * rank
    cfg = cls(**{k: coerce(cls, k, v) for k, v in values.items()})
    check(cfg)
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
