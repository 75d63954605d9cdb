"""`mlx-reptilora compare`: the paper's table — LoRA (standard start) vs ReptiLoRA (meta start) vs
in-context — for a set of tasks at 0/1/5 shots, each k > 0 averaged over several draws of the shots.

The draws of one cell are pooled (every test example once per draw) into one bootstrap estimate,
so the interval covers both which examples were tested and which shots were drawn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import options
from ..data import episodes, prompts, tasks
from ..errors import UserError
from ..meta.inner_loop import InnerLoop, bucket_lengths
from ..model import adapters, hub, models
from ..options import option
from ..paths import atomic_write_text, claimed
from ..progress import Progress
from . import evaluate
from ..meta import recipe as recipes
from .adapt import AdaptOptions, check_auto, fine_tune

SYSTEMS = ("lora", "reptilora", "in-context")  # "reptilora": the meta-learned start, whatever its learner
LABELS = {"lora": "LoRA", "reptilora": "ReptiLoRA", "in-context": "In-context"}
META_LABELS = {"reptile": "ReptiLoRA", "fomaml": "FOMAML start", "maml": "MAML start", "meta-sgd": "Meta-SGD start"}


def label(system: str, learner: str | None = "reptile") -> str:
    """A column's name: the meta start is named after the learner that made it."""
    if system == "reptilora" and learner != "reptile":
        return META_LABELS.get(learner, "Meta start")
    return LABELS[system]


@dataclass
class CompareConfig(models.ModelOptions, evaluate.EvalOptions, AdaptOptions):
    adapters: str | None = option(None, "the meta-learned start (adapters folder)", required=True)
    tasks: list[str] = option(list(tasks.DEFAULT_TASKS), "comma-separated tasks")
    shots: list[int] = option([0, 1, 5], "comma-separated shot counts", min=0)
    draws: int = option(3, "draws of the shots per k > 0, pooled into one interval", min=1)
    systems: list[str] = option(list(SYSTEMS), "which systems to compare", choices=SYSTEMS)
    seed: int = option(0, "seed of the first draw (draw d uses seed + d)", min=0)
    out: str = option("runs/compare", "output folder")
    quiet: bool = option(False, "no progress output", short="-q")


def _cells(cfg: CompareConfig):
    for name in cfg.tasks:
        for k in cfg.shots:
            for system in cfg.systems:
                if k == 0 and system == "in-context" and "lora" in cfg.systems:
                    continue  # 0-shot in-context is the base model, which is 0-shot LoRA
                yield name, k, system


def run(cfg: CompareConfig) -> dict:
    options.check(cfg)
    cfg.steps_value()
    cfg.adapters = hub.adapters_folder(cfg.adapters)
    with claimed(cfg.out):
        return _run(cfg)


