"""The paper's experiment (its Tables 1-3, Figures 2-3) on the five offline tasks — issue #8.

Frozen: the record of how docs/RESULTS.md's issue #8 numbers were made, kept runnable. New
experiments are plans of scripts/experiment.py; what the two share (cells, intervals, metrics
records, query-loss curves) is mlx_reptilora/evaluation/report.py.

    python docs/records/paper_experiment.py [--stage meta|tune|test|why|report|all] [--jobs N] [--out runs/experiment]

Stages, each skipping work already on disk (re-run after a crash and it carries on):
  meta    meta-train every start concurrently (--jobs processes): the variants tuned on the validation
          splits, on all five tasks (protocol a), and one run per task without that task (protocol b)
  tune    on the validation splits only: which meta-learned start (variant, episodes) and how many
          adaptation steps, for ReptiLoRA and for LoRA separately (each baseline gets its best)
  test    the test splits: protocol (a) LoRA / ReptiLoRA / in-context at 0/1/5 shots, 3 draws;
          protocol (b) ReptiLoRA from the leave-one-out starts on the left-out task
  why     the diagnosis of what the tuned start misses, on the validation splits: a lower adaptation lr
          for the meta start (and a higher one for LoRA), and a start meta-trained with k = 5 support
          examples, the test's shot count; the best probe is then scored on the test splits
  report  docs/RESULTS.md-ready tables (tables.md) and charts from the JSON the stages wrote

--quick shrinks everything (episodes, examples, draws) into a minutes-long smoke run on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the package of this checkout
from mlx_reptilora.evaluation import report as shared  # noqa: E402

TASKS = ["aclsum-challenge", "aclsum-approach", "aclsum-outcome", "aclsum-title", "pydoc"]
# What the paper leaves open, tried on the validation splits. "paper" is Kim et al. as written.
VARIANTS = {
    "paper": {},  # α = 0.1 constant
    "anneal": {"meta_lr": 1.0, "meta_lr_final": 0.0},  # Reptile's own schedule (Nichol et al.)
}
EARLY = 250  # also try the paper variant's start after this many episodes (a checkpoint)
ADAPT_STEPS = [7, 21]
# The probes of the why stage: meta-training with the test's shot count, and adaptation learning
# rates either side of the paper's 5e-4 (the meta start overfits its shots; LoRA's start underfits).
PROBE_RUNS = {"k5": {"support": 5}}
REPTILE = "Reptile start"  # the paper's method, ReptiLoRA: how its column is labelled
PROBE_LRS = {"reptilora": [5e-5, 1e-4, 2e-4], "lora": [1e-3]}
IN_CONTEXT_MAX_LENGTH = 2048  # room for 5 documents in the prompt (SmolLM2 takes 8k)


def meta_runs(args) -> dict[str, dict]:
    """name -> meta-train settings (YAML keys). The leave-one-out runs use the paper variant."""
    common = {"tasks": TASKS, "micro_batch": args.micro_batch, "keep_checkpoints": 20, "quiet": True,
              "seed": args.seed, "checkpoint_every": 50}
    if args.quick:
        common.update(episodes=4, support=4, query=8, inner_steps=2, max_length=128, eval_every=2,
                      checkpoint_every=2)
    runs = {f"all-{v}": {**common, **VARIANTS[v]} for v in args.variants}
    runs.update({f"all-{p}": {**common, **PROBE_RUNS[p]} for p in PROBE_RUNS})
    for t in TASKS:
        runs[f"without-{t}"] = {**common, "tasks": [x for x in TASKS if x != t]}
        if args.loo_episodes and not args.quick:
            runs[f"without-{t}"]["episodes"] = args.loo_episodes
    return runs


def _cli(*argv) -> list[str]:
    return [sys.executable, "-m", "mlx_reptilora", *argv]


def stage_meta(args, out: Path) -> None:
    from mlx_reptilora import options as config

    todo = []
    paper = yaml.safe_load(config.resolve_config("paper").read_text())  # the defaults, written out
    paper = {k.replace("-", "_"): v for k, v in paper.items()}
    for name, settings in meta_runs(args).items():
        folder = out / "meta" / name
        if (folder / "adapters.safetensors").exists():
            continue
        cfg_path = out / "meta" / f"{name}.yaml"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**paper, **settings}
        cfg_path.write_text(yaml.safe_dump({**merged, "tasks": ",".join(settings["tasks"]), "out": str(folder),
                                            "model": args.model}))
        argv = ["meta-train", "-c", str(cfg_path)]
        todo.append((name, folder, argv))
    running: list[tuple[str, subprocess.Popen, float]] = []
    failed = []
    t0 = time.time()
    while todo or running:
        while todo and len(running) < args.jobs:
            name, folder, argv = todo.pop(0)
            resume = ["--resume"] if (folder / "meta.json").exists() else []
            log = open(out / "meta" / f"{name}.log", "a")
            print(f"[meta] start {name}", flush=True)
            running.append((name, subprocess.Popen(_cli(*argv, *resume), stdout=log, stderr=subprocess.STDOUT),
                            time.time()))
        time.sleep(5)
        for item in list(running):
            name, proc, started = item
            if proc.poll() is not None:
                running.remove(item)
                ok = proc.returncode == 0
                print(f"[meta] {name} {'done' if ok else f'FAILED (exit {proc.returncode})'} in "
                      f"{time.time() - started:.0f} s", flush=True)
                if not ok:
                    failed.append(name)
        if running and int(time.time() - t0) % 60 < 5:
            print("[meta] " + ", ".join(f"{n}: {_episodes_done(out / 'meta' / n)}" for n, _, _ in running), flush=True)
    if failed:
        raise SystemExit(f"meta-training failed: {failed}; see {out}/meta/<name>.log")


def _episodes_done(folder: Path) -> int:
    try:
        with open(folder / "metrics.jsonl") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def _early_start(out: Path, episodes: int) -> Path:
    """The paper variant's θ after `episodes` episodes, from its checkpoint, as an adapters folder."""
    from mlx_reptilora.meta import checkpoint
    from mlx_reptilora.model import adapters

    run = out / "meta" / "all-paper"
    dest = out / "meta" / f"all-paper-at-{episodes}"
    if not (dest / adapters.WEIGHTS).exists():
        theta = checkpoint.load(run / "checkpoints" / f"episode-{episodes:06d}")[1]["params"]["theta"]
        raw = json.loads((run / adapters.CONFIG).read_text())
        adapters.write(dest, theta, adapters.read_config(run), raw["num_layers"], {**raw, "episodes": episodes})
    return dest


