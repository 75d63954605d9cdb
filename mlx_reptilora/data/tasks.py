"""Tasks: named sets of (input, target) examples with fixed train / valid / test splits, an
instruction, a kind (generate, choice or text) and its metric, and the group of tasks that share
their source documents.

A task name is one of the offline tasks (the pool below), one of the paper's hub corpora (network
needed), or a path to a local folder of train/valid/test files (data/formats.py)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..errors import UserError
from ..paths import cache_dir
from . import corpora, formats, hygiene
from .examples import Example
from .spec import Offline

SPLITS = ("train", "valid", "test")
SUMMARIZE = "Summarize the following text in one or two sentences."  # the paper's instruction


def _numpy_doc() -> dict[str, list[Example]]:
    from .corpora import docstrings

    return {s: [Example(r["body"], r["summary"], r["id"]) for r in v] for s, v in docstrings.numpy_docstrings().items()}


def _pool() -> dict[str, Offline]:
    from .corpora import dictd, docstrings, manpages, wordnet

    aclsum_src, python_src = "ACLSum papers (PyPI: aclsum)", "the running Python's standard library docstrings"
    numpy_src, wn_src = "NumPy's docstrings (PyPI: numpy)", "WordNet 3.0 (Debian: wordnet-base)"
    foldoc_src, jargon_src = "FOLDOC (Debian: dict-foldoc)", "the Jargon File 4.4.7 (Debian: dict-jargon)"
    man_src = "Linux man-pages, sections 2 and 3 (Debian: manpages-dev)"
    specs = [Offline(f"aclsum-{a}", "aclsum", SUMMARIZE, f"{aclsum_src}: abstract + introduction -> the {a} summary",
                     "MIT", lambda cfg, a=a: corpora.aclsum(a, tuple(cfg.aclsum_sections)))
             for a in corpora.ACLSUM_ASPECTS]
    specs += [
        Offline("aclsum-title", "aclsum", SUMMARIZE, f"{aclsum_src}: abstract -> title", "MIT",
                lambda cfg: corpora.aclsum("title")),
        Offline("pydoc", "python", SUMMARIZE, f"{python_src}: body -> first line", "PSF-2.0",
                lambda cfg: corpora.pydoc(cache_dir() / "tasks")),
        Offline("pydoc-name", "python", "Name the Python function, class or module this documentation describes.",
                f"{python_src}: body (name hidden) -> name", "PSF-2.0",
                lambda cfg: docstrings.as_names(corpora.pydoc(cache_dir() / "tasks"))),
        Offline("numpy-doc", "numpy", "Write the one-line summary of this NumPy documentation.",
                f"{numpy_src}: extended summary -> summary line", "BSD-3-Clause",
                lambda cfg: _numpy_doc()),
        Offline("numpy-name", "numpy", "Name the NumPy function or class this documentation describes.",
                f"{numpy_src}: extended summary (name hidden) -> name", "BSD-3-Clause",
                lambda cfg: docstrings.as_names(_numpy_doc())),  # its name is its id's last part
        Offline("wordnet-define", "wordnet", "Define this word in one short phrase.", f"{wn_src}: word -> gloss",
                "WordNet-3.0", lambda cfg: wordnet.define()),
        Offline("wordnet-name", "wordnet", "Give the single word this definition describes.",
                f"{wn_src}: gloss -> word", "WordNet-3.0", lambda cfg: wordnet.name()),
        Offline("foldoc-name", "computing-dictionaries", "Name the computing term this entry defines.",
                f"{foldoc_src}: definition (term hidden) -> term", "GFDL-1.1-or-later",
                lambda cfg: dictd.naming("foldoc")),
        Offline("foldoc-define", "computing-dictionaries", "Define this computing term in one sentence.",
                f"{foldoc_src}: term -> first sentence of its definition", "GFDL-1.1-or-later",
                lambda cfg: dictd.defining("foldoc")),
        Offline("jargon-name", "computing-dictionaries", "Name the hacker-jargon word this entry explains.",
                f"{jargon_src}: definition (word hidden) -> word", "public domain",
                lambda cfg: dictd.naming("jargon")),
        Offline("manpage-summary", "manpages", "Say in a few words what this C function or system call does.",
                f"{man_src}: DESCRIPTION -> the NAME line's summary", "various free licences (GPL-2+, BSD, ...)",
                lambda cfg: manpages.summaries()),
        Offline("manpage-name", "manpages", "Name the C function or system call this description documents.",
                f"{man_src}: DESCRIPTION (names hidden) -> name", "various free licences (GPL-2+, BSD, ...)",
                lambda cfg: manpages.names()),
    ]
    for module in _more_corpora():
        specs += module.tasks()
    names = [s.name for s in specs]
    assert len(names) == len(set(names)), "two offline tasks share a name"
    return {s.name: s for s in specs}


def _more_corpora() -> list:
    from .corpora import dictd, docstrings, emojis, freedict, gcide, isocodes, mediatypes, sentiment, unicode, wordnet

    return [docstrings, wordnet, dictd, gcide, mediatypes, freedict, isocodes, unicode, sentiment, emojis]


OFFLINE = _pool()
OFFLINE_TASKS = tuple(OFFLINE)
# The first five: the tasks of docs/RESULTS.md's paper experiment, and the defaults (PyPI data only).
DEFAULT_TASKS = ("aclsum-challenge", "aclsum-approach", "aclsum-outcome", "aclsum-title", "pydoc")


@dataclass
class Task:
    name: str  # safe in a file name (a folder's is its label)
    splits: dict[str, list[Example]]
    source: str = ""
    instruction: str = SUMMARIZE
    group: str = ""
    licence: str = ""
    kind: str = "generate"  # generate | choice | text
    metric: str = "rouge"  # rouge | exact (generate), accuracy (choice), nll (text)
    format: str = "document-summary"  # how its rows came: a folder's row format, or "offline", "hub"
    warnings: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Example]:
        if not self.splits.get(name):
            have = ", ".join(f"{s} ({len(v)})" for s, v in self.splits.items() if v) or "none"
            raise UserError(f"task {self.name} has no {name} split; it has: {have}")
        return self.splits[name]


class HubCorpus(NamedTuple):
    repo: str
    config: str | None
    document: str
    summary: str


# The paper's five corpora (hub ids as last known; override with TaskConfig.hub_corpora or YAML).
HUB_CORPORA = {
    "xsum": HubCorpus("EdinburghNLP/xsum", None, "document", "summary"),
    "cnn_dailymail": HubCorpus("abisee/cnn_dailymail", "3.0.0", "article", "highlights"),
    "samsum": HubCorpus("Samsung/samsum", None, "dialogue", "summary"),
    "bigpatent-a": HubCorpus("NortheasternUniversity/big_patent", "a", "description", "abstract"),
    "multi_news": HubCorpus("alexfabbri/multi_news", None, "document", "summary"),
}
HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}


@dataclass
class TaskConfig:
    train_cap: int = 1000  # the paper's caps per corpus
    valid_cap: int = 300
    test_cap: int = 300
    aclsum_sections: list[str] = field(default_factory=lambda: ["abstract", "introduction"])
    hub_corpora: dict = field(default_factory=dict)  # name -> {repo, config, document, summary}

    def hub_table(self) -> dict[str, HubCorpus]:
        table = dict(HUB_CORPORA)
        for name, spec in self.hub_corpora.items():
            table[name] = HubCorpus(**{**(table[name]._asdict() if name in table else {}), **spec})
        return table

    def cap(self, split: str) -> int:
        return {"train": self.train_cap, "valid": self.valid_cap, "test": self.test_cap}[split]


def _load_hub(name: str, spec: HubCorpus, cfg: TaskConfig) -> Task:
    import datasets

    splits = {}
    for split, hub_split in HUB_SPLITS.items():
        try:
            ds = datasets.load_dataset(spec.repo, spec.config, split=f"{hub_split}[:{cfg.cap(split)}]")
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"cannot load hub dataset {name} ({spec.repo}): {first}. Offline, use the "
                            f"embedded tasks: {', '.join(OFFLINE_TASKS)}") from None
        splits[split] = [Example(d.strip(), s.strip(), f"{name}/{split}/{i}")
                         for i, (d, s) in enumerate(zip(ds[spec.document], ds[spec.summary])) if d and s]
    return Task(name, splits, f"hub:{spec.repo}", format="hub")


def _load_folder(path: Path) -> Task:
    cfg, fmt, splits, empty = formats.read_folder(path)
    kind, metric = formats.kind_of(cfg, fmt, splits, path)
    if fmt == "messages" and cfg.instruction:
        raise UserError(f"{path}/task.yaml: a chat carries its own instructions (a system message), not an instruction")
    name = cfg.name or formats.label(path)
    task = Task(name, splits, cfg.source or f"folder {path.resolve()}", cfg.instruction, cfg.group or name,
                cfg.licence, kind, metric, fmt)
    task.warnings = hygiene.check(name, splits, empty)
    return task


def _load_offline(name: str, cfg: TaskConfig) -> Task:
    spec = OFFLINE[name]
    splits = spec.build(cfg)
    if spec.choices:  # task-wide options: every row carries them, as a folder's rows do
        splits = {s: [e if e.choices else e._replace(choices=spec.choices) for e in v] for s, v in splits.items()}
    task = Task(name, splits, spec.source, spec.instruction, spec.group, spec.licence, spec.kind, spec.metric,
                "offline")
    task.warnings = hygiene.check(name, splits)
    return task


def group_of(name: str) -> str:
    """A task's group without loading its data: the pool's, a folder's task.yaml's (else its label),
    a hub corpus's own."""
    if name in OFFLINE:
        return OFFLINE[name].group
    path = Path(name).expanduser()
    if path.is_dir():
        cfg = formats.read_config(path)
        return cfg.group or cfg.name or formats.label(path)
    return name


