"""A meta-training run's folder: its settings (meta.json), one metrics line per episode
(metrics.jsonl), and checkpoints of everything the loop needs to go on bit-identically."""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import fields
from importlib import metadata
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map_with_path

from .. import options
from ..errors import UserError
from ..model import backend, models
from ..paths import atomic_write_text
from . import checkpoint, start, trees
from .config import MetaTrainConfig
from .distributed import World
from .setup import Setup
from .validation import Best, ValidOptions

# What may differ between a run and its --resume (everything else must match the checkpoint).
RESUMABLE_CHANGES = {"episodes", "resume", "quiet", "checkpoint_every", "keep_checkpoints", "eval_every",
                     "max_nonfinite", "out",  # out: the same folder may be spelled ./x, /abs/x or x/
                     "memory_limit"}  # it changes when work waits, not a number
# Settings whose default is chosen per device (auto): left at it, a resumed run keeps what it started
# with, a run from before the setting existed what the step did then.
DEVICE_DEFAULTS = {"recompute_swiglu": False, "quantized_matmul": "kernel", "lora_dtype": "float32"}


def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("mlx-reptilora", "mlx", "mlx-lm", "numpy", "tokenizers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def check_resume(out: Path, cfg: MetaTrainConfig) -> bool:
    """Whether this run continues the one in `out` (True) or starts afresh (False)."""
    meta_path = out / "meta.json"
    if not meta_path.exists():
        if cfg.resume:
            raise UserError(f"--resume: {out} has no run to resume (no meta.json)")
        return False
    if checkpoint.latest(out / "checkpoints") is None and not start.finished(out):
        return False  # a run that stopped before its first checkpoint left nothing to continue: start afresh
    if not cfg.resume:
        raise UserError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    old = read_meta(out)["config"]
    old.setdefault("learner", "reptile")  # runs from before learners existed
    now = options.to_dict(cfg)
    # without validation its settings are unused: a changed default of one must not block the resume
    unused = {f.name for f in fields(ValidOptions)} if not old.get("valid_tasks") and not cfg.valid_tasks else set()
    unused |= set(left_to_device(cfg))  # started_with() takes the run's
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES | unused and k in old and old[k] != now[k])
    if changed:
        raise UserError(f"--resume with different settings than the run in {out}: {', '.join(changed)}")
    if cfg.meta_lr_final is not None and old.get("episodes") != cfg.episodes:
        raise UserError(f"--episodes {cfg.episodes}: this run anneals α over {old['episodes']} episodes "
                        f"(--meta-lr-final); resume it with --episodes {old['episodes']}")
    return True


def left_to_device(cfg: MetaTrainConfig) -> list[str]:
    """The DEVICE_DEFAULTS that `cfg` leaves at auto."""
    return [k for k in DEVICE_DEFAULTS if getattr(cfg, k) in (None, "auto")]


def started_with(out: Path, cfg: MetaTrainConfig) -> dict:
    """The run's own values of the settings `cfg` leaves to the device."""
    old = read_meta(out)["config"]
    return {k: old.get(k, DEVICE_DEFAULTS[k]) for k in left_to_device(cfg)}


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


# -- checkpoints: the meta-parameters, the learner's and sampler's state, the best start -----------

def snapshot(episode: int, params: dict, s: Setup, nonfinite: int) -> dict:
    """Everything the loop needs to redo episodes from `episode` on, bit-identically."""
    groups = {"params": params, "learner": s.learner.state()}
    if not s.learner.cfg.reset_optimizer:
        groups["inner_optimizer"] = dict(tree_flatten(s.inner.optimizer_state()))
    info = {"sampler": s.sampler.state(), "nonfinite": nonfinite, "last_valid": s.last_valid}
    if s.best is not None:
        groups["best"] = s.best.params
        info["best"] = s.best.info()
    return {"episode": episode, "groups": trees.flatten(groups), "info": info}


def save(ckpt_dir: Path, snap: dict, keep: int, world: World) -> None:
    if world.main:
        checkpoint.save(ckpt_dir, snap["episode"], trees.unflatten(snap["groups"]), snap["info"], keep=keep)


def restore(path: Path | None, s: Setup, world: World) -> tuple[int, dict, int] | None:
    """(next episode, meta-parameters, non-finite count) from rank 0's checkpoint, on every rank;
    the sampler and learner state are set. None when rank 0 has no checkpoint to resume from."""
    if world.main:
        info, groups = checkpoint.load(path) if path is not None else (None, {})
        if path is not None and path != checkpoint.named(path.parent):
            print(f"the newest checkpoint is damaged: resuming from {path.name}", file=sys.stderr)
        if info is not None and "params" not in groups:
            raise UserError(f"checkpoint {path} was written by an older mlx-reptilora (it holds no meta-parameters "
                            f"tree): finish the run with that version, or start again")
        flat = trees.flatten(groups)
        world.broadcast_json({"info": info, "spec": {k: [list(v.shape), str(v.dtype)] for k, v in flat.items()}})
    else:
        shared = world.broadcast_json()
        info = shared["info"]
        flat = {k: mx.zeros(shape, getattr(mx, dtype.split(".")[-1])) for k, (shape, dtype) in shared["spec"].items()}
    if info is None:
        return None
    groups = trees.unflatten(world.broadcast(flat))
    s.sampler.restore(info["sampler"])
    s.learner.load_state(groups.get("learner", {}))
    s.last_valid = info.get("last_valid")
    if info.get("best"):
        s.best = Best(**info["best"], params=groups["best"])
    if "inner_optimizer" in groups:
        # onto the optimizer's own tree, so the compiled update sees the structure it was traced with
        carried = groups["inner_optimizer"]
        state = tree_map_with_path(lambda path, x: carried.get(path, x), s.inner.optimizer_state())
        s.inner.optimizer_state().update(state)
    return info["episode"], groups["params"], info["nonfinite"]
