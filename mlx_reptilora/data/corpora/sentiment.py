"""Two sentiment lexicons from PyPI: VADER's (`vaderSentiment`, its vader_lexicon.txt: words and
emoticons with the mean of ten raters' valence, -4..4; MIT) and AFINN-en-165 (`afinn`, its
data/AFINN-en-165.txt: words scored -5..5 by Finn Årup Nielsen; the data's licence is the ODbL 1.0,
the code's Apache-2.0). Three choice tasks, one group since the lexicons share most of their words:
word or emoticon -> positive / negative (VADER, only clear cases: |mean| >= 1), word -> positive /
negative (AFINN) and word -> strongly negative / negative / positive / strongly positive (AFINN,
strong at |score| >= 3). Each answer gets about as many rows as the others."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from ..examples import Example
from ..spec import Offline
from . import common

GROUP = "sentiment"
POLARITY = ("negative", "positive")
STRENGTH = ("strongly negative", "negative", "positive", "strongly positive")
STRENGTH_CAP = 600  # per class: "negative" has 1765 words, "strongly positive" 303


def _file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    root = Path(spec.origin).parent if spec and spec.origin else Path(f"site-packages/{package}")
    return common.require(root / relative, f"{package} (PyPI)", f"pip install {package}")


def _lexicon(name: str, path: Path, column: int) -> dict[str, float]:
    """token -> score; later lines do not override earlier ones (deterministic, and neither file repeats)."""
    def build():
        out = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            fields = line.split("\t")
            token = " ".join(fields[0].split())
            if len(fields) > column and token and token not in out:
                out[token] = float(fields[column])
        return [{"token": t, "score": s} for t, s in out.items()]

    # This file is a source too: a change of what the parser keeps rebuilds the cache.
    return {r["token"]: r["score"] for r in common.cached(name, [path, Path(__file__)], build)}


def _vader() -> dict[str, float]:
    return _lexicon("vader", _file("vaderSentiment", "vader_lexicon.txt"), 1)


def _afinn() -> dict[str, float]:
    return _lexicon("afinn-en-165", _file("afinn", "data/AFINN-en-165.txt"), 1)


def _balanced(labels: dict[str, str], cap: int | None = None) -> dict[str, list[Example]]:
    """token -> label, each label capped (at the rarest label's count unless `cap`), chosen by a hash."""
    by_label: dict[str, list[str]] = {}
    for token in sorted(labels, key=lambda t: hashlib.sha256(f"balance:{t}".encode()).hexdigest()):
        by_label.setdefault(labels[token], []).append(token)
    keep = cap or min(len(v) for v in by_label.values())
    records = [{"id": f"word.{t}", "token": t, "label": label} for label, ts in by_label.items() for t in ts[:keep]]
    # The id is the token alone: a word lands in the same split in every task of the group.
    return {s: [Example(r["token"], r["label"], r["id"]) for r in v] for s, v in common.split(records).items()}


def vader_polarity() -> dict[str, list[Example]]:
    return _balanced({t: POLARITY[s > 0] for t, s in _vader().items() if abs(s) >= 1})


def afinn_polarity() -> dict[str, list[Example]]:
    return _balanced({t: POLARITY[s > 0] for t, s in _afinn().items() if s != 0})


def afinn_strength() -> dict[str, list[Example]]:
    def label(s: float) -> str:
        return ("strongly " if abs(s) >= 3 else "") + POLARITY[s > 0]

    return _balanced({t: label(s) for t, s in _afinn().items() if s != 0}, cap=STRENGTH_CAP)


def tasks() -> list[Offline]:
    vader = "VADER's sentiment lexicon (PyPI: vaderSentiment)"
    afinn = "AFINN-en-165 (PyPI: afinn)"
    return [
        Offline("vader-polarity", GROUP,
                "Is this word or emoticon positive or negative in sentiment? Answer with one of: negative, positive.",
                f"{vader}: word or emoticon -> polarity (raters' mean |valence| >= 1)", "MIT",
                lambda cfg: vader_polarity(), kind="choice", metric="accuracy", choices=POLARITY),
        Offline("afinn-polarity", GROUP,
                "Is this word positive or negative in sentiment? Answer with one of: negative, positive.",
                f"{afinn}: word -> polarity", "ODbL-1.0", lambda cfg: afinn_polarity(),
                kind="choice", metric="accuracy", choices=POLARITY),
        Offline("afinn-strength", GROUP,
                "How positive or negative is this word? Answer with one of: " + ", ".join(STRENGTH) + ".",
                f"{afinn}: word -> polarity and strength (strong at |score| >= 3 of 5)", "ODbL-1.0",
                lambda cfg: afinn_strength(), kind="choice", metric="accuracy", choices=STRENGTH),
    ]
