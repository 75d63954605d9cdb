"""WordNet 3.0 (Princeton University; the WordNet 3.0 licence; Debian package `wordnet-base`): synsets
with their words and glosses. Two tasks: a word (and its part of speech) -> its definition, and a
definition -> the word."""

from __future__ import annotations

from pathlib import Path

from ..examples import Example
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
