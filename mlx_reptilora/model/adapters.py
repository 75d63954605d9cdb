"""LoRA adapters on the frozen base: attach, read/write in mlx-lm's format, convert to/from PEFT.

mlx-lm's format is what `mlx_lm.generate --adapter-path` and `mlx_lm.fuse` read: adapters.safetensors
(only `lora_a`/`lora_b` tensors) + adapter_config.json {fine_tune_type, num_layers, lora_parameters
{rank, scale, dropout, keys}}. mlx-lm's `scale` is the multiplier itself, PEFT's lora_alpha / r.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ..errors import UserError
from ..options import option
from ..paths import atomic_write, atomic_write_text
from . import models

CONFIG = "adapter_config.json"
WEIGHTS = "adapters.safetensors"
START_ARRAYS = "start.safetensors"  # a start that is not one point keeps its arrays here (meta/start.py)
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# model.layers.<i>.<path inside the block>.lora_a|lora_b: LoRA on a transformer block's linear layer
_BLOCK_LORA = re.compile(r"(?:.*\.)?layers\.(\d+)\.(.+)\.(lora_a|lora_b)$")


@dataclass
class LoraConfig:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.1
    # module paths inside each block; None is mlx-lm's "every linear layer" (filled in by attach)
    keys: list[str] | None = field(default_factory=lambda: ["self_attn.q_proj", "self_attn.v_proj"])
    num_layers: int = -1  # the last N transformer blocks; -1 = all

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def mlx_lm_parameters(self) -> dict:
        keys = {} if self.keys is None else {"keys": list(self.keys)}
        return {"rank": self.rank, "scale": self.scale, "dropout": self.dropout, **keys}


@dataclass
class LoraOptions:
    """The LoRA a run creates (the paper's: q/v, r 16, alpha 32, dropout 0.1)."""

    rank: int = option(16, "LoRA rank r", min=1)
    alpha: float = option(32.0, "LoRA alpha; the update is scaled by alpha / rank", gt=0)
    dropout: float = option(0.1, "dropout on the LoRA branch", min=0, lt=1)
    lora_keys: list[str] = option(["self_attn.q_proj", "self_attn.v_proj"], "module paths inside each block that get "
                                  "LoRA; all: every linear layer (mlx-lm's default)")
    lora_layers: int = option(-1, "LoRA on the last N layers; -1 = all", min=-1, aliases=("--num-layers",))

    def lora(self) -> LoraConfig:
        keys = None if self.lora_keys == ["all"] else list(self.lora_keys)  # None: mlx-lm picks every linear layer
        return LoraConfig(self.rank, self.alpha, self.dropout, keys, self.lora_layers)


def attach(model: nn.Module, cfg: LoraConfig, seed: int = 0) -> nn.Module:
    """Wrap the target linears in LoRALinear: the standard start (A uniform, B = 0, so the model
    equals the base). Only the LoRA tensors are trainable afterwards. Without keys, mlx-lm picks
    the layers (every linear one) and `cfg.keys` records what it picked."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    if cfg.rank < 1:
        raise UserError(f"--rank must be >= 1 (got {cfg.rank})")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"--dropout must be in [0, 1) (got {cfg.dropout})")
    n_layers = len(model.layers)
    if cfg.num_layers == 0 or cfg.num_layers > n_layers or cfg.num_layers < -1:
        raise UserError(f"--lora-layers {cfg.num_layers}: the model has {n_layers} layers (-1 = all)")
    available = {name for name, m in model.layers[0].named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))}
    missing = [k for k in cfg.keys or [] if k not in available]
    if missing:
        raise UserError(f"LoRA keys {missing} match no layer; available: {', '.join(sorted(available))}")
    model.freeze()
    mx.random.seed(seed)
    linear_to_lora_layers(model, cfg.num_layers, cfg.mlx_lm_parameters())
    if cfg.keys is None:
        cfg.keys = sorted({m[2] for m in map(_BLOCK_LORA.match, get_weights(model)) if m})
    return model


def num_layers(model: nn.Module, cfg: LoraConfig) -> int:
    return len(model.layers) if cfg.num_layers == -1 else cfg.num_layers


def get_weights(model: nn.Module) -> dict:
    """The adapter tensors as a flat {name: array} dict (the trainable parameters)."""
    return dict(tree_flatten(model.trainable_parameters()))


def set_weights(model: nn.Module, weights: dict) -> None:
    model.update(tree_unflatten(list(weights.items())))


def write_config(out_dir: str | Path, cfg: LoraConfig, n_layers: int, extra: dict | None = None) -> Path:
    """adapter_config.json in mlx-lm's format; `extra` keys go into it (mlx-lm ignores them)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG, json.dumps({"fine_tune_type": "lora", "num_layers": n_layers, "lora_parameters":
                                                cfg.mlx_lm_parameters(), "lora_alpha": cfg.alpha, **(extra or {})}, indent=2))
    return out


