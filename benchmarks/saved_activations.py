"""What a LoRA step keeps for its backward, per transformer layer: MLX against PyTorch + PEFT, on a CPU.

    python -m benchmarks.saved_activations [--scale 4] [--length 512] [--out DIR]

The Llama-2-7B geometry divided by --scale (hidden 4096 / scale, MLP 11008 / scale, heads of 128),
bf16 weights, LoRA on q/v (r 16, dropout 0.1, fp32 adapters), one row of --length tokens, the loss
on its last quarter. A model of 1 and of 3 layers is run, and the difference / 2 is one layer:
- MLX: the peak memory of the gradient above what the model holds (MLX's CPU backend evaluates in
  order, so this is the saved set plus a layer's transients, not GPU queueing);
- PyTorch: the bytes of the tensors autograd saves (torch.autograd.graph.saved_tensors_hooks).
Each is then scaled to the 7B step (x scale for the width, x 4 x 512 / --length for the tokens,
x 32 layers). Attention here is the CPU's (the scores are kept); on CUDA the fused backward keeps
only its output and statistics. It answers issue #18's "where do the extra GB go": the MLX variants
change one thing each (dropout off, bf16 adapters, SwiGLU recomputed, the LoRA branch in the base's
dtype, the LoRA branch fused), the last three as meta-train's --recompute-swiglu, --lora-dtype base
and --fused-lora compute them.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.runner import SHAPES

VARIANTS = {"ours": {}, "no dropout": {"dropout": 0.0}, "bf16 adapters": {"bf16_adapters": True},
            "swiglu recompute": {"recompute_swiglu": True}, "lora in base dtype": {"lora_dtype": "base"},
            "swiglu recompute + lora in base dtype": {"recompute_swiglu": True, "lora_dtype": "base"},
            "fused lora": {"fused_lora": True}, "fused lora in base dtype": {"fused_lora": True, "lora_dtype": "base"},
            "swiglu recompute + fused lora": {"recompute_swiglu": True, "fused_lora": True}}


def geometry(scale: int, layers: int) -> dict:
    g = dict(SHAPES["llama2-7b"])
    heads = g["num_attention_heads"] // scale
    return {**g, "hidden_size": g["hidden_size"] // scale, "intermediate_size": g["intermediate_size"] // scale,
            "num_attention_heads": heads, "num_key_value_heads": heads, "num_hidden_layers": layers,
            "vocab_size": 1024}


def mlx_bytes(cfg: dict, length: int, dropout=0.1, bf16_adapters=False, lora_dtype="float32",
              recompute_swiglu=False, fused_lora=False, repeats=5) -> int:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_map
    from mlx_lm.models import llama

    from mlx_reptilora.meta.losses import summed_loss
    from mlx_reptilora.model import activations, adapters

    model = llama.Model(llama.ModelArgs.from_dict({"model_type": "llama", **cfg}))
    model.set_dtype(mx.bfloat16)
    model.freeze()
    adapters.attach(model, adapters.LoraConfig(dropout=dropout))
    if bf16_adapters:
        model.update(tree_map(lambda p: p.astype(mx.bfloat16), model.trainable_parameters()))
    model.train()
    mx.eval(model.parameters())
    n = length // 4
    tokens = mx.array(np.random.default_rng(0).integers(3, 1000, (1, length)).astype(np.int32))
    arrays = (tokens, mx.arange(length - n, length), mx.ones(n, dtype=mx.int32), mx.ones(n))
    grad = nn.value_and_grad(model, lambda m: summed_loss(m, *arrays))
    with activations.keep_less(model, lora_dtype, recompute_swiglu, fused_lora):
        mx.eval(grad(model))  # warm-up
        # The CPU backend runs ops on its own thread; under load the caller runs ahead and more buffers are live
        # at once. A memory limit makes it wait for the queue after each op, and the least of a few runs is the
        # in-order peak.
        limit = mx.set_memory_limit(1)
        peaks = []
        for _ in range(repeats):
            gc.collect()
            mx.clear_cache()
            mx.reset_peak_memory()
            held = mx.get_active_memory()
            mx.eval(grad(model))
            peaks.append(mx.get_peak_memory() - held)
        mx.set_memory_limit(limit)
    return min(peaks)


def torch_bytes(cfg: dict, length: int) -> int:
    import peft
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation="sdpa")).to(torch.bfloat16)
    model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1,
                                                       target_modules=["q_proj", "v_proj"]))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # fp32 adapters, as the runner's PyTorch side
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    n = length // 4
    ids = torch.randint(3, 1000, (1, length))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hidden = model.base_model.model.model(ids).last_hidden_state[:, -n:]
        logits = model.base_model.model.lm_head(hidden).float().flatten(0, 1)
        torch.nn.functional.cross_entropy(logits, torch.ones(n, dtype=torch.long))
    return sum(saved.values())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=4, help="divide the 7B width by this (1: the full width)")
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", default="benchmarks/out/saved-activations")
    args = ap.parse_args(argv)

    import mlx_reptilora  # noqa: F401 -- BLAS before mlx.core
    import mlx.core as mx

    mx.set_default_device(mx.cpu)
    to_7b = args.scale * (4 * 512 / args.length) * SHAPES["llama2-7b"]["num_hidden_layers"] / 1e9
    per_layer = {}
    for name, opts in VARIANTS.items():
        one, three = (mlx_bytes(geometry(args.scale, n), args.length, **opts) for n in (1, 3))
        per_layer[f"MLX: {name}"] = (three - one) / 2
        print(name, per_layer[f"MLX: {name}"], flush=True)
    if args.torch:
        one, three = (torch_bytes(geometry(args.scale, n), args.length) for n in (1, 3))
        per_layer["PyTorch + PEFT"] = (three - one) / 2
    lines = [f"{time.strftime('%Y-%m-%d')}, MLX {mx.__version__} CPU; Llama-2-7B / {args.scale} wide, 1 x {args.length} "
             f"tokens", "", "| what | MB a layer here | GB at 7B, 4 x 512, 32 layers |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v / 1e6:.1f} | {v * to_7b:.2f} |" for k, v in per_layer.items()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "saved_activations.json").write_text(json.dumps({"scale": args.scale, "length": args.length,
                                                             "bytes_per_layer": per_layer}, indent=2))
    (out / "saved_activations.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
