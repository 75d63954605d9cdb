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
  memory limit       mx.set_memory_limit(--memory-limit-gb): on CUDA the peak counts buffers that
                     queued kernels still hold; past the limit, evaluation waits for them to finish
  ... at need        the limit derived from the step: its first step runs under a limit at the memory
                     already held, and its peak (need_gb), times the headroom xH, limits the steps after it
  swiglu recompute   --recompute-swiglu: silu(gate) * up inside mx.checkpoint, only gate and up kept
  lora in base dtype --lora-dtype base: the LoRA branch in bf16 (as PyTorch's autocast), fp32 adapters
  fused lora         --fused-lora: the LoRA branch's backward draws the dropout mask again from a key
                     (model/kernels.py) instead of keeping it and the dropped input
  4bit, 4bit dense   a 4-bit base through the quantized matmul kernel / weights dequantized just in
                     time (--quantized-matmul dense); "limited": with the memory limit too
  library defaults   InnerConfig's own defaults on this device (--memory-limit, --recompute-swiglu,
                     --lora-dtype and --quantized-matmul auto), which the other variants set explicitly
--profile N records each variant's GPU kernels over N steps (benchmarks/kernel_profile.py).
--torch adds PyTorch + PEFT's step on the same batch (the runner's child process), so every
variant is compared with it in one run. It answers issue #7's "why": how far the step is from the matmul peak and PyTorch's memory, and what
each piece costs. Writes breakdown.json and breakdown.md.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks.runner import flops_per_token, median_time, mlx_matmul_peak, mlx_model, one_line, quantized_matmul, \
    random_rows, release_mlx, token_range, with_peak_memory


@contextmanager
def memory_limit(gb: float | None):
    import mlx.core as mx

    if gb is None:
        yield
        return
    old = mx.set_memory_limit(int(gb * 1e9))
    try:
        yield
    finally:
        mx.set_memory_limit(old)


def measure(name: str, shape: str, args, **opts) -> dict:
    limit = opts.pop("memory_limit", False)
    headroom = opts.pop("headroom", 1.0)
    # "need": the limit a default could derive, the first step's peak under a limit at what is held
    # (set in _measure; the context puts the current limit back after)
    import mlx.core as mx

    from mlx_reptilora.model import memory as library_memory

    try:
        with memory_limit(mx.get_memory_limit() / 1e9 if limit == "need" else args.memory_limit_gb if limit else None):
            return _measure(name, shape, args, at_need=headroom if limit == "need" else 0.0, **opts)
    finally:
        library_memory.release_limit()  # a library-defaults variant's derived limit ends with it


def _measure(name: str, shape: str, args, *, dropout=0.1, adapter_dtype=None, checkpoint=False, grad_only=False,
             stock=False, precision="float", lora_dtype="float32", recompute_swiglu=False, fused_lora=False,
             at_need=0.0, defaults=False) -> dict:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_map
    from mlx_lm.tuner import trainer

    from mlx_reptilora.model import adapters, memory
    from mlx_reptilora.meta.inner_loop import InnerConfig, InnerLoop
    from mlx_reptilora.meta.losses import batch_arrays

    model, tokenizer, cfg = mlx_model(shape, precision, args.model)
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
        named = {} if defaults else {"quantized_matmul": quantized_matmul(precision), "memory_limit": "none",
                                     "recompute_swiglu": recompute_swiglu, "lora_dtype": lora_dtype}
        inner = InnerLoop(model, InnerConfig(micro_batch=args.batch, grad_checkpoint=checkpoint, fused_lora=fused_lora,
                                             **named), [args.length])
        batches = inner.batches(rows)
        if grad_only:
            arrays = batch_arrays(batches[0])

            def step():
                mx.eval(inner._grad(*arrays))
        else:
            def step():
                inner.step(batches)

    if at_need:  # evaluation waits for queued kernels from the first byte above what is held
        mx.set_memory_limit(mx.get_active_memory())
        mx.reset_peak_memory()
    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    need = mx.get_peak_memory() / 1e9 if at_need else None
    if at_need:
        mx.set_memory_limit(int(need * at_need * 1e9))
    if defaults and memory.derived_limit():  # the library's own rule derived it in the first step
        need = memory.derived_limit() / 1e9
    s, peak = with_peak_memory(lambda: median_time(step, args.repeats))
    tokens = args.batch * args.length
    row = {"variant": name, "step_s": s, "tok_s": tokens / s, "peak_gb": peak, "first_step_s": first,
           "utilisation": tokens * flops_per_token(cfg) / s / args.peak_flops, **({"need_gb": need} if need else {})}
    if args.profile:
        from benchmarks import kernel_profile

        row["kernels"] = kernel_profile.profile(step, args.profile)[:80]
    return row


