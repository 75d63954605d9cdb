"""--learner hyper: a start generated from the task's shots. With its heads at 0 (G = 0) its step is
MAML's; the generator's gradient is the pull-back of MAML's; it meta-trains, resumes bit-identically
and adapts through the CLI, and what adapt writes is an ordinary mlx-lm adapter."""

import json

import mlx.core as mx
import numpy as np

from mlx_reptilora.data import prompts
from mlx_reptilora.meta import hyper, start as starts
from mlx_reptilora.model import adapters
from tests.conftest import assert_close, run_cli, trained_and_resumed
from tests.test_learners import episode_of, learner_and_loop, nudged


def test_with_g_zero_the_step_is_maml(tiny):
    adapters.attach(tiny.model, adapters.LoraConfig(rank=4, dropout=0.0))
    ep = episode_of(tiny.tokenizer)
    theta = nudged(tiny.model)
    maml, inner = learner_and_loop(tiny.model, "maml", inner_steps=2, inner_lr=0.05)
    hyp, _ = learner_and_loop(tiny.model, "hyper", inner_steps=2, inner_lr=0.05, hyper_null=0.0)
    params = hyp.init(theta, inner)
    assert all(float(mx.abs(h).max()) == 0 for h in params["gen"]["head"].values())
    assert all(mx.array_equal(x, theta[k]).item() for k, x in hyper.generate(params["gen"], mx.ones(params["gen"]["null"].shape), theta).items())
    mx.random.seed(5)
    want = maml.task({"theta": theta}, ep, inner, np.random.default_rng(0), 0).contribution
    mx.random.seed(5)
    got = hyp.task(params, ep, inner, np.random.default_rng(0), 0).contribution
    assert_close(got["theta"], want["theta"], rel=1e-6)
    # the generator's gradient is G's Jacobian applied to v: at H = 0 only the heads receive it,
    # each the outer product of its tanh layer with v
    assert all(float(mx.abs(g).max()) == 0 for g in got["gen"]["layer"].values()) and float(mx.abs(got["gen"]["w"]).max()) == 0
    z = hyper.embed(params["gen"], inner.pooled(ep.support))
    kind = hyper._kind(next(iter(theta)))[1]
    names = [n for n in theta if hyper._kind(n)[1] == kind]
    hs = mx.stack([mx.tanh(z @ params["gen"]["w"] + params["gen"]["layer"][str(hyper._kind(n)[0])]
                           + params["gen"]["kind"][kind]) for n in names])
    want_head = hs.T @ mx.stack([want["theta"][n].reshape(-1) for n in names]) / hs.shape[-1]
    assert mx.allclose(got["gen"]["head"][kind], want_head, rtol=1e-4, atol=1e-7).item()


def test_a_zero_shot_task_trains_the_null_embedding(tiny):
    adapters.attach(tiny.model, adapters.LoraConfig(rank=4, dropout=0.0))
    ep = episode_of(tiny.tokenizer)
    hyp, inner = learner_and_loop(tiny.model, "hyper", inner_steps=2, inner_lr=0.05, hyper_null=1.0)
    params = hyp.init(nudged(tiny.model), inner)
    params["gen"]["head"] = {k: 0.01 * mx.ones(v.shape) for k, v in params["gen"]["head"].items()}
    params["gen"]["null"] = mx.ones(params["gen"]["null"].shape)
    result = hyp.task(params, ep, inner, np.random.default_rng(0), 0)
    assert result.metrics["zero_shot"] == 1
    assert float(mx.abs(result.contribution["gen"]["null"]).sum()) > 0
    phi0 = hyper.generate(params["gen"], hyper.embed(params["gen"], None), params["theta"])
    assert all(mx.array_equal(result.adapted[k], phi0[k]).item() for k in phi0)  # no inner steps at 0 shots


