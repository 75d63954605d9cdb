"""MAML (Finn et al., 2017), second order, on LoRA adapters.

For each of n tasks: φ_j(θ) = T differentiable SGD steps from θ on its support set S_j,
φ_{t+1} = φ_t − β ∇L_S(φ_t); then θ ← Adam(θ, mean_j ∇_θ L(Q_j; φ_j(θ))).

The meta-gradient differentiates through the T steps in reverse, one step at a time:

    v_T = ∇L_Q(φ_T),   v_t = (I − β H_S(φ_t)) v_{t+1},   ∇_θ L_Q = v_0,

where H_S v is a Hessian-vector product (nested mx.grad, InnerLoop.hvp). This is exactly the
gradient of the unrolled computation, but only the T adapter states φ_t are kept, never the T
steps' activations: memory grows with T by T copies of the LoRA tensors, and time by one
Hessian-vector product (about two gradients) per step. With --first-order, the backward pass is
skipped (v_0 = v_T): FOMAML with plain SGD inner steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from ..options import option
from .learner import GradientLearner, TaskResult


@dataclass
class MamlOptions:
    first_order: bool = option(False, "maml: drop the second-order term (= FOMAML with SGD inner steps)")


class MAML(GradientLearner):
    name = "maml"

    def task(self, theta, episode, inner, rng=None) -> TaskResult:
        lr, support = self.cfg.inner_lr, inner.batches(episode.support)
        phi, trajectory, losses = theta, [], []
        for _ in range(self.cfg.inner_steps):
            seed = None if self.cfg.first_order else int(mx.random.randint(0, 2**31 - 1, ()).item())
            if seed is not None:
                mx.random.seed(seed)  # the backward pass replays this step's dropout masks from it
            inner.set_weights(phi)
            loss, grad = inner.gradient(support)
            trajectory.append((phi, seed))
            phi = {k: phi[k] - lr * grad[k] for k in phi}
            losses.append(loss)
        inner.set_weights(phi)
        query_loss, v = inner.gradient(episode.query, "query loss")
        if not self.cfg.first_order:
            for phi_t, seed in reversed(trajectory):
                inner.set_weights(phi_t)
                mx.random.seed(seed)
                hv = inner.hvp(support, v)
                v = {k: v[k] - lr * hv[k] for k in v}
                mx.eval(v)
        return TaskResult(v, phi, {"inner_losses": losses, "query_loss_adapted": query_loss})

    def tokens(self, episode) -> int:
        hvps = 0 if self.cfg.first_order else self.cfg.inner_steps * sum(len(x.ids) for x in episode.support)
        return super().tokens(episode) + hvps  # a Hessian-vector product per step: one more pass, twice the work

    def describe(self) -> dict:
        return {**super().describe(), "first_order": self.cfg.first_order}
