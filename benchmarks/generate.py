"""Batched greedy generation + ROUGE on aclsum-title with the bundled model (issue #5's target:
50 examples in under 2 minutes on a 2-core CPU).

    python benchmarks/generate.py [--limit 50] [--batch-size 16]
"""

import argparse
import json
import platform
import time

import mlx_reptilora  # noqa: F401 -- OpenBLAS before mlx.core

from mlx_reptilora.data import tasks
from mlx_reptilora.evaluation import evaluate
from mlx_reptilora.model import backend, models


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    t0 = time.perf_counter()
    base = models.load(None)
    task = tasks.load("aclsum-title")
    t1 = time.perf_counter()
    result = evaluate.evaluate(base, task, evaluate.EvalConfig(limit=args.limit, batch_size=args.batch_size))
    t2 = time.perf_counter()
    print(json.dumps({"machine": platform.machine(), **backend.describe(), "examples": result["n"],
                      "batch_size": args.batch_size, "load_s": round(t1 - t0, 1), "generate_and_score_s": round(t2 - t1, 1),
                      "total_s": round(t2 - t0, 1), **result["speed"], "rougeL_mid": round(result["rougeL"]["mid"], 2)}))


if __name__ == "__main__":
    main()
