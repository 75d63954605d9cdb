"""The Unicode Character Database of the running Python (`unicodedata`; Unicode-3.0 licence, formerly
Unicode-DFS-2016; no package to install). Characters of the Basic Multilingual Plane that stand
alone: letters, numbers, punctuation and symbols (no controls, format characters, spaces, private
use, surrogates or combining marks), without the names that only spell a code point (CJK
ideographs, Hangul syllables). Three tasks, one group: a character -> its name, a name -> the
character, a character -> its general category (a choice over the categories with enough members,
the same number of characters from each)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..examples import Example
from ..spec import Offline
from . import common

GROUP = "unicode"
LICENCE = "Unicode-3.0"
CATEGORIES = {"Lu": "Uppercase Letter", "Ll": "Lowercase Letter", "Lm": "Modifier Letter", "Lo": "Other Letter",
              "Nd": "Decimal Number", "Nl": "Letter Number", "No": "Other Number", "Ps": "Open Punctuation",
              "Pe": "Close Punctuation", "Po": "Other Punctuation", "Sm": "Math Symbol", "Sc": "Currency Symbol",
              "Sk": "Modifier Symbol", "So": "Other Symbol"}  # the rest have under 60 characters in the BMP
PER_CATEGORY = 200
SAMPLE = 22  # percent of the ~14,700 named characters kept for the naming tasks: enough to fill split()'s caps
# Names that only spell the code point (CJK UNIFIED IDEOGRAPH-4E00) or a syllable's letters.
ALGORITHMIC = re.compile(r"^(CJK (UNIFIED|COMPATIBILITY) IDEOGRAPH|HANGUL SYLLABLE |TANGUT |KHITAN |NUSHU )|-[0-9A-F]{3,}$")


def _hash(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def _source() -> Path:
    import sys
    import unicodedata

    # The database's version goes with its extension module (or the interpreter, where it is built in).
    return Path(getattr(unicodedata, "__file__", None) or sys.executable)


def _characters() -> dict[str, list[dict]]:
    def build():
        import unicodedata

        eligible = []
        for cp in range(0x10000):
            c = chr(cp)
            category = unicodedata.category(c)
            name = unicodedata.name(c, "")
            if category[0] in "LNPS" and name and not ALGORITHMIC.search(name):
                eligible.append({"id": f"U+{cp:04X}", "char": c, "name": name, "category": category})
        # A sample by a hash other than split()'s (which would then put the whole sample in one split).
        named = [{"task": "name", **r} for r in eligible if _hash(f"sample:{r['id']}") % 100 < SAMPLE]
        count, balanced = {}, []
        for r in sorted(eligible, key=lambda r: _hash(f"category:{r['id']}")):
            count[r["category"]] = count.get(r["category"], 0) + 1
            if r["category"] in CATEGORIES and count[r["category"]] <= PER_CATEGORY:
                balanced.append({"task": "category", **r, "category": CATEGORIES[r["category"]]})
        return named + sorted(balanced, key=lambda r: r["id"])

    out = {}
    # This file is a source too: a change of what the parser keeps rebuilds the cache.
    for r in common.cached("unicode", [_source(), Path(__file__)], build):
        out.setdefault(r["task"], []).append(r)
    return out


def _examples(task: str, row) -> dict[str, list[Example]]:
    return {s: [e for e in (row(r) for r in v) if e] for s, v in common.split(_characters()[task]).items()}


def tasks() -> list[Offline]:
    source = "the Unicode Character Database of the running Python (unicodedata)"
    categories = tuple(CATEGORIES.values())
    return [
        Offline("unicode-name", GROUP, "Give the official Unicode name of this character.",
                f"{source}: character -> name", LICENCE,
                lambda cfg: _examples("name", lambda r: Example(r["char"], r["name"], r["id"])), metric="exact"),
        Offline("unicode-character", GROUP, "Write the single character that has this Unicode name.",
                f"{source}: name -> character", LICENCE,
                # "LATIN CAPITAL LETTER A" spells its own answer: such (ASCII) rows are left out.
                lambda cfg: _examples("name", lambda r: None if r["char"].casefold() in r["name"].casefold() else
                                      Example(r["name"], r["char"], r["id"])), metric="exact"),
        Offline("unicode-category", GROUP,
                f"Which Unicode general category is this character in? Answer with one of: {', '.join(categories)}.",
                f"{source}: character -> general category", LICENCE,
                lambda cfg: _examples("category", lambda r: Example(r["char"], r["category"], r["id"])),
                kind="choice", metric="accuracy", choices=categories),
    ]
