"""How a quantized (QLoRA) base multiplies in a training step.

MLX's quantized matmul kernel is built for decoding (a few rows at a time); a training step
multiplies thousands of rows, where it is much slower than the bf16 GEMM (benchmarks/RESULTS.md has
the measurement). "dense" dequantizes each frozen weight to the compute dtype just in
time and uses the dense GEMM; inside mx.checkpoint, so the backward dequantizes it again instead of
keeping every layer's dense copy alive (that would cost the bf16 model's memory).
"""

from __future__ import annotations

from contextlib import contextmanager
from unittest.mock import patch

import mlx.core as mx
import mlx.nn as nn

from . import backend

MODES = ("auto", "kernel", "dense")


def is_dense(mode: str) -> bool:
    """auto: dense on CUDA, where it measured 2.7x the kernel's step and, under the derived memory
    limit (model/memory.py), a lower peak too (benchmarks/RESULTS.md); the kernel elsewhere."""
    if mode not in MODES:
        from ..errors import UserError

        raise UserError(f"--quantized-matmul {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "auto":
        return backend.backend_name() == "cuda"
    return mode == "dense"


def _dense_product(layer, x: mx.array) -> mx.array:
    """x @ W.T through W dequantized, in a checkpoint that keeps only its inputs. The quantized
    arrays are inputs too (their gradient stopped): closed over, the dequantization depended on
    nothing the backward waits for, so a compiled step merged it with its recompute and kept every
    layer's dense weight alive."""
    weight, scales, biases = layer["weight"], layer["scales"], layer.get("biases")

    def product(x, *quantized):
        w = mx.dequantize(*map(mx.stop_gradient, quantized), group_size=layer.group_size, bits=layer.bits,
                          mode=layer.mode)
        return x @ w.astype(x.dtype).T

    return mx.checkpoint(product)(x, weight, scales, *([] if biases is None else [biases]))


def _dense_call(self: nn.QuantizedLinear, x: mx.array) -> mx.array:
    y = _dense_product(self, x)
    return y + self["bias"] if "bias" in self else y


@contextmanager
def dense_matmuls(enabled: bool = True):
    """While a step is traced, quantized layers multiply through dequantized weights: every
    QuantizedLinear, and a quantized embedding used as the (tied) output layer."""
    if not enabled:
        yield
        return
    with patch.object(nn.QuantizedLinear, "__call__", _dense_call), \
            patch.object(nn.QuantizedEmbedding, "as_linear", _dense_product):
        yield
