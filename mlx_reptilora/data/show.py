"""What the library sees of a task (`mlx-reptilora tasks NAME_OR_FOLDER`): its kind and format, split
sizes, token statistics, what is wrong with its data, and its first example exactly as the model
will see it, the loss span marked."""

from __future__ import annotations

import numpy as np

from . import episodes, prompts
from .tasks import SPLITS, Task

OPEN, CLOSE = "⟦", "⟧"  # around the tokens the loss covers


def _stats(lengths) -> str:
    return f"{np.median(lengths):.0f} / {np.percentile(lengths, 95):.0f}" if len(lengths) else "-"


def token_stats(task: Task, tokenizer, max_length: int) -> dict:
    """Token counts of inputs and targets, and how many rows --max-length truncates or drops: from
    the counts alone, as prompts.tokenize decides (a chat is tokenized whole)."""
    exs = [e for split in task.splits.values() for e in split]
    enc = tokenizer._tokenizer
    inputs = np.array([len(x) for x in enc([e.input for e in exs], add_special_tokens=False)["input_ids"]] if exs else [])
    targets = np.array([len(x) for x in enc([e.target for e in exs], add_special_tokens=False)["input_ids"]] if exs else [])
    if any(e.messages for e in exs):
        prepared = episodes.prepare(task, tokenizer, None, max_length, tuple(task.splits))
        truncated, dropped = prepared.truncated, prepared.dropped
    elif len(exs):
        fmt = prompts.PromptFormat.for_task(tokenizer, task)
        if fmt.text:
            truncated, dropped = int((len(fmt.prefix) + targets + 1 > max_length).sum()), 0
        else:
            budget = max_length - len(fmt.prefix) - len(fmt.suffix) - targets - 1
            dropped = int((budget <= 0).sum())
            truncated = int(((budget > 0) & (inputs > budget)).sum())
    else:
        truncated = dropped = 0
    return {"input": _stats(inputs), "target": _stats(targets), "truncated": truncated, "dropped": dropped}


def rendered(task: Task, tokenizer, max_length: int) -> str:
    """The first training (else any) example as the model sees it, the loss span(s) marked."""
    split = next((s for s in SPLITS if task.splits.get(s)), None)
    if split is None:
        return "(no examples)"
    ex = task.splits[split][0]
    tok = prompts.tokenize(prompts.PromptFormat.for_task(tokenizer, task), tokenizer, [ex], max_length)[0]
    if tok is None:
        return f"(its first example does not fit in --max-length {max_length})"
    ids = tok.ids.tolist()
    out, at = "", 0
    for start, end in tok.spans or ((tok.prompt_len, len(ids)),):
        out += tokenizer.decode(ids[at:start]) + OPEN + tokenizer.decode(ids[start:end]) + CLOSE
        at = end
    return out + tokenizer.decode(ids[at:])


def describe(task: Task, tokenizer, max_length: int) -> list[str]:
    s = token_stats(task, tokenizer, max_length)
    sizes = ", ".join(f"{name} {len(task.splits.get(name, []))}" for name in SPLITS)
    lines = [f"task {task.name}",
             f"  kind: {task.kind}, scored by {task.metric}; rows: {task.format}; group: {task.group or task.name}",
             f"  instruction: {task.instruction!r}" if task.instruction else "  instruction: none (the prompt is the row)",
             f"  source: {task.source}" + (f"; licence: {task.licence}" if task.licence else ""),
             f"  splits: {sizes}",
             f"  tokens p50 / p95: input {s['input']}, target {s['target']}; at --max-length {max_length}: "
             f"{s['truncated']} inputs truncated, {s['dropped']} rows dropped"]
    options = {c for split in task.splits.values() for e in split if e.choices for c in e.choices}
    if options:
        lines.append(f"  options: {', '.join(sorted(options)[:12])}" + (" ..." if len(options) > 12 else ""))
    lines += [f"  warning: {w}" for w in task.warnings]
    lines += [f"  first example (the loss covers {OPEN}...{CLOSE}):", "", rendered(task, tokenizer, max_length), ""]
    return lines