def write(out_dir: str | Path, weights: dict, cfg: LoraConfig, n_layers: int, extra: dict | None = None) -> Path:
    """Adapters in mlx-lm's format, the tensors sorted by name: one byte layout, whichever way the dict
    was built (a model, a checkpoint). The weights are written last: their presence means done."""
    if not weights:
        raise ValueError("no adapter tensors to save")
    out = write_config(out_dir, cfg, n_layers, extra)
    atomic_write(out / WEIGHTS, lambda p: mx.save_safetensors(p, dict(sorted(weights.items()))))
    return out


def save(model: nn.Module, cfg: LoraConfig, out_dir: str | Path, extra: dict | None = None) -> Path:
    return write(out_dir, get_weights(model), cfg, num_layers(model, cfg), extra)


def read_config(path: str | Path, file: str = WEIGHTS) -> LoraConfig:
    """The LoRA that saved adapters (or a start whose arrays are in `file`) describe."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"adapters {path}: no such folder")
    if not (path / CONFIG).exists() or not (path / file).exists():
        if (path / PEFT_WEIGHTS).exists():
            raise UserError(f"adapters {path} are in PEFT's format: convert them with "
                            f"`mlx-reptilora import-peft {path} OUT_DIR`")
        raise UserError(f"adapters {path}: neither mlx-lm adapters ({CONFIG} + {WEIGHTS}) nor ours")
    try:
        raw = json.loads((path / CONFIG).read_text())
        if raw.get("fine_tune_type", "lora") != "lora":
            raise UserError(f"adapters {path}: fine_tune_type {raw['fine_tune_type']!r} is not supported (lora only)")
        lp = raw["lora_parameters"]
        rank = int(lp["rank"])
        # As mlx-lm reads it: no "keys" means every linear layer of the last num_layers blocks.
        keys = lp.get("keys")
        return LoraConfig(rank=rank, alpha=float(raw.get("lora_alpha", lp["scale"] * rank)),
                          dropout=float(lp.get("dropout", 0.0)),
                          keys=None if keys is None else [str(k) for k in keys], num_layers=int(raw["num_layers"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"adapters {path}/{CONFIG} is malformed ({type(e).__name__}: {e})") from None


def read_weights(path: str | Path, file: str = WEIGHTS) -> dict:
    try:
        weights = mx.load(str(Path(path) / file))
    except Exception as e:
        raise UserError(f"cannot read {Path(path) / file}: {(str(e).splitlines() or [''])[0]}") from None
    bad = [k for k, v in weights.items() if not mx.all(mx.isfinite(v)).item()]
    if bad:
        raise UserError(f"adapters {path} hold non-finite values (NaN or inf) in {len(bad)} tensor(s), e.g. {bad[0]}: "
                        f"the run that wrote them diverged")
    return weights


def recorded(path: str | Path | None, key: str, default=None):
    """A value adapter_config.json records beside mlx-lm's own keys (who made it, from how many shots)."""
    if not path:
        return default
    try:
        value = json.loads((Path(path) / CONFIG).read_text()).get(key)
    except (OSError, json.JSONDecodeError, AttributeError):
        return default
    return default if value is None else value


