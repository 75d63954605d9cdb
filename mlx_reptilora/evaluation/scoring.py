"""Scoring by likelihood instead of generation: a choice row's options, and a text task's tokens.

Each option is scored by the log-likelihood of its tokens (and EOS) after the prompt, divided by
their number: the per-token normalisation of the multiple-choice literature, so a long option is not
penalised for its length. The options' probabilities are the softmax of those scores across the
row's options; the prediction is the most probable one. Every option of every row goes through the
model in one batched pass (rows of similar length together).

Contextual calibration (Zhao et al., 2021) divides a row's option probabilities by those its
options get after content-free inputs, so a prior over the answers that a prompt or a few shots
impose, every row given the shot's answer, is taken out before the argmax."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..data import episodes, prompts
from ..data.examples import Example
from ..meta.losses import lm_head


def log_likelihoods(model, seqs: list[prompts.Tokenized], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence: the summed log-probability of its loss tokens (ids[prompt_len:], or its spans)
    and how many there are. Dropout off."""
    model.eval()
    sums, counts = np.zeros(len(seqs)), np.zeros(len(seqs), int)
    if not seqs:
        return sums, counts
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))
    lengths = episodes.buckets(max(len(s.ids) for s in seqs))
    for at in range(0, len(order), batch_size):
        rows = order[at: at + batch_size]
        b = episodes.make_batch([seqs[i] for i in rows], lengths)
        hidden = model.model(mx.array(b.tokens))
        hidden = hidden.reshape(-1, hidden.shape[-1])[mx.array(b.target_index)]
        logits = lm_head(model, hidden).astype(mx.float32)
        logp = -nn.losses.cross_entropy(logits, mx.array(b.target_ids), reduction="none")
        logp = np.array(logp * mx.array(b.target_weight))
        row = b.target_index // b.tokens.shape[1]
        per_row = np.bincount(row, weights=logp, minlength=len(rows))
        n = np.bincount(row, weights=b.target_weight, minlength=len(rows))
        for j, i in enumerate(rows):
            sums[i], counts[i] = per_row[j], int(n[j])
    return sums, counts


def choices(model, fmt: prompts.PromptFormat, tokenizer, exs: list[Example], batch_size: int, max_length: int,
            prompt_ids: list[list[int]] | None = None) -> list[dict]:
    """Per row: {prediction, reference, probs, answer} (answer: the right option's index). Without
    `prompt_ids` (in-context prompts), each option is the sequence training would see."""
    seqs = []
    for i, e in enumerate(exs):
        seqs += prompts.options(fmt, tokenizer, e, max_length, None if prompt_ids is None else prompt_ids[i])
    sums, counts = log_likelihoods(model, seqs, batch_size)
    scores = sums / np.maximum(counts, 1)
    out, at = [], 0
    for e in exs:
        s = scores[at: at + len(e.choices)]
        at += len(e.choices)
        probs = np.exp(s - s.max())
        probs /= probs.sum()
        out.append({"prediction": e.choices[int(np.argmax(probs))], "reference": e.target,
                    "probs": [float(p) for p in probs], "answer": e.choices.index(e.target)})
    return out


CONTENT_FREE = ("N/A", "", "[MASK]")  # the paper's three, their probabilities averaged


def content_free(exs: list[Example]) -> list[Example]:
    """For each distinct set of options among `exs` (choice rows have an input, never a chat), one
    row per content-free input with those options."""
    first = {e.choices: e for e in reversed(exs)}
    return [first[options]._replace(input=text, id=f"content-free:{i}")
            for options in dict.fromkeys(e.choices for e in exs) for i, text in enumerate(CONTENT_FREE)]


def calibrated(exs: list[Example], rows: list[dict], free: list[Example], free_rows: list[dict]) -> list[dict]:
    """`rows` (choices or averaged, for `exs`) with each option probability divided by the mean
    its option gets over the content-free rows of the same option set (`free`, `free_rows`: from
    content_free), renormalised; the uncalibrated ones kept as raw_probs."""
    prior: dict[tuple, list] = {}
    for e, r in zip(free, free_rows):
        prior.setdefault(e.choices, []).append(r["probs"])
    out = []
    for e, r in zip(exs, rows):
        p = np.asarray(r["probs"]) / np.maximum(np.mean(prior[e.choices], axis=0), 1e-12)
        p /= p.sum()
        out.append({**r, "prediction": e.choices[int(np.argmax(p))], "probs": [float(x) for x in p],
                    "raw_probs": r["probs"]})
    return out


def averaged(exs: list[Example], runs: list[list[dict]]) -> list[dict]:
    """Per row, the mean of several `choices` runs' option probabilities (one run per posterior
    sample) and the prediction that mean makes."""
    out = []
    for e, rows in zip(exs, zip(*runs)):
        probs = np.mean([r["probs"] for r in rows], axis=0)
        out.append({**rows[0], "prediction": e.choices[int(np.argmax(probs))], "probs": [float(p) for p in probs],
                    "samples": len(rows)})
    return out


def text_nll(model, seqs: list[prompts.Tokenized], batch_size: int) -> list[dict]:
    """Per row of a text task: {nll, tokens}, the loss summed over its tokens."""
    sums, counts = log_likelihoods(model, seqs, batch_size)
    return [{"nll": float(-s), "tokens": int(c)} for s, c in zip(sums, counts)]
