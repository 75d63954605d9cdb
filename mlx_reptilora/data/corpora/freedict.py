"""FreeDict bilingual dictionaries (https://freedict.org) in the DICT protocol's format (Debian packages
`dict-freedict-XXX-eng` and `dict-freedict-eng-XXX`, files /usr/share/dictd/freedict-XXX-YYY.{index,dict.dz}).
Licence: GPL-2.0-or-later (each dictionary's 00-database-info entry and debian/copyright say so).

One translation task per direction for eight languages written in the Latin script: a headword (a word
or a short phrase) -> its first translation. The two directions of one language share a group: an
English->French entry is often the French->English one reversed.

The small FreeDict dictionaries were mostly converted from Ergane, and some of their entries are damaged:
a multi-word headword cut to its first word (`double` -> `camadematrimonio`, beside the real `double` ->
`doble`). Such a cut headword collides with the real one, so a headword with several entries is dropped:
it has several answers anyway. Some translations lost their spaces (`contratodetrabalho`, `bytheway`): a
rare one-word translation that known words make up is dropped (in English always, with some real
compounds; in the other languages, which write compounds as one word, only for a multi-word headword).
Some noise remains (`Great` -> `Brittannien`: a cut headword with no twin).

German (dict-freedict-deu-eng, ~40 MB) is left out for its size, Dutch because thousands of nld-eng's
English translations lost their spaces (`tradeandindustry`)."""

from __future__ import annotations

import functools
import gzip
import re
from collections import Counter
from pathlib import Path

from ..examples import Example
from ..spec import Offline
from . import common

ROOT = Path("/usr/share/dictd")
LANGUAGES = {"fra": "French", "spa": "Spanish", "ita": "Italian", "por": "Portuguese", "swe": "Swedish",
             "afr": "Afrikaans", "cym": "Welsh", "lat": "Latin"}
_NOTES = re.compile(r"<[^<>]*>|\[[^\[\]]*\]|\([^()]*\)|\{[^{}]*\}")  # <pos, gender>, [domain], (note), {xref}


def _tidy(text: str) -> str:
    text = text.replace("\u2010", "-").replace("\u2011", "-")  # the converter's hyphens: plain ones, for exact match
    return re.sub(r"\s+", " ", text).strip(" .,;:")


def _headword(line: str) -> str:
    """`chat /ʃa/ <n, masc>`: the headword without its tags and pronunciation (notes in it stay: context)."""
    line = re.sub(r"(\s*<[^<>]*>)+\s*$", "", line.strip())
    return _tidy(re.sub(r"(\s+/[^/]*/)+$", "", line))  # some carry two


def _first_translation(lines: list[str]) -> str:
    """The first equivalent of the first sense: `1. (laivas) tug, tug-boat` -> `tug`."""
    senses = [x for x in lines if x and not x.startswith("See also")]
    if not senses:
        return ""
    sense = _NOTES.sub(" ", re.sub(r"^\d+\.\s*", "", senses[0]))
    return next((t for t in map(_tidy, re.split(r"[,;]", sense)) if t), "")


def _fair(text: str) -> bool:
    # a short answer with letters; no digits (numbers, dates), elided phrase (`... ago`), bare affix, or
    # bracket left unclosed in the source (`rounds (of drinks, golf`)
    return (0 < common.words(text) <= 4 and re.search(r"[^\W\d_]", text) is not None
            and not re.search(r"\d|\.\.\.|…|[][(){}<>/]|^-|-$", text))