def _compare(args, root: Path, dest: Path, **over) -> list[dict]:
    """One compare run (cached by its --out folder); its rows."""
    from mlx_reptilora.evaluation import compare

    folder = Path(dest)
    if (folder / "results.json").exists():
        return json.loads((folder / "results.json").read_text())["rows"]
    if args.quick:  # short prompts and few steps: a CPU smoke run of the same code
        over.update(max_length=min(over.get("max_length", 128), 256), steps=min(over.get("steps", 2), 2))
        if "in_context_length" in over:
            over["in_context_length"] = 256
    over.setdefault("batch_size", args.batch_size)
    over.setdefault("micro_batch", 4)  # as the published rows ran; jobs sharing a GPU must not size it to its free memory
    cfg = compare.CompareConfig(model=args.model, seed=args.seed, quiet=True, out=str(folder), limit=args.limit,
                                **over)
    t = time.time()
    rows = compare.run(cfg)["rows"]
    print(f"[compare] {folder.relative_to(root)}: {len(rows)} cells in {time.time() - t:.0f} s", flush=True)
    return rows


def _choice(out: Path) -> dict:
    path = out / "tune" / "choice.json"
    if not path.exists():
        raise SystemExit(f"error: {path} not found: run --stage tune first (it picks the starts and steps to test)")
    return json.loads(path.read_text())


def _test_draws(args) -> int:
    return 1 if args.quick else 3


def _protocol_b(args, out: Path, dest, **over) -> None:
    """Each task from the start meta-trained without it (the paper variant), at 0/1/5 shots on its
    test split; dest(task) names the folder."""
    for t in TASKS:
        _compare(args, out, adapters=str(out / "meta" / f"without-{t}"), systems=["reptilora"], shots=[0, 1, 5],
                 draws=_test_draws(args), split="test", tasks=[t], dest=dest(t), **over)


