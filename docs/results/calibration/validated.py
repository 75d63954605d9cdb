"""What `meta-train --valid-calibrate` would have chosen for starts meta-trained without it: each
start is adapted with its own recipe for k = 1 and 5 shots on the shots meta-validation draws, and
its validation choice tasks are scored with and without content-free calibration, as the
Validator scores them (evaluation/validate.py; the first 32 valid rows, accuracy). The validation
tasks that generate score the same both ways, so the choice tasks alone decide. Writes OUT.json
after each start and skips the starts it holds.

    python docs/results/calibration/validated.py OUT.json START_FOLDER... [--tasks mime-kind,mime-type]
"""
import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import mlx_reptilora  # noqa: F401  first: it preloads OpenBLAS before MLX loads

from mlx_reptilora.evaluation.validate import Validator
from mlx_reptilora.meta import recipe as recipes, start as starts
from mlx_reptilora.meta.adaptation import adapt
from mlx_reptilora.meta.config import MetaTrainConfig
from mlx_reptilora.model import models


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("starts", nargs="+", type=Path)
    ap.add_argument("--tasks", default="mime-kind,mime-type")
    args = ap.parse_args()
    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    cfg = MetaTrainConfig(tasks=["aclsum-title"], valid_tasks=args.tasks.split(","), valid_shots=[1, 5],
                          valid_calibrate=True, max_length=512)
    for folder in args.starts:
        label = folder.parent.name
        if label in out:
            continue
        base = models.load(None, None, None, verbose=False)  # a fresh model: a start's LoRA attaches once
        start = starts.read(folder)
        start.attach(base.model, str(folder))
        v = Validator(cfg, SimpleNamespace(base=base, inner=SimpleNamespace(cfg=SimpleNamespace(micro_batch=4))))
        out[label] = {}
        for k in cfg.valid_shots:
            recipe = recipes.read(folder, shots=k)
            cells = {}
            for name, d in v.data.items():
                adapt(start, v._loop(recipe), d["shots"][k], recipe)
                cells[name] = v.score(d)
            raw = sum(c["score"] for c in cells.values()) / len(cells)
            cal = sum(c["calibrated"] for c in cells.values()) / len(cells)
            out[label][str(k)] = {"recipe": recipe.describe(), "tasks": cells, "score": round(raw, 3),
                                  "calibrated": round(cal, 3), "chooses": "content-free" if cal > raw else "none"}
            print(label, k, out[label][str(k)], flush=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1) + "\n")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
