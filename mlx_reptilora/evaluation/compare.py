"""`mlx-reptilora compare`: the paper's table — LoRA (standard start) vs the meta-learned start vs
in-context — for a set of tasks at 0/1/5 shots, each k > 0 averaged over several draws of the shots,
each task scored by its own metric.

The draws of one cell are pooled (every test example once per draw) into one bootstrap estimate,
so the interval covers both which examples were tested and which shots were drawn. Everything is
written under --out, named by each task's name (a folder's safe label).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import options
from ..data import episodes, tasks
from ..errors import UserError
from ..meta import config as meta_config, recipe as recipes, start as starts
from ..meta.adaptation import Loops, adapt, check_auto
from ..meta.inner_config import bucket_lengths
from ..model import adapters, hub, models
from ..options import option
from ..paths import atomic_write_text, claimed
from ..progress import Progress
from . import charts, evaluate, metrics
from .report import ALIASES, canonical, cell, fmt
from .adapt import AdaptOptions

# "meta": the meta-learned start, whatever its learner; "meta+in-context": adapted, and its shots in the prompt too
SYSTEMS = ("lora", "meta", "in-context")  # the default
ALL_SYSTEMS = SYSTEMS + ("meta+in-context",)
LABELS = {"lora": "LoRA", "in-context": "In-context"}


def learner_label(start: str | None) -> str:
    """A start's column name, after the learner that made it (the registry's label: MAML with learned
    per-step rates is MAML++)."""
    learner = adapters.recorded(start, "learner", {})
    learner = learner if isinstance(learner, dict) else {}
    return meta_config.label(learner, learner.get("learner") or adapters.learner_of(start))


def label(system: str, start_label: str = "Meta start") -> str:
    """A column's name: the meta start is named after its learner (`learner_label`)."""
    system = canonical(system)
    if system == "meta+in-context":
        return f"{start_label} + in-context"
    return start_label if system == "meta" else LABELS[system]


@dataclass
class CompareConfig(models.ModelOptions, evaluate.EvalOptions, AdaptOptions):
    adapters: str | None = option(None, "the meta-learned start (adapters folder)", required=True,
                                  aliases=("--adapter-path",))
    tasks: list[str] = option(list(tasks.DEFAULT_TASKS), "comma-separated task names or folders")
    shots: list[int] = option([0, 1, 5], "comma-separated shot counts", min=0)
    draws: int = option(3, "draws of the shots per k > 0, pooled into one interval", min=1)
    systems: list[str] = option(list(SYSTEMS), "which systems to compare (reptilora: meta; "
                                                       "meta+in-context: the adapted start with its shots in the "
                                                       "prompt too)",
                                choices=ALL_SYSTEMS + tuple(ALIASES))
    seed: int = option(0, "seed of the first draw (draw d uses seed + d)", min=0)
    samples: int | None = option(None, "a start that is a distribution (abmll): posterior samples whose option "
                                       "probabilities a choice prediction averages; 0: the posterior mean alone",
                                 min=0, default_text="the start's own")
    out: str = option("runs/compare", "output folder")
    quiet: bool = option(False, "no progress output", short="-q")

    def __post_init__(self):
        self.systems = list(dict.fromkeys(canonical(s) for s in self.systems))


def _cells(cfg: CompareConfig, loaded: dict):
    for name, task in loaded.items():
        for k in cfg.shots:
            for system in cfg.systems:
                if k == 0 and system == "in-context" and "lora" in cfg.systems:
                    continue  # 0-shot in-context is the base model, which is 0-shot LoRA
                if k == 0 and system == "meta+in-context" and "meta" in cfg.systems:
                    continue  # no shots to show: the meta start's own 0-shot cell
                if k and system in ("in-context", "meta+in-context") and task.kind == "text":
                    continue  # a text task has no answers to show
                yield name, k, system


def run(cfg: CompareConfig) -> dict:
    options.check(cfg)
    cfg.steps_value()
    cfg.adapters = hub.adapters_folder(cfg.adapters)
    with claimed(cfg.out):
        return _run(cfg)


