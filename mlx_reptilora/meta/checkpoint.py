"""Atomic checkpoints of the outer loop: θ, the episode counter, the sampler's RNG, and (when it is
carried across tasks) the inner optimizer's state.

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
from mlx.utils import tree_flatten, tree_unflatten

LATEST = "latest"


def save(folder: Path, episode: int, theta: dict, sampler_state: dict, optimizer_state: dict | None,
         extra: dict, keep: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"episode-{episode:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder))
    arrays = {f"theta.{k}": v for k, v in theta.items()}
    if optimizer_state is not None:
        arrays.update({f"opt.{k}": v for k, v in tree_flatten(optimizer_state)})
    mx.save_safetensors(str(tmp / "state.safetensors"), arrays)
    (tmp / "state.json").write_text(json.dumps({"episode": episode, "sampler": sampler_state, **extra}))
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
    return path if (path / "state.json").exists() else None


def load(path: Path) -> tuple[dict, dict, dict | None]:
    """(info from state.json, θ, optimizer state or None)."""
    info = json.loads((path / "state.json").read_text())
    arrays = mx.load(str(path / "state.safetensors"))
    theta = {k[len("theta."):]: v for k, v in arrays.items() if k.startswith("theta.")}
    opt = [(k[len("opt."):], v) for k, v in arrays.items() if k.startswith("opt.")]
    return info, theta, (tree_unflatten(opt) if opt else None)
