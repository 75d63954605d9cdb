"""`mlx-reptilora evaluate`: batched greedy summaries for a task's test split, scored with
rouge-score (ROUGE-1/2/L F, stemming on) as a bootstrap mean with a 95% interval."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import options
from ..data import episodes, prompts, tasks
from ..model import adapters, hub, models
from ..options import option
from ..errors import UserError
from ..paths import atomic_write_text, writable_folder

METRICS = ("rouge1", "rouge2", "rougeL")


SPLITS = ("test", "valid", "train")


@dataclass
class EvalOptions:
    """What is generated and scored (evaluate, and every cell of compare)."""

    split: str = option("test", "which split is scored", choices=SPLITS)
    limit: int | None = option(None, "score only the first N examples of the split", min=1, default_text="all")
    batch_size: int = option(16, "sequences generated together", min=1)
    max_length: int = option(512, "max tokens per example or prompt; documents are truncated", min=16,
                             aliases=("--max-seq-length",))
    in_context_length: int | None = option(None, "max tokens of an in-context prompt", min=16,
                                           default_text="--max-length x (shots + 1): each document keeps the "
                                                        "room it has alone")


@dataclass
class EvalConfig(models.ModelOptions, EvalOptions):
    task: str | None = option(None, "task name or folder", required=True, aliases=("--data",))
    adapters: str | None = option(None, "adapters folder", default_text="none: the base model",
                                  aliases=("--adapter-path",))
    max_new_tokens: int | None = option(None, "most tokens generated per summary", min=1,
                                        default_text="1.5 x the 95th percentile training summary")
    in_context: int = option(0, "k training examples in the prompt (the in-context baseline)", min=0)
    shots: int | None = option(None, "recorded in the JSON: shots the adapters were tuned on", min=0,
                               default_text="what the adapters record (adapt writes it), else 0")
    seed: int = option(0, "picks the in-context shots; recorded", min=0)
    bootstrap_seed: int = option(0, "seed of the bootstrap resampling of the intervals", min=0)
    json: str | None = option(None, "write the scores here (and the predictions next to it)")
    predictions: str | None = option(None, "write the predictions here", default_text="next to --json")
    quiet: bool = option(False, "no progress output", short="-q")


def max_new_tokens(task: tasks.Task, tokenizer) -> int:
    """Room for 1.5x the 95th-percentile training summary, plus EOS."""
    refs = [e.summary for e in task.splits.get("train") or task.split("valid")]
    lengths = [len(x) for x in tokenizer._tokenizer(refs, add_special_tokens=False)["input_ids"]]
    return int(math.ceil(1.5 * np.percentile(lengths, 95))) + 1


def generate(base: models.Base, prompt_ids: list[list[int]], max_tokens: int, batch_size: int) -> tuple[list[str], dict]:
    from mlx_lm.generate import batch_generate

    base.model.eval()
    # Prompts of similar length prefill together: less left-padding computed for nothing.
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    t = time.perf_counter()
    r = batch_generate(base.model, base.tokenizer, [prompt_ids[i] for i in order], max_tokens=max_tokens,
                       return_token_ids=True, completion_batch_size=batch_size, prefill_batch_size=batch_size)
    seconds = time.perf_counter() - t
    n_tokens = sum(len(ids) for ids in r.token_ids)
    texts = [""] * len(order)
    for slot, i in enumerate(order):
        texts[i] = r.texts[slot].strip()
    return texts, {"generated_tokens": n_tokens, "seconds": round(seconds, 2),
                   "generated_tokens_per_s": round(n_tokens / seconds, 1)}


def rouge(predictions: list[str], references: list[str], seed: int = 0) -> dict:
    """Bootstrap-aggregated ROUGE F-measures in points (x100): {metric: {low, mid, high}}."""
    from rouge_score import rouge_scorer, scoring

    scorer = rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)
    np.random.seed(seed)  # BootstrapAggregator resamples with numpy's global RNG
    agg = scoring.BootstrapAggregator()
    for p, r in zip(predictions, references):
        agg.add_scores(scorer.score(r, p))
    result = agg.aggregate()
    return {m: {"low": 100 * result[m].low.fmeasure, "mid": 100 * result[m].mid.fmeasure,
                "high": 100 * result[m].high.fmeasure} for m in METRICS}


def examples_of(task: tasks.Task, split: str, limit: int | None) -> list[tasks.Example]:
    exs = task.split(split)
    return exs[:limit] if limit else exs


def prompts_for(base: models.Base, task: tasks.Task, exs: list[tasks.Example], cfg: EvalConfig) -> list[list[int]]:
    shots = (episodes.draw_shots(task.split("train"), cfg.in_context, cfg.seed, task.name, "--in-context")
             if cfg.in_context else [])
    length = cfg.in_context_length or cfg.max_length * (len(shots) + 1)
    return prompts.in_context(base.tokenizer, shots, exs, length, task.instruction)


def evaluate(base: models.Base, task: tasks.Task, cfg: EvalConfig) -> dict:
    """Scores for the adapters now in `base.model` (or none)."""
    exs = examples_of(task, cfg.split, cfg.limit)
    limit = cfg.max_new_tokens or max_new_tokens(task, base.tokenizer)
    texts, speed = generate(base, prompts_for(base, task, exs, cfg), limit, cfg.batch_size)
    scores = rouge(texts, [e.summary for e in exs], cfg.bootstrap_seed)
    return {"task": task.name, "split": cfg.split, "n": len(exs), "shots": cfg.shots, "in_context": cfg.in_context,
            "seed": cfg.seed, "adapters": cfg.adapters, "max_new_tokens": limit, **scores, "speed": speed,
            "_predictions": [{"id": e.id, "prediction": t, "reference": e.summary} for e, t in zip(exs, texts)]}


def run(cfg: EvalConfig) -> dict:
    options.check(cfg)
    cfg.adapters = hub.adapters_folder(cfg.adapters)
    task = tasks.load(cfg.task)
    examples_of(task, cfg.split, cfg.limit)  # a missing split fails before the model loads
    pred_path = Path(cfg.predictions or Path(cfg.json).with_suffix(".predictions.jsonl")) if (
        cfg.json or cfg.predictions) else None
    for path, flag in ((cfg.json, "--json"), (pred_path, "--predictions")):
        if path is not None:  # before generating: a path that cannot be written is one line, not lost work
            if Path(path).is_dir():
                raise UserError(f"{flag} {path} is a folder; give a file name")
            writable_folder(Path(path).parent, flag)
    if cfg.adapters:
        adapters.read_config(cfg.adapters)
        adapters.read_weights(cfg.adapters)
    if cfg.shots is None:
        cfg.shots = adapters.recorded(cfg.adapters, "shots", 0)
    base = models.load(cfg.model, cfg.dtype, cfg.quantize, verbose=not cfg.quiet)
    if cfg.adapters:
        hub.check_base(cfg.adapters, base)
        adapters.load(base.model, cfg.adapters)
    result = evaluate(base, task, cfg)
    preds = result.pop("_predictions")
    if pred_path is not None:
        atomic_write_text(pred_path, "".join(json.dumps(p) + "\n" for p in preds))
        result["predictions"] = str(pred_path)
    if cfg.json:
        atomic_write_text(cfg.json, json.dumps(result, indent=2))
    if not cfg.quiet:
        print(f"{task.name} ({cfg.split}, n={result['n']}): " + ", ".join(
            f"{m} {result[m]['mid']:.2f} [{result[m]['low']:.2f}, {result[m]['high']:.2f}]" for m in METRICS)
            + f"; {result['speed']['generated_tokens_per_s']} generated tok/s")
    return result
