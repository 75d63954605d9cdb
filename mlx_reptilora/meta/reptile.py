"""Reptile (Nichol et al., 2018) on LoRA adapters, as in ReptiLoRA (Kim et al., 2025).

For each of n tasks: θ'_j = T inner steps from θ on its support set; then θ ← θ + α (mean_j θ'_j − θ).
"""

from __future__ import annotations

from mlx.utils import tree_map

from .inner_loop import InnerLoop


def interpolate(theta: dict, adapted: dict, lr: float) -> dict:
    return tree_map(lambda t, a: t + lr * (a - t), theta, adapted)


def average(trees: list[dict]) -> dict:
    return tree_map(lambda *xs: sum(xs) / len(xs), *trees)


def meta_lr(episode: int, episodes: int, start: float, final: float | None) -> float:
    """Linear annealing from `start` to `final` over the run (constant when final is None)."""
    if final is None or episodes <= 1:
        return start
    return start + (final - start) * episode / (episodes - 1)


def outer_step(inner: InnerLoop, theta: dict, supports: list, lr: float, reset_optimizer: bool = True,
               rng=None):
    """One Reptile meta-step over a meta-batch of support sets; returns (new θ, adapted θ's, losses)."""
    adapted, losses = [], []
    for support in supports:
        inner.set_weights(theta)
        if reset_optimizer:
            inner.reset_optimizer()
        losses.append(inner.adapt(support, rng=rng))
        adapted.append(inner.weights())
    return interpolate(theta, average(adapted), lr), adapted, losses
