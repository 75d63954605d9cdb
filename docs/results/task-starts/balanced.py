"""What `meta-train --valid-choice-score balanced` would have chosen for starts meta-validated on
accuracy: at the θ each start kept, every grid point its meta-validation tried (the keys of its
record in metrics.jsonl) is adapted again on the same validation shots, and the choice tasks'
valid rows are scored both ways (accuracy, to check against the record, and balanced accuracy:
one answer for every row scores chance). The generation tasks' scores are the record's. Each shot
count's choice is then made as the Validator makes it (validate.choose: the best mean over the
validation tasks, ties to the lower mean loss). The kept θ is the record's; balanced scoring could
also have kept another episode, which this does not redo. Writes OUT.json after each start and
skips the starts it holds.

    python docs/results/task-starts/balanced.py OUT.json RESULTS_DIR START_FOLDER... [--shots 1]

RESULTS_DIR holds the lease's meta/<learner>/<fold>/metrics.jsonl (results.tar.*); a START_FOLDER is
meta/<learner>/<fold> of the lease's starts.
"""
import argparse
import json
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import mlx_reptilora  # noqa: F401  first: it preloads OpenBLAS before MLX loads

from mlx_reptilora.evaluation import evaluate, metrics
from mlx_reptilora.evaluation.validate import Validator, choose, key as key_of
from mlx_reptilora.meta import recipe as recipes, start as starts
from mlx_reptilora.meta.adaptation import adapt
from mlx_reptilora.meta.config import MetaTrainConfig
from mlx_reptilora.model import models


def point(recipe: recipes.Recipe, key: str) -> recipes.Recipe:
    """The grid point a validation record's key names, around a start's recipe."""
    if key == "0 steps":
        return replace(recipe, steps=0, auto=False)
    steps, lr = re.fullmatch(r"(\d+) steps, (rates x|lr )(.+)", key).group(1, 3)
    return replace(recipe, steps=int(steps), **({"scale": float(lr)} if recipe.learned_lr else {"lr": float(lr)}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("results", type=Path)
    ap.add_argument("starts", nargs="+", type=Path)
    ap.add_argument("--shots", default=None, help="only these validated shot counts, e.g. 1 (default: all)")
    args = ap.parse_args()
    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    for folder in args.starts:
        label, fold = folder.parent.name, folder.name
        if label in out:
            continue
        records = [json.loads(x) for x in (args.results / "meta" / label / fold / "metrics.jsonl").read_text().splitlines()]
        kept = [r for r in records if "valid" in r and r.get("best")][-1]
        names = list(kept["valid"])
        shots = args.shots.split(",") if args.shots else kept["valid"][names[0]]
        cfg = MetaTrainConfig(tasks=["aclsum-title"], valid_tasks=[n for n, m in kept["metrics"].items() if m == "accuracy"],
                              valid_shots=[int(k) for k in shots], max_length=512)
        base = models.load(None, None, None, verbose=False)  # a fresh model: a start's LoRA attaches once
        start = starts.read(folder)
        start.attach(base.model, str(folder))
        v = Validator(cfg, SimpleNamespace(base=base, inner=SimpleNamespace(cfg=SimpleNamespace(micro_batch=4))))
        counts = [str(k) for k in cfg.valid_shots]
        valid = {n: {k: g for k, g in d.items() if k in counts} for n, d in kept["valid"].items()}
        results = {"accuracy": json.loads(json.dumps(valid)), "balanced": json.loads(json.dumps(valid))}
        check = []
        for k in cfg.valid_shots:
            recipe = recipes.read(folder, shots=k)
            for key in kept["valid"][names[0]][str(k)]:
                r = point(recipe, key)
                for name, d in v.data.items():
                    adapt(start, v._loop(r), d["shots"][k], r)
                    ecfg = evaluate.EvalConfig(task=name, batch_size=32, max_length=512, calibrate="none")
                    rows, _ = evaluate.records(base, d["task"], d["valid"], ecfg)
                    acc = metrics.headline("accuracy", metrics.score("accuracy", rows))  # as the Validator
                    bal = 100 * metrics.balanced_accuracy(rows)
                    recorded = kept["valid"][name][str(k)][key]["score"]
                    results["accuracy"][name][str(k)][key]["score"] = round(acc, 3)
                    results["balanced"][name][str(k)][key]["score"] = round(bal, 3)
                    check.append(abs(acc - recorded))
                    print(label, k, key, name, f"accuracy {acc:.2f} (recorded {recorded}), balanced {bal:.2f}", flush=True)
        points = {key: point(recipes.read(folder, shots=int(counts[0])), key) for key in valid[names[0]][counts[0]]}
        out[label] = {"episode": kept["episode"], "most_accuracy_differs": round(max(check), 2)}
        for how in ("accuracy", "balanced"):
            chosen = choose(results[how], points, counts, f"episode {kept['episode'] + 1}")
            out[label][how] = {k: {"chooses": key_of(recipes.Recipe(**r)), "means": chosen["means"][k],
                                   "choice tasks": {n: results[how][n][k] for n in cfg.valid_tasks}}
                               for k, r in chosen["recipe"]["by_shots"].items()}
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1) + "\n")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
