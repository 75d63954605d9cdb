"""Reptile meta-training: the update is exactly θ + α(θ' − θ) against an independent step-by-step
reference, meta-batches average, α anneals, nothing recompiles per episode, and a killed run
resumes to bit-identical adapters."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest

from mlx_reptilora.data import episodes, prompts, tasks
from mlx_reptilora.meta import losses, train as meta_train, reptile
from mlx_reptilora.model import adapters, backend, memory, models
from mlx_reptilora.errors import UserError
from mlx_reptilora.meta.inner_loop import InnerConfig, InnerLoop
from tests.conftest import assert_close, run_cli


def reptile_step(inner, theta, supports, lr):
    """One Reptile meta-step through the learner interface: (new θ, adapted θ's, losses)."""
    learner = meta_train.make_learner(meta_train.MetaTrainConfig(meta_lr=lr, inner_steps=inner.cfg.steps))
    r = learner.step({"theta": theta}, [episodes.Episode(i, "t", s, []) for i, s in enumerate(supports)], inner, 0)
    return r.params["theta"], r.adapted, r.metrics["inner_losses"]


def small_cfg(tiny_dir, out, **kw):
    base = dict(model=str(tiny_dir), tasks=["aclsum-title"], episodes=3, support=4, query=0, inner_steps=2,
                rank=4, dropout=0.0, max_length=128, micro_batch=2, eval_every=0, checkpoint_every=1,
                out=str(out), quiet=True)
    return meta_train.MetaTrainConfig(**{**base, **kw})


def full_sequence_loss(model, batch):
    """The textbook masked loss: logits at every position, mean over summary targets."""
    tokens = mx.array(batch.tokens)
    logits = model(tokens[:, :-1]).astype(mx.float32)
    targets = tokens[:, 1:]
    pos = mx.arange(targets.shape[1])[None]
    mask = (pos >= mx.array(batch.prompt_lens)[:, None] - 1) & (pos < mx.array(batch.lengths)[:, None] - 1)
    ce = nn.losses.cross_entropy(logits, targets, reduction="none")
    return (ce * mask).sum(), mask.sum()


def test_summary_only_loss_equals_full_sequence_loss(tiny):
    tok = tiny.tokenizer
    fmt = prompts.PromptFormat.for_tokenizer(tok)
    exs = prompts.tokenize(fmt, tok, tasks.load("pydoc").splits["valid"][:3], 128)
    batch = episodes.make_batch(exs, [128], rows=4)
    adapters.attach(tiny.model, adapters.LoraConfig(rank=4, dropout=0.0))
    ours = losses.summed_loss(tiny.model, *losses.batch_arrays(batch))
    ref, n = full_sequence_loss(tiny.model, batch)
    assert int(n) == batch.n_targets
    assert abs(ours.item() - ref.item()) <= 1e-4 * abs(ref.item())


def reference_adapt(model, theta, support, steps, lr, clip, micro):
    """T AdamW steps written out plainly: full-sequence loss, no compile, no accumulation tricks."""
    adapters.set_weights(model, theta)
    opt = optim.AdamW(learning_rate=lr, weight_decay=0.01, bias_correction=True)  # PyTorch's AdamW
    ordered = sorted(support, key=lambda e: len(e.ids))
    chunks = [episodes.make_batch(ordered[i:i + micro], [64, 128], rows=micro) for i in range(0, len(ordered), micro)]

    def loss_fn(m):
        total, count = 0.0, 0
        for b in chunks:
            s, n = full_sequence_loss(m, b)
            total, count = total + s, count + n
        return total / count

    vg = nn.value_and_grad(model, loss_fn)
    for _ in range(steps):
        _, grads = vg(model)
        grads, _ = optim.clip_grad_norm(grads, clip)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
    return adapters.get_weights(model)


def test_three_episodes_move_theta_by_exactly_alpha_times_the_difference(tiny_dir, tmp_path):
    cfg = small_cfg(tiny_dir, tmp_path / "run")
    meta_train.run(cfg)
    got = adapters.read_weights(tmp_path / "run")

    # Independent replay: same base, same standard start, same episodes, plain-code inner loop.
    base = models.load(str(tiny_dir), verbose=False)
    adapters.attach(base.model, cfg.lora(), seed=cfg.seed)
    base.model.train()
    theta = adapters.get_weights(base.model)
    fmt = prompts.PromptFormat.for_tokenizer(base.tokenizer)
    prepared = [episodes.prepare(tasks.load("aclsum-title"), base.tokenizer, fmt, cfg.max_length, ("train",))]
    sampler = episodes.EpisodeSampler(prepared, cfg.support, cfg.query, None, cfg.seed)
    for _ in range(cfg.episodes):
        ep = sampler.sample()
        adapted = reference_adapt(base.model, theta, ep.support, cfg.inner_steps, cfg.inner_lr, cfg.grad_clip,
                                  cfg.micro_batch)
        theta = {k: theta[k] + 0.1 * (adapted[k] - theta[k]) for k in theta}

    assert_close(got, theta)
    b_norm = sum(float(mx.abs(v).sum()) for k, v in got.items() if k.endswith("lora_b"))
    assert b_norm > 0  # B moved away from its zero start

    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["episode"] for m in metrics] == [0, 1, 2]
    assert all(len(m["inner_losses"][0]) == 2 and m["tokens"] > 0 and m["peak_memory_gb"] > 0 for m in metrics)
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["config"]["meta_lr"] == 0.1 and meta["versions"]["mlx"] and meta["tasks"]["aclsum-title"]["train"] == 100


