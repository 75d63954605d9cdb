"""Where mlx-reptilora keeps what it builds once: converted models, parsed corpora."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("MLX_REPTILORA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mlx-reptilora")
    return Path(root)
