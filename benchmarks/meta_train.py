"""Inner-step throughput and Reptile meta-overhead on the bundled SmolLM2-135M, side by side with
PyTorch + PEFT on the same batches (when the `crosscheck` extra is installed).

    python benchmarks/meta_train.py [--batch 4] [--length 256] [--steps 7] [--repeats 3] [--model M]

Every batch is B real aclsum-challenge examples (abstract + introduction) truncated to exactly L
tokens, so "tokens" = B x L in both frameworks. Reported: median seconds per inner step after
warm-up, tokens/s, and meta overhead = one Reptile episode / the sum of its T inner steps.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import mlx_reptilora  # noqa: F401 -- OpenBLAS before mlx.core
import mlx.core as mx
import numpy as np

from mlx_reptilora.data import episodes, prompts, tasks
from mlx_reptilora.meta import train
from mlx_reptilora.model import adapters, backend, memory, models
from mlx_reptilora.meta.inner_loop import InnerConfig, InnerLoop
from runner import median_time  # benchmarks/ is on sys.path when this file runs as a script


def torch_worker(path, batch_file, repeats, steps):
    """PyTorch + PEFT on the very same batches, in its own process: with MLX's OpenBLAS preloaded
    into the same process, torch's GEMMs and OpenBLAS's spinning threads fight over the 2 cores."""
    import numpy as np
    import torch

    from mlx_reptilora.crosscheck import torch_ref

    dev = torch_ref.device()
    if dev == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(os.cpu_count() or 1, 2)))
    data = np.load(batch_file)
    batch = episodes.Batch(*(data[k] for k in ("tokens", "lengths", "prompt_lens", "target_index", "target_ids",
                                               "target_weight")))
    cfg = InnerConfig(steps=steps, micro_batch=batch.tokens.shape[0])
    # The compute dtype MLX uses on the same device: float32 on CPU, bfloat16 on a GPU.
    model = torch_ref.load_peft(path, adapters.LoraConfig(), dtype="float32" if dev == "cpu" else "bfloat16", dev=dev)
    inner = torch_ref.TorchInnerLoop(model, cfg, dev)
    summary = median_time(lambda: inner.step([batch]), repeats)
    tokens = torch.from_numpy(batch.tokens.astype("int64")).to(dev)

    def full_sequence_step():  # stock PEFT practice: logits and loss at every position
        inner.optimizer.zero_grad()
        model(input_ids=tokens, labels=tokens).loss.backward()
        torch.nn.utils.clip_grad_norm_(inner.params, cfg.grad_clip)
        inner.optimizer.step()

    full = median_time(lambda: (full_sequence_step(), torch.cuda.synchronize() if dev == "cuda" else None), repeats)
    print(json.dumps({"torch_step_s": summary, "torch_full_sequence_step_s": full, "torch_device": dev,
                      "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__}))


def torch_side(path, exs, args):
    try:
        import importlib.util

        if not all(importlib.util.find_spec(m) for m in ("torch", "peft", "transformers")):
            return {"torch": "not installed (pip install '.[crosscheck]')"}
    except ImportError:
        return {}
    batch = episodes.make_batch(exs, [args.length])
    with tempfile.TemporaryDirectory() as tmp:
        f = os.path.join(tmp, "batch.npz")
        np.savez(f, **{k: getattr(batch, k) for k in ("tokens", "lengths", "prompt_lens", "target_index",
                                                       "target_ids", "target_weight")})
        env = {**os.environ, "MLX_REPTILORA_BLAS": "none"}
        r = subprocess.run([sys.executable, __file__, "--torch-worker", f, "--model-path", str(path),
                            "--repeats", str(args.repeats), "--steps", str(args.steps)],
                           env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return {"torch": f"failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}"}
    out = json.loads(r.stdout.strip().splitlines()[-1])
    tokens = args.batch * args.length
    out["torch_tok_s"] = tokens / out["torch_step_s"]
    out["torch_full_sequence_tok_s"] = tokens / out["torch_full_sequence_step_s"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--torch-worker", help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M-Instruct")
    args = ap.parse_args()
    if args.torch_worker:
        return torch_worker(args.model_path, args.torch_worker, args.repeats, args.steps)

    base = models.load(args.model)
    lora = adapters.LoraConfig()
    adapters.attach(base.model, lora)
    fmt = prompts.PromptFormat.for_tokenizer(base.tokenizer)
    pool = [e for split in ("train", "valid", "test") for e in tasks.load("aclsum-challenge").splits[split]]
    exs = [t for t in prompts.tokenize(fmt, base.tokenizer, pool, args.length)
           if t is not None and len(t.ids) == args.length][: args.batch]
    assert len(exs) == args.batch
    tokens = args.batch * args.length
    cfg = InnerConfig(steps=args.steps, micro_batch=args.batch)
    inner = InnerLoop(base.model, cfg, [args.length])
    batches = inner.batches(exs)
    theta = inner.weights()

    step_s = median_time(lambda: inner.step(batches), args.repeats)

    # Meta overhead inside one run of episodes: everything an episode does besides its T inner
    # steps (resetting θ' and the optimizer, the Reptile interpolation) over the steps' own time.
    step_times = []
    timed_step = inner.step

    def recording_step(b):
        t = time.perf_counter()
        loss = timed_step(b)
        step_times.append(time.perf_counter() - t)
        return loss

    inner.step = recording_step
    learner = train.make_learner(train.MetaTrainConfig(inner_steps=args.steps))
    episode = episodes.Episode(0, "aclsum-challenge", exs, [])
    episode_times = []
    for _ in range(max(1, args.repeats // 2)):
        step_times.clear()
        t = time.perf_counter()
        mx.eval(learner.step({"theta": theta}, [episode], inner, 0).params)
        episode_times.append((time.perf_counter() - t, sum(step_times)))
    episode_s, steps_s = min(episode_times, key=lambda e: e[0] / e[1])
    rows = {"mlx_step_s": step_s, "mlx_tok_s": tokens / step_s, "mlx_episode_s": episode_s,
            "meta_overhead": episode_s / steps_s, "peak_memory_gb": memory.peak_gb()}

    if not args.no_torch:
        rows.update(torch_side(base.path, exs, args))

    if "torch_step_s" in rows:
        rows["mlx_over_torch"] = rows["torch_step_s"] / rows["mlx_step_s"]
        rows["mlx_over_torch_full_sequence"] = rows["torch_full_sequence_step_s"] / rows["mlx_step_s"]
    print(json.dumps({"machine": platform.machine(), **backend.describe(), "batch": args.batch,
                      "length": args.length, "steps": args.steps, **{k: (round(v, 4) if isinstance(v, float) else v)
                                                                      for k, v in rows.items()}}))


if __name__ == "__main__":
    main()
