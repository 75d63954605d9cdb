"""`mlx-reptilora meta-train`: learn the LoRA start by Reptile over many tasks (the outer loop,
checkpoints, metrics). The update itself is in reptile.py; the inner steps in inner_loop.py."""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map

from .. import options as config
from ..data import episodes, prompts, tasks
from ..errors import UserError
from ..model import adapters, backend, models
from ..progress import Progress
from . import checkpoint, reptile
from .inner_loop import InnerConfig, InnerLoop, NonFiniteLoss

# What may differ between a run and its --resume (everything else must match the checkpoint).
RESUMABLE_CHANGES = {"episodes", "resume", "quiet", "checkpoint_every", "keep_checkpoints", "eval_every",
                     "max_nonfinite"}


@dataclass
class MetaTrainConfig:
    model: str | None = None
    tasks: list[str] = field(default_factory=lambda: list(tasks.OFFLINE_TASKS))
    task_weights: list[float] | None = None  # None = uniform
    episodes: int = 500
    support: int = 32  # k
    query: int = 128  # M: monitoring only, capped per task at what its split leaves after k
    inner_steps: int = 7  # T
    inner_lr: float = 5e-4
    inner_optimizer: str = "adamw"
    inner_batch: int | None = None  # None = the whole support set every inner step
    micro_batch: int = 4
    grad_checkpoint: bool = False  # trade ~30% speed for activation memory (7B bases)
    weight_decay: float = 0.01
    grad_clip: float = 0.5
    meta_lr: float = 0.1  # α
    meta_lr_final: float | None = None  # linear annealing of α to this; None = constant
    meta_batch: int = 1  # n tasks adapted from the same θ per meta-step
    reset_optimizer: bool = True  # a fresh inner optimizer per task (the paper) or carried across
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.1
    lora_keys: list[str] = field(default_factory=lambda: ["self_attn.q_proj", "self_attn.v_proj"])
    lora_layers: int = -1
    max_length: int = 512
    train_cap: int = 1000
    dtype: str | None = None
    quantize: int | None = None
    seed: int = 0
    eval_every: int = 10  # query loss before/after adaptation every N episodes; 0 = never
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    max_nonfinite: int = 3  # stop after this many non-finite episodes in a row
    out: str = "runs/meta"
    resume: bool = False
    quiet: bool = False

    def lora(self) -> adapters.LoraConfig:
        return adapters.LoraConfig(self.rank, self.alpha, self.dropout, list(self.lora_keys), self.lora_layers)

    def inner(self) -> InnerConfig:
        return InnerConfig(self.inner_steps, self.inner_lr, self.inner_optimizer, self.weight_decay,
                           self.grad_clip, self.micro_batch, self.inner_batch, self.grad_checkpoint)

    def validate(self) -> None:
        positive = {"episodes": self.episodes, "support": self.support, "inner_steps": self.inner_steps,
                    "meta_batch": self.meta_batch, "micro_batch": self.micro_batch,
                    "checkpoint_every": self.checkpoint_every, "max_length": self.max_length}
        for name, v in positive.items():
            if v < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1 (got {v})")
        if not 0 < self.meta_lr <= 1:
            raise UserError(f"--meta-lr must be in (0, 1] (got {self.meta_lr})")
        if self.inner_lr <= 0:
            raise UserError(f"--inner-lr must be > 0 (got {self.inner_lr})")


def episode_seed(seed: int, episode: int) -> int:
    """Dropout's RNG is reseeded per episode, so a resumed run needs no RNG state from the past."""
    return (seed * 1_000_003 + episode) % 2**63


def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("mlx-reptilora", "mlx", "mlx-lm", "numpy", "tokenizers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _check_resume(out: Path, cfg: MetaTrainConfig) -> dict | None:
    meta_path = out / "meta.json"
    if not meta_path.exists():
        if cfg.resume:
            raise UserError(f"--resume: {out} has no run to resume (no meta.json)")
        return None
    if not cfg.resume:
        raise UserError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    old = json.loads(meta_path.read_text())["config"]
    now = config.to_dict(cfg)
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and old.get(k) != now[k])
    if changed:
        raise UserError(f"--resume with different settings than the run in {out}: {', '.join(changed)}")
    return old


