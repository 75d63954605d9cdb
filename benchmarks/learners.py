"""Episode time and peak memory of each meta-learner and MAML++ option against Reptile's, and MAML's
as T grows.

    python -m benchmarks.learners [--shape smollm2-135m|llama2-7b|tiny] [--support 8] [--query 8]
                                  [--length 512] [--steps 7] [--sweep 1,2,4,8] [--out DIR]

One process, one model, one random meta-batch of one task (support and query rows of --length
tokens, the loss on their last quarter), dropout 0.1, micro-batches of the whole support set. Each
learner runs the same episode: warm-up (its compiled pieces trace and build their kernels), then
the median of --repeats episodes, and the peak memory of one episode. The sweep repeats MAML (second
order) and FOMAML at T = 1, 2, 4, ... inner steps. Writes learners.json and learners.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from benchmarks.runner import median_time, mlx_model, one_line, random_rows, release_mlx, token_range, \
    with_peak_memory

LEARNERS = (("reptile", {}), ("fomaml", {}), ("maml (first order)", {"learner": "maml", "first_order": True}),
            ("maml", {}), ("meta-sgd", {}), ("maml --lslr", {"learner": "maml", "lslr": True}),
            ("maml --multi-step-loss", {"learner": "maml", "multi_step_loss": 100}),
            ("meta-sgd --first-order", {"learner": "meta-sgd", "first_order": True}))


def measure(model, make_cfg, rows, query, steps: int, name: str, settings: dict, repeats: int,
            label: str | None = None) -> dict:
    import mlx.core as mx

    from mlx_reptilora.data import episodes
    from mlx_reptilora.meta import train
    from mlx_reptilora.meta.inner_loop import InnerLoop

    cfg = make_cfg(**{"learner": name, **settings, "inner_steps": steps})
    label = label or name
    learner = train.make_learner(cfg)
    inner = InnerLoop(model, cfg.inner(), [rows[0].ids.size])
    params = learner.init(inner.weights())
    episode = episodes.Episode(0, "random", rows, query)

    def run():
        mx.eval(learner.step(params, [episode], inner, 0).params)

    row = {"learner": label, "steps": steps, "inner_optimizer": cfg.inner_optimizer}
    try:
        t = time.perf_counter()
        run()
        row["first_episode_s"] = time.perf_counter() - t
        row["episode_s"] = median_time(run, repeats, warmup=0)
        _, row["peak_gb"] = with_peak_memory(run)
        row["tokens"] = learner.tokens(episode)
        row["tok_s"] = row["tokens"] / row["episode_s"]
    except Exception as e:  # an out-of-memory MAML at large T is a result, not a crash
        row["failed"] = one_line(e)
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="smollm2-135m", help="smollm2-135m | llama2-7b | tiny")
    ap.add_argument("--model", default=None, help="GGUF or folder of the bundled model (its tokenizer for the others)")
    ap.add_argument("--support", type=int, default=8)
    ap.add_argument("--query", type=int, default=8)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--steps", type=int, default=7, help="T of the learner comparison (the paper's 7)")
    ap.add_argument("--sweep", default="1,2,4,8", help="T values of the MAML / FOMAML sweep")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated rows to measure (reptile, the ratios' base, always)")
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args(argv)
    only = {x for x in args.only.split(",") if x}

    import mlx_reptilora  # noqa: F401 -- OpenBLAS before mlx.core

    from mlx_reptilora.meta import train
    from mlx_reptilora.model import adapters, backend

    model, tokenizer, shape_cfg = mlx_model(args.shape, "float", args.model)
    adapters.attach(model, adapters.LoraConfig())
    vocab = token_range(tokenizer, shape_cfg)
    rows = random_rows(args.support, args.length, vocab, 0)
    query = random_rows(args.query, args.length, vocab, 1)

    def make_cfg(**kw):
        return train.MetaTrainConfig(micro_batch=max(args.support, args.query), **kw)

    results = []
    for name, settings in LEARNERS:
        if only and name != "reptile" and name not in only:
            continue
        settings = dict(settings)
        learner = settings.pop("learner", name)
        results.append(measure(model, make_cfg, rows, query, args.steps, learner, settings, args.repeats, name))
        print(json.dumps(results[-1]), flush=True)
        release_mlx()
    sweep = []
    for steps in [int(s) for s in args.sweep.split(",") if s]:
        for learner in ("fomaml", "maml"):
            sweep.append(measure(model, make_cfg, rows, query, steps, learner, {}, args.repeats))
            print(json.dumps(sweep[-1]), flush=True)
            release_mlx()
    out = {"machine": platform.machine(), **backend.describe(), "date": time.strftime("%Y-%m-%d"),
           "shape": args.shape, "support": args.support, "query": args.query, "length": args.length,
           "steps": args.steps, "learners": results, "sweep": sweep}
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"learners-{args.shape}.json").write_text(json.dumps(out, indent=2))
    (folder / f"learners-{args.shape}.md").write_text(markdown(out))
    print(markdown(out))
    return out


def _cells(row: dict, reptile: dict | None) -> str:
    if "failed" in row:
        return f"failed: {row['failed']} | | | |"  # the five columns after T
    ratio = f"{row['episode_s'] / reptile['episode_s']:.2f}x" if reptile and "episode_s" in reptile else "–"
    mem = f"{row['peak_gb'] / reptile['peak_gb']:.2f}x" if reptile and "peak_gb" in reptile else "–"
    return f"{row['episode_s']:.3f} | {ratio} | {row['peak_gb']:.2f} | {mem} | {row['tok_s']:,.0f}"


def markdown(out: dict) -> str:
    reptile = next((r for r in out["learners"] if r["learner"] == "reptile" and "failed" not in r), None)
    lines = [f"{out['shape']}, {out['backend']} ({out['device']}), {out['compute_dtype']}, meta-batch 1, support "
             f"{out['support']} x {out['length']}, query {out['query']} x {out['length']}, {out['date']}", "",
             "| learner | T | episode s | vs Reptile | peak GB | vs Reptile | tok/s |", "|" + " --- |" * 7]
    for r in out["learners"]:
        lines.append(f"| {r['learner']} | {r['steps']} | {_cells(r, reptile)} |")
    lines += ["", "| learner | T | episode s | peak GB | tok/s |", "|" + " --- |" * 5]
    for r in out["sweep"]:
        cells = (f"failed: {r['failed']} | | |" if "failed" in r
                 else f"{r['episode_s']:.3f} | {r['peak_gb']:.2f} | {r['tok_s']:,.0f}")
        lines.append(f"| {r['learner']} | {r['steps']} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
