"""How much memory training steps take:
- the micro-batch, how many examples a step takes per forward pass: on a GPU, the largest power of
  two whose measured step fits in the free memory; on a CPU, a fixed few (its memory is the host's,
  and MLX's CPU backend gains nothing from wider passes);
- the derived memory limit (--memory-limit): each step shape's first step measures what it needs,
  and every step after runs under the largest need."""

from __future__ import annotations

import os
from contextlib import contextmanager

import mlx.core as mx
import numpy as np

from ..data import episodes, prompts
from . import backend

FILL = 0.8  # of the free memory an automatic micro-batch may take: the rest for fragmentation and the rest of a step
CPU_MICRO_BATCH = 4
LIMITS = ("auto", "need", "none")
# this process's: MLX's limit before any was derived, the largest need, and the peak before a measurement
# reset MLX's counter (peak_gb() reports through it)
_limits = {"ceiling": None, "need": 0, "peak": 0}


def measures() -> bool:
    """Whether an automatic micro-batch is measured (on a GPU) rather than CPU_MICRO_BATCH."""
    return backend.backend_name() != "cpu"


def free_memory() -> int:
    """Bytes this process may still allocate: MLX's memory limit less what it holds; on CUDA, no
    more than the device's free memory (other processes count) plus MLX's own cached buffers; on
    Metal, no more than the recommended working set."""
    active = mx.get_active_memory()
    free = (_limits["ceiling"] or mx.get_memory_limit()) - active  # a derived limit throttles, it does not bound
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


def derives_limit(mode: str) -> bool:
    """Whether training steps run under a limit derived from their need (--memory-limit): `need`
    always, `none` never, `auto` on CUDA, where the host runs ahead of the GPU and the buffers of
    queued kernels raised the 7B step's peak by 29% (benchmarks/RESULTS.md), unless
    MLX_REPTILORA_MEMORY_LIMIT_GB sets a limit of its own."""
    if mode not in LIMITS:
        from ..errors import UserError

        raise UserError(f"--memory-limit {mode!r}: choose one of {', '.join(LIMITS)}")
    if mode == "none" or os.environ.get("MLX_REPTILORA_MEMORY_LIMIT_GB"):
        return False
    return mode == "need" or backend.backend_name() == "cuda"


class NeedLimit:
    """The derived limit's rule (benchmarks/RESULTS.md, "The derived limit's rule"): the first step
    of each shape runs under a limit at the memory already held, so that evaluation waits for the
    queued kernels from its first byte above it and the step's peak is what it needs; every step
    after runs under the largest need measured in the process. The limit only rises, never above
    MLX's own, and MLX's limit is a throttle: work that needs more waits for the queue, then runs."""

    def __init__(self, mode: str):
        self.on, self.seen = derives_limit(mode), set()

    @contextmanager
    def first(self, kind: str, arrays):
        """Around one step (evaluated inside) of `kind` on `arrays`: measured if its shape is new."""
        key = (kind, *(a.shape for a in arrays))
        if not self.on or key in self.seen:
            yield
            return
        self.seen.add(key)
        if _limits["ceiling"] is None:
            _limits["ceiling"] = mx.get_memory_limit()
        mx.set_memory_limit(mx.get_active_memory())
        _limits["peak"] = max(_limits["peak"], mx.get_peak_memory())
        mx.reset_peak_memory()
        try:
            yield
        finally:
            _limits["need"] = max(_limits["need"], mx.get_peak_memory())
            mx.set_memory_limit(derived_limit())


def derived_limit() -> int | None:
    """The limit the rule set in this process, in bytes (None: none yet)."""
    return min(_limits["need"] or _limits["ceiling"], _limits["ceiling"]) if _limits["ceiling"] is not None else None


def release_limit() -> None:
    """MLX's own limit back and the needs forgotten: for a process that goes on to other work (the
    benchmarks measure several models in one)."""
    if _limits["ceiling"] is not None:
        mx.set_memory_limit(_limits["ceiling"])
    _limits.update(ceiling=None, need=0)


def reset_peak() -> None:
    _limits["peak"] = 0
    mx.reset_peak_memory()


def peak_gb() -> float:
    """The peak since reset_peak(), in GB, counting what came before a measurement reset MLX's counter."""
    return max(_limits["peak"], mx.get_peak_memory()) / 1e9
