"""One config dataclass per command, filled from defaults < YAML file (-c) < explicit flags.

YAML keys are the flag names with dashes or underscores (`inner-lr` or `inner_lr`), like mlx_lm.lora.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import yaml

from .errors import UserError


def _coerce(cls, name: str, value):
    """YAML gives ints for floats ("lr: 1") and strings for comma lists; make them what the field says."""
    hint = typing.get_type_hints(cls)[name]
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args else hint
    if value is None:
        return None
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(base) is list and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


PACKAGED = Path(__file__).parent / "configs"


def resolve_config(name: str | Path) -> Path:
    """A YAML path, or the name of a config shipped in mlx_reptilora/configs (e.g. `cpu-small`)."""
    path = Path(name)
    if not path.exists() and (PACKAGED / f"{name}.yaml").exists():
        return PACKAGED / f"{name}.yaml"
    return path


def build(cls, config_file: str | Path | None = None, **flags):
    """An instance of `cls`; flags whose value is None were not given and do not override."""
    values = {}
    fields = {f.name for f in dataclasses.fields(cls)}
    if config_file:
        path = resolve_config(config_file)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise UserError(f"config file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise UserError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise UserError(f"config file {path} must be a mapping of option: value")
        for key, value in raw.items():
            name = str(key).replace("-", "_")
            if name not in fields:
                raise UserError(f"config file {path}: unknown option {key!r}")
            values[name] = value
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return cls(**{k: _coerce(cls, k, v) for k, v in values.items()})
    except TypeError as e:
        raise UserError(f"bad configuration: {e}") from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
