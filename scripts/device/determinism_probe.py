"""Which part of a training step is not run-to-run deterministic on this device? The bundled model,
LoRA q/v, one batch of 8 x 512 tokens: the loss, the gradient through the target-position gather
(losses.summed_loss, what training uses), the same gradient with the loss taken through a mask over
every position (no gather, so no scatter-add in its backward), and an inner step, each computed
twice from the same state; prints the largest difference between the two.

    python3 scripts/device/determinism_probe.py GGUF
"""

import sys

import mlx_reptilora  # noqa: F401 -- BLAS before mlx.core
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from mlx_reptilora.data import episodes, prompts
from mlx_reptilora.meta.inner_loop import InnerConfig, InnerLoop
from mlx_reptilora.meta.losses import batch_arrays, lm_head, summed_loss
from mlx_reptilora.model import adapters, models

base = models.load(sys.argv[1], verbose=False)
adapters.attach(base.model, adapters.LoraConfig(dropout=0.0))
ids = np.random.default_rng(0).integers(1, 40000, (8, 512)).astype(np.int32)
rows = [prompts.Tokenized(r, 384, False) for r in ids]
batch = episodes.make_batch(rows, [512])
arrays = batch_arrays(batch)
model = base.model


def masked_loss(model, tokens, target_index, target_ids, target_weight):
    hidden = model.model(tokens)
    logits = lm_head(model, hidden).astype(mx.float32)
    flat = logits.reshape(-1, logits.shape[-1])
    targets = mx.zeros(flat.shape[0], mx.int32).at[target_index].add(target_ids)  # built outside the gradient
    weight = mx.zeros(flat.shape[0]).at[target_index].add(target_weight)
    return (nn.losses.cross_entropy(flat, mx.stop_gradient(targets), reduction="none") * mx.stop_gradient(weight)).sum()


def twice(fn):
    a, b = fn(), fn()
    mx.eval(a, b)
    flat = lambda t: dict(t) if isinstance(t, dict) else {"value": t}  # noqa: E731
    a, b = flat(a), flat(b)
    return max(float(mx.abs(a[k] - b[k]).max()) for k in a)


grad_of = lambda loss: (lambda: dict(tree_flatten(nn.value_and_grad(model, loss)(model, *arrays)[1])))  # noqa: E731
print("device:", mx.default_device(), "dtype:", model.layers[0].self_attn.q_proj.linear.weight.dtype)
print("loss (summed_loss), max |diff|:", twice(lambda: summed_loss(model, *arrays)))
print("gradient through the gather, max |diff|:", twice(grad_of(summed_loss)))
print("gradient through a mask, max |diff|:", twice(grad_of(masked_loss)))
inner = InnerLoop(model, InnerConfig(micro_batch=8), [512])
start = inner.weights()


def step():
    inner.set_weights(start)
    inner.reset_optimizer()
    mx.random.seed(0)
    inner.step([batch])
    return inner.weights()


print("one AdamW inner step, max |diff|:", twice(step))