def test_hyper_meta_trains_resumes_and_adapts_to_a_plain_adapter(tiny_dir, tmp_path):
    model = ["--model", str(tiny_dir)]
    args = [*model, "--learner", "hyper", "--tasks", "aclsum-title,pydoc", "--support", "3", "--query", "3",
            "--inner-steps", "2", "--rank", "4", "--max-length", "128", "--hyper-hidden", "8", "--hyper-null", "0.5",
            "--eval-every", "2", "--checkpoint-every", "1", "--quiet"]
    straight = trained_and_resumed(args, 4, tmp_path)
    records = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert {r["zero_shot"][0] for r in records} <= {0, 1} and len(records) == 4
    start = starts.read(straight)
    assert isinstance(start, hyper.HyperStart) and float(mx.abs(start.arrays["gen"]["head"]["self_attn.q_proj.lora_a"]).sum()) > 0
    assert start.arrays["gen"]["center"].shape == start.arrays["gen"]["null"].shape  # measured on the two tasks

    adapted = run_cli("adapt", *model, "--adapters", straight, "--task", "pydoc", "--shots", "2", "--out",
                      tmp_path / "adapted")
    assert adapted.returncode == 0, adapted.stderr
    assert not (tmp_path / "adapted" / starts.ARRAYS).exists()
    from mlx_lm.tuner.utils import load_adapters  # what mlx_lm.generate --adapter-path runs

    from mlx_reptilora.model import models
    loaded = load_adapters(models.load(str(tiny_dir), verbose=False).model, str(tmp_path / "adapted"))
    mine = adapters.read_weights(tmp_path / "adapted")
    assert all(mx.array_equal(v, mine[k]).item() for k, v in adapters.get_weights(loaded).items())
    compared = run_cli("compare", *model, "--adapters", straight, "--tasks", "pydoc", "--shots", "0,1", "--draws", "1",
                       "--limit", "2", "--systems", "lora,meta", "--out", tmp_path / "cmp")
    assert compared.returncode == 0, compared.stderr
    assert json.loads((tmp_path / "cmp" / "results.json").read_text())["start_label"] == "Hyper start"


def test_inputs_only_embeds_the_prompts(tiny):
    adapters.attach(tiny.model, adapters.LoraConfig(rank=4, dropout=0.0))
    from mlx_reptilora.meta.inner_loop import InnerConfig, InnerLoop

    inner = InnerLoop(tiny.model, InnerConfig(micro_batch=2), [64, 128])
    rows = [prompts.Tokenized(np.arange(1, 41, dtype=np.int32), 20, False)]
    prompt = [prompts.Tokenized(np.arange(1, 21, dtype=np.int32), 20, False)]
    assert mx.allclose(inner.pooled(rows, inputs_only=True), inner.pooled(prompt), atol=1e-5).item()
    assert not mx.allclose(inner.pooled(rows), inner.pooled(prompt), atol=1e-3).item()


def test_tasks_similarity_shows_which_tasks_look_alike(tiny_dir, tmp_path):
    ran = run_cli("tasks", "--similarity", "aclsum-title", "aclsum-outcome", "pydoc", "--model", str(tiny_dir),
                  "--examples", "2", "--max-length", "64", "--out", tmp_path / "sim.png")
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0].startswith("aclsum-title") and "nearest, centered:" in lines[0] and len(lines) == 4
    assert (tmp_path / "sim.png").stat().st_size > 0


def test_the_rank_generator_writes_one_row_per_rank(tiny):
    adapters.attach(tiny.model, adapters.LoraConfig(rank=4, dropout=0.0))
    theta = nudged(tiny.model)
    hidden = tiny.model.args.hidden_size
    gen = hyper.init(theta, hidden, 8, mx.random.key(0), per_rank=True)
    z = mx.random.normal((hidden,), key=mx.random.key(1))
    assert all(mx.array_equal(x, theta[k]).item() for k, x in hyper.generate(gen, z, theta).items())  # G = 0 at first
    gen["head"] = {k: mx.random.normal(v.shape, key=mx.random.key(2)) for k, v in gen["head"].items()}
    out = hyper.generate(gen, z, theta)
    for name in ("model.layers.1.self_attn.q_proj.lora_a", "model.layers.1.self_attn.v_proj.lora_b"):
        layer, kind = hyper._kind(name)
        rows = [mx.tanh(z @ gen["w"] + gen["layer"][str(layer)] + gen["kind"][kind] + gen["rank"][i]) @ gen["head"][kind] / 8
                for i in range(4)]
        want = mx.stack(rows) if name.endswith("lora_b") else mx.stack(rows, axis=1)
        assert want.shape == theta[name].shape and gen["head"][kind].shape[1] * 4 == theta[name].size
        assert mx.allclose(out[name] - theta[name], want, rtol=1e-5, atol=1e-6).item()
    # and the learner: a rank generator at G = 0 takes MAML's step too
    ep = episode_of(tiny.tokenizer)
    maml, inner = learner_and_loop(tiny.model, "maml", inner_steps=2, inner_lr=0.05)
    hyp, _ = learner_and_loop(tiny.model, "hyper", inner_steps=2, inner_lr=0.05, hyper_null=0.0, hyper_generator="rank")
    params = hyp.init(theta, inner)
    mx.random.seed(5)
    want = maml.task({"theta": theta}, ep, inner, np.random.default_rng(0), 0).contribution
    mx.random.seed(5)
    got = hyp.task(params, ep, inner, np.random.default_rng(0), 0).contribution
    assert_close(got["theta"], want["theta"], rel=1e-6)
    assert float(mx.abs(got["gen"]["head"]["self_attn.q_proj.lora_a"]).sum()) > 0


