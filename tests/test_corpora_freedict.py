"""FreeDict translation tasks on the real Debian dictionaries (dict-freedict-XXX-eng, dict-freedict-eng-XXX)."""

import pytest

from mlx_reptilora.data.corpora import freedict

TASKS = {t.name: t for t in freedict.tasks()}


def _installed() -> bool:
    # every X->English task reads all the dictionaries' English (to tell glued words apart)
    return all((freedict.ROOT / f"freedict-{p}.{ext}").exists() for code in freedict.LANGUAGES
               for p in (f"{code}-eng", f"eng-{code}") for ext in ("index", "dict.dz"))


@pytest.fixture(scope="module")
def built():
    if not _installed():
        return {}
    return {name: (spec.build(None), spec.build(None)) for name, spec in TASKS.items()}  # the second: cached


def test_declarations():
    assert len(TASKS) == 2 * len(freedict.LANGUAGES)
    for code in freedict.LANGUAGES:
        there, back = TASKS[f"freedict-{code}-eng"], TASKS[f"freedict-eng-{code}"]
        assert there.group == back.group == f"freedict-{code}"
    for spec in TASKS.values():
        assert (spec.kind, spec.metric, spec.choices) == ("generate", "exact", None)
        assert spec.licence and "Debian: dict-freedict-" in spec.source and "into" in spec.instruction


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task(name, built):
    if name not in built:
        pytest.skip("the Debian packages dict-freedict-{fra,spa,ita,por,swe,afr,cym,lat}-eng and -eng-* are missing")
    splits, again = built[name]
    assert again == splits
    sizes = {s: len(v) for s, v in splits.items()}
    assert sizes["train"] >= 1000 and sizes["valid"] >= 150 and sizes["test"] >= 150, sizes
    ids = {s: [e.id for e in v] for s, v in splits.items()}
    assert all(len(v) == len(set(v)) for v in ids.values())
    assert not (set(ids["train"]) & set(ids["valid"]) or set(ids["train"]) & set(ids["test"])
                or set(ids["valid"]) & set(ids["test"]))
    rows = [e for v in splits.values() for e in v]
    assert len({e.input for e in rows}) == len(rows)  # deduplicated by input
    for e in rows:
        assert e.input == e.input.strip() and e.target == e.target.strip() and e.input and e.target
        assert e.input.casefold() != e.target.casefold()
        assert len(e.input.split()) <= 4 and len(e.target.split()) <= 4
        assert not any(c.isdigit() for c in e.input + e.target)
        assert not any(c in e.target for c in "/<>[](){}\u2010") and not e.target[0].isdigit(), e


def test_parse_is_stable_without_cache(tmp_path, monkeypatch, built):
    name = "freedict-eng-lat"  # small, and reads two dictionaries only: a parse from scratch equals the cached one
    if name not in built:
        pytest.skip("the Debian packages dict-freedict-* are missing")
    monkeypatch.setenv("MLX_REPTILORA_CACHE", str(tmp_path))
    freedict._read.cache_clear()
    freedict._vocab.cache_clear()
    assert TASKS[name].build(None) == built[name][0]
    assert list(tmp_path.glob("tasks/freedict-eng-lat-*.json"))


def test_entry_parsing():
    assert freedict._headword("decalog, decalogue /dɪkˈalɒɡ/ /dɪkˈalɒɡ/ <s>") == "decalog, decalogue"
    assert freedict._headword("coing /kwɛ̃/ <n, masc>") == "coing"
    assert freedict._first_translation(["1. (laivas) tug, tug-boat", "2. tow-rope"]) == "tug"
    assert freedict._first_translation(["2.  [cul] giblets"]) == "giblets"
    assert freedict._first_translation(["dawns <n, s, f>"]) == "dawns"
    assert freedict._first_translation(["chou\u2010fleur"]) == "chou-fleur"
    assert not freedict._fair("... ago") and not freedict._fair("1984") and not freedict._fair("-able")
