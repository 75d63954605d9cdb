"""Find which piece of the LoRA loss cannot be differentiated twice on this device (scratch probe)."""
import mlx.core as mx
import mlx.nn as nn

print(mx.default_device())


def hvp_of(name, f, x):
    try:
        g = lambda x: mx.grad(lambda x: f(x))(x)  # noqa: E731
        out = mx.grad(lambda x: (g(x) * mx.ones_like(x)).sum())(x)
        mx.eval(out)
        print(name, "ok")
    except Exception as e:
        print(name, "FAILS", str(e)[:120])


logits = mx.random.normal((16, 100))
t = mx.random.randint(0, 100, (16,))
hvp_of("cross_entropy", lambda x: nn.losses.cross_entropy(x, t).sum(), logits)
hvp_of("take_along_axis", lambda x: mx.take_along_axis(x, t[:, None], -1).sum() * 2, logits)
hvp_of("logsumexp", lambda x: mx.logsumexp(x, -1).sum() ** 2, logits)
idx = mx.array([0, 3, 5])
hvp_of("take rows", lambda x: (x[idx] ** 3).sum(), logits)
w = mx.random.normal((100, 8))
hvp_of("embedding", lambda x: ((x @ w)[t] ** 3).sum(), logits)
x4 = mx.random.normal((2, 4, 128, 64))
hvp_of("rope offset 0", lambda x: (mx.fast.rope(x, 64, traditional=False, base=1e4, scale=1.0, offset=0) ** 3).sum(), x4)
hvp_of("rms_norm", lambda x: (mx.fast.rms_norm(x, mx.ones((64,)), 1e-5) ** 3).sum(), x4)
import mlx_reptilora.meta.inner_loop as il
with il.twice_differentiable():
    hvp_of("sdpa patched", lambda x: (mx.fast.scaled_dot_product_attention(x, x, x, scale=0.1, mask="causal") ** 3).sum(), x4.astype(mx.bfloat16))
hvp_of("cross_entropy stop_gradient(t)", lambda x: nn.losses.cross_entropy(x, mx.stop_gradient(t)).sum(), logits)
hvp_of("lse - take_along_axis", lambda x: (mx.logsumexp(x, -1) - mx.take_along_axis(x, mx.expand_dims(t, -1), -1).squeeze(-1)).sum(), logits)
hvp_of("lse - x[arange, t]", lambda x: (mx.logsumexp(x, -1) - x[mx.arange(x.shape[0]), t]).sum(), logits)
hvp_of("lse - take_along_axis(x, stop_gradient)", lambda x: (mx.logsumexp(x, -1) - mx.take_along_axis(x, mx.stop_gradient(mx.expand_dims(t, -1)), -1).squeeze(-1)).sum(), logits)
hvp_of("lse only", lambda x: mx.logsumexp(x, -1).sum(), logits)
hvp_of("take_along_axis * lse", lambda x: (mx.take_along_axis(x, t[:, None], -1).squeeze(-1) * mx.logsumexp(x, -1)).sum(), logits)
with il.twice_differentiable():
    hvp_of("cross_entropy patched", lambda x: nn.losses.cross_entropy(x, t).sum(), logits)
