"""Meta-validation: every --valid-every episodes, the current θ is adapted on k shots of each
--valid-tasks task (never trained on) with the start's recipe and a small grid around it (steps x
learning-rate scale, and 0 steps: the start as it is), and scored on the task's valid split: query
loss and the task's own headline score (ROUGE-L or exact match of greedy generations, a choice
task's accuracy or balanced accuracy, a text task's negative loss). For each shot count the best
grid point becomes that count's recipe, so a start whose adaptation at k shots scores below no
adaptation at all is adapted with 0 steps at k; with --valid-calibrate the recipe also says whether
content-free calibration raised that point's mean score. meta-train keeps the θ whose per-count
best points score highest on average (early stopping) and writes their recipes into the start, so
`adapt` uses what held-out tasks chose.

Validation lives here, above the meta layer, because it generates and scores; meta/validation.py
declares the hook (`hook` below) and the commands wire it in.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..data import episodes, hygiene, prompts, tasks
from ..errors import UserError
from ..meta import recipe as recipes
from ..meta.adaptation import Loops, adapt
from ..meta.config import MetaTrainConfig
from ..meta.inner_config import bucket_lengths
from ..meta.setup import Setup
from ..meta.start import Start
from . import evaluate, metrics


def grid(cfg: MetaTrainConfig, recipe: recipes.Recipe) -> list[recipes.Recipe]:
    """The start's recipe and its neighbours: each steps multiple x each learning-rate scale; a
    multiple of 0 is one point, the start un-adapted."""
    out = [replace(recipe, steps=0, auto=False)] if 0 in cfg.valid_steps else []
    for mult in (m for m in cfg.valid_steps if m > 0):
        for scale in cfg.valid_lr_scales:
            steps = max(1, int(round(mult * recipe.steps)))
            out.append(replace(recipe, steps=steps, lr=recipe.lr * (1 if recipe.learned_lr else scale),
                               scale=scale if recipe.learned_lr else 1.0))
    return out


def key(r: recipes.Recipe) -> str:
    if r.steps == 0:
        return "0 steps"
    lr = f"rates x{r.scale:g}" if r.learned_lr else f"lr {r.lr:g}"
    return f"{r.steps} steps, {lr}"


class Validator:
    """Built once per run (after the model loads); called with the start and its recipe at an episode."""

    def __init__(self, cfg: MetaTrainConfig, s: Setup, loaded: list[tasks.Task] | None = None):
        self.cfg, self.s = cfg, s
        loaded = loaded or tasks.load_many(cfg.valid_tasks, tasks.TaskConfig(train_cap=cfg.train_cap))
        tok = s.base.tokenizer
        self.data = {}
        for t in loaded:
            train_split = episodes.prepare(t, tok, None, cfg.max_length, ("train",)).splits["train"]
            exs = evaluate.examples_of(t, "valid", cfg.valid_limit)
            self.data[t.name] = {
                "task": t,
                "shots": {k: episodes.draw_shots(train_split, k, cfg.seed, t.name, "--valid-shots") for k in cfg.valid_shots},
                "valid": exs,
                "tokenized": [x for x in prompts.tokenize(prompts.PromptFormat.for_task(tok, t), tok,
                                                          exs, cfg.max_length) if x is not None],
                "prompts": prompts.in_context(tok, [], exs, cfg.max_length, t.instruction) if t.kind == "generate" else None,
                "max_new_tokens": evaluate.max_new_tokens(t, tok) if t.kind == "generate" else None,
                "calibrate": t.kind == "choice" and cfg.valid_calibrate}
        # loops of their own, reused across validations: meta-training's loop (and a carried
        # optimizer's state) is never touched
        self._loop = Loops(s.base.model, lambda r, **over: cfg.inner_config(r.steps, r.lr, r.optimizer, **over),
                           bucket_lengths(cfg.max_length), micro_batch=s.inner.cfg.micro_batch)

    def __call__(self, start: Start, recipe: recipes.Recipe, episode: int) -> dict:
        """{"episode", "valid": {task: {k: {grid point: {loss, score}}}}, and what `choose` makes of them}."""
        points = {key(r): r for r in grid(self.cfg, recipe)}
        results: dict = {}
        for name, d in self.data.items():
            results[name] = {}
            unadapted = None  # a point start un-adapted is the same for every shot count: scored once
            for k, shots in d["shots"].items():
                results[name][k] = {}
                for point, r in points.items():
                    if r.steps == 0 and unadapted is not None:
                        results[name][k][point] = unadapted
                        continue
                    inner = self._loop(r)
                    adapt(start, inner, shots, r)
                    results[name][k][point] = {"loss": round(inner.loss(d["tokenized"]), 4), **self.score(d)}
                    if r.steps == 0:
                        unadapted = results[name][k][point] if start.is_point else None
        return {"episode": episode, "metrics": {n: d["task"].metric for n, d in self.data.items()}, "valid": results,
                **choose(results, points, list(self.cfg.valid_shots), f"episode {episode + 1}")}


    def score(self, d: dict) -> dict:
        """The task's headline score for the adapters in the model, higher better ({"score"}), and
        with --valid-calibrate on a choice task the same rows' score calibrated ({"calibrated"})."""
        t = d["task"]
        ecfg = evaluate.EvalConfig(task=t.name, batch_size=self.cfg.valid_batch_size, max_length=self.cfg.max_length,
                                   calibrate="none")
        rows, _ = evaluate.records(self.s.base, t, d["valid"], ecfg, d["prompts"], d["max_new_tokens"])
        out = {"score": round(self.headline(t, rows), 3)}
        if d["calibrate"]:  # the rows' own passes are shared
            out["calibrated"] = round(self.headline(t, evaluate.calibrated_rows(self.s.base, t, d["valid"], rows, ecfg)), 3)
        return out

    def headline(self, t: tasks.Task, rows: list[dict]) -> float:
        if t.kind == "choice" and self.cfg.valid_choice_score == "balanced":
            # adapting on a few shots can move only the label prior (every row given the shots'
            # answer); accuracy rewards that wherever one answer is common
            return 100 * metrics.balanced_accuracy(rows)
        return metrics.headline(t.metric, metrics.score(t.metric, rows))


