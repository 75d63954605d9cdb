"""`mlx-reptilora meta-train`: learn the start over many tasks with the chosen learner.

The outer loop is one short function, `_train`: draw a meta-batch, let the learner step its
meta-parameters, log, meta-validate (a hook: validation.py), checkpoint. The settings and the
registry of learners are in config.py, setting up in setup.py, the run folder (meta.json, metrics,
checkpoints) in run_folder.py, and each learner's rule in its own file.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from ..errors import UserError
from ..model import adapters, hub, memory
from ..paths import claimed
from ..progress import Progress
from . import checkpoint, recipe, validation
from .config import LEARNERS, MetaTrainConfig, make_learner, register
from .distributed import RankLost, World, agree, gather_metrics
from .inner_loop import NonFiniteLoss
from .run_folder import Metrics, check_resume, note_resume, read_meta, restore, save, snapshot, started_with, \
    write_meta
from .setup import Setup, prepare

__all__ = ["LEARNERS", "MetaTrainConfig", "make_learner", "register", "run"]


def run(cfg: MetaTrainConfig, validation_hook: validation.Hook | None = None) -> Path:
    """Meta-train; with --valid-tasks, `validation_hook` (evaluation/validate.py's, which generates
    and scores and so lives above this layer) meta-validates the start."""
    cfg.validate()
    if cfg.valid_tasks and validation_hook is None:
        raise UserError("--valid-tasks needs the meta-validation: run it through `mlx-reptilora meta-train` "
                        "or pass mlx_reptilora.evaluation.validate.hook")
    build = validation_hook(cfg) if cfg.valid_tasks else None  # its one-line errors, before any work
    world = World.init()
    world.check_divides(cfg.meta_batch)
    out = Path(cfg.out)
    with ExitStack() as folder:
        def claim_and_check():
            folder.enter_context(claimed(out))  # one run per folder: a second one stops here, in one line
            return check_resume(out, cfg)

        resuming = agree(world, claim_and_check)  # rank 0 owns the folder; all ranks follow its answer
        return _train(cfg, world, out, resuming, build)


def _train(cfg: MetaTrainConfig, world: World, out: Path, resuming: bool, build=None) -> Path:
    ckpt_dir = out / "checkpoints"
    progress = Progress(cfg.episodes, quiet=cfg.quiet or not world.main)
    if resuming and cfg.micro_batch is None:  # the one the run chose: its sums in the same order, bit for bit
        cfg.micro_batch = world.broadcast_json(read_meta(out)["inner"]["micro_batch"] if world.main else None)
    if resuming:  # and the step settings it started with where this resume leaves them to the device
        for k, v in world.broadcast_json(started_with(out, cfg) if world.main else None).items():
            setattr(cfg, k, v)
    s = prepare(cfg, progress, world)
    if world.size > 1:
        progress.log(f"{world.size} processes, {cfg.meta_batch // world.size} of the {cfg.meta_batch} tasks of "
                     f"each episode on each")
    check = build(s) if build and world.main else None  # validation runs on rank 0
    params, start, nonfinite = s.learner.init(s.inner.weights(), s.inner, s.prepared), 0, 0
    last = restore(checkpoint.latest(ckpt_dir) if world.main else None, s, world) if resuming else None
    if last is not None:
        start, params, nonfinite = last
        progress.log(f"resuming {out} after episode {start}")
    if world.main:
        write_meta(out, cfg, s, world) if not resuming else note_resume(out, cfg, start)
    metrics = Metrics(out / "metrics.jsonl", start) if world.main else None
    if metrics and metrics.dropped:
        progress.log(f"metrics.jsonl: dropped {metrics.dropped} line(s) that did not parse")
    progress.start = start
    at_start = snapshot(start, params, s, nonfinite)
    try:
        for episode in range(start, cfg.episodes):
            at_start = snapshot(episode, params, s, nonfinite)
            record, new_params = run_episode(cfg, s, params, episode, world)
            if new_params is None:
                nonfinite += 1
                record.update(nonfinite_in_a_row=nonfinite)
                metrics and metrics.write(record)
                progress.log(f"episode {episode}: non-finite loss on {record['tasks']}, update dropped")
                if nonfinite >= cfg.max_nonfinite:
                    save(ckpt_dir, snapshot(episode + 1, params, s, nonfinite), cfg.keep_checkpoints, world)
                    raise UserError(f"{nonfinite} episodes in a row had a non-finite loss (last: episode {episode}); "
                                    f"lower --inner-lr or check the data (the start is saved in {ckpt_dir})")
                continue
            params, nonfinite = new_params, 0
            metrics and metrics.write(record)
            progress.update(episode + 1, summary(record))
            if check and (episode + 1) % cfg.valid_every == 0:
                metrics.write(meta_validate(check, params, s, episode, progress))
            if (episode + 1) % cfg.checkpoint_every == 0 and episode + 1 < cfg.episodes:
                save(ckpt_dir, snapshot(episode + 1, params, s, nonfinite), cfg.keep_checkpoints, world)
        if check and s.last_valid != cfg.episodes - 1:  # the start at the end is a candidate too (also when
            metrics.write(meta_validate(check, params, s, cfg.episodes - 1, progress))  # a run is finished early)
    except (KeyboardInterrupt, RankLost):
        save(ckpt_dir, at_start, cfg.keep_checkpoints, world)  # the episode in flight is redone on --resume
        progress.log(f"stopped: checkpoint after episode {at_start['episode']} in {ckpt_dir}; continue with --resume")
        raise
    finally:
        metrics and metrics.close()
        progress.close()
    save(ckpt_dir, snapshot(cfg.episodes, params, s, nonfinite), cfg.keep_checkpoints, world)
    if not math.isfinite(sum(float(mx.abs(v).sum()) for _, v in tree_flatten(params))):
        raise UserError("the meta-learned start is not finite")
    if world.main:
        finish(cfg, s, params, out, progress)
    return out


def finish(cfg: MetaTrainConfig, s: Setup, params: dict, out: Path, progress: Progress) -> None:
    """Write the start: the meta-validated best, or the last. The recipe first, the start's arrays
    last: a folder with them is a finished start."""
    best = s.best
    kept = best.params if best else params
    recipe.write(out, best.recipe if best else s.learner.recipe(), s.learner.rates(kept))
    s.learner.start(kept, s.lora).save(out, adapters.num_layers(s.base.model, s.lora), extra={
        "meta_learned": s.learner.name, "learner": s.learner.describe(), "episodes": cfg.episodes,
        **({"selected_episode": best.episode + 1, "valid_score": best.score} if best else {}),
        "inner": {"optimizer": s.inner.cfg.optimizer, "steps": s.inner.cfg.steps, "lr": s.inner.cfg.lr},
        "base_model": s.base.name, "base_model_id": hub.base_id(s.base.name, s.base.path), "seed": cfg.seed})
    if best:
        per_count = "; ".join(f"{k} shot(s): {recipe.Recipe(**r).describe()}"
                              for k, r in best.recipe.get("by_shots", {}).items())
        progress.log(f"kept the start after episode {best.episode + 1} (mean valid score {best.score:.2f}); "
                     f"recipes: {per_count}")
    progress.log(f"meta-learned start ({s.learner.name}): {out}")


def meta_validate(check, params: dict, s: Setup, episode: int, progress: Progress) -> dict:
    """Validate the start after `episode`, keeping it when it beats the best so far; its record."""
    start = s.learner.start(params, s.lora)
    current = recipe.of(s.learner, params)
    record, s.best = validation.validate(check, start, current, params, episode, s.best, progress.log)
    s.last_valid = episode
    return record


def run_episode(cfg: MetaTrainConfig, s: Setup, params: dict, episode: int, world: World) -> tuple[dict, dict | None]:
    """One meta-step: (its metrics record, the new meta-parameters or None when a loss was not
    finite). Every rank draws the whole meta-batch and adapts its share; rank 0 holds task 0, which
    is monitored."""
    memory.reset_peak()
    t0 = time.perf_counter()
    batch = [s.sampler.sample() for _ in range(cfg.meta_batch)]
    record = {"episode": episode, "tasks": [e.task for e in batch], **s.learner.outer_metrics(episode)}
    monitor = (world.main and cfg.eval_every and batch[0].query
               and (episode % cfg.eval_every == 0 or episode == cfg.episodes - 1))
    if monitor:
        start = s.learner.start(params, s.lora).for_task(s.inner, batch[0].support)
        record["query_loss_before"] = s.inner.loss_at(start, batch[0].query)
    try:
        result = s.learner.step(params, world.share(batch), s.inner, episode)
    except NonFiniteLoss as e:
        return {**record, "skipped": f"non-finite {e.where}"}, None
    if monitor:
        record["query_loss_after"] = s.inner.loss_at(result.adapted[0], batch[0].query)
    mx.eval(result.params)
    seconds = time.perf_counter() - t0
    tokens = sum(s.learner.tokens(e) for e in batch)
    record.update(gather_metrics(result.metrics, world), tokens=tokens, seconds=round(seconds, 3),
                  tokens_per_s=round(tokens / seconds, 1), peak_memory_gb=round(memory.peak_gb(), 3))
    return record, result.params


def summary(record: dict) -> str:
    losses = record["inner_losses"][0]
    q = (f", query {record['query_loss_before']:.3f}->{record['query_loss_after']:.3f}"
         if "query_loss_after" in record else "")
    return f"{record['tasks'][0]} loss {losses[0]:.3f}->{losses[-1]:.3f}{q}, {record['tokens_per_s']:.0f} tok/s"
