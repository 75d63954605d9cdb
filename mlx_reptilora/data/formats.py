"""A user's task folder: train/valid/test files (JSONL, CSV or Parquet) whose rows are in one of
mlx-lm's formats, today's document/summary, or keys the folder's own task.yaml names.

Row formats, told apart by the first row's keys:
- `messages`: a chat; the target is its last assistant turn, the loss covers every assistant turn.
- `prompt` + `completion`: the loss covers the completion.
- `text`: the loss covers every token; scored by the loss itself.
- `document` + `summary`: the input and its summary.
- the keys task.yaml's `fields` names (input, target, choices).

task.yaml (optional) says what the rows cannot: the instruction put before each input, the kind
(generate, choice or text), the metric, the field names, the options of a choice task, the group,
source and licence. Without it the prompt is exactly what the row holds.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .examples import Example
from .spec import KINDS, METRICS

CONFIG_FILES = ("task.yaml", "task.yml")
SPLIT_FILES = {"train": ("train",), "valid": ("valid", "validation", "val"), "test": ("test",)}
EXTENSIONS = (".jsonl", ".csv", ".parquet")
FORMATS = {"messages": ("messages",), "prompt-completion": ("prompt", "completion"), "text": ("text",),
           "document-summary": ("document", "summary")}
_KEYS = {"instruction", "kind", "metric", "fields", "choices", "group", "source", "licence", "license", "name"}


@dataclass
class FolderConfig:
    """A folder's task.yaml."""

    instruction: str = ""
    kind: str | None = None  # from the rows: choice when they have options, text for text rows
    metric: str | None = None  # the kind's first: rouge, accuracy, nll
    fields: dict = field(default_factory=dict)  # input, target, choices: the rows' keys
    choices: list[str] | None = None
    group: str | None = None
    source: str = ""
    licence: str = ""
    name: str | None = None


def label(path: Path) -> str:
    """A name safe in a file name, from a folder's name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", path.resolve().name).strip("-.") or "task"


def _loader():
    """YAML 1.2's booleans (true/false only): `choices: [yes, no]` stays two words, not two booleans."""
    import re as regex

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
                                      for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", regex.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    return Loader


def read_config(folder: Path) -> FolderConfig:
    found = [folder / n for n in CONFIG_FILES if (folder / n).exists()]
    if not found:
        return FolderConfig()
    import yaml

    path = found[0]
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_loader()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected keys such as instruction, kind, metric, fields, choices")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}; known: {', '.join(sorted(_KEYS - {'license'}))}")
    if "license" in raw:
        raw["licence"] = raw.pop("license")
    cfg = FolderConfig(**{k: v for k, v in raw.items() if v is not None})
    if cfg.kind is not None and cfg.kind not in KINDS:
        raise UserError(f"{path}: kind {cfg.kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(cfg.fields, dict) or set(cfg.fields) - {"input", "target", "choices"}:
        raise UserError(f"{path}: fields maps input, target and choices to the rows' keys, e.g. "
                        f"fields: {{input: question, target: answer}}")
    if cfg.choices is not None and (not isinstance(cfg.choices, list) or len(cfg.choices) < 2):
        raise UserError(f"{path}: choices is a list of at least two options")
    if cfg.choices:
        cfg.choices = [str(c).strip() for c in cfg.choices]
    for key in ("instruction", "group", "source", "licence", "name"):
        value = getattr(cfg, key)
        if value is not None and not isinstance(value, str):
            raise UserError(f"{path}: {key} is text, not {type(value).__name__}")
    if cfg.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.name):
        raise UserError(f"{path}: name {cfg.name!r}: letters, digits, '.', '_' and '-' only (outputs are named by it)")
    return cfg


def detect(row: dict, cfg: FolderConfig, where: str) -> str:
    """The format of a folder's rows, from its first row."""
    if cfg.fields:
        return "fields"
    for name, keys in FORMATS.items():
        if all(k in row for k in keys):
            return name
    keys = ", ".join(sorted(row)[:6]) or "none"
    raise UserError(f"{where}: rows have keys {keys}: use messages, prompt+completion, text or document+summary, "
                    f"or name your keys in the folder's task.yaml (fields: {{input: KEY, target: KEY}})")


