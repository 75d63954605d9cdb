"""`mlx-reptilora meta-train`: learn the LoRA start over many tasks with the chosen learner.

The outer loop is one short function, `run`: draw a meta-batch, let the learner step, log, and
checkpoint. Setting up (`prepare`), metrics (`Metrics`) and checkpoints (`save` / `restore`) each
live in their own function; the learners' rules live in reptile.py, fomaml.py and maml.py.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, fields
from importlib import metadata
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map_with_path

from .. import options
from ..data import episodes, tasks
from ..errors import UserError
from ..model import adapters, backend, hub, models
from ..options import option
from ..paths import atomic_write_text, claimed
from ..progress import Progress
from . import checkpoint, recipe
from .distributed import RankLost, World
from .fomaml import FOMAML
from .inner_config import OPTIMIZERS, InnerConfig, StepOptions, bucket_lengths
from .inner_loop import InnerLoop, NonFiniteLoss
from .learner import Learner, OuterOptions
from .maml import MAML, MamlOptions
from .metasgd import MetaSGD
from .reptile import Reptile, ReptileOptions

LEARNERS: dict[str, type[Learner]] = {"reptile": Reptile, "fomaml": FOMAML, "maml": MAML, "meta-sgd": MetaSGD}
SGD_LEARNERS = ("maml", "meta-sgd")  # their inner steps are differentiated: plain SGD

# What may differ between a run and its --resume (everything else must match the checkpoint).
RESUMABLE_CHANGES = {"episodes", "resume", "quiet", "checkpoint_every", "keep_checkpoints", "eval_every",
                     "max_nonfinite", "out"}  # out: the same folder may be spelled ./x, /abs/x or x/


@dataclass
class EpisodeOptions:
    learner: str = option("reptile", "the meta-learner: reptile (the paper), fomaml (first-order MAML, "
                                     "MeTA-LoRA's rule; ~1.2x Reptile's time), maml (second order: ~4-5x "
                                     "Reptile's time, linear in --inner-steps; 1.75x (7B) to 3.3x (135M) its "
                                     "memory, flat in --inner-steps; README) or meta-sgd (maml with a learned "
                                     "inner learning rate per element)", choices=tuple(LEARNERS))
    tasks: list[str] = option(list(tasks.DEFAULT_TASKS), "comma-separated task names or folders (mlx-reptilora tasks lists them)")
    task_weights: list[float] | None = option(None, "comma-separated sampling weights, one per task", min=0,
                                              default_text="uniform")
    episodes: int = option(500, "meta-training episodes (meta-steps)", min=1)
    meta_batch: int = option(1, "tasks adapted from the same θ per episode", min=1)
    support: int = option(32, "support examples per task, k", min=1)
    query: int = option(128, "query examples per task, M: the loss after adaptation that fomaml and maml "
                             "train on; reptile only monitors it. Capped per task at what its split leaves", min=0)
    inner_steps: int = option(7, "inner steps per task, T", min=1)
    inner_lr: float | None = option(None, "inner learning rate (steps above 1 diverged in every measurement)", gt=0,
                                    max=1, default_text="5e-4 for adamw/adam0, 0.1 for sgd")
    inner_optimizer: str | None = option(None, "adamw | adam0 (Adam with beta1 = 0, as in Reptile) | sgd",
                                         choices=OPTIMIZERS, default_text="adamw; sgd for maml and meta-sgd")
    inner_batch: int | None = option(None, "examples per inner step", min=1, default_text="the whole support set")


@dataclass
class ValidOptions:
    valid_tasks: list[str] = option([], "tasks never trained on that meta-validate θ every --valid-every episodes; "
                                        "the best θ is kept and its best adaptation setting becomes the start's "
                                        "recipe", default_text="none: no meta-validation")
    valid_every: int = option(50, "meta-validate every N episodes, and after the last", min=1)
    valid_shots: list[int] = option([1, 5], "shot counts θ is adapted on for validation; each gets its own recipe, "
                                            "and adapt takes the nearest count's", min=1)
    valid_steps: list[float] = option([0.0, 1.0, 2.0], "validation grid: multiples of the recipe's steps; 0 is "
                                                        "the start as it is, so a shot count at which adapting "
                                                        "scores lower is adapted with 0 steps", min=0)
    valid_lr_scales: list[float] = option([1.0, 0.3], "validation grid: multiples of the recipe's learning "
                                                      "rate (or learned rates)", gt=0)
    valid_limit: int = option(32, "valid-split examples scored per validation task", min=1)
    valid_batch_size: int = option(32, "sequences generated or scored together in validation", min=1)


@dataclass
class MetaTrainConfig(models.ModelOptions, adapters.LoraOptions, MamlOptions, OuterOptions, ReptileOptions,
                      StepOptions, EpisodeOptions, ValidOptions):
    max_length: int = option(512, "max tokens per example; inputs are truncated, targets never", min=16,
                             aliases=("--max-seq-length",))
    train_cap: int = option(1000, "use at most this many training examples per task", min=1)
    seed: int = option(0, "seed of the episodes, dropout and the standard start", min=0)
    eval_every: int = option(10, "monitor the query loss before/after adaptation every N episodes; 0 = never",
                             min=0)
    checkpoint_every: int = option(50, "checkpoint every N episodes", min=1)
    keep_checkpoints: int = option(2, "checkpoints kept on disk", min=1)
    max_nonfinite: int = option(3, "stop after this many episodes in a row with a non-finite loss", min=1)
    out: str = option("runs/meta", "output folder")
    resume: bool = option(False, "continue the run in --out after a crash, kill or Ctrl-C")
    quiet: bool = option(False, "no progress output", short="-q")

    def __post_init__(self):
        # The inner optimizer and its learning rate default per learner: MAML needs plain SGD.
        if self.inner_optimizer is None:
            self.inner_optimizer = "sgd" if self.learner in SGD_LEARNERS else "adamw"
        if self.inner_lr is None:
            self.inner_lr = 0.1 if self.inner_optimizer == "sgd" else 5e-4

    def inner(self) -> InnerConfig:
        return self.inner_config(self.inner_steps, self.inner_lr, self.inner_optimizer, batch=self.inner_batch)

    def validate(self) -> None:
        options.check(self)
        if self.learner in SGD_LEARNERS and self.inner_optimizer != "sgd":
            raise UserError(f"--learner {self.learner} differentiates through plain SGD inner steps: leave "
                            f"--inner-optimizer unset or pass sgd")
        if self.lslr and self.learner != "maml":
            raise UserError("--lslr is MAML's (meta-sgd learns a rate per element already)")
        for flag, value in (("--multi-step-loss", self.multi_step_loss),
                            ("--first-order-episodes", self.first_order_episodes), ("--first-order", self.first_order)):
            if value and self.learner not in SGD_LEARNERS:
                raise UserError(f"{flag} applies to --learner maml or meta-sgd (their SGD inner steps)")
        if self.learner != "reptile" and self.query < 1:
            raise UserError(f"--learner {self.learner} trains on the query loss after adaptation: --query must be >= 1")
        if self.learner != "reptile" and not self.reset_optimizer:
            raise UserError("--carry-optimizer is Reptile's option; fomaml and maml adapt each task from θ afresh")
        if self.task_weights is not None and sum(self.task_weights) <= 0:
            raise UserError("--task-weights must not all be 0")


def make_learner(cfg: MetaTrainConfig, world: World | None = None) -> Learner:
    return LEARNERS[cfg.learner](cfg, cfg.episodes, world)


def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("mlx-reptilora", "mlx", "mlx-lm", "numpy", "tokenizers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


# -- setup ------------------------------------------------------------------------------------

@dataclass
class Setup:
    base: models.Base
    lora: adapters.LoraConfig
    prepared: list[episodes.TokenizedTask]
    sampler: episodes.EpisodeSampler
    inner: InnerLoop
    learner: Learner
    best: dict | None = None  # meta-validation's best so far: score, episode, recipe, theta, rates
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
    for name, q in sampler.query_caps.items():
        progress.log(f"task {name}: query capped at {q} (its training split minus --support {cfg.support})")
        if q == 0 and cfg.learner != "reptile":
            raise UserError(f"task {name} has no examples left for a query set after --support {cfg.support}; "
                            f"--learner {cfg.learner} needs one")
    # the largest step: the support (or --inner-batch) set, or the query set its loss is taken on
    inner = InnerLoop(base.model, cfg.inner(), bucket_lengths(cfg.max_length), max(cfg.inner_batch or cfg.support, cfg.query),
                      cfg.learner in SGD_LEARNERS and not cfg.first_order, progress.log if world is None or world.main else None)
    if world is not None and world.size > 1:  # every rank steps alike: rank 0's choice
        inner.cfg.micro_batch = world.broadcast_json(inner.cfg.micro_batch)
    return Setup(base, lora, prepared, sampler, inner, make_learner(cfg, world))


# -- the run folder: settings, metrics, checkpoints --------------------------------------------

def _check_resume(out: Path, cfg: MetaTrainConfig) -> bool:
    """Whether this run continues the one in `out` (True) or starts afresh (False)."""
    meta_path = out / "meta.json"
    if not meta_path.exists():
        if cfg.resume:
            raise UserError(f"--resume: {out} has no run to resume (no meta.json)")
        return False
    if checkpoint.latest(out / "checkpoints") is None and not (out / adapters.WEIGHTS).exists():
        return False  # a run that stopped before its first checkpoint left nothing to continue: start afresh
    if not cfg.resume:
        raise UserError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    old = read_meta(out)["config"]
    old.setdefault("learner", "reptile")  # runs from before learners existed
    now = options.to_dict(cfg)
    # without validation its settings are unused: a changed default of one must not block the resume
    unused = {f.name for f in fields(ValidOptions)} if not old.get("valid_tasks") and not cfg.valid_tasks else set()
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES | unused and k in old and old[k] != now[k])
    if changed:
        raise UserError(f"--resume with different settings than the run in {out}: {', '.join(changed)}")
    if cfg.meta_lr_final is not None and old.get("episodes") != cfg.episodes:
        raise UserError(f"--episodes {cfg.episodes}: this run anneals α over {old['episodes']} episodes "
                        f"(--meta-lr-final); resume it with --episodes {old['episodes']}")
    return True


def read_meta(out: Path) -> dict:
    try:
        meta = json.loads((out / "meta.json").read_text())
        meta["config"]["episodes"]  # noqa: B018 -- the one field every run has
        return meta
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{out / 'meta.json'} is damaged ({type(e).__name__}: {str(e)[:80]}); move {out} away to "
                        f"start again") from None


def note_resume(out: Path, cfg: MetaTrainConfig, start: int) -> None:
    """meta.json follows the settings a resume may change (--episodes, ...) and lists the resumes."""
    meta = read_meta(out)
    meta["config"].update({k: v for k, v in options.to_dict(cfg).items() if k in RESUMABLE_CHANGES})
    meta.setdefault("resumed", []).append({"after_episode": start, "episodes": cfg.episodes,
                                           "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2))


def write_meta(out: Path, cfg: MetaTrainConfig, s: Setup, world: World) -> None:
    meta = {"config": options.to_dict(cfg), "learner": s.learner.describe(), "inner": s.inner.cfg.__dict__,
            "processes": world.size,
            "base_model": models.describe(s.base), "backend": backend.describe(),
            "tasks": {p.name: {"train": len(p.splits["train"]), "truncated": p.truncated, "dropped": p.dropped}
                      for p in s.prepared},
            "versions": versions(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2))


class Metrics:
    """metrics.jsonl, one line per episode, flushed as written; on resume, lines of episodes after
    the checkpoint are dropped (they will be logged again), and so are lines that do not parse (a
    line cut short by a kill, say): `dropped` counts those."""

    def __init__(self, path: Path, start: int):
        self.dropped = 0
        if path.exists():
            keep = []
            for line in path.read_text(errors="replace").splitlines():
                try:
                    if json.loads(line)["episode"] < start:
                        keep.append(line)
                except (ValueError, KeyError, TypeError):
                    self.dropped += bool(line.strip())
            atomic_write_text(path, "".join(line + "\n" for line in keep))
        self.file = open(path, "a")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def snapshot(episode: int, theta: dict, s: Setup, nonfinite: int) -> dict:
    """Everything the loop needs to redo episodes from `episode` on, bit-identically."""
    groups = {"theta": theta, "learner": s.learner.state()}
    if not s.learner.cfg.reset_optimizer:
        groups["inner_optimizer"] = dict(tree_flatten(s.inner.optimizer_state()))
    info = {"sampler": s.sampler.state(), "nonfinite": nonfinite, "last_valid": s.last_valid}
    if s.best is not None:
        groups.update(best=s.best["theta"], best_rates=s.best["rates"])
        info["best"] = {k: s.best[k] for k in ("score", "loss", "episode", "recipe")}
    return {"episode": episode, "groups": {g: dict(t) for g, t in groups.items()}, "info": info}


def save(ckpt_dir: Path, snap: dict, keep: int, world: World) -> None:
    if world.main:
        checkpoint.save(ckpt_dir, snap["episode"], snap["groups"], snap["info"], keep=keep)


def restore(path: Path | None, s: Setup, world: World) -> tuple[int, dict, int] | None:
    """(next episode, θ, non-finite count) from rank 0's checkpoint, on every rank; the sampler and
    learner state are set. None when rank 0 has no checkpoint to resume from."""
    if world.main:
        info, groups = checkpoint.load(path) if path is not None else (None, {})
        if path is not None and path != checkpoint.named(path.parent):
            print(f"the newest checkpoint is damaged: resuming from {path.name}", file=sys.stderr)
        spec = {g: {k: [list(v.shape), str(v.dtype)] for k, v in t.items()} for g, t in groups.items()}
        world.broadcast_json({"info": info, "spec": spec})
    else:
        shared = world.broadcast_json()
        info, spec = shared["info"], shared["spec"]
        groups = {g: {k: mx.zeros(shape, getattr(mx, dtype.split(".")[-1])) for k, (shape, dtype) in t.items()}
                  for g, t in spec.items()}
    if info is None:
        return None
    groups = {g: world.broadcast(t) for g, t in groups.items()}
    s.sampler.restore(info["sampler"])
    s.learner.load_state(groups.get("learner", {}))
    s.last_valid = info.get("last_valid")
    if info.get("best"):
        s.best = {**info["best"], "theta": groups["best"], "rates": groups.get("best_rates", {})}
    if "inner_optimizer" in groups:
        # onto the optimizer's own tree, so the compiled update sees the structure it was traced with
        flat = groups["inner_optimizer"]
        state = tree_map_with_path(lambda path, x: flat.get(path, x), s.inner.optimizer_state())
        s.inner.optimizer_state().update(state)
    return info["episode"], groups["theta"], info["nonfinite"]


# -- the outer loop ---------------------------------------------------------------------------

def run(cfg: MetaTrainConfig, validator=None) -> Path:
    """Meta-train; `validator(cfg, setup)` builds the meta-validation (evaluation/validate.py, which
    generates and scores and so lives above this layer) when --valid-tasks is given."""
    cfg.validate()
    if cfg.valid_tasks and validator is None:
        raise UserError("--valid-tasks needs the meta-validation: run it through `mlx-reptilora meta-train` "
                        "or mlx_reptilora.evaluation.validate.meta_train")
    world = World.init()
    world.check_divides(cfg.meta_batch)
    out = Path(cfg.out)
    with ExitStack() as folder:
        def claim_and_check():
            folder.enter_context(claimed(out))  # one run per folder: a second one stops here, in one line
            return _check_resume(out, cfg)

        resuming = agree(world, claim_and_check)  # rank 0 owns the folder; all ranks follow its answer
        return _train(cfg, world, out, resuming, validator)


def _train(cfg: MetaTrainConfig, world: World, out: Path, resuming: bool, validator=None) -> Path:
    ckpt_dir = out / "checkpoints"
    progress = Progress(cfg.episodes, quiet=cfg.quiet or not world.main)
    if resuming and cfg.micro_batch is None:  # the one the run chose: its sums in the same order, bit for bit
        cfg.micro_batch = world.broadcast_json(read_meta(out)["inner"]["micro_batch"] if world.main else None)
    s = prepare(cfg, progress, world)
    if world.size > 1:
        progress.log(f"{world.size} processes, {cfg.meta_batch // world.size} of the {cfg.meta_batch} tasks of "
                     f"each episode on each")
    check = validator(cfg, s) if validator and world.main else None  # validation runs on rank 0
    theta, start, nonfinite = s.inner.weights(), 0, 0
    last = restore(checkpoint.latest(ckpt_dir) if world.main else None, s, world) if resuming else None
    if last is not None:
        start, theta, nonfinite = last
        progress.log(f"resuming {out} after episode {start}")
    if world.main:
        write_meta(out, cfg, s, world) if not resuming else note_resume(out, cfg, start)
    metrics = Metrics(out / "metrics.jsonl", start) if world.main else None
    if metrics and metrics.dropped:
        progress.log(f"metrics.jsonl: dropped {metrics.dropped} line(s) that did not parse")
    progress.start = start
    at_start = snapshot(start, theta, s, nonfinite)
    try:
        for episode in range(start, cfg.episodes):
            at_start = snapshot(episode, theta, s, nonfinite)
            record, new_theta = run_episode(cfg, s, theta, episode, world)
            if new_theta is None:
                nonfinite += 1
                record.update(nonfinite_in_a_row=nonfinite)
                metrics and metrics.write(record)
                progress.log(f"episode {episode}: non-finite loss on {record['tasks']}, update dropped")
                if nonfinite >= cfg.max_nonfinite:
                    save(ckpt_dir, snapshot(episode + 1, theta, s, nonfinite), cfg.keep_checkpoints, world)
                    raise UserError(f"{nonfinite} episodes in a row had a non-finite loss (last: episode {episode}); "
                                    f"lower --inner-lr or check the data (θ is saved in {ckpt_dir})")
                continue
            theta, nonfinite = new_theta, 0
            metrics and metrics.write(record)
            progress.update(episode + 1, summary(record))
            if check and (episode + 1) % cfg.valid_every == 0:
                metrics.write(meta_validate(check, theta, s, episode, progress))
            if (episode + 1) % cfg.checkpoint_every == 0 and episode + 1 < cfg.episodes:
                save(ckpt_dir, snapshot(episode + 1, theta, s, nonfinite), cfg.keep_checkpoints, world)
        if check and s.last_valid != cfg.episodes - 1:  # θ at the end is a candidate too (also when a run
            metrics.write(meta_validate(check, theta, s, cfg.episodes - 1, progress))  # is finished early)
    except (KeyboardInterrupt, RankLost):
        save(ckpt_dir, at_start, cfg.keep_checkpoints, world)  # the episode in flight is redone on --resume
        progress.log(f"stopped: checkpoint after episode {at_start['episode']} in {ckpt_dir}; continue with --resume")
        raise
    finally:
        metrics and metrics.close()
        progress.close()
    save(ckpt_dir, snapshot(cfg.episodes, theta, s, nonfinite), cfg.keep_checkpoints, world)
    if not math.isfinite(sum(float(mx.abs(v).sum()) for v in theta.values())):
        raise UserError("the meta-learned adapters are not finite")
    if world.main:
        best = s.best  # meta-validated: the best θ, its learned rates and its best adaptation setting
        # the recipe first, the adapters last: a folder with adapters.safetensors is a finished start
        if best:
            recipe.write(out, best["recipe"], best["rates"])
        else:
            recipe.write(out, s.learner.recipe(), s.learner.learned())
        s.inner.set_weights(best["theta"] if best else theta)
        adapters.save(s.base.model, s.lora, out, extra={
            "meta_learned": s.learner.name, "learner": s.learner.describe(), "episodes": cfg.episodes,
            **({"selected_episode": best["episode"] + 1, "valid_score": best["score"]} if best else {}),
            "inner": {"optimizer": s.inner.cfg.optimizer, "steps": s.inner.cfg.steps, "lr": s.inner.cfg.lr},
            "base_model": s.base.name, "base_model_id": hub.base_id(s.base.name, s.base.path), "seed": cfg.seed})
        if best:
            per_count = "; ".join(f"{k} shot(s): {recipe.Recipe(**r).describe()}"
                                  for k, r in best["recipe"].get("by_shots", {}).items())
            progress.log(f"kept θ after episode {best['episode'] + 1} (mean valid score {best['score']:.2f}); "
                         f"recipes: {per_count}")
        progress.log(f"meta-learned adapters ({s.learner.name}): {out}/{adapters.WEIGHTS}")
    return out


def meta_validate(check, theta: dict, s: Setup, episode: int, progress: Progress) -> dict:
    """Validate θ after `episode`; keep it when it beats the best so far. Its metrics record."""
    t0 = time.perf_counter()
    record = check(theta, recipe.of(s.learner), episode)
    improved = s.best is None or (record["score"], -record["loss"]) > (s.best["score"], -s.best["loss"])
    s.last_valid = episode
    if improved:
        s.best = {"score": record["score"], "loss": record["loss"], "episode": episode, "recipe": record["recipe"],
                  "theta": dict(theta), "rates": dict(s.learner.learned())}
    record.update(best=improved, valid_seconds=round(time.perf_counter() - t0, 1))
    steps = ", ".join(f"{r['steps']} at {k}" for k, r in record["recipe"]["by_shots"].items())
    progress.log(f"validation after episode {episode + 1}: mean valid score {record['score']:.2f} with steps {steps} "
                 f"shot(s)" + (" (new best)" if improved else
                 f"; the best stays episode {s.best['episode'] + 1} ({s.best['score']:.2f})")
                 + f", {record['valid_seconds']} s")
    return record


def agree(world: World, check):
    """`check()`'s answer from rank 0, on every rank; its UserError is raised on every rank too."""
    answer = {"value": None, "error": None}
    if world.main:
        try:
            answer["value"] = check()
        except UserError as e:
            answer["error"] = str(e)
    answer = world.broadcast_json(answer)
    if answer["error"]:
        raise UserError(answer["error"] if world.main else f"rank 0 stopped the run: {answer['error']}")
    return answer["value"]