def test_meta_batch_averages_and_alpha_anneals(tiny):
    adapters.attach(tiny.model, adapters.LoraConfig(rank=4, dropout=0.0))
    fmt = prompts.PromptFormat.for_tokenizer(tiny.tokenizer)
    exs = prompts.tokenize(fmt, tiny.tokenizer, tasks.load("pydoc").splits["train"][:8], 128)
    inner = InnerLoop(tiny.model, InnerConfig(steps=2, micro_batch=2), [64, 128])
    theta = inner.weights()
    supports = [exs[:4], exs[4:]]
    new, adapted, _ = reptile_step(inner, theta, supports, lr=0.5)
    separately = []
    for s in supports:
        inner.set_weights(theta)
        inner.reset_optimizer()
        inner.adapt(s)
        separately.append(inner.weights())
    for k in theta:
        assert mx.allclose(adapted[0][k], separately[0][k]) and mx.allclose(adapted[1][k], separately[1][k])
        expected = theta[k] + 0.5 * ((separately[0][k] + separately[1][k]) / 2 - theta[k])
        assert mx.allclose(new[k], expected, atol=1e-7)
    assert [reptile.meta_lr(e, 5, 1.0, 0.0) for e in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert reptile.meta_lr(3, 5, 0.1, None) == 0.1


def test_annealing_recorded_per_episode(tiny_dir, tmp_path):
    meta_train.run(small_cfg(tiny_dir, tmp_path / "r", episodes=3, meta_lr=1.0, meta_lr_final=0.5, inner_steps=1,
                             meta_batch=2))
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["meta_lr"] for r in rows] == [1.0, 0.75, 0.5]
    assert all(len(r["tasks"]) == 2 and len(r["inner_losses"]) == 2 for r in rows)


def test_inner_step_compiles_once_not_per_episode(tiny):
    adapters.attach(tiny.model, adapters.LoraConfig(rank=4))
    inner = InnerLoop(tiny.model, InnerConfig(steps=3, micro_batch=2), [64, 128])
    rng = np.random.default_rng(0)
    make = lambda: [prompts.Tokenized(rng.integers(10, 1000, 100).astype(np.int32), 80, False) for _ in range(4)]  # noqa: E731
    theta = inner.weights()
    reptile_step(inner, theta, [make()], 0.1)
    inner.loss(make())
    after_first = inner.traces
    assert 1 <= after_first <= 3  # grad, update, eval: each traced once for this shape
    for _ in range(5):
        theta, _, _ = reptile_step(inner, theta, [make()], 0.1)
        inner.loss(make())
    assert inner.traces == after_first


def poisoned(tiny_dir, folder):
    """The tiny model with one weight set to NaN: every loss it computes is NaN. (Learning rates that
    would blow up a healthy model are refused up front now: --inner-lr is at most 1.)"""
    import shutil

    shutil.copytree(tiny_dir, folder)
    weights = mx.load(str(folder / "model.safetensors"))
    weights["model.norm.weight"] = mx.full(weights["model.norm.weight"].shape, float("nan"))
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "pt"})
    return folder


