"""The bundled model converts, loads and speaks; bad model inputs fail in one line."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_reptilora.model import gguf, models
from mlx_reptilora.errors import UserError


def chat(tokenizer, text):
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=False)


@pytest.mark.slow
def test_bundled_model_generates_english(bundled):
    from mlx_lm import generate

    out = generate(bundled.model, bundled.tokenizer, chat(bundled.tokenizer, "What is the capital of France?"),
                   max_tokens=20)
    assert out.strip(), "empty generation"
    assert "Paris" in out
    assert all(ord(c) < 128 for c in out)


def gguf_layout_model(gguf_path):
    """The GGUF as llama.cpp sees it: quantized weights, rope-permuted q/k, traditional RoPE."""
    from mlx_lm.models import llama

    weights, meta = gguf.read_gguf(gguf_path)
    cfg = gguf.hf_config(meta)
    cfg["tie_word_embeddings"] = True
    model = llama.Model(llama.ModelArgs.from_dict({**cfg, "rope_traditional": True}))
    names = {v: k for k, v in gguf._LAYER_NAMES.items()}
    tree = {}
    for layer in range(cfg["num_hidden_layers"]):
        for hf, short in names.items():
            for part in ("weight", "scales", "biases"):
                key = f"blk.{layer}.{short}.{part}"
                if key in weights:
                    tree[f"model.layers.{layer}.{hf}.{part}"] = weights[key]
    for part in ("weight", "scales", "biases"):
        tree[f"model.embed_tokens.{part}"] = weights[f"token_embd.{part}"]
    tree["model.norm.weight"] = weights["output_norm.weight"]
    nn.quantize(model, group_size=32, bits=4, class_predicate=lambda p, m: isinstance(m, nn.Linear))
    nn.quantize(model, group_size=32, bits=8, class_predicate=lambda p, m: isinstance(m, nn.Embedding))
    model.load_weights([(k, v.astype(mx.float32) if v.dtype == mx.float16 else v) for k, v in tree.items()])
    return model


@pytest.mark.slow
def test_converted_folder_matches_gguf_logits(bundled):
    ref = gguf_layout_model(models.bundled_gguf())
    ids = mx.array([bundled.tokenizer.encode(chat(bundled.tokenizer, "Summarize: the cat sat on the mat."))])
    a, b = bundled.model(ids), ref(ids)
    mx.eval(a, b)
    scale = float(mx.abs(b).max())
    assert float(mx.abs(a - b).max()) <= 1e-4 * scale
    assert (mx.argmax(a, -1) == mx.argmax(b, -1)).all().item()


def test_unpermute_inverts_llama_cpp_permute():
    w = mx.random.normal((12, 5))
    n_head = 3
    permuted = w.reshape(n_head, 2, 12 // n_head // 2, 5).swapaxes(1, 2).reshape(12, 5)  # llama.cpp's
    assert mx.array_equal(gguf.unpermute_rope(permuted, n_head), w)


def test_converted_tokenizer_loads_in_transformers(bundled_dir):
    from transformers import AutoTokenizer
    from mlx_lm.utils import load_tokenizer

    hf = AutoTokenizer.from_pretrained(str(bundled_dir))
    ours = load_tokenizer(bundled_dir)
    text = "Reptile meta-learning adapts in 7 steps, 2025 édition."
    assert hf.encode(text) == ours.encode(text)
    assert hf.decode(hf.encode(text)) == text
    prompt = hf.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system")
    assert hf.convert_tokens_to_ids("<|im_end|>") == hf.eos_token_id == 2
    assert hf.encode("<|im_start|>user")[0] == 1  # special token is one id


def test_config_json_is_hf_llama(bundled_dir):
    cfg = json.loads((bundled_dir / "config.json").read_text())
    assert (cfg["model_type"], cfg["num_hidden_layers"], cfg["hidden_size"]) == ("llama", 30, 576)
    assert cfg["tie_word_embeddings"] is True and cfg["rope_theta"] == 100000.0


def test_tiny_model_loads_in_float32_and_is_frozen(tiny):
    assert tiny.dtype == mx.float32
    from mlx.utils import tree_flatten

    assert tree_flatten(tiny.model.trainable_parameters()) == []


def test_quantized_base(tiny_dir):
    base = models.load(str(tiny_dir), quantize_bits=4, verbose=False)
    assert isinstance(base.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    full = models.load(str(tiny_dir), verbose=False)
    ids = mx.array([[1, 2, 3, 4, 5]])
    q, f = base.model(ids), full.model(ids)
    # 4-bit of a random model is close but not equal: same function, coarser weights.
    assert np.corrcoef(np.array(q).ravel(), np.array(f).ravel())[0, 1] > 0.95


# ---- bad input -------------------------------------------------------------------------------

def test_missing_path():
    with pytest.raises(UserError, match="no such file"):
        models.resolve("./does/not/exist")


def test_corrupt_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00garbage" * 100)
    with pytest.raises(UserError, match="cannot read GGUF"):
        models.resolve(str(bad))


def test_corrupt_safetensors(tiny_dir, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(UserError, match="cannot load model"):
        models.load(str(d), verbose=False)


def test_unsupported_architecture(tiny_dir, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "no_such_arch"}))
    with pytest.raises(UserError, match="no_such_arch"):
        models.load(str(d), verbose=False)


def test_hub_repo_offline_fails_clearly():
    with pytest.raises(UserError, match="Hugging Face hub"):
        models.resolve("meta-llama/Llama-2-7b-hf")
