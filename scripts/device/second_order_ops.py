"""Which of MLX's fused ops can be differentiated twice (a gradient of a gradient, as MAML's
Hessian-vector products need) on this device: rms_norm, rope, scaled_dot_product_attention, silu,
cross_entropy, in float32 and bfloat16. On an H200 with MLX 0.32.4 (2026-11-23) two fail: the
attention in bf16 at query lengths that are multiples of 128 (the cuDNN backward) and
nn.losses.cross_entropy (mx.fast.cross_entropy on a GPU); model/graph.py's
twice_differentiable() swaps both for the same functions written out.
    python3 scripts/device/second_order_ops.py
"""
import mlx.core as mx
import mlx.nn as nn


def tryit(name, f, x):
    def g(x):
        return mx.grad(lambda x: (f(x).astype(mx.float32) ** 2).sum())(x)
    try:
        out = mx.vjp(g, [x], [mx.ones_like(x)])[1][0]
        mx.eval(out)
        print(f"{name}: ok")
    except Exception as e:
        print(f"{name}: FAILS ({str(e)[:150]})")


print(mx.default_device(), mx.__version__)
for dt in (mx.float32, mx.bfloat16):
    x = mx.random.normal((2, 128, 64)).astype(dt)
    w = mx.ones((64,), dtype=dt)
    tryit(f"rms_norm {dt}", lambda x, w=w: mx.fast.rms_norm(x, w, 1e-5), x)
    x4 = mx.random.normal((2, 4, 128, 64)).astype(dt)
    tryit(f"rope {dt}", lambda x: mx.fast.rope(x, 64, traditional=False, base=10000., scale=1., offset=0), x4)
    tryit(f"sdpa causal L128 {dt}", lambda x: mx.fast.scaled_dot_product_attention(x, x, x, scale=0.125, mask="causal"), x4)
    tryit(f"sdpa no mask L128 {dt}", lambda x: mx.fast.scaled_dot_product_attention(x, x, x, scale=0.125), x4)
    x5 = mx.random.normal((2, 4, 100, 64)).astype(dt)
    tryit(f"sdpa causal L100 {dt}", lambda x: mx.fast.scaled_dot_product_attention(x, x, x, scale=0.125, mask="causal"), x5)
    tryit(f"silu {dt}", lambda x: nn.silu(x), x)
    logits, targets = mx.random.normal((16, 100)).astype(dt), mx.random.randint(0, 100, (16,))
    tryit(f"cross_entropy {dt}", lambda x, t=targets: nn.losses.cross_entropy(x, t), logits)
