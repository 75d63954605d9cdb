"""How long loading + tokenizing the whole offline task suite takes, and sampling an episode.

    python benchmarks/tasks.py [--max-length 512]

Target (issue #3): the whole suite in under 10 s on a 2-core CPU; an episode draw never re-tokenizes.
"""

import argparse
import json
import platform
import statistics
import time

import mlx_reptilora  # noqa: F401
from mlx_lm.utils import load_tokenizer

from mlx_reptilora.data import episodes, prompts, tasks
from mlx_reptilora.model import models


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-length", type=int, default=512)
    args = ap.parse_args()
    tokenizer = load_tokenizer(models.resolve(None))
    fmt = prompts.PromptFormat.for_tokenizer(tokenizer)
    t0 = time.perf_counter()
    loaded = [tasks.load(n) for n in tasks.DEFAULT_TASKS]
    t1 = time.perf_counter()
    prepared = [episodes.prepare(t, tokenizer, fmt, args.max_length, splits=tasks.SPLITS) for t in loaded]
    t2 = time.perf_counter()
    n = sum(len(v) for p in prepared for v in p.splits.values())
    sampler = episodes.EpisodeSampler(prepared, support=32, query=64, seed=0)
    draws = []
    for _ in range(200):
        t = time.perf_counter()
        sampler.sample()
        draws.append(time.perf_counter() - t)
    print(json.dumps({"machine": platform.machine(), "examples": n, "load_s": round(t1 - t0, 2),
                      "tokenize_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2),
                      "episode_draw_us_median": round(statistics.median(draws) * 1e6, 1),
                      "note": "pydoc is parsed from the stdlib on first use, then cached"}))


if __name__ == "__main__":
    main()