def _rewrite_metrics(path: Path, before_episode: int) -> None:
    """Drop metrics of episodes after the checkpoint: the resumed run will log them again."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["episode"] < before_episode]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)


def run(cfg: MetaTrainConfig) -> Path:
    cfg.validate()
    out = Path(cfg.out)
    resuming = _check_resume(out, cfg) is not None
    ckpt_dir = out / "checkpoints"
    progress = Progress(cfg.episodes, quiet=cfg.quiet)

    base = models.load(cfg.model, cfg.dtype, cfg.quantize, verbose=not cfg.quiet)
    lora = cfg.lora()
    adapters.attach(base.model, lora, seed=cfg.seed)
    fmt = prompts.PromptFormat.for_tokenizer(base.tokenizer)
    loaded = tasks.load_many(cfg.tasks, tasks.TaskConfig(train_cap=cfg.train_cap))
    prepared = [episodes.prepare(t, base.tokenizer, fmt, cfg.max_length, splits=("train",)) for t in loaded]
    for p in prepared:
        progress.log(f"task {p.name}: {len(p.splits['train'])} training examples, {p.truncated} truncated "
                     f"to --max-length {cfg.max_length}" + (f", {p.dropped} dropped (summary too long)" if p.dropped else ""))
    sampler = episodes.EpisodeSampler(prepared, cfg.support, cfg.query, cfg.task_weights, cfg.seed)
    for name, q in sampler.query_caps.items():
        progress.log(f"task {name}: query capped at {q} (its training split minus --support {cfg.support})")
    inner = InnerLoop(base.model, cfg.inner(), episodes.buckets(cfg.max_length))
    theta = inner.weights()

    start, nonfinite = 0, 0
    last = checkpoint.latest(ckpt_dir) if resuming else None
    if last is not None:
        info, theta, opt_state = checkpoint.load(last)
        sampler.restore(info["sampler"])
        start, nonfinite = info["episode"], info["nonfinite"]
        if opt_state is not None:
            inner.optimizer.state.update(opt_state)
        progress.log(f"resuming {out} after episode {start}")
    out.mkdir(parents=True, exist_ok=True)
    _rewrite_metrics(out / "metrics.jsonl", start)
    if not resuming:
        meta = {"config": config.to_dict(cfg), "base_model": models.describe(base), "backend": backend.describe(),
                "tasks": {p.name: {"train": len(p.splits["train"]), "truncated": p.truncated, "dropped": p.dropped}
                          for p in prepared},
                "versions": versions(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (out / "meta.json").write_text(json.dumps(meta, indent=2))

    def snapshot(done: int) -> dict:
        """Everything the outer loop needs to redo episodes from `done` on, bit-identically."""
        return {"episode": done, "theta": theta, "sampler": sampler.state(), "nonfinite": nonfinite,
                "optimizer": None if cfg.reset_optimizer else tree_map(lambda x: x, inner.optimizer_state())}

    def save_checkpoint(snap: dict):
        checkpoint.save(ckpt_dir, snap["episode"], snap["theta"], snap["sampler"], snap["optimizer"],
                        {"nonfinite": snap["nonfinite"]}, keep=cfg.keep_checkpoints)

    progress.start = start
    metrics = open(out / "metrics.jsonl", "a")
    at_start = snapshot(start)
    try:
        for episode in range(start, cfg.episodes):
            at_start = snapshot(episode)
            mx.random.seed(episode_seed(cfg.seed, episode))
            mx.reset_peak_memory()
            t0 = time.perf_counter()
            batch = [sampler.sample() for _ in range(cfg.meta_batch)]
            lr = reptile.meta_lr(episode, cfg.episodes, cfg.meta_lr, cfg.meta_lr_final)
            record = {"episode": episode, "tasks": [e.task for e in batch], "meta_lr": lr}
            monitor = cfg.eval_every and batch[0].query and (episode % cfg.eval_every == 0 or episode == cfg.episodes - 1)
            if monitor:
                inner.set_weights(theta)
                record["query_loss_before"] = inner.loss(batch[0].query)
            try:
                new_theta, adapted, losses = reptile.outer_step(
                    inner, theta, [e.support for e in batch], lr, cfg.reset_optimizer,
                    rng=np.random.default_rng([cfg.seed, episode]))
            except NonFiniteLoss:
                nonfinite += 1
                record.update(skipped="non-finite inner loss", nonfinite_in_a_row=nonfinite)
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                progress.log(f"episode {episode}: non-finite loss on {record['tasks']}, update dropped")
                if nonfinite >= cfg.max_nonfinite:
                    save_checkpoint(snapshot(episode + 1))
                    raise UserError(f"{nonfinite} episodes in a row had a non-finite loss (last: episode {episode}); "
                                    f"lower --inner-lr or check the data (θ is saved in {ckpt_dir})") from None
                continue
            nonfinite = 0
            if monitor:
                inner.set_weights(adapted[0])
                record["query_loss_after"] = inner.loss(batch[0].query)
            theta = new_theta
            mx.eval(theta)
            seconds = time.perf_counter() - t0
            tokens = sum(int(sum(len(x.ids) for x in e.support)) for e in batch) * cfg.inner_steps
            record.update(inner_losses=losses, tokens=tokens, seconds=round(seconds, 3),
                          tokens_per_s=round(tokens / seconds, 1), peak_memory_gb=round(backend.peak_memory_gb(), 3))
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            q = (f", query {record['query_loss_before']:.3f}->{record['query_loss_after']:.3f}" if monitor else "")
            progress.update(episode + 1, f"{record['tasks'][0]} loss {losses[0][0]:.3f}->{losses[0][-1]:.3f}{q}, "
                                         f"{record['tokens_per_s']:.0f} tok/s")
            if (episode + 1) % cfg.checkpoint_every == 0 and episode + 1 < cfg.episodes:
                save_checkpoint(snapshot(episode + 1))
    except KeyboardInterrupt:
        save_checkpoint(at_start)  # the episode in flight is redone on --resume
        progress.log(f"interrupted: checkpoint after episode {at_start['episode']} in {ckpt_dir}; "
                     f"continue with --resume")
        raise
    finally:
        metrics.close()
        progress.close()
    save_checkpoint(snapshot(cfg.episodes))
    inner.set_weights(theta)
    adapters.save(base.model, lora, out, extra={"meta_learned": "reptile", "episodes": cfg.episodes,
                                                "base_model": base.name, "seed": cfg.seed})
    if not math.isfinite(sum(float(mx.abs(v).sum()) for v in theta.values())):
        raise UserError("the meta-learned adapters are not finite")
    progress.log(f"meta-learned adapters: {out}/{adapters.WEIGHTS}")
    return out
