"""`mlx-reptilora evaluate`: a task's test split scored by its own metric, each a bootstrap mean with
a 95% interval: batched greedy generations scored by ROUGE-1/2/L or exact match, a choice task's
options scored by likelihood (accuracy, NLL, ECE), a text task's loss per token."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import options
from ..data import episodes, prompts, tasks
from . import charts, metrics, scoring
from ..meta import recipe as recipes, start as starts
from ..model import adapters, hub, models
from ..options import option
from ..errors import UserError
from ..paths import atomic_write_text, writable_folder

METRICS = metrics.ROUGE
rouge = metrics.rouge


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
    calibrate: str = option("auto", "a choice task's option probabilities: none; content-free: divided by "
                                    "those each option gets after the inputs 'N/A', '' and '[MASK]' (contextual "
                                    "calibration, Zhao et al. 2021), which takes out a preference for some "
                                    "answers that the prompt or a few shots give every row; auto: what the "
                                    "start's meta-validation chose (meta-train --valid-calibrate), else none",
                            choices=("auto", "none", "content-free"))


@dataclass
class EvalConfig(models.ModelOptions, EvalOptions):
    task: str | None = option(None, "task name or folder", required=True, aliases=("--data",))
    adapters: str | None = option(None, "adapters folder", default_text="none: the base model",
                                  aliases=("--adapter-path",))
    max_new_tokens: int | None = option(None, "most tokens generated per answer", min=1,
                                        default_text="1.5 x the 95th percentile training target")
    in_context: int = option(0, "k training examples in the prompt (the in-context baseline)", min=0)
    with_shots: bool = option(False, "meta + in-context: the shots the adapters were adapted on (adapt records "
                                     "them) also go into the prompt")
    shots: int | None = option(None, "recorded in the JSON: shots the adapters were tuned on", min=0,
                               default_text="what the adapters record (adapt writes it), else 0")
    seed: int = option(0, "picks the in-context shots; recorded", min=0)
    bootstrap_seed: int = option(0, "seed of the bootstrap resampling of the intervals", min=0)
    json: str | None = option(None, "write the scores here (and the predictions next to it)")
    predictions: str | None = option(None, "write the predictions here", default_text="next to --json")
    quiet: bool = option(False, "no progress output", short="-q")


def max_new_tokens(task: tasks.Task, tokenizer) -> int:
    """Room for 1.5x the 95th-percentile training target, plus EOS."""
    refs = [e.target for e in task.splits.get("train") or task.split("valid")]
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


def examples_of(task: tasks.Task, split: str, limit: int | None) -> list[tasks.Example]:
    exs = task.split(split)
    return exs[:limit] if limit else exs


def check_in_context(task: tasks.Task, k: int) -> None:
    if k and task.kind == "text":
        raise UserError(f"--in-context: {task.name} is a text task, with no answers to show as examples")


def shown_shots(task: tasks.Task, folder: str | None) -> list[tasks.Example]:
    """The training rows an adapted folder was adapted on (--with-shots), checked before any work."""
    rows = adapters.recorded(folder, "shot_rows") if folder else None
    if not rows:
        raise UserError("--with-shots shows the shots the adapters were adapted on: give --adapters written by "
                        "mlx-reptilora adapt --shots K (K >= 1)")
    if adapters.recorded(folder, "task") != task.name:
        raise UserError(f"--with-shots: {folder} was adapted on {adapters.recorded(folder, 'task')}, not {task.name}")
    check_in_context(task, len(rows))
    train = task.split("train")
    return [train[i] for i in rows]


def prompts_for(base: models.Base, task: tasks.Task, exs: list[tasks.Example], cfg: EvalConfig,
                shots: list[tasks.Example] | None = None) -> list[list[int]]:
    """Prompts with `shots` shown (by default cfg.in_context drawn with cfg.seed) before each input."""
    check_in_context(task, cfg.in_context)
    if shots is None:
        shots = (episodes.draw_shots(task.split("train"), cfg.in_context, cfg.seed, task.name, "--in-context")
                 if cfg.in_context else [])
    length = cfg.in_context_length or cfg.max_length * (len(shots) + 1)
    return prompts.in_context(base.tokenizer, shots, exs, length, task.instruction)


def records(base: models.Base, task: tasks.Task, exs: list[tasks.Example], cfg: EvalConfig,
            prompt_ids: list[list[int]] | None = None, max_tokens: int | None = None,
            samples: list[dict] | None = None, shots: list[tasks.Example] | None = None) -> tuple[list[dict], dict]:
    """What the model does on `exs`, row by row, in the form the task's metric reads
    (metrics.score), and the speed: generations, option probabilities or token losses. With
    `samples` (adapters drawn from a posterior), a choice task's probabilities are their average;
    generations and token losses are the adapters' in the model (the posterior mean). `shots`: the
    examples an in-context prompt shows (prompts_for)."""
    t = time.perf_counter()
    if task.kind == "text":
        fmt = prompts.PromptFormat.for_task(base.tokenizer, task)
        seqs = prompts.tokenize(fmt, base.tokenizer, exs, cfg.max_length)
        return scoring.text_nll(base.model, seqs, cfg.batch_size), {"seconds": round(time.perf_counter() - t, 2)}
    if task.kind == "choice":
        rows = choice_rows(base, task, exs, cfg, samples, shots)
        if cfg.calibrate == "content-free":
            rows = calibrated_rows(base, task, exs, rows, cfg, samples, shots)
        return rows, {"seconds": round(time.perf_counter() - t, 2)}
    prompt_ids = prompt_ids if prompt_ids is not None else prompts_for(base, task, exs, cfg, shots)
    texts, speed = generate(base, prompt_ids, max_tokens or max_new_tokens(task, base.tokenizer), cfg.batch_size)
    return [{"prediction": p, "reference": e.target} for p, e in zip(texts, exs)], speed


def calibration_of(folder: str | None, shots: int) -> str:
    """--calibrate auto: the calibration of the recipe a folder was adapted with (adapt records it),
    or of a start's recipe for `shots` shots (the nearest validated count); none without a recipe."""
    if not folder:
        return "none"
    used = adapters.recorded(folder, "recipe")
    if used:
        return used.get("calibrate", "none")
    recipe = recipes.read(folder, shots=shots)
    return recipe.calibrate if recipe else "none"


