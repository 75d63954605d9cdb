"""MLX vs numpy fp32 matmul GFLOP/s on the same shapes (does MLX's CPU backend get a fast BLAS?).

    python benchmarks/matmul.py [--repeats 5]

Shapes: a square 1024^3, and the SmolLM2-135M step shapes (B 4 x L 256 tokens x hidden 576 / FFN 1536).
"""

import argparse
import json
import platform
import statistics
import sys
import time

import mlx_reptilora  # noqa: F401 -- preloads OpenBLAS before mlx.core
import mlx.core as mx
import numpy as np

from mlx_reptilora.model import backend

SHAPES = [(1024, 1024, 1024), (1024, 576, 576), (1024, 576, 1536), (1024, 1536, 576)]


def bench_pair(f, g, repeats, rounds=3):
    """Median times of f and g. Each runs in blocks with a pause between: OpenBLAS worker threads
    spin after a call, so strictly alternating two BLAS libraries makes each steal the other's cores;
    alternating blocks over several rounds still spreads the machine's background load over both."""
    tf, tg = [], []
    for _ in range(rounds):
        for fn, ts in ((f, tf), (g, tg)):
            fn()
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            time.sleep(0.2)
    return statistics.median(tf), statistics.median(tg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    mx.set_default_device(mx.cpu)
    rows = []
    for m, k, n in SHAPES:
        a, b = np.random.randn(m, k).astype(np.float32), np.random.randn(k, n).astype(np.float32)
        am, bm = mx.array(a), mx.array(b)
        t_mx, t_np = bench_pair(lambda am=am, bm=bm: mx.eval(am @ bm), lambda a=a, b=b: a @ b, args.repeats)
        flops = 2 * m * k * n
        rows.append({"shape": f"{m}x{k}x{n}", "mlx_gflops": flops / t_mx / 1e9, "numpy_gflops": flops / t_np / 1e9})
    info = {**backend.describe(), "numpy": np.__version__, "machine": platform.machine(),
            "python": sys.version.split()[0]}
    print(json.dumps(info))
    print("| shape (MxKxN) | MLX GFLOP/s | numpy GFLOP/s | numpy / MLX |")
    print("| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['shape']} | {r['mlx_gflops']:.1f} | {r['numpy_gflops']:.1f} | "
              f"{r['numpy_gflops'] / r['mlx_gflops']:.2f} |")


if __name__ == "__main__":
    main()
