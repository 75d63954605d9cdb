"""How far k-shot adaptation moves each LoRA factor: the scale --abmll-sigma's default is read from.

    python -m benchmarks.lora_displacement [--tasks pydoc,aclsum-title] [--shots 8] [--steps 7] [--lr 0.1]

On the bundled SmolLM2-135M-Instruct, from the standard start (A random, B = 0, r 16, dropout off),
plain SGD steps on k training shots of each task; prints the RMS of φ − θ over every lora_a and
every lora_b tensor, and each step's loss. Training tasks only.
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="pydoc,aclsum-title")
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--lr", type=float, default=0.1)
    args = ap.parse_args(argv)

    import mlx_reptilora  # noqa: F401 -- BLAS before mlx.core
    from mlx_reptilora.data import episodes, tasks
    from mlx_reptilora.meta.inner_loop import InnerConfig, InnerLoop
    from mlx_reptilora.model import adapters, models

    base = models.load(None, verbose=False)
    adapters.attach(base.model, adapters.LoraConfig(dropout=0.0), seed=0)
    theta = adapters.get_weights(base.model)
    for name in args.tasks.split(","):
        train = episodes.prepare(tasks.load(name), base.tokenizer, None, 256, ("train",)).splits["train"]
        shots = episodes.draw_shots(train, args.shots, 0, name)
        inner = InnerLoop(base.model, InnerConfig(micro_batch=4, optimizer="sgd", lr=args.lr, grad_clip=0.0),
                          [64, 128, 256])
        path = inner.sgd_steps(theta, shots, lambda t: args.lr, args.steps)
        for part in ("lora_a", "lora_b"):
            sq = [float(((path.final[k] - theta[k]) ** 2).mean()) for k in theta if k.endswith(part)]
            print(f"{name} {part}: RMS of phi - theta {np.sqrt(np.mean(sq)):.2e}")
        print(f"{name} losses: {', '.join(f'{x:.3f}' for x in path.losses)}")


if __name__ == "__main__":
    main()
