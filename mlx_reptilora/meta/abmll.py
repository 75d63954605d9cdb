"""ABMLL: amortized Bayesian meta-learning for LoRA (Zhang, Snell & Griffiths, 2025, after Ravi &
Beatson, 2019).

The start is a global Gaussian p = N(μ, σ²) over the LoRA tensors, σ = exp(ρ) per element. A task's
posterior q starts at p and is refined on its shots S by T plain SGD steps on the ELBO, each with
one reparameterised sample φ = μ_q + σ_q ⊙ ε:

    ELBO_S(q) = NLL(S; φ) + (β / n_S) · KL(q ‖ p),        n_S: the shots' target tokens,

so β = 1 is the shots' own ELBO per token. The global is trained on the query set Q under the
refined posterior, first order (q_T's gradient is taken as p's, as FOMAML takes φ's as θ's):

    L_Q(p) = NLL(Q; φ ~ q_T) + (γ / n_Q) · KL(q_T ‖ p).

Read first order, the KL's pulls on μ through q and through p cancel, and on ρ it leaves
−(γ / n_Q)(μ_q − μ)² / σ²: the prior widens where tasks' posteriors land far from its mean, while
the query NLL's sampling noise narrows it (empirical Bayes over the tasks). A prediction averages
the option probabilities of S posterior samples (choice tasks) or uses the posterior mean.

Where this differs from the paper: its Gaussians are over the weight update ΔW, the mean and the
standard deviation each a LoRA pair (μ = B_μA_μ, σ = B_σA_σ + c). Here the Gaussian is mean-field
over the LoRA factors, so every sample is an ordinary LoRA adapter: the model computes it as it is,
adapt writes the posterior mean as an mlx-lm adapter, and a start is two LoRA-sized trees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim

from ..errors import UserError
from ..model import adapters
from ..options import option
from . import start as starts
from .learner import GradientLearner, OuterOptions, TaskResult


@dataclass
class AbmllOptions:
    abmll_beta: float = option(1e-4, "abmll: weight of KL(task posterior || global prior) in the shots' ELBO, per "
                                     "target token (1: the ELBO itself). ABMLL's reason to go below 1: LoRA has so "
                                     "many parameters that the whole KL outweighs a few shots' likelihood and pins "
                                     "every task to the prior. Each step pulls the posterior mean toward the prior "
                                     "by inner-lr x beta / (tokens x sigma^2) of the way", min=0)
    abmll_gamma: float | None = option(None, "abmll: weight of the same KL in the global's query objective (ABMLL's "
                                             "second weight: it widens the prior where tasks move far from it)",
                                       min=0, default_text="--abmll-beta")
    abmll_sigma: float = option(1e-3, "abmll: the global prior's initial standard deviation, every LoRA element",
                                gt=0, max=1)
    abmll_sigma_lr: float | None = option(None, "abmll: the outer Adam's learning rate for log sigma (the prior's "
                                                "width moves by about this much per episode)", gt=0, max=1,
                                          default_text="--outer-lr")
    abmll_samples: int = option(4, "abmll: posterior samples whose option probabilities a choice prediction "
                                   "averages; 0: the posterior mean alone", min=0)


def kl(q: dict, p: dict) -> mx.array:
    """KL(q ‖ p) of two diagonal Gaussians {"theta": means, "rho": log standard deviations}, summed:
    Σ ρ_p − ρ_q + (σ_q² + (μ_q − μ_p)²) / (2σ_p²) − ½."""
    total = mx.array(0.0)
    for k, mu_q in q["theta"].items():
        rho_q, mu_p, rho_p = q["rho"][k], p["theta"][k], p["rho"][k]
        total = total + (rho_p - rho_q + (mx.exp(2 * rho_q) + (mu_q - mu_p) ** 2) / (2 * mx.exp(2 * rho_p)) - 0.5).sum()
    return total


_kl_grads = mx.value_and_grad(kl, argnums=(0, 1))


def draw(q: dict, key: mx.array) -> tuple[dict, dict]:
    """A sample φ = μ + σ ⊙ ε of q, and its ε."""
    names = sorted(q["theta"])
    eps = {k: mx.random.normal(q["theta"][k].shape, key=kk) for k, kk in zip(names, mx.random.split(key, len(names)))}
    return {k: q["theta"][k] + mx.exp(q["rho"][k]) * eps[k] for k in names}, eps


def _targets(inner, examples) -> tuple[list, int]:
    batches = inner.batches(examples)
    return batches, sum(b.n_targets for b in batches)


def refine(inner, prior: dict, shots, steps: int, lr: float, beta: float, key: mx.array) -> tuple[dict, list[float]]:
    """q_T: T SGD steps on the shots' ELBO from q_0 = p, one sample per step; and each step's NLL."""
    batches, n = _targets(inner, shots)
    q, nlls = prior, []
    for step_key in mx.random.split(key, steps):
        phi, eps = draw(q, step_key)
        nll, g = inner.gradient_at(phi, batches)
        _, (g_kl, _) = _kl_grads(q, prior)
        w = beta / n
        q = {"theta": {k: m - lr * (g[k] + w * g_kl["theta"][k]) for k, m in q["theta"].items()},
             "rho": {k: r - lr * (g[k] * eps[k] * mx.exp(r) + w * g_kl["rho"][k]) for k, r in q["rho"].items()}}
        mx.eval(q)
        nlls.append(nll)
    return q, nlls


@starts.register
class AbmllStart(starts.Start):
    """A global prior; for a task, the posterior refined on its shots (its mean is the adapters)."""

    kind = "abmll"

    def __init__(self, lora, arrays: dict, settings: dict | None = None):
        super().__init__(lora, arrays)
        self.settings = settings or {}
        self.posterior = arrays

    def for_task(self, inner, shots) -> dict:
        s = self.settings
        self.posterior = self.arrays
        if shots and s.get("steps"):
            self.posterior, _ = refine(inner, self.arrays, shots, s["steps"], s["lr"], s["beta"],
                                       mx.random.key(s.get("seed", 0)))
        return self.posterior["theta"]

    def describe(self) -> str:
        s = self.settings
        return (f"a posterior refined on the shots by {s.get('steps')} ELBO steps (sgd, lr {s.get('lr'):g}, beta "
                f"{s.get('beta'):g}); its mean is the adapters")

    def samples(self, n: int | None = None) -> list[dict]:
        """Adapters drawn from the last task's posterior (the settings' count unless `n` is given)."""
        n = self.settings.get("samples", 0) if n is None else n
        keys = mx.random.split(mx.random.key(self.settings.get("seed", 0) + 1), n) if n else []
        return [draw(self.posterior, k)[0] for k in keys]

    def save(self, folder: str | Path, n_layers: int, extra: dict | None = None) -> Path:
        return super().save(folder, n_layers, {**(extra or {}), "abmll": self.settings})

    @classmethod
    def read(cls, folder: Path) -> starts.Start:
        start = super().read(folder)
        start.settings = dict(adapters.recorded(folder, "abmll", {}) or {})
        return start


class ABMLL(GradientLearner):
    name, label = "abmll", "ABMLL start"
    inner_optimizer = "sgd"
    options = (OuterOptions, AbmllOptions)

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.inner_optimizer != "sgd":
            raise UserError(f"--learner {cls.name} refines its posterior by plain SGD steps on the ELBO: leave "
                            f"--inner-optimizer unset or pass sgd")

    def __init__(self, cfg, episodes: int, world=None):
        super().__init__(cfg, episodes, world)
        self.outer_rho = optim.Adam(learning_rate=self.sigma_lr(), bias_correction=True)

    def update(self, params: dict, mean: dict, t: int) -> dict:
        """μ by the outer Adam, log σ by one of its own (--abmll-sigma-lr)."""
        self.check_finite(mean)
        return {**self.outer.apply_gradients({"theta": mean["theta"]}, {"theta": params["theta"]}),
                **self.outer_rho.apply_gradients({"rho": mean["rho"]}, {"rho": params["rho"]})}

    def state(self) -> dict:
        return {"mean": self.outer.state, "rho": self.outer_rho.state}

    def load_state(self, state: dict) -> None:
        self.outer.state, self.outer_rho.state = state["mean"], state["rho"]

    def sigma_lr(self) -> float:
        return self.cfg.abmll_sigma_lr or self.cfg.outer_lr

    def gamma(self) -> float:
        return self.cfg.abmll_beta if self.cfg.abmll_gamma is None else self.cfg.abmll_gamma

    def init(self, theta: dict, inner=None, tasks=None) -> dict:
        return {"theta": theta, "rho": {k: mx.full(v.shape, math.log(self.cfg.abmll_sigma)) for k, v in theta.items()}}

    def settings(self) -> dict:
        return {"steps": self.cfg.inner_steps, "lr": self.cfg.inner_lr, "beta": self.cfg.abmll_beta,
                "samples": self.cfg.abmll_samples, "seed": self.cfg.seed}

    def start(self, params: dict, lora) -> starts.Start:
        return AbmllStart(lora, {"theta": params["theta"], "rho": params["rho"]}, self.settings())

    def task(self, params, episode, inner, rng, t) -> TaskResult:
        prior = {"theta": params["theta"], "rho": params["rho"]}
        key = mx.random.key(int(mx.random.randint(0, 2**31 - 1, ()).item()))  # from the task's own seed
        refine_key, query_key = mx.random.split(key)
        q, nlls = refine(inner, prior, episode.support, self.cfg.inner_steps, self.cfg.inner_lr,
                         self.cfg.abmll_beta, refine_key)
        phi, eps = draw(q, query_key)
        batches, n_q = _targets(inner, episode.query)
        nll, g = inner.gradient_at(phi, batches, "query loss")
        divergence, (g_q, g_p) = _kl_grads(q, prior)
        w = self.gamma() / n_q
        # first order: the gradient at q_T stands for the one at p, beside the KL's own pull on p
        grad = {"theta": {k: g[k] + w * (g_q["theta"][k] + g_p["theta"][k]) for k in g},
                "rho": {k: g[k] * eps[k] * mx.exp(q["rho"][k]) + w * (g_q["rho"][k] + g_p["rho"][k]) for k in g}}
        mx.eval(grad)
        sigma = math.exp(float(mx.mean(mx.concatenate([r.reshape(-1) for r in params["rho"].values()])).item()))
        return TaskResult(grad, q["theta"], {"inner_losses": nlls, "query_loss_adapted": nll,
                                              "kl": float(divergence.item()), "prior_sigma": sigma})

    def describe(self) -> dict:
        return {**super().describe(), "abmll_beta": self.cfg.abmll_beta, "abmll_gamma": self.gamma(),
                "abmll_sigma": self.cfg.abmll_sigma, "abmll_sigma_lr": self.sigma_lr(),
                "abmll_samples": self.cfg.abmll_samples}

    def recipe(self) -> dict:
        # the start refines its posterior itself (AbmllStart.for_task): no plain steps after it by default
        return {**super().recipe(), "optimizer": "sgd", "steps": 0}
