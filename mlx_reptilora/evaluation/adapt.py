"""`mlx-reptilora adapt`: fine-tune LoRA on k examples of a task, from the meta-learned start
(--adapters) or the standard start (B = 0: the base model itself, the paper's baseline), with the
very inner loop meta-training uses.

A start is adapted with the recipe it carries (meta/recipe.py: the steps, optimizer and learning
rates it was meta-trained to be adapted with, learned ones included); flags override it one by one.
`--steps auto` holds each shot out in turn to pick the number of steps, 0 included.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .. import options
from ..data import episodes, prompts, tasks
from ..errors import UserError
from ..meta import adaptation, recipe as recipes, start as starts
from ..meta.inner_config import OPTIMIZERS, InnerConfig, StepOptions, bucket_lengths
from ..meta.inner_loop import InnerLoop
from ..model import adapters, hub, models
from ..options import option
from ..paths import claimed

DEFAULT = recipes.Recipe("none", "adamw", 7, 5e-4, chosen_by="the defaults (the paper's LoRA setting)")


@dataclass
class AdaptOptions(StepOptions):
    """How a start is adapted to k shots (adapt, and both systems of compare)."""

    steps: str | None = option(None, "adaptation steps, or auto: hold each shot out in turn and take the number "
                                     "of steps (0 to twice the recipe's) with the lowest held-out loss; needs "
                                     "k >= 2 and costs about k times the adaptation",
                               default_text="the start's recipe, else 7")
    lr: float | None = option(None, "adaptation learning rate", gt=0,
                              max=1, default_text="the start's recipe, else 5e-4")
    optimizer: str | None = option(None, "adamw | adam0 (Adam with beta1 = 0) | sgd", choices=OPTIMIZERS,
                                   default_text="the start's recipe, else adamw")

    def plan(self, start: recipes.Recipe | None) -> recipes.Recipe:
        """The recipe to adapt with: the start's (or the defaults), each flag given overriding its part.
        A flag for the learning rate or the optimizer replaces learned rates by the plain ones."""
        given = {k: v for k, v in (("lr", self.lr), ("optimizer", self.optimizer)) if v is not None}
        steps = self.steps_value()
        if steps == "auto":
            given["auto"] = True
        elif steps is not None:
            given.update(steps=steps, auto=False)
        plan = replace(start or DEFAULT, **given)
        if "lr" in given or "optimizer" in given:
            plan = replace(plan, learned_lr=None, rates={})
        if given:
            flags = ", ".join(f"--{k} {getattr(self, k)}" for k in ("steps", "lr", "optimizer") if getattr(self, k) is not None)
            plan = replace(plan, chosen_by=f"{plan.chosen_by}, with {flags}")
        return plan

    def steps_value(self) -> int | str | None:
        if self.steps is None or str(self.steps) == "auto":
            return self.steps
        try:
            steps = int(str(self.steps))
        except ValueError:
            raise UserError(f"--steps: expected a number of steps or auto, got {self.steps!r}") from None
        if steps < 0:
            raise UserError(f"--steps must be >= 0 (got {steps})")
        return steps

    def inner(self, plan: recipes.Recipe, **over) -> InnerConfig:
        return self.inner_config(plan.steps, plan.lr, plan.optimizer, **over)


@dataclass
class AdaptConfig(models.ModelOptions, adapters.LoraOptions, AdaptOptions):
    task: str | None = option(None, "task name or folder", required=True, aliases=("--data",))
    shots: int | None = option(None, "k training examples to adapt on; 0 = no adaptation", min=0, required=True)
    adapters: str | None = option(None, "the start: a meta-learned (or any mlx-lm LoRA) adapters folder or hub "
                                        "repo id; LoRA options apply only without it",
                                  default_text="the standard LoRA start", aliases=("--adapter-path",))
    max_length: int = option(512, "max tokens per example; inputs are truncated, targets never", min=16,
                             aliases=("--max-seq-length",))
    seed: int = option(0, "which shots are drawn, and the standard start's A", min=0)
    out: str = option("runs/adapted", "output folder for the adapted adapters")
    quiet: bool = option(False, "no progress output", short="-q")


def attach_start(base: models.Base, cfg: AdaptConfig, start: starts.Start | None) -> starts.Start:
    """LoRA on the model as the start makes it: the meta-learned start, or the standard LoRA start
    (a point: A drawn from the seed, B = 0)."""
    if start is not None:
        start.attach(base.model, cfg.adapters)
        return start
    lora = cfg.lora()
    adapters.attach(base.model, lora, seed=cfg.seed)
    return starts.Point(lora, {"theta": adapters.get_weights(base.model)})


def shots_of(base: models.Base, task: tasks.Task, k: int, seed: int, max_length: int) -> tuple[list[prompts.Tokenized], list[int]]:
    """The k shots, tokenized, and their rows in the task's train split (evaluate --with-shots reads them)."""
    prepared = episodes.prepare(task, base.tokenizer, None, max_length, splits=("train",))
    return episodes.draw_shot_rows(prepared, k, seed)


