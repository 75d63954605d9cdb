"""What an offline task of the pool declares: where its data comes from, under which licence, how to
ask, what kind of task it is and how it is scored. A corpus module lists its tasks as `Offline`s
(`tasks()`), and data/tasks.py gathers them into the pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

KINDS = ("generate", "choice", "text")
METRICS = {"generate": ("rouge", "exact"), "choice": ("accuracy",), "text": ("nll",)}


@dataclass(frozen=True)
class Offline:
    name: str
    group: str  # tasks of one group share source documents: leave-one-out leaves the group out
    instruction: str
    source: str
    licence: str
    build: Callable  # (TaskConfig) -> {"train": [Example], "valid": [...], "test": [...]}
    kind: str = "generate"
    metric: str = "rouge"
    choices: tuple[str, ...] | None = None  # the options of every row (rows may carry their own)