def run_episode(cfg: MetaTrainConfig, s: Setup, theta: dict, episode: int, world: World) -> tuple[dict, dict | None]:
    """One meta-step: (its metrics record, the new θ or None when a loss was not finite). Every rank
    draws the whole meta-batch and adapts its share; rank 0 holds task 0, which is monitored."""
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    batch = [s.sampler.sample() for _ in range(cfg.meta_batch)]
    record = {"episode": episode, "tasks": [e.task for e in batch], **s.learner.outer_metrics(episode)}
    monitor = (world.main and cfg.eval_every and batch[0].query
               and (episode % cfg.eval_every == 0 or episode == cfg.episodes - 1))
    if monitor:
        s.inner.set_weights(theta)
        record["query_loss_before"] = s.inner.loss(batch[0].query)
    try:
        result = s.learner.step(theta, world.share(batch), s.inner, episode)
    except NonFiniteLoss as e:
        return {**record, "skipped": f"non-finite {e.where}"}, None
    if monitor:
        s.inner.set_weights(result.adapted[0])
        record["query_loss_after"] = s.inner.loss(batch[0].query)
    mx.eval(result.theta)
    seconds = time.perf_counter() - t0
    tokens = sum(s.learner.tokens(e) for e in batch)
    record.update(gather_metrics(result.metrics, world), tokens=tokens, seconds=round(seconds, 3),
                  tokens_per_s=round(tokens / seconds, 1), peak_memory_gb=round(backend.peak_memory_gb(), 3))
    return record, result.theta


def gather_metrics(metrics: dict[str, list], world: World) -> dict[str, list]:
    """Per-task metrics of every rank's tasks, in meta-batch order (float32 across processes)."""
    if world.size == 1:
        return metrics
    keys = sorted(metrics)
    widths = [len(v[0]) if isinstance(v[0], list) else 0 for v in (metrics[k] for k in keys)]
    rows = np.array([[x for k, w in zip(keys, widths) for x in (metrics[k][j] if w else [metrics[k][j]])]
                     for j in range(len(metrics[keys[0]]))], np.float32)
    out, col = {k: [] for k in keys}, 0
    every = world.gather(rows)
    for k, w in zip(keys, widths):
        out[k] = [row[col:col + w].tolist() if w else float(row[col]) for row in every]
        col += max(w, 1)
    return out


def summary(record: dict) -> str:
    losses = record["inner_losses"][0]
    q = (f", query {record['query_loss_before']:.3f}->{record['query_loss_after']:.3f}"
         if "query_loss_after" in record else "")
    return f"{record['tasks'][0]} loss {losses[0]:.3f}->{losses[-1]:.3f}{q}, {record['tokens_per_s']:.0f} tok/s"
