"""First-order MAML (Finn et al., 2017; Nichol et al., 2018), and MeTA-LoRA (arXiv 2510.11598),
which is FOMAML over a task batch on one shared LoRA adapter.

For each of n tasks: φ_j = T inner steps from θ on its support set S_j; then
θ ← Adam(θ, mean_j ∇L(Q_j; φ_j)): the query loss *after* adaptation, its gradient taken at φ_j and
applied to θ as if dφ_j/dθ were the identity.
"""

from __future__ import annotations

from .learner import GradientLearner, TaskResult


class FOMAML(GradientLearner):
    name, label = "fomaml", "FOMAML start"

    def task(self, params, episode, inner, rng, t) -> TaskResult:
        phi, losses = inner.adapt_from(params["theta"], episode.support, rng=rng)
        query_loss, grad = inner.gradient(episode.query, "query loss")  # ∇L_Q at φ, φ unchanged
        return TaskResult({"theta": grad}, phi, {"inner_losses": losses, "query_loss_adapted": query_loss})
