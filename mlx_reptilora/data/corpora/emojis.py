"""Emoji and their short names from PyPI `emoji` (its unicode_codes/emoji*.json; the package is
BSD-3-Clause, the names come from Unicode CLDR, Unicode-3.0). The fully qualified emoji without a
skin-tone variant (~1900: the five tones of one person are one emoji here). Three tasks, one group:
emoji -> its English name, English name -> the emoji, and a name in one of seven Latin-script
languages -> which language (a choice; a name spelt the same in two languages is left out). This
module is not called emoji.py so that it never stands in for the package it reads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ..examples import Example
from ..spec import Offline
from . import common

GROUP = "emoji"
LICENCE = "Unicode-3.0 (CLDR names) / BSD-3-Clause (PyPI emoji)"
LANGUAGES = {"en": "English", "de": "German", "es": "Spanish", "fr": "French", "it": "Italian",
             "pt": "Portuguese", "tr": "Turkish"}
FULLY_QUALIFIED = 2  # emoji.json's status: 1 component, 2 fully qualified, 3 minimally, 4 unqualified
TONES = {chr(c) for c in range(0x1F3FB, 0x1F400)}


def _root() -> Path:
    spec = importlib.util.find_spec("emoji")
    root = Path(spec.origin).parent if spec and spec.origin else Path("site-packages/emoji")
    return common.require(root / "unicode_codes" / "emoji.json", "emoji (PyPI)", "pip install emoji").parent


def _flag(e: str) -> bool:
    """A country's flag (two regional indicators) or a region's (black flag + tag letters)."""
    return 0x1F1E6 <= ord(e[0]) <= 0x1F1FF or (e[0] == "\U0001F3F4" and len(e) > 1 and 0xE0020 <= ord(e[1]) <= 0xE007F)


def _name(short: str) -> str:
    return " ".join(short.strip(":").replace("_", " ").split())


def _emoji() -> list[dict]:
    """{"id", "emoji", "names": {lang: name}}, in the package's order."""
    root = _root()
    files = [root / "emoji.json"] + [root / f"emoji_{lang}.json" for lang in LANGUAGES if lang != "en"]

    def build():
        data = json.loads(files[0].read_text(encoding="utf-8"))
        other = {lang: json.loads((root / f"emoji_{lang}.json").read_text(encoding="utf-8"))
                 for lang in LANGUAGES if lang != "en"}
        out = []
        for e, d in data.items():
            if d["status"] > FULLY_QUALIFIED or (len(e) > 1 and TONES & set(e)):
                continue
            names = {"en": _name(d["en"])}
            if _flag(e):
                names["en"] = f"flag: {names['en']}"  # CLDR's name; the package keeps only the country's
            names.update({lang: _name(other[lang].get(e, "")) for lang in other})
            out.append({"id": "emoji." + "-".join(f"{ord(c):X}" for c in e), "emoji": e,
                        "names": {k: v for k, v in names.items() if v}})
        return out

    # This file is a source too: a change of what the parser keeps rebuilds the cache.
    return common.cached("emoji", files + [Path(__file__)], build)


def _unique(records: list[dict], key) -> list[dict]:
    """One record per input (the first in id order)."""
    seen, out = set(), []
    for r in sorted(records, key=lambda r: r["id"]):
        k = key(r).casefold()
        if k and k not in seen:
            seen.add(k)
            out.append(r)
    return out


def name() -> dict[str, list[Example]]:
    records = _unique(_emoji(), lambda r: r["emoji"])
    return {s: [Example(r["emoji"], r["names"]["en"], r["id"]) for r in v] for s, v in common.split(records).items()}


def from_name() -> dict[str, list[Example]]:
    records = _unique(_emoji(), lambda r: r["names"]["en"])
    return {s: [Example(r["names"]["en"], r["emoji"], r["id"]) for r in v] for s, v in common.split(records).items()}


def name_language() -> dict[str, list[Example]]:
    rows, langs_of = [], {}
    for r in _emoji():
        for lang, text in r["names"].items():
            rows.append({"id": f"{r['id']}.{lang}", "text": text, "lang": lang})
            langs_of.setdefault(text.casefold(), set()).add(lang)
    # "taxi", "pizza": the same in several languages, no one answer.
    rows = _unique([r for r in rows if len(langs_of[r["text"].casefold()]) == 1], lambda r: r["text"])
    return {s: [Example(r["text"], LANGUAGES[r["lang"]], r["id"]) for r in v] for s, v in common.split(rows).items()}


def tasks() -> list[Offline]:
    source = "the emoji package's CLDR short names (PyPI: emoji)"
    languages = tuple(sorted(LANGUAGES.values()))
    return [
        Offline("emoji-name", GROUP, "Give the English name of this emoji.", f"{source}: emoji -> English name",
                LICENCE, lambda cfg: name()),
        Offline("emoji-from-name", GROUP, "Write the emoji that has this name.", f"{source}: English name -> emoji",
                LICENCE, lambda cfg: from_name(), metric="exact"),
        Offline("emoji-name-language", GROUP,
                f"Which language is this emoji name written in? Answer with one of: {', '.join(languages)}.",
                f"{source}: a name in one of seven languages -> its language", LICENCE,
                lambda cfg: name_language(), kind="choice", metric="accuracy", choices=languages),
    ]
