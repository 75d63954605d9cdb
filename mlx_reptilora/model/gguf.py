"""Convert a llama.cpp GGUF checkpoint of a Llama-architecture model into a Hugging Face folder.

The result (config.json, model.safetensors, tokenizer.json, tokenizer_config.json) loads in
`mlx_lm.load` and in transformers. Two things differ from a naive dump:
- llama.cpp permutes the rows of q_proj/k_proj for its rotary embedding; we undo it so LoRA trained
  here matches the layout that mlx_lm.generate, mlx_lm.fuse and PEFT see.
- the tokenizer is rebuilt with the `tokenizers` library from the GGUF's BPE tokens and merges
  (transformers' own GGUF reader needs torch; our runtime must not).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlx.core as mx

from ..errors import UserError

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# Digits one at a time, then GPT-2's byte-level split: llama.cpp's "smollm" pre-tokenizer.
_SPLIT_DIGITS_PRE = {"smollm", "starcoder", "refact", "qwen2"}


def _probe(path: str | Path) -> None:
    """mx.load's GGUF reader can segfault on a corrupt file: try it in a child process first."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UserError(f"cannot read GGUF {path}: not a GGUF file (bad magic)")
    code = "import sys, mlx.core as mx; mx.load(sys.argv[1], return_metadata=True)"
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or [f"reader crashed (exit {r.returncode})"])[-1]
        raise UserError(f"cannot read GGUF {path}: {last}")


