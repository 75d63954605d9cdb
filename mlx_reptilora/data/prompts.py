"""Prompts and loss masks: what the model sees for an example, and which tokens the loss covers.

- An instruction task (a document, a prompt, a question): the user turn is the instruction (if the
  task has one) and the input, under the tokenizer's chat template; the loss covers the target and
  EOS. The prompt is rendered once with a placeholder for the input, then tokenized as
  prefix + input + suffix, so the input alone is truncated to fit --max-length and the target is
  always whole. The same function builds generation prompts, so train and test see one format.
- A chat (`messages`): the chat template over the whole conversation; the loss covers every
  assistant turn, and generation answers the last one. A chat too long for --max-length is dropped.
- A text task: the text itself; the loss covers every token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .examples import Example

INSTRUCTION = "Summarize the following text in one or two sentences."  # the paper's
_SLOT = "\x00DOCUMENT\x00"


@dataclass
class Tokenized:
    ids: np.ndarray  # int32: prompt tokens then target tokens then EOS (no target for prompts)
    prompt_len: int  # tokens before the (last) target; the loss covers ids[prompt_len:]
    truncated: bool
    spans: tuple[tuple[int, int], ...] | None = None  # the loss's [start, end) spans, when not just the tail


def content(instruction: str, text: str) -> str:
    """The user turn: the task's instruction, if it has one, then the input."""
    return f"{instruction}\n\n{text}" if instruction else text


def cue(instruction: str) -> str:
    """Without a chat template (base models such as Llama-2): what follows the input. A task without
    an instruction gets nothing: its prompt is exactly what the row holds."""
    if not instruction:
        return ""
    return "\n\nSummary:" if instruction == INSTRUCTION else "\n\nAnswer:"


@dataclass
class PromptFormat:
    """Splits the rendered prompt around the input once, so each example only tokenizes its text."""

    prefix: list[int]
    suffix: list[int]
    eos: int
    bos: int | None
    instruction: str = INSTRUCTION
    text: bool = False  # a text task: no prompt, the loss on every token

    @classmethod
    def for_tokenizer(cls, tokenizer, instruction: str = INSTRUCTION, text: bool = False) -> PromptFormat:
        bos = tokenizer.bos_token_id
        # Does the tokenizer prepend BOS itself (Llama-2) or not (SmolLM2)? Add it once, in front.
        adds_bos = bos is not None and tokenizer.encode("a")[:1] == [bos]
        eos = tokenizer.eos_token_id
        if text:
            return cls([bos] if adds_bos else [], [], eos, bos if adds_bos else None, "", True)
        if getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": content(instruction, _SLOT)}],
                                                     add_generation_prompt=True, tokenize=False)
        else:
            rendered = content(instruction, _SLOT) + cue(instruction)
        before, after = rendered.split(_SLOT)
        adds_bos = adds_bos and not before.startswith(tokenizer.bos_token or "\x01")
        return cls(([bos] if adds_bos else []) + _plain(tokenizer, before), _plain(tokenizer, after), eos,
                   bos if adds_bos else None, instruction)

    @classmethod
    def for_task(cls, tokenizer, task) -> PromptFormat:
        return cls.for_tokenizer(tokenizer, task.instruction, task.kind == "text")


def _plain(tokenizer, s: str) -> list[int]:
    return tokenizer.encode(s, add_special_tokens=False) if s else []


def _chat_ids(tokenizer, messages, generation: bool) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("chat rows (messages) need a model whose tokenizer has a chat template; this one has none: "
                        "use prompt+completion rows")
    try:
        return list(tokenizer.apply_chat_template(list(messages), add_generation_prompt=generation, tokenize=True,
                                                  return_dict=False))
    except Exception as e:  # the template's own checks (roles, order), raised as its engine's error
        raise UserError(f"the model's chat template refuses a chat: {str(e).splitlines()[0][:160]}") from None


def chat(tokenizer, messages, max_length: int, with_target: bool = True) -> Tokenized | None:
    """A conversation: the loss on every assistant turn, the last one the target. None when it does
    not fit in max_length (with its target)."""
    if not with_target:
        ids = _chat_ids(tokenizer, messages[:-1], True)
        return Tokenized(np.array(ids, dtype=np.int32), len(ids), False)
    ids = _chat_ids(tokenizer, messages, False)
    if len(ids) > max_length:
        return None
    spans = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            before = _chat_ids(tokenizer, messages[:i], True)
            if ids[: len(before)] != before:  # the loss span is found by where the turn starts
                raise UserError("the model's chat template renders a conversation's start differently inside the "
                                "whole conversation: its assistant turns cannot be found; use prompt+completion rows")
            start = len(before)
            end = len(ids) if i == len(messages) - 1 else len(_chat_ids(tokenizer, messages[: i + 1], False))
            if end > start:
                spans.append((start, end))
    return Tokenized(np.array(ids, dtype=np.int32), spans[-1][0], False, tuple(spans))


