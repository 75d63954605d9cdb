"""The DICT-protocol dictionaries' new tasks (dictd.tasks(): V.E.R.A., the Elements database, the
Devil's Dictionary; gcide.tasks(): GCIDE): well-formed splits, stable ids, options that occur,
answers hidden from naming questions, and the same rows from a second build (read from the cache)."""

import functools
import re
from collections import Counter
from pathlib import Path

import pytest

from mlx_reptilora.data.corpora import dictd, gcide

SPECS = {s.name: s for s in dictd.tasks() + gcide.tasks()}
PACKAGE = {"vera": "dict-vera", "elements": "dict-elements", "devil": "dict-devil", "gcide": "dict-gcide"}
# The Elements database has ~106 elements: 80/10/10 of them is all there is.
MINIMUM = {"elements": (60, 8, 8)}
NAMING = {"vera-acronym", "devil-name", "gcide-name", "elements-name"}


@functools.lru_cache(maxsize=None)
def _built(name: str):
    spec = SPECS[name]
    if not (Path("/usr/share/dictd") / f"{spec.group}.index").exists():
        pytest.skip(f"{PACKAGE[spec.group]} is not installed (apt-get install {PACKAGE[spec.group]})")
    return spec.build(None)


def test_declared():
    assert set(SPECS) == {"vera-expand", "vera-acronym", "elements-symbol", "elements-name", "elements-number",
                          "devil-define", "devil-name", "gcide-define", "gcide-name", "gcide-pos"}
    for s in SPECS.values():
        assert s.name.startswith(s.group + "-") and s.licence and s.source
        assert (s.kind, s.metric) in {("generate", "rouge"), ("generate", "exact"), ("choice", "accuracy")}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_splits(name):
    spec, data = SPECS[name], _built(name)
    assert set(data) == {"train", "valid", "test"}
    for split, least in zip(("train", "valid", "test"), MINIMUM.get(spec.group, (100, 20, 20))):
        assert len(data[split]) >= least, (split, len(data[split]))
    ids = [e.id for v in data.values() for e in v]
    assert len(ids) == len(set(ids)) and all(ids)  # unique, so disjoint across splits too
    inputs = [e.input.lower() for v in data.values() for e in v]
    assert len(inputs) == len(set(inputs))  # one question, one answer
    for e in (e for v in data.values() for e in v):
        assert e.input and e.target and e.input == e.input.strip() and e.target == e.target.strip()
        assert len(e.input.split()) <= 300
        if spec.metric == "exact":
            assert len(e.target.split()) <= 3, e
        if name in NAMING:
            assert not re.search(rf"(?<![\w-]){re.escape(e.target)}(?![\w-])", e.input, re.I), e


@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if s.kind == "choice"])
def test_choices(name):
    spec, data = SPECS[name], _built(name)
    for v in data.values():
        assert all(e.target in spec.choices for e in v)
        assert set(Counter(e.target for e in v)) == set(spec.choices)  # every option occurs, in every split
    assert all(o.lower() in spec.instruction.lower() for o in spec.choices)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_stable(name):
    assert SPECS[name].build(None) == _built(name)


def test_examples():
    """A few rows whose right answer is known."""
    by_input = lambda name: {e.input: e.target for v in _built(name).values() for e in v}  # noqa: E731
    assert by_input("elements-symbol")["iron"] == "Fe" and by_input("elements-number")["iron"] == "26"
    assert by_input("vera-expand")["CPU"] == "Central Processing Unit"
    assert by_input("devil-define")["pleonasm"] == "An army of words escorting a corporal of thought."
    assert by_input("devil-name")["An army of words escorting a corporal of thought."] == "pleonasm"


DOG = """Dog \\Dog\\ (d[add]g or d[o^]g), n. [AS. docga; akin to D. dog
   mastiff, Dan. dogge, Sw. dogg.]
   [Formerly written also {dogge}.]
   1. (Zool.) A quadruped of the genus {Canis}, esp. the
      domestic dog ({Canis familiaris}); -- called also {hound}; as, a
      sly dog. [Obs.] --Shak.
      [1913 Webster]

   2. A mean, worthless fellow; a wretch.
      [1913 Webster]"""


def test_gcide_markup():
    head, pos, body = gcide._header(DOG.split("\n"))
    assert (head, pos) == ("Dog", "n.") and body[0].strip().startswith("1.")
    definition, source = gcide._first_sense(body)
    assert source == "1913 Webster"
    assert gcide._definition(gcide._text(definition)) == \
        "A quadruped of the genus Canis, esp. the domestic dog (Canis familiaris)."
    assert gcide._text("H[ae]matopinus, caf['e], [alpha]") == "Hæmatopinus, café, α"
    assert gcide._word("Dog", "A quadruped.") == "dog" and gcide._word("Canis", "A genus of mammals.") == "Canis"