def _score(entry: dict) -> float:
    return entry["score"] if "score" in entry else entry["rougeL"]  # runs from before every metric: ROUGE-L


def choose(results: dict, points: dict[str, recipes.Recipe], counts: list[int], when: str) -> dict:
    """From validation scores ({task: {k: {point: {loss, score}}}}): for each shot count the point
    with the best score averaged over tasks (ties: the lower mean loss) is that count's recipe; the
    score and loss average those best points over the counts; the top-level recipe is the best single
    point over every count. {"means", "score", "loss", "recipe"}."""
    def mean(metric: str, p: str, ks) -> float:
        get = {"score": _score, "calibrated": lambda e: e.get("calibrated", _score(e))}.get(metric, lambda e: e[metric])
        return float(np.mean([get(results[n][k][p]) for n in results for k in ks]))

    def best(ks) -> str:
        return max(points, key=lambda p: (mean("score", p, ks), -mean("loss", p, ks)))

    def chosen(p: str, ks, what: str) -> dict:
        said = (f"meta-validation at {when} on {', '.join(results)} ({what}): mean valid score "
                f"{mean('score', p, ks):.2f}, best of {len(points)} settings")
        if points[p].steps == 0:
            said += " (adapting scored lower than the start as it is)"
        # calibration is judged at the chosen setting, so the kept start and its steps are what they
        # are without it; a tie keeps the probabilities as they are
        calibrate = "content-free" if mean("calibrated", p, ks) > mean("score", p, ks) else "none"
        if any("calibrated" in results[n][k][p] for n in results for k in ks):
            said += f"; calibrated {mean('calibrated', p, ks):.2f}"
        return recipes.as_dict(replace(points[p], chosen_by=said, calibrate=calibrate))

    per_count = {k: best([k]) for k in counts}
    recipe = {**chosen(best(counts), counts, f"{', '.join(map(str, counts))} shots"),
              "by_shots": {str(k): {**chosen(p, [k], f"{k} shot{'s' * (k != 1)}"), "shots": k}
                           for k, p in per_count.items()}}
    return {"means": {str(k): {p: round(mean("score", p, [k]), 3) for p in points} for k in counts},
            "score": round(float(np.mean([mean("score", p, [k]) for k, p in per_count.items()])), 3),
            "loss": round(float(np.mean([mean("loss", p, [k]) for k, p in per_count.items()])), 4),
            "recipe": recipe}


def check(cfg: MetaTrainConfig) -> list[tasks.Task]:
    """Before any work: validation tasks exist, have the splits it reads, and are not trained on.
    The loaded validation tasks (the Validator takes them, so they are loaded once)."""
    overlap = sorted(set(cfg.valid_tasks) & set(cfg.tasks))
    if overlap:
        raise UserError(f"--valid-tasks {', '.join(overlap)} also in --tasks: validation tasks are never trained on")
    trained = tasks.groups(cfg.tasks)  # by name: no training task needs loading for this
    for group, names in tasks.groups(cfg.valid_tasks).items():
        if group in trained:
            raise UserError(f"--valid-tasks {names[0]} shares its documents with the training task "
                            f"{trained[group][0]} (group {group}): choose a validation task of another group")
    loaded = tasks.load_many(cfg.valid_tasks, tasks.TaskConfig(train_cap=cfg.train_cap))
    trained_rows = {t.name: t.splits for t in tasks.load_many(cfg.tasks, tasks.TaskConfig(train_cap=cfg.train_cap))}
    for t in loaded:
        for line in hygiene.shared_rows(t.name, t.splits, trained_rows):
            hygiene.say(line)
        t.split("valid")
        if len(t.split("train")) < max(cfg.valid_shots):
            raise UserError(f"--valid-shots {max(cfg.valid_shots)}: {t.name} has {len(t.split('train'))} training examples")
    return loaded


def hook(cfg: MetaTrainConfig):
    """meta/validation.py's hook: the checks now, before any work; the Validator once the run's setup
    exists."""
    loaded = check(cfg)
    return lambda s: Validator(cfg, s, loaded)
