"""A start: what meta-training produces and every command that adapts uses (adapt, compare,
meta-validation, push, export-peft). Its one duty is `for_task`: the adapters a task begins from,
given its shots; the recipe's steps then adapt them (adaptation.py).

Today's starts are points: one θ for every task, whose shots it ignores (Reptile, FOMAML, MAML),
and points whose recipe carries learned inner rates (Meta-SGD, MAML++'s LSLR). A start that is not
a point, a generator conditioned on the shots or a distribution to sample from, is a kind registered
here: its folder holds adapter_config.json (the LoRA it makes, and `start_kind`) and its arrays in
start.safetensors. It is not a PEFT or mlx-lm adapter, so it has no one adapter to export.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ..errors import UserError
from ..model import adapters
from ..paths import atomic_write
from . import trees

ARRAYS = adapters.START_ARRAYS
KINDS: dict[str, type[Start]] = {}


def register(cls: type[Start]) -> type[Start]:
    KINDS[cls.kind] = cls
    return cls


class Start:
    """A start of some kind: its LoRA and its arrays (a nested tree). Kinds other than a point
    override `for_task` and, if their arrays are not θ-shaped, `check_fit`."""

    kind = ""
    is_point = False

    def __init__(self, lora: adapters.LoraConfig, arrays: dict):
        self.lora, self.arrays = lora, arrays

    def for_task(self, inner, shots) -> dict:
        """The adapters ({name: array}) the task of `shots` begins from; `inner` is the loop over
        the model (its functional core encodes the shots) and the model's adapters stay as they were."""
        raise NotImplementedError

    def describe(self) -> str:
        """What `for_task` does with a task's shots, for a reader ("" for a point: nothing)."""
        return ""

    def samples(self, n: int | None = None) -> list[dict]:
        """Adapters drawn from the distribution the last `for_task` made (`n`: the start's own count
        when None), whose predictions are averaged; none for a start that is not a distribution."""
        return []

    def attach(self, model: nn.Module, source: str = "the start") -> None:
        """LoRA layers on `model` as the start makes them, checked to fit; `for_task` gives their values."""
        adapters.attach(model, self.lora)
        self.check_fit(model, source)

    def check_fit(self, model: nn.Module, source: str) -> None:
        adapters.check_fit(model, self.arrays["theta"], source)

    def save(self, folder: str | Path, n_layers: int, extra: dict | None = None) -> Path:
        """The folder: adapter_config.json, then the arrays (last: their presence means done)."""
        out = adapters.write_config(folder, self.lora, n_layers, {**(extra or {}), "start_kind": self.kind})
        flat = dict(sorted(trees.flatten(self.arrays).items()))  # one byte layout, however it was built
        atomic_write(out / ARRAYS, lambda p: mx.save_safetensors(p, flat))
        return out

    @classmethod
    def read(cls, folder: Path) -> Start:
        lora = adapters.read_config(folder, ARRAYS)
        return cls(lora, trees.unflatten(adapters.read_weights(folder, ARRAYS)))

    def export_peft(self, folder: str | Path, out: str | Path, base_model: str | None) -> Path:
        raise UserError(f"{folder} is a {self.kind} start: it makes adapters from a task's shots, so it has no one "
                        f"adapter to export; adapt it to a task (mlx-reptilora adapt) and export what that writes")


@register
class Point(Start):
    """One θ for every task: an mlx-lm adapters folder (adapters.safetensors)."""

    kind = "point"
    is_point = True

    def __init__(self, lora: adapters.LoraConfig, arrays: dict):
        super().__init__(lora, arrays)
        self.theta = arrays["theta"]

    def for_task(self, inner, shots) -> dict:
        return self.theta

    def save(self, folder: str | Path, n_layers: int, extra: dict | None = None) -> Path:
        return adapters.write(folder, self.theta, self.lora, n_layers, extra)

    @classmethod
    def read(cls, folder: Path) -> Start:
        return cls(adapters.read_config(folder), {"theta": adapters.read_weights(folder)})

    def export_peft(self, folder: str | Path, out: str | Path, base_model: str | None) -> Path:
        return adapters.to_peft(folder, out, base_model)


def kind_of(folder: str | Path) -> str:
    return adapters.recorded(folder, "start_kind") or Point.kind


def read(folder: str | Path) -> Start:
    """The start in `folder`: any mlx-lm adapters (a point), or a kind registered here."""
    folder = Path(folder)
    kind = kind_of(folder)
    if kind not in KINDS:
        raise UserError(f"{folder} is a start of kind {kind!r}, which no learner loaded here makes "
                        f"(known: {', '.join(sorted(KINDS))})")
    return KINDS[kind].read(folder)


def finished(folder: Path) -> bool:
    """Whether `folder` holds a finished start of any kind (its arrays are written last)."""
    return (folder / adapters.WEIGHTS).exists() or (folder / ARRAYS).exists()