def test_one_outer_step_moves_the_generated_start_no_further_than_theta(tiny):
    """Adam moves every entry of a head by about the outer lr; G's 1/width readout keeps each
    generated entry's move within it too (without it, about 0.6 x width x lr: the start diverged)."""
    adapters.attach(tiny.model, adapters.LoraConfig(rank=4, dropout=0.0))
    ep = episode_of(tiny.tokenizer)
    for generator in ("kind", "rank"):
        hyp, inner = learner_and_loop(tiny.model, "hyper", inner_steps=2, inner_lr=0.05, hyper_null=0.0,
                                      hyper_hidden=32, outer_lr=1e-3, hyper_generator=generator)
        params = hyp.init(nudged(tiny.model), inner)
        got = hyp.task(params, ep, inner, np.random.default_rng(0), 0).contribution
        new = hyp.update(params, got, 0)
        z = hyper.embed(new["gen"], inner.pooled(ep.support))
        moved = max(float(mx.abs(x - new["theta"][k]).max()) for k, x in hyper.generate(new["gen"], z, new["theta"]).items())
        assert 0 < moved <= 1.01e-3, (generator, moved)


def test_z_is_centered_by_the_training_tasks_mean_which_no_step_moves(tiny):
    """The center is the training tasks' mean embedding, measured once at init; z is each task's
    embedding from it, and the outer Adam leaves it exactly where it was (its gradient is 0)."""
    from mlx_reptilora.data import episodes, tasks

    adapters.attach(tiny.model, adapters.LoraConfig(rank=4, dropout=0.0))
    ep = episode_of(tiny.tokenizer)
    theta = nudged(tiny.model)
    pool = [episodes.prepare(tasks.load(t), tiny.tokenizer, None, 64, ("train",)) for t in ("pydoc", "aclsum-title")]
    maml, inner = learner_and_loop(tiny.model, "maml", inner_steps=2, inner_lr=0.05)
    hyp, _ = learner_and_loop(tiny.model, "hyper", inner_steps=2, inner_lr=0.05, hyper_null=0.0, support=3)
    params = hyp.init(theta, inner, pool)
    rms = lambda z: z / mx.sqrt((z * z).mean() + 1e-6)  # noqa: E731
    want = mx.stack([rms(inner.pooled(t.splits["train"][:3]).mean(0)) for t in pool]).mean(0)
    assert mx.allclose(params["gen"]["center"], want, atol=1e-6).item()
    pooled = inner.pooled(ep.support)
    assert mx.allclose(hyper.embed(params["gen"], pooled), rms(rms(pooled.mean(0)) - want), atol=1e-5).item()
    assert "center" not in learner_and_loop(tiny.model, "hyper", hyper_center=False)[0].init(theta, inner, pool)["gen"]
    mx.random.seed(5)
    reference = maml.task({"theta": theta}, ep, inner, np.random.default_rng(0), 0).contribution
    mx.random.seed(5)
    got = hyp.task(params, ep, inner, np.random.default_rng(0), 0).contribution
    assert_close(got["theta"], reference["theta"], rel=1e-6)  # G = 0: still MAML's step
    assert float(mx.abs(got["gen"]["center"]).max()) == 0
    stepped = hyp.update(params, got, 0)
    assert mx.array_equal(stepped["gen"]["center"], params["gen"]["center"]).item()
    assert not mx.array_equal(stepped["gen"]["head"]["self_attn.q_proj.lora_a"], params["gen"]["head"]["self_attn.q_proj.lora_a"]).item()
