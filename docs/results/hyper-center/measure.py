"""How much of --learner hyper's task embedding differs between tasks (docs/RESULTS.md, "The task
embedding, centered"): the 61-task pool of scripts/experiment.py's task-starts plan, 2 draws of 5
training shots per task (the plan's support) at max length 512, through the bundled model. Splits
the mean square of z, of W z and of the generator's tanh features at init into what every task
shares, what differs between tasks and what differs between draws of one task's shots; uncentered
(z as before the centering) and centered by the pool's mean.

    python docs/results/hyper-center/measure.py      # ~6 minutes on 2 CPU cores; writes shares.json
"""
import json
import sys
from pathlib import Path

import mlx_reptilora  # noqa: F401  first: it preloads OpenBLAS before MLX loads
import mlx.core as mx
import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts"))
from experiment import POOL_61  # noqa: E402

from mlx_reptilora.data import episodes, tasks  # noqa: E402
from mlx_reptilora.meta import hyper  # noqa: E402
from mlx_reptilora.meta.inner_config import InnerConfig, bucket_lengths  # noqa: E402
from mlx_reptilora.meta.inner_loop import InnerLoop  # noqa: E402
from mlx_reptilora.model import adapters, models  # noqa: E402

SHOTS, DRAWS, LENGTH, WIDTH = 5, 2, 512, 64


def shares(x: np.ndarray) -> dict:
    """x: (tasks, draws, dim) -> shares of its mean square: common to all, between tasks, within a task."""
    total = (x ** 2).sum(-1).mean()
    mu, per_task = x.mean((0, 1)), x.mean(1)
    unit = per_task / np.linalg.norm(per_task, axis=1, keepdims=True)
    cos = unit @ unit.T
    return {"common": float((mu ** 2).sum() / total),
            "between tasks": float(((per_task - mu) ** 2).sum(-1).mean() / total),
            "within a task": float(((x - per_task[:, None]) ** 2).sum(-1).mean() / total),
            "mean cosine between tasks": float(cos[~np.eye(len(cos), dtype=bool)].mean())}


def generator_inputs(z: np.ndarray, hidden: int) -> dict:
    """z, W z and tanh(W z + e_layer + e_kind) of a generator at init (one layer, one kind)."""
    theta = {"model.layers.0.self_attn.q_proj.lora_a": mx.zeros((hidden, 16))}
    gen = hyper.init(theta, hidden, WIDTH, mx.random.key(0))
    w = np.array(gen["w"])
    e = np.array(gen["layer"]["0"]) + np.array(gen["kind"]["self_attn.q_proj.lora_a"])
    return {"z": z, "W z": z @ w, "tanh(W z + e)": np.tanh(z @ w + e)}


def main():
    base = models.load(None)
    adapters.attach(base.model, adapters.LoraConfig())
    inner = InnerLoop(base.model, InnerConfig(micro_batch=SHOTS), bucket_lengths(LENGTH))
    rng = np.random.default_rng(0)
    z = []
    for name in POOL_61:
        train = episodes.prepare(tasks.load(name), base.tokenizer, None, LENGTH, ("train",)).splits["train"]
        draws = [rng.choice(len(train), SHOTS, replace=False) for _ in range(DRAWS)]
        z.append([np.array(hyper.embed({}, inner.pooled([train[i] for i in d]))) for d in draws])  # uncentered
        print(name, flush=True)
    z = np.array(z)
    centered = z - z.mean((0, 1))
    centered /= np.sqrt((centered ** 2).mean(-1, keepdims=True) + 1e-6)
    hidden = z.shape[-1]
    out = {"tasks": len(POOL_61), "draws": DRAWS, "shots": SHOTS, "max_length": LENGTH, "width": WIDTH,
           "uncentered": {k: shares(v) for k, v in generator_inputs(z, hidden).items()},
           "centered": {k: shares(v) for k, v in generator_inputs(centered, hidden).items()}}
    (Path(__file__).parent / "shares.json").write_text(json.dumps(out, indent=1) + "\n")
    for kind in ("uncentered", "centered"):
        for what, s in out[kind].items():
            print(f"{kind:<10} {what:<14} " + "  ".join(f"{k} {v:.3f}" for k, v in s.items()))


if __name__ == "__main__":
    main()