def choice_rows(base: models.Base, task: tasks.Task, exs: list[tasks.Example], cfg: EvalConfig,
                samples: list[dict] | None, shots: list[tasks.Example] | None) -> list[dict]:
    """A choice task's option probabilities for `exs`, averaged over `samples` where given."""
    fmt = prompts.PromptFormat.for_task(base.tokenizer, task)
    shown = prompts_for(base, task, exs, cfg, shots) if cfg.in_context else None
    score = lambda: scoring.choices(base.model, fmt, base.tokenizer, exs, cfg.batch_size, cfg.max_length, shown)
    if not samples:
        return score()
    held, runs = adapters.get_weights(base.model), []
    for weights in samples:
        adapters.set_weights(base.model, weights)
        runs.append(score())
    adapters.set_weights(base.model, held)
    return scoring.averaged(exs, runs)


def calibrated_rows(base: models.Base, task: tasks.Task, exs: list[tasks.Example], rows: list[dict], cfg: EvalConfig,
                    samples: list[dict] | None = None, shots: list[tasks.Example] | None = None) -> list[dict]:
    """A choice task's `rows` (choice_rows of `exs`) with content-free calibration: only the
    content-free inputs go through the model, under the same prompt, shots and samples."""
    free = scoring.content_free(exs)
    return scoring.calibrated(exs, rows, free, choice_rows(base, task, free, cfg, samples, shots))


