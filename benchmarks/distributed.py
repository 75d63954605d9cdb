"""Meta-batch throughput of `meta-train` in 1 process and in N processes under `mlx.launch`.

    python -m benchmarks.distributed [--processes 1,2] [--meta-batch 2] [--episodes 4] [--support 4]
                                     [--inner-steps 3] [--max-length 256] [--backend ring] [--out DIR]

Each configuration is the real CLI on the bundled SmolLM2 (or --model), Reptile, the same seed and
tasks; the first episode (tracing, kernel builds) is left out and the median of the rest is
reported from metrics.jsonl: tasks/s = meta-batch / episode seconds, tokens/s as the run logs them.
"1 process" runs without the launcher. Writes distributed.json and distributed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(n: int, args, folder: Path, threads: int | None) -> dict:
    out = folder / f"n{n}-t{threads or 'default'}"
    cli = [sys.executable, "-m", "mlx_reptilora", "meta-train", "--tasks", args.tasks, "--episodes",
           str(args.episodes), "--meta-batch", str(args.meta_batch), "--support", str(args.support), "--query", "0",
           "--inner-steps", str(args.inner_steps), "--max-length", str(args.max_length), "--eval-every", "0",
           "--checkpoint-every", str(args.episodes), "--out", str(out), "-q"] + (["--model", args.model] if args.model else [])
    env = {**os.environ, **({"OPENBLAS_NUM_THREADS": str(threads)} if threads else {})}
    if n > 1:
        cli = [str(Path(sys.executable).parent / "mlx.launch"), "-n", str(n), "--backend", args.backend,
               "--starting-port", str(random.randint(20000, 60000)), "--", *cli]
    t = time.perf_counter()
    r = subprocess.run(cli, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] if (out / "metrics.jsonl").exists() else []
    if r.returncode != 0 or len(rows) < args.episodes:
        return {"processes": n, "failed": (r.stderr.strip().splitlines() or ["?"])[-1]}
    steady = rows[1:]
    seconds = statistics.median(row["seconds"] for row in steady)
    return {"processes": n, "openblas_threads": threads or "default", "episode_s": seconds,
            "tasks_per_s": args.meta_batch / seconds,
            "tokens_per_s": statistics.median(row["tokens_per_s"] for row in steady), "wall_s": round(wall, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", default="1,2")
    ap.add_argument("--threads", default="default", help="OPENBLAS_NUM_THREADS per process, comma list "
                                                          "('default' leaves it unset)")
    ap.add_argument("--meta-batch", type=int, default=2)
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--support", type=int, default=4)
    ap.add_argument("--inner-steps", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--tasks", default="aclsum-title,pydoc")
    ap.add_argument("--model", default=None)
    ap.add_argument("--backend", default="ring")
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for threads in args.threads.split(","):
            for n in (int(x) for x in args.processes.split(",")):
                rows.append(run(n, args, Path(tmp), None if threads == "default" else int(threads)))
                print(json.dumps(rows[-1]), flush=True)
    import mlx_reptilora  # noqa: F401
    from mlx_reptilora.model import backend

    result = {"machine": platform.machine(), "cpus": os.cpu_count(), **backend.describe(),
              "date": time.strftime("%Y-%m-%d"), "settings": vars(args), "rows": rows}
    lines = ["| processes | OpenBLAS threads each | episode s | tasks/s | tokens/s | speed-up |", "|" + " --- |" * 6]
    base = next((r for r in rows if r.get("processes") == 1 and "failed" not in r), None)
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['processes']} | | failed: {r['failed']} | | | |")
            continue
        same_threads = next((b for b in rows if b.get("processes") == 1 and b.get("openblas_threads") ==
                             r["openblas_threads"] and "failed" not in b), base)
        lines.append(f"| {r['processes']} | {r['openblas_threads']} | {r['episode_s']:.2f} | {r['tasks_per_s']:.3f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['tasks_per_s'] / same_threads['tasks_per_s']:.2f}x |")
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "distributed.json").write_text(json.dumps(result, indent=2))
    (folder / "distributed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