def _mean_rouge_l(rows, shots=(1, 5)) -> float:
    vals = [r["rougeL"]["mid"] for r in rows if r["shots"] in shots and "same_as" not in r]
    return sum(vals) / len(vals)


def stage_tune(args, out: Path) -> dict:
    early = 2 if args.quick else EARLY
    starts = {f"all-{v}": out / "meta" / f"all-{v}" for v in args.variants}
    starts[f"all-paper-at-{early}"] = _early_start(out, early)
    shots, draws = [1, 5], args.tune_draws
    scores = {"reptilora": {}, "lora": {}}
    for steps in ([1, 2] if args.quick else ADAPT_STEPS):
        for name, path in starts.items():
            rows = _compare(args, out, adapters=str(path), systems=["reptilora"], shots=shots, draws=draws,
                            steps=steps, split="valid", tasks=TASKS, dest=out / "tune" / f"{name}-steps{steps}")
            scores["reptilora"][f"{name}|{steps}"] = _mean_rouge_l(rows)
        rows = _compare(args, out, adapters=str(starts["all-paper"]), systems=["lora"], shots=shots, draws=draws,
                        steps=steps, split="valid", tasks=TASKS, dest=out / "tune" / f"lora-steps{steps}")
        scores["lora"][str(steps)] = _mean_rouge_l(rows)
    best_meta = max(scores["reptilora"], key=scores["reptilora"].get)
    choice = {"reptilora_start": best_meta.split("|")[0], "reptilora_steps": int(best_meta.split("|")[1]),
              "lora_steps": int(max(scores["lora"], key=scores["lora"].get)),
              "scores": scores, "criterion": "mean validation ROUGE-L over the 5 tasks at 1 and 5 shots",
              "draws": draws}
    (out / "tune" / "choice.json").write_text(json.dumps(choice, indent=2))
    print(f"[tune] {json.dumps(choice)}", flush=True)
    return choice


def stage_test(args, out: Path) -> None:
    choice = _choice(out)
    start = out / "meta" / choice["reptilora_start"]
    common = dict(split="test", draws=_test_draws(args), tasks=TASKS)
    _compare(args, out, adapters=str(start), systems=["reptilora"], shots=[0, 1, 5],
             steps=choice["reptilora_steps"], dest=out / "test" / "a-reptilora", **common)
    _compare(args, out, adapters=str(start), systems=["lora"], shots=[0, 1, 5], steps=choice["lora_steps"],
             dest=out / "test" / "a-lora", **common)
    # 2048-token prompts: a batch of 128 ran an H100 out of memory in prefill; 16 at a time fits.
    _compare(args, out, adapters=str(start), systems=["in-context"], shots=[1, 5],
             in_context_length=IN_CONTEXT_MAX_LENGTH, batch_size=min(args.batch_size, 16), dest=out / "test" / "a-in-context", **common)
    # Protocol (b): the start never saw the task. The leave-one-out runs use the paper variant
    # (they are trained alongside the tuning runs); the adaptation steps are the tuned ones.
    _protocol_b(args, out, lambda t: out / "test" / f"b-{t}", steps=choice["reptilora_steps"])