def test_nonfinite_losses_drop_updates_then_stop(tiny_dir, tmp_path):
    cfg = small_cfg(poisoned(tiny_dir, tmp_path / "nan-model"), tmp_path / "nan", inner_steps=3, episodes=6,
                    max_nonfinite=2)
    with pytest.raises(UserError, match="non-finite loss"):
        meta_train.run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped"] == "non-finite inner loss" and rows[-1]["nonfinite_in_a_row"] == 2
    assert not (tmp_path / "nan" / "adapters.safetensors").exists()


def test_out_folder_is_never_overwritten_and_resume_checks_settings(tiny_dir, tmp_path):
    meta_train.run(small_cfg(tiny_dir, tmp_path / "r", episodes=1))
    with pytest.raises(UserError, match="already holds a run"):
        meta_train.run(small_cfg(tiny_dir, tmp_path / "r", episodes=1))
    with pytest.raises(UserError, match="different settings.*inner_lr"):
        meta_train.run(small_cfg(tiny_dir, tmp_path / "r", episodes=2, inner_lr=1e-3, resume=True))
    with pytest.raises(UserError, match="no run to resume"):
        meta_train.run(small_cfg(tiny_dir, tmp_path / "none", resume=True))


def test_yaml_config_and_unknown_keys(tmp_path):
    from mlx_reptilora import options as config

    p = tmp_path / "c.yaml"
    p.write_text("inner-lr: 1\nepisodes: 4\ntasks: pydoc,aclsum-title\n")
    cfg = config.build(meta_train.MetaTrainConfig, p, episodes=9)
    assert cfg.inner_lr == 1.0 and isinstance(cfg.inner_lr, float) and cfg.episodes == 9
    assert cfg.tasks == ["pydoc", "aclsum-title"]
    assert config.build(meta_train.MetaTrainConfig, "cpu-small").episodes == 6  # shipped config by name
    p.write_text("inner_lrr: 1\n")
    with pytest.raises(UserError, match="unknown option 'inner_lrr'"):
        config.build(meta_train.MetaTrainConfig, p)


def _cli(args, env=None):
    return [sys.executable, "-m", "mlx_reptilora", "meta-train", *args]


