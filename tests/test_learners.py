"""FOMAML and MAML: their meta-gradients against independent computations (plain code, central finite
differences, a PyTorch twin), first-order MAML against FOMAML, no retrace per episode, bit-identical
resume after kill -9, and each learner end to end from the CLI."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_reptilora.data import episodes, prompts, tasks
from mlx_reptilora.meta import train
from mlx_reptilora.meta.inner_loop import InnerLoop
from mlx_reptilora.model import adapters, models
from tests.conftest import assert_close
from tests.test_meta_train import full_sequence_loss, kill_9_then_resume, reference_adapt


def episode_of(tokenizer, n_support=4, n_query=2, task="pydoc", max_length=64):
    fmt = prompts.PromptFormat.for_tokenizer(tokenizer)
    exs = [e for e in prompts.tokenize(fmt, tokenizer, tasks.load(task).splits["train"][:12], max_length) if e]
    return episodes.Episode(0, task, exs[:n_support], exs[n_support:n_support + n_query])


def learner_and_loop(model, learner, **settings):
    cfg = train.MetaTrainConfig(**{"learner": learner, "micro_batch": 2, "grad_clip": 0.0, **settings})
    return train.make_learner(cfg), InnerLoop(model, cfg.inner(), [64, 128])


def nudged(model):
    """The adapters with B moved off zero, so second-order terms are not trivially small."""
    mx.random.seed(3)
    return {k: v + (0.05 * mx.random.normal(v.shape) if k.endswith("lora_b") else 0)
            for k, v in adapters.get_weights(model).items()}


def test_fomaml_meta_gradient_is_the_query_gradient_at_phi(tiny):
    adapters.attach(tiny.model, adapters.LoraConfig(rank=4, dropout=0.0))
    ep = episode_of(tiny.tokenizer)
    learner, inner = learner_and_loop(tiny.model, "fomaml", inner_steps=3, grad_clip=0.5)
    theta = nudged(tiny.model)
    got = learner.task({"theta": theta}, ep, inner, None, 0).contribution["theta"]

    # Independently: T AdamW steps written plainly, then the textbook loss's gradient at φ.
    phi = reference_adapt(tiny.model, theta, ep.support, 3, 5e-4, 0.5, 2)
    adapters.set_weights(tiny.model, phi)
    query = episodes.make_batch(ep.query, [64, 128])

    def loss_fn(model):
        total, n = full_sequence_loss(model, query)
        return total / n

    _, grads = nn.value_and_grad(tiny.model, loss_fn)(tiny.model)
    want = dict(tree_flatten(grads))
    assert_close(got, want)
    assert sum(float(mx.abs(v).sum()) for v in got.values()) > 0


def maml_meta_loss(inner, theta, ep, steps, lr, seed):
    """L_Q(φ_T(θ)) by plain SGD steps, with dropout drawn as MAML draws it: one seed per step from
    the episode's key, so the function is deterministic in θ."""
    mx.random.seed(seed)
    phi = theta
    for _ in range(steps):
        mx.random.seed(int(mx.random.randint(0, 2**31 - 1, ()).item()))
        inner.set_weights(phi)
        _, g = inner.gradient(ep.support)
        phi = {k: phi[k] - lr * g[k] for k in phi}
    inner.set_weights(phi)
    return inner.gradient(ep.query)[0]


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_maml_meta_gradient_matches_central_finite_differences(tiny_dir, dropout):
    """In float64 on the CPU. MLX's float64 evaluates exp, rsqrt and the fused norms to about float32
    accuracy (exp(1) is off by 3e-8 relative), so the loss carries ~1e-7 relative noise, and along
    the second-order direction the meta-loss is curved enough that a plain central difference at
    ε = 1e-3 is off by 6e-3 of |∇| (it converges as ε²: 5e-5 at ε = 1e-4). Richardson extrapolation
    of ε = 1e-3 and 5e-4 removes the ε² term while keeping the noise small; the tolerance is 1e-4 of
    |∇|. With dropout the check also covers the backward pass replaying each step's masks."""
    base = models.load(str(tiny_dir), verbose=False)
    base.model.set_dtype(mx.float64)
    adapters.attach(base.model, adapters.LoraConfig(rank=2, dropout=dropout))
    theta = {k: v.astype(mx.float64) for k, v in nudged(base.model).items()}
    ep = episode_of(base.tokenizer)
    steps, lr, seed = 3, 0.01, 11
    learner, inner = learner_and_loop(base.model, "maml", inner_steps=steps, inner_lr=lr, dropout=dropout)
    mx.random.seed(seed)
    g = learner.task({"theta": theta}, ep, inner, None, 0).contribution["theta"]
    first, _ = learner_and_loop(base.model, "maml", inner_steps=steps, inner_lr=lr, first_order=True)
    mx.random.seed(seed)
    g_first = first.task({"theta": theta}, ep, inner, None, 0).contribution["theta"]

    def unit(tree):
        n = np.sqrt(sum(float((v * v).sum()) for v in tree.values()))
        return {k: v / n for k, v in tree.items()}

    def dot(a, b):
        return sum(float((a[k] * b[k]).sum()) for k in a)

    norm = np.sqrt(dot(g, g))
    rng = np.random.default_rng(0)
    directions = [unit({k: mx.array(rng.standard_normal(v.shape)).astype(mx.float64) for k, v in theta.items()})]
    directions.append(unit({k: g[k] - g_first[k] for k in g}))  # where the second-order term lives
    def central(d, eps):
        plus = maml_meta_loss(inner, {k: theta[k] + eps * d[k] for k in theta}, ep, steps, lr, seed)
        minus = maml_meta_loss(inner, {k: theta[k] - eps * d[k] for k in theta}, ep, steps, lr, seed)
        return (plus - minus) / (2 * eps)

    for i, d in enumerate(directions):
        fd = (4 * central(d, 5e-4) - central(d, 1e-3)) / 3  # Richardson: the O(ε²) error cancels
        assert abs(fd - dot(g, d)) <= 1e-4 * norm, (i, fd, dot(g, d))
    # the check can tell: the first-order gradient misses the last derivative by far more
    assert abs(fd - dot(g_first, d)) > 1e-2 * norm, (fd, dot(g_first, d))