@functools.lru_cache(maxsize=None)  # every task reads its language's two dictionaries, English ones all
def _read(pair: str) -> list[tuple[str, str, str]]:
    """(headword, first translation, all translations) of each entry, in the index's order."""
    name = f"freedict-{pair}"
    text = gzip.open(ROOT / f"{name}.dict.dz").read()
    seen, out = set(), []
    for line in open(ROOT / f"{name}.index", encoding="utf-8", errors="replace"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 3 or parts[0].startswith("00") or tuple(parts[1:3]) in seen:
            continue  # the database's own entries; a second index key of one entry
        seen.add(tuple(parts[1:3]))
        body = text[common.b64(parts[1]):common.b64(parts[1]) + common.b64(parts[2])].decode("utf-8", "replace")
        lines = [x.strip() for x in body.split("\n\n")[0].split("\n")]
        out.append((_headword(lines[0]), _first_translation(lines[1:]), " ".join(lines[1:])))
    return out


def _tokens(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text.casefold())


_GLUE = {"to", "of", "on", "at", "by", "up", "in", "be", "go"}  # English words shorter than 3 letters that glue


def _glued(word: str, vocab: Counter, english: bool) -> bool:
    """Spaces lost in conversion (`contratodetrabalho`, `commitaggression`): a rare word that known words
    make up. English is judged on all the dictionaries' English, so more strictly: a few real compounds
    (`toothpaste`) go too, which costs little."""
    if vocab[word] > (2 if english else 1) or len(word) < 5:
        return False
    ends = {0}  # where a split into known words may end
    for j in range(2, len(word) + 1):
        pieces = (word[i:j] for i in ends if word[i:j] != word)
        if any(p in _GLUE if english and len(p) < 3 else vocab[p] > 1 and len(p) >= 2 for p in pieces):
            ends.add(j)
    return len(word) in ends


def _camel(text: str) -> bool:
    return any(x.islower() and y.isupper() for x, y in zip(text, text[1:]))  # `IangtzeKiang`: spaces lost


def _files(code: str) -> list[Path]:
    out = []
    for p in (f"{code}-eng", f"eng-{code}"):
        install = f"apt-get install dict-freedict-{p} (Debian/Ubuntu)"
        out += [common.require(ROOT / f"freedict-{p}.{ext}", f"FreeDict {p}", install) for ext in ("index", "dict.dz")]
    return out


@functools.lru_cache(maxsize=None)
def _vocab(code: str) -> Counter:
    """How often each word occurs in the language's two dictionaries (English: in all sixteen)."""
    counts = Counter()
    for c in LANGUAGES if code == "eng" else [code]:
        for p in (f"{c}-eng", f"eng-{c}"):
            for head, _, body in _read(p):
                counts.update(_tokens(head if p.startswith(code) else body))
    return counts


def _entries(pair: str) -> list[dict]:
    src, tgt = pair.split("-")
    code = src if tgt == "eng" else tgt
    # English words are told apart from glued ones by all the dictionaries' English: all are sources
    files = _files(code) + [f for c in LANGUAGES if c != code and tgt == "eng" for f in _files(c)]

    def build():
        vocab, raw = _vocab(tgt), _read(pair)
        heads = Counter(h for h, _, _ in raw)
        out = []
        for head, target, _ in raw:
            if heads[head] > 1 or not (_fair(head) and _fair(target)) or head.casefold() == target.casefold():
                continue
            # Glued: any English one (`atacar` -> `commitaggression`); in the other languages, which join
            # compounds legitimately, only one word for several (`labour agreement` -> `contratodetrabalho`).
            if _camel(target) or " " not in target and (tgt == "eng" or " " in head) and _glued(
                    target.casefold(), vocab, tgt == "eng"):
                continue
            out.append({"id": f"freedict.{pair}.{head}", "input": head, "target": target})
        return out

    return common.cached(f"freedict-{pair}", files, build)


def translate(pair: str) -> dict[str, list[Example]]:
    return {s: [Example(r["input"], r["target"], r["id"]) for r in v]
            for s, v in common.split(_entries(pair)).items()}


def tasks() -> list[Offline]:
    out = []
    for code, language in LANGUAGES.items():
        for src, tgt, a, b in ((code, "eng", language, "English"), ("eng", code, "English", language)):
            pair = f"{src}-{tgt}"
            out.append(Offline(
                f"freedict-{pair}", f"freedict-{code}",
                f"Translate this {a} word or phrase into {b}. Answer with the translation only.",
                f"FreeDict {a}-{b} (Debian: dict-freedict-{pair}): {a} headword -> its first {b} translation",
                "GPL-2.0-or-later", lambda cfg, pair=pair: translate(pair), kind="generate", metric="exact"))
    return out