def _run(cfg: CompareConfig) -> dict:
    lora = adapters.read_config(cfg.adapters)
    meta = adapters.read_weights(cfg.adapters)
    learner = adapters.learner_of(cfg.adapters)
    loaded = {n: tasks.load(n) for n in cfg.tasks}
    for t in loaded.values():
        evaluate.examples_of(t, cfg.split, cfg.limit)
    # The meta start is adapted with its recipe, LoRA with the defaults; flags override both.
    plans = {"reptilora": cfg.plan(recipes.read(cfg.adapters)), "lora": cfg.plan(None)}
    for s, p in plans.items():
        if s in cfg.systems:
            check_auto(p, cfg.shots)
    base = models.load(cfg.model, cfg.dtype, cfg.quantize, verbose=not cfg.quiet)
    hub.check_base(cfg.adapters, base)
    adapters.attach(base.model, lora, seed=cfg.seed)  # the standard start for the LoRA baseline
    standard = adapters.get_weights(base.model)
    adapters.check_fit(base.model, meta, cfg.adapters)
    inners: dict[str, InnerLoop] = {}
    for s in (s for s in plans if s in cfg.systems):
        # both adapt the same model: the first measures an automatic micro-batch, the second takes it
        fitted = {"micro_batch": next(iter(inners.values())).cfg.micro_batch} if inners else {}
        inners[s] = InnerLoop(base.model, cfg.inner(plans[s], **fitted), bucket_lengths(cfg.max_length),
                              rows=max(cfg.shots, default=1), say=None if cfg.quiet else print)
    fmt = prompts.PromptFormat.for_tokenizer(base.tokenizer)
    train = {n: episodes.prepare(t, base.tokenizer, fmt, cfg.max_length, ("train",)).splits["train"]
             for n, t in loaded.items()}
    for n, k in ((n, k) for n in loaded for k in cfg.shots):
        if k > len(train[n]):
            raise UserError(f"--shots {k} is more than the {len(train[n])} usable training examples of {n}")

    out = Path(cfg.out)
    if not cfg.quiet:
        print(f"start: {adapters.origin(cfg.adapters)}")
        for s in inners:
            print(f"{label(s, learner)} adapts with: {plans[s].describe()} ({plans[s].chosen_by})")
    cells = list(_cells(cfg))
    progress = Progress(len(cells), quiet=cfg.quiet)
    rows = []
    for i, (name, k, system) in enumerate(cells):
        task = loaded[name]
        predictions, references = [], []
        steps = []  # per draw: --steps auto chooses per draw
        for d in range(cfg.draws if k else 1):
            seed = cfg.seed + d
            adapters.set_weights(base.model, meta if system == "reptilora" else standard)
            if k and system != "in-context":
                _, taken = fine_tune(inners[system], episodes.draw_shots(train[name], k, seed, name), plans[system])
                steps.append(taken)
            ecfg = evaluate.EvalConfig(task=name, split=cfg.split, limit=cfg.limit, batch_size=cfg.batch_size,
                                       max_length=cfg.max_length, in_context_length=cfg.in_context_length,
                                       in_context=k if system == "in-context" else 0,
                                       seed=seed, quiet=True)
            result = evaluate.evaluate(base, task, ecfg)
            predictions += [p["prediction"] for p in result["_predictions"]]
            references += [p["reference"] for p in result["_predictions"]]
        row = {"task": name, "system": system, "shots": k, "draws": cfg.draws if k else 1,
               "n": len(predictions), **evaluate.rouge(predictions, references, cfg.seed),
               **({"steps": steps} if steps else {})}
        rows.append(row)
        (out / "predictions").mkdir(exist_ok=True)
        atomic_write_text(out / "predictions" / f"{name}-{system}-{k}shot.jsonl",
            "".join(json.dumps({"prediction": p, "reference": r}) + "\n" for p, r in zip(predictions, references)))
        progress.update(i + 1, f"{name} {label(system, learner)} {k}-shot: ROUGE-L {row['rougeL']['mid']:.2f}")
    progress.close()
    if "lora" in cfg.systems and "in-context" in cfg.systems:
        rows += [{**r, "system": "in-context", "same_as": "lora 0-shot (the base model)"}
                 for r in rows if r["system"] == "lora" and r["shots"] == 0]
    result = {"config": options.to_dict(cfg), "start_learner": learner, "rows": rows,
              "recipes": {s: recipes.as_dict(p) for s, p in plans.items() if s in inners}}
    atomic_write_text(out / "results.json", json.dumps(result, indent=2))
    table = markdown_table(rows, cfg, learner)
    atomic_write_text(out / "table.md", table)
    for name in cfg.tasks:
        chart(rows, name, cfg, out / f"{name}.png", learner)
    if not cfg.quiet:
        print(table)
        print(f"results: {out}/results.json, {out}/table.md, charts {out}/<task>.png")
    return result


def _cell(rows, task, system, k):
    return next((r for r in rows if (r["task"], r["system"], r["shots"]) == (task, system, k)), None)


def markdown_table(rows: list[dict], cfg: CompareConfig, learner: str | None = "reptile") -> str:
    systems = [s for s in SYSTEMS if s in cfg.systems]
    metrics = (("rougeL", "R-L"), ("rouge1", "R-1"), ("rouge2", "R-2"))
    head = "| task | shots | " + " | ".join(f"{label(s, learner)} {m}" for _, m in metrics for s in systems) + " |"
    lines = [head, "|" + " --- |" * (2 + len(metrics) * len(systems))]
    for name in cfg.tasks:
        for k in cfg.shots:
            cells = []
            for key, _ in metrics:
                for s in systems:
                    r = _cell(rows, name, s, k)
                    cells.append(f"{r[key]['mid']:.2f} [{r[key]['low']:.1f}, {r[key]['high']:.1f}]" if r else "–")
            lines.append(f"| {name} | {k} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"ROUGE F x100, bootstrap mean [95% interval]; k > 0: {cfg.draws} draws of the shots pooled; "
                 f"split {cfg.split}" + (f", first {cfg.limit} examples" if cfg.limit else "") + ".")
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], task: str, cfg: CompareConfig, path: Path, learner: str | None = "reptile") -> None:
    """Grouped bars like the paper's Figures 2-3: groups = shots, hatched = ReptiLoRA, solid = LoRA."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [s for s in SYSTEMS if s in cfg.systems]
    style = {"lora": dict(color="#4C72B0"), "reptilora": dict(color="#DD8452", hatch="//", edgecolor="black"),
             "in-context": dict(color="#8C8C8C")}
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    width = 0.8 / len(systems)
    for j, s in enumerate(systems):
        xs, ys, errs = [], [], [[], []]
        for i, k in enumerate(cfg.shots):
            r = _cell(rows, task, s, k)
            if r:
                xs.append(i + (j - (len(systems) - 1) / 2) * width)
                ys.append(r["rougeL"]["mid"])
                errs[0].append(r["rougeL"]["mid"] - r["rougeL"]["low"])
                errs[1].append(r["rougeL"]["high"] - r["rougeL"]["mid"])
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=label(s, learner), **style[s])
    ax.set_xticks(range(len(cfg.shots)), [f"{k}-shot" for k in cfg.shots])
    ax.set_ylabel("ROUGE-L F (x100)")
    ax.set_title(task)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
