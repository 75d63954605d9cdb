"""What experiment drivers share about results (scripts/experiment.py, and the frozen record of
issue #8's experiment in docs/records/): one cell of compare's rows, whether two cells' intervals
are apart, a run's metrics.jsonl records, and the query-loss curves in them."""

from __future__ import annotations

import json
from pathlib import Path

ALIASES = {"reptilora": "meta"}  # the name "meta" had when every start was ReptiLoRA's


def canonical(system: str) -> str:
    return ALIASES.get(system, system)


def cell(rows: list[dict], task: str, system: str, k: int) -> dict | None:
    """The row of one (task, system, shots) cell; rows written when "meta" was "reptilora" count as "meta"."""
    system = canonical(system)
    return next((r for r in rows if (r["task"], canonical(r["system"]), r["shots"]) == (task, system, k)), None)


def fmt(row: dict | None, metric: str = "rougeL") -> str:
    return f"{row[metric]['mid']:.2f} [{row[metric]['low']:.1f}, {row[metric]['high']:.1f}]" if row else "–"


def apart(a: dict, b: dict, metric: str = "rougeL") -> bool:
    """Whether two cells' 95% intervals do not overlap."""
    return a[metric]["low"] > b[metric]["high"] or b[metric]["low"] > a[metric]["high"]


def records(path: Path) -> list[dict]:
    """A metrics.jsonl's records; a line cut short by a kill is skipped, not fatal."""
    out = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def query_losses(path: Path) -> tuple[list[int], list[float], list[float]]:
    """The monitored episodes of a run, and the query loss at the start and after adapting from it."""
    recs = [r for r in records(path) if "query_loss_after" in r]
    return ([r["episode"] for r in recs], [r["query_loss_before"] for r in recs],
            [r["query_loss_after"] for r in recs])
