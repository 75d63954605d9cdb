"""Where a LoRA inner step's time and memory go: the same step and batch, one change at a time.

    python -m benchmarks.step_breakdown [--shape llama2-7b] [--batch 4] [--length 512] [--out DIR]

Variants, each in the same process on the same random batch, after warm-up:
  ours               InnerLoop.step as meta-train runs it (dropout 0.1, fp32 adapters, clip 0.5)
  grad only          the compiled loss + gradient alone (no clip, no AdamW, no host sync between)
  no dropout         dropout 0
  bf16 adapters      the adapters in the base's compute dtype (mlx-lm draws A in fp32 whatever the
                     base: this measures what the fp32 LoRA branch costs)
  grad checkpoint    --grad-checkpoint: each layer's activations recomputed in backward
  mlx-lm stock       mlx_lm.tuner's compiled step: full-sequence loss, dropout 0, no clipping
It answers issue #7's "why": how far the step is from the matmul peak and PyTorch's memory, and what
each piece costs. Writes breakdown.json and breakdown.md.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks.runner import flops_per_token, median_time, mlx_matmul_peak, mlx_model, one_line, random_rows, \
    release_mlx, token_range, with_peak_memory


def measure(name: str, shape: str, args, *, dropout=0.1, adapter_dtype=None, checkpoint=False, grad_only=False,
            stock=False) -> dict:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_map
    from mlx_lm.tuner import trainer

    from mlx_reptilora.model import adapters
    from mlx_reptilora.meta.inner_loop import InnerConfig, InnerLoop
    from mlx_reptilora.meta.losses import batch_arrays

    model, tokenizer, cfg = mlx_model(shape, "float", args.model)
    adapters.attach(model, adapters.LoraConfig(dropout=dropout))
    if adapter_dtype is not None:
        model.update(tree_map(lambda p: p.astype(adapter_dtype), model.trainable_parameters()))
    rows = random_rows(args.batch, args.length, token_range(tokenizer, cfg), 0)
    if stock:
        import mlx.optimizers as optim

        opt = optim.AdamW(learning_rate=5e-4)
        model.train()
        state = [model.state, opt.state, mx.random.state]
        loss_and_grad = nn.value_and_grad(model, trainer.default_loss)
        ids = mx.array(np.stack([r.ids for r in rows]))
        lengths = mx.array([[0, args.length - 1]] * args.batch)

        @partial(mx.compile, inputs=state, outputs=state)
        def stock_step(batch, lens):
            (loss, _), grads = loss_and_grad(model, batch, lens)
            opt.update(model, grads)
            return loss

        def step():
            mx.eval(stock_step(ids, lengths), state)
    else:
        inner = InnerLoop(model, InnerConfig(micro_batch=args.batch, grad_checkpoint=checkpoint), [args.length])
        batches = inner.batches(rows)
        if grad_only:
            arrays = batch_arrays(batches[0])

            def step():
                mx.eval(inner._grad(*arrays))
        else:
            def step():
                inner.step(batches)

    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    s, peak = with_peak_memory(lambda: median_time(step, args.repeats))
    tokens = args.batch * args.length
    return {"variant": name, "step_s": s, "tok_s": tokens / s, "peak_gb": peak, "first_step_s": first,
            "utilisation": tokens * flops_per_token(cfg) / s / args.peak_flops}


VARIANTS = {
    "ours": {},
    "grad only": {"grad_only": True},
    "no dropout": {"dropout": 0.0},
    "bf16 adapters": {"adapter_dtype": "compute"},
    "grad checkpoint": {"checkpoint": True},
    "mlx-lm stock": {"stock": True, "dropout": 0.0},
}


def markdown(res: dict) -> str:
    lines = [f"{res['device']}, {res['shape']}, batch {res['batch']} x {res['length']}, medians of {res['repeats']}; "
             f"matmul peak {res['peak_tflops']:.3g} TFLOP/s", "",
             "| variant | s / step | tok/s | vs ours | utilisation | peak GB | first step s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    base = res["rows"][0]["step_s"]
    for r in res["rows"]:
        if "failed" in r:
            lines.append(f"| {r['variant']} | {r['failed']} | | | | | |")
            continue
        lines.append(f"| {r['variant']} | {r['step_s']:.4f} | {r['tok_s']:,.0f} | {base / r['step_s']:.2f}x | "
                     f"{r['utilisation']:.1%} | {r['peak_gb']:.1f} | {r['first_step_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama2-7b")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--model", help="the bundled model's GGUF (for its tokenizer, and the smollm2 shape)")
    ap.add_argument("--out", default="benchmarks/out/breakdown")
    args = ap.parse_args(argv)

    import mlx_reptilora  # noqa: F401 -- BLAS before mlx.core
    from mlx_reptilora.model import backend
    from benchmarks.runner import device_name

    peak = mlx_matmul_peak(8192 if backend.backend_name() != "cpu" else 1024, args.repeats)
    args.peak_flops = peak["tflops"] * 1e12
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"device": device_name(backend.backend_name()), "date": time.strftime("%Y-%m-%d"), "shape": args.shape,
           "batch": args.batch, "length": args.length, "repeats": args.repeats, "peak_tflops": peak["tflops"],
           "backend": backend.describe(), "rows": []}
    for name in args.variants.split(","):
        opts = dict(VARIANTS[name])
        if opts.get("adapter_dtype") == "compute":
            opts["adapter_dtype"] = backend.compute_dtype()
        try:
            row = measure(name, args.shape, args, **opts)
        except Exception as e:  # e.g. out of memory: keep the other variants
            row = {"variant": name, "failed": one_line(e)}
        release_mlx()
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
        (out / "breakdown.json").write_text(json.dumps(res, indent=2))
        (out / "breakdown.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
