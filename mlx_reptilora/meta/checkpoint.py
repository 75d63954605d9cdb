"""Atomic checkpoints of the outer loop: the meta-parameters, the episode counter, the sampler's RNG,
and whatever the learner or the inner loop carries across episodes (an outer Adam's moments, a
carried inner optimizer), as one tree of arrays.

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

from ..errors import UserError
from ..paths import atomic_write_text
from . import trees

LATEST = "latest"
STATE = "state.safetensors"
INFO = "state.json"


def save(folder: Path, episode: int, groups: dict, info: dict, keep: int = 2) -> Path:
    """`groups`: a nested tree of arrays ({"params": {"theta": {name: array}}, ...}), stored under
    "/"-joined paths."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"episode-{episode:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder))
    try:
        arrays = trees.flatten(groups)
        mx.save_safetensors(str(tmp / STATE), arrays)
        (tmp / INFO).write_text(json.dumps({"episode": episode, **info}))
        final = folder / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as e:  # a full disk, a kill: the previous checkpoint stays the latest
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (OSError, RuntimeError)):
            raise UserError(f"cannot write a checkpoint into {folder}: {str(e).splitlines()[0][:120]}") from None
        raise
    atomic_write_text(folder / LATEST, name)
    _prune(folder, keep, final)
    return final


def _prune(folder: Path, keep: int, current: Path) -> None:
    done = sorted(p for p in folder.glob("episode-*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)
    for stale in folder.glob(".episode-*"):  # temporaries of a write that was killed
        shutil.rmtree(stale, ignore_errors=True)


def named(folder: Path) -> Path | None:
    """The checkpoint the `latest` file names (it may since have been damaged)."""
    try:
        return folder / (folder / LATEST).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def latest(folder: Path) -> Path | None:
    """The newest intact checkpoint: the one `latest` names, else the newest that loads (a disk that
    filled up or a hand that deleted can damage the newest). None when there is none at all."""
    found = sorted((p for p in folder.glob("episode-*") if p.is_dir()), reverse=True) if folder.is_dir() else []
    pointed = named(folder)
    candidates = ([pointed] if pointed in found else []) + [p for p in found if p != pointed]
    for path in candidates:
        try:
            load(path)
            return path
        except UserError:
            continue
    if candidates:
        raise UserError(f"no checkpoint in {folder} can be read ({len(candidates)} damaged); move the run away to "
                        f"start again")
    return None


def load(path: Path) -> tuple[dict, dict]:
    """(info from state.json, the tree of arrays `save` was given)."""
    try:
        info = json.loads((path / INFO).read_text())
        info["episode"], info["sampler"]  # noqa: B018 -- what every checkpoint holds
        arrays = mx.load(str(path / STATE))
    except Exception as e:  # JSON, a truncated safetensors file, a missing file: all mean "damaged"
        raise UserError(f"checkpoint {path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:80]})") from None
    return info, trees.unflatten(arrays)