def test_first_order_maml_equals_fomaml_with_sgd(tiny):
    adapters.attach(tiny.model, adapters.LoraConfig(rank=4, dropout=0.0))
    ep = episode_of(tiny.tokenizer)
    theta = nudged(tiny.model)
    lr = 2.0**-4  # exact in float32 and float64 alike
    fo, inner = learner_and_loop(tiny.model, "maml", inner_steps=3, inner_lr=lr, first_order=True)
    fom, inner_sgd = learner_and_loop(tiny.model, "fomaml", inner_steps=3, inner_lr=lr, inner_optimizer="sgd")
    a = fo.task({"theta": theta}, ep, inner, None, 0).contribution["theta"]
    b = fom.task({"theta": theta}, ep, inner_sgd, None, 0).contribution["theta"]
    assert_close(a, b, rel=1e-5)


@pytest.mark.parametrize("learner", ["fomaml", "maml", "hyper", "abmll"])
def test_no_retrace_per_episode(tiny, learner):
    adapters.attach(tiny.model, adapters.LoraConfig(rank=4))
    rng = np.random.default_rng(0)
    make = lambda: [prompts.Tokenized(rng.integers(10, 1000, 100).astype(np.int32), 80, False) for _ in range(4)]  # noqa: E731
    meta, inner = learner_and_loop(tiny.model, learner, inner_steps=2)
    theta = meta.init(inner.weights(), inner)

    def episode(t):
        return meta.step(theta, [episodes.Episode(t, "r", make(), make()[:2])], inner, t).params

    theta = episode(0)
    after_first = inner.traces
    assert after_first >= 1
    for t in range(1, 4):
        theta = episode(t)
    assert inner.traces == after_first


@pytest.mark.parametrize("learner", ["fomaml", "maml"])
def test_kill_9_then_resume_is_bit_identical(tiny_dir, tmp_path, learner):
    kill_9_then_resume(tiny_dir, tmp_path, ["--learner", learner, "--inner-steps", "1"])


