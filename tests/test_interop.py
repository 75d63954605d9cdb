"""Users arriving from mlx-lm and PEFT: an adapters folder written by `mlx_lm.lora` itself goes
through adapt, export-peft, PEFT's own loaders and import-peft with every tensor identical, and
mlx-lm's spellings of our options work."""

import json
import types

import mlx.core as mx
import numpy as np
import pytest

from mlx_reptilora import cli
from mlx_reptilora.model import adapters

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

ROWS = [{"document": f"Row {i}: the quick brown fox jumps over the lazy dog number {i}.",
         "summary": f"Fox {i} jumps."} for i in range(8)]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def mlx_lm_folder(tiny_dir, tmp_path_factory):
    """Adapters trained by mlx-lm's own LoRA trainer (`mlx_lm.lora --train`, its defaults: every
    linear layer, rank 8, scale 20), two steps at a learning rate that moves B off zero."""
    from mlx_lm import lora

    root = tmp_path_factory.mktemp("mlx-lm")
    (root / "data").mkdir()
    for split in ("train", "valid"):
        (root / "data" / f"{split}.jsonl").write_text(
            "".join(json.dumps({"text": f"{r['document']} {r['summary']}"}) + "\n" for r in ROWS))
    args = {**lora.CONFIG_DEFAULTS, "model": str(tiny_dir), "train": True, "data": str(root / "data"),
            "iters": 2, "batch_size": 2, "num_layers": 2, "learning_rate": 1e-2, "steps_per_report": 1,
            "steps_per_eval": 100, "val_batches": 1, "save_every": 100, "max_seq_length": 64,
            "adapter_path": str(root / "adapters")}
    lora.run(types.SimpleNamespace(**args))
    return root / "adapters"


@pytest.fixture
def task_folder(tmp_path):
    folder = tmp_path / "foxes"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return folder


def test_mlx_lm_lora_adapters_through_adapt_peft_and_back(mlx_lm_folder, tiny_dir, task_folder, tmp_path, capsys):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    written = adapters.read_weights(mlx_lm_folder)
    config = json.loads((mlx_lm_folder / adapters.CONFIG).read_text())
    assert "keys" not in config["lora_parameters"]  # mlx-lm's meaning: every linear layer
    modules = {k.rsplit(".", 1)[0] for k in written}
    assert len(modules) == 2 * 7 and any(not mx.all(v == 0).item() for k, v in written.items() if k.endswith("lora_b"))

    # adapt reads it as mlx-lm does (mlx-lm's spellings of the flags), and adapts all 14 modules
    code, out, err = run_cli(capsys, "adapt", "--adapter-path", mlx_lm_folder, "--data", task_folder, "--shots", "2",
                             "--steps", "1", "--model", tiny_dir, "--max-seq-length", "64", "--out", tmp_path / "a")
    assert code == 0, err
    adapted = adapters.read_weights(tmp_path / "a")
    assert set(adapted) == set(written) and any(not mx.array_equal(adapted[k], written[k]).item() for k in written)
    # what adapt wrote names the modules mlx-lm picked, and mlx-lm loads it
    from mlx_lm.tuner.utils import load_adapters
    from mlx_reptilora.model import models

    assert adapters.read_config(tmp_path / "a").keys == sorted({m.split(".", 3)[3] for m in modules})
    load_adapters(models.load(str(tiny_dir), verbose=False).model, str(tmp_path / "a"))

    # export-peft: every tensor, the base recorded, and PEFT's own loaders attach exactly those
    code, out, err = run_cli(capsys, "export-peft", mlx_lm_folder, tmp_path / "peft")
    assert code == 0, err
    peft_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert peft_config["base_model_name_or_path"] == str(tiny_dir.resolve())
    assert peft_config["target_modules"] == sorted({m.rsplit(".", 1)[-1] for m in modules})
    assert peft_config["r"] == 8 and peft_config["lora_alpha"] == 8 * 20.0  # mlx-lm's scale 20 at rank 8
    for model in (PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_dir)), str(tmp_path / "peft")),
                  AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "peft"))):
        params = {n: p for n, p in model.named_parameters() if "lora_" in n}
        assert len(params) == len(written)
        for name, w in written.items():
            module, leaf = name.rsplit(".", 1)
            got = params[f"base_model.model.{module}.{'lora_A' if leaf == 'lora_a' else 'lora_B'}.default.weight"]
            np.testing.assert_array_equal(got.detach().numpy().T, np.array(w))

    # and back: import-peft gives the very tensors mlx-lm wrote
    code, out, err = run_cli(capsys, "import-peft", tmp_path / "peft", tmp_path / "back")
    assert code == 0, err
    back = adapters.read_weights(tmp_path / "back")
    assert set(back) == set(written) and all(mx.array_equal(back[k], written[k]).item() for k in written)