def _run(cfg: CompareConfig) -> dict:
    start = starts.read(cfg.adapters)
    learner, start_label = adapters.learner_of(cfg.adapters), learner_label(cfg.adapters)
    loaded = {t.name: t for t in tasks.load_many(cfg.tasks)}
    for t in loaded.values():
        evaluate.examples_of(t, cfg.split, cfg.limit)
    # The meta start is adapted with its recipe for k shots, LoRA with the defaults; flags override both.
    adapted = {"meta+in-context": "meta"}  # whose adaptation a system takes
    plans = {(s, k): cfg.plan(recipes.read(cfg.adapters, shots=k) if s == "meta" else None)
             for s in ("meta", "lora") if s in {adapted.get(x, x) for x in cfg.systems} for k in cfg.shots if k}
    for (_, k), p in plans.items():
        check_auto(p, [k])
    base = models.load(cfg.model, cfg.dtype, cfg.quantize, verbose=not cfg.quiet)
    hub.check_base(cfg.adapters, base)
    adapters.attach(base.model, start.lora, seed=cfg.seed)  # the standard start for the LoRA baseline
    standard = starts.Point(start.lora, {"theta": adapters.get_weights(base.model)})
    start.check_fit(base.model, cfg.adapters)
    inner = Loops(base.model, cfg.inner, bucket_lengths(cfg.max_length), rows=max(cfg.shots, default=1),
                  say=None if cfg.quiet else print)
    for p in plans.values():
        inner(p)
    train = {n: episodes.prepare(t, base.tokenizer, None, cfg.max_length, ("train",)) for n, t in loaded.items()}
    for n, k in ((n, k) for n in loaded for k in cfg.shots):
        if k > len(train[n].splits["train"]):
            raise UserError(f"--shots {k} is more than the {len(train[n].splits['train'])} usable training examples of {n}")

    out = Path(cfg.out)
    if not cfg.quiet:
        print(f"start: {adapters.origin(cfg.adapters)}")
        for (s, k), p in plans.items():
            print(f"{label(s, start_label)} adapts at {k} shot{'s' * (k != 1)} with: {p.describe()} ({p.chosen_by})")
    # --calibrate auto: the start's systems as its recipe for k shots chose, LoRA and in-context none
    calibration = {k: evaluate.calibration_of(cfg.adapters, k) if cfg.calibrate == "auto" else cfg.calibrate
                   for k in cfg.shots}
    uncalibrated = "none" if cfg.calibrate == "auto" else cfg.calibrate
    cells = list(_cells(cfg, loaded))
    progress = Progress(len(cells), quiet=cfg.quiet)
    rows = []
    for i, (name, k, system) in enumerate(cells):
        task = loaded[name]
        records = []
        steps = []  # per draw: --steps auto chooses per draw
        for d in range(cfg.draws if k else 1):
            seed = cfg.seed + d
            begin = start if adapted.get(system, system) == "meta" else standard
            shown = None  # the in-context prompt's shots: drawn by evaluate with the seed, or the adaptation's
            if system == "in-context" or not k:  # the start un-adapted (a generator's for no shots)
                adapters.set_weights(base.model, begin.for_task(inner.any(), []))
            else:
                plan = plans[adapted.get(system, system), k]
                shots, shot_rows = episodes.draw_shot_rows(train[name], k, seed)
                _, taken = adapt(begin, inner(plan), shots, plan)
                steps.append(taken)
                shown = [task.split("train")[r] for r in shot_rows] if system == "meta+in-context" else None
            ecfg = evaluate.EvalConfig(task=name, split=cfg.split, limit=cfg.limit, batch_size=cfg.batch_size,
                                       max_length=cfg.max_length, in_context_length=cfg.in_context_length,
                                       in_context=k if system in ("in-context", "meta+in-context") else 0,
                                       calibrate=calibration[k] if adapted.get(system, system) == "meta"
                                       else uncalibrated, shots=k, seed=seed, quiet=True)
            drawn = begin.samples(cfg.samples) if task.kind == "choice" and system != "in-context" else []
            result = evaluate.evaluate(base, task, ecfg, samples=drawn, shots=shown)
            records += [{"draw": d, **p} for p in result["_predictions"]]
        row = {"task": name, "system": system, "shots": k, "draws": cfg.draws if k else 1, "n": len(records),
               "kind": task.kind, "metric": task.metric, **metrics.score(task.metric, records, cfg.seed),
               **({"steps": steps} if steps else {}), **({"calibrate": ecfg.calibrate} if task.kind == "choice" else {})}
        rows.append(row)
        (out / "predictions").mkdir(exist_ok=True)
        atomic_write_text(out / "predictions" / f"{name}-{system}-{k}shot.jsonl",
                          "".join(json.dumps(r) + "\n" for r in records))
        progress.update(i + 1, f"{name} {label(system, start_label)} {k}-shot: {metrics.describe(task.metric, row)}")
    progress.close()
    if "lora" in cfg.systems and "in-context" in cfg.systems:
        rows += [{**r, "system": "in-context", "same_as": "lora 0-shot (the base model)"}
                 for r in rows if r["system"] == "lora" and r["shots"] == 0]
    result = {"config": options.to_dict(cfg), "start_learner": learner, "start_label": start_label, "rows": rows,
              "recipes": {f"{s}/{k}": recipes.as_dict(p) for (s, k), p in plans.items()}}
    atomic_write_text(out / "results.json", json.dumps(result, indent=2))
    table = markdown_table(rows, cfg, start_label)
    atomic_write_text(out / "table.md", table)
    for name, task in loaded.items():
        chart(rows, name, cfg, out / f"{name}.png", start_label)
        if task.kind == "choice":
            reliability_chart(rows, name, cfg, out / f"{name}-reliability.png", start_label)
    if not cfg.quiet:
        print(table)
        some = next(iter(loaded))
        print(f"results: {out / 'results.json'}, {out / 'table.md'}, charts {out / some}.png"
              + (" and the other tasks' beside it" if len(loaded) > 1 else ""))
    return result


