"""Prompts and loss masks: instruction + document -> summary, with the loss on the summary only.

A prompt is rendered once with a placeholder for the document, then tokenized as
prefix + document + suffix, so the document alone is truncated to fit --max-length and the summary
is always whole. The same function builds generation prompts, so train and test see one format.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .examples import Example

INSTRUCTION = "Summarize the following text in one or two sentences."
_SLOT = "\x00DOCUMENT\x00"


@dataclass
class Tokenized:
    ids: np.ndarray  # int32: prompt tokens then summary tokens then EOS (no summary for prompts)
    prompt_len: int  # tokens before the summary; the loss covers ids[prompt_len:]
    truncated: bool


@dataclass
class PromptFormat:
    """Splits the rendered prompt around the document once, so each example only tokenizes its text."""

    prefix: list[int]
    suffix: list[int]
    eos: int
    bos: int | None
    instruction: str = INSTRUCTION

    @classmethod
    def for_tokenizer(cls, tokenizer, instruction: str = INSTRUCTION) -> PromptFormat:
        content = f"{instruction}\n\n{_SLOT}"
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                 add_generation_prompt=True, tokenize=False)
        else:  # base models (e.g. Llama-2) have no chat template
            text = f"{content}\n\nSummary:"
        before, after = text.split(_SLOT)
        bos = tokenizer.bos_token_id
        # Does the tokenizer prepend BOS itself (Llama-2) or not (SmolLM2)? Add it once, in front.
        adds_bos = bos is not None and tokenizer.encode("a")[:1] == [bos] and not before.startswith(
            tokenizer.bos_token or "\x01")
        plain = lambda s: tokenizer.encode(s, add_special_tokens=False) if s else []  # noqa: E731
        eos = tokenizer.eos_token_id
        return cls(([bos] if adds_bos else []) + plain(before), plain(after), eos, bos if adds_bos else None,
                   instruction)


def tokenize(fmt: PromptFormat, tokenizer, examples: list[Example], max_length: int,
             with_summary: bool = True) -> list[Tokenized | None]:
    """Token ids for each example; None where even an empty document leaves no room for the summary."""
    if not examples:
        return []
    docs = [e.document for e in examples]
    doc_ids = tokenizer._tokenizer(docs, add_special_tokens=False)["input_ids"]
    if with_summary:
        # A leading space is not added: the summary starts a fresh assistant turn / line.
        sum_ids = tokenizer._tokenizer([e.summary for e in examples], add_special_tokens=False)["input_ids"]
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


def in_context(tokenizer, shots: list[Example], examples: list[Example], max_length: int,
               instruction: str = INSTRUCTION) -> list[list[int]]:
    """Prompts for the in-context baseline: the k shots as earlier user/assistant turns, then the
    document. Documents (shots' and the query's) share what --max-length leaves after the fixed text
    and the shots' summaries; each is truncated to an equal share, summaries never."""
    if not shots:
        fmt = PromptFormat.for_tokenizer(tokenizer, instruction)
        return [t.ids.tolist() for t in tokenize(fmt, tokenizer, examples, max_length, with_summary=False)]
    slots = [f"\x00D{i}\x00" for i in range(len(shots) + 1)]
    answers = [f"\x00S{i}\x00" for i in range(len(shots))]
    if getattr(tokenizer, "chat_template", None):
        messages = []
        for d, s in zip(slots, answers):
            messages += [{"role": "user", "content": f"{instruction}\n\n{d}"}, {"role": "assistant", "content": s}]
        messages.append({"role": "user", "content": f"{instruction}\n\n{slots[-1]}"})
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = "".join(f"{instruction}\n\n{d}\n\nSummary: {s}\n\n" for d, s in zip(slots, answers))
        text += f"{instruction}\n\n{slots[-1]}\n\nSummary:"
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False) if s else []  # noqa: E731
    # Split the rendered text into fixed pieces around the slots, in order.
    pieces, rest = [], text
    for slot in [x for pair in zip(slots, answers) for x in pair] + [slots[-1]]:
        before, rest = rest.split(slot, 1)
        pieces.append(enc(before))
    pieces.append(enc(rest))
    summaries = [enc(s.summary) for s in shots]
    shot_docs = [enc(s.document) for s in shots]
    fixed = sum(len(p) for p in pieces) + sum(len(s) for s in summaries)
    out = []
    for doc in tokenizer._tokenizer([e.document for e in examples], add_special_tokens=False)["input_ids"]:
        share = max(0, (max_length - fixed) // (len(shots) + 1))
        ids = []
        for i in range(len(shots)):
            ids += pieces[2 * i] + shot_docs[i][:share] + pieces[2 * i + 1] + summaries[i]
        ids += pieces[2 * len(shots)] + doc[:share] + pieces[-1]
        out.append(ids)
    return out
