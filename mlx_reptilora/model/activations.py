"""What a training step keeps for its backward pass: three choices, off by default but for the
SwiGLU recompute and the LoRA branch in the base's dtype on CUDA (their price is in
benchmarks/RESULTS.md, "GPU speed and memory" and "Fused kernels for the LoRA step").

- The LoRA branch in the base's dtype (`lora_dtype="base"`). mlx-lm's LoRALinear multiplies the
  dropped input by the float32 adapters, so with a bf16 base that input is promoted and kept in
  float32 for the backward. PyTorch's autocast runs PEFT's LoRA in
  bf16; "base" does the same: the adapters are cast to the input's dtype inside the step, and they,
  their gradients and the optimizer's state stay float32. With a float32 base it changes nothing.
  "auto" (the default): "base" on CUDA, float32 elsewhere.
- SwiGLU recomputed (`recompute_swiglu=True`): silu(gate) * up inside mx.checkpoint, so the backward
  keeps gate and up and recomputes the sigmoid and the product. None (the default): on CUDA, where
  it was measured to cost no speed, for the models that have a SwiGLU MLP.
- The LoRA branch fused (`fused_lora=True`): model/kernels.py's `lora_branch`, whose backward draws
  the dropout mask again from a key instead of keeping it and the dropped input. It computes in the
  dtype `lora_dtype` picks.

All act while a step is traced (the compiled graph keeps them); generation is untouched.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager
from unittest.mock import patch

import mlx.core as mx
import mlx.nn as nn

from ..errors import UserError
from . import backend, kernels

LORA_DTYPES = ("auto", "float32", "base")


def _lora_in_input_dtype(self, x: mx.array) -> mx.array:
    """LoRALinear.__call__ with the adapters cast to x's dtype, as autocast casts PEFT's."""
    y = self.linear(x)
    z = (self.dropout(x) @ self.lora_a.astype(x.dtype)) @ self.lora_b.astype(x.dtype)
    return y + (self.scale * z).astype(x.dtype)


def _fused_lora_call(lora_dtype: str):
    def call(self, x: mx.array) -> mx.array:
        p = 1 - self.dropout._p_1 if self.training else 0.0  # nn.Dropout keeps 1 - p
        key = kernels.draw_key() if p else mx.zeros((2,), mx.uint32)
        dtype = x.dtype if lora_dtype == "base" else mx.result_type(x, self.lora_a)
        return self.linear(x) + kernels.lora_branch(x, self.lora_a, self.lora_b, key, self.scale, p, dtype)
    return call


# written out, not mlx-lm's compiled swiglu: the form benchmarks/RESULTS.md measured
_recomputed_swiglu = mx.checkpoint(lambda gate, up: nn.silu(gate) * up)


def _swiglu_module(model: nn.Module):
    """The mlx-lm module whose MLP calls `swiglu` (llama and its kin), or None."""
    module = sys.modules.get(type(model).__module__)
    return module if callable(getattr(module, "swiglu", None)) else None


def lora_dtype_here(lora_dtype: str) -> str:
    """The LoRA branch's dtype that `lora_dtype` means on this device ("auto": base on CUDA)."""
    if lora_dtype == "auto":
        return "base" if backend.backend_name() == "cuda" else "float32"
    return lora_dtype


def check(model: nn.Module, lora_dtype: str = "float32", recompute_swiglu: bool | None = False) -> bool:
    """One line, before any work, when a choice does not apply to this model. Returns whether SwiGLU
    is recomputed (`recompute_swiglu` None: on CUDA, if the model has a SwiGLU MLP)."""
    if lora_dtype not in LORA_DTYPES:
        raise UserError(f"--lora-dtype {lora_dtype!r}: choose one of {', '.join(LORA_DTYPES)}")
    if recompute_swiglu is None:
        return backend.backend_name() == "cuda" and _swiglu_module(model) is not None
    if recompute_swiglu and _swiglu_module(model) is None:
        raise UserError(f"--recompute-swiglu: {type(model).__module__} has no swiglu MLP to recompute "
                        f"(mlx-lm's llama family has)")
    return recompute_swiglu


@contextmanager
def keep_less(model: nn.Module, lora_dtype: str = "float32", recompute_swiglu: bool | None = False,
              fused_lora: bool = False):
    """While a step is traced, the chosen parts keep less for the backward (see the module's text)."""
    recompute_swiglu = check(model, lora_dtype, recompute_swiglu)
    lora_dtype = lora_dtype_here(lora_dtype)
    with ExitStack() as stack:
        if lora_dtype == "base" or fused_lora:
            from mlx_lm.tuner.lora import LoRALinear  # here: mlx-lm takes ~2 s to import, the CLI's errors must not

            call = _fused_lora_call(lora_dtype) if fused_lora else _lora_in_input_dtype
            stack.enter_context(patch.object(LoRALinear, "__call__", call))
        if recompute_swiglu:
            module = _swiglu_module(model)
            stack.enter_context(patch.object(module, "swiglu", _recomputed_swiglu))
        yield

