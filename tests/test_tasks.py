"""Tasks on the real packaged data, prompts with summary-only loss, episodes, and bad task input."""

import json

import pytest

from mlx_reptilora.data import episodes, prompts, tasks
from mlx_reptilora.errors import UserError


@pytest.fixture(scope="module")
def tokenizer(bundled_dir):
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(bundled_dir)


@pytest.fixture(scope="module")
def fmt(tokenizer):
    return prompts.PromptFormat.for_tokenizer(tokenizer)


@pytest.mark.parametrize("name", ["aclsum-challenge", "aclsum-approach", "aclsum-outcome", "aclsum-title"])
def test_aclsum_sizes_and_split(name):
    t = tasks.load(name)
    # The package's own split: 100 / 50 / 100 papers (250 in all).
    assert {s: len(v) for s, v in t.splits.items()} == {"train": 100, "valid": 50, "test": 100}
    ids = {s: {e.id for e in v} for s, v in t.splits.items()}
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["valid"])
    assert all(e.input and e.target for v in t.splits.values() for e in v)


def test_aclsum_documents_are_abstract_plus_introduction():
    title = tasks.load("aclsum-title").splits["train"][0]
    challenge = tasks.load("aclsum-challenge").splits["train"][0]
    assert challenge.input.startswith(title.input)  # abstract first, then the introduction
    assert len(challenge.input) > len(title.input)
    assert " ." not in title.input[:200]  # detokenized
    abstract_only = tasks.load("aclsum-challenge", tasks.TaskConfig(aclsum_sections=["abstract"]))
    assert abstract_only.splits["train"][0].input == title.input


def test_pydoc_sizes_determinism_and_no_tests(tmp_path):
    from mlx_reptilora.data import corpora

    a = corpora.pydoc(cache=None)
    b = corpora.pydoc(cache=tmp_path)  # computes and writes the cache
    c = corpora.pydoc(cache=tmp_path)  # reads it back
    assert a == b == c
    total = sum(len(v) for v in a.values())
    assert 1100 <= total <= 1800
    assert 0.75 <= len(a["train"]) / total <= 0.85
    every = [e for v in a.values() for e in v]
    assert all(len(e.input.split()) >= 30 and "\n" not in e.target for e in every)
    # No test packages or test_*.py modules (functions may be named test*, e.g. doctest.testfile).
    assert not any(part.startswith("test") for e in every for part in e.id.split(".")[:-1])


def test_loss_masked_tokens_decode_to_summary_plus_eos(tokenizer, fmt):
    for name in tasks.OFFLINE_TASKS:
        exs = tasks.load(name).splits["valid"][:8]
        for ex, tok in zip(exs, prompts.tokenize(fmt, tokenizer, exs, 512)):
            target = tokenizer.decode(tok.ids[tok.prompt_len:].tolist())
            assert target == ex.target + tokenizer.eos_token
            assert tok.ids[tok.prompt_len - len(fmt.suffix): tok.prompt_len].tolist() == fmt.suffix


def test_truncation_cuts_the_document_never_the_summary(tokenizer, fmt):
    exs = tasks.load("aclsum-challenge").splits["train"]
    toks = prompts.tokenize(fmt, tokenizer, exs, 128)
    assert all(t is not None and len(t.ids) <= 128 for t in toks)
    assert sum(t.truncated for t in toks) > 90  # abstract + introduction is ~900 tokens
    for ex, t in zip(exs, toks):
        assert tokenizer.decode(t.ids[t.prompt_len:].tolist()) == ex.target + tokenizer.eos_token
        assert t.ids[: len(fmt.prefix)].tolist() == fmt.prefix


def test_summary_too_long_is_dropped_and_counted(tokenizer, fmt):
    task = tasks.Task("t", {"train": [tasks.Example("doc " * 10, "word " * 200)]})
    prepared = episodes.prepare(task, tokenizer, fmt, 64, splits=("train",))
    assert prepared.dropped == 1 and prepared.splits["train"] == []


