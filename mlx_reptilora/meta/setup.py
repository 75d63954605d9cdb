"""What a meta-training run holds while it runs: the base model with LoRA attached, the tokenized
tasks and their episode sampler, the inner loop and the learner, and meta-validation's verdicts."""

from __future__ import annotations

from dataclasses import dataclass

from ..data import episodes, tasks
from ..errors import UserError
from ..model import adapters, models
from ..progress import Progress
from .config import MetaTrainConfig, make_learner
from .distributed import World
from .inner_config import bucket_lengths
from .inner_loop import InnerLoop
from .learner import Learner
from .validation import Best


@dataclass
class Setup:
    base: models.Base
    lora: adapters.LoraConfig
    prepared: list[episodes.TokenizedTask]
    sampler: episodes.EpisodeSampler
    inner: InnerLoop
    learner: Learner
    best: Best | None = None  # meta-validation's best start so far
    last_valid: int | None = None  # the episode meta-validated last


def prepare(cfg: MetaTrainConfig, progress: Progress, world: World | None = None) -> Setup:
    loaded = tasks.load_many(cfg.tasks, tasks.TaskConfig(train_cap=cfg.train_cap))
    for t in loaded:
        t.split("train")  # a task without training examples is one line, before the model loads
    if cfg.task_weights is not None and len(cfg.task_weights) != len(loaded):
        raise UserError(f"--task-weights has {len(cfg.task_weights)} numbers for {len(loaded)} tasks")
    base = models.load(cfg.model, cfg.dtype, cfg.quantize, verbose=not cfg.quiet)
    lora = cfg.lora()
    adapters.attach(base.model, lora, seed=cfg.seed)
    prepared = [episodes.prepare(t, base.tokenizer, None, cfg.max_length, splits=("train",)) for t in loaded]
    for p in prepared:
        progress.log(f"task {p.name}: {len(p.splits['train'])} training examples, {p.truncated} truncated "
                     f"to --max-length {cfg.max_length}" + (f", {p.dropped} dropped (target too long)" if p.dropped else ""))
    sampler = episodes.EpisodeSampler(prepared, cfg.support, cfg.query, cfg.task_weights, cfg.seed)
    learner = make_learner(cfg, world)
    for name, q in sampler.query_caps.items():
        progress.log(f"task {name}: query capped at {q} (its training split minus --support {cfg.support})")
        if q == 0 and learner.trains_on_query:
            raise UserError(f"task {name} has no examples left for a query set after --support {cfg.support}; "
                            f"--learner {cfg.learner} needs one")
    # the largest step: the support (or --inner-batch) set, or the query set its loss is taken on
    inner = InnerLoop(base.model, cfg.inner(), bucket_lengths(cfg.max_length), max(cfg.inner_batch or cfg.support, cfg.query),
                      learner.second_order and not cfg.first_order, progress.log if world is None or world.main else None)
    if world is not None and world.size > 1:  # every rank steps alike: rank 0's choice
        inner.cfg.micro_batch = world.broadcast_json(inner.cfg.micro_batch)
    return Setup(base, lora, prepared, sampler, inner, learner)
