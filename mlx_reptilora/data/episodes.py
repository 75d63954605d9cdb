"""Episodes and batches: pick a task, draw k support and M query examples, pad to fixed buckets.

Everything here works on token ids tokenized once per task (`prepare`); sampling an episode draws
indices only. The sampler's whole state is a numpy bit-generator state, so a checkpoint can store it
and a resumed run draws exactly the episodes an uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from . import hygiene, prompts
from .tasks import Task


@dataclass
class TokenizedTask:
    name: str
    splits: dict[str, list[prompts.Tokenized]]
    dropped: int  # examples whose target alone (or whole chat) exceeds max_length
    truncated: int  # examples whose input was cut to fit
    rows: dict[str, list[int]] = field(default_factory=dict)  # per split, the task's row of each kept example


def prepare(task: Task, tokenizer, fmt: prompts.PromptFormat | None, max_length: int,
            splits: tuple[str, ...] = ("train", "valid")) -> TokenizedTask:
    """Tokenized splits of a task in its own format (`fmt` is reused when it is the task's)."""
    if fmt is None or fmt.instruction != task.instruction or fmt.text != (task.kind == "text"):
        fmt = prompts.PromptFormat.for_task(tokenizer, task)
    out, rows, dropped, truncated = {}, {}, 0, 0
    for split in splits:
        exs = task.splits.get(split, [])
        toks = prompts.tokenize(fmt, tokenizer, exs, max_length)
        lost = sum(t is None for t in toks)
        if lost:
            what = "the chat" if exs[0].messages else "the target"
            hygiene.say(f"task {task.name}: {lost} of {len(exs)} {split} rows dropped: {what} is longer than "
                        f"--max-length {max_length}")
        dropped += lost
        rows[split] = [i for i, t in enumerate(toks) if t is not None]
        out[split] = [toks[i] for i in rows[split]]
        truncated += sum(t.truncated for t in out[split])
    return TokenizedTask(task.name, out, dropped, truncated, rows)


def buckets(max_length: int, smallest: int = 64, multiple: int = 1) -> list[int]:
    """A few fixed padded lengths (64, 128, 256, ... up to max_length), so compiled graphs and GPU
    kernels are reused across batches instead of rebuilt for every length; each rounded up to a
    `multiple` (a fused kernel's tile: model.backend.attention_tile)."""
    out, n = [], smallest
    while n < max_length:
        out.append(n)
        n *= 2
    up = [-(-b // multiple) * multiple for b in out + [max_length]]
    return sorted(set(up))


@dataclass
class Batch:
    tokens: np.ndarray  # (B, L) int32, padded with 0
    lengths: np.ndarray  # (B,) real tokens per row (0 for a padding row)
    prompt_lens: np.ndarray  # (B,) the loss covers positions prompt_len .. length-1
    # The loss is computed only where a target token is predicted: flat (row * L + position)
    # indices of those positions, the token each must predict, and 1/0 weights for padding.
    target_index: np.ndarray  # (T,) int32, T a bucket size
    target_ids: np.ndarray  # (T,) int32
    target_weight: np.ndarray  # (T,) float32

    @property
    def n_targets(self) -> int:
        return int(self.target_weight.sum())


def _bucket(n: int, smallest: int = 16) -> int:
    size = smallest
    while size < n:
        size *= 2
    return size


def make_batch(examples: list[prompts.Tokenized], bucket_lengths: list[int], rows: int | None = None) -> Batch:
    """Pad to the smallest bucket that fits; `rows` pads with empty rows so the batch shape is fixed."""
    rows = rows or len(examples)
    longest = max(len(e.ids) for e in examples)
    length = next((b for b in bucket_lengths if b >= longest), None)
    if length is None:
        raise ValueError(f"example of {longest} tokens exceeds the largest bucket {bucket_lengths[-1]}")
    tokens = np.zeros((rows, length), np.int32)
    lengths = np.zeros(rows, np.int32)
    prompt_lens = np.zeros(rows, np.int32)
    index = []
    for i, e in enumerate(examples):
        tokens[i, : len(e.ids)] = e.ids
        lengths[i], prompt_lens[i] = len(e.ids), e.prompt_len
        # Position p predicts token p + 1: target tokens (and EOS) sit at prompt_len .. len - 1 (or in spans).
        for start, end in e.spans or ((e.prompt_len, len(e.ids)),):
            index.append(i * length + np.arange(start - 1, end - 1))
    index = np.concatenate(index).astype(np.int32)
    t = _bucket(len(index))
    target_index = np.zeros(t, np.int32)
    target_index[: len(index)] = index
    target_ids = np.zeros(t, np.int32)
    target_ids[: len(index)] = tokens.reshape(-1)[index + 1]
    weight = np.zeros(t, np.float32)
    weight[: len(index)] = 1.0
    return Batch(tokens, lengths, prompt_lens, target_index, target_ids, weight)


def micro_batches(examples: list[prompts.Tokenized], size: int, bucket_lengths: list[int]) -> list[Batch]:
    """Micro-batches of `size` rows, sorted by length so that short examples share short buckets.
    A short last chunk is padded with empty rows to a power of two (5 shots at size 4: 4 + 1, not
    4 + 4), which keeps the set of compiled shapes small without computing many empty rows."""
    ordered = sorted(examples, key=lambda e: len(e.ids))
    out = []
    for i in range(0, len(ordered), size):
        chunk = ordered[i: i + size]
        out.append(make_batch(chunk, bucket_lengths, rows=min(size, _bucket(len(chunk), 1))))
    return out


@dataclass
class Episode:
    index: int
    task: str
    support: list[prompts.Tokenized]
    query: list[prompts.Tokenized]


class EpisodeSampler:
    """Task uniformly (or by `weights`), then k support + M query examples from its training split,
    without replacement and disjoint. M is capped per task at what the split leaves after k (the
    offline ACLSum tasks have 100 training papers; the paper's M = 128 assumes 1,000)."""

    def __init__(self, tasks: list[TokenizedTask], support: int, query: int = 0,
                 weights: list[float] | None = None, seed: int = 0, split: str = "train"):
        self.tasks, self.support, self.split = tasks, support, split
        self.query, self.query_caps = {}, {}
        for t in tasks:
            n = len(t.splits.get(split, []))
            if n < support:
                raise UserError(f"task {t.name}: its {split} split has {n} usable examples, fewer than "
                                f"--support {support}")
            self.query[t.name] = min(query, n - support)
            if self.query[t.name] < query:
                self.query_caps[t.name] = self.query[t.name]
        if weights is not None:
            if len(weights) != len(tasks) or min(weights) < 0 or sum(weights) <= 0:
                raise UserError(f"task weights {weights} must be {len(tasks)} non-negative numbers, not all 0")
            weights = list(np.asarray(weights, float) / sum(weights))
        self.weights = weights
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.count = 0

    def sample(self) -> Episode:
        t = self.tasks[self.rng.choice(len(self.tasks), p=self.weights)]
        pool = t.splits[self.split]
        # Indices only: the examples were tokenized once in prepare().
        idx = self.rng.choice(len(pool), self.support + self.query[t.name], replace=False)
        ep = Episode(self.count, t.name, [pool[i] for i in idx[: self.support]],
                     [pool[i] for i in idx[self.support:]])
        self.count += 1
        return ep

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "count": self.count}

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.count = state["count"]


def draw_shot_rows(prepared: TokenizedTask, k: int, seed: int, split: str = "train") -> tuple[list, list[int]]:
    """draw_shots' k tokenized shots, and the rows of the task's split they were made from (the same
    shots for an in-context prompt, even where rows were dropped)."""
    picked = draw_shots(list(range(len(prepared.splits[split]))), k, seed, prepared.name)
    return [prepared.splits[split][i] for i in picked], [prepared.rows[split][i] for i in picked]


def draw_shots(examples: list, k: int, seed: int, task: str = "", flag: str = "--shots") -> list:
    """k training examples (tokenized for adaptation, or raw for in-context prompts), seeded; the
    same seed gives the same shots."""
    if k > len(examples):
        raise UserError(f"{flag} {k} is more than the {len(examples)} usable training examples of {task}")
    rng = np.random.Generator(np.random.PCG64(seed))
    return [examples[i] for i in rng.choice(len(examples), k, replace=False)]
