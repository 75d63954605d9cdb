"""model/kernels.py: each fused piece against its pure-MLX reference, values and gradients, first and
second order (the HVPs of MAML, Meta-SGD and MAML++ differentiate its backward again)."""

import mlx.core as mx
import pytest

from mlx_reptilora.data import prompts, tasks
from mlx_reptilora.meta.inner_loop import InnerConfig, InnerLoop
from mlx_reptilora.model import adapters, kernels, models
from tests.conftest import assert_close


def _as_dict(arrays):
    return {str(i): a.astype(mx.float32) for i, a in enumerate(arrays)}


@pytest.mark.parametrize("p", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_the_lora_branch_has_its_references_values_gradients_and_hessian_products(p, dtype):
    mx.random.seed(0)
    x = mx.random.normal((2, 40, 48)).astype(mx.bfloat16)
    a, b = mx.random.normal((48, 4)) * 0.1, mx.random.normal((4, 24)) * 0.1
    key, (va, vb) = mx.random.key(3), (mx.random.normal((48, 4)), mx.random.normal((4, 24)))

    def loss(branch):
        return lambda x, a, b: (branch(x, a, b, key, 2.0, p, dtype).astype(mx.float32) ** 2).sum()

    def hvp(branch):
        grad = mx.grad(loss(branch), argnums=(1, 2))
        return mx.grad(lambda a, b: sum((g * v).sum() for g, v in zip(grad(x, a, b), (va, vb))), argnums=(0, 1))(a, b)

    want, got = (mx.value_and_grad(loss(f), argnums=(0, 1, 2))(x, a, b)
                 for f in (kernels.lora_branch_reference, kernels.lora_branch))
    assert got[0].item() == want[0].item()
    assert_close(_as_dict(got[1]), _as_dict(want[1]), rel=1e-6)
    rel = 1e-5 if dtype == mx.float32 else 1e-2  # bf16: the products' rounding, summed in another order
    assert_close(_as_dict(hvp(kernels.lora_branch)), _as_dict(hvp(kernels.lora_branch_reference)), rel=rel)
    compiled = mx.compile(mx.grad(loss(kernels.lora_branch), argnums=(1, 2)))(x, a, b)
    assert_close(_as_dict(compiled), _as_dict(got[1][1:]), rel=1e-6)


def test_the_dropout_mask_comes_from_the_key_alone():
    x = mx.ones((64, 32))
    a, b = mx.ones((32, 2)), mx.ones((2, 8))
    one, two = (kernels.lora_branch(x, a, b, mx.random.key(k), 1.0, 0.5, mx.float32) for k in (1, 2))
    assert mx.array_equal(one, kernels.lora_branch(x, a, b, mx.random.key(1), 1.0, 0.5, mx.float32)).item()
    assert not mx.array_equal(one, two).item()
    kept = (mx.random.bernoulli(0.5, x.shape, key=mx.random.key(1)).sum(axis=1) * 2.0 * 2.0)[:, None]
    assert mx.array_equal(one, mx.broadcast_to(kept, one.shape)).item()  # sum of the kept x * 1/(1-p), times B's


@pytest.fixture(scope="module")
def inner_setup(tiny_dir):
    base = models.load(str(tiny_dir), verbose=False)
    adapters.attach(base.model, adapters.LoraConfig(rank=4, dropout=0.1))
    fmt = prompts.PromptFormat.for_tokenizer(base.tokenizer)
    return base.model, prompts.tokenize(fmt, base.tokenizer, tasks.load("pydoc").splits["train"][:4], 128)


def _step(model, exs, **cfg):
    """Gradient and HVP at the start, then two steps: the RNG seeded alike, so dropout draws alike."""
    start = adapters.get_weights(model)
    mx.random.seed(0)
    inner = InnerLoop(model, InnerConfig(steps=2, micro_batch=2, **cfg), [64, 128])
    key = mx.random.state[0].tolist()
    _, grad = inner.gradient(exs)
    mx.random.seed((key[0] << 32) | key[1])  # the HVP's dropout where the gradient's was
    hv = inner.hvp(exs, {k: mx.full(v.shape, 0.01) for k, v in start.items()})
    inner.adapt(exs)
    out = grad, hv, inner.weights()
    adapters.set_weights(model, start)
    return out


@pytest.mark.parametrize("cfg", [{}, {"grad_checkpoint": True}], ids=["plain", "layers recomputed"])
def test_meta_training_through_the_fused_branch_takes_the_references_steps(inner_setup, monkeypatch, cfg):
    """The inner loop's gradients, Hessian-vector products and steps, with dropout on."""
    model, exs = inner_setup
    got = _step(model, exs, fused_lora=True, **cfg)
    monkeypatch.setattr(kernels, "lora_branch", kernels.lora_branch_reference)
    want = _step(model, exs, fused_lora=True, **cfg)
    for g, w in zip(got, want):
        assert_close(g, w, rel=1e-5)


def test_without_dropout_the_fused_branch_is_mlx_lms_lora(inner_setup):
    model, exs = inner_setup
    dropouts = [m.dropout for m in model.modules() if hasattr(m, "lora_a")]
    kept = [d._p_1 for d in dropouts]
    for d in dropouts:
        d._p_1 = 1.0  # p = 0: no mask to draw, so the two paths must agree
    try:
        for g, w in zip(_step(model, exs, fused_lora=True), _step(model, exs)):
            assert_close(g, w, rel=1e-5)
    finally:
        for d, k in zip(dropouts, kept):
            d._p_1 = k


def test_a_run_through_the_fused_branch_resumes_bit_identically(tiny_dir, tmp_path):
    """The keys come from the global generator, which the checkpoint carries: 2 + 2 episodes are 4."""
    from tests.test_meta_train import small_cfg
    from mlx_reptilora.meta import train as meta_train

    common = dict(dropout=0.1, fused_lora=True, learner="maml", inner_steps=2, support=2, query=2)  # HVPs too
    meta_train.run(small_cfg(tiny_dir, tmp_path / "straight", episodes=4, **common))
    meta_train.run(small_cfg(tiny_dir, tmp_path / "split", episodes=2, **common))
    meta_train.run(small_cfg(tiny_dir, tmp_path / "split", episodes=4, resume=True, **common))
    a, b = adapters.read_weights(tmp_path / "straight"), adapters.read_weights(tmp_path / "split")
    assert set(a) == set(b) and all(mx.array_equal(a[k], b[k]).item() for k in a)
    meta_train.run(small_cfg(tiny_dir, tmp_path / "unfused", episodes=4, **{**common, "fused_lora": False}))
    c = adapters.read_weights(tmp_path / "unfused")
    assert not all(mx.array_equal(a[k], c[k]).item() for k in a)  # the fused branch did run (its own masks)
