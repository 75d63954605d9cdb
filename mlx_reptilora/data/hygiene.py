"""What is wrong with a task's data, said in one line each and never silently: duplicate rows,
evaluation rows that are also training rows, rows dropped (and why), and a validation task whose
rows a training task holds. Each line is said once per process, on stderr."""

from __future__ import annotations

import sys

from .examples import Example

_said: set[str] = set()


def say(line: str, out=None) -> None:
    if line not in _said:
        _said.add(line)
        print(f"warning: {line}", file=out or sys.stderr)


def _key(e: Example) -> str:
    return e.input if e.input else e.target  # a text row is all target


def check(name: str, splits: dict[str, list[Example]], dropped: dict[str, int] | None = None) -> list[str]:
    """The lines for one task's splits."""
    out = []
    for split, n in (dropped or {}).items():
        if n:
            out.append(f"task {name}: {n} {split} row{'s' * (n != 1)} dropped: an empty field")
    for split, exs in splits.items():
        rows = [(e.input, e.target, e.choices) for e in exs]  # a chat's input holds its earlier turns
        dupes = len(rows) - len(set(rows))
        if dupes:
            out.append(f"task {name}: {dupes} duplicate row{'s' * (dupes != 1)} in {split} (kept)")
    train = {_key(e) for e in splits.get("train", [])}
    for split in ("valid", "test"):
        leaked = sum(_key(e) in train for e in splits.get(split, []))
        if leaked:
            out.append(f"task {name}: {leaked} of {len(splits[split])} {split} rows have an input that is also in "
                       f"train (leakage: the scores on {split} overstate)")
    return out


def shared_rows(valid_name: str, valid: dict[str, list[Example]], trained: dict[str, dict[str, list[Example]]]) -> list[str]:
    """A validation task whose rows are a training task's rows: validation would score memory."""
    mine = {_key(e) for v in valid.values() for e in v}
    out = []
    for name, splits in trained.items():
        theirs = {_key(e) for v in splits.values() for e in v}
        n = len(mine & theirs)
        if n:
            out.append(f"validation task {valid_name}: {n} of its {len(mine)} inputs are rows of training task "
                       f"{name}; meta-validation then scores what was trained on")
    return out
