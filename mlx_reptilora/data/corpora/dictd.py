"""Dictionaries of computing from the DICT protocol's files (Debian packages `dict-foldoc`,
`dict-jargon`): FOLDOC, the Free On-line Dictionary of Computing (Denis Howe, GFDL), and the Jargon
File 4.4.7 (Eric S. Raymond, public domain). FOLDOC includes much of the Jargon File, so the two are
one group: leaving one out leaves both out."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from ..examples import Example
from . import common

ROOT = Path("/usr/share/dictd")
INSTALL = {"foldoc": "apt-get install dict-foldoc (Debian/Ubuntu)", "jargon": "apt-get install dict-jargon (Debian/Ubuntu)"}
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64.index(c)
    return n


def _clean(text: str) -> str:
    text = re.sub(r"\{([^{}]*)\}", r"\1", text)  # {cross references}
    return re.sub(r"\s+", " ", text).strip()


def _entries(name: str) -> list[dict]:
    what = name.upper() if name == "foldoc" else "The Jargon File"
    index = common.require(ROOT / f"{name}.index", what, INSTALL[name])
    common.require(ROOT / f"{name}.dict.dz", what, INSTALL[name])  # both: cached() reads their sizes

    def build():
        data = gzip.open(ROOT / f"{name}.dict.dz").read()
        out, seen = [], set()
        for line in open(index, encoding="utf-8", errors="replace"):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or parts[0].startswith("00-database"):
                continue
            head, offset, length = parts[:3]
            body = data[_b64(offset):_b64(offset) + _b64(length)].decode("utf-8", "replace")
            paragraphs = [p for p in re.split(r"\n\s*\n", body) if p.strip()]
            if len(paragraphs) < 2 or (offset, length) in seen:
                continue  # a headword line alone, or a second index line of the same entry
            seen.add((offset, length))
            term = paragraphs[0].strip().splitlines()[0].strip()
            text = _clean(paragraphs[1])
            text = re.sub(r"^(<[^>]*>\s*)+", "", text)  # FOLDOC's <category> tags
            text = re.sub(r"^(\*[^*]+\*\s*)?(/[^/\s][^/]*/\s*)?", "", text)  # "*not* /deeb'ee`n/": notes, pronunciation
            text = re.sub(r"^(/[^/]+/,?\s*)?(n\.|v\.|adj\.|adv\.|interj\.|vt\.|vi\.|pl\.)*[,\s]*", "", text)  # jargon
            first = re.split(r"(?<=[a-z0-9)\]])\. ", text)[0].rstrip(".") + "."
            if common.words(text) < 8 or len(term) > 40:
                continue
            out.append({"id": f"{name}.{head}", "term": term, "definition": text, "first": first})
        return out

    return common.cached(f"dict-{name}", [ROOT / f"{name}.dict.dz", index], build)


def naming(name: str) -> dict[str, list[Example]]:
    """The definition (the term masked) -> the term."""
    return {s: [Example(common.mask(r["definition"], [r["term"]]), r["term"], r["id"]) for r in v]
            for s, v in common.split(_entries(name)).items()}


def defining(name: str) -> dict[str, list[Example]]:
    """The term -> the first sentence of its definition."""
    return {s: [Example(r["term"], r["first"], r["id"]) for r in v]
            for s, v in common.split(_entries(name)).items()}
