"""The training loss: cross-entropy on target tokens only, with logits computed only there.

The LM head of SmolLM2 is 576 x 49,152: projecting every padded position costs about a third of a
CPU training step. Gathering the hidden states at the B x ~30 target positions first makes the head
and the cross-entropy almost free.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..data.episodes import Batch


def lm_head(model: nn.Module, hidden: mx.array) -> mx.array:
    if getattr(model, "lm_head", None) is not None:
        return model.lm_head(hidden)
    return model.model.embed_tokens.as_linear(hidden)  # tied embeddings


def summed_loss(model: nn.Module, tokens: mx.array, target_index: mx.array, target_ids: mx.array,
                target_weight: mx.array) -> mx.array:
    """Sum (not mean) of the token losses, so micro-batches add up to the whole batch exactly."""
    hidden = model.model(tokens)
    hidden = hidden.reshape(-1, hidden.shape[-1])[target_index]
    logits = lm_head(model, hidden)
    if logits.dtype in (mx.float16, mx.bfloat16):  # the softmax in float32; float64 (tests) stays
        logits = logits.astype(mx.float32)
    return (nn.losses.cross_entropy(logits, target_ids, reduction="none") * target_weight).sum()


def batch_arrays(batch: Batch) -> tuple[mx.array, ...]:
    return (mx.array(batch.tokens), mx.array(batch.target_index), mx.array(batch.target_ids),
            mx.array(batch.target_weight))
