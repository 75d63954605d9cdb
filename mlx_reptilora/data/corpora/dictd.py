"""Dictionaries in the DICT protocol's files (/usr/share/dictd: NAME.index + NAME.dict.dz).

Of computing (Debian packages `dict-foldoc`, `dict-jargon`): FOLDOC, the Free On-line Dictionary of
Computing (Denis Howe, GFDL), and the Jargon File 4.4.7 (Eric S. Raymond, public domain). FOLDOC
includes much of the Jargon File, so the two are one group: leaving one out leaves both out. Their
tasks are declared in data/tasks.py.

And three more, each its own group, declared by `tasks()` below:
- V.E.R.A., Virtual Entity of Relevant Acronyms (Oliver Heidelbach; GFDL-1.1-or-later, no invariant
  sections; Debian `dict-vera`): acronym -> expansion, expansion -> acronym.
- The Elements database 20001107 (Jay F. Kominek; public domain; Debian `dict-elements`): element
  name -> symbol, symbol -> name, name -> atomic number. About 106 elements: small splits.
- The Devil's Dictionary (Ambrose Bierce, 1881-1906; public domain; Debian `dict-devil`): word ->
  the first sentence of Bierce's definition, definition (word hidden) -> word.
GCIDE, much larger and with its own markup, is in gcide.py."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from ..examples import Example
from ..spec import Offline
from . import common

ROOT = Path("/usr/share/dictd")
INSTALL = {n: f"apt-get install dict-{n} (Debian/Ubuntu)" for n in ("foldoc", "jargon", "vera", "elements", "devil")}


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
            body = data[common.b64(offset):common.b64(offset) + common.b64(length)].decode("utf-8", "replace")
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


# --- V.E.R.A., the Elements database, the Devil's Dictionary -----------------------------------------

WHAT = {"vera": "V.E.R.A. (acronyms)", "elements": "The Elements database", "devil": "The Devil's Dictionary"}


def _read(name: str) -> list[tuple[str, str]]:
    """(index word, text) of every entry once, in index order: an entry indexed under several words
    comes once, and the database's own notes (00-database-info, 00databaseshort, ...) not at all."""
    data = gzip.open(ROOT / f"{name}.dict.dz").read()
    out, seen = [], set()
    for line in open(ROOT / f"{name}.index", encoding="utf-8", errors="replace"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 3 or re.match(r"00-?database", parts[0]) or tuple(parts[1:3]) in seen:
            continue
        seen.add(tuple(parts[1:3]))
        raw = data[common.b64(parts[1]):common.b64(parts[1]) + common.b64(parts[2])]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")  # a few entries of dict-elements (Roentgen's umlaut)
        out.append((parts[0], text))
    return out


def _corpus(name: str, parse) -> list[dict]:
    index = common.require(ROOT / f"{name}.index", WHAT[name], INSTALL[name])
    common.require(ROOT / f"{name}.dict.dz", WHAT[name], INSTALL[name])
    return common.cached(f"dict-{name}", [ROOT / f"{name}.dict.dz", index], lambda: parse(_read(name)))


def _vera_parse(entries: list[tuple[str, str]]) -> list[dict]:
    """One record per acronym, with its expansions in the file's order. An entry reads
    "ESAXA\\n  Enterprise Systems Architecture / eXtended Architecture (IBM, ESA, XC), "ESA/XA"":
    the headword (letters only), the expansion, its [notes] and (context), then the spelling."""
    acronyms: dict[str, dict] = {}
    for _, text in entries:
        lines = text.strip().split("\n")
        head = lines[0].strip()
        body = re.sub(r"\s+", " ", " ".join(lines[1:])).strip()
        spelled = re.search(r',?\s*"([^"]+)"$', body)
        acronym = spelled.group(1).strip() if spelled else head
        body = body[:spelled.start()] if spelled else body
        body = re.sub(r"\s*\([^()]*\)\s*$", "", body)  # the context: (IBM, ESA, XC)
        body = re.sub(r"\s*\[[^\]]*\]\s*", " ", body)  # notes and optional words: [155,52 Mbps], [system]
        body = re.sub(r"\s+", " ", body).strip(" ,;")
        if (not re.search(r"[A-Za-z]{2}", body) or not head or re.match(r"see\b", body, re.I)
                or common.words(body) > 12 or re.search(r"[()\[\]?]|\.\.\.| ,", body)):
            continue  # unknown (???), a cross reference, an essay, or context we could not peel off
        if re.search(rf"(?<![\w-]){re.escape(acronym)}(?![\w-])", body, re.I):
            continue  # recursive ("GNU's Not Unix"): the answer would be in the question
        rec = acronyms.setdefault(head, {"id": f"vera.{head}", "acronym": acronym, "expansions": []})
        if body.lower() not in (e.lower() for e in rec["expansions"]):  # some are listed twice
            rec["expansions"].append(body)
    return list(acronyms.values())


def _elements_parse(entries: list[tuple[str, str]]) -> list[dict]:
    """Elements with a one- or two-letter symbol and an atomic number: cross references (cuprum,
    wolfram), competing names without a number (hahnium) and the systematic placeholders of the
    superheavies (ununoctium, Uuo; since renamed) are left out."""
    out, numbers = [], set()
    for _, text in entries:
        name = text.strip().split("\n")[0].strip()
        symbol = re.search(r"^Symbol:[ \t]*(\S*)", text, re.M)
        number = re.search(r"^Atomic number:[ \t]*(\d+)\s*$", text, re.M)
        if not (symbol and number and re.fullmatch(r"[A-Z][a-z]?", symbol.group(1))):
            continue
        if number.group(1) in numbers or not re.fullmatch(r"[a-z]+", name):
            continue
        numbers.add(number.group(1))
        out.append({"id": f"elements.{number.group(1)}", "name": name, "symbol": symbol.group(1),
                    "number": number.group(1)})
    return out


_DEVIL_HEAD = re.compile(r"^([A-Z][A-Z'\- ]*[A-Z])\??(?:(?:,| or)\s*[A-Z][A-Z'\- ]*)*[.,]?\s*((?:[a-z]+\.)+)?\s*"
                         r"(?:\[\w+\])?\s*(.*)$", re.S)


def _devil_parse(entries: list[tuple[str, str]]) -> list[dict]:
    """"ROAD, n.  A strip of land ..." -> road and its definition: the entry's first paragraph (the
    verses and anecdotes after it are Bierce's illustrations). Bierce ends sentences with two
    spaces, or with the line; a first sentence is cut there."""
    out, words = [], set()
    for _, text in entries:
        para = re.split(r"\n\s*\n", text.strip())[0].replace("_", "")  # _italics_
        para = re.sub(r"(?<=[a-z])-\n\s*", "-", para)  # "ill-\nsmelling"
        m = _DEVIL_HEAD.match(para)
        if not m or len(m.group(1)) < 2:
            continue  # the letters of the alphabet (I, J, K, ...) are essays, not definitions
        word, body = m.group(1).lower(), m.group(3)
        sentences = [s for s in re.split(r"(?<=[.!?])(?: ?\n\s*| {2,})", body.strip()) if s.strip()]
        sentences = [re.sub(r"\s+", " ", s).strip() for s in sentences]
        if word in words or not sentences or not 3 <= common.words(sentences[0]) <= 60 \
                or not re.search(r"[.!?]$", sentences[0]):
            continue  # no sentence, or a first one that runs on for a paragraph
        definition = sentences[0]
        for s in sentences[1:]:  # a few more sentences for the naming task, ~120 words at most
            if common.words(definition) + common.words(s) > 120:
                break
            definition += " " + s
        words.add(word)
        out.append({"id": f"devil.{word}", "word": word, "first": sentences[0], "definition": definition})
    return out


def _forms(word: str) -> list[str]:
    """The word and its regular inflections, all hidden in a naming task's question."""
    stem = word[:-1] if word.endswith(("e", "y")) else word
    forms = [word, word + "s", word + "es", word + "'s", stem + "ed", stem + "ing", word + "ly", stem + "er",
             stem + "ers"]
    return forms + ([stem + "ies", stem + "ied"] if word.endswith("y") else [])


def _hide(text: str, word: str) -> str:
    """The word and its inflections masked in the text (only those present: mask() compiles a pattern
    per name, slow over thousands of rows)."""
    low = text.lower()
    return common.mask(text, [f for f in _forms(word.lower()) if f in low])


def _rows(records: list[dict], make) -> dict[str, list[Example]]:
    """Examples split by their records' ids; rows with an empty side dropped; of rows with one input,
    the first in id order kept (one question, one answer)."""
    seen, kept = set(), []
    for r in sorted(records, key=lambda r: r["id"]):
        ex = make(r)
        if ex is None:
            continue
        ex = ex._replace(input=ex.input.strip(), target=ex.target.strip(), id=r["id"])
        if ex.input and ex.target and ex.input.lower() not in seen:
            seen.add(ex.input.lower())
            kept.append((r, ex))
    by_id = {r["id"]: ex for r, ex in kept}
    return {s: [by_id[r["id"]] for r in v] for s, v in common.split([r for r, _ in kept]).items()}


def vera(direction: str) -> dict[str, list[Example]]:
    """expand: an acronym with one expansion -> it; acronym: an expansion (the first) -> the acronym."""
    records = _corpus("vera", _vera_parse)
    if direction == "expand":
        return _rows(records, lambda r: Example(r["acronym"], r["expansions"][0]) if len(r["expansions"]) == 1
                     else None)
    return _rows(records, lambda r: Example(r["expansions"][0], r["acronym"]))


def elements(direction: str) -> dict[str, list[Example]]:
    """symbol: name -> symbol; name: symbol -> name; number: name -> atomic number."""
    ask, answer = {"symbol": ("name", "symbol"), "name": ("symbol", "name"), "number": ("name", "number")}[direction]
    return _rows(_corpus("elements", _elements_parse), lambda r: Example(r[ask], r[answer]))


def devil(direction: str) -> dict[str, list[Example]]:
    """define: word -> the first sentence of Bierce's definition; name: the definition (word hidden) -> word."""
    records = _corpus("devil", _devil_parse)
    if direction == "define":
        return _rows(records, lambda r: Example(r["word"], r["first"]))
    return _rows(records, lambda r: Example(_hide(r["definition"], r["word"]), r["word"]))


def tasks() -> list[Offline]:
    vera_src = "V.E.R.A. 1.24 (Debian: dict-vera)"
    el_src = "the Elements database 20001107 (Debian: dict-elements)"
    devil_src = "Ambrose Bierce's The Devil's Dictionary (Debian: dict-devil)"
    return [
        Offline("vera-expand", "vera", "Expand this computing acronym.", f"{vera_src}: acronym -> expansion",
                "GFDL-1.1-or-later", lambda cfg: vera("expand")),
        Offline("vera-acronym", "vera", "Give the acronym of this computing term.",
                f"{vera_src}: expansion -> acronym", "GFDL-1.1-or-later", lambda cfg: vera("acronym"),
                metric="exact"),
        Offline("elements-symbol", "elements", "Give the chemical symbol of this element.",
                f"{el_src}: element name -> symbol", "public domain", lambda cfg: elements("symbol"), metric="exact"),
        Offline("elements-name", "elements", "Name the chemical element with this symbol.",
                f"{el_src}: symbol -> element name", "public domain", lambda cfg: elements("name"), metric="exact"),
        Offline("elements-number", "elements", "Give the atomic number of this chemical element.",
                f"{el_src}: element name -> atomic number", "public domain", lambda cfg: elements("number"),
                metric="exact"),
        Offline("devil-define", "devil", "Define this word as Ambrose Bierce's Devil's Dictionary does, in one "
                "sentence.", f"{devil_src}: word -> first sentence of the definition", "public domain",
                lambda cfg: devil("define")),
        Offline("devil-name", "devil", "Which word does this satirical definition from The Devil's Dictionary "
                "define?", f"{devil_src}: definition (word hidden) -> word", "public domain",
                lambda cfg: devil("name"), metric="exact"),
    ]