def test_outer_adam_state_is_checkpointed(tiny_dir, tmp_path):
    from mlx_reptilora.meta import checkpoint

    cfg = train.MetaTrainConfig(model=str(tiny_dir), learner="fomaml", tasks=["pydoc"], episodes=2, support=2,
                                query=2, inner_steps=1, rank=4, max_length=128, eval_every=0, checkpoint_every=1,
                                out=str(tmp_path / "r"), quiet=True)
    train.run(cfg)
    info, groups = checkpoint.load(checkpoint.latest(tmp_path / "r" / "checkpoints"))
    assert info["episode"] == 2
    learner_state = groups["learner"]
    assert int(learner_state["step"]) == 2
    assert {slot for k in learner_state["theta"] for slot in learner_state["theta"][k]} == {"m", "v"}
    assert len(learner_state["theta"]) == len(groups["params"]["theta"])


@pytest.mark.parametrize("learner", ["fomaml", "maml"])
def test_meta_gradient_agrees_with_the_pytorch_twin(tiny_dir, learner):
    """On the tiny model (test_crosscheck checks Reptile's episodes on the bundled one)."""
    pytest.importorskip("torch")
    import torch

    from mlx_reptilora.crosscheck import check

    torch.set_num_threads(1)
    result = check.run(check.CrosscheckConfig(learner=learner, model=str(tiny_dir), episodes=2, inner_steps=2,
                                              support=2, query=2, rank=4, max_length=64, device="cpu", quiet=True))
    assert all(r["meta_gradient_norm"] > 0 for r in result["episodes"])
    assert result["meta_gradient_max_rel_diff"] <= 1e-3, result["episodes"]


def cli(capsys, *args) -> tuple[int, str, str]:
    from mlx_reptilora.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("how", [["-c", "meta-lora"], ["--learner", "maml"]])  # meta-lora.yaml: FOMAML
def test_each_learner_end_to_end(tiny_dir, tmp_path, how, capsys):
    out = tmp_path / "meta"
    code, _, err = cli(capsys, "meta-train", *how, "--model", tiny_dir, "--tasks", "aclsum-title,pydoc", "--episodes",
                       "2", "--support", "2", "--query", "2", "--inner-steps", "1", "--meta-batch", "1", "--rank", "4",
                       "--max-length", "128", "--eval-every", "0", "--out", out, "-q")
    assert code == 0, err
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["meta_learned"] == ("maml" if "maml" in how else "fomaml")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["learner"]["learner"] == config["meta_learned"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["query_loss_adapted"]) == 1 for r in rows)

    # mlx-lm itself loads the start, and adapt takes it and says what made it.
    from mlx_lm import generate, load

    model, tokenizer = load(str(tiny_dir), adapter_path=str(out))
    assert generate(model, tokenizer, prompt="Summarize: a cat sat on a mat.", max_tokens=4)
    code, stdout, err = cli(capsys, "adapt", "--model", tiny_dir, "--task", "aclsum-title", "--shots", "2", "--steps",
                            "1", "--adapters", out, "--max-length", "128", "--out", tmp_path / "adapted")
    assert code == 0, err
    assert f"meta-learned with {config['meta_learned']}" in stdout
    assert json.loads((tmp_path / "adapted" / "adapter_config.json").read_text())["start_learner"] == config["meta_learned"]


@pytest.mark.parametrize("heads,kv_heads,length,keys,mask", [
    (4, 4, 8, 8, "causal"), (6, 2, 8, 8, "causal"), (4, 2, 3, 8, "causal"), (4, 4, 8, 8, None),
    (4, 4, 8, 8, "additive"), (4, 4, 8, 8, "boolean")])
def test_written_out_attention_is_the_fused_function(heads, kv_heads, length, keys, mask):
    """MAML's Hessian-vector products trace attention written out (the fused CUDA backward cannot be
    differentiated again): it must compute what mx.fast does, for every mask mlx-lm passes."""
    from mlx_reptilora.model.graph import attention as _attention

    mx.random.seed(0)
    q = mx.random.normal((2, heads, length, 16))
    k, v = mx.random.normal((2, kv_heads, keys, 16)), mx.random.normal((2, kv_heads, keys, 16))
    if mask == "additive":
        mask = mx.random.normal((length, keys))
    elif mask == "boolean":
        mask = (mx.random.uniform(shape=(length, keys)) > 0.3) | mx.eye(length, keys, dtype=mx.bool_)
    fused = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)
    assert mx.allclose(fused, _attention(q, k, v, 0.25, mask), atol=1e-5)
