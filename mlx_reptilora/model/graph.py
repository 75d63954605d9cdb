"""Patches to the model's graph while a training step is traced (the compiled graph keeps them):
gradient checkpointing per layer, and the two fused GPU kernels swapped for ops that can be
differentiated twice (second-order learners). Beside activations.py and quantized.py, which patch
what a step keeps and how a quantized base multiplies.
"""

from __future__ import annotations

from contextlib import contextmanager
from unittest.mock import patch

import mlx.core as mx
import mlx.nn as nn


@contextmanager
def checkpointed_layers(model: nn.Module):
    """Gradient checkpointing per transformer layer while a step is traced: each layer's activations
    are recomputed in the backward pass instead of kept. The traced graph keeps the checkpoints, so
    the classes (Python looks __call__ up on them) are patched only for the duration.

    Unlike mlx-lm's grad_checkpoint, dropout inside a layer draws its masks from a key fixed for
    that layer's call: drawn from the global key, the recomputation would get new masks and
    differentiate through masks the forward pass never used."""
    layer_cls, dropout_call = type(model.layers[0]), nn.Dropout.__call__
    layer_call = layer_cls.__call__
    keys: list[mx.array] = []  # the key of the layer being computed, advanced by each dropout

    def keyed_dropout(self, x):
        if not keys:  # a dropout outside the checkpointed layers
            return dropout_call(self, x)
        if self._p_1 == 1 or not self.training:
            return x
        keys[-1], key = mx.random.split(keys[-1])
        return (mx.random.bernoulli(self._p_1, x.shape, key=key) * x) * (1 / self._p_1)

    def call(layer, *args, **kwargs):
        # a fresh key per layer and step, drawn from (so advancing) the global key; closed over,
        # not an input, so the recomputation uses the same array and no gradient flows into it
        key = mx.random.randint(0, 2**31 - 1, (2,)).astype(mx.uint32)

        def layer_fn(params, *args):
            layer.update(params)
            keys.append(key)
            try:
                return layer_call(layer, *args, **kwargs)
            finally:
                keys.pop()

        return mx.checkpoint(layer_fn)(layer.trainable_parameters(), *args)

    layer_cls.__call__, nn.Dropout.__call__ = call, keyed_dropout
    try:
        yield
    finally:
        layer_cls.__call__, nn.Dropout.__call__ = layer_call, dropout_call


def attention(queries, keys, values, scale, mask=None, **kwargs):
    """scaled_dot_product_attention written out (grouped-query heads, causal or additive/boolean
    masks): the function mx.fast computes, in ops that can be differentiated twice."""
    if kwargs.get("sinks") is not None:
        raise NotImplementedError("attention sinks in a second-order gradient")
    repeats = queries.shape[1] // keys.shape[1]
    if repeats > 1:
        keys, values = mx.repeat(keys, repeats, axis=1), mx.repeat(values, repeats, axis=1)
    scores = (queries * scale) @ keys.swapaxes(-1, -2)
    if isinstance(mask, str):  # "causal": queries are the last L of S positions
        n, m = scores.shape[-2:]
        mask = (mx.arange(n)[:, None] + (m - n)) >= mx.arange(m)[None]
    if mask is not None:
        scores = mx.where(mask, scores, -mx.inf) if mask.dtype == mx.bool_ else scores + mask
    return mx.softmax(scores, axis=-1, precise=True) @ values


def cross_entropy(logits, targets):
    """mlx.nn.losses.cross_entropy's own CPU path (class indices, last axis)."""
    logits = logits - mx.stop_gradient(logits.max(axis=-1, keepdims=True))
    score = mx.take_along_axis(logits, mx.expand_dims(targets, -1), -1).squeeze(-1)
    return mx.logsumexp(logits, axis=-1) - score


@contextmanager
def twice_differentiable():
    """While a second-order gradient is traced, two fused GPU kernels are swapped for the same
    functions written out: their derivatives cannot be differentiated again on CUDA (see
    scripts/device/second_order_ops.py). The cuDNN attention backward (bf16/fp16, query lengths a
    multiple of 128) fails with "Number of outputs ... does not match number of cotangents", and
    mx.fast.cross_entropy (what nn.losses.cross_entropy uses on a GPU) with "[gather_axis] Cannot
    calculate VJP with respect to indices"."""
    with patch.object(mx.fast, "scaled_dot_product_attention", attention), \
            patch.object(mx.fast, "cross_entropy", cross_entropy):
        yield
