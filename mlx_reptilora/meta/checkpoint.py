"""Atomic checkpoints of the outer loop: θ, the episode counter, the sampler's RNG, and whatever the
learner or the inner loop carries across episodes (an outer Adam's moments, a carried inner
optimizer), as named groups of arrays.

Each checkpoint is written into a temporary folder, renamed into place, and only then named in the
`latest` file (itself replaced atomically): a kill at any moment leaves the previous one intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import mlx.core as mx

LATEST = "latest"
STATE = "state.safetensors"
INFO = "state.json"


def save(folder: Path, episode: int, groups: dict[str, dict[str, mx.array]], info: dict, keep: int = 2) -> Path:
    """`groups`: {"theta": {name: array}, ...}; arrays are stored as "group/name"."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"episode-{episode:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder))
    arrays = {f"{g}/{k}": v for g, tree in groups.items() for k, v in tree.items()}
    mx.save_safetensors(str(tmp / STATE), arrays)
    (tmp / INFO).write_text(json.dumps({"episode": episode, **info}))
    final = folder / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = folder / f".{LATEST}.tmp"
    pointer.write_text(name)
    os.replace(pointer, folder / LATEST)
    _prune(folder, keep, final)
    return final


def _prune(folder: Path, keep: int, current: Path) -> None:
    done = sorted(p for p in folder.glob("episode-*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)
    for stale in folder.glob(".episode-*"):  # temporaries of a write that was killed
        shutil.rmtree(stale, ignore_errors=True)


def latest(folder: Path) -> Path | None:
    pointer = folder / LATEST
    if not pointer.exists():
        return None
    path = folder / pointer.read_text().strip()
    return path if (path / INFO).exists() else None


def load(path: Path) -> tuple[dict, dict[str, dict[str, mx.array]]]:
    """(info from state.json, {group: {name: array}})."""
    info = json.loads((path / INFO).read_text())
    groups: dict[str, dict[str, mx.array]] = {}
    for key, v in mx.load(str(path / STATE)).items():
        # "group/name"; checkpoints before learners existed wrote "theta.name" and "opt.name"
        group, _, name = key.partition("/") if "/" in key else key.partition(".")
        groups.setdefault({"opt": "inner_optimizer"}.get(group, group), {})[name] = v
    return info, groups
