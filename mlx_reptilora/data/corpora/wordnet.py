"""WordNet 3.0 (Princeton University; the WordNet 3.0 licence; Debian package `wordnet-base`): synsets
with their words and glosses. Two tasks: a word (and its part of speech) -> its definition, and a
definition -> the word. Two choice tasks on the same synsets (declared by tasks()): a definition -> the
part of speech it defines, and a word with its definition -> its lexicographer file (animal, plant,
food, ...: the second field of each data.* line, named by WordNet's lexnames table)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..examples import Example
from ..spec import Offline
from . import common

ROOT = Path("/usr/share/wordnet")
POS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
INSTALL = "apt-get install wordnet-base (Debian/Ubuntu)"


def _synsets() -> list[dict]:
    def build():
        out = []
        for part, pos in POS.items():
            for line in open(ROOT / f"data.{part}", encoding="utf-8", errors="replace"):
                if line.startswith("  ") or "|" not in line:
                    continue  # the licence header
                head, gloss = line.split("|", 1)
                fields = head.split()
                n = int(fields[3], 16)
                lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(n)]
                definition = gloss.split(";")[0].strip().strip('"').strip()
                # One-word lemmas, a definition of at least 4 words: a question with one fair answer.
                if " " in lemmas[0] or common.words(definition) < 4 or "(" in lemmas[0]:
                    continue
                out.append({"id": f"{part}.{fields[0]}", "word": lemmas[0], "pos": pos, "lemmas": lemmas,
                            "definition": definition})
        return out

    common.require(ROOT / "data.noun", "WordNet", INSTALL)
    return common.cached("wordnet", [ROOT / f"data.{p}" for p in POS], build)


def define() -> dict[str, list[Example]]:
    return {s: [Example(f"{r['word']} ({r['pos']})", r["definition"], r["id"]) for r in v]
            for s, v in common.split(_synsets()).items()}


def name() -> dict[str, list[Example]]:
    return {s: [Example(f"{common.mask(r['definition'], r['lemmas'])} ({r['pos']})", r["word"], r["id"]) for r in v]
            for s, v in common.split(_synsets()).items()}


# WordNet 3.0's lexnames (lexnames(5WN)): the lexicographer file of number i is LEXNAMES[i].
LEXNAMES = ("adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
            "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
            "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
            "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
            "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
            "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
            "adj.ppl").split()
# Ten topics, each with a few hundred one-word synsets at least; a topic is its files of either part of
# speech (noun.body: parts of the body, verb.body: grooming and bodily functions).
DOMAINS = ("animal", "artifact", "body", "communication", "feeling", "food", "location", "motion", "person", "plant")
PER_POS, PER_DOMAIN = 750, 300  # balanced classes: a fixed sample of each, 3000 rows (the caps fill)


def _lexfiles() -> dict[str, str]:
    """Synset id -> its lexicographer file (noun.animal, ...)."""
    def build():
        ids = {}
        for part in POS:
            for line in open(ROOT / f"data.{part}", encoding="utf-8", errors="replace"):
                if not line.startswith("  "):
                    fields = line.split()
                    ids.setdefault(LEXNAMES[int(fields[1])], []).append(f"{part}.{fields[0]}")
        return [{"id": lex, "synsets": v} for lex, v in sorted(ids.items())]  # one record a file: a small cache

    common.require(ROOT / "data.noun", "WordNet", INSTALL)
    return {i: r["id"] for r in common.cached("wordnet-lexfiles", [ROOT / f"data.{p}" for p in POS], build)
            for i in r["synsets"]}


def _balanced(rows: list[dict], per_class: int) -> list[dict]:
    """At most per_class rows of each target, a sample fixed by a (salted) hash of the ids; inputs that
    occur more than once keep one row (the smallest id) if their targets agree, none otherwise."""
    by_input = {}
    for r in sorted(rows, key=lambda r: r["id"]):
        by_input.setdefault(r["input"], []).append(r)
    unique = [v[0] for v in by_input.values() if len({r["target"] for r in v}) == 1]
    out = []
    for target in sorted({r["target"] for r in unique}):
        same = [r for r in unique if r["target"] == target]
        out += sorted(same, key=lambda r: hashlib.sha256(f"sample:{r['id']}".encode()).hexdigest())[:per_class]
    return out


def _examples(rows: list[dict]) -> dict[str, list[Example]]:
    return {s: [Example(r["input"], r["target"], r["id"]) for r in v] for s, v in common.split(rows).items()}


def part_of_speech() -> dict[str, list[Example]]:
    """A definition -> noun / verb / adjective / adverb."""
    return _examples(_balanced([{"id": r["id"], "input": r["definition"], "target": r["pos"]}
                                for r in _synsets()], PER_POS))


def domain() -> dict[str, list[Example]]:
    """A word, its part of speech and its definition -> its lexicographer file's topic."""
    topic = {i: lex.split(".")[1] for i, lex in _lexfiles().items() if lex.split(".")[1] in DOMAINS}
    rows = [{"id": r["id"], "input": f"{r['word']} ({r['pos']}): {r['definition']}", "target": topic[r["id"]]}
            for r in _synsets() if r["id"] in topic]
    return _examples(_balanced(rows, PER_DOMAIN))


def tasks() -> list[Offline]:
    """wordnet-pos and wordnet-domain (wordnet-define and wordnet-name are declared in tasks.py)."""
    src, pos = "WordNet 3.0 (Debian: wordnet-base)", tuple(POS.values())
    return [
        Offline("wordnet-pos", "wordnet", "Which part of speech is the word this definition defines? "
                f"Answer with one of: {', '.join(pos)}.", f"{src}: gloss -> part of speech", "WordNet-3.0",
                lambda cfg: part_of_speech(), kind="choice", metric="accuracy", choices=pos),
        Offline("wordnet-domain", "wordnet", "Which topic does this sense of the word belong to? "
                f"Answer with one of: {', '.join(DOMAINS)}.", f"{src}: word + gloss -> lexicographer file",
                "WordNet-3.0", lambda cfg: domain(), kind="choice", metric="accuracy", choices=DOMAINS),
    ]