def kill_after(proc: subprocess.Popen, out: Path, episodes: int) -> subprocess.Popen:
    """SIGKILL a meta-train process once its metrics.jsonl holds `episodes` lines (or it ended)."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        m = out / "metrics.jsonl"
        if m.exists() and len(m.read_text().splitlines()) >= episodes:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc


def test_kill_9_then_resume_is_bit_identical(tiny_dir, tmp_path):
    kill_9_then_resume(tiny_dir, tmp_path)


def kill_9_then_resume(tiny_dir, tmp_path, extra=()):
    """A run killed with SIGKILL after a few episodes, then resumed, ends with the very adapters of
    an uninterrupted run, and logs every episode once."""
    args = ["--model", str(tiny_dir), "--tasks", "aclsum-title,pydoc", "--episodes", "6", "--support", "4",
            "--query", "4", "--inner-steps", "2", "--rank", "4", "--max-length", "128", "--eval-every", "3",
            "--checkpoint-every", "1", "--quiet", *extra]
    straight = run_cli("meta-train", *args, "--out", tmp_path / "straight")  # the uninterrupted run, in this process
    assert straight.returncode == 0, straight.stderr

    killed = tmp_path / "killed"
    proc = kill_after(subprocess.Popen(_cli(args + ["--out", str(killed)]), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True), killed, 3)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "adapters.safetensors").exists()  # it really died part-way

    resumed = run_cli("meta-train", *args, "--out", killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = adapters.read_weights(tmp_path / "straight")
    b = adapters.read_weights(killed)
    assert set(a) == set(b)
    for k in a:
        assert mx.array_equal(a[k], b[k]), k
    rows = [json.loads(line)["episode"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(6))  # episodes after the checkpoint were logged once, not twice


def test_qlora_meta_training_on_a_4bit_base(tiny_dir, tmp_path):
    import mlx.nn as nn

    out = meta_train.run(small_cfg(tiny_dir, tmp_path / "q", episodes=1, quantize=4))
    cfg = json.loads((out / "meta.json").read_text())
    assert cfg["base_model"]["quantized"] == "4-bit"
    base = models.load(str(tiny_dir), quantize_bits=4, verbose=False)
    adapters.load(base.model, out)  # the adapters fit the quantized base's LoRA layers
    assert isinstance(base.model.layers[0].self_attn.q_proj.linear, nn.QuantizedLinear)
    assert any(float(mx.abs(v).max()) > 0 for k, v in adapters.read_weights(out).items() if k.endswith("lora_b"))


def test_grad_checkpoint_gives_the_same_step_without_dropout(tiny_dir):
    """Recomputing activations in backward changes memory, not the step."""
    fmt = None
    results = []
    for checkpoint in (False, True):
        base = models.load(str(tiny_dir), verbose=False)
        adapters.attach(base.model, adapters.LoraConfig(rank=4, dropout=0.0))
        fmt = fmt or prompts.PromptFormat.for_tokenizer(base.tokenizer)
        exs = prompts.tokenize(fmt, base.tokenizer, tasks.load("pydoc").splits["train"][:4], 128)
        inner = InnerLoop(base.model, InnerConfig(steps=2, micro_batch=2, grad_checkpoint=checkpoint), [64, 128])
        results.append((inner.adapt(exs), inner.weights()))
    (plain_losses, plain), (ck_losses, ck) = results
    assert np.allclose(plain_losses, ck_losses, rtol=1e-5)
    assert_close(ck, plain)


def test_checkpointed_dropout_differentiates_through_the_forward_masks():
    """With w = 1, d(sum(dropout(x) * w))/dw summed equals the loss only if the backward pass uses
    the forward's dropout masks; a recomputation drawing new masks (mlx-lm's grad_checkpoint with
    dropout) breaks the equality."""
    from mlx_reptilora.model.graph import checkpointed_layers

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.drop = mx.ones((1000,)), nn.Dropout(0.5)

        def __call__(self, x):
            return self.drop(x) * self.w

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = [Block(), Block()]

        def __call__(self, x):
            for layer in self.layers:
                x = layer(x)
            return x.sum()

    model = Stack()
    model.train()
    originals = (Block.__call__, nn.Dropout.__call__)
    mx.random.seed(0)
    x = mx.random.normal((1000,))
    step = mx.compile(nn.value_and_grad(model, model), inputs=[model.state, mx.random.state],
                      outputs=[model.state, mx.random.state])
    losses = []
    for _ in range(2):
        with checkpointed_layers(model):
            loss, grads = step(x)
        assert np.isclose(grads["layers"][1]["w"].sum().item(), loss.item(), rtol=1e-4)
        losses.append(loss.item())
    assert losses[0] != losses[1]  # new masks each step: the key advances
    assert (Block.__call__, nn.Dropout.__call__) == originals  # patched only while traced


def test_carry_optimizer_run_resumes_bit_identically(tiny_dir, tmp_path):
    """The carried inner optimizer's moments go into the checkpoint and back onto the optimizer's
    own tree (a resume used to fail with KeyError 'layer_types')."""
    common = dict(tasks=["aclsum-title", "pydoc"], reset_optimizer=False, inner_steps=2, support=2)
    meta_train.run(small_cfg(tiny_dir, tmp_path / "straight", episodes=4, **common))
    meta_train.run(small_cfg(tiny_dir, tmp_path / "split", episodes=2, **common))
    meta_train.run(small_cfg(tiny_dir, tmp_path / "split", episodes=4, resume=True, **common))
    a, b = adapters.read_weights(tmp_path / "straight"), adapters.read_weights(tmp_path / "split")
    assert set(a) == set(b) and all(mx.array_equal(a[k], b[k]) for k in a)


def test_micro_batch_fits_the_free_memory(tiny, monkeypatch):
    adapters.attach(tiny.model, adapters.LoraConfig(rank=4, dropout=0.1))
    inner = InnerLoop(tiny.model, InnerConfig(steps=1, micro_batch=2), [64, 128])
    theta = inner.weights()
    one, two = memory.probe(inner, 1, 128, False), memory.probe(inner, 2, 128, False)
    per_row = two - one
    fixed = max(one - per_row, 0)  # what a step holds whatever its rows (about 0 on this tiny model)
    assert per_row > 0
    mx.random.seed(7)
    expected = mx.random.uniform(shape=(3,))
    mx.random.seed(7)
    room = (fixed + 6 * per_row) / memory.FILL  # room for 4 rows, not for 8
    chosen = [inner.fit_micro_batch(32, free=int(f))[0] for f in (0, room, 1e12)]
    assert mx.array_equal(mx.random.uniform(shape=(3,)), expected)  # the probes left the RNG as it was
    assert all(mx.array_equal(theta[k], inner.weights()[k]) for k in theta)  # and the adapters
    assert chosen == [1, 4, 32]
    assert inner.fit_micro_batch(5, free=int(1e12))[0] == 8 and inner.fit_micro_batch(1)[0] == 1
    assert memory.probe(inner, 2, 128, True) > two  # a Hessian-vector product holds more than a gradient
    # micro_batch None: measured where measures() (a GPU), said once; a CPU takes CPU_MICRO_BATCH
    monkeypatch.setattr(memory, "measures", lambda: False)  # the CPU's rule, on CUDA too
    assert InnerLoop(tiny.model, InnerConfig(micro_batch=None), [64, 128], rows=8).cfg.micro_batch == 4
    monkeypatch.setattr(memory, "measures", lambda: True)
    monkeypatch.setattr(memory, "free_memory", lambda: int(1e12))
    said = []
    auto = InnerLoop(tiny.model, InnerConfig(micro_batch=None), [64, 128], rows=6, say=said.append)
    assert auto.cfg.micro_batch == 8 and len(said) == 1 and said[0].startswith("micro-batch 8 (a step at 128 tokens")


@pytest.fixture
def own_limit(monkeypatch):
    """MLX's memory limit and the derived limit's record as they were, after the test."""
    memory.release_limit()  # one an earlier test's loop derived (on CUDA every loop's default)
    held = mx.get_memory_limit()
    monkeypatch.setattr(memory, "_limits", {"ceiling": None, "need": 0, "peak": 0})
    monkeypatch.delenv("MLX_REPTILORA_MEMORY_LIMIT_GB", raising=False)
    yield
    mx.set_memory_limit(held)


def test_derived_memory_limit_is_the_largest_need_and_changes_no_number(tiny, own_limit, monkeypatch):
    adapters.attach(tiny.model, adapters.LoraConfig(rank=4, dropout=0.1))
    fmt = prompts.PromptFormat.for_task(tiny.tokenizer, spec := tasks.load("pydoc"))
    rows = prompts.tokenize(fmt, tiny.tokenizer, spec.splits["train"][:4], 128)
    theta, ceiling, grads = None, mx.get_memory_limit(), {}
    for mode in ("none", "need"):
        inner = InnerLoop(tiny.model, InnerConfig(steps=1, micro_batch=2, memory_limit=mode), [64, 128])
        theta = theta or inner.weights()
        inner.set_weights(theta)
        mx.random.seed(3)
        grads[mode] = inner.gradient(rows)[1]
        assert memory.derived_limit() is None if mode == "none" else memory.derived_limit() > 0
    if backend.backend_name() == "cuda":  # whose backward is not deterministic (benchmarks/RESULTS.md, #27)
        assert_close(grads["need"], grads["none"], rel=1e-2)
    else:
        assert all(mx.array_equal(grads["none"][k], grads["need"][k]) for k in grads["none"])
    need = memory.derived_limit()
    assert mx.get_memory_limit() == need < ceiling
    assert memory.free_memory() >= ceiling - mx.get_active_memory() - 1  # a throttle, not what fits a micro-batch
    inner.gradient(rows)  # the same shapes: measured once
    shapes = {("gradient", *(a.shape for a in losses.batch_arrays(b))) for b in inner.batches(rows)}
    assert memory.derived_limit() == need and inner._need.seen == shapes
    monkeypatch.setenv("MLX_REPTILORA_MEMORY_LIMIT_GB", "3")  # a limit of the user's own: nothing derived
    assert not memory.derives_limit("auto") and not memory.derives_limit("need")
    monkeypatch.delenv("MLX_REPTILORA_MEMORY_LIMIT_GB")
    assert memory.derives_limit("auto") == (backend.backend_name() == "cuda")
    with pytest.raises(UserError, match="--memory-limit 'some'"):
        memory.derives_limit("some")


def test_a_resumed_run_keeps_the_micro_batch_it_chose(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "measures", lambda: True)
    monkeypatch.setattr(memory, "free_memory", lambda: int(1e12))  # room for every row: 4
    meta_train.run(small_cfg(tiny_dir, tmp_path / "a", micro_batch=None, episodes=2))
    meta_train.run(small_cfg(tiny_dir, tmp_path / "b", micro_batch=None, episodes=1))
    assert json.loads((tmp_path / "b" / "meta.json").read_text())["inner"]["micro_batch"] == 4
    monkeypatch.setattr(memory, "free_memory", lambda: 0)  # a fresh choice would now be 1
    meta_train.run(small_cfg(tiny_dir, tmp_path / "b", micro_batch=None, episodes=2, resume=True))
    a, b = (mx.load(str(tmp_path / x / "adapters.safetensors")) for x in "ab")
    assert all(mx.array_equal(a[k], b[k]) for k in a)


def test_a_quantized_base_steps_through_dense_dequantized_weights(tiny_dir, monkeypatch):
    from mlx_reptilora.model import quantized

    base = models.load(str(tiny_dir), quantize_bits=4, verbose=False)
    adapters.attach(base.model, adapters.LoraConfig(rank=4, dropout=0.0))
    fmt = prompts.PromptFormat.for_tokenizer(base.tokenizer)
    exs = prompts.tokenize(fmt, base.tokenizer, tasks.load("pydoc").splits["train"][:4], 128)
    kernel = InnerLoop(base.model, InnerConfig(micro_batch=2, quantized_matmul="kernel"), [64, 128])
    want_loss, want = kernel.gradient(exs)
    want_eval = kernel.loss(exs)
    v = {k: mx.full(x.shape, 0.01) for k, x in kernel.weights().items()}
    want_hv = kernel.hvp(exs, v)  # second-order learners differentiate through the dense path too

    def no_kernel(*a, **k):
        raise AssertionError("the quantized matmul kernel ran")

    monkeypatch.setattr(mx, "quantized_matmul", no_kernel)  # the dense path must not reach it
    dense = InnerLoop(base.model, InnerConfig(micro_batch=2, quantized_matmul="dense"), [64, 128])
    loss, got = dense.gradient(exs)
    assert abs(loss - want_loss) < 1e-4 * abs(want_loss)
    assert_close(got, want)
    assert dense.loss(exs) == pytest.approx(want_eval, rel=1e-4)  # the evaluation loss too
    hv = dense.hvp(exs, v)
    assert_close(hv, want_hv)
    with pytest.raises(UserError, match="--quantized-matmul"):
        quantized.is_dense("fast")


def test_the_dense_path_keeps_no_dequantized_weight_for_the_backward():
    """Compiled, a dequantization that closed over the quantized arrays was merged with its recompute
    in the backward, so every layer's dense weight stayed alive (on the H100, +13 GB at 7B). Passed
    in as inputs of the checkpoint, it is recomputed: per layer, the step keeps well under one dense
    weight."""
    from mlx_reptilora.model import quantized

    def peak(n, d=2048):
        layers = [nn.QuantizedLinear(d, d, bias=False, group_size=64, bits=4) for _ in range(n)]

        def f(x):
            with quantized.dense_matmuls():
                for layer in layers:
                    x = mx.tanh(layer(x))
            return x.sum()

        g, x = mx.compile(mx.grad(f)), mx.random.normal((8, d)).astype(mx.bfloat16)
        mx.eval(g(x))
        mx.reset_peak_memory()
        before = mx.get_active_memory()
        mx.eval(g(x))
        return mx.get_peak_memory() - before

    per_layer = (peak(12) - peak(4)) / 8
    assert per_layer < 0.75 * 2048 * 2048 * 2  # one bf16 dense weight: measured 1.0x before, 0.57x after
