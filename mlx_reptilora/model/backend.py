"""Which device MLX computes on, in which dtype, with which BLAS."""

from __future__ import annotations

import os

import mlx.core as mx

from . import _blas

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def apply_limits() -> None:
    """Per-process memory settings from the environment, in GB:
    - MLX_REPTILORA_CACHE_LIMIT_GB: MLX keeps freed buffers for reuse up to its memory limit, and
      several processes sharing one GPU (scripts/experiment.py --jobs) each hold their cache and run
      out; this caps it.
    - MLX_REPTILORA_MEMORY_LIMIT_GB: MLX's memory limit. On CUDA the peak counts buffers that queued
      kernels still hold (the host runs ahead of the GPU); past the limit evaluation waits for them,
      trading some speed for a lower peak (benchmarks/RESULTS.md prices it)."""
    for name, setter in (("MLX_REPTILORA_CACHE_LIMIT_GB", mx.set_cache_limit),
                         ("MLX_REPTILORA_MEMORY_LIMIT_GB", mx.set_memory_limit)):
        gb = os.environ.get(name)
        if not gb:
            continue
        try:
            limit = float(gb)
        except ValueError:
            limit = -1.0
        if not limit >= 0:
            from ..errors import UserError

            raise UserError(f"{name}={gb!r}: expected a number of GB, e.g. 3")
        setter(int(limit * 1e9))


def backend_name() -> str:
    if mx.metal.is_available():
        return "metal"
    if hasattr(mx, "cuda") and mx.cuda.is_available():
        return "cuda"
    return "cpu"


def attention_tile() -> int:
    """What padded lengths should be a multiple of. On CUDA, MLX runs the cuDNN attention backward
    only for query lengths that are a multiple of 128 and otherwise falls back to unfused attention,
    which keeps every (L x L) score matrix (ScaledDotProductAttentionVJP::use_fallback)."""
    return 128 if backend_name() == "cuda" else 1


def compute_dtype(name: str | None = None) -> mx.Dtype:
    """float32 on CPU (fp16/bf16 matmul there is ~20x slower than fp32), bfloat16 on a GPU."""
    if name is not None:
        if name not in DTYPES:
            from ..errors import UserError

            raise UserError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
        return DTYPES[name]
    return mx.float32 if backend_name() == "cpu" else mx.bfloat16


def dtype_name(dtype: mx.Dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def describe() -> dict:
    return {
        "backend": backend_name(),
        "device": str(mx.default_device()),
        "compute_dtype": dtype_name(compute_dtype()),
        "blas": _blas.status["blas"] or f"MLX's bundled BLAS ({_blas.status['reason']})",
        "mlx": mx.__version__,
    }