VARIANTS = {
    "ours": {},
    "grad only": {"grad_only": True},
    "no dropout": {"dropout": 0.0},
    "bf16 adapters": {"adapter_dtype": "compute"},
    "grad checkpoint": {"checkpoint": True},
    "mlx-lm stock": {"stock": True, "dropout": 0.0},
    "memory limit": {"memory_limit": True},
    "swiglu recompute": {"recompute_swiglu": True},
    "memory limit + swiglu recompute": {"memory_limit": True, "recompute_swiglu": True},
    "lora in base dtype": {"lora_dtype": "base"},
    "memory limit + swiglu recompute + lora in base dtype": {"memory_limit": True, "recompute_swiglu": True,
                                                             "lora_dtype": "base"},
    "fused lora": {"fused_lora": True},
    "swiglu recompute + fused lora": {"recompute_swiglu": True, "fused_lora": True},
    "memory limit + swiglu recompute + fused lora": {"memory_limit": True, "recompute_swiglu": True, "fused_lora": True},
    "memory limit + lora in base dtype": {"memory_limit": True, "lora_dtype": "base"},
    "swiglu recompute + lora in base dtype": {"recompute_swiglu": True, "lora_dtype": "base"},
    "4bit dense limited + swiglu recompute + lora in base dtype": {"precision": "4bit-dense", "memory_limit": True,
                                                                   "recompute_swiglu": True, "lora_dtype": "base"},
    "memory limit at need + swiglu recompute + lora in base dtype": {"memory_limit": "need", "recompute_swiglu": True,
                                                                     "lora_dtype": "base"},
    "4bit dense at need + swiglu recompute + lora in base dtype": {"precision": "4bit-dense", "memory_limit": "need",
                                                                   "recompute_swiglu": True, "lora_dtype": "base"},
    **{f"4bit dense at need x{h} + swiglu recompute + lora in base dtype": {
        "precision": "4bit-dense", "memory_limit": "need", "headroom": h, "recompute_swiglu": True,
        "lora_dtype": "base"} for h in (1.1, 1.2, 1.3)},
    "4bit": {"precision": "4bit"},
    "4bit dense": {"precision": "4bit-dense"},
    "4bit dense limited": {"precision": "4bit-dense", "memory_limit": True},
    "library defaults": {"defaults": True},
    "4bit library defaults": {"precision": "4bit", "defaults": True},
}


def markdown(res: dict) -> str:
    lines = [f"{res['device']}, {res['shape']}, batch {res['batch']} x {res['length']}, medians of {res['repeats']}; "
             f"matmul peak {res['peak_tflops']:.3g} TFLOP/s; memory limit variants at {res['memory_limit_gb']:g} GB", "",
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
    ap.add_argument("--memory-limit-gb", type=float, default=24.0,
                    help="the memory limit variants' mx.set_memory_limit (24: below PyTorch + PEFT's 25.1 GB peak)")
    ap.add_argument("--model", help="the bundled model's GGUF (for its tokenizer, and the smollm2 shape)")
    ap.add_argument("--torch", action="store_true", help="add PyTorch + PEFT's step on the same batch (bf16 autocast)")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="also record each variant's GPU kernels over this many steps (CUPTI through PyTorch's "
                         "profiler; NVIDIA only): profile.md, and the 80 longest in breakdown.json")
    ap.add_argument("--out", default="benchmarks/out/breakdown")
    args = ap.parse_args(argv)
    if args.profile:
        from benchmarks import kernel_profile

        kernel_profile.check()

    import mlx_reptilora  # noqa: F401 -- BLAS before mlx.core
    from mlx_reptilora.model import backend
    from benchmarks.runner import device_name

    peak = mlx_matmul_peak(8192 if backend.backend_name() != "cpu" else 1024, args.repeats)
    args.peak_flops = peak["tflops"] * 1e12
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.md").unlink(missing_ok=True)  # this run's tables only
    res = {"device": device_name(backend.backend_name()), "date": time.strftime("%Y-%m-%d"), "shape": args.shape,
           "batch": args.batch, "length": args.length, "repeats": args.repeats, "peak_tflops": peak["tflops"],
           "memory_limit_gb": args.memory_limit_gb,
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
        print(json.dumps({k: v for k, v in row.items() if k != "kernels"}), flush=True)
        if "kernels" in row:
            from benchmarks import kernel_profile

            with open(out / "profile.md", "a") as f:
                f.write(kernel_profile.markdown(name, row["kernels"], row["step_s"]) + "\n")
        (out / "breakdown.json").write_text(json.dumps(res, indent=2))
        (out / "breakdown.md").write_text(markdown(res))
    if args.torch:
        res["rows"].append(torch_row(args, out))
        (out / "breakdown.json").write_text(json.dumps(res, indent=2))
        (out / "breakdown.md").write_text(markdown(res))
    print(markdown(res))


def torch_row(args, out: Path) -> dict:
    """The runner's PyTorch + PEFT step (its child process) on the same rows, as a variant row."""
    from benchmarks.runner import torch_shape, torch_side

    path, cfg = torch_shape(args.shape, args.model)  # as the runner passes it: no MLX model built here
    ns = argparse.Namespace(batch=args.batch, length=args.length, steps=7, repeats=args.repeats, gen_batch=1,
                            gen_tokens=1, no_full_ft=True, out=str(out))
    t = torch_side(ns, args.shape, "float", path, cfg["vocab_size"])
    if "step_s" not in t:
        return {"variant": "PyTorch + PEFT", "failed": t.get("failed") or t.get("skipped")}
    tokens = args.batch * args.length
    return {"variant": "PyTorch + PEFT", "step_s": t["step_s"], "tok_s": tokens / t["step_s"],
            "peak_gb": t["step_peak_gb"], "first_step_s": t["first_step_s"],
            "utilisation": tokens * flops_per_token(cfg) / t["step_s"] / args.peak_flops}


if __name__ == "__main__":
    main()
