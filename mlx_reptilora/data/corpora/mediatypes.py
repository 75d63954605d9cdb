"""Media (MIME) types from Debian's `media-types` package: /etc/mime.types, each line a media type and
the filename extensions that stand for it (public information compiled by Debian; its copyright file
says public domain, licence "ad-hoc"). Two choice tasks on the same entries: a file extension -> its
top-level media type (application, audio, ...), and a file extension -> its full media type among
four of the same top-level type."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..examples import Example
from ..spec import Offline
from . import common

MIME_TYPES = Path("/etc/mime.types")
INSTALL = "apt-get install media-types (Debian/Ubuntu)"
# Top-level types with more than a handful of extensions (message/ and multipart/ have 9 between them);
# chemical/ is no IANA type but a common convention (chemical/x-pdb ...).
KINDS = ("application", "audio", "chemical", "font", "image", "model", "text", "video")
PER_KIND = 100  # application/ alone has ~1000 extensions: a fixed sample of each kind balances them
OPTIONS = 4


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _extensions() -> list[dict]:
    """[{id, ext, types}]: every extension with the media types that claim it (a few claim two)."""
    path = common.require(MIME_TYPES, "media-types", INSTALL)

    def build():
        types = {}
        for line in open(path, encoding="utf-8", errors="replace"):
            fields = line.split("#", 1)[0].split()
            for ext in fields[1:]:
                types.setdefault(ext, []).append(fields[0])
        return [{"id": f"mime.{ext}", "ext": ext, "types": sorted(set(t))} for ext, t in sorted(types.items())]

    return common.cached("media-types", [path], build)


def _examples(rows: list[dict]) -> dict[str, list[Example]]:
    return {s: [Example(r["input"], r["target"], r["id"], r.get("choices")) for r in v]
            for s, v in common.split(rows).items()}


def kinds() -> dict[str, list[Example]]:
    """An extension -> its top-level type; extensions claimed by two top-level types are left out."""
    rows = []
    for r in _extensions():
        top = {t.split("/")[0] for t in r["types"]}
        if len(top) == 1 and top <= set(KINDS):
            rows.append({"id": r["id"], "input": f".{r['ext']}", "target": top.pop()})
    sample = []
    for kind in KINDS:
        same = sorted((r for r in rows if r["target"] == kind), key=lambda r: _h(f"sample:{r['id']}"))
        sample += same[:PER_KIND]
    return _examples(sample)


def full_types() -> dict[str, list[Example]]:
    """An extension -> its media type, among it and the three types that follow it in a fixed (hashed)
    order of its top-level type's types, from a point fixed by a hash of the extension; extensions
    claimed by two types are left out."""
    rows = [r for r in _extensions() if len(r["types"]) == 1]
    by_kind = {}
    for t in sorted({r["types"][0] for r in rows}, key=lambda t: _h(f"order:{t}")):
        by_kind.setdefault(t.split("/")[0], []).append(t)
    out = []
    for r in rows:
        target = r["types"][0]
        others = [t for t in by_kind[target.split("/")[0]] if t != target]
        if len(others) < OPTIONS - 1:
            continue  # a top-level type with too few types for three distractors of its own kind
        start = int(_h(r["id"]), 16)
        picked = [others[(start + i) % len(others)] for i in range(OPTIONS - 1)]
        choices = tuple(sorted([target, *picked], key=lambda t: _h(f"{r['id']}:{t}")))
        out.append({"id": r["id"], "input": f".{r['ext']}", "target": target, "choices": choices})
    return _examples(out)


def tasks() -> list[Offline]:
    src = "media types of /etc/mime.types (Debian: media-types)"
    licence = "public domain (Debian media-types: ad-hoc)"
    return [
        Offline("mime-kind", "media-types", "Which top-level media (MIME) type do files with this extension have? "
                f"Answer with one of: {', '.join(KINDS)}.", f"{src}: file extension -> top-level type", licence,
                lambda cfg: kinds(), kind="choice", metric="accuracy", choices=KINDS),
        Offline("mime-type", "media-types", "Which media (MIME) type do files with this extension have? "
                "Answer with one of the options.", f"{src}: file extension -> media type (of four)", licence,
                lambda cfg: full_types(), kind="choice", metric="accuracy"),
    ]