def evaluate(base: models.Base, task: tasks.Task, cfg: EvalConfig, samples: list[dict] | None = None,
             shots: list[tasks.Example] | None = None) -> dict:
    """Scores for the adapters now in `base.model` (or none; `samples`, `shots`: see `records`)."""
    exs = examples_of(task, cfg.split, cfg.limit)
    limit = (cfg.max_new_tokens or max_new_tokens(task, base.tokenizer)) if task.kind == "generate" else None
    rows, speed = records(base, task, exs, cfg, max_tokens=limit, samples=samples, shots=shots)
    scores = metrics.score(task.metric, rows, cfg.bootstrap_seed)
    return {"task": task.name, "kind": task.kind, "metric": task.metric, "split": cfg.split, "n": len(exs),
            "shots": cfg.shots, "in_context": cfg.in_context, "seed": cfg.seed, "adapters": cfg.adapters,
            **({"calibrate": cfg.calibrate} if task.kind == "choice" else {}),
            **({"max_new_tokens": limit} if limit else {}), **scores, "speed": speed,
            "_predictions": [{"id": e.id, **r} for e, r in zip(exs, rows)]}


def run(cfg: EvalConfig) -> dict:
    options.check(cfg)
    cfg.adapters = hub.adapters_folder(cfg.adapters)
    task = tasks.load(cfg.task)
    examples_of(task, cfg.split, cfg.limit)  # a missing split fails before the model loads
    check_in_context(task, cfg.in_context)
    if cfg.with_shots and cfg.in_context:
        raise UserError("--with-shots shows the adapters' own shots; --in-context draws others: give one of them")
    shots = shown_shots(task, cfg.adapters) if cfg.with_shots else None
    if shots:
        cfg.in_context = len(shots)
    pred_path = Path(cfg.predictions or Path(cfg.json).with_suffix(".predictions.jsonl")) if (
        cfg.json or cfg.predictions) else None
    for path, flag in ((cfg.json, "--json"), (pred_path, "--predictions")):
        if path is not None:  # before generating: a path that cannot be written is one line, not lost work
            if Path(path).is_dir():
                raise UserError(f"{flag} {path} is a folder; give a file name")
            writable_folder(Path(path).parent, flag)
    start = starts.read(cfg.adapters) if cfg.adapters else None
    if start is not None and not start.is_point:
        raise UserError(f"--adapters {cfg.adapters} is a {start.kind} start: it makes adapters from a task's shots; "
                        f"adapt it (mlx-reptilora adapt --shots K) and evaluate what that writes, or compare it")
    if cfg.shots is None:
        cfg.shots = adapters.recorded(cfg.adapters, "shots", 0)
    if cfg.calibrate == "auto":
        cfg.calibrate = calibration_of(cfg.adapters, cfg.shots)
    base = models.load(cfg.model, cfg.dtype, cfg.quantize, verbose=not cfg.quiet)
    if start is not None:
        hub.check_base(cfg.adapters, base)
        start.attach(base.model, cfg.adapters)
        adapters.set_weights(base.model, start.for_task(None, []))
    result = evaluate(base, task, cfg, shots=shots)
    preds = result.pop("_predictions")
    if pred_path is not None:
        atomic_write_text(pred_path, "".join(json.dumps(p) + "\n" for p in preds))
        result["predictions"] = str(pred_path)
    if cfg.json and task.kind == "choice":
        result["reliability_diagram"] = str(Path(cfg.json).with_suffix(".reliability.png"))
        charts.reliability(Path(result["reliability_diagram"]), task.name, {cfg.adapters or "base model": result})
    if cfg.json:
        atomic_write_text(cfg.json, json.dumps(result, indent=2))
    if not cfg.quiet:
        speed = result["speed"].get("generated_tokens_per_s")
        print(f"{task.name} ({cfg.split}, n={result['n']}): {metrics.describe(task.metric, result)}"
              + (f"; {speed} generated tok/s" if speed else ""))
    return result
