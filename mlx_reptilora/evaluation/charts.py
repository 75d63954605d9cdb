"""Charts of compare and evaluate: grouped bars of each task's own metric per shot count (the
paper's Figures 2-3), and reliability diagrams of choice tasks. Written atomically."""

from __future__ import annotations

from pathlib import Path

from ..paths import atomic_write
from .metrics import HEADLINE


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def bars(path: Path, title: str, metric: str, shots: list[int], series: dict[str, dict], styles: dict) -> None:
    """series: {label: {k: scores}}; groups = shots, one bar per label, the interval as error bars."""
    plt = _pyplot()
    key, name, higher = HEADLINE[metric]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    width = 0.8 / max(len(series), 1)
    for j, (label, cells) in enumerate(series.items()):
        xs, ys, errs = [], [], [[], []]
        for i, k in enumerate(shots):
            r = cells.get(k)
            if r:
                xs.append(i + (j - (len(series) - 1) / 2) * width)
                ys.append(r[key]["mid"])
                errs[0].append(r[key]["mid"] - r[key]["low"])
                errs[1].append(r[key]["high"] - r[key]["mid"])
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=label, **styles.get(label, {}))
    ax.set_xticks(range(len(shots)), [f"{k}-shot" for k in shots])
    ax.set_ylabel(f"{name}" + (" (x100)" if metric != "nll" else " (lower is better)"))
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def reliability(path: Path, title: str, series: dict[str, dict]) -> None:
    """series: {label: choice scores with "reliability" bins}: accuracy against confidence per bin,
    the diagonal being perfect calibration; a marker's area follows its bin's rows."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=120)
    ax.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--", label="calibrated")
    for label, scores in series.items():
        bins = scores["reliability"]
        n = max(sum(b["n"] for b in bins), 1)
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", lw=1,
                label=f"{label} (ECE {scores['ece']:.1f})")
        ax.scatter([b["confidence"] for b in bins], [b["accuracy"] for b in bins],
                   s=[400 * b["n"] / n for b in bins], alpha=0.25)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top option's probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(frameon=False, fontsize=7, loc="upper left")
    fig.tight_layout()
    _save(fig, path)


def similarity(path: Path, names: list[str], matrix) -> None:
    """A heatmap of the tasks' pairwise cosine similarity (of embeddings with their mean taken out)."""
    plt = _pyplot()
    n = len(names)
    fig, ax = plt.subplots(figsize=(2.5 + 0.28 * n, 2 + 0.28 * n), dpi=120)
    im = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(n), names, rotation=90, fontsize=6)
    ax.set_yticks(range(n), names, fontsize=6)
    ax.set_title("task embeddings: cosine similarity, centered", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.7)
    fig.tight_layout()
    _save(fig, path)
