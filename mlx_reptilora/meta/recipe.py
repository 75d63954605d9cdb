"""The adaptation recipe a start carries: how it should be adapted to a new task.

A start folder keeps mlx-lm's two files unchanged (adapters.safetensors, adapter_config.json) and
adds `recipe.json` (learner, optimizer, steps, learning rate, and how they were chosen) and, for
learners that learn their inner learning rates, `learned_lr.safetensors`. `adapt` and `compare`
adapt a start with its recipe unless flags say otherwise.

A meta-validated start carries one recipe per validated shot count (`by_shots`); k shots are
adapted with the recipe of the nearest validated count, the smaller one on a tie. Its top-level
recipe (the best single setting over every count) is what a reader without a shot count gets.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlx.core as mx

from ..errors import UserError
from ..paths import atomic_write, atomic_write_text

RECIPE = "recipe.json"
LEARNED = "learned_lr.safetensors"


@dataclass
class Recipe:
    learner: str
    optimizer: str  # adamw | adam0 | sgd
    steps: int
    lr: float  # the scalar rate (the learned ones' starting value when learned_lr is set)
    learned_lr: str | None = None  # None, "per tensor and step" (LSLR) or "per element" (Meta-SGD)
    chosen_by: str = "the meta-training settings"
    auto: bool = False  # choose 0 to 2 x steps by holding shots out (adapt --steps auto)
    scale: float = 1.0  # learned rates are multiplied by this (meta-validation may choose it)
    rates: dict = field(default_factory=dict, repr=False)  # the learned rates, from learned_lr.safetensors
    shots: int | None = None  # the shot count this recipe was validated at (None: not per shot count)
    calibrate: str = "none"  # a choice task's probabilities: none, or content-free (meta-validation may choose it)

    def rate(self, t: int):
        """Step t's learning rate: one float, or {name: scalar or array} when learned."""
        if not self.learned_lr:
            return self.lr
        if self.learned_lr == "per tensor and step":
            return {k: self.scale * v[min(t, v.shape[0] - 1)] for k, v in self.rates.items()}
        return {k: self.scale * v for k, v in self.rates.items()} if self.scale != 1 else self.rates

    def describe(self) -> str:
        if self.steps == 0 and not self.auto:
            return "0 steps: the start as it is"
        lr = f"learned learning rates ({self.learned_lr})" if self.learned_lr else f"lr {self.lr:g}"
        if self.learned_lr and self.scale != 1:
            lr += f" x {self.scale:g}"
        steps = f"0 to {2 * self.steps} steps, chosen on held-out shots" if self.auto else f"{self.steps} steps"
        calibrated = ", choice tasks calibrated (content-free)" if self.calibrate != "none" else ""
        return f"{self.optimizer}, {steps}, {lr}{calibrated}"


def write(folder: str | Path, recipe: dict, rates: dict) -> None:
    folder = Path(folder)
    if rates:
        atomic_write(folder / LEARNED, lambda p: mx.save_safetensors(p, rates))
    atomic_write_text(folder / RECIPE, json.dumps(recipe, indent=2))


def nearest(counts, shots: int) -> int:
    """The validated shot count whose recipe k shots use: the nearest, the smaller on a tie."""
    return min(counts, key=lambda c: (abs(c - shots), c))


def read(folder: str | Path | None, shots: int | None = None) -> Recipe | None:
    """The recipe of a start folder for `shots` shots (see the module's docstring), or None when it
    has none (a plain LoRA, an older start)."""
    if not folder or not (Path(folder) / RECIPE).exists():
        return None
    path = Path(folder) / RECIPE
    try:
        raw = json.loads(path.read_text())
        by_shots = _by_shots(raw)
        if shots is not None and by_shots:
            count = nearest(by_shots, shots)
            raw = {**by_shots[count], "shots": count}
        recipe = Recipe(**{k: raw[k] for k in ("learner", "optimizer", "steps", "lr")},
                        learned_lr=raw.get("learned_lr"), chosen_by=raw.get("chosen_by", "the meta-training settings"),
                        auto=bool(raw.get("auto", False)), scale=float(raw.get("scale", 1.0)), shots=raw.get("shots"),
                        calibrate=str(raw.get("calibrate", "none")))
        if recipe.learned_lr:
            recipe.rates = mx.load(str(Path(folder) / LEARNED))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
        raise UserError(f"the recipe of {folder} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:80]})") from None
    return recipe


def _by_shots(raw) -> dict[int, dict]:
    """{shot count: recipe dict} of a recipe.json's contents; a malformed one raises TypeError."""
    if not isinstance(raw, dict) or not isinstance(raw.get("by_shots") or {}, dict):
        raise TypeError("not a recipe object with a by_shots mapping")
    return {int(k): v for k, v in (raw.get("by_shots") or {}).items()}


def of(learner, params: dict) -> Recipe:
    """The recipe of the start `params` are: the learner's meta-training inner loop, its learned rates."""
    return Recipe(**learner.recipe(), rates=dict(learner.rates(params)))


def as_dict(recipe: Recipe) -> dict:
    return {k: v for k, v in asdict(recipe).items() if k != "rates"}