def groups(names: list[str]) -> dict[str, list[str]]:
    """The tasks by group, in the order given."""
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(group_of(n), []).append(n)
    return out


def available(cfg: TaskConfig | None = None) -> list[str]:
    return list(OFFLINE_TASKS) + list((cfg or TaskConfig()).hub_table())


def load(name: str, cfg: TaskConfig | None = None) -> Task:
    cfg = cfg or TaskConfig()
    if name in OFFLINE_TASKS:
        return _said(_load_offline(name, cfg))
    table = cfg.hub_table()
    if name in table:
        return _said(_load_hub(name, table[name], cfg))
    path = Path(name).expanduser()
    if path.is_dir():
        return _said(_load_folder(path))
    if path.is_file() and (path.suffix in formats.EXTENSIONS or path.name in formats.CONFIG_FILES):
        raise UserError(f"{name} is a file: give the task's folder ({path.parent}), which holds its "
                        f"train/valid/test files")
    close = difflib.get_close_matches(name, available(cfg), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; known tasks: {', '.join(available(cfg))}"
    raise UserError(f"unknown task {name!r} (not a task name or a folder){hint}")


def _said(task: Task) -> Task:
    for line in task.warnings:
        hygiene.say(line)
    return task


def load_many(names: list[str] | str, cfg: TaskConfig | None = None) -> list[Task]:
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise UserError("no tasks given")
    loaded = [load(n, cfg) for n in names]
    check_names(names, loaded)
    return loaded


def check_names(given: list[str], loaded: list[Task]) -> None:
    """Outputs are named after tasks: two tasks of one name would overwrite each other's."""
    seen: dict[str, str] = {}
    for arg, t in zip(given, loaded):
        if t.name in seen and seen[t.name] != arg:
            raise UserError(f"tasks {seen[t.name]} and {arg} are both named {t.name}: rename a folder, or give "
                            f"one a name in its task.yaml")
        seen[t.name] = arg