def _metric(rows: list[dict], task: str) -> str:
    return next((r.get("metric", "rouge") for r in rows if r["task"] == task), "rouge")  # older rows: ROUGE


def _names(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["task"] for r in rows))


def markdown_table(rows: list[dict], cfg: CompareConfig, start_label: str = "Meta start") -> str:
    """One line per task and shot count: each system's headline score on the task's own metric, then
    the other scores (ROUGE-1/2; a choice task's NLL and ECE)."""
    systems = [s for s in ALL_SYSTEMS if s in cfg.systems]
    head = "| task | metric | shots | " + " | ".join(label(s, start_label) for s in systems) + " |"
    lines = [head, "|" + " --- |" * (3 + len(systems))]
    details = []
    for name in _names(rows):
        metric = _metric(rows, name)
        key, what, higher = metrics.HEADLINE[metric]
        for k in cfg.shots:
            cells = []
            for s in systems:
                r = cell(rows, name, s, k)
                cells.append(fmt(r, key))
                if r and metric in ("rouge", "accuracy") and not r.get("same_as"):
                    details.append(f"| {name} | {k} | {label(s, start_label)} | {metrics.describe(metric, r)} |")
            lines.append(f"| {name} | {what}{'' if higher else ' (lower is better)'} | {k} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Bootstrap mean [95% interval], rates x100; k > 0: {cfg.draws} draws of the shots pooled; "
                 f"split {cfg.split}" + (f", first {cfg.limit} examples" if cfg.limit else "") + ".")
    if details:
        lines += ["", "| task | shots | system | all scores |", "| --- | --- | --- | --- |", *details]
    return "\n".join(lines) + "\n"


STYLES = {"lora": dict(color="#4C72B0"), "meta": dict(color="#DD8452", hatch="//", edgecolor="black"),
          "in-context": dict(color="#8C8C8C"), "meta+in-context": dict(color="#DD8452", hatch="..", edgecolor="black")}


def chart(rows: list[dict], task: str, cfg: CompareConfig, path: Path, start_label: str = "Meta start") -> None:
    """Grouped bars like the paper's Figures 2-3: groups = shots, hatched = the meta start, solid = LoRA;
    the task's own metric."""
    systems = [s for s in ALL_SYSTEMS if s in cfg.systems]
    series = {label(s, start_label): {k: cell(rows, task, s, k) for k in cfg.shots if cell(rows, task, s, k)}
              for s in systems}
    styles = {label(s, start_label): STYLES[s] for s in systems}
    charts.bars(path, task, _metric(rows, task), cfg.shots, series, styles)


def reliability_chart(rows: list[dict], task: str, cfg: CompareConfig, path: Path, start_label: str = "Meta start") -> None:
    """A choice task's reliability diagram: the base model (0 shots) and each system at the most shots."""
    k = max(cfg.shots)
    series = {}
    base = cell(rows, task, "lora", 0) or cell(rows, task, "in-context", 0)
    if base:
        series["base model, 0-shot"] = base
    for s in (s for s in ALL_SYSTEMS if s in cfg.systems):
        r = cell(rows, task, s, k)
        if r and k:
            series[f"{label(s, start_label)}, {k}-shot"] = r
    charts.reliability(path, task, series)
