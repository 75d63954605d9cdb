"""`mlx-reptilora adapt`: fine-tune LoRA on k examples of a task, from the meta-learned start
(--adapters) or the standard start (B = 0: the base model itself, the paper's baseline), with the
very inner loop meta-training uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data import episodes, prompts, tasks
from ..meta.inner_loop import OPTIMIZERS, InnerConfig, InnerLoop, StepOptions
from ..model import adapters, hub, models
from .. import options
from ..options import option
from ..paths import claimed


@dataclass
class AdaptOptions(StepOptions):
    """How a start is adapted to k shots (adapt, and both systems of compare)."""

    steps: int = option(7, "adaptation steps", min=0)
    lr: float = option(5e-4, "adaptation learning rate (steps above 1 diverged in every measurement)", gt=0, max=1)
    optimizer: str = option("adamw", "adamw | adam0 (Adam with beta1 = 0) | sgd", choices=OPTIMIZERS)

    def inner(self) -> InnerConfig:
        return InnerConfig(self.steps, self.lr, self.optimizer, self.weight_decay, self.grad_clip, self.micro_batch,
                           grad_checkpoint=self.grad_checkpoint)


@dataclass
class AdaptConfig(models.ModelOptions, adapters.LoraOptions, AdaptOptions):
    task: str | None = option(None, "task name or folder", required=True)
    shots: int | None = option(None, "k training examples to adapt on; 0 = no adaptation", min=0, required=True)
    adapters: str | None = option(None, "the start: a meta-learned (or any mlx-lm LoRA) adapters folder; "
                                        "LoRA options apply only without it", default_text="the standard LoRA start")
    max_length: int = option(512, "max tokens per example; documents are truncated, summaries never", min=16)
    seed: int = option(0, "which shots are drawn, and the standard start's A", min=0)
    out: str = option("runs/adapted", "output folder for the adapted adapters")
    quiet: bool = option(False, "no progress output", short="-q")


def start(base: models.Base, cfg: AdaptConfig) -> adapters.LoraConfig:
    """Attach the starting adapters: the meta-learned ones, or the standard LoRA start."""
    if cfg.adapters:
        return adapters.load(base.model, cfg.adapters)
    lora = cfg.lora()
    adapters.attach(base.model, lora, seed=cfg.seed)
    return lora


def shots_of(base: models.Base, task: tasks.Task, k: int, seed: int, max_length: int) -> list[prompts.Tokenized]:
    fmt = prompts.PromptFormat.for_tokenizer(base.tokenizer)
    train = episodes.prepare(task, base.tokenizer, fmt, max_length, splits=("train",)).splits["train"]
    return episodes.draw_shots(train, k, seed, task.name)


def fine_tune(base: models.Base, shots: list[prompts.Tokenized], cfg: AdaptConfig) -> list[float]:
    """k-shot fine-tuning of the adapters now in the model; the per-step losses."""
    if not shots:
        return []
    inner = InnerLoop(base.model, cfg.inner(), episodes.buckets(cfg.max_length))
    return inner.adapt(shots)


def run(cfg: AdaptConfig) -> Path:
    options.check(cfg)
    cfg.adapters = hub.adapters_folder(cfg.adapters)  # a hub repo id is downloaded into the hub cache
    task = tasks.load(cfg.task)  # fail on a bad task, or an --out that cannot be written, before any work
    if cfg.shots:
        task.split("train")
    if cfg.adapters:
        adapters.read_config(cfg.adapters)
        adapters.read_weights(cfg.adapters)
    with claimed(cfg.out):
        return _run(cfg, task)


def _run(cfg: AdaptConfig, task: tasks.Task) -> Path:
    base = models.load(cfg.model, cfg.dtype, cfg.quantize, verbose=not cfg.quiet)
    if cfg.adapters:
        hub.check_base(cfg.adapters, base)
    lora = start(base, cfg)
    if not cfg.quiet:
        print(f"start: {adapters.origin(cfg.adapters) if cfg.adapters else 'the standard LoRA start (B = 0)'}")
    shots = shots_of(base, task, cfg.shots, cfg.seed, cfg.max_length) if cfg.shots else []
    losses = fine_tune(base, shots, cfg)
    if losses and not cfg.quiet:
        print(f"adapted on {cfg.shots} shots of {task.name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    out = adapters.save(base.model, lora, cfg.out, extra={
        "start": cfg.adapters or "standard", "start_learner": adapters.learner_of(cfg.adapters), "task": task.name, "shots": cfg.shots, "seed": cfg.seed,
        "steps": cfg.steps if cfg.shots else 0, "lr": cfg.lr, "losses": losses, "base_model": base.name,
        "base_model_id": hub.base_id(base.name, base.path)})
    if not cfg.quiet:
        print(f"adapters: {out}")
    return out