def learner_of(path: str | Path | None) -> str | None:
    """The learner that made a start ("reptile", "fomaml", ...), None for other adapters."""
    return recorded(path, "meta_learned")


def origin(path: str | Path) -> str:
    """One line on where a start came from, for what adapt and compare print."""
    learner = learner_of(path)
    return f"{path} (meta-learned with {learner})" if learner else f"{path} (not meta-learned here)"


def check_fit(model: nn.Module, weights: dict, source: str) -> None:
    """One readable line when saved adapters do not fit the model's LoRA layers."""
    params = get_weights(model)
    unknown = [k for k in weights if k not in params]
    missing = [k for k in params if k not in weights]
    wrong = [k for k in weights if k in params and weights[k].shape != params[k].shape]
    if unknown or missing or wrong:
        k = (wrong or unknown or missing)[0]
        detail = (f"{k}: shape {tuple(weights[k].shape)} vs the model's {tuple(params[k].shape)}" if wrong
                  else f"{k} is {'not in the model' if unknown else 'missing from the file'}")
        raise UserError(f"adapters {source} do not fit this model ({len(wrong)} wrong shapes, "
                        f"{len(unknown)} unknown, {len(missing)} missing tensors; e.g. {detail})")


def load(model: nn.Module, path: str | Path) -> LoraConfig:
    """Attach LoRA layers as described by saved adapters and load their weights."""
    cfg, weights = read_config(path), read_weights(path)
    attach(model, cfg)
    check_fit(model, weights, str(path))
    set_weights(model, weights)
    return cfg


# ---- PEFT interop ----------------------------------------------------------------------------
# PEFT stores lora_A.weight as (r, in) and lora_B.weight as (out, r): mlx-lm's lora_a (in, r) and
# lora_b (r, out) transposed, under "base_model.model." + the HF module path.

def to_peft(path: str | Path, out_dir: str | Path, base_model: str | None = None) -> Path:
    """Every LoRA tensor of the adapters, in PEFT's layout; `target_modules` and
    `layers_to_transform` are read off the tensors themselves (not the config), so PEFT attaches
    exactly the modules that have weights. What PEFT's config cannot express is refused, before
    anything is written."""
    cfg = read_config(path)
    weights = read_weights(path)
    if not weights:
        raise UserError(f"adapters {path}/{WEIGHTS} holds no tensors (nothing written)")
    peft, modules = {}, {}  # modules: layer -> the paths inside the block that carry LoRA
    for name, w in weights.items():
        m = _BLOCK_LORA.match(name)
        if m is None or w.ndim != 2:
            raise UserError(f"adapters {path}: {name} is not LoRA on a transformer block's linear layer; "
                            f"PEFT export covers only those (nothing written)")
        layer, key, leaf = int(m[1]), m[2], m[3]
        peft[f"{PEFT_PREFIX}{name[:-len(leaf) - 1]}.{'lora_A' if leaf == 'lora_a' else 'lora_B'}.weight"] = w.T
        modules.setdefault(layer, set()).add(key)
    keys = set().union(*modules.values())
    uneven = next((layer for layer, k in sorted(modules.items()) if k != keys), None)
    if uneven is not None:
        raise UserError(f"adapters {path}: layer {uneven} has LoRA on {', '.join(sorted(modules[uneven]))} but other "
                        f"layers on {', '.join(sorted(keys))}; PEFT's target_modules x layers_to_transform cannot "
                        f"express that (nothing written)")
    leaves, layers = {k.rsplit(".", 1)[-1] for k in keys}, sorted(modules)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": cfg.rank, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
        # PEFT matches a target by name suffix: leaf names when they are unambiguous, else the paths
        "target_modules": sorted(leaves if len(leaves) == len(keys) else keys),
        # mlx-lm's LoRA covers the last N blocks: 0 to N - 1 without a gap is all of them
        "layers_to_transform": None if layers == list(range(len(layers))) else layers,
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
    }
    (out := Path(out_dir)).mkdir(parents=True, exist_ok=True)
    atomic_write(out / PEFT_WEIGHTS, lambda p: mx.save_safetensors(
        p, {k: mx.contiguous(v) for k, v in peft.items()}, metadata={"format": "pt"}))
    atomic_write_text(out / "adapter_config.json", json.dumps(config, indent=2))
    return out