def read_gguf(path: str | Path, probe: bool = True) -> tuple[dict, dict]:
    if probe:
        _probe(path)
    try:
        weights, meta = mx.load(str(path), return_metadata=True)
    except Exception as e:  # mx.load raises RuntimeError/ValueError with C++ text
        raise UserError(f"cannot read GGUF {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not weights or "general.architecture" not in meta:
        raise UserError(f"cannot read GGUF {path}: it holds no model (no tensors or no architecture in its metadata)")
    if meta.get("general.architecture") != "llama":
        raise UserError(f"{path}: architecture {meta.get('general.architecture')!r} is not supported (llama only)")
    return weights, meta


def _scalar(meta: dict, key: str, default=None):
    v = meta.get(key, default)
    return v.item() if isinstance(v, mx.array) else v


def _dequantize(weights: dict, base: str, in_dims: int) -> mx.array:
    w = weights[f"{base}.weight"]
    if f"{base}.scales" not in weights:
        return w.astype(mx.float32)
    scales, biases = weights[f"{base}.scales"], weights[f"{base}.biases"]
    # mx.load returns GGUF's Q4/Q8 blocks as MLX-quantized uint32 words; the unpacked width is
    # the layer's input size, which fixes bits and group size.
    bits, rem = divmod(w.shape[-1] * 32, in_dims)
    if rem or bits not in (2, 3, 4, 5, 6, 8) or in_dims % scales.shape[-1]:
        raise UserError(f"cannot infer the quantization of GGUF tensor {base}")
    return mx.dequantize(w, scales.astype(mx.float32), biases.astype(mx.float32),
                         group_size=in_dims // scales.shape[-1], bits=bits).astype(mx.float32)


def unpermute_rope(w: mx.array, n_head: int) -> mx.array:
    """Inverse of llama.cpp's convert_hf_to_gguf `permute` for q_proj/k_proj rows."""
    out, inp = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def hf_config(meta: dict) -> dict:
    n_head = _scalar(meta, "llama.attention.head_count")
    hidden = _scalar(meta, "llama.embedding_length")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": _scalar(meta, "llama.feed_forward_length"),
        "num_hidden_layers": _scalar(meta, "llama.block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": _scalar(meta, "llama.attention.head_count_kv", n_head),
        "head_dim": _scalar(meta, "llama.rope.dimension_count", hidden // n_head),
        "rms_norm_eps": float(f"{_scalar(meta, 'llama.attention.layer_norm_rms_epsilon'):.6g}"),
        "rope_theta": float(_scalar(meta, "llama.rope.freq_base", 10000.0)),
        "max_position_embeddings": _scalar(meta, "llama.context_length"),
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": _scalar(meta, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _scalar(meta, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _scalar(meta, "tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
    }


def hf_weights(weights: dict, config: dict) -> dict:
    out = {}
    bases = sorted({k.rsplit(".", 1)[0] for k in weights})
    for base in bases:
        if base.startswith("blk."):
            _, layer, name = base.split(".", 2)
            if name not in _LAYER_NAMES:
                raise UserError(f"unexpected GGUF tensor {base}")
            hf = f"model.layers.{layer}.{_LAYER_NAMES[name]}"
        elif base in _TOP_NAMES:
            hf = _TOP_NAMES[base]
        else:
            raise UserError(f"unexpected GGUF tensor {base}")
        if hf.endswith("down_proj"):
            in_dims = config["intermediate_size"]
        elif hf.endswith("o_proj"):
            in_dims = config["num_attention_heads"] * config["head_dim"]
        else:
            in_dims = config["hidden_size"]
        w = _dequantize(weights, base, in_dims)
        if hf.endswith("q_proj"):
            w = unpermute_rope(w, config["num_attention_heads"])
        elif hf.endswith("k_proj"):
            w = unpermute_rope(w, config["num_key_value_heads"])
        out[f"{hf}.weight"] = w
    config["tie_word_embeddings"] = "lm_head.weight" not in out
    return out


def build_tokenizer(meta: dict):
    """A byte-level BPE `tokenizers.Tokenizer` from the GGUF vocabulary, merges and token types."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise UserError(f"tokenizer type {meta.get('tokenizer.ggml.model')!r} is not supported (gpt2 BPE only)")
    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if meta.get("tokenizer.ggml.pre") in _SPLIT_DIGITS_PRE:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    types = meta["tokenizer.ggml.token_type"].tolist()
    control = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]
    tok.add_special_tokens(control)
    return tok


def tokenizer_config(meta: dict) -> dict:
    tokens = meta["tokenizer.ggml.tokens"]

    def tok(key):
        i = _scalar(meta, key)
        return tokens[i] if i is not None else None

    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tok("tokenizer.ggml.bos_token_id"),
        "eos_token": tok("tokenizer.ggml.eos_token_id"),
        "unk_token": tok("tokenizer.ggml.unknown_token_id"),
        "pad_token": tok("tokenizer.ggml.padding_token_id"),
        "add_bos_token": bool(_scalar(meta, "tokenizer.ggml.add_bos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": _scalar(meta, "llama.context_length"),
    }
    if "tokenizer.chat_template" in meta:
        cfg["chat_template"] = meta["tokenizer.chat_template"]
    return {k: v for k, v in cfg.items() if v is not None}


def convert(gguf_path: str | Path, out_dir: str | Path, announce=None) -> Path:
    """Write the HF folder atomically: a half-written folder is never left at `out_dir`. `announce()`
    is called once the file has been read and understood."""
    out_dir = Path(out_dir)
    weights, meta = read_gguf(gguf_path)
    config = hf_config(meta)
    hf = hf_weights(weights, config)
    if announce:
        announce()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), hf, metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        build_tokenizer(meta).save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(meta), indent=2))
        (tmp / "special_tokens_map.json").write_text(json.dumps(
            {k: v for k, v in tokenizer_config(meta).items() if k.endswith("_token")}, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}, indent=2))
        (tmp / "SOURCE").write_text(f"converted by mlx_reptilora.model.gguf from {gguf_path}\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; a model cache is ordinary data
        # Several processes may convert at once (the ranks of a distributed run, parallel tests):
        # the first one to finish wins, the others keep its folder and drop their own.
        if not (out_dir / "model.safetensors").exists():
            if out_dir.exists():
                shutil.rmtree(out_dir)  # a broken leftover
            try:
                os.replace(tmp, out_dir)
            except OSError:
                if not (out_dir / "model.safetensors").exists():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
