"""What a meta-learner is, and what the gradient-based ones share.

A learner owns its meta-parameters, a nested tree of arrays ({"theta": θ} for a point start, with
"rates" beside θ for learned inner rates): it makes them from the standard start's adapters
(`init`), steps them over a meta-batch of episodes, and says what start they are (`start`):

    params = learner.init(theta0, inner, tasks)
    result = learner.step(params, episodes, inner, t)    # result.params: the new meta-parameters
    start = learner.start(result.params, lora)

A step is three parts, so each learner writes only its own rule: what one task contributes
(`task`), the mean over the meta-batch (`mean`, then `world.mean`: the one place a distributed run
communicates), and the outer update (`update`). Contributions have the meta-parameters' structure.
State a learner keeps across episodes (an outer optimizer's moments) is a tree for checkpoints.

Each task draws its dropout masks and inner batches from a seed of its own (the run's seed and the
episode's index in the sampler), so a task computes the same thing on whichever rank adapts it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map

from ..model import adapters
from ..options import option
from .distributed import World
from .inner_loop import InnerLoop, NonFiniteLoss
from .start import Point, Start


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
    params: dict
    adapted: list[dict]  # φ_j per task of the meta-batch
    metrics: dict  # {metric: [value per task]}


class Learner:
    name = ""
    label = ""  # the column compare gives its starts
    inner_optimizer = "adamw"  # the inner optimizer it defaults to
    trains_on_query = False  # its update needs query sets
    second_order = False  # its inner steps are differentiated (plain SGD; memory probed for HVPs)
    options: tuple[type, ...] = ()  # the option groups that apply to it (and to no learner not listing them)

    def __init__(self, cfg, episodes: int, world: World | None = None):
        self.cfg, self.episodes, self.world = cfg, episodes, world or World()

    @classmethod
    def check(cls, cfg) -> None:
        """Its own rules on the settings, beyond what the registry checks for every learner."""

    @classmethod
    def label_of(cls, described: dict) -> str:
        """The column name of a start it made, from what the start records (`describe`)."""
        return cls.label

    # -- the meta-parameters and the start they are ------------------------------------------------
    def init(self, theta: dict, inner: InnerLoop | None = None, tasks: list | None = None) -> dict:
        """The meta-parameters at the standard start's adapters θ (`inner`: the loop over the model,
        for learners that size their own parameters by it; `tasks`: the tokenized training tasks, for
        learners that measure them first)."""
        return {"theta": theta}

    def start(self, params: dict, lora: adapters.LoraConfig) -> Start:
        return Point(lora, {"theta": params["theta"]})

    def rates(self, params: dict) -> dict:
        """Learned inner learning rates in `params` ({name: array}); none by default."""
        return params.get("rates", {})

    # -- one meta-step ------------------------------------------------------------------------------
    def task(self, params: dict, episode, inner: InnerLoop, rng: np.random.Generator, t: int) -> TaskResult:
        raise NotImplementedError

    def update(self, params: dict, mean: dict, t: int) -> dict:
        raise NotImplementedError

    def outer_metrics(self, t: int) -> dict:
        """Per-episode settings of the outer update worth logging (an annealed step size)."""
        return {}

    def tokens(self, episode) -> int:
        """Tokens through the model for one task: T passes over the support set."""
        return self.cfg.inner_steps * _tokens(episode.support)

    def mean(self, contributions: list[dict]) -> dict:
        return tree_map(lambda *xs: sum(xs) / len(xs), *contributions)

    def step(self, params: dict, batch: list, inner: InnerLoop, t: int) -> StepResult:
        """One meta-step over this process's share of the meta-batch (all of it, when alone)."""
        results, failed = [], None
        for episode in batch:
            mx.random.seed(task_seed(self.cfg.seed, episode.index))
            try:
                rng = np.random.default_rng([self.cfg.seed, episode.index])
                results.append(self.task(params, episode, inner, rng, t))
            except NonFiniteLoss as e:
                failed = e
                break
        if self.world.any(failed is not None):  # every rank drops the episode together
            raise failed or NonFiniteLoss(math.nan, "loss on another rank")
        mean = self.world.mean(self.mean([r.contribution for r in results]))
        new = self.update(params, mean, t)
        metrics = {k: [r.metrics[k] for r in results] for k in results[0].metrics}
        return StepResult(new, [r.adapted for r in results], metrics)

    # -- state carried across episodes (none by default) -----------------------------------------
    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, but the checkpoint holds {sorted(state)[:3]}")

    def describe(self) -> dict:
        """What made a start: recorded in meta.json and the adapters' config."""
        return {"learner": self.name}

    def recipe(self) -> dict:
        """How a start from this learner is adapted: the inner loop it was meta-trained with."""
        return {"learner": self.name, "optimizer": self.cfg.inner_optimizer, "steps": self.cfg.inner_steps,
                "lr": self.cfg.inner_lr, "learned_lr": None}


@dataclass
class OuterOptions:
    outer_lr: float = option(3e-4, "the learning rate of the outer Adam on the meta-parameters (learners that "
                                   "follow a meta-gradient)", gt=0, max=1)


class GradientLearner(Learner):
    """Learners whose task contribution is a meta-gradient: params ← Adam(params, mean_j g_j), with
    Adam's own learning rate (--outer-lr) and its moments carried across episodes (and checkpoints)."""

    trains_on_query = True
    options = (OuterOptions,)

    def __init__(self, cfg, episodes: int, world: World | None = None):
        super().__init__(cfg, episodes, world)
        self.outer = optim.Adam(learning_rate=cfg.outer_lr, bias_correction=True)

    def tokens(self, episode) -> int:
        return super().tokens(episode) + _tokens(episode.query)  # and one pass over the query set

    @staticmethod
    def check_finite(mean: dict) -> None:
        norm = sum((g * g).sum() for _, g in tree_flatten(mean))
        if not mx.isfinite(norm).item():
            raise NonFiniteLoss(float(norm), "meta-gradient")  # before Adam's moments take it in

    def update(self, params: dict, mean: dict, t: int) -> dict:
        self.check_finite(mean)
        return self.outer.apply_gradients(mean, params)

    def state(self) -> dict:
        return self.outer.state

    def load_state(self, state: dict) -> None:
        self.outer.state = state

    def describe(self) -> dict:
        return {**super().describe(), "outer_optimizer": "adam", "outer_lr": self.cfg.outer_lr}