def check_out(out: str | Path, start: str | None) -> None:
    """Before any work: adapting writes a task's adapters, never over a start (its recipe and
    meta.json would go on describing adapters that are gone)."""
    out = Path(out)
    if start and out.exists() and out.resolve() == Path(start).resolve():
        raise UserError(f"--out {out} is the start being adapted (--adapters): choose another --out")
    made_by = adapters.learner_of(out) or next((f for f in (recipes.RECIPE, "meta.json") if (out / f).exists()), None)
    if made_by:
        raise UserError(f"--out {out} holds a meta-learned start ({made_by}); adapt writes a task's adapters: "
                        f"choose another --out")


def run(cfg: AdaptConfig) -> Path:
    options.check(cfg)
    cfg.steps_value()
    cfg.adapters = hub.adapters_folder(cfg.adapters)  # a hub repo id is downloaded into the hub cache
    task = tasks.load(cfg.task)  # fail on a bad task, or an --out that cannot be written, before any work
    if cfg.shots:
        task.split("train")
    start = starts.read(cfg.adapters) if cfg.adapters else None
    check_out(cfg.out, cfg.adapters)
    plan = cfg.plan(recipes.read(cfg.adapters, shots=cfg.shots))
    adaptation.check_auto(plan, [cfg.shots])
    with claimed(cfg.out):
        return _run(cfg, task, plan, start)


def _run(cfg: AdaptConfig, task: tasks.Task, plan: recipes.Recipe, start: starts.Start | None) -> Path:
    base = models.load(cfg.model, cfg.dtype, cfg.quantize, verbose=not cfg.quiet)
    if cfg.adapters:
        hub.check_base(cfg.adapters, base)
    start = attach_start(base, cfg, start)
    if not cfg.quiet:
        print(f"start: {adapters.origin(cfg.adapters) if cfg.adapters else 'the standard LoRA start (B = 0)'}")
        nearest = (f"; the start's recipe for {plan.shots} shot{'s' * (plan.shots != 1)}, the nearest validated "
                   f"count to {cfg.shots}"
                   if cfg.shots and plan.shots is not None and plan.shots != cfg.shots else "")
        if start.describe():
            print(f"the start's adapters for the task: {start.describe()}")
        print(f"recipe: {plan.describe()} ({plan.chosen_by}{nearest})")
    shots, rows = shots_of(base, task, cfg.shots, cfg.seed, cfg.max_length) if cfg.shots else ([], [])
    if shots and not cfg.quiet:
        cut = sum(t.truncated for t in shots)
        print(f"{len(shots)} shots of {task.name}: {cut} truncated to --max-length {cfg.max_length}")
    inner = InnerLoop(base.model, cfg.inner(plan), bucket_lengths(cfg.max_length), rows=max(len(shots), 1),
                      say=None if cfg.quiet else print)
    unconditioned = None
    if shots and not start.is_point and not cfg.quiet:  # what the start alone makes of the shots, said below
        inner.set_weights(start.for_task(inner, []))
        unconditioned = inner.loss(shots)
    inner.set_weights(start.for_task(inner, shots))  # once: what a generator or a posterior makes costs passes
    before = inner.loss(shots) if shots else None
    if unconditioned is not None:
        print(f"the start's adapters for these shots: loss on the shots {unconditioned:.3f} without them -> "
              f"{before:.3f}")
    losses, steps = adaptation.fine_tune(inner, shots, plan, cfg.quiet)  # the model holds what it made
    after = inner.loss(shots) if shots and steps else before
    if shots and not cfg.quiet:  # the loss on the shots with dropout off, before and after the steps
        print(f"adapted on {cfg.shots} shots of {task.name} in {steps} steps: loss on the shots {before:.3f} -> "
              f"{after:.3f}")
    out = adapters.save(base.model, start.lora, cfg.out, extra={
        "start": cfg.adapters or "standard", "start_learner": adapters.learner_of(cfg.adapters), "task": task.name,
        "shots": cfg.shots, "shot_rows": rows, "seed": cfg.seed, "steps": steps, "recipe": {**recipes.as_dict(plan), "steps": steps},
        "losses": losses, "loss_before": before, "loss_after": after,
        "base_model": base.name, "base_model_id": hub.base_id(base.name, base.path)})
    if not cfg.quiet:
        print(f"adapters: {out}")
    return out
