"""What a meta-learner is, and what the gradient-based ones share.

A learner gets θ (the adapters, a flat {name: array} dict), a meta-batch of episodes (support and
query examples) and the shared inner loop, and returns the new θ with its metrics:

    theta, result = learner.step(theta, episodes, inner, t)

A step is three parts, so each learner only writes its own rule: what one task contributes from θ
(`task`), the mean over the meta-batch (`mean`, then `world.mean`: the one place a distributed run
communicates), and the outer update (`update`). State a learner keeps across episodes (an outer
optimizer's moments) is exposed as flat arrays for checkpoints.

Each task draws its dropout masks and inner batches from a seed of its own (the run's seed and the
episode's index in the sampler), so a task computes the same thing on whichever rank adapts it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map

from ..options import option
from .distributed import World
from .inner_loop import InnerLoop, NonFiniteLoss


def task_seed(seed: int, index: int) -> int:
    """The RNG seed of the task drawn index-th: a resumed or distributed run needs no RNG state."""
    return (seed * 1_000_003 + index) % 2**63


def _tokens(examples) -> int:
    return int(sum(len(x.ids) for x in examples))


@dataclass
class TaskResult:
    contribution: dict  # what the outer update averages: φ for Reptile, a meta-gradient for (FO)MAML
    adapted: dict  # φ, the adapters after the inner steps (for monitoring)
    metrics: dict = field(default_factory=dict)  # JSON-ready numbers for metrics.jsonl


@dataclass
class StepResult:
    theta: dict
    adapted: list[dict]  # φ_j per task of the meta-batch
    metrics: dict  # {metric: [value per task]}


class Learner:
    name = ""

    def __init__(self, cfg, episodes: int, world: World | None = None):
        self.cfg, self.episodes, self.world = cfg, episodes, world or World()
        self.t = 0  # the episode being taken (annealed options read it)

    def task(self, theta: dict, episode, inner: InnerLoop, rng=None) -> TaskResult:
        raise NotImplementedError

    def update(self, theta: dict, mean: dict, t: int) -> dict:
        raise NotImplementedError

    def outer_metrics(self, t: int) -> dict:
        """Per-episode settings of the outer update worth logging (an annealed step size)."""
        return {}

    def tokens(self, episode) -> int:
        """Tokens through the model for one task: T passes over the support set."""
        return self.cfg.inner_steps * _tokens(episode.support)

    def mean(self, contributions: list[dict]) -> dict:
        return tree_map(lambda *xs: sum(xs) / len(xs), *contributions)

    def step(self, theta: dict, batch: list, inner: InnerLoop, t: int) -> StepResult:
        """One meta-step over this process's share of the meta-batch (all of it, when alone)."""
        self.t = t
        results, failed = [], None
        for episode in batch:
            mx.random.seed(task_seed(self.cfg.seed, episode.index))
            try:
                results.append(self.task(theta, episode, inner,
                                         np.random.default_rng([self.cfg.seed, episode.index])))
            except NonFiniteLoss as e:
                failed = e
                break
        if self.world.any(failed is not None):  # every rank drops the episode together
            raise failed or NonFiniteLoss(math.nan, "loss on another rank")
        mean = self.world.mean(self.mean([r.contribution for r in results]))
        new = self.update(theta, mean, t)
        metrics = {k: [r.metrics[k] for r in results] for k in results[0].metrics}
        return StepResult(new, [r.adapted for r in results], metrics)

    # -- state carried across episodes (none by default) ------------------------------------
    def state(self) -> dict[str, mx.array]:
        return {}

    def load_state(self, state: dict[str, mx.array]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, but the checkpoint holds {sorted(state)[:3]}")

    def describe(self) -> dict:
        """What made a start: recorded in meta.json and the adapters' config."""
        return {"learner": self.name}

    def recipe(self) -> dict:
        """How a start from this learner is adapted: the inner loop it was meta-trained with."""
        return {"learner": self.name, "optimizer": self.cfg.inner_optimizer, "steps": self.cfg.inner_steps,
                "lr": self.cfg.inner_lr, "learned_lr": None}

    def learned(self) -> dict:
        """Learned inner learning rates, if this learner learns them ({name: array})."""
        return {}


@dataclass
class OuterOptions:
    outer_lr: float = option(3e-4, "fomaml, maml, meta-sgd: learning rate of the outer Adam on θ (and learned rates)", gt=0, max=1)


class GradientLearner(Learner):
    """Learners whose task contribution is a meta-gradient: θ ← Adam(θ, mean_j g_j), with Adam's own
    learning rate (--outer-lr) and its moments carried across episodes (and checkpoints). Learners
    that also learn their inner learning rates (Meta-SGD, LSLR) keep them beside θ: their gradients
    arrive as "lr:<name>" entries of the contribution, and the same Adam steps them."""

    def __init__(self, cfg, episodes: int, world: World | None = None):
        super().__init__(cfg, episodes, world)
        self.outer = optim.Adam(learning_rate=cfg.outer_lr, bias_correction=True)
        self.rates: dict = {}

    def init_learned(self, theta: dict) -> dict:
        return {}

    def learned_rates(self, theta: dict) -> dict:
        if not self.rates:
            self.rates = self.init_learned(theta)
        return self.rates

    def learned(self) -> dict:
        return self.rates

    def tokens(self, episode) -> int:
        return super().tokens(episode) + _tokens(episode.query)  # and one pass over the query set

    def update(self, theta: dict, mean: dict, t: int) -> dict:
        norm = sum((g * g).sum() for g in mean.values())
        if not mx.isfinite(norm).item():
            raise NonFiniteLoss(float(norm), "meta-gradient")  # before Adam's moments take it in
        new = self.outer.apply_gradients(mean, {**theta, **{"lr:" + k: v for k, v in self.rates.items()}})
        self.rates = {k[3:]: v for k, v in new.items() if k.startswith("lr:")}
        return {k: new[k] for k in theta}

    def state(self) -> dict[str, mx.array]:
        # θ's names hold dots, so Adam's per-parameter slots are keyed "slot:name", not nested.
        out = {f"rate:{k}": v for k, v in self.rates.items()}
        for k, v in self.outer.state.items():
            if isinstance(v, dict):
                out.update({f"{slot}:{k}": x for slot, x in v.items()})
            else:
                out[k] = v
        return out

    def load_state(self, state: dict[str, mx.array]) -> None:
        restored: dict = {}
        self.rates = {k[len("rate:"):]: v for k, v in state.items() if k.startswith("rate:")}
        for k, v in state.items():
            slot, sep, name = k.partition(":")
            if slot == "rate":
                continue
            if sep:
                restored.setdefault(name, {})[slot] = v
            else:
                restored[k] = v
        self.outer.state = restored

    def describe(self) -> dict:
        return {**super().describe(), "outer_optimizer": "adam", "outer_lr": self.cfg.outer_lr}