def test_plain_text_prompt_without_chat_template(tokenizer):
    class NoTemplate:
        chat_template = None

        def __getattr__(self, name):
            return getattr(tokenizer, name)

    fmt = prompts.PromptFormat.for_tokenizer(NoTemplate())
    text = tokenizer.decode(fmt.prefix + fmt.suffix)
    assert text.startswith(prompts.INSTRUCTION) and text.endswith("Summary:")


def _prepared(tokenizer, fmt, names=("aclsum-title", "pydoc")):
    return [episodes.prepare(tasks.load(n), tokenizer, fmt, 256) for n in names]


def test_episodes_deterministic_disjoint_and_resumable(tokenizer, fmt):
    prepared = _prepared(tokenizer, fmt)
    s1 = episodes.EpisodeSampler(prepared, support=8, query=16, seed=3)
    s2 = episodes.EpisodeSampler(prepared, support=8, query=16, seed=3)
    for _ in range(10):
        a, b = s1.sample(), s2.sample()
        assert a.task == b.task
        assert [x.ids.tolist() for x in a.support] == [x.ids.tolist() for x in b.support]
        assert len(a.support) == 8 and len(a.query) == 16
        assert not ({id(x) for x in a.support} & {id(x) for x in a.query})
    state = s1.state()
    after = [s1.sample() for _ in range(3)]
    s1.restore(state)
    again = [s1.sample() for _ in range(3)]
    assert [(e.index, e.task, [id(x) for x in e.support]) for e in after] == \
           [(e.index, e.task, [id(x) for x in e.support]) for e in again]


def test_task_choice_is_uniform_or_weighted(tokenizer, fmt):
    prepared = _prepared(tokenizer, fmt)
    uniform = episodes.EpisodeSampler(prepared, support=1, seed=0)
    picks = [uniform.sample().task for _ in range(2000)]
    assert 0.45 < picks.count("pydoc") / 2000 < 0.55
    weighted = episodes.EpisodeSampler(prepared, support=1, seed=0, weights=[1, 3])
    picks = [weighted.sample().task for _ in range(2000)]
    assert 0.70 < picks.count("pydoc") / 2000 < 0.80


def test_batches_use_fixed_buckets(tokenizer, fmt):
    assert episodes.buckets(512) == [64, 128, 256, 512]
    # CUDA's fused attention backward needs multiples of 128: 64 merges into 128, 500 pads to 512
    assert episodes.buckets(512, multiple=128) == [128, 256, 512]
    assert episodes.buckets(500, multiple=128) == [128, 256, 512] and episodes.buckets(500)[-1] == 500
    prepared = _prepared(tokenizer, fmt, ("pydoc",))[0]
    exs = prepared.splits["train"][:11]
    mbs = episodes.micro_batches(exs, 4, episodes.buckets(256))
    assert [b.tokens.shape[0] for b in mbs] == [4, 4, 4]  # 3 left over: padded to 4 rows
    assert all(b.tokens.shape[1] in (64, 128, 256) for b in mbs)
    assert mbs[-1].lengths[3:].tolist() == [0]  # padding rows carry no loss
    assert [b.tokens.shape[0] for b in episodes.micro_batches(exs[:5], 4, [256])] == [4, 1]
    assert sum(b.n_targets for b in mbs) == sum(len(e.ids) - e.prompt_len for e in exs)


