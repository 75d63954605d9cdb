"""The pandas/Matplotlib docstring tasks, WordNet's choice tasks and the media-types tasks: sizes,
clean rows, sound options, hidden answers, deterministic builds."""

import re
from pathlib import Path

import pytest

from mlx_reptilora.data import spec as specs
from mlx_reptilora.data.corpora import docstrings, mediatypes, wordnet

MINIMUM = {"train": 100, "valid": 20, "test": 20}
NAMING = {"pandas-name", "matplotlib-name"}
DEBIAN = {"wordnet": wordnet.ROOT / "data.noun", "media-types": mediatypes.MIME_TYPES}
TASKS = {t.name: t for t in docstrings.tasks() + wordnet.tasks() + mediatypes.tasks()}


def test_declared():
    assert set(TASKS) == {"pandas-doc", "pandas-name", "matplotlib-doc", "matplotlib-name", "wordnet-pos",
                          "wordnet-domain", "mime-kind", "mime-type"}
    for t in TASKS.values():
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", t.name) and t.group and t.source and t.licence
        assert t.metric in specs.METRICS[t.kind]
        for option in t.choices or ():
            assert option in t.instruction  # a model can answer at 0 shots


@pytest.fixture(scope="module", params=sorted(TASKS))
def built(request):
    task = TASKS[request.param]
    path = DEBIAN.get(task.group)
    if path is not None and not Path(path).exists():
        pytest.skip(f"{path} is not installed")
    return task, task.build(None)


def test_splits(built):
    task, splits = built
    assert set(splits) == set(MINIMUM)
    ids, inputs = [], []
    for name, rows in splits.items():
        assert len(rows) >= MINIMUM[name], (task.name, name, len(rows))
        for ex in rows:
            assert ex.input.strip() == ex.input and ex.target.strip() == ex.target and ex.input and ex.target
            ids.append(ex.id)
            inputs.append(ex.input)
    assert len(set(ids)) == len(ids)  # unique, hence disjoint across splits
    assert len(set(inputs)) == len(inputs)


def test_choices(built):
    task, splits = built
    if task.kind != "choice":
        return
    targets = set()
    for ex in (e for rows in splits.values() for e in rows):
        options = ex.choices or task.choices
        assert options and len(set(options)) == len(options) and ex.target in options
        targets.add(ex.target)
    if task.choices:
        assert targets == set(task.choices)


def test_answer_hidden(built):
    task, splits = built
    if task.name not in NAMING:
        return
    for ex in (e for rows in splits.values() for e in rows):
        assert not re.search(rf"(?<![\w-]){re.escape(ex.target)}(?![\w-])", ex.input, re.IGNORECASE), ex.id
        assert not ex.target.startswith("_")  # no private names


def test_deterministic(built):
    task, splits = built
    assert task.build(None) == splits


def test_numpy_unchanged():
    """NumPy's corpus keeps its cache name and its unqualified ids (module.name)."""
    splits = docstrings.numpy_docstrings()
    rows = [r for v in splits.values() for r in v]
    assert len(rows) > 300 and all(r["id"].startswith("numpy.") and r["id"].rsplit(".", 1)[-1] == r["name"] for r in rows)
