"""LoRA adapters: the standard start equals the base, saved adapters work in mlx-lm's own tools,
PEFT export round-trips, and adapters that do not fit fail in one line."""

import json

import mlx.core as mx
import numpy as np
import pytest

from mlx_reptilora.model import adapters, models
from mlx_reptilora.errors import UserError

IDS = mx.array([[1, 504, 3612, 314, 253, 1345, 30, 2]])


def perturb(model, seed=1):
    """Give B non-zero values, as training would, so adapters change the output."""
    mx.random.seed(seed)
    w = {k: v + 0.05 * mx.random.normal(v.shape) for k, v in adapters.get_weights(model).items()}
    adapters.set_weights(model, w)
    return w


def test_defaults_are_the_papers():
    cfg = adapters.LoraConfig()
    assert (cfg.rank, cfg.alpha, cfg.dropout, cfg.scale) == (16, 32.0, 0.1, 2.0)
    assert cfg.keys == ["self_attn.q_proj", "self_attn.v_proj"]


def test_all_keys_is_every_linear_layer_as_in_mlx_lm(tiny):
    cfg = adapters.LoraOptions(lora_keys=["all"], rank=2).lora()
    adapters.attach(tiny.model, cfg)
    assert cfg.keys == sorted(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"])
    assert len(adapters.get_weights(tiny.model)) == 2 * 7 * 2  # 2 layers x 7 modules x (A, B)


def test_standard_start_equals_base(tiny):
    before = tiny.model(IDS)
    adapters.attach(tiny.model, adapters.LoraConfig())
    tiny.model.eval()
    after = tiny.model(IDS)
    assert mx.array_equal(before, after)
    names = sorted(adapters.get_weights(tiny.model))
    assert len(names) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    assert all(n.endswith(("lora_a", "lora_b")) for n in names)
    assert all(mx.all(v == 0).item() for n, v in adapters.get_weights(tiny.model).items() if n.endswith("lora_b"))


def test_saved_adapters_load_in_mlx_lm(tiny, tiny_dir, tmp_path):
    from mlx_lm import generate
    from mlx_lm.sample_utils import make_sampler
    from mlx_lm.tuner.utils import load_adapters
    from mlx_lm.utils import load

    cfg = adapters.LoraConfig(rank=4, alpha=8, dropout=0.0)
    adapters.attach(tiny.model, cfg)
    perturb(tiny.model)
    tiny.model.eval()
    adapters.save(tiny.model, cfg, tmp_path / "a")
    stored = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert stored["fine_tune_type"] == "lora" and stored["num_layers"] == 2
    assert stored["lora_parameters"] == {"rank": 4, "scale": 2.0, "dropout": 0.0,
                                         "keys": ["self_attn.q_proj", "self_attn.v_proj"]}

    # mlx-lm's own loader on a fresh copy of the base reproduces our logits exactly.
    fresh = models.load(str(tiny_dir), verbose=False)
    load_adapters(fresh.model, str(tmp_path / "a"))
    fresh.model.eval()
    assert mx.allclose(fresh.model(IDS), tiny.model(IDS), atol=1e-5)

    # and mlx-lm's generate API with --adapter-path semantics gives the same tokens as our model.
    model, tok = load(str(tiny_dir), adapter_path=str(tmp_path / "a"))
    greedy = make_sampler(temp=0.0)
    ours = generate(tiny.model, tiny.tokenizer, "Hello", max_tokens=8, sampler=greedy)
    theirs = generate(model, tok, "Hello", max_tokens=8, sampler=greedy)
    assert theirs == ours and len(theirs) > 0


def test_load_restores_meta_start(tiny, tiny_dir, tmp_path):
    cfg = adapters.LoraConfig(rank=8)
    adapters.attach(tiny.model, cfg)
    w = perturb(tiny.model)
    adapters.save(tiny.model, cfg, tmp_path / "a")
    fresh = models.load(str(tiny_dir), verbose=False)
    got = adapters.load(fresh.model, tmp_path / "a")
    assert got.rank == 8 and got.alpha == 32.0
    for k, v in adapters.get_weights(fresh.model).items():
        assert mx.array_equal(v, w[k])


def test_peft_export_round_trip(tiny, tmp_path):
    from safetensors.numpy import load_file

    cfg = adapters.LoraConfig(rank=4, alpha=16, dropout=0.05)
    adapters.attach(tiny.model, cfg)
    w = perturb(tiny.model)
    adapters.save(tiny.model, cfg, tmp_path / "mlx")
    adapters.to_peft(tmp_path / "mlx", tmp_path / "peft", base_model="tiny")

    peft_cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert (peft_cfg["r"], peft_cfg["lora_alpha"], peft_cfg["lora_dropout"]) == (4, 16.0, 0.05)
    assert peft_cfg["target_modules"] == ["q_proj", "v_proj"] and peft_cfg["peft_type"] == "LORA"
    tensors = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    a = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert a.shape == (4, 64) and b.shape == (64, 4)  # PEFT: A (r, in), B (out, r)
    np.testing.assert_array_equal(a, np.array(w["model.layers.0.self_attn.q_proj.lora_a"]).T)

    adapters.from_peft(tmp_path / "peft", tmp_path / "back")
    back = adapters.read_weights(tmp_path / "back")
    assert set(back) == set(w)
    for k in w:
        assert mx.array_equal(back[k], w[k])
    cfg_back = adapters.read_config(tmp_path / "back")
    assert (cfg_back.rank, cfg_back.alpha, cfg_back.dropout, sorted(cfg_back.keys)) == (4, 16.0, 0.05, cfg.keys)


# ---- bad input -------------------------------------------------------------------------------

def test_adapters_of_another_shape(tiny, tiny_dir, tmp_path, bundled_dir):
    from tests.conftest import make_tiny_model

    other = make_tiny_model(tmp_path / "wide", bundled_dir, hidden_size=96, head_dim=24)
    wide = models.load(str(other), verbose=False)
    cfg = adapters.LoraConfig(rank=4)
    adapters.attach(wide.model, cfg)
    adapters.save(wide.model, cfg, tmp_path / "a")
    with pytest.raises(UserError, match="do not fit this model"):
        adapters.load(tiny.model, tmp_path / "a")


def test_adapters_whose_rank_disagrees_with_config(tiny, tmp_path):
    cfg = adapters.LoraConfig(rank=4)
    adapters.attach(tiny.model, cfg)
    adapters.save(tiny.model, cfg, tmp_path / "a")
    raw = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    raw["lora_parameters"]["rank"] = 16
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(raw))
    fresh = models.load(str(tiny.path), verbose=False)
    with pytest.raises(UserError, match="wrong shapes"):
        adapters.load(fresh.model, tmp_path / "a")