def _number(value) -> str:
    """A number as it was written: a CSV column with a blank reads 4 as 4.0."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _text(row: dict, key: str, where: str) -> str | None:
    """A field's text; None when it is empty or blank (the row is dropped and counted); a key that
    no row has is an error."""
    if key not in row:
        raise UserError(f"{where}: field {key!r} is missing")
    value = row[key]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = _number(value)
    if not isinstance(value, str):
        raise UserError(f"{where}: field {key!r} is not text")
    return value.strip() or None


ROLES = ("system", "user", "assistant")


def _messages(row: dict, where: str) -> tuple[dict, ...] | None:
    if "messages" not in row:
        raise UserError(f"{where}: field 'messages' is missing (the first row is a chat: every row must be)")
    msgs = row["messages"]
    if isinstance(msgs, str):  # a CSV cell
        try:
            msgs = json.loads(msgs)
        except ValueError:
            raise UserError(f"{where}: messages is not a JSON list") from None
    if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
        raise UserError(f"{where}: messages must be a list of {{role, content}}")
    roles = [m["role"] for m in msgs]
    if any(r not in ROLES for r in roles):
        raise UserError(f"{where}: a message's role is one of {', '.join(ROLES)}, not {next(r for r in roles if r not in ROLES)!r}")
    if not msgs or roles[-1] != "assistant":
        raise UserError(f"{where}: a chat's last message must be the assistant's (its target)")
    turns = [r for r in roles if r != "system"]
    if turns[0] != "user" or any(a == b for a, b in zip(turns, turns[1:])):
        raise UserError(f"{where}: a chat's turns alternate, user first, then assistant (roles: {', '.join(roles)})")
    if any(not isinstance(m["content"], str) or not m["content"].strip() for m in msgs):
        return None
    # stripped: a turn's leading space would fall outside the assistant span the template renders
    return tuple({"role": m["role"], "content": m["content"].strip()} for m in msgs)


def example(row, fmt: str, cfg: FolderConfig, where: str) -> Example | None:
    """One row as an Example; None when a field is empty (dropped, and counted by the caller)."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object (a JSON row), got {type(row).__name__}")
    if fmt == "messages":
        msgs = _messages(row, where)
        if msgs is None:
            return None
        context = "\n\n".join(f"{m['role']}: {m['content']}" for m in msgs[:-1])
        return Example(context, msgs[-1]["content"].strip(), where, None, msgs)
    if fmt == "text":
        text = _text(row, "text", where)
        return None if text is None else Example("", text, where)
    input_key, target_key = {"prompt-completion": ("prompt", "completion"),
                             "document-summary": ("document", "summary")}.get(
        fmt, (cfg.fields.get("input", "input"), cfg.fields.get("target", "target")))
    choices_key = cfg.fields.get("choices", "choices")
    choices = cfg.choices
    if choices_key in row and row[choices_key] is not None:
        raw = row[choices_key]
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                raise UserError(f"{where}: {choices_key} is not a JSON list") from None
        if not isinstance(raw, list) or len(raw) < 2:
            raise UserError(f"{where}: {choices_key} must be a list of at least two options")
        choices = [str(c).strip() for c in raw]
    prompt = _text(row, input_key, where)
    if target_key not in row:
        raise UserError(f"{where}: field {target_key!r} is missing")
    answer = row[target_key]
    if choices and isinstance(answer, (int, float)) and not isinstance(answer, bool) and _number(answer) not in choices:
        if not (float(answer).is_integer() and 0 <= answer < len(choices)):
            raise UserError(f"{where}: the answer {answer} is neither one of its choices nor an option's index")
        answer = choices[int(answer)]  # the index of its option
    target = _text({target_key: answer}, target_key, where)
    if prompt is None or target is None:
        return None
    if choices and target not in choices:
        raise UserError(f"{where}: the answer {target[:40]!r} is not one of its choices ({', '.join(choices)[:80]})")
    return Example(prompt, target, where, tuple(choices) if choices else None)


def _rows(path: Path):
    if path.suffix == ".jsonl":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 (bad byte at offset {e.start})") from None
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line), f"{path}:{lineno}"
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
        return
    import datasets

    kind = {".csv": "csv", ".parquet": "parquet"}[path.suffix]
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as e:
        raise UserError(f"{path}: cannot read as {kind} ({(str(e).splitlines() or [''])[0][:200]})") from None
    for i, row in enumerate(ds):
        yield row, f"{path}:{i + 2 if kind == 'csv' else i}"


def split_files(folder: Path) -> dict[str, Path]:
    out = {}
    for split, stems in SPLIT_FILES.items():
        found = [folder / f"{s}{ext}" for s in stems for ext in EXTENSIONS if (folder / f"{s}{ext}").exists()]
        if found:
            out[split] = found[0]
    return out


def read_folder(folder: Path) -> tuple[FolderConfig, str, dict[str, list[Example]], dict[str, int]]:
    """(its config, the rows' format, {split: examples}, {split: rows dropped for an empty field})."""
    cfg = read_config(folder)
    files = split_files(folder)
    if not files:
        raise UserError(f"task folder {folder} has no train/valid/test .jsonl, .csv or .parquet files")
    fmt, splits, empty = None, {}, {}
    for split, path in files.items():
        out, dropped = [], 0
        for row, where in _rows(path):
            if fmt is None:
                if not isinstance(row, dict):
                    raise UserError(f"{where}: expected an object (a JSON row), got {type(row).__name__}")
                fmt = detect(row, cfg, where)
            ex = example(row, fmt, cfg, where)
            if ex is None:
                dropped += 1
            else:
                out.append(ex)
        splits[split], empty[split] = out, dropped
    return cfg, fmt or "empty", splits, empty


def kind_of(cfg: FolderConfig, fmt: str, splits: dict[str, list[Example]], folder: Path) -> tuple[str, str]:
    """The task's kind and metric: task.yaml's, else what the rows say."""
    has_choices = any(e.choices for v in splits.values() for e in v)
    kind = cfg.kind or ("text" if fmt == "text" else "choice" if has_choices else "generate")
    if kind == "choice":
        missing = next((e for v in splits.values() for e in v if not e.choices), None)
        if missing is not None:
            raise UserError(f"{missing.id}: a choice task needs options for every row: a choices list in task.yaml "
                            f"or in each row")
    if kind == "text" and fmt != "text":
        raise UserError(f"{folder}: kind text needs rows of {{\"text\": ...}}")
    if fmt == "text" and kind != "text":
        raise UserError(f"{folder}: text rows have no target to {kind}; use prompt+completion rows")
    metric = cfg.metric or METRICS[kind][0]
    if metric not in METRICS[kind]:
        raise UserError(f"{folder}/task.yaml: metric {metric!r} does not score a {kind} task; "
                        f"it takes {', '.join(METRICS[kind])}")
    return kind, metric
