"""Which attention backward runs on MLX CUDA, by query length (issue #18).

MLX takes the cuDNN fused attention backward only for query lengths that are a multiple of 128
(ScaledDotProductAttentionVJP::use_fallback); other lengths fall back to unfused attention, which
keeps the (L x L) scores. This times the causal attention forward + backward at the Llama-2-7B
geometry (bf16, 32 heads of 128) for several lengths, in this process and, for comparison, with
cuDNN attention switched off (MLX_CUDA_USE_CUDNN_SDPA=0, read once per process: a child process).
A length whose time and memory match the cuDNN-off run took the fallback.

    python scripts/device/attention_vjp.py [--lengths 384,500,512,640] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import mlx.core as mx


def measure(batch: int, length: int, heads: int = 32, dim: int = 128, repeats: int = 10) -> dict:
    q, k, v = (mx.random.normal((batch, heads, length, dim)).astype(mx.bfloat16) for _ in range(3))
    mx.eval(q, k, v)

    def loss(q, k, v):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=dim ** -0.5, mask="causal").astype(mx.float32).sum()

    step = mx.compile(mx.value_and_grad(loss, argnums=(0, 1, 2)))
    mx.eval(step(q, k, v))  # compile, JIT the kernels
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        mx.eval(step(q, k, v))
        times.append(time.perf_counter() - t)
    times.sort()
    return {"length": length, "batch": batch, "ms": round(1e3 * times[len(times) // 2], 3),
            "extra_peak_mb": round((mx.get_peak_memory() - base) / 1e6, 1),
            "cudnn": os.environ.get("MLX_CUDA_USE_CUDNN_SDPA", "1") != "0"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="384,500,512,640")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    rows = [measure(args.batch, int(n)) for n in args.lengths.split(",")]
    if args.child:
        print(json.dumps(rows))
        return
    off = subprocess.run([sys.executable, __file__, "--lengths", args.lengths, "--batch", str(args.batch), "--child"],
                         env={**os.environ, "MLX_CUDA_USE_CUDNN_SDPA": "0"}, capture_output=True, text=True, check=True)
    print(f"device {mx.default_device()}, mlx {mx.__version__}")
    print("| query length | cuDNN on: ms | extra peak MB | cuDNN off: ms | extra peak MB |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for a, b in zip(rows, json.loads(off.stdout.strip().splitlines()[-1])):
        print(f"| {a['length']} | {a['ms']} | {a['extra_peak_mb']} | {b['ms']} | {b['extra_peak_mb']} |")


if __name__ == "__main__":
    main()