def test_export_peft_refuses_what_peft_cannot_express(mlx_lm_folder, tmp_path, capsys):
    w = adapters.read_weights(mlx_lm_folder)
    uneven = tmp_path / "uneven"
    uneven.mkdir()
    (uneven / adapters.CONFIG).write_text((mlx_lm_folder / adapters.CONFIG).read_text())
    mx.save_safetensors(str(uneven / adapters.WEIGHTS), {k: v for k, v in w.items() if "layers.0.mlp" not in k})
    code, _, err = run_cli(capsys, "export-peft", uneven, tmp_path / "p1")
    assert code == 2 and "layer 0 has LoRA on" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "p1").exists()

    head = tmp_path / "head"
    head.mkdir()
    (head / adapters.CONFIG).write_text((mlx_lm_folder / adapters.CONFIG).read_text())
    mx.save_safetensors(str(head / adapters.WEIGHTS), {**w, "lm_head.lora_a": mx.zeros((64, 8))})
    code, _, err = run_cli(capsys, "export-peft", head, tmp_path / "p2")
    assert code == 2 and "lm_head.lora_a is not LoRA on a transformer block's linear layer" in err, err
    assert not (tmp_path / "p2").exists()


def test_export_peft_without_a_known_base_asks_for_one(tiny, tmp_path, capsys):
    cfg = adapters.LoraConfig(rank=4)
    adapters.attach(tiny.model, cfg)
    adapters.save(tiny.model, cfg, tmp_path / "a")  # written without a base_model
    code, _, err = run_cli(capsys, "export-peft", tmp_path / "a", tmp_path / "p")
    assert code == 2 and "pass --base-model" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(capsys, "export-peft", tmp_path / "a", tmp_path / "p", "--base-model", "me/base")
    assert code == 0, err
    assert json.loads((tmp_path / "p" / "adapter_config.json").read_text())["base_model_name_or_path"] == "me/base"


def test_our_starts_export_with_their_base(tiny_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "adapt", "--task", "aclsum-title", "--shots", "1", "--steps", "1", "--rank", "2",
                           "--model", tiny_dir, "--max-length", "128", "-q", "--out", tmp_path / "a")
    assert code == 0, err
    code, _, err = run_cli(capsys, "export-peft", tmp_path / "a", tmp_path / "p")
    assert code == 0, err
    base = json.loads((tmp_path / "p" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(tiny_dir.resolve())
    # back through import-peft, the base is still known; a model card never names a local path as base_model
    assert run_cli(capsys, "import-peft", tmp_path / "p", tmp_path / "back")[0] == 0
    code, _, err = run_cli(capsys, "export-peft", tmp_path / "back", tmp_path / "p2")
    assert code == 0, err
    assert json.loads((tmp_path / "p2" / "adapter_config.json").read_text())["base_model_name_or_path"] == base
    from mlx_reptilora.model import hub

    assert "base_model:" not in hub.model_card(tmp_path / "a", "me/x").split("---")[1]


def test_mlx_lm_yaml_spellings(tiny_dir, tmp_path, capsys):
    """mlx-lm's YAML keys: a lora_parameters block (scale is the multiplier: alpha = scale x rank),
    num_layers and max_seq_length."""
    from mlx_reptilora import options
    from mlx_reptilora.evaluation.adapt import AdaptConfig

    y = tmp_path / "c.yaml"
    y.write_text("lora_parameters: {rank: 4, scale: 2.5, dropout: 0.0, keys: [self_attn.q_proj]}\n"
                 "num_layers: 1\nmax_seq_length: 100\nadapter_path: null\ndata: aclsum-title\nshots: 1\n")
    cfg = options.build(AdaptConfig, y)
    assert (cfg.rank, cfg.alpha, cfg.dropout, cfg.lora_keys) == (4, 10.0, 0.0, ["self_attn.q_proj"])
    assert (cfg.lora_layers, cfg.max_length, cfg.task) == (1, 100, "aclsum-title")
    # mlx-lm's scale stays the multiplier when a flag changes the rank; no keys: every linear layer
    y.write_text("lora_parameters: {rank: 4, scale: 2.5}\n")
    cfg = options.build(AdaptConfig, y, task="t", shots="1", rank="8")
    assert (cfg.rank, cfg.alpha, cfg.lora_keys, cfg.lora().keys) == (8, 20.0, ["all"], None)
    for text, message in (("lora_parameters: {rank: 4, scale: null}", "lora_parameters.scale must be a number > 0"),
                          ("lora_parameters: {rank: 4, alpha: 8}", "lora_parameters takes rank, scale, dropout, keys"),
                          ("rank: 8\nlora_parameters: {rank: 4}", "'rank' is given both at the top and in lora_parameters"),
                          ("max_length: 64\nmax_seq_length: 100", "and another spelling of it are both given")):
        y.write_text(text + "\n")
        with pytest.raises(options.UserError, match=message):
            options.build(AdaptConfig, y)


def test_help_names_every_alias(capsys):
    for command, aliases in (("adapt", ("--adapter-path", "--data", "--num-layers", "--max-seq-length")),
                             ("evaluate", ("--adapter-path", "--data", "--max-seq-length")),
                             ("meta-train", ("--num-layers", "--max-seq-length")),
                             ("compare", ("--adapter-path", "--max-seq-length"))):
        code, out, _ = run_cli(capsys, command, "--help")
        assert code == 0
        text = " ".join(out.replace("│", " ").split())  # rich's boxes, unwrapped
        for alias in aliases:
            assert f"(also {alias}, as in mlx-lm)" in text, (command, alias)
