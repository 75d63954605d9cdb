"""MAML (Finn et al., 2017), second order, on LoRA adapters, with MAML++'s options (Antoniou et al.,
2019: "How to train your MAML").

For each of n tasks: φ_j(θ) = T differentiable SGD steps from θ on its support set S_j,
φ_{t+1} = φ_t − β_t ⊙ ∇L_S(φ_t); then θ ← Adam(θ, mean_j ∇_θ L(Q_j; φ_j(θ))).

The meta-gradient differentiates through the T steps in reverse, one step at a time:

    v_T = ∇L_Q(φ_T),   v_t = v_{t+1} − H_S(φ_t) (β_t ⊙ v_{t+1}),   ∇_θ L_Q = v_0,

where H_S v is a Hessian-vector product (nested mx.grad, InnerLoop.hvp). This is exactly the
gradient of the unrolled computation, but only the T adapter states φ_t are kept, never the T
steps' activations: memory grows with T by T copies of the LoRA tensors, and time by one
Hessian-vector product (about two gradients) per step. With --first-order, the backward pass is
skipped (v_0 = v_T): FOMAML with plain SGD inner steps.

MAML++ options: learned per-layer per-step learning rates β_{l,t} (--lslr, LSLR; their gradient is
−⟨∇L_S(φ_t)_l, v_{t+1,l}⟩), the multi-step loss Σ_t w_t L_Q(φ_t) with weights annealed toward the
last step (--multi-step-loss, MSL), and first order for the first episodes (--first-order-episodes,
derivative-order annealing).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..errors import UserError
from ..options import option
from .learner import GradientLearner, OuterOptions, TaskResult


@dataclass
class MamlOptions:
    first_order: bool = option(False, "maml, meta-sgd: drop the second-order term (= FOMAML with SGD inner steps)")
    multi_step_loss: int = option(0, "maml, meta-sgd: train on the query loss after every inner step, the weights "
                                     "annealed toward the last step over this many episodes (MAML++'s MSL); 0 = off",
                                  min=0)
    first_order_episodes: int = option(0, "maml, meta-sgd: first order for this many episodes, then second "
                                          "(MAML++'s derivative-order annealing)", min=0)


@dataclass
class LslrOptions:
    lslr: bool = option(False, "maml: learn one inner learning rate per LoRA tensor and inner step (MAML++'s LSLR)")


def msl_weights(steps: int, episode: int, anneal: int) -> np.ndarray:
    """MAML++'s per-step loss weights: uniform at first; the non-final ones shrink linearly to
    0.03/T over `anneal` episodes while the last one grows; they always sum to 1."""
    weights = np.full(steps, 1.0 / steps)
    decay, floor = 1.0 / steps / anneal, 0.03 / steps
    weights[:-1] = np.maximum(weights[:-1] - episode * decay, floor)
    weights[-1] = min(weights[-1] + episode * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return weights


class MAML(GradientLearner):
    name, label = "maml", "MAML start"
    inner_optimizer, second_order = "sgd", True
    options = (OuterOptions, MamlOptions, LslrOptions)

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.inner_optimizer != "sgd":
            raise UserError(f"--learner {cls.name} differentiates through plain SGD inner steps: leave "
                            f"--inner-optimizer unset or pass sgd")

    @classmethod
    def label_of(cls, described: dict) -> str:
        return "MAML++ start" if described.get("lslr") else cls.label

    # -- the inner learning rates: fixed, or learned beside θ ------------------------------------
    def init(self, theta: dict, inner=None, tasks=None) -> dict:
        if not self.cfg.lslr:
            return {"theta": theta}
        return {"theta": theta, "rates": {k: mx.full((self.cfg.inner_steps,), self.cfg.inner_lr) for k in theta}}

    def rate(self, t: int, learned: dict):
        return {k: v[t] for k, v in learned.items()} if learned else self.cfg.inner_lr

    def rate_grad(self, t: int, grad: dict, v: dict, learned: dict) -> dict:
        """∂L/∂β_t = −∇L_S(φ_t) ⊙ v_{t+1}, summed over each tensor for LSLR's one rate per tensor."""
        one_hot = mx.arange(self.cfg.inner_steps) == t
        return {k: -(grad[k] * v[k]).sum() * one_hot for k in learned}

    # -- one task ---------------------------------------------------------------------------------
    def task(self, params, episode, inner, rng, t) -> TaskResult:
        theta, learned = params["theta"], self.rates(params)
        steps = self.cfg.inner_steps
        second = not self.cfg.first_order and t >= self.cfg.first_order_episodes
        path = inner.sgd_steps(theta, episode.support, lambda i: self.rate(i, learned), steps, replay=second)
        weights = msl_weights(steps, t, self.cfg.multi_step_loss) if self.cfg.multi_step_loss else None
        query_loss, v = inner.gradient(episode.query, "query loss")
        if weights is not None:
            v = {k: float(weights[-1]) * x for k, x in v.items()}
        rate_grads = {k: mx.zeros_like(x) for k, x in learned.items()}
        support = inner.batches(episode.support)
        for i in reversed(range(steps)):  # v holds v_{i+1}; make it v_i
            rate = self.rate(i, learned)
            if learned:
                rate_grads = {k: rate_grads[k] + g for k, g in self.rate_grad(i, path.grads[i], v, learned).items()}
            if second:
                inner.set_weights(path.states[i])
                mx.random.seed(path.seeds[i])  # the masks step i drew
                hv = inner.hvp(support, {k: (rate[k] if learned else rate) * v[k] for k in v})
                v = {k: v[k] - hv[k] for k in v}
            if weights is not None and i > 0:  # the loss after step i joins the meta-objective
                inner.set_weights(path.states[i])
                _, g_q = inner.gradient(episode.query, "query loss")
                v = {k: v[k] + float(weights[i - 1]) * g_q[k] for k in v}
            mx.eval(v, rate_grads)
        gradient = {"theta": v, **({"rates": rate_grads} if learned else {})}
        return TaskResult(gradient, path.final, {"inner_losses": path.losses, "query_loss_adapted": query_loss})

    def tokens(self, episode) -> int:
        support = sum(len(x.ids) for x in episode.support)
        query = sum(len(x.ids) for x in episode.query)
        hvps = 0 if self.cfg.first_order else self.cfg.inner_steps * support
        msl = (self.cfg.inner_steps - 1) * query if self.cfg.multi_step_loss else 0
        return super().tokens(episode) + hvps + msl  # an HVP per step: one more pass, twice the work

    def describe(self) -> dict:
        return {**super().describe(), "first_order": self.cfg.first_order, "lslr": self.cfg.lslr,
                "multi_step_loss": self.cfg.multi_step_loss, "first_order_episodes": self.cfg.first_order_episodes}

    def recipe(self) -> dict:
        return {**super().recipe(), "optimizer": "sgd", "learned_lr": "per tensor and step" if self.cfg.lslr else None}
