"""The offline tasks built from PyPI data (pycountry, vaderSentiment, afinn, emoji) and from the running
Python's Unicode database: sizes, clean rows, stable disjoint splits, fair choices, hidden answers."""

import pytest

from mlx_reptilora.data.corpora import emojis, isocodes, sentiment, unicode
from mlx_reptilora.data.spec import KINDS, METRICS

MODULES = (isocodes, unicode, sentiment, emojis)
SPECS = {s.name: s for m in MODULES for s in m.tasks()}
# Tasks whose answer is a name or a symbol that must not be spelt in the question.
NAMING = {"unicode-name", "unicode-character", "emoji-name", "emoji-from-name"}
MINIMUM = {"train": 100, "valid": 20, "test": 20}


@pytest.fixture(scope="module")
def built():
    return {name: spec.build(None) for name, spec in SPECS.items()}


def test_declarations():
    assert len(SPECS) == sum(len(m.tasks()) for m in MODULES)  # names are unique
    for spec in SPECS.values():
        assert spec.name == spec.name.lower() and " " not in spec.name
        assert spec.kind in KINDS and spec.metric in METRICS[spec.kind]
        assert spec.group and spec.source and spec.licence and spec.instruction
        if spec.kind == "choice":
            assert spec.choices and len(set(spec.choices)) == len(spec.choices)
            assert all(c in spec.instruction for c in spec.choices)  # options named for 0 shots
    # The two groups that must be choice-only.
    assert all(s.kind == "choice" for s in SPECS.values() if s.group in ("iso-codes", "sentiment"))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_task_rows(built, name):
    spec, splits = SPECS[name], built[name]
    assert set(splits) == set(MINIMUM)
    seen_ids, inputs = set(), set()
    for split, rows in splits.items():
        assert len(rows) >= MINIMUM[split], (split, len(rows))
        ids = [e.id for e in rows]
        assert len(set(ids)) == len(ids) and not seen_ids & set(ids)
        seen_ids |= set(ids)
        for e in rows:
            assert e.input and e.target and e.input == e.input.strip() and e.target == e.target.strip()
            assert e.input not in inputs  # deduplicated by input across the whole task
            inputs.add(e.input)
            if spec.kind == "choice":
                assert e.target in (e.choices or spec.choices)
            if name in NAMING:
                assert e.target.casefold() not in e.input.casefold(), e
    if spec.kind == "choice":
        targets = {e.target for rows in splits.values() for e in rows}
        assert targets == set(spec.choices)  # every option is the answer somewhere
    if name in ("unicode-name", "unicode-character", "iso-subdivision-country", "afinn-polarity", "vader-polarity"):
        assert max(len(e.input.split()) for rows in splits.values() for e in rows) < 300


@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_second_build_is_the_same(built, name):
    assert SPECS[name].build(None) == built[name]


def test_choice_tasks_are_roughly_balanced(built):
    for name, spec in SPECS.items():
        if spec.kind != "choice":
            continue
        train = [e.target for e in built[name]["train"]]
        top = max(train.count(c) for c in spec.choices)
        assert top / len(train) < 0.6, name  # no option is a majority baseline


def test_shared_words_share_a_split(built):
    # The id is the word (or character, or emoji): one item sits in one split across its group's tasks.
    where = {}
    for name in ("vader-polarity", "afinn-polarity", "afinn-strength", "unicode-name", "unicode-category",
                 "emoji-name", "emoji-from-name"):
        for split, rows in built[name].items():
            for e in rows:
                assert where.setdefault(e.id, split) == split, (name, e.id)


def test_examples():
    iso = isocodes._corpus()
    assert {"text": "Allemagne", "lang": "fr"}.items() <= {r["id"]: r for r in iso["country"]}["country.DE.fr"].items()
    rows = {r["id"]: r for r in unicode._characters()["name"] + unicode._characters()["category"]}
    for r in rows.values():
        assert not unicode.ALGORITHMIC.search(r["name"])
    assert sentiment._afinn()["abandon"] == -2
    e = {r["id"]: r for r in emojis._emoji()}
    assert e["emoji.1F435"]["names"]["en"] == "monkey face"
    assert e["emoji.1F1E9-1F1EA"]["names"]["en"] == "flag: Germany"
    assert not any(c in emojis.TONES for r in e.values() if len(r["emoji"]) > 1 for c in r["emoji"])
