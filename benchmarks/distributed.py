"""Meta-batch throughput of `meta-train` in 1 process and in N processes under `mlx.launch`, and
whether N processes end with the adapters of 1.

    python -m benchmarks.distributed [--processes 1,2] [--learners reptile] [--shape smollm2-135m]
                                     [--meta-batch 2] [--episodes 4] [--support 4] [--inner-steps 3]
                                     [--max-length 256] [--backend ring] [--out DIR]

Each configuration is the real CLI, the same seed and tasks. --shape smollm2-135m is the bundled
model (or --model); a fixed geometry of the benchmark runner (llama2-7b, tiny) is written once as a
model folder with random weights and the bundled tokenizer, its vocabulary widened to the
tokenizer's (49,152 rows instead of Llama-2's 32,000) so that real tasks' token ids fit. The first
episode (tracing, kernel builds) is left out and the median of the rest is reported from
metrics.jsonl: tasks/s = meta-batch / episode seconds, tokens/s as the run logs them (the whole
meta-batch's). Scaling efficiency = (tasks/s of N processes / tasks/s of 1) / N. "1 process" runs
without the launcher. Adapters are compared with the 1-process run of the same learner: bit-identical
when each rank adapts one task (the all-sum adds the same float32 numbers in the same order),
otherwise a rank's mean of several tasks changes the summation order, and the largest difference
relative to the largest adapter entry is reported (the check asks <= 1e-3). With --backend nccl
(one GPU a process: mlx.launch sets CUDA_VISIBLE_DEVICES) NCCL's NVLink multicast stays off.
Writes distributed.json and distributed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.runner import SHAPES

TOLERANCE = 1e-3  # largest |Δ| over the largest |adapter entry|, where bit-identity is not expected


def launcher() -> list[str]:
    """mlx.launch beside this Python, or its module where only a PYTHONPATH install has MLX (the GPU
    machine's staged packages have no bin/ on PATH)."""
    exe = Path(sys.executable).parent / "mlx.launch"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"]


def random_model(shape: str, folder: Path, tokenizer_from: str | None) -> Path:
    """A model folder of a runner geometry with random weights (float16, N(0, 0.02)) and the bundled
    tokenizer. Weights are drawn by numpy (no MLX graph of 6.7 B random numbers), handed to MLX only
    to be saved, and MLX's cache is emptied after, so this process holds no GPU memory while the
    ranks run."""
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    from mlx_reptilora.model import models

    if (folder / "model.safetensors").exists():
        return folder
    source = models.resolve(tokenizer_from, verbose=False)
    config = json.loads((source / "config.json").read_text())
    vocab = max(config["vocab_size"], SHAPES[shape]["vocab_size"])
    config.update({**SHAPES[shape], "model_type": "llama", "vocab_size": vocab, "torch_dtype": "float16"})
    config.pop("head_dim", None)
    folder.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy(f, folder / f.name)
    shapes = {k: v.shape for k, v in tree_flatten(llama.Model(llama.ModelArgs.from_dict(config)).parameters())}
    rng = np.random.default_rng(0)
    weights = {}
    for name, shape_ in shapes.items():
        w = np.ones(shape_, np.float16) if name.endswith("norm.weight") else \
            (rng.standard_normal(shape_, np.float32) * 0.02).astype(np.float16)
        weights[name] = mx.array(w)
    part = folder / "partial.safetensors"  # not model*.safetensors: mlx-lm would load a half-written one
    mx.save_safetensors(str(part), weights)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    os.replace(part, folder / "model.safetensors")
    del weights
    mx.clear_cache()  # 13.5 GB at 7B that MLX would otherwise keep cached while the ranks run
    return folder


def run(n: int, learner: str, args, model: str | None, folder: Path, threads: int | None) -> dict:
    out = folder / f"{learner}-n{n}-t{threads or 'default'}"
    cli = [sys.executable, "-m", "mlx_reptilora", "meta-train", "--learner", learner, "--tasks", args.tasks,
           "--episodes", str(args.episodes), "--meta-batch", str(args.meta_batch), "--support", str(args.support),
           "--query", str(args.query), "--inner-steps", str(args.inner_steps), "--max-length", str(args.max_length),
           "--eval-every", "0", "--checkpoint-every", str(args.episodes), "--out", str(out), "-q"] + \
          (["--model", model] if model else [])
    env = {**os.environ, **({"OPENBLAS_NUM_THREADS": str(threads)} if threads else {})}
    if n > 1:
        env.setdefault("NCCL_NVLS_ENABLE", "0")  # multicast can put a shared host's GPUs out of service
        cli = [*launcher(), "-n", str(n), "--backend", args.backend, "--starting-port",
               str(random.randint(20000, 60000)), "--nccl-port", str(random.randint(20000, 60000)), "--", *cli]
    t = time.perf_counter()
    r = subprocess.run(cli, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] if (out / "metrics.jsonl").exists() else []
    done = (out / "adapters.safetensors").exists()
    if r.returncode != 0 or len(rows) < args.episodes or not done:
        return {"learner": learner, "processes": n, "failed": (r.stderr.strip().splitlines() or ["?"])[-1]}
    steady = rows[1:]
    seconds = statistics.median(row["seconds"] for row in steady)
    return {"learner": learner, "processes": n, "openblas_threads": threads or "default", "episode_s": seconds,
            "tasks_per_s": args.meta_batch / seconds, "tokens_per_s": statistics.median(row["tokens_per_s"] for row in steady),
            "peak_memory_gb": max(row["peak_memory_gb"] for row in rows), "wall_s": round(wall, 1), "folder": str(out)}


def compare(a: Path, b: Path) -> dict:
    """How far b's adapters are from a's: bit-identical, and the largest |Δ| over the largest entry."""
    import mlx.core as mx

    from mlx_reptilora.model import adapters

    wa, wb = adapters.read_weights(a), adapters.read_weights(b)
    if set(wa) != set(wb):
        return {"identical": False, "relative_diff": float("inf")}
    diff = max(mx.max(mx.abs(wa[k] - wb[k])).item() for k in wa)
    scale = max(mx.max(mx.abs(wa[k])).item() for k in wa)
    return {"identical": all(mx.array_equal(wa[k], wb[k]).item() for k in wa), "relative_diff": diff / scale}


def table(rows: list[dict]) -> list[str]:
    lines = ["| learner | processes | OpenBLAS threads each | episode s | tasks/s | tokens/s | peak GB a rank | speed-up "
             "| scaling efficiency | adapters vs 1 process |", "|" + " --- |" * 10]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['learner']} | {r['processes']} | | failed: {r['failed']} | | | | | | |")
            continue
        base = next((b for b in rows if b["learner"] == r["learner"] and b.get("processes") == 1
                     and b.get("openblas_threads") == r["openblas_threads"] and "failed" not in b), None)
        up = r["tasks_per_s"] / base["tasks_per_s"] if base else float("nan")
        same = r.get("adapters")
        check = "—" if same is None else "bit-identical" if same["identical"] else \
            f"{same['relative_diff']:.1e} ({'within' if same['relative_diff'] <= TOLERANCE else 'OUTSIDE'} {TOLERANCE:g})"
        lines.append(f"| {r['learner']} | {r['processes']} | {r['openblas_threads']} | {r['episode_s']:.2f} | "
                     f"{r['tasks_per_s']:.3f} | {r['tokens_per_s']:,.0f} | {r['peak_memory_gb']:.1f} | {up:.2f}x | "
                     f"{up / r['processes']:.0%} | {check} |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", default="1,2", help="comma list; 1 runs without the launcher")
    ap.add_argument("--learners", default="reptile", help="comma list of meta-train --learner values")
    ap.add_argument("--shape", default="smollm2-135m", choices=list(SHAPES),
                    help="the bundled model, or a runner geometry with random weights")
    ap.add_argument("--threads", default="default", help="OPENBLAS_NUM_THREADS per process, comma list "
                                                          "('default' leaves it unset)")
    ap.add_argument("--meta-batch", type=int, default=2, help="must divide by every process count")
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--support", type=int, default=4)
    ap.add_argument("--query", type=int, default=0, help="FOMAML's outer step needs a query set (> 0)")
    ap.add_argument("--inner-steps", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--tasks", default="aclsum-title,pydoc")
    ap.add_argument("--model", default=None, help="the smollm2-135m shape's model, and every shape's tokenizer")
    ap.add_argument("--backend", default="ring", help="mlx.launch --backend: ring (CPU), nccl (one GPU a process)")
    ap.add_argument("--work", default=None, help="folder for the runs and a random-weights model (default: a "
                                                 "temporary one, removed at the end)")
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args(argv)
    processes = [int(x) for x in args.processes.split(",")]
    learners = args.learners.split(",")
    bad = [n for n in processes if args.meta_batch % n]
    if bad:
        ap.error(f"--meta-batch {args.meta_batch} does not divide by {bad[0]} processes")
    if any(x != "reptile" for x in learners) and args.query < 1:
        ap.error(f"--learners {args.learners}: the gradient-based learners need --query 1 or more")

    import mlx_reptilora  # noqa: F401 -- BLAS before mlx.core
    from mlx_reptilora.model import backend

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        model = args.model
        if SHAPES[args.shape] is not None:
            t = time.perf_counter()
            model = str(random_model(args.shape, work / f"model-{args.shape}", args.model))
            print(f"random-weights {args.shape} model in {time.perf_counter() - t:.0f} s: {model}", flush=True)
        for learner in learners:
            for threads in args.threads.split(","):
                one = None
                for n in processes:
                    row = run(n, learner, args, model, work, None if threads == "default" else int(threads))
                    if n == 1 and "failed" not in row:
                        one = row
                    elif one and "failed" not in row:
                        row["adapters"] = compare(Path(one["folder"]), Path(row["folder"]))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    for r in rows:
        r.pop("folder", None)
    result = {"machine": platform.machine(), "cpus": os.cpu_count(), **backend.describe(),
              "date": time.strftime("%Y-%m-%d"), "settings": vars(args), "tolerance": TOLERANCE, "rows": rows}
    lines = table(rows)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "distributed.json").write_text(json.dumps(result, indent=2))
    (folder / "distributed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if any("failed" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
