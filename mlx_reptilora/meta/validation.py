"""Meta-validation, as meta-training sees it: a hook this layer declares and the commands wire in.
What it runs (adapting to held-out tasks, generating, scoring) lives above, in
evaluation/validate.py; here are its options and how its verdicts choose the start that is kept.

    build = hook(cfg)                  # before any work: its tasks are checked (one-line errors)
    check = build(setup)               # once the model is loaded, on rank 0
    record = check(start, recipe, t)   # {"score", "loss", "recipe", ...} for the start after episode t
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

from ..options import option
from . import recipe as recipes
from .start import Start


@dataclass
class ValidOptions:
    valid_tasks: list[str] = option([], "tasks never trained on that meta-validate the start every --valid-every "
                                        "episodes; the best start is kept and its best adaptation setting becomes "
                                        "its recipe", default_text="none: no meta-validation")
    valid_every: int = option(50, "meta-validate every N episodes, and after the last", min=1)
    valid_shots: list[int] = option([1, 5], "shot counts the start is adapted on for validation; each gets its own "
                                            "recipe, and adapt takes the nearest count's", min=1)
    valid_steps: list[float] = option([0.0, 1.0, 2.0], "validation grid: multiples of the recipe's steps; 0 is "
                                                        "the start as it is, so a shot count at which adapting "
                                                        "scores lower is adapted with 0 steps", min=0)
    valid_lr_scales: list[float] = option([1.0, 0.3], "validation grid: multiples of the recipe's learning "
                                                      "rate (or learned rates)", gt=0)
    valid_choice_score: str = option("accuracy", "how validation scores a choice task: accuracy, or balanced (the "
                                                 "mean over right answers of their rows' accuracy, so answering "
                                                 "every row alike scores chance however the answers are "
                                                 "balanced)", choices=("accuracy", "balanced"))
    valid_calibrate: bool = option(False, "also score choice tasks with content-free calibration at each shot "
                                          "count's chosen setting; where that scores higher on average, the "
                                          "recipe says so and evaluate, compare (--calibrate auto) apply it. "
                                          "Which start is kept and its steps are chosen as without it")
    valid_limit: int = option(32, "valid-split examples scored per validation task", min=1)
    valid_batch_size: int = option(32, "sequences generated or scored together in validation", min=1)


class Check(Protocol):
    def __call__(self, start: Start, recipe: recipes.Recipe, episode: int) -> dict: ...


Hook = Callable[[object], Callable[[object], Check]]  # config -> (setup -> check), as above


@dataclass
class Best:
    """The best start meta-validation has seen: its meta-parameters and the recipe chosen for it."""

    score: float
    loss: float
    episode: int
    recipe: dict
    params: dict

    def info(self) -> dict:
        return {"score": self.score, "loss": self.loss, "episode": self.episode, "recipe": self.recipe}


def validate(check: Check, start: Start, recipe: recipes.Recipe, params: dict, episode: int, best: Best | None,
             log) -> tuple[dict, Best | None]:
    """Validate the start after `episode`: (its metrics record, the best so far, this one if it won)."""
    t0 = time.perf_counter()
    record = check(start, recipe, episode)
    improved = best is None or (record["score"], -record["loss"]) > (best.score, -best.loss)
    if improved:
        best = Best(record["score"], record["loss"], episode, record["recipe"], params)
    record.update(best=improved, valid_seconds=round(time.perf_counter() - t0, 1))
    steps = ", ".join(f"{r['steps']} at {k}" for k, r in record["recipe"]["by_shots"].items())
    log(f"validation after episode {episode + 1}: mean valid score {record['score']:.2f} with steps {steps} "
        f"shot(s)" + (" (new best)" if improved else f"; the best stays episode {best.episode + 1} ({best.score:.2f})")
        + f", {record['valid_seconds']} s")
    return record, best
