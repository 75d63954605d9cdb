"""Which SGD learning rate matches the paper's AdamW (lr 5e-4) over T inner steps: the default for
MAML's differentiable SGD steps. Bundled SmolLM2, the standard LoRA start (dropout off), 8 support
and 16 query examples per task, T = 7, one micro-batch.

    python benchmarks/inner_lr.py [--tasks aclsum-title,pydoc] [--lrs 0.03,0.1,0.3,1.0]
"""

import argparse

import mlx_reptilora  # noqa: F401 -- OpenBLAS before mlx.core

from mlx_reptilora.data import episodes, prompts, tasks
from mlx_reptilora.meta.inner_loop import InnerConfig, InnerLoop
from mlx_reptilora.model import adapters, models


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="aclsum-title,pydoc")
    ap.add_argument("--lrs", default="0.03,0.1,0.3,1.0")
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--max-length", type=int, default=256)
    args = ap.parse_args()
    base = models.load(None, verbose=False)
    adapters.attach(base.model, adapters.LoraConfig(dropout=0.0))
    theta = adapters.get_weights(base.model)  # the standard start, for every run
    fmt = prompts.PromptFormat.for_tokenizer(base.tokenizer)
    print("| task | inner optimizer | lr | support loss, step 1 -> 7 | query loss, before -> after |")
    print("| --- | --- | ---: | --- | --- |")
    for task in args.tasks.split(","):
        ex = [e for e in prompts.tokenize(fmt, base.tokenizer, tasks.load(task).splits["train"][:24], args.max_length) if e]
        support, query = ex[:8], ex[8:24]
        runs = [("adamw", 5e-4)] + [("sgd", float(x)) for x in args.lrs.split(",")]
        for opt, lr in runs:
            cfg = InnerConfig(steps=args.steps, lr=lr, optimizer=opt, grad_clip=0.5 if opt == "adamw" else 0.0,
                              micro_batch=len(support))
            inner = InnerLoop(base.model, cfg, episodes.buckets(args.max_length))
            inner.set_weights(theta)
            before = inner.loss(query)
            losses = inner.adapt(support)
            after = inner.loss(query)
            print(f"| {task} | {opt} | {lr:g} | {losses[0]:.3f} -> {losses[-1]:.3f} | {before:.3f} -> {after:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