def from_peft(path: str | Path, out_dir: str | Path) -> Path:
    path = Path(path)
    try:
        raw = json.loads((path / "adapter_config.json").read_text())
        tensors = mx.load(str(path / PEFT_WEIGHTS))
    except (OSError, json.JSONDecodeError, RuntimeError, ValueError) as e:
        raise UserError(f"{path} is not a readable PEFT adapter folder ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}/adapter_config.json is not a JSON object")
    if raw.get("peft_type") != "LORA" or raw.get("use_dora") or raw.get("rank_pattern") or raw.get("alpha_pattern"):
        raise UserError(f"{path}: only plain PEFT LoRA adapters (no DoRA, no rank/alpha patterns) can be imported")
    try:
        r, alpha = int(raw["r"]), float(raw["lora_alpha"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}/adapter_config.json: no usable {e.args[0] if isinstance(e, KeyError) else 'r or lora_alpha'}") from None
    scale_alpha = alpha * (r ** 0.5) / r if raw.get("use_rslora") else alpha  # rsLoRA scales by alpha/sqrt(r)
    if not tensors:
        raise UserError(f"{path}/{PEFT_WEIGHTS} holds no tensors")
    weights, keys, layers = {}, set(), set()
    for name, w in tensors.items():
        # base_model.model.model.layers.<i>.<key...>.lora_A.weight: linear LoRA on transformer blocks only
        parts = name[len(PEFT_PREFIX):].split(".") if name.startswith(PEFT_PREFIX) else []
        if (len(parts) < 6 or parts[-1] != "weight" or parts[-2] not in ("lora_A", "lora_B")
                or parts[:2] != ["model", "layers"] or not parts[2].isdigit()):
            raise UserError(f"{path}: tensor {name} is not LoRA on a transformer block's linear layer "
                            f"(embedding LoRA and other kinds cannot be imported)")
        module = ".".join(parts[:-2])
        weights[f"{module}.{parts[-2].lower()}"] = mx.contiguous(w.T)  # lora_A -> lora_a
        layers.add(int(parts[2]))
        keys.add(".".join(parts[3:-2]))
    for name, w in weights.items():
        twin = name[:-1] + ("b" if name.endswith("a") else "a")
        if twin not in weights:
            raise UserError(f"{path}: {name.rsplit('.', 1)[0]} has lora_{name[-1].upper()} but no "
                            f"lora_{twin[-1].upper()}: a half adapter")
        if w.ndim != 2 or (w.shape[1] if name.endswith("a") else w.shape[0]) != r:
            raise UserError(f"{path}: {name} has shape {tuple(w.shape)}, not rank r = {r}")
    if sorted(layers) != list(range(min(layers), max(layers) + 1)):
        raise UserError(f"{path}: LoRA on layers {sorted(layers)}; mlx-lm needs the last N layers contiguous")
    cfg = LoraConfig(rank=r, alpha=scale_alpha, dropout=float(raw.get("lora_dropout", 0.0)),
                     keys=sorted(keys), num_layers=len(layers))
    base = raw.get("base_model_name_or_path")  # a hub id, or a folder (as export-peft and PEFT write it)
    is_hub_id = isinstance(base, str) and models.is_repo_id(base) and not Path(base).expanduser().exists()
    return write(out_dir, weights, cfg, len(layers),
                 {"imported_from": str(path), "base_model": base, "base_model_id": base if is_hub_id else None})
