"""What adapting on a few shots of a choice task does to the predicted labels (docs/RESULTS.md,
"Task-dependent starts: the first held-out group"), from the predictions each fold's test wrote.

For every system, task and shot count, over the draws of the shots:
- top_share: the share of test rows given the draw's most frequent label (1.0: one label for all);
- accuracy: as scored (the most likely option);
- accuracy_prior_divided: the option probabilities divided by their mean over the draw's test rows
  before the argmax (batch calibration, Zhou et al., ICLR 2024). It removes a label prior shared
  by every row and keeps the ordering between rows. It is transductive (it reads the unlabeled test
  inputs) and assumes no label is rare: an analysis of what survives adaptation, not a tuned score;
- balanced_accuracy: the mean over right answers of their rows' accuracy (one label for all: chance);
- ece with its 95% interval, the draws pooled as the report pools them (rows written before the
  report had ECE intervals);
- for calibrated systems (rows with raw_probs): prior_gap, the total variation distance between
  the content-free prior that calibration divided by and the mean uncalibrated prediction over
  the draw's test rows, and prior_shift, that mean's distance from uniform (medians over draws).

    python docs/results/task-starts/labels.py     # seconds; writes labels.json beside it
"""
import collections
import json
import tarfile
from pathlib import Path

import numpy as np

from mlx_reptilora.evaluation import metrics

HERE = Path(__file__).resolve().parent
HOW = ("meta+in-context", "in-context", "meta", "lora")  # the longest first: one ends another


def rows_of(tar: tarfile.TarFile):
    """(system, task, shots) -> rows, from test/<system>/<fold>/predictions/<task>-<how>-<k>shot.jsonl."""
    for m in tar.getmembers():
        if not m.name.endswith("shot.jsonl"):
            continue
        parts = Path(m.name).parts
        system = parts[parts.index("test") + 1]
        stem = Path(m.name).stem  # <task>-<system's kind>-<k>shot, e.g. vader-polarity-meta+in-context-1shot
        head, _, shots = stem.rpartition("-")
        task = next(head.removesuffix(f"-{how}") for how in HOW if head.endswith(f"-{how}"))
        yield system, task, int(shots.removesuffix("shot")), [json.loads(x) for x in tar.extractfile(m)]


def summary(rows: list[dict]) -> dict:
    draws = collections.defaultdict(list)
    for r in rows:
        draws[r["draw"]].append(r)
    top, acc, divided, balanced, gap, shift = [], [], [], [], [], []
    for rs in draws.values():
        probs = np.array([r["probs"] for r in rs])
        answer = np.array([r["answer"] for r in rs])
        top.append(collections.Counter(probs.argmax(1)).most_common(1)[0][1] / len(rs))
        acc.append(float((probs.argmax(1) == answer).mean()))
        divided.append(float(((probs / probs.mean(0)).argmax(1) == answer).mean()))
        balanced.append(metrics.balanced_accuracy(rs))
        if "raw_probs" in rs[0]:
            raw = np.array([r["raw_probs"] for r in rs])
            free = raw / probs  # calibrated = raw / free, renormalised: free up to a factor per row
            free = (free / free.sum(1, keepdims=True)).mean(0)
            mean = raw.mean(0) / raw.mean(0).sum()
            gap.append(0.5 * float(np.abs(free - mean).sum()))
            shift.append(0.5 * float(np.abs(mean - 1 / len(mean)).sum()))
    scored = metrics.choice(rows)
    return {"draws": len(draws), "rows": len(rows), "top_share": round(float(np.mean(top)), 3),
            "accuracy": round(100 * float(np.mean(acc)), 2),
            "accuracy_prior_divided": round(100 * float(np.mean(divided)), 2),
            "balanced_accuracy": round(100 * float(np.mean(balanced)), 2),
            "ece": scored["ece"], "ece_interval": scored["ece_interval"],
            **({"prior_gap": round(float(np.median(gap)), 3), "prior_shift": round(float(np.median(shift)), 3)}
               if gap else {})}


def main():
    out = {}
    for packed in sorted(HERE.glob("*/predictions.tar.*")):
        fold = packed.parent.name
        with tarfile.open(packed) as tar:
            for system, task, k, rows in rows_of(tar):
                out.setdefault(fold, {}).setdefault(system, {}).setdefault(task, {})[str(k)] = summary(rows)
    for fold in out.values():
        for system in fold.values():
            for task in system:
                system[task] = dict(sorted(system[task].items()))
    (HERE / "labels.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    for fold, systems in out.items():
        for system, tasks in sorted(systems.items()):
            for task, by_k in tasks.items():
                cells = "  ".join(f"{k}: {v['accuracy']:.1f}->{v['accuracy_prior_divided']:.1f} (top {v['top_share']:.2f})"
                                  for k, v in by_k.items())
                print(f"{fold:10} {system:26} {task:16} {cells}")


if __name__ == "__main__":
    main()
