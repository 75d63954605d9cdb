"""`mlx-reptilora tasks --similarity`: each task's embedding as the hyper learner makes it (the frozen
base's hidden states of its training examples, averaged over tokens and examples, RMS-normalised:
meta/hyper.py) and their pairwise cosine similarity, a picture of which tasks a task-conditioned
start can tell apart (Task2Vec's use of task embeddings)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from ..data import episodes, tasks
from ..meta import hyper
from ..meta.inner_config import InnerConfig, bucket_lengths
from ..meta.inner_loop import InnerLoop
from ..model import adapters, models
from . import charts


def embeddings(base: models.Base, loaded: list[tasks.Task], examples: int, max_length: int,
               inputs_only: bool = False) -> np.ndarray:
    """(tasks, hidden): each task's z from its first `examples` training examples."""
    adapters.attach(base.model, adapters.LoraConfig())  # LoRA with B = 0: only what pooled() zeroes is trainable
    inner = InnerLoop(base.model, InnerConfig(micro_batch=4), bucket_lengths(max_length))
    null = {"null": mx.zeros((base.model.args.hidden_size,))}
    out = []
    for t in loaded:
        shots = episodes.prepare(t, base.tokenizer, None, max_length, ("train",)).splits["train"][:examples]
        out.append(np.array(hyper.embed(null, inner.pooled(shots, inputs_only))))
    return np.stack(out)


def cosine(z: np.ndarray) -> np.ndarray:
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    return unit @ unit.T


def report(names: list[str], z: np.ndarray, path: Path) -> list[str]:
    """Lines for the terminal, and the heatmap at `path`. Pooled hidden states share one large
    component whatever the task, so their raw cosines sit near 1; the nearest tasks are also shown,
    and the heatmap drawn, with the tasks' mean embedding taken out (centered)."""
    raw, centered = cosine(z), cosine(z - z.mean(0)) if len(z) > 2 else cosine(z)
    charts.similarity(path, names, centered)
    width = max(len(n) for n in names)
    lines = []
    def near(m, i):
        return ", ".join(f"{names[j]} {m[i, j]:.3f}" for j in [j for j in np.argsort(-m[i]) if j != i][:3])

    for i, name in enumerate(names):
        lines.append(f"{name:<{width}}  nearest, centered: {near(centered, i)}  (raw: {near(raw, i)})")
    lines.append(f"heatmap (centered cosine): {path}")
    return lines
