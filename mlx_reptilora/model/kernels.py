"""Fused pieces of the training step. Each is one function with a pure-MLX reference of the same
arithmetic (`*_reference`), which tests hold it to, values and gradients, first and second order.

`lora_branch`: scale * (dropout(x) @ A) @ B, the low-rank half of a LoRA linear. Autodiff of the
reference keeps, for every LoRA layer, the dropout mask and the dropped input (in float32 when the
adapters are). This one keeps only x, which the frozen projections beside it read too, and a key:
its backward draws the same mask again from the key and recomputes the r-wide product x @ A.
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx


def draw_key() -> mx.array:
    """A key from the global generator: a compiled step lists mx.random.state, so resume replays it."""
    return mx.random.randint(0, 2**32 - 1, (2,), dtype=mx.uint32)


def _dropped(x: mx.array, key: mx.array, p: float) -> tuple[mx.array, mx.array | None]:
    if p == 0:
        return x, None
    keep = mx.random.bernoulli(1 - p, x.shape, key=key)
    return mx.where(keep, x, mx.zeros((), x.dtype)), keep  # 1 / (1 - p) is folded into the scale


def lora_branch_reference(x: mx.array, a: mx.array, b: mx.array, key: mx.array, scale: float, p: float,
                          dtype: mx.Dtype) -> mx.array:
    """The branch in plain MLX ops, computed in `dtype` and returned in x's."""
    xd, _ = _dropped(x, key, p)
    s = scale / (1 - p)
    return (s * ((xd.astype(dtype) @ a.astype(dtype)) @ b.astype(dtype))).astype(x.dtype)


@lru_cache(maxsize=None)
def _fused(scale: float, p: float, dtype: mx.Dtype):
    s = scale / (1 - p)

    @mx.custom_function
    def branch(x, a, b, key):
        return lora_branch_reference(x, a, b, key, scale, p, dtype)

    @branch.vjp
    def branch_vjp(primals, cotangent, output):
        x, a, b, key = primals
        xd, keep = _dropped(x, key, p)
        xd = xd.astype(dtype).reshape(-1, x.shape[-1])
        g = (cotangent.astype(dtype) * s).reshape(-1, cotangent.shape[-1])
        ad, bd = a.astype(dtype), b.astype(dtype)
        gh = g @ bd.T
        gb = (xd @ ad).T @ g
        ga = xd.T @ gh
        gx = (gh @ ad.T).astype(x.dtype).reshape(x.shape)
        if keep is not None:
            gx = mx.where(keep, gx, mx.zeros((), gx.dtype))
        return gx, ga.astype(a.dtype), gb.astype(b.dtype), mx.zeros_like(key)

    return branch


def lora_branch(x: mx.array, a: mx.array, b: mx.array, key: mx.array, scale: float, p: float,
                dtype: mx.Dtype) -> mx.array:
    """`lora_branch_reference`'s values, with a backward that keeps x and the key only."""
    return _fused(float(scale), float(p), dtype)(x, a, b, key)
