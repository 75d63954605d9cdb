"""Scores of one task's predictions, each a bootstrap mean with a 95% interval, in points (x100)
where they are rates: ROUGE-1/2/L F (rouge-score, stemming on), normalised exact match, choice
accuracy with the NLL of the right option and the expected calibration error, and a text task's
loss per token."""

from __future__ import annotations

import re
import string
import unicodedata

import numpy as np

ROUGE = ("rouge1", "rouge2", "rougeL")
# each metric's headline key, what it is called, and whether higher is better
HEADLINE = {"rouge": ("rougeL", "ROUGE-L", True), "exact": ("exact", "exact match", True),
            "accuracy": ("accuracy", "accuracy", True), "nll": ("nll", "NLL per token", False)}
ECE_BINS = 15


def rouge(predictions: list[str], references: list[str], seed: int = 0) -> dict:
    """Bootstrap-aggregated ROUGE F-measures in points (x100): {metric: {low, mid, high}}."""
    from rouge_score import rouge_scorer, scoring

    scorer = rouge_scorer.RougeScorer(list(ROUGE), use_stemmer=True)
    np.random.seed(seed)  # BootstrapAggregator resamples with numpy's global RNG
    agg = scoring.BootstrapAggregator()
    for p, r in zip(predictions, references):
        agg.add_scores(scorer.score(r, p))
    result = agg.aggregate()
    return {m: {"low": 100 * result[m].low.fmeasure, "mid": 100 * result[m].mid.fmeasure,
                "high": 100 * result[m].high.fmeasure} for m in ROUGE}


def bootstrap(values, seed: int = 0, samples: int = 1000, weights=None) -> dict:
    """The mean of `values` (weighted: sum(v) / sum(w)) with a percentile 95% interval over
    resampled rows."""
    v = np.asarray(values, float)
    w = np.ones_like(v) if weights is None else np.asarray(weights, float)
    if not len(v):
        return {"low": float("nan"), "mid": float("nan"), "high": float("nan")}
    rng = np.random.Generator(np.random.PCG64(seed))
    idx = rng.integers(0, len(v), (samples, len(v)))
    means = v[idx].sum(1) / w[idx].sum(1)
    return {"low": float(np.percentile(means, 2.5)), "mid": float(v.sum() / w.sum()),
            "high": float(np.percentile(means, 97.5))}


def normalize(text: str) -> str:
    """SQuAD's answer normalisation, Unicode-aware: NFKC, lower case, no punctuation, no English
    articles, single spaces. An answer that is all punctuation (a symbol such as "!") is kept as it
    is, stripped: normalised away, it would match an empty prediction."""
    folded = unicodedata.normalize("NFKC", text).lower()
    folded = "".join(" " if unicodedata.category(c).startswith("P") or c in string.punctuation else c for c in folded)
    folded = " ".join(re.sub(r"\b(a|an|the)\b", " ", folded).split())
    return folded or text.strip()


def exact(predictions: list[str], references: list[str], seed: int = 0) -> dict:
    hits = [100.0 * (normalize(p) == normalize(r)) for p, r in zip(predictions, references)]
    return {"exact": bootstrap(hits, seed)}


def _bin(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Each row's bin m - 1 of `bins` equal-width ones: (m-1)/M < p <= m/M, the first also 0."""
    return np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)


def ece(confidence, correct, bins: int = ECE_BINS) -> float:
    """Expected calibration error, in points: with the rows split into `bins` equal-width bins
    B_1..B_M of the top option's probability p (bin m holds (m-1)/M < p <= m/M, the first also 0),
        ECE = sum_m |B_m| / n * | acc(B_m) - conf(B_m) |,
    acc the share of right answers in the bin and conf its mean p (Guo et al., 2017)."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    which = _bin(confidence, bins)
    total = 0.0
    for m in range(bins):
        inside = which == m
        if inside.any():
            total += inside.sum() / len(confidence) * abs(correct[inside].mean() - confidence[inside].mean())
    return 100 * total


def ece_interval(confidence, correct, seed: int = 0, samples: int = 1000, bins: int = ECE_BINS) -> list[float]:
    """A percentile 95% interval of the ECE over resampled rows. Per bin |B_m| / n * |acc - conf| is
    |sum of right - sum of p| / n, so each resample needs only its bins' two sums."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    if not len(confidence):
        return [float("nan"), float("nan")]
    which = _bin(confidence, bins)
    rng = np.random.Generator(np.random.PCG64(seed))
    idx = rng.integers(0, len(confidence), (samples, len(confidence)))
    slot = (np.arange(samples)[:, None] * bins + which[idx]).ravel()
    gap = (np.bincount(slot, correct[idx].ravel(), samples * bins)
           - np.bincount(slot, confidence[idx].ravel(), samples * bins)).reshape(samples, bins)
    eces = 100 * np.abs(gap).sum(1) / len(confidence)
    return [float(np.percentile(eces, 2.5)), float(np.percentile(eces, 97.5))]


