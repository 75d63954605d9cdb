"""How many examples a training step takes per forward pass: on a GPU, the largest power of two
whose measured step fits in the free memory; on a CPU, a fixed few (its memory is the host's, and
MLX's CPU backend gains nothing from wider passes)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..data import episodes, prompts
from . import backend

FILL = 0.8  # of the free memory an automatic micro-batch may take: the rest for fragmentation and the rest of a step
CPU_MICRO_BATCH = 4


def measures() -> bool:
    """Whether an automatic micro-batch is measured (on a GPU) rather than CPU_MICRO_BATCH."""
    return backend.backend_name() != "cpu"


def free_memory() -> int:
    """Bytes this process may still allocate: MLX's memory limit less what it holds; on CUDA, no
    more than the device's free memory (other processes count) plus MLX's own cached buffers; on
    Metal, no more than the recommended working set."""
    active = mx.get_active_memory()
    free = mx.get_memory_limit() - active
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    if "free_memory" in info:
        free = min(free, int(info["free_memory"]) + mx.get_cache_memory())
    if "max_recommended_working_set_size" in info:
        free = min(free, int(info["max_recommended_working_set_size"]) - active)
    return max(free, 0)


def fit(most: int, one: int, two: int, free: int) -> tuple[int, int, int]:
    """The largest power of two up to `most` whose step fits in FILL of `free` bytes, from the peak
    bytes of a step at one row and at two: (micro-batch, fixed bytes, bytes a row)."""
    per_row = max(two - one, 1)
    fixed = max(one - per_row, 0)
    m = 1
    while m < most and fixed + 2 * m * per_row <= FILL * free:
        m *= 2
    return m, fixed, per_row


def fit_micro_batch(loop, rows: int, second_order: bool = False, free: int | None = None) -> tuple[int, str]:
    """The micro-batch of an inner loop (meta/inner_loop.py) for steps of up to `rows` examples,
    rounded up to a power of two: one step at 1 and at 2 rows of the longest bucket measures what a
    step needs and what each row adds. The adapters and the RNG are left as they were.
    Returns (micro-batch, why)."""
    most = 1 << max(rows - 1, 0).bit_length()
    if most == 1:
        return 1, "one example per step"
    length = loop.bucket_lengths[-1]
    one, two = (probe(loop, n, length, second_order) for n in (1, 2))
    free = free_memory() if free is None else free
    m, fixed, per_row = fit(most, one, two, free)
    return m, (f"{'a second-order' if second_order else 'a'} step at {length} tokens measured {fixed / 1e9:.2f} GB "
               f"+ {per_row / 1e9:.3f} GB a row, {free / 1e9:.1f} GB free, at most {most} rows a step")


def probe(loop, rows: int, length: int, second_order: bool) -> int:
    """Peak bytes above what is held of one gradient (or Hessian-vector product) of an inner loop on
    `rows` rows of `length` tokens, half of them target."""
    ids = np.arange(1, length + 1, dtype=np.int32) % 1000
    batch = episodes.make_batch([prompts.Tokenized(ids, length // 2, False)] * rows, [length])
    key, weights = mx.random.state[0].tolist(), loop.weights()
    mx.eval(weights)
    held = mx.get_active_memory()
    mx.reset_peak_memory()
    try:
        if second_order:
            loop.hvp([batch], {k: mx.zeros_like(v) for k, v in weights.items()})
        else:
            loop.gradient([batch])
        return mx.get_peak_memory() - held
    finally:
        loop.set_weights(weights)
        mx.random.seed((key[0] << 32) | key[1])  # the key as it was: a seed of 64 bits is the key
        mx.reset_peak_memory()