def stage_why(args, out: Path) -> dict:
    """Each probe against the tuned choice on the validation splits (mean R-L at 1 and 5 shots per
    task, the tuning criterion); the best ReptiLoRA probe, and LoRA's if it gained, then on test."""
    choice = _choice(out)
    start, steps = out / "meta" / choice["reptilora_start"], choice["reptilora_steps"]
    valid = dict(shots=[1, 5], draws=args.tune_draws, split="valid", tasks=TASKS)
    # name -> (start, compare settings, folder); the tuned settings' runs are the tune stage's own
    probes = {"reptilora": {"tuned": (start, dict(steps=steps), out / "tune" / f"{start.name}-steps{steps}")},
              "lora": {"tuned": (start, dict(steps=choice["lora_steps"]), out / "tune" / f"lora-steps{choice['lora_steps']}")}}
    for system in probes:
        for lr in PROBE_LRS[system]:
            over = dict(steps=probes[system]["tuned"][1]["steps"], lr=lr)
            probes[system][f"lr{lr:g}"] = (start, over, out / "why" / f"valid-{system}-lr{lr:g}")
    for p in PROBE_RUNS:
        probes["reptilora"][p] = (out / "meta" / f"all-{p}", dict(steps=steps), out / "why" / f"valid-reptilora-{p}")
    summary = {"choice": choice, "valid": {}, "test": {}}
    for system, named in probes.items():
        for name, (path, over, dest) in named.items():
            rows = _compare(args, out, adapters=str(path), systems=[system], dest=dest, **valid, **over)
            summary["valid"][f"{system}|{name}"] = {
                "start": path.name, **over, "mean": _mean_rouge_l(rows),
                "cells": {f"{r['task']}|{r['shots']}": r["rougeL"]["mid"] for r in rows}}
    for system, named in probes.items():
        best = max(named, key=lambda n: summary["valid"][f"{system}|{n}"]["mean"])
        summary[f"best_{system}"] = best
        if best == "tuned":
            continue  # its test rows are protocol (a)'s
        path, over, _ = named[best]
        _compare(args, out, adapters=str(path), systems=[system], shots=[0, 1, 5], draws=_test_draws(args),
                 split="test", tasks=TASKS, dest=out / "why" / f"test-{system}-{best}", **over)
        summary["test"][system] = f"test-{system}-{best}"
        if system == "reptilora" and path == start:  # an adaptation setting: protocol (b) too
            _protocol_b(args, out, lambda t, best=best: out / "why" / f"test-b-{t}-{best}", **over)
            summary["test_b"] = {t: f"test-b-{t}-{best}" for t in TASKS}
    (out / "why" / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[why] best: ReptiLoRA {summary['best_reptilora']}, LoRA {summary['best_lora']}", flush=True)
    return summary


def why_table(out: Path, draws: int) -> str:
    """Validation means of every probe, and protocol (a) redone with the best ones."""
    from mlx_reptilora.evaluation import compare

    path = out / "why" / "summary.json"
    if not path.exists():
        return ""
    summary = json.loads(path.read_text())
    lines = ["| system | probe | start | adaptation steps | lr | mean valid R-L (1, 5 shots) |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for key, v in summary["valid"].items():
        system, name = key.split("|")
        start = v["start"] if system == "reptilora" else "standard (B = 0)"  # LoRA reads only the rank etc.
        lines.append(f"| {system} | {name} | {start} | {v['steps']} | {v.get('lr', 5e-4):g} | {v['mean']:.2f} |")
    text = "\n".join(lines) + "\n"
    if summary["test"]:
        rows = {}
        for system in ("lora", "reptilora"):
            folder = summary["test"].get(system) or f"../test/a-{system}"
            rows[system] = json.loads((out / "why" / folder / "results.json").read_text())["rows"]
        cfg = compare.CompareConfig(tasks=TASKS, shots=[0, 1, 5], draws=draws, split="test",
                                    systems=["lora", "reptilora"])
        text += (f"\nTest splits with the best probes (ReptiLoRA: {summary['best_reptilora']}, "
                 f"LoRA: {summary['best_lora']}):\n\n" + compare.markdown_table(rows["lora"] + rows["reptilora"], cfg, REPTILE))
        if summary.get("test_b"):
            b = [r for folder in summary["test_b"].values()
                 for r in json.loads((out / "why" / folder / "results.json").read_text())["rows"]]
            text += (f"\nProtocol (b), the leave-one-out starts with the same probe "
                     f"({summary['best_reptilora']}):\n\n" + compare.markdown_table(rows["lora"] + b, cfg, REPTILE))
    return text


def stage_report(args, out: Path) -> None:
    from mlx_reptilora.evaluation import compare

    missing = []

    def rows_of(name):
        path = out / "test" / name / "results.json"
        if not path.exists():  # a stage cut short (e.g. the GPU lease ended): report what exists
            missing.append(name)
            return []
        return json.loads(path.read_text())["rows"]

    lora = rows_of("a-lora")
    a = lora + rows_of("a-reptilora") + rows_of("a-in-context")
    a += [{**r, "system": "in-context", "same_as": "lora 0-shot (the base model)"} for r in lora if r["shots"] == 0]
    b = [{**r, "system": "reptilora"} for t in TASKS for r in rows_of(f"b-{t}")]
    b += [r for r in a if r["system"] == "lora"]
    cfg = compare.CompareConfig(tasks=TASKS, shots=[0, 1, 5], draws=_test_draws(args), split="test", limit=args.limit)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    table_a = compare.markdown_table(a, cfg, REPTILE)
    table_b = compare.markdown_table(b, replace(cfg, systems=["lora", "reptilora"]), REPTILE)
    gaps = []
    for name, rows in (("a", a), ("b", b)):
        for t in TASKS:
            for k in (0, 1, 5):
                lo = shared.cell(rows, t, "lora", k)
                re = shared.cell(rows, t, "reptilora", k)
                if not (lo and re):
                    continue
                gaps.append({"protocol": name, "task": t, "shots": k, "lora": lo["rougeL"], "reptilora": re["rougeL"],
                             "gain": re["rougeL"]["mid"] - lo["rougeL"]["mid"], "apart": shared.apart(re, lo)})
    for t in TASKS:
        compare.chart(a, t, cfg, report / f"a-{t}.png", REPTILE)
        compare.chart(b, t, replace(cfg, systems=["lora", "reptilora"]), report / f"b-{t}.png", REPTILE)
    gap_lines = ["| protocol | task | shots | ReptiLoRA − LoRA (R-L) | intervals apart |", "| --- | --- | ---: | ---: | --- |"]
    gap_lines += [f"| {g['protocol']} | {g['task']} | {g['shots']} | {g['gain']:+.2f} | {'yes' if g['apart'] else 'no'} |"
                  for g in gaps]
    curves(out, report / "query-loss.png")
    if missing:
        gap_lines += ["", f"Not run (no results): {', '.join(missing)}."]
    why = why_table(out, cfg.draws)
    (report / "tables.md").write_text(f"## Protocol (a)\n\n{table_a}\n## Protocol (b)\n\n{table_b}\n## Gains\n\n"
                                      + "\n".join(gap_lines) + "\n" + (f"\n## Why: probes\n\n{why}" if why else ""))
    (report / "gains.json").write_text(json.dumps(gaps, indent=2))
    print((report / "tables.md").read_text())


def curves(out: Path, path: Path) -> None:
    """Query loss under θ before and after the T-step adaptation, per monitored episode, for each
    all-task run: whether the start gets better, and whether adapting from it still helps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(p for p in (out / "meta").glob("all-*") if (p / "metrics.jsonl").exists())
    if not runs:
        return
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.2), dpi=120, squeeze=False)
    for ax, run in zip(axes[0], runs):
        episodes, before, after = shared.query_losses(run / "metrics.jsonl")
        window = max(1, min(5, len(episodes)))  # monitored episodes rotate through tasks: smooth over a few
        for ys, label in ((before, "before adapting (θ)"), (after, "after T steps")):
            ax.plot(episodes[window - 1:], np.convolve(ys, np.ones(window) / window, mode="valid"), label=label)
        ax.set(title=run.name, xlabel="episode", ylabel="query loss (mean of 5 monitored episodes)")
        ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", default="all", help="all, or comma-separated: meta,tune,test,why,report")
    ap.add_argument("--out", default="runs/experiment")
    ap.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M-Instruct")
    ap.add_argument("--jobs", type=int, default=1, help="meta-training processes at once")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="meta-training variants to tune over")
    ap.add_argument("--loo-episodes", type=int, default=None, help="episodes of the leave-one-out runs [500]")
    ap.add_argument("--tune-draws", type=int, default=1, help="draws of the shots per tuning cell")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16, help="sequences generated together")
    ap.add_argument("--limit", type=int, default=None, help="first N examples of each split (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a minutes-long smoke run of every stage")
    args = ap.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or "paper" not in args.variants:
        ap.error(f"--variants: choose among {', '.join(VARIANTS)}, paper included")
    order = ["meta", "tune", "test", "why", "report"]
    stages = order if args.stage == "all" else args.stage.split(",")
    if any(s not in order for s in stages):
        ap.error(f"--stage: all, or comma-separated stages among {', '.join(order)}")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    import mlx_reptilora  # noqa: F401 -- BLAS before mlx.core

    out = Path(args.out)
    for s in stages:
        t = time.time()
        {"meta": stage_meta, "tune": stage_tune, "test": stage_test, "why": stage_why, "report": stage_report}[s](args, out)
        print(f"[{s}] finished in {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