def reliability(confidence, correct, bins: int = ECE_BINS) -> list[dict]:
    """The reliability diagram's points: per non-empty bin, its range, rows, accuracy and confidence."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    which = _bin(confidence, bins)
    return [{"bin": [m / bins, (m + 1) / bins], "n": int((which == m).sum()),
             "accuracy": float(correct[which == m].mean()), "confidence": float(confidence[which == m].mean())}
            for m in range(bins) if (which == m).any()]


def choice(records: list[dict], seed: int = 0) -> dict:
    """Records {probs, answer} (probs over a row's options, answer its index): accuracy, the NLL of
    the right option (nats), ECE with its 95% interval and the reliability diagram's bins; with
    {prediction, reference}, balanced accuracy too."""
    probs = [np.asarray(r["probs"], float) for r in records]
    answer = [r["answer"] for r in records]
    top = np.array([p.max() for p in probs])
    right = np.array([float(int(np.argmax(p)) == a) for p, a in zip(probs, answer)])
    nll = [-np.log(max(p[a], 1e-12)) for p, a in zip(probs, answer)]
    out = {"accuracy": bootstrap(100 * right, seed), "nll": bootstrap(nll, seed), "ece": round(ece(top, right), 3),
           "ece_interval": [round(x, 3) for x in ece_interval(top, right, seed)], "reliability": reliability(top, right)}
    if records and all("reference" in r for r in records):
        out["balanced_accuracy"] = round(100 * balanced_accuracy(records), 3)
    return out


def balanced_accuracy(records: list[dict]) -> float:
    """The mean over right answers of the share of their rows answered right (records {prediction,
    reference}): one answer for every row scores 1 / answers, however the answers are balanced."""
    by_answer: dict[str, list[bool]] = {}
    for r in records:
        by_answer.setdefault(r["reference"], []).append(r["prediction"] == r["reference"])
    return float(np.mean([np.mean(v) for v in by_answer.values()]))


def text(records: list[dict], seed: int = 0) -> dict:
    """Records {nll, tokens} (summed over a row's tokens): the loss per token, pooled over rows,
    and its perplexity."""
    nll = bootstrap([r["nll"] for r in records], seed, weights=[r["tokens"] for r in records])
    return {"nll": nll, "perplexity": float(np.exp(nll["mid"]))}


def score(metric: str, records: list[dict], seed: int = 0) -> dict:
    """The task's scores from its records (generate: prediction, reference; choice: probs, answer;
    text: nll, tokens)."""
    if metric == "rouge":
        return rouge([r["prediction"] for r in records], [r["reference"] for r in records], seed)
    if metric == "exact":
        return exact([r["prediction"] for r in records], [r["reference"] for r in records], seed)
    if metric == "accuracy":
        return choice(records, seed)
    if metric == "nll":
        return text(records, seed)
    raise ValueError(f"unknown metric {metric}")


def headline(metric: str, scores: dict) -> float:
    """The one number a task is judged by, higher better (a loss counts negative)."""
    key, _, higher = HEADLINE[metric]
    value = scores[key]["mid"]
    return value if higher else -value


def describe(metric: str, scores: dict) -> str:
    key, name, _ = HEADLINE[metric]
    s = scores[key]
    out = f"{name} {s['mid']:.2f} [{s['low']:.2f}, {s['high']:.2f}]"
    if metric == "rouge":
        out += ", " + ", ".join(f"{m} {scores[m]['mid']:.2f}" for m in ("rouge1", "rouge2"))
    if metric == "accuracy":
        out += f", NLL {scores['nll']['mid']:.3f}, ECE {scores['ece']:.2f}"
        if "balanced_accuracy" in scores:
            out += f", balanced accuracy {scores['balanced_accuracy']:.2f}"
    if metric == "nll":
        out += f", perplexity {scores['perplexity']:.2f}"
    return out
