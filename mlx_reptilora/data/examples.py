"""The unit of data: one document and its reference summary (or title, or first line)."""

from __future__ import annotations

from typing import NamedTuple


class Example(NamedTuple):
    document: str
    summary: str
    id: str = ""