def test_adapters_with_unknown_keys(tiny, tmp_path):
    with pytest.raises(UserError, match="match no layer"):
        adapters.attach(tiny.model, adapters.LoraConfig(keys=["self_attn.nope"]))


def test_not_an_adapter_folder(tiny, tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(UserError, match="neither mlx-lm adapters"):
        adapters.load(tiny.model, tmp_path / "x")
    with pytest.raises(UserError, match="no such folder"):
        adapters.load(tiny.model, tmp_path / "missing")


def test_corrupt_adapter_weights(tiny, tmp_path):
    cfg = adapters.LoraConfig(rank=4)
    adapters.attach(tiny.model, cfg)
    adapters.save(tiny.model, cfg, tmp_path / "a")
    (tmp_path / "a" / "adapters.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot read"):
        adapters.read_weights(tmp_path / "a")


def test_mlx_lm_fuse_accepts_our_adapters(tiny, tiny_dir, tmp_path):
    import subprocess
    import sys

    from mlx_lm.utils import load

    cfg = adapters.LoraConfig(rank=4, dropout=0.0)
    adapters.attach(tiny.model, cfg)
    perturb(tiny.model)
    tiny.model.eval()
    adapters.save(tiny.model, cfg, tmp_path / "a")
    r = subprocess.run([sys.executable, "-m", "mlx_lm", "fuse", "--model", str(tiny_dir), "--adapter-path",
                        str(tmp_path / "a"), "--save-path", str(tmp_path / "fused")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    fused, _ = load(str(tmp_path / "fused"))
    assert mx.allclose(fused(IDS), tiny.model(IDS), atol=1e-4)
