"""The Linux man-pages project's sections 2 and 3 (system calls and library functions; Debian package
`manpages-dev`; free licences per page, mostly GPL-2+ and BSD, see its copyright file): a page's
DESCRIPTION -> the one-line summary of its NAME section, or -> the function's name."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from ..examples import Example
from . import common

ROOTS = (Path("/usr/share/man/man2"), Path("/usr/share/man/man3"))
MARKER = Path("/usr/share/doc/manpages-dev/copyright")
INSTALL = "apt-get install manpages-dev (Debian/Ubuntu)"
_ESCAPES = {r"\-": "-", r"\[aq]": "'", r"\(aq": "'", r"\[dq]": '"', r"\(dq": '"', r"\(em": "—", r"\[em]": "—",
            r"\(en": "–", r"\[en]": "–", r"\(lq": "“", r"\(rq": "”", r"\[lq]": "“", r"\[rq]": "”", r"\e": "\\",
            r"\&": "", r"\~": " ", r"\ ": " ", r"\(bu": "•", r"\[bu]": "•", r"\|": "", r"\^": "", r"\:": ""}


def _text(line: str) -> str:
    line = re.sub(r"\\f(\[[A-Z]*\]|[BIRPC])", "", line)
    for k, v in _ESCAPES.items():
        line = line.replace(k, v)
    return re.sub(r"\\\*\[[^\]]*\]|\\\*\(..|\\\*.", "", line)


def _macro(line: str) -> str | None:
    """A roff request line as text: font macros join their arguments (".BR strtol ()" -> "strtol()"),
    paragraph macros become breaks, everything else nothing."""
    name, _, rest = line[1:].partition(" ")
    if name in ("B", "I", "SM", "SB"):
        return _text(rest.strip().strip('"'))
    if name in ("BR", "IR", "RB", "RI", "BI", "IB"):
        return "".join(a.strip('"') for a in re.findall(r'"[^"]*"|\S+', _text(rest)))
    if name in ("PP", "P", "LP", "TP", "IP", "HP", "sp", "br"):
        return "\n\n" if name in ("PP", "P", "LP") else " "
    return None


def _page(path: Path) -> dict | None:
    try:
        lines = gzip.open(path).read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    if lines and lines[0].startswith(".so "):
        return None  # an alias of another page
    sections, current = {}, None
    for line in lines:
        if line.startswith(".SH"):
            current = line[3:].strip().strip('"').upper()
            sections[current] = []
        elif current and not line.startswith(('.\\"', "'\\\"")):
            piece = _macro(line) if line.startswith(".") else _text(line)
            if piece is not None:
                sections[current].append(piece)
    name = " ".join(sections.get("NAME", [])).strip()
    if " - " not in name or "DESCRIPTION" not in sections:
        return None
    names, summary = name.split(" - ", 1)
    paragraphs = [re.sub(r"\s+", " ", p).strip() for p in " ".join(sections["DESCRIPTION"]).split("\n\n")]
    paragraphs = [p for p in paragraphs if p]
    description = " ".join(paragraphs[:2])
    if common.words(description) < 20:
        return None
    return {"id": f"{path.parent.name}/{path.name}", "names": [n.strip() for n in names.split(",")],
            "summary": summary.strip(), "description": description}


def _pages() -> list[dict]:
    common.require(MARKER, "The Linux man-pages (sections 2 and 3)", INSTALL)

    def build():
        files = sorted(p for root in ROOTS if root.exists() for p in root.glob("*.gz"))
        # only the man-pages project's own pages: the ones manpages-dev ships (other packages add theirs)
        own = {line.strip() for line in open("/var/lib/dpkg/info/manpages-dev.list", encoding="utf-8")
               if line.startswith("/usr/share/man/man")} if Path("/var/lib/dpkg/info/manpages-dev.list").exists() else None
        out, seen = [], set()
        for f in files:
            if own is not None and str(f) not in own:
                continue
            if f.is_symlink():
                continue  # another name of a page read under its own name: the same text, a leak across splits
            page = _page(f)
            if page and page["description"] not in seen:
                seen.add(page["description"])
                out.append(page)
        return out

    # "-2": the parse that read symlinked pages again under each alias is not reused
    return common.cached("manpages-2", [MARKER], build)


def summaries() -> dict[str, list[Example]]:
    return {s: [Example(r["description"], r["summary"], r["id"]) for r in v]
            for s, v in common.split(_pages()).items()}


def names() -> dict[str, list[Example]]:
    return {s: [Example(common.mask(r["description"], r["names"]), r["names"][0], r["id"]) for r in v]
            for s, v in common.split(_pages()).items()}