def test_local_folder_jsonl_csv_parquet(tmp_path):
    import datasets

    rows = [{"text": f"document number {i} " * 5, "abstract": f"summary {i}"} for i in range(6)]
    d = tmp_path / "mytask"
    d.mkdir()
    (d / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    datasets.Dataset.from_list(rows[:3]).to_csv(str(d / "valid.csv"), index=False)
    datasets.Dataset.from_list(rows[3:]).to_parquet(str(d / "test.parquet"))
    (d / "task.yaml").write_text("fields: {input: text, target: abstract}\n")
    t = tasks.load(str(d))
    assert t.name == "mytask" and t.format == "fields" and t.instruction == ""
    assert [len(t.splits[s]) for s in tasks.SPLITS] == [6, 3, 3]
    assert t.splits["valid"][1].target == "summary 1"


# ---- bad input -------------------------------------------------------------------------------

def _folder(tmp_path, text: bytes | str):
    d = tmp_path / "bad"
    d.mkdir(exist_ok=True)
    (d / "train.jsonl").write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(d)


def test_malformed_json_names_file_and_line(tmp_path):
    path = _folder(tmp_path, '{"document": "a", "summary": "b"}\n{"document": oops}\n')
    with pytest.raises(UserError, match=r"train\.jsonl:2: malformed JSON"):
        tasks.load(path)


@pytest.mark.parametrize("row,message", [
    ({"document": "a"}, "rows have keys document: use messages"),
    ({"document": ["a"], "summary": "b"}, "field 'document' is not text"),
    ({"input": "a", "output": "b"}, r"name your keys in the folder's task.yaml \(fields"),
])
def test_rows_of_no_known_format(tmp_path, row, message):
    with pytest.raises(UserError, match=message):
        tasks.load(_folder(tmp_path, json.dumps(row)))


def test_a_file_instead_of_its_folder_is_one_line(tmp_path):
    path = _folder(tmp_path, json.dumps({"document": "a", "summary": "b"}))
    with pytest.raises(UserError, match="is a file: give the task's folder"):
        tasks.load(f"{path}/train.jsonl")


def test_non_utf8_file(tmp_path):
    with pytest.raises(UserError, match="not UTF-8"):
        tasks.load(_folder(tmp_path, b'{"document": "caf\xe9", "summary": "x"}'))


def test_unknown_task_suggests_close_names():
    with pytest.raises(UserError, match="did you mean aclsum-title"):
        tasks.load("aclsum-titel")


def test_split_smaller_than_support_or_shots(tokenizer, fmt):
    prepared = _prepared(tokenizer, fmt, ("aclsum-title",))
    with pytest.raises(UserError, match="100 usable examples, fewer than --support 128"):
        episodes.EpisodeSampler(prepared, support=128, query=0)
    capped = episodes.EpisodeSampler(prepared, support=32, query=128)  # M capped, not an error
    assert capped.query_caps == {"aclsum-title": 68} and len(capped.sample().query) == 68
    with pytest.raises(UserError, match="--shots 500 is more than"):
        episodes.draw_shots(prepared[0].splits["train"], 500, seed=0, task="aclsum-title")


def test_hub_corpus_offline_is_one_clear_line():
    with pytest.raises(UserError) as e:
        tasks.load("xsum")
    msg = str(e.value)
    assert "xsum" in msg and "EdinburghNLP/xsum" in msg and "aclsum-title" in msg and "\n" not in msg


def test_hub_table_is_overridable():
    cfg = tasks.TaskConfig(hub_corpora={"xsum": {"repo": "me/xsum-mirror"}, "mine": {
        "repo": "me/data", "config": None, "document": "text", "summary": "tldr"}})
    table = cfg.hub_table()
    assert table["xsum"].repo == "me/xsum-mirror" and table["xsum"].document == "document"
    assert table["mine"].summary == "tldr" and "mine" in tasks.available(cfg)


# ---- the offline pool ------------------------------------------------------------------------------

def test_the_pool_has_60_tasks_in_10_groups_from_8_sources_3_of_them_choice_groups():
    specs = tasks.OFFLINE
    assert len(specs) >= 60
    kinds: dict[str, set] = {}
    for spec in specs.values():
        kinds.setdefault(spec.group, set()).add(spec.kind)
    assert len(kinds) >= 10 and sum(k == {"choice"} for k in kinds.values()) >= 3
    sources = {spec.source.split(":")[0].split(" (")[0] for spec in specs.values()}
    assert len(sources) >= 8, sources
    assert tasks.groups(["aclsum-title", "aclsum-outcome"]) == {"aclsum": ["aclsum-title", "aclsum-outcome"]}
    assert tasks.groups(["foldoc-name", "jargon-name", "my/folder"]) == {
        "computing-dictionaries": ["foldoc-name", "jargon-name"], "my/folder": ["my/folder"]}
    # the shapes vary: summaries, titles, definitions, names, translations, classes
    assert len({spec.instruction for spec in specs.values()}) >= 40
    assert {spec.metric for spec in specs.values()} == {"rouge", "exact", "accuracy"}


@pytest.mark.parametrize("name", [n for n in tasks.OFFLINE if n not in tasks.DEFAULT_TASKS])
def test_each_pool_task_loads_clean_with_its_source_licence_and_disjoint_stable_splits(name):
    task = tasks.load(name)
    assert task.source and task.licence and task.group and task.instruction
    sizes = {s: len(v) for s, v in task.splits.items()}
    assert sizes["train"] >= 80 and sizes["valid"] >= 8 and sizes["test"] >= 8, sizes
    ids = [{e.id for e in task.splits[s]} for s in tasks.SPLITS]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert all(e.input.strip() and e.target.strip() for v in task.splits.values() for e in v)
    # no duplicates; the same input in train and test only where one word has several senses
    assert not [w for w in task.warnings if "duplicate" in w]
    train = {e.input for e in task.splits["train"]}
    assert sum(e.input in train for e in task.splits["test"]) <= 0.03 * len(task.splits["test"])
    if task.kind == "choice":
        assert all(e.choices and e.target in e.choices for v in task.splits.values() for e in v)
    again = tasks.load(name)  # from the cache now
    assert again.splits == task.splits
    if name.endswith("-name"):  # the answer is hidden from the question
        import re

        leaks = sum(bool(re.search(rf"(?<![\w-]){re.escape(e.target)}(?![\w-])", e.input, re.IGNORECASE))
                    for e in task.splits["train"])
        assert leaks <= 0.02 * len(task.splits["train"]), leaks


def test_a_corpus_that_is_not_installed_is_one_line(tmp_path, monkeypatch):
    from mlx_reptilora.data.corpora import wordnet

    monkeypatch.setenv("MLX_REPTILORA_CACHE", str(tmp_path))
    monkeypatch.setattr(wordnet, "ROOT", tmp_path / "no-wordnet")
    with pytest.raises(UserError, match=r"WordNet is not installed .*apt-get install wordnet-base"):
        tasks.load("wordnet-name")


def test_no_task_reads_debian_package_descriptions():
    """They are kept for evaluation: no corpus may open the archive's package lists or dpkg's status."""
    from pathlib import Path

    import mlx_reptilora.data.corpora as corpora_pkg

    for path in Path(corpora_pkg.__file__).parent.glob("*.py"):
        text = path.read_text()
        for forbidden in ("/var/lib/apt/lists", "dpkg/status", "apt-cache", "Packages.gz", "Packages.xz"):
            assert forbidden not in text, (path.name, forbidden)


def test_a_portable_task_cache_builds_the_same_tasks_without_the_sources(tmp_path, monkeypatch):
    """A lent GPU has no Debian corpora: MLX_REPTILORA_TASK_CACHE points at corpora parsed here."""
    import shutil

    from mlx_reptilora.errors import UserError
    from mlx_reptilora.paths import cache_dir

    here = tasks.load("numpy-doc")  # parses (or reads) the corpus into this machine's cache
    portable = tmp_path / "portable"
    portable.mkdir()
    for f in (cache_dir() / "tasks").glob("numpy-docstrings-*.json"):
        shutil.copy2(f, portable / f.name)
    monkeypatch.setenv("MLX_REPTILORA_TASK_CACHE", str(portable))
    monkeypatch.setenv("MLX_REPTILORA_CACHE", str(tmp_path / "elsewhere"))
    there = tasks.load("numpy-doc")
    assert there.splits == here.splits
    monkeypatch.setenv("MLX_REPTILORA_TASK_CACHE", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="holds no parsed numpy-docstrings corpus"):
        tasks.load("numpy-doc")
    stale = portable / "numpy-docstrings-0123456789ab.json"  # another version: which one is meant?
    stale.write_text("[]")
    monkeypatch.setenv("MLX_REPTILORA_TASK_CACHE", str(portable))
    with pytest.raises(UserError, match="holds 2 versions of the parsed numpy-docstrings corpus"):
        tasks.load("numpy-doc")
