"""The benchmark runner (issue #7): speed and memory of meta-training and adaptation, MLX side by side
with PyTorch + PEFT on the same device and the same token batches.

    python -m benchmarks [--quick] [--shapes smollm2-135m,llama2-7b] [--precisions float,4bit,4bit-dense]
                         [--batch B] [--length L] [--model GGUF|folder] [--out DIR]

For each model shape and base precision it measures, after warm-up, the median of --repeats runs of:
one inner step, one Reptile episode (meta overhead = episode / T inner steps), one k-shot
adaptation (a fresh optimizer + T steps on k examples) and batched greedy generation; the first
step's time (tracing + kernel compilation) separately; and, for the float base, one full
fine-tuning step of the same model (every weight trained, AdamW) — the paper's "meta-training at
~18% of the GPU time of full training". Utilisation counts 4 x the frozen linear parameters FLOPs
per trained token (forward + backward through the activations; the LM head only at the loss
positions) against the matmul peak this run measures (bf16 on a GPU, fp32 on a CPU).

"float" is the device's compute dtype (bf16 on a GPU, fp32 on a CPU: MLX's CPU bf16 matmul runs at
~5 GFLOP/s). Batches are random tokens; the loss covers the last quarter of each row (the summary).
Writes results.json, results.md and sweep.png into --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHAPES = {
    # The bundled model, real weights (its HF folder is converted from the GGUF).
    "smollm2-135m": None,
    # Llama-2-7B geometry, random weights: nothing to download.
    "llama2-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      intermediate_size=11008, vocab_size=32000, rms_norm_eps=1e-5, rope_theta=10000.0,
                      max_position_embeddings=4096, tie_word_embeddings=False),
    # Seconds-long quick mode (CI).
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=1024, rms_norm_eps=1e-5, rope_theta=10000.0,
                 max_position_embeddings=512, tie_word_embeddings=True),
}
TARGET_FRACTION = 4  # the loss covers the last 1/4 of each row
SHOTS = 5  # k of the k-shot adaptation


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def random_rows(n: int, length: int, vocab: int, seed: int):
    """Token rows with the loss on their last quarter, as prompts.Tokenized."""
    from mlx_reptilora.data.prompts import Tokenized

    rng = np.random.default_rng(seed)
    return [Tokenized(rng.integers(3, vocab, length).astype(np.int32), length - length // TARGET_FRACTION, False)
            for _ in range(n)]


def linear_params(shape_cfg: dict) -> tuple[int, int]:
    """(parameters of the transformer blocks' linear layers, parameters of the LM head)."""
    h, f, n = shape_cfg["hidden_size"], shape_cfg["intermediate_size"], shape_cfg["num_hidden_layers"]
    kv = h * shape_cfg["num_key_value_heads"] // shape_cfg["num_attention_heads"]
    return n * (2 * h * h + 2 * h * kv + 3 * h * f), h * shape_cfg["vocab_size"]


def flops_per_token(shape_cfg: dict) -> float:
    blocks, head = linear_params(shape_cfg)
    return 4.0 * (blocks + head / TARGET_FRACTION)


# ---------------------------------------------------------------------------------------- MLX
def mlx_matmul_peak(size: int, repeats: int) -> dict:
    import mlx.core as mx

    from mlx_reptilora.model import backend

    dtype = mx.bfloat16 if backend.backend_name() != "cpu" else mx.float32
    a = mx.random.normal((size, size)).astype(dtype)
    b = mx.random.normal((size, size)).astype(dtype)
    mx.eval(a, b)
    s = median_time(lambda: mx.eval(a @ b), repeats, warmup=2)
    return {"dtype": str(dtype).split(".")[-1], "size": size, "tflops": 2 * size**3 / s / 1e12}


def quantized_matmul(precision: str) -> str:
    """InnerConfig.quantized_matmul of a precision: 4bit through MLX's quantized matmul kernel,
    4bit-dense through each weight dequantized just in time (model/quantized.py)."""
    return "dense" if precision == "4bit-dense" else "kernel"


def mlx_model(shape: str, precision: str, model_path: str | None):
    """(model, tokenizer, shape config) for MLX; adapters not attached yet."""
    import mlx.core as mx
    from mlx_lm.utils import load_tokenizer

    from mlx_reptilora.model import backend, models

    bits = 4 if precision.startswith("4bit") else None
    if SHAPES[shape] is None:
        base = models.load(model_path, quantize_bits=bits, verbose=False)
        cfg = json.loads((base.path / "config.json").read_text())
        return base.model, base.tokenizer, cfg
    from mlx_lm.models import llama

    cfg = {"model_type": "llama", **SHAPES[shape]}
    model = llama.Model(llama.ModelArgs.from_dict(cfg))
    model.set_dtype(backend.compute_dtype())
    if bits:
        models._quantize(model, bits)
    model.freeze()
    mx.eval(model.parameters())
    return model, load_tokenizer(models.resolve(model_path, verbose=False)), cfg


def token_range(tokenizer, cfg: dict) -> int:
    """Random token ids stay below both the embedding size and the tokenizer's vocabulary."""
    return min(cfg["vocab_size"], len(tokenizer.vocab) if hasattr(tokenizer, "vocab") else cfg["vocab_size"])


def one_line(e: Exception) -> str:
    """An exception as one short line: it ends up in a JSON field and a markdown table cell."""
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def with_peak_memory(fn):
    """fn's result and the peak memory (GB) while it ran."""
    import mlx.core as mx

    from mlx_reptilora.model import memory

    mx.synchronize()
    memory.reset_peak()
    out = fn()
    mx.synchronize()
    return out, memory.peak_gb()


def mlx_generation(model, tokenizer, vocab: int, n: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    from mlx_lm.generate import batch_generate

    model.eval()
    tokenizer._eos_token_ids = set()  # fixed-length outputs: the same work as PyTorch's min_new_tokens
    prompts = [r.ids.tolist() for r in random_rows(n, prompt_len, vocab, 7)]

    def gen():
        return batch_generate(model, tokenizer, prompts, max_tokens=new_tokens, completion_batch_size=n,
                              prefill_batch_size=n)

    s = median_time(gen, repeats)
    return {"gen_s": s, "gen_tok_s": n * new_tokens / s}


def mlx_side(args, shape: str, precision: str) -> dict:
    import mlx.core as mx

    from mlx_reptilora.data import episodes
    from mlx_reptilora.meta import train
    from mlx_reptilora.model import activations, adapters, backend, memory
    from mlx_reptilora.meta.inner_loop import InnerConfig, InnerLoop

    model, tokenizer, cfg = mlx_model(shape, precision, args.model)
    vocab = token_range(tokenizer, cfg)
    adapters.attach(model, adapters.LoraConfig())
    B, L, T = args.batch, args.length, args.steps
    rows = random_rows(B, L, vocab, 0)
    inner = InnerLoop(model, InnerConfig(steps=T, micro_batch=B, quantized_matmul=quantized_matmul(precision)), [L])
    batches = inner.batches(rows)
    tokens = B * L
    r = {"dtype": backend.dtype_name(backend.compute_dtype()), "base": precision}

    t = time.perf_counter()
    inner.step(batches)
    r["first_step_s"] = time.perf_counter() - t
    r["step_s"], r["step_peak_gb"] = with_peak_memory(lambda: median_time(lambda: inner.step(batches), args.repeats))
    r["step_tok_s"] = tokens / r["step_s"]
    theta = inner.weights()

    learner = train.make_learner(train.MetaTrainConfig(inner_steps=T))

    def episode():
        mx.eval(learner.step({"theta": theta}, [episodes.Episode(0, "random", rows, [])], inner, 0).params)

    r["episode_s"], r["episode_peak_gb"] = with_peak_memory(lambda: median_time(episode, max(1, args.repeats // 2)))
    r["episode_tok_s"] = T * tokens / r["episode_s"]
    r["meta_overhead"] = r["episode_s"] / (T * r["step_s"])
    shots = random_rows(SHOTS, L, vocab, 1)

    def adapt():
        inner.set_weights(theta)
        inner.reset_optimizer()
        inner.adapt(shots)

    adapt()  # the 5-row micro-batch shapes compile here, not in the timing
    r["adapt_s"] = median_time(adapt, max(1, args.repeats // 2), warmup=0)
    r["adapt_tok_s"] = T * SHOTS * L / r["adapt_s"]
    g, r["gen_peak_gb"] = with_peak_memory(lambda: mlx_generation(model, tokenizer, vocab, args.gen_batch, L // 2,
                                                       args.gen_tokens, max(1, args.repeats // 2)))
    r.update(g)
    r["flops_per_token"] = flops_per_token(cfg)
    limit = memory.derived_limit()  # the library's defaults on this device, as a user gets them
    r["defaults"] = {"derived_limit_gb": limit and round(limit / 1e9, 2),
                     "recompute_swiglu": activations.check(model, recompute_swiglu=inner.cfg.recompute_swiglu)}
    memory.release_limit()  # the next measurement in this process starts from MLX's own limit
    return r


def release_mlx() -> float:
    """Hand MLX's cached buffers back to the device once a measurement's arrays are out of scope
    (called after the function returns: its closures, the compiled step among them, hold the model
    until then). Returns what MLX still holds, GB. Without this the PyTorch child shared an H100
    with 45 GB of MLX's cache and its 7B full fine-tuning step ran out of memory."""
    import mlx.core as mx

    gc.collect()
    mx.clear_cache()
    return (mx.get_active_memory() + mx.get_cache_memory()) / 1e9


def mlx_full_ft(args, shape: str) -> dict:
    """One full fine-tuning step (every weight trainable, AdamW) on the same batch, compiled."""
    from functools import partial

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    from mlx_reptilora.data import episodes
    from mlx_reptilora.meta.losses import batch_arrays, summed_loss

    model, tokenizer, cfg = mlx_model(shape, "float", args.model)
    vocab = token_range(tokenizer, cfg)
    rows = random_rows(args.batch, args.length, vocab, 0)  # the LoRA step's batch
    model.unfreeze()
    model.train()
    opt = optim.AdamW(learning_rate=1e-5, bias_correction=True)
    opt.init(model.trainable_parameters())
    state = [model.state, opt.state]
    made = episodes.make_batch(rows, [args.length])
    batch, n = batch_arrays(made), float(made.n_targets)
    loss_and_grad = nn.value_and_grad(model, lambda *a: summed_loss(model, *a) / n)

    @partial(mx.compile, inputs=state, outputs=state)
    def step(*a):
        loss, grads = loss_and_grad(*a)
        opt.update(model, grads)
        return loss

    def run():
        mx.eval(step(*batch), model.parameters(), opt.state)

    t = time.perf_counter()
    run()
    first = time.perf_counter() - t
    s, peak = with_peak_memory(lambda: median_time(run, max(1, args.repeats // 2), warmup=0))
    return {"full_ft_step_s": s, "full_ft_first_s": first, "full_ft_peak_gb": peak}


# ------------------------------------------------------------------------------------ PyTorch
def torch_worker(spec_path: str) -> None:
    """PyTorch + PEFT on the same rows, in a child process (MLX's OpenBLAS and torch's threads
    fight over a small CPU's cores inside one process)."""
    import torch

    from mlx_reptilora.crosscheck import torch_ref
    from mlx_reptilora.data import episodes
    from mlx_reptilora.model import adapters
    from mlx_reptilora.meta.inner_loop import InnerConfig

    spec = json.loads(Path(spec_path).read_text())
    dev = torch_ref.device()
    if dev == "cpu" and torch.backends.mps.is_available():
        dev = "mps"  # a Mac: PyTorch's Metal backend beside MLX's
    cuda = dev == "cuda"
    if dev == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(os.cpu_count() or 1, 2)))
    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    B, L, T, repeats = spec["batch"], spec["length"], spec["steps"], spec["repeats"]
    sync = {"cuda": torch.cuda.synchronize, "mps": lambda: torch.mps.synchronize()}.get(dev, lambda: None)

    def build():
        from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

        if spec["shape_cfg"] is None:
            return AutoModelForCausalLM.from_pretrained(spec["model_path"], dtype=dtype).to(dev)
        with torch.device(dev):
            cfg = LlamaConfig(**spec["shape_cfg"], attn_implementation="sdpa")
            return LlamaForCausalLM(cfg).to(dtype)

    def peak(fn):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        out = fn()
        sync()
        if cuda:
            return out, torch.cuda.max_memory_allocated() / 1e9
        import resource

        return out, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # process peak RSS

    r = {"torch_version": torch.__version__, "torch_device": dev, "torch_dtype": str(dtype).split(".")[-1]}
    model = torch_ref.attach_peft(build(), adapters.LoraConfig())
    vocab = spec["vocab"]
    rows = random_rows(B, L, vocab, 0)
    batches = [episodes.make_batch(rows, [L])]
    inner = torch_ref.TorchInnerLoop(model, InnerConfig(steps=T, micro_batch=B), dev)

    def step():
        inner.step(batches)
        sync()

    t = time.perf_counter()
    step()
    r["first_step_s"] = time.perf_counter() - t
    r["step_s"], r["step_peak_gb"] = peak(lambda: median_time(step, repeats))
    r["step_tok_s"] = B * L / r["step_s"]
    shot_batches = [episodes.make_batch(random_rows(SHOTS, L, vocab, 1), [L])]

    def adapt():
        inner.reset_optimizer()
        for _ in range(T):
            inner.step(shot_batches)
        sync()

    r["adapt_s"] = median_time(adapt, max(1, repeats // 2))
    r["adapt_tok_s"] = T * SHOTS * L / r["adapt_s"]
    model.eval()
    prompts = torch.from_numpy(np.stack([x.ids for x in random_rows(spec["gen_batch"], L // 2, vocab, 7)])).long().to(dev)
    n_new = spec["gen_tokens"]

    def gen():
        with torch.no_grad():
            model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n_new,
                           min_new_tokens=n_new, do_sample=False, pad_token_id=0)
        sync()

    r["gen_s"], r["gen_peak_gb"] = peak(lambda: median_time(gen, max(1, repeats // 2)))
    r["gen_tok_s"] = spec["gen_batch"] * n_new / r["gen_s"]
    model = inner = None
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    if spec["full_ft"]:
        try:
            full = build()
            full.train()
            opt = torch.optim.AdamW(full.parameters(), lr=1e-5)

            def ft_step():
                opt.zero_grad(set_to_none=True)
                n = sum(b.n_targets for b in batches)
                for b in batches:
                    (torch_ref.summed_loss(full, b, dev) / n).backward()
                opt.step()
                sync()

            t = time.perf_counter()
            ft_step()
            r["full_ft_first_s"] = time.perf_counter() - t
            r["full_ft_step_s"], r["full_ft_peak_gb"] = peak(lambda: median_time(ft_step, max(1, repeats // 2), 0))
        except Exception as e:
            r["full_ft"] = f"failed: {one_line(e)}"
    print("RESULT " + json.dumps(r), flush=True)


def torch_shape(shape: str, model_path: str | None) -> tuple[Path | None, dict]:
    """What torch_side needs of a shape, without building it: the bundled model's HF folder (None for
    a fixed geometry, built from its config) and the shape's config (its vocab_size draws the rows)."""
    from mlx_reptilora.model import models

    if SHAPES[shape] is not None:
        return None, SHAPES[shape]
    path = models.resolve(model_path, verbose=False)
    return path, json.loads((path / "config.json").read_text())


def torch_side(args, shape: str, precision: str, model_path: Path | None, vocab: int) -> dict:
    import importlib.util

    if precision != "float":
        return {"skipped": "4-bit PyTorch needs bitsandbytes, which this runner does not drive"}
    if not all(importlib.util.find_spec(m) for m in ("torch", "peft", "transformers")):
        return {"skipped": "PyTorch path not installed (pip install '.[crosscheck]')"}
    spec = {"shape_cfg": SHAPES[shape], "model_path": str(model_path) if model_path else None, "batch": args.batch,
            "length": args.length, "steps": args.steps, "repeats": args.repeats, "vocab": vocab,
            "gen_batch": args.gen_batch, "gen_tokens": args.gen_tokens, "full_ft": not args.no_full_ft}
    spec_path = Path(args.out) / f".torch-{shape}.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "MLX_REPTILORA_BLAS": "none"}
    p = subprocess.run([sys.executable, "-m", "benchmarks", "--torch-worker", str(spec_path)], env=env,
                       capture_output=True, text=True)
    spec_path.unlink()
    lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        return {"failed": tail[:300]}
    return json.loads(lines[-1][len("RESULT "):])


# ------------------------------------------------------------------------------------ sweep + report
def sweep(args) -> list[dict]:
    """MLX inner-step tokens/s over batch sizes (at --length) and lengths (at --batch), bundled shape
    on a full run, the tiny one in quick mode."""
    import mlx.core as mx

    from mlx_reptilora.model import adapters
    from mlx_reptilora.meta.inner_loop import InnerConfig, InnerLoop

    shape = "tiny" if args.quick else "smollm2-135m"
    model, tokenizer, cfg = mlx_model(shape, "float", args.model)
    adapters.attach(model, adapters.LoraConfig())
    out = []
    points = [(b, args.length) for b in args.sweep_batches] + [(args.batch, n) for n in args.sweep_lengths]
    for b, n in dict.fromkeys(points):
        inner = InnerLoop(model, InnerConfig(micro_batch=b), [n])
        batches = inner.batches(random_rows(b, n, cfg["vocab_size"], 0))
        s = median_time(lambda inner=inner, batches=batches: inner.step(batches), max(1, args.repeats // 2))
        out.append({"shape": shape, "batch": b, "length": n, "step_s": s, "tok_s": b * n / s})
        print(f"  sweep {shape} {b} x {n}: {b * n / s:,.0f} tok/s", flush=True)
        inner = batches = None
        mx.clear_cache()
    return out


def plot(points: list[dict], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=120)
    by_b = sorted((p for p in points if p["length"] == args.length), key=lambda p: p["batch"])
    by_l = sorted((p for p in points if p["batch"] == args.batch), key=lambda p: p["length"])
    a1.plot([p["batch"] for p in by_b], [p["tok_s"] for p in by_b], "o-")
    a1.set(xscale="log", xlabel=f"batch size (length {args.length})", ylabel="inner-step tokens/s")
    a2.plot([p["length"] for p in by_l], [p["tok_s"] for p in by_l], "o-")
    a2.set(xscale="log", xlabel=f"sequence length (batch {args.batch})")
    fig.suptitle(f"MLX inner step, {points[0]['shape']}, {args.device}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def device_name(kind: str) -> str:
    if kind == "cuda":
        try:
            name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                  text=True).stdout.strip().splitlines()[0]
            return f"{name} (MLX CUDA)"
        except (OSError, IndexError):
            return "NVIDIA GPU (MLX CUDA)"
    if kind == "metal":
        return f"Apple silicon {platform.machine()} (Metal)"
    try:
        model = next(x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores (MLX CPU)"


def _f(x, fmt="{:,.0f}"):
    return fmt.format(x) if isinstance(x, (int, float)) else "–"


def markdown(results: dict) -> str:
    peak = results["matmul_peak"]
    lines = [f"Device: {results['device']}; matmul peak measured here: {peak['tflops']:.3g} TFLOP/s "
             f"({peak['dtype']}, {peak['size']}^3). Batch {results['batch']} x {results['length']}, "
             f"T = {results['steps']}, k = {SHOTS}, generation {results['gen_batch']} x {results['gen_tokens']} "
             f"new tokens. Medians of {results['repeats']} (episodes, adaptation, generation: half as many).", "",
             "| model | base | MLX step tok/s | MLX episode tok/s | meta overhead | utilisation | first step s | "
             "MLX peak GB | PyTorch step tok/s | PyTorch peak GB | episode / PyTorch | adapt MLX / PyTorch | "
             "generate tok/s MLX / PyTorch | LoRA / full-FT step time (MLX; PyTorch) |",
             "| --- | --- |" + " ---: |" * 12]
    for row in results["rows"]:
        m, t = row["mlx"], row.get("torch", {})
        util = m["episode_tok_s"] * m["flops_per_token"] / (peak["tflops"] * 1e12)
        ratio = lambda a, b: f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) else "–"  # noqa: E731
        ft_m = ratio(m["step_s"], m.get("full_ft_step_s"))
        ft_t = ratio(t.get("step_s"), t.get("full_ft_step_s"))
        gen = f"{_f(m['gen_tok_s'])} / {_f(t.get('gen_tok_s'))}"
        lines.append(
            f"| {row['shape']} | {m['base']} ({m['dtype']}) | {_f(m['step_tok_s'])} | {_f(m['episode_tok_s'])} | "
            f"{m['meta_overhead']:.3f} | {100 * util:.1f}% | {m['first_step_s']:.1f} | "
            f"{max(m['step_peak_gb'], m['episode_peak_gb']):.1f} | {_f(t.get('step_tok_s'))} | "
            f"{_f(t.get('step_peak_gb'), '{:.1f}')} | {ratio(m['episode_tok_s'], t.get('step_tok_s'))} | "
            f"{ratio(t.get('adapt_s'), m['adapt_s'])} | {gen} | {ft_m}; {ft_t} |")
        for side, d in (("PyTorch", t), ("MLX full FT", {"failed": m.get("full_ft")} if "full_ft" in m else {})):
            for key in ("skipped", "failed"):
                if d.get(key):
                    lines.append(f"| | | {side} {key}: {d[key]} |" + " |" * 11)
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    ap.add_argument("--torch-worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="tiny shapes, seconds: what CI runs")
    ap.add_argument("--shapes", help="comma-separated: " + ", ".join(SHAPES) + " [by device]")
    ap.add_argument("--precisions", default="float,4bit,4bit-dense",
                    help="float (bf16 GPU / fp32 CPU), 4bit (QLoRA through MLX's quantized matmul kernel), "
                         "4bit-dense (QLoRA through weights dequantized just in time)")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--length", type=int)
    ap.add_argument("--steps", type=int, default=7, help="T inner steps per episode / adaptation")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gen-batch", type=int, default=16)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--sweep-batches", help="comma-separated batch sizes for the plot")
    ap.add_argument("--sweep-lengths", help="comma-separated lengths for the plot")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-full-ft", action="store_true")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--model", help="the bundled model's GGUF or HF folder [the bundled SmolLM2]")
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args(argv)
    if args.torch_worker:
        return torch_worker(args.torch_worker)

    import mlx_reptilora  # noqa: F401 -- BLAS before mlx.core

    from mlx_reptilora.model import backend

    gpu = backend.backend_name() != "cpu"
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    if args.quick:
        defaults = dict(shapes="tiny", batch=2, length=32, sweep_batches="1,2", sweep_lengths="16,32")
        args.repeats, args.steps, args.gen_batch, args.gen_tokens = 3, 2, 2, 4
    elif gpu:
        defaults = dict(shapes="smollm2-135m,llama2-7b", batch=4, length=512, sweep_batches="1,4,16,32",
                        sweep_lengths="128,256,512,1024")
    else:  # the 7B shape needs 27 GB in fp32 and hours per step on a CPU
        defaults = dict(shapes="smollm2-135m", batch=4, length=256, sweep_batches="1,2,4",
                        sweep_lengths="64,128,256")
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.sweep_batches, args.sweep_lengths = ints(args.sweep_batches), ints(args.sweep_lengths)
    args.device = device_name(backend.backend_name())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"device": args.device, "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"),
               "backend": backend.describe(), "batch": args.batch, "length": args.length, "steps": args.steps,
               "repeats": args.repeats, "gen_batch": args.gen_batch, "gen_tokens": args.gen_tokens,
               "target_fraction": 1 / TARGET_FRACTION, "rows": []}
    results["matmul_peak"] = mlx_matmul_peak(256 if args.quick else (8192 if gpu else 2048), args.repeats)
    print(f"matmul peak: {results['matmul_peak']['tflops']:.3g} TFLOP/s ({results['matmul_peak']['dtype']})",
          flush=True)

    def save():
        (out / "results.json").write_text(json.dumps(results, indent=2))
        (out / "results.md").write_text(markdown(results) if results["rows"] else "")

    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            raise SystemExit(f"unknown shape {shape!r}: choose from {', '.join(SHAPES)}")
        for precision in args.precisions.split(","):
            t = time.time()
            print(f"{shape} {precision}: MLX ...", flush=True)
            m = mlx_side(args, shape, precision)
            release_mlx()
            row = {"shape": shape, "precision": precision, "mlx": m, "torch": {"skipped": "not run yet"}}
            results["rows"].append(row)
            save()  # an out-of-memory abort in the full fine-tuning step below must not lose the rest
            if precision == "float" and not args.no_full_ft:
                print(f"{shape}: MLX full fine-tuning step ...", flush=True)
                try:
                    m.update(mlx_full_ft(args, shape))
                except Exception as e:  # out of memory on big shapes: say so, keep the rest
                    m["full_ft"] = f"failed: {one_line(e)}"
            m["mlx_held_gb_during_torch"] = release_mlx()
            save()
            path, shape_cfg = torch_shape(shape, args.model)
            print(f"{shape} {precision}: PyTorch ...", flush=True)
            tr = ({"skipped": "--no-torch"} if args.no_torch
                  else torch_side(args, shape, precision, path, shape_cfg["vocab_size"]))
            row.update(torch=tr, seconds=round(time.time() - t, 1))
            save()
            print(f"{shape} {precision}: done in {time.time() - t:.0f} s", flush=True)
    if not args.no_sweep:
        results["sweep"] = sweep(args)
        plot(results["sweep"], args, out / "sweep.png")
    save()
    print(markdown(results))
    print(f"results: {out}/results.json, {out}/results.md" + ("" if args.no_sweep else f", {out}/sweep.png"))
