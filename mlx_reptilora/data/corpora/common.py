"""What every offline corpus shares: a stable split by a hash of each record's id (so membership never
depends on what else is in the corpus), caps, a JSON cache of what is slow to parse, masking of the
answer in naming tasks, and one clear line when the data is not installed."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable

from ...errors import UserError
from ...paths import atomic_write_text, cache_dir

SPLIT_CAPS = {"train": 2000, "valid": 300, "test": 300}
FORMAT = 1  # bump when a parser changes what it extracts: old caches are then ignored


def bucket(record_id: str) -> int:
    return int(hashlib.sha256(record_id.encode()).hexdigest(), 16) % 10


def split(records: list[dict]) -> dict[str, list[dict]]:
    """80/10/10 by a hash of the id; each split in hash order, capped (large corpora stay cheap)."""
    out = {"train": [], "valid": [], "test": []}
    for r in sorted(records, key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest()):
        b = bucket(r["id"])
        name = "train" if b < 8 else "valid" if b == 8 else "test"
        if len(out[name]) < SPLIT_CAPS[name]:
            out[name].append(r)
    return out


# A folder of corpora parsed on another machine (its ~/.cache/mlx-reptilora/tasks): a machine without
# the Debian packages (a lent GPU) then builds the very same tasks, and nothing is parsed again.
PORTABLE = "MLX_REPTILORA_TASK_CACHE"


def require(path: Path, what: str, install: str) -> Path:
    if os.environ.get(PORTABLE):
        return path
    if not path.exists():
        raise UserError(f"{what} is not installed ({path} is missing): {install}")
    return path


_read: dict[Path, list[dict]] = {}  # what this process has read: tasks of one corpus share it


def _load(path: Path) -> list[dict]:
    if path not in _read:
        _read[path] = json.loads(path.read_text())
    return _read[path]


def cached(name: str, sources: list[Path], build: Callable[[], list[dict]]) -> list[dict]:
    """build() once per version of its source files; later loads read the JSON (once per process:
    the records are shared, never changed)."""
    portable = os.environ.get(PORTABLE)
    if portable:
        found = [p for p in Path(portable).glob(f"{name}-*.json") if re.fullmatch(rf"{name}-[0-9a-f]{{12}}\.json", p.name)]
        if len(found) != 1:
            what = "no" if not found else f"{len(found)} versions of the"
            raise UserError(f"{PORTABLE}={portable} holds {what} parsed {name} corpus ({name}-*.json): copy exactly "
                            f"one, from where it is installed (`mlx-reptilora tasks` parses it into "
                            f"~/.cache/mlx-reptilora/tasks)")
        return _load(found[0])
    ident = ":".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sources) + f":{FORMAT}"
    path = cache_dir() / "tasks" / f"{name}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}.json"
    if path.exists():
        try:
            return _load(path)
        except ValueError:
            pass  # a damaged cache is rebuilt
    records = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(records))
    return records


def mask(text: str, names: list[str], placeholder: str = "___") -> str:
    """The answer of a naming task hidden from its question (longest names first)."""
    import re

    for n in sorted({n for n in names if n}, key=len, reverse=True):
        text = re.sub(rf"(?<![\w-]){re.escape(n)}(?![\w-])", placeholder, text, flags=re.IGNORECASE)
    return text


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64(s: str) -> int:
    """A number of a DICT-protocol .index line (an entry's offset or length in the .dict.dz)."""
    n = 0
    for c in s:
        n = n * 64 + _B64.index(c)
    return n


def words(text: str) -> int:
    return len(text.split())
