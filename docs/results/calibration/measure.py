"""Does contextual calibration (evaluate --calibrate content-free) help or hurt a choice task, and
should it be the default? On the bundled model here, on choice tasks that no planned held-out fold
tests (gcide-pos, mime-kind, emoji-name-language; the first LIMIT rows of their valid splits),
each system is scored with and without it, from the same forward passes:
- the base model (0 shots);
- LoRA from the standard start adapted on k = 1 and 5 shots with `adapt`'s defaults (7 AdamW steps,
  lr 5e-4);
- in-context, the k shots in the prompt.
k > 0: DRAWS draws of the shots. Writes OUT.json after each task and skips the tasks it holds, so
a run carries on where it stopped; one line per cell.

    python docs/results/calibration/measure.py OUT.json [LIMIT [DRAWS [TASK,...]]]
"""
import json
import sys
import time
from pathlib import Path

import mlx_reptilora  # noqa: F401  first: it preloads OpenBLAS before MLX loads
import numpy as np

from mlx_reptilora.data import episodes, tasks
from mlx_reptilora.evaluation import evaluate, metrics
from mlx_reptilora.evaluation.adapt import DEFAULT, AdaptOptions
from mlx_reptilora.meta import start as starts
from mlx_reptilora.meta.adaptation import Loops, adapt
from mlx_reptilora.meta.inner_config import bucket_lengths
from mlx_reptilora.model import adapters, models

TASKS = ["gcide-pos", "mime-kind", "emoji-name-language"]  # few options each: the CPU scores ~1 sequence/s
DRAWS, MAX_LENGTH = 2, 256


def scores(rows) -> dict:
    scored = metrics.choice(rows)
    top = np.bincount([int(np.argmax(r["probs"])) for r in rows]).max() / len(rows)
    return {"accuracy": scored["accuracy"]["mid"], "balanced": scored["balanced_accuracy"],
            "top_share": float(top), "ece": scored["ece"]}


def both(base, task, exs, ecfg) -> dict:
    rows = evaluate.choice_rows(base, task, exs, ecfg, None, None)
    cal = evaluate.calibrated_rows(base, task, exs, rows, ecfg)
    return {"raw": scores(rows), "calibrated": scores(cal)}


def main():
    dest, limit = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 24
    draws = int(sys.argv[3]) if len(sys.argv) > 3 else DRAWS
    names = sys.argv[4].split(",") if len(sys.argv) > 4 else TASKS
    base = models.load(None, None, None, verbose=False)
    lora = adapters.LoraConfig()
    adapters.attach(base.model, lora, seed=0)
    standard = starts.Point(lora, {"theta": adapters.get_weights(base.model)})
    opts = AdaptOptions()
    inner = Loops(base.model, opts.inner, bucket_lengths(MAX_LENGTH), rows=5)
    out = json.loads(dest.read_text()) if dest.exists() else {"tasks": {}, "limit": limit, "split": "valid",
                                                               "model": base.name, "max_length": MAX_LENGTH}
    for name in (n for n in names if n not in out["tasks"]):
        task = tasks.load(name)
        exs = evaluate.examples_of(task, "valid", limit)
        train = episodes.prepare(task, base.tokenizer, None, MAX_LENGTH, ("train",))
        cells = {}
        t = time.perf_counter()
        adapters.set_weights(base.model, standard.for_task(None, []))
        cells["base/0"] = [both(base, task, exs, evaluate.EvalConfig(task=name, max_length=MAX_LENGTH))]
        for k in (1, 5):
            for d in range(draws):
                shots, _ = episodes.draw_shot_rows(train, k, d)
                adapt(standard, inner(DEFAULT), shots, DEFAULT)
                cells.setdefault(f"lora/{k}", []).append(
                    both(base, task, exs, evaluate.EvalConfig(task=name, max_length=MAX_LENGTH)))
                adapters.set_weights(base.model, standard.for_task(None, []))
                cells.setdefault(f"in-context/{k}", []).append(both(base, task, exs, evaluate.EvalConfig(
                    task=name, max_length=MAX_LENGTH, in_context=k, seed=d)))
        for cell, runs in cells.items():
            line = "  ".join(f"{w} acc {np.mean([r[w]['accuracy'] for r in runs]):5.1f} bal "
                             f"{np.mean([r[w]['balanced'] for r in runs]):5.1f} top "
                             f"{np.mean([r[w]['top_share'] for r in runs]):.2f}" for w in ("raw", "calibrated"))
            print(f"{name:20s} {cell:18s} {line}", flush=True)
        out["tasks"][name] = {"draws": draws, "seconds": round(time.perf_counter() - t), "cells": cells}
        print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
        dest.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
