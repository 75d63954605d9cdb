"""Pack the parsed offline corpora for a lent GPU machine (scripts/device/experiment_learners_gpu.sh
unpacks .taskcache/tasks.tar.gz there): the newest JSON of each corpus in this machine's task cache.
A corpus parsed from two install paths (a clone's own .venv, say) leaves two versions, and the GPU
machine's portable cache refuses a corpus it finds twice.

    python scripts/device/pack_taskcache.py        # then carry .taskcache
"""
import re
import tarfile
from pathlib import Path

from mlx_reptilora.paths import cache_dir


def main():
    newest: dict[str, Path] = {}
    for p in sorted((cache_dir() / "tasks").glob("*.json"), key=lambda p: p.stat().st_mtime):
        m = re.fullmatch(r"(.+)-[0-9a-f]{12}\.json", p.name)
        if m:
            newest[m.group(1)] = p  # sorted by age: the last one seen is the newest
    dest = Path(".taskcache")
    dest.mkdir(exist_ok=True)
    with tarfile.open(dest / "tasks.tar.gz.tmp", "w:gz") as tar:
        for name in sorted(newest):
            tar.add(newest[name], arcname=newest[name].name)
    (dest / "tasks.tar.gz.tmp").replace(dest / "tasks.tar.gz")
    print(f"{len(newest)} corpora in {dest / 'tasks.tar.gz'}")


if __name__ == "__main__":
    main()
