"""A start that is not one point, through the same commands as every other: a tiny generator
conditioned on the shots' pooled hidden states, registered from here as a user's learner would be,
is meta-trained, killed and resumed bit-identically, adapted, evaluated and compared; export-peft
refuses it in one line and push stages it without a PEFT export."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlx.core as mx

from mlx_reptilora.meta import config, start as starts
from mlx_reptilora.meta.learner import GradientLearner, TaskResult
from mlx_reptilora.model import adapters
from tests.conftest import run_cli
from tests.test_meta_train import kill_after

ROOT = Path(__file__).resolve().parents[1]


def generate(arrays: dict, h: mx.array) -> dict:
    """θ(h) = θ0 + tanh(w·h + b) Δ: one scalar gate read off the shots, moving θ0 along Δ."""
    gate = mx.tanh((arrays["w"] * h).sum() + arrays["b"])
    return {k: arrays["theta"][k] + gate * arrays["delta"][k] for k in arrays["theta"]}


@starts.register
class ShotConditioned(starts.Start):
    kind = "test-generator"

    def for_task(self, inner, shots) -> dict:
        h = inner.pooled(shots).mean(0) if shots else mx.zeros(self.arrays["w"].shape)
        return generate(self.arrays, h)


@config.register
class ShotConditionedLearner(GradientLearner):
    """First order through the generator: the query gradient at φ, pulled back through θ(h)."""

    name, label = "test-generator", "Generator start"

    def init(self, theta: dict, inner=None, tasks=None) -> dict:
        hidden = inner.model.args.hidden_size
        key = mx.random.key(self.cfg.seed)  # its own key: the run's RNG stream is left as it was
        return {"theta": theta, "w": 0.01 * mx.random.normal((hidden,), key=key), "b": mx.array(0.0),
                "delta": {k: 0.01 * mx.random.normal(v.shape, key=mx.random.split(key, len(theta) + 1)[i + 1])
                          for i, (k, v) in enumerate(theta.items())}}

    def start(self, params: dict, lora) -> starts.Start:
        return ShotConditioned(lora, params)

    def task(self, params, episode, inner, rng, t) -> TaskResult:
        h = inner.pooled(episode.support).mean(0)
        phi, losses = inner.adapt_from(generate(params, h), episode.support, rng=rng)
        query_loss, g = inner.gradient(episode.query, "query loss")
        pulled = mx.grad(lambda p: sum((generate(p, h)[k] * g[k]).sum() for k in g))(params)
        return TaskResult(pulled, phi, {"inner_losses": losses, "query_loss_adapted": query_loss})


ARGS = ["--learner", "test-generator", "--tasks", "aclsum-title,pydoc", "--support", "3", "--query", "3",
        "--inner-steps", "2", "--rank", "4", "--max-length", "128", "--eval-every", "2", "--checkpoint-every", "1",
        "--quiet"]


def test_a_generator_start_runs_through_every_command(tiny_dir, tmp_path):
    model = ["--model", str(tiny_dir)]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    ran = run_cli("meta-train", *model, *ARGS, "--episodes", "5", "--out", straight)
    assert ran.returncode == 0, ran.stderr
    assert (straight / starts.ARRAYS).exists() and not (straight / adapters.WEIGHTS).exists()
    assert adapters.recorded(straight, "start_kind") == "test-generator"
    assert set(starts.read(straight).arrays) == {"theta", "w", "b", "delta"}

    # kill -9 part-way (a process of its own, which registers the learner as this module does; the
    # package first, which loads its BLAS before mlx.core does), resume
    code = ("import sys, mlx_reptilora; import tests.test_starts; from mlx_reptilora.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    proc = kill_after(subprocess.Popen([sys.executable, "-c", code, "meta-train", *model, *ARGS, "--episodes", "5",
                                        "--out", str(killed)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}),
                      killed, 2)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert not (killed / starts.ARRAYS).exists()
    resumed = run_cli("meta-train", *model, *ARGS, "--episodes", "5", "--out", killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (killed / starts.ARRAYS).read_bytes() == (straight / starts.ARRAYS).read_bytes()
    assert [json.loads(line)["episode"] for line in (killed / "metrics.jsonl").read_text().splitlines()] == list(range(5))

    # conditioned on the shots: two tasks' shots make two different starts
    a = run_cli("adapt", *model, "--adapters", straight, "--task", "pydoc", "--shots", "2", "--steps", "0",
                "--out", tmp_path / "a0")
    b = run_cli("adapt", *model, "--adapters", straight, "--task", "aclsum-title", "--shots", "2", "--steps", "0",
                "--out", tmp_path / "b0")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    wa, wb = adapters.read_weights(tmp_path / "a0"), adapters.read_weights(tmp_path / "b0")
    assert any(not mx.array_equal(wa[k], wb[k]).item() for k in wa)

    adapted = run_cli("adapt", *model, "--adapters", straight, "--task", "pydoc", "--shots", "2", "--out",
                      tmp_path / "adapted")
    assert adapted.returncode == 0, adapted.stderr
    assert "in 2 steps" in adapted.stdout  # the learner's recipe: its meta-training inner loop
    scored = run_cli("evaluate", *model, "--adapters", tmp_path / "adapted", "--task", "pydoc", "--limit", "2",
                     "--json", tmp_path / "e.json")
    assert scored.returncode == 0, scored.stderr
    assert json.loads((tmp_path / "e.json").read_text())["n"] == 2

    compared = run_cli("compare", *model, "--adapters", straight, "--tasks", "pydoc", "--shots", "0,2", "--draws",
                       "1", "--systems", "lora,meta", "--limit", "2", "--out", tmp_path / "cmp")
    assert compared.returncode == 0, compared.stderr
    result = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert result["start_label"] == "Generator start" and len(result["rows"]) == 4

    # what has no one adapter says so in one line; push uploads the start itself
    refused = run_cli("export-peft", straight, tmp_path / "peft")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "adapt it to a task" in refused.stderr and not (tmp_path / "peft").exists()
    direct = run_cli("evaluate", *model, "--adapters", straight, "--task", "pydoc", "--limit", "2")
    assert direct.returncode == 2 and "test-generator start" in direct.stderr
    staged = run_cli("push", straight, "someone/gen", "--dry-run", "--out", tmp_path / "up")
    assert staged.returncode == 0, staged.stderr
    assert (tmp_path / "up" / starts.ARRAYS).exists() and not (tmp_path / "up" / "peft").exists()
    card = (tmp_path / "up" / "README.md").read_text()
    assert "a test-generator start" in card and "PeftModel" not in card  # the card says how to use what it is


def test_the_functional_core_leaves_the_model_as_it_was(tiny):
    from mlx_reptilora.data import prompts, tasks
    from mlx_reptilora.meta.inner_loop import InnerConfig, InnerLoop

    adapters.attach(tiny.model, adapters.LoraConfig(rank=4, dropout=0.0))
    fmt = prompts.PromptFormat.for_tokenizer(tiny.tokenizer)
    exs = [e for e in prompts.tokenize(fmt, tiny.tokenizer, tasks.load("pydoc").splits["train"][:5], 64) if e]
    inner = InnerLoop(tiny.model, InnerConfig(micro_batch=2), [64, 128])
    held = inner.weights()
    moved = {k: v + 0.05 for k, v in held.items()}
    loss, grad = inner.gradient_at(moved, exs)
    assert abs(inner.loss_at(moved, exs) - loss) < 1e-5  # dropout 0: the training loss is the evaluation loss
    assert all(mx.array_equal(inner.weights()[k], held[k]).item() for k in held)
    inner.set_weights(moved)
    assert abs(inner.loss(exs) - loss) < 1e-5 and set(grad) == set(held)
    pooled = inner.pooled(exs)
    assert pooled.shape == (len(exs), tiny.model.args.hidden_size)
    assert mx.allclose(inner.pooled(exs[2:3])[0], pooled[2], atol=1e-5).item()  # in the order given, alone or not
    assert all(mx.array_equal(inner.weights()[k], moved[k]).item() for k in moved)
    base = {k: mx.zeros_like(v) if k.endswith("lora_b") else v for k, v in moved.items()}
    assert mx.allclose(inner.pooled(exs), InnerLoop(tiny.model, InnerConfig(micro_batch=5), [64, 128]).pooled(exs),
                       atol=1e-5).item()
    inner.set_weights(base)
    assert mx.allclose(inner.pooled(exs), pooled, atol=1e-5).item()  # the base model's: B is zeroed either way
