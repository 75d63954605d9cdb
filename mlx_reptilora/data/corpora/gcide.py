"""GCIDE, the GNU Collaborative International Dictionary of English 0.48 (Webster's Revised Unabridged
Dictionary of 1913, with supplements by its volunteers; GPL-2.0-or-later, as its Debian copyright file
and its 00-database-info entry say; Debian package `dict-gcide`, a DICT database in /usr/share/dictd).
Three tasks: a word -> the definition of its first sense, that definition (word hidden) -> the word,
and the word with that definition -> its part of speech (noun, verb, adjective or adverb).

Debian's file is GCIDE's XML-ish source (<hw>, <pos>, <def>, <ent>, ...) already rendered by dictfmt
into Webster's plain layout:

    Dog \\Dog\\ (d[add]g or d[o^]g), n. [AS. docga; akin to D. dog
       mastiff, ...]
       1. (Zool.) A quadruped of the genus {Canis}, esp. the
          domestic dog ({Canis familiaris}).
          [1913 Webster]

that is: headword, \\syllabified\\ form, (pronunciation), part of speech, [etymology], then numbered
senses, each ending in its [source]; {cross references} in braces, and characters outside ASCII as
bracketed entities ([ae] for æ, ['e] for é). The senses GCIDE took from WordNet ([WordNet 1.5]) are
left out: WordNet's own tasks are another group, and their glosses must not leak into this one.
About 74,000 words qualify; a deterministic sample of them (by the hash the split uses) is kept, far
more than the split's caps need."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

from ..examples import Example
from ..spec import Offline
from . import common
from .dictd import _hide, _rows

ROOT = Path("/usr/share/dictd")
INSTALL = "apt-get install dict-gcide (Debian/Ubuntu)"
POS = {"n.": "noun", "n. pl.": "noun", "n. sing.": "noun", "v. t.": "verb", "v. i.": "verb",
       "v. t. & i.": "verb", "v. i. & t.": "verb", "v.": "verb", "a.": "adjective", "adj.": "adjective",
       "adv.": "adverb"}
CHOICES = ("noun", "verb", "adjective", "adverb")
SAMPLE = 12000  # records kept: split() takes 2000/300/300 of them, in the same hash order
PER_CLASS = 600  # words of each part of speech in gcide-pos: 2400 rows, under split()'s train cap of 2000

_MARKS = {"'": "\u0301", "`": "\u0300", "^": "\u0302", '"': "\u0308", "~": "\u0303", "=": "\u0304", ",": "\u0327"}
_NAMED = {"ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "eth": "ð", "thorn": "þ", "deg": "°", "sect": "§",
          "pounds": "£", "root": "√", "times": "×", "middot": "·", "para": "¶", "nbsp": " ", "min": "′",
          "sec": "″", "prime": "′", "sharp": "♯", "flat": "♭", "rarr": "→", "yogh": "ȝ", "ng": "ŋ"}
_GREEK = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau " \
         "upsilon phi chi psi omega"
for i, g in enumerate(_GREEK.split()):
    _NAMED[g] = "αβγδεζηθικλμνξοπρστυφχψω"[i]
    _NAMED[g.capitalize()] = "ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ"[i]


def _entity(m: re.Match) -> str:
    """One [entity]: a named character, or an accent mark before a letter (['e] -> é); anything else
    stays as it was (the caller then drops the row: a word with a hole in it is no answer)."""
    code = m.group(1)
    if code in _NAMED:
        return _NAMED[code]
    if len(code) == 2 and code[0] in _MARKS and code[1].isalpha():
        return unicodedata.normalize("NFC", code[1] + _MARKS[code[0]])
    return m.group(0)


def _text(s: str) -> str:
    return re.sub(r"\[([A-Za-z'`^\"~=,]{1,7})\]", _entity, s)


def _header(lines: list[str]) -> tuple[str, str, list[str]]:
    """(headword, part of speech, the lines after the header). The header runs on while its
    [etymology] brackets are open."""
    header, i = lines[0], 1
    while i < len(lines) and (header.count("[") > header.count("]") or header.count("(") > header.count(")")
                              or lines[i].lstrip().startswith("[")):  # a second [etymology] or [note]
        header += " " + lines[i].strip()
        i += 1
    m = re.match(r"^([^\\]+?)\s*\\[^\\]*\\", header)
    if not m:
        return "", "", []
    rest = header[m.end():]
    rest = re.sub(r"^(\s*(,|or)?\s*[^\\,\[]*\\[^\\]*\\)*", "", rest)  # further headwords: Color \..\, Colour \..\
    rest = re.sub(r"^\s*\([^)]*\)", "", rest)  # the pronunciation
    pos = re.match(r"^\s*,?\s*([^\[(;{]*)", rest).group(1).strip().rstrip(",").strip()
    return m.group(1).strip(), pos, lines[i:]


def _first_sense(body: list[str]) -> tuple[str, str]:
    """(definition, source) of the first sense: its paragraph without the sense number, a leading
    (Zool.)-like domain label, or its sub-senses (a), (b); and the entry's first [source] tag."""
    para = []
    for line in body:
        if not line.strip():
            if para:
                break
            continue
        para.append(line.strip())
    text = " ".join(para)
    source = re.search(r"\[((?:1913 Webster|Webster 1913|WordNet|PJC|Century|RDH)[^\]]*)\]", "\n".join(body))
    text = re.split(r"\[(?:1913 Webster|Webster 1913|WordNet|PJC|Century|RDH)|\b(?:Syn|Note):", text)[0]
    text = re.sub(r"^(\d{1,2}\.?\s+|\([A-Z][^)]*\)\s*)+", "", text)  # 1. (Zool.)
    text = re.sub(r"^\(a\)\s*", "", text)
    text = re.split(r"[:;.]?\s*(?:Specifically:?\s*)?\(a\)", text)[0]
    return text, source.group(1) if source else ""


def _definition(text: str) -> str:
    """The sense's own words: no citation (--Shak.), usage example (; as, a sly dog), trailing "See
    {Musa}.", labels ([Obs.], [Colloq.]) or cross-reference braces. Entities are already characters:
    a bracket left inside a word is one we cannot write, and the row is dropped later."""
    text = re.split(r"\s*--", text)[0]
    text = re.split(r"[;,:]\s+as,\s", text)[0]
    text = re.split(r"(?<=[.;])\s+See\b", text)[0]
    text = re.sub(r"(^|\s)\[[^\]]*\]", "", text)
    text = re.sub(r"\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\s+", " ", text).strip(" ;,:")
    text = text[:1].upper() + text[1:]  # GCIDE's later additions start in lower case
    return text + "." if text and text[-1] not in ".!?" else text


_TAXON = re.compile(r"(an?|the) (genus|family|subfamily|order|suborder|subclass|tribe|phylum)\b", re.I)


def _word(head: str, definition: str) -> str:
    """Webster capitalises every headword: lower-case it, except a taxon's Latin name ("A genus of
    ferns ..."); proper nouns ("prop. n.") are not among the parts of speech kept."""
    if _TAXON.match(definition) or head[1:] != head[1:].lower():
        return head
    return head.lower()


def _tokens(text: str) -> str:
    return " " + " ".join(re.findall(r"[\w'-]+", text.lower())) + " "


def _parse(path: Path, index: Path) -> list[dict]:
    import gzip

    data = gzip.open(path).read()
    blocks = set()
    for line in open(index, encoding="utf-8", errors="replace"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) >= 3 and not parts[0].startswith("00"):
            blocks.add((common.b64(parts[1]), common.b64(parts[2])))
    out, words, definitions = [], set(), set()
    for offset, length in sorted(blocks):  # file order: the first entry of a word is its main one
        raw = data[offset:offset + length].decode("utf-8", "replace")
        lines = raw.rstrip().split("\n")
        head, pos, body = _header(lines)
        if not head or not body:
            continue
        definition, source = _first_sense(body)
        if "WordNet" in source or not source and re.search(r"[.;]\s+[A-Z][\w-]*$", definition):
            continue  # WordNet's gloss; or a sense run into the next entry's headword (an old dictfmt slip)
        definition = _definition(_text(definition))
        head = _text(head.replace('"', "").replace("*", "").replace("`", ""))
        word = _word(head, definition)
        if re.search(r"\[|\]|\ufffd|\\", definition + word) or not re.fullmatch(r"[^\W\d_][\w' -]*[^\W\d_]", word) \
                or re.search(r"\w'[aeiou]", word):
            continue  # an entity we cannot write, an accent lost (Beurr'e), no word: an affix (thio-), a symbol
        if not 3 <= common.words(definition) <= 60 or common.words(word) > 3 \
                or re.match(r"(see|same as|alt\.|pl\.|plural|imp\.|p\. ?p\.|obs\.|of |an? (form|variant|"
                            r"abbreviation|contraction))", definition, re.I):
            continue  # a cross reference, an inflection, or a definition that says nothing by itself
        if not definition[0].isalpha() or re.search(r"[{}?]|\(b\)|\(\(", definition):
            continue  # markup we could not peel off (a stray pronunciation, sense number, brace), or
            # GCIDE's "?" for a character its typists could not read ("th?ught")
        if f" {word.lower()} " in _tokens(definition):
            continue  # defined by itself ("Dog Latin, Latin of dogs")
        if word.lower() in words or definition.lower() in definitions:
            continue
        words.add(word.lower())
        definitions.add(definition.lower())
        out.append({"id": f"gcide.{word}", "word": word, "pos": POS.get(pos, ""), "definition": definition})
    # A sample in the split's own hash order, so that split() of the sample picks what it would of the
    # whole; and the first PER_CLASS words of each part of speech, for the part-of-speech task.
    out.sort(key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
    balanced = _balanced(out)
    return out[:SAMPLE] + [r for r in out[SAMPLE:] if r["id"] in balanced]


def _balanced(records: list[dict]) -> set[str]:
    """The ids of the first PER_CLASS records of each part of speech, in the order given."""
    taken, ids = dict.fromkeys(CHOICES, 0), set()
    for r in records:
        if r["pos"] and taken[r["pos"]] < PER_CLASS:
            taken[r["pos"]] += 1
            ids.add(r["id"])
    return ids


def _records() -> list[dict]:
    path = common.require(ROOT / "gcide.dict.dz", "GCIDE", INSTALL)
    index = common.require(ROOT / "gcide.index", "GCIDE", INSTALL)
    return common.cached("gcide", [path, index], lambda: _parse(path, index))


def define() -> dict[str, list[Example]]:
    return _rows(_records(), lambda r: Example(r["word"], r["definition"]))


def name() -> dict[str, list[Example]]:
    return _rows(_records(), lambda r: Example(_hide(r["definition"], r["word"]), r["word"]))


def pos() -> dict[str, list[Example]]:
    """Balanced: as many words of each part of speech (nouns would be 58% of a plain sample, adverbs 4%)."""
    records = _records()  # in hash order: the first of each part of speech are those of the whole corpus
    keep = _balanced(records)
    return _rows([r for r in records if r["id"] in keep], lambda r: Example(f"{r['word']}: {r['definition']}", r["pos"]))


def tasks() -> list[Offline]:
    src = "GCIDE 0.48, Webster's 1913 and supplements (Debian: dict-gcide)"
    return [
        Offline("gcide-define", "gcide", "Define this word in one sentence, as a dictionary would.",
                f"{src}: word -> definition of its first sense", "GPL-2.0-or-later", lambda cfg: define()),
        Offline("gcide-name", "gcide", "Give the word this dictionary definition describes.",
                f"{src}: definition (word hidden) -> word", "GPL-2.0-or-later", lambda cfg: name(), metric="exact"),
        Offline("gcide-pos", "gcide", "Which part of speech is this word, in the sense defined? Answer with one "
                "of: noun, verb, adjective, adverb.", f"{src}: word and definition -> part of speech",
                "GPL-2.0-or-later", lambda cfg: pos(), kind="choice", metric="accuracy", choices=CHOICES),
    ]
