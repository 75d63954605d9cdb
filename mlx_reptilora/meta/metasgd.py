"""Meta-SGD (Li et al., 2017): MAML whose inner learning rate is a learned tensor α of θ's shapes,

    φ_{t+1} = φ_t − α ⊙ ∇L_S(φ_t),    (θ, α) ← Adam((θ, α), mean_j ∇_{(θ, α)} L(Q_j; φ_j)),

one α for every inner step (the paper's single step, repeated). Its gradient is
∂L/∂α = −Σ_t ∇L_S(φ_t) ⊙ v_{t+1}, taken in MAML's backward pass (maml.py); α starts at --inner-lr.
--first-order drops the Hessian terms from both gradients; MAML++'s --multi-step-loss and
--first-order-episodes apply as they do to MAML.
"""

from __future__ import annotations

import mlx.core as mx

from ..errors import UserError
from .learner import OuterOptions
from .maml import MAML, MamlOptions


class MetaSGD(MAML):
    name, label = "meta-sgd", "Meta-SGD start"
    options = (OuterOptions, MamlOptions)

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        if cfg.lslr:
            raise UserError("--lslr is MAML's (meta-sgd learns a rate per element already)")

    @classmethod
    def label_of(cls, described: dict) -> str:
        return cls.label

    def init(self, theta: dict, inner=None, tasks=None) -> dict:
        return {"theta": theta, "rates": {k: mx.full(v.shape, self.cfg.inner_lr) for k, v in theta.items()}}

    def rate(self, t: int, learned: dict):
        return learned

    def rate_grad(self, t: int, grad: dict, v: dict, learned: dict) -> dict:
        return {k: -grad[k] * v[k] for k in learned}

    def recipe(self) -> dict:
        return {**super().recipe(), "learned_lr": "per element"}
