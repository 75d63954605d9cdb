"""Adapting a start to a task: the adapters it makes from the task's shots, then the recipe's
steps (meta/recipe.py) with the inner loop meta-training uses. What adapt, compare and
meta-validation share; `--steps auto` holds each shot out in turn to pick the number of steps."""

from __future__ import annotations

import time

import numpy as np

from ..errors import UserError
from . import recipe as recipes
from .inner_loop import InnerLoop
from .start import Start


def adapt(start: Start, inner: InnerLoop, shots, plan: recipes.Recipe, quiet: bool = True) -> tuple[list[float], int]:
    """The start's adapters for the task of `shots`, then k-shot fine-tuning with the plan:
    (per-step losses, steps taken). The adapted adapters are the model's."""
    inner.set_weights(start.for_task(inner, shots))
    return fine_tune(inner, shots, plan, quiet)


class Loops:
    """One inner loop per (optimizer, lr) over one model, its config `config(recipe, **over)`: a
    loop's compiled step serves every number of steps (adapt_with passes them). The first loop
    measures an automatic micro-batch unless `micro_batch` is given; the others take the same."""

    def __init__(self, model, config, buckets: list[int], rows: int = 1, say=None, micro_batch: int | None = None):
        self.model, self.config, self.buckets, self.rows, self.say = model, config, buckets, rows, say
        self.micro_batch, self.loops = micro_batch, {}

    def __call__(self, plan: recipes.Recipe) -> InnerLoop:
        key = (plan.optimizer, plan.lr)
        if key not in self.loops:
            over = {} if self.micro_batch is None else {"micro_batch": self.micro_batch}
            self.loops[key] = InnerLoop(self.model, self.config(plan, **over), self.buckets, rows=self.rows, say=self.say)
            self.micro_batch = self.loops[key].cfg.micro_batch
        return self.loops[key]

    def any(self) -> InnerLoop:
        """A loop to read with (a start's `for_task`, losses): the first, or one made for that."""
        return next(iter(self.loops.values()), None) or self(recipes.Recipe("none", "adamw", 0, 5e-4))


def adapt_with(inner: InnerLoop, shots, plan: recipes.Recipe, steps: int | None = None) -> list[float]:
    """`steps` (the plan's by default) of the plan's inner loop from the adapters in the model."""
    steps = plan.steps if steps is None else steps
    if steps == 0:
        return []
    if plan.learned_lr:
        return inner.sgd_steps(inner.weights(), shots, plan.rate, steps).losses
    inner.reset_optimizer()
    return inner.adapt(shots, steps)


def check_auto(plan: recipes.Recipe, shot_counts) -> None:
    """Before any work: `--steps auto` (a flag or the start's recipe) needs 2 or more shots."""
    if plan.auto and 1 in shot_counts:
        raise UserError("--steps auto holds shots out to choose: it needs --shots 2 or more")


def auto_steps(inner: InnerLoop, shots, plan: recipes.Recipe, most: int) -> tuple[int, list[float]]:
    """Leave one shot out at a time: adapt on the others for up to `most` steps, the held-out shot's
    loss after each (0 steps included). The number of steps with the lowest mean held-out loss, and
    those means."""
    if len(shots) < 2:
        raise UserError("--steps auto holds shots out to choose: it needs --shots 2 or more")
    start = inner.weights()
    held_out = np.zeros(most + 1)
    for j in range(len(shots)):
        rest, held = shots[:j] + shots[j + 1:], [shots[j]]
        inner.set_weights(start)
        inner.reset_optimizer()
        held_out[0] += inner.loss(held)
        for t in range(1, most + 1):
            if plan.learned_lr:
                inner.sgd_steps(inner.weights(), rest, lambda _, t=t: plan.rate(t - 1), 1)
            else:
                inner.adapt(rest, 1)
            held_out[t] += inner.loss(held)
    inner.set_weights(start)
    means = (held_out / len(shots)).tolist()
    return int(np.argmin(means)), means


def fine_tune(inner: InnerLoop, shots, plan: recipes.Recipe, quiet: bool = True) -> tuple[list[float], int]:
    """k-shot fine-tuning of the adapters now in the model: (per-step losses, steps taken)."""
    if not shots:
        return [], 0
    steps = plan.steps
    if plan.auto:
        t0 = time.perf_counter()
        steps, means = auto_steps(inner, shots, plan, 2 * plan.steps)
        if not quiet:
            print(f"--steps auto: {steps} steps (mean held-out loss after 0..{len(means) - 1} steps: "
                  f"{', '.join(f'{m:.3f}' for m in means)}; {time.perf_counter() - t0:.1f} s for {len(shots)} folds)")
    return adapt_with(inner, shots, plan, steps), steps
