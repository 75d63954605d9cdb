"""Reptile (Nichol et al., 2018) on LoRA adapters, as in ReptiLoRA (Kim et al., 2025).

For each of n tasks: φ_j = T inner steps from θ on its support set; then θ ← θ + α (mean_j φ_j − θ).
The query sets are not used for training (only for monitoring).
"""

from __future__ import annotations

from dataclasses import dataclass

from mlx.utils import tree_map

from ..options import option
from .learner import Learner, TaskResult


@dataclass
class ReptileOptions:
    meta_lr: float = option(0.1, "reptile: step size α of θ ← θ + α(φ − θ)", gt=0, max=1)
    meta_lr_final: float | None = option(None, "reptile: anneal α linearly to this over the run", min=0, max=1,
                                         default_text="constant")
    reset_optimizer: bool = option(True, "a fresh inner optimizer per task (the paper) or carried across tasks "
                                         "(the original Reptile)", flag="--reset-optimizer/--carry-optimizer")


def interpolate(theta: dict, adapted: dict, lr: float) -> dict:
    return tree_map(lambda t, a: t + lr * (a - t), theta, adapted)


def meta_lr(episode: int, episodes: int, start: float, final: float | None) -> float:
    """Linear annealing from `start` to `final` over the run (constant when final is None)."""
    if final is None or episodes <= 1:
        return start
    return start + (final - start) * episode / (episodes - 1)


class Reptile(Learner):
    name, label = "reptile", "Reptile start"
    options = (ReptileOptions,)

    def task(self, params, episode, inner, rng, t) -> TaskResult:
        phi, losses = inner.adapt_from(params["theta"], episode.support, self.cfg.reset_optimizer, rng)
        return TaskResult({"theta": phi}, phi, {"inner_losses": losses})

    def update(self, params, mean_phi, t):
        return {"theta": interpolate(params["theta"], mean_phi["theta"], self.alpha(t))}

    def alpha(self, t: int) -> float:
        return meta_lr(t, self.episodes, self.cfg.meta_lr, self.cfg.meta_lr_final)

    def outer_metrics(self, t: int) -> dict:
        return {"meta_lr": self.alpha(t)}

    def describe(self) -> dict:
        return {**super().describe(), "meta_lr": self.cfg.meta_lr, "meta_lr_final": self.cfg.meta_lr_final}