def tokenize(fmt: PromptFormat, tokenizer, examples: list[Example], max_length: int,
             with_summary: bool = True) -> list[Tokenized | None]:
    """Token ids for each example; None where even an empty input leaves no room for the target."""
    if not examples:
        return []
    if any(e.messages for e in examples):
        return [chat(tokenizer, e.messages, max_length, with_summary) for e in examples]
    if fmt.text:
        out = []
        for ids in tokenizer._tokenizer([e.target for e in examples], add_special_tokens=False)["input_ids"]:
            ids = fmt.prefix + ids + [fmt.eos]
            # the first token has nothing before it to be predicted from
            out.append(Tokenized(np.array(ids[:max_length], dtype=np.int32), 1, len(ids) > max_length))
        return out
    docs = [e.input for e in examples]
    doc_ids = tokenizer._tokenizer(docs, add_special_tokens=False)["input_ids"]
    if with_summary:
        # A leading space is not added: the target starts a fresh assistant turn / line.
        sum_ids = tokenizer._tokenizer([e.target for e in examples], add_special_tokens=False)["input_ids"]
    else:
        sum_ids = [[] for _ in examples]
    out = []
    fixed = len(fmt.prefix) + len(fmt.suffix)
    for d, s in zip(doc_ids, sum_ids):
        target = s + [fmt.eos] if with_summary else []
        budget = max_length - fixed - len(target)
        if budget <= 0:
            out.append(None)
            continue
        prompt = fmt.prefix + d[:budget] + fmt.suffix
        out.append(Tokenized(np.array(prompt + target, dtype=np.int32), len(prompt), len(d) > budget))
    return out


def options(fmt: PromptFormat, tokenizer, example: Example, max_length: int,
            prompt: list[int] | None = None) -> list[Tokenized]:
    """A choice row's options, each with the loss on the option and EOS: without `prompt`, the very
    sequence training puts the loss on when the option is the answer (its input truncated alike);
    with one (an in-context prompt), that prompt then the option."""
    if prompt is None:
        seqs = tokenize(fmt, tokenizer, [example._replace(target=c) for c in example.choices], max_length)
        if all(t is not None for t in seqs):
            return seqs
        prompt = tokenize(fmt, tokenizer, [example], max_length, with_summary=False)[0].ids.tolist()
    ids = tokenizer._tokenizer(list(example.choices), add_special_tokens=False)["input_ids"]
    return [Tokenized(np.array(prompt + c + [fmt.eos], dtype=np.int32), len(prompt), False) for c in ids]


def in_context(tokenizer, shots: list[Example], examples: list[Example], max_length: int,
               instruction: str = INSTRUCTION) -> list[list[int]]:
    """Prompts for the in-context baseline: the k shots as earlier user/assistant turns, then the
    input. Inputs (shots' and the query's) share what --max-length leaves after the fixed text
    and the shots' targets; each is truncated to an equal share, targets never. A chat's shots are
    its earlier conversations, whole."""
    if any(e.messages for e in examples):
        # the shots' conversations go first, without their system messages: the query's is the one
        before = [m for s in shots for m in s.messages if m["role"] != "system"]
        out = []
        for e in examples:
            system = [m for m in e.messages[:-1] if m["role"] == "system"]
            rest = [m for m in e.messages[:-1] if m["role"] != "system"]
            out.append(_chat_ids(tokenizer, system + before + rest, True))
        return out
    if not shots:
        fmt = PromptFormat.for_tokenizer(tokenizer, instruction)
        return [t.ids.tolist() for t in tokenize(fmt, tokenizer, examples, max_length, with_summary=False)]
    slots = [f"\x00D{i}\x00" for i in range(len(shots) + 1)]
    answers = [f"\x00S{i}\x00" for i in range(len(shots))]
    if getattr(tokenizer, "chat_template", None):
        messages = []
        for d, s in zip(slots, answers):
            messages += [{"role": "user", "content": content(instruction, d)}, {"role": "assistant", "content": s}]
        messages.append({"role": "user", "content": content(instruction, slots[-1])})
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        sep = " " if cue(instruction) else ""  # as training joins the row's prompt and its target
        text = "".join(f"{content(instruction, d)}{cue(instruction)}{sep}{s}\n\n" for d, s in zip(slots, answers))
        text += f"{content(instruction, slots[-1])}{cue(instruction)}"
    # Split the rendered text into fixed pieces around the slots, in order.
    pieces, rest = [], text
    for slot in [x for pair in zip(slots, answers) for x in pair] + [slots[-1]]:
        before, rest = rest.split(slot, 1)
        pieces.append(_plain(tokenizer, before))
    pieces.append(_plain(tokenizer, rest))
    summaries = [_plain(tokenizer, s.target) for s in shots]
    shot_docs = [_plain(tokenizer, s.input) for s in shots]
    fixed = sum(len(p) for p in pieces) + sum(len(s) for s in summaries)
    out = []
    for doc in tokenizer._tokenizer([e.input for e in examples], add_special_tokens=False)["input_ids"]:
        share = max(0, (max_length - fixed) // (len(shots) + 1))
        ids = []
        for i in range(len(shots)):
            ids += pieces[2 * i] + shot_docs[i][:share] + pieces[2 * i + 1] + summaries[i]
        ids += pieces[2 * len(shots)] + doc[:share] + pieces[-1]
        out.append(ids)
    return out
