"""`mlx-reptilora adapt`: fine-tune LoRA on k examples of a task, from the meta-learned start
(--adapters) or the standard start (B = 0: the base model itself, the paper's baseline), with the
very inner loop meta-training uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data import episodes, prompts, tasks
from ..errors import UserError
from ..meta.inner_loop import InnerConfig, InnerLoop
from ..model import adapters, models


@dataclass
class AdaptConfig:
    task: str = "aclsum-title"
    shots: int = 5
    adapters: str | None = None  # a meta-learned (or any mlx-lm LoRA) folder; None = standard start
    model: str | None = None
    steps: int = 7
    lr: float = 5e-4
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    grad_clip: float = 0.5
    micro_batch: int = 4
    grad_checkpoint: bool = False
    rank: int = 16  # rank/alpha/dropout/keys/layers: only for the standard start
    alpha: float = 32.0
    dropout: float = 0.1
    lora_keys: list[str] = field(default_factory=lambda: ["self_attn.q_proj", "self_attn.v_proj"])
    lora_layers: int = -1
    max_length: int = 512
    seed: int = 0  # which k shots are drawn, and the standard start's A
    dtype: str | None = None
    quantize: int | None = None
    out: str = "runs/adapted"
    quiet: bool = False

    def inner(self) -> InnerConfig:
        return InnerConfig(self.steps, self.lr, self.optimizer, self.weight_decay, self.grad_clip, self.micro_batch,
                           grad_checkpoint=self.grad_checkpoint)


def start(base: models.Base, cfg: AdaptConfig) -> adapters.LoraConfig:
    """Attach the starting adapters: the meta-learned ones, or the standard LoRA start."""
    if cfg.adapters:
        return adapters.load(base.model, cfg.adapters)
    lora = adapters.LoraConfig(cfg.rank, cfg.alpha, cfg.dropout, list(cfg.lora_keys), cfg.lora_layers)
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
    if cfg.shots < 0:
        raise UserError(f"--shots must be >= 0 (got {cfg.shots})")
    task = tasks.load(cfg.task)  # fail on a bad task before loading the model
    base = models.load(cfg.model, cfg.dtype, cfg.quantize, verbose=not cfg.quiet)
    lora = start(base, cfg)
    shots = shots_of(base, task, cfg.shots, cfg.seed, cfg.max_length) if cfg.shots else []
    losses = fine_tune(base, shots, cfg)
    if losses and not cfg.quiet:
        print(f"adapted on {cfg.shots} shots of {task.name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    out = adapters.save(base.model, lora, cfg.out, extra={
        "start": cfg.adapters or "standard", "task": task.name, "shots": cfg.shots, "seed": cfg.seed,
        "steps": cfg.steps if cfg.shots else 0, "lr": cfg.lr, "losses": losses, "base_model": base.name})
    if not cfg.quiet:
        print(f"adapters: {out}")
    return out
