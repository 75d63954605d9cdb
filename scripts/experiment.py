"""Meta-learners on tasks they never saw: leave-one-out over tasks or groups (issues #14, #15).

    python scripts/experiment.py --plan learned-adaptation [--stage meta,test,report] [--jobs N]
                                 [--deadline S] [--out runs/<plan>]

A plan (PLANS below) names the task pool, what a fold holds out (one task, or one group of tasks
that share documents), the learners (meta-train settings), the baselines, and rows of earlier runs
it compares with without re-running them. Stages skip finished work, so a re-run after a lost
lease carries on where it stopped:
  meta    one start per (learner, fold), meta-trained on the fold's training tasks, --jobs at a time.
          --deadline S stops the runs still going after S seconds (each checkpoints on SIGINT), and
          each such start is then finished at the episode it reached (`meta-train --resume
          --episodes N`); the report says how many episodes every start had
  test    each start adapted with its own recipe on its held-out tasks' shots, the test split
          scored (0/1/5 shots, 3 draws pooled, 95% bootstrap intervals); the baselines likewise
  report  tables, the targets' checks (adapted vs the un-adapted start; each learner vs LoRA),
          ROUGE-L-against-shots charts, query-loss curves, and time and tokens per learner

--quick runs every stage at toy size on a CPU (seconds per job), for tests and smoke runs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TASKS = ["aclsum-challenge", "aclsum-approach", "aclsum-outcome", "aclsum-title", "pydoc"]


@dataclass
class Plan:
    about: str
    pool: list[str]
    hold_out: str  # "task": each fold leaves one task out; "group": each fold leaves a whole group out
    common: dict  # meta-train settings (YAML keys) every learner shares
    learners: dict[str, dict]  # label -> its own meta-train settings
    baselines: dict[str, dict] = field(default_factory=dict)  # label -> compare settings (standard start)
    references: dict[str, tuple[str, str]] = field(default_factory=dict)  # label -> (rows JSON, system)
    variants: dict[str, dict] = field(default_factory=dict)  # label -> compare flags every start is also tested with
    shots: list[int] = field(default_factory=lambda: [0, 1, 5])
    draws: int = 3


# Issue #14: the learners that learn how to adapt, on protocol (b) of docs/RESULTS.md (one fold per
# task of the five, the start meta-trained on the other four). The support set is the test's
# largest shot count and the inner loop is the one the start will be adapted with: 3 SGD steps
# from lr 0.1 (benchmarks/RESULTS.md, the SGD learning-rate probe), learned from there. Reptile's
# and LoRA's rows are issue #8's (the same test splits, seeds, evaluation code and base model).
PLANS = {
    "learned-adaptation": Plan(
        about="issue #14: Meta-SGD and MAML++ on the five offline tasks, leave one task out",
        pool=DEFAULT_TASKS, hold_out="task",
        common={"support": 5, "query": 8, "inner_steps": 3, "inner_lr": 0.1, "inner_optimizer": "sgd",
                "outer_lr": 1e-3, "meta_batch": 1, "episodes": 100, "max_length": 512, "eval_every": 5,
                "checkpoint_every": 5, "keep_checkpoints": 2},
        learners={"meta-sgd": {"learner": "meta-sgd"},
                  "maml++": {"learner": "maml", "lslr": True, "multi_step_loss": 50, "first_order_episodes": 20}},
        references={"reptile (#8)": ("docs/results/protocol-b.json", "reptilora"),
                    "lora (#8)": ("docs/results/protocol-a.json", "lora")},
        # adapt's own guard against over- and under-adapting: hold each shot out, choose 0..2T steps
        variants={"steps auto": {"steps": "auto", "shots": "5"}}),
}


def folds(plan: Plan) -> dict[str, tuple[list[str], list[str]]]:
    """fold name -> (training tasks, held-out tasks)."""
    if plan.hold_out == "task":
        return {t: ([x for x in plan.pool if x != t], [t]) for t in plan.pool}
    from mlx_reptilora.data import tasks

    groups = tasks.groups(plan.pool)
    return {g: ([x for x in plan.pool if x not in held], held) for g, held in groups.items()}


def _cli(*argv) -> list[str]:
    return [sys.executable, "-m", "mlx_reptilora", *map(str, argv)]


def run_jobs(jobs: list[tuple[str, list[str], Path]], n: int, deadline: float | None = None, what: str = "") -> dict:
    """Run (name, argv, log) jobs n at a time. At `deadline` (time.time()), the running ones get
    SIGINT (meta-train checkpoints and stops) and the rest are not started. {name: exit code}."""
    todo, running, codes = list(jobs), [], {}
    while todo or running:
        while todo and len(running) < n and (deadline is None or time.time() < deadline):
            name, argv, log = todo.pop(0)
            log.parent.mkdir(parents=True, exist_ok=True)
            print(f"[{what}] start {name}", flush=True)
            running.append((name, subprocess.Popen(argv, stdout=open(log, "a"), stderr=subprocess.STDOUT), time.time()))
        if deadline is not None and time.time() >= deadline:
            for _, proc, _ in running:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            todo.clear()
        time.sleep(1)
        for item in list(running):
            name, proc, t0 = item
            if proc.poll() is not None:
                running.remove(item)
                codes[name] = proc.returncode
                print(f"[{what}] {name}: exit {proc.returncode} after {time.time() - t0:.0f} s", flush=True)
    return codes


def _latest_episode(folder: Path) -> int | None:
    from mlx_reptilora.meta import checkpoint

    path = checkpoint.latest(folder / "checkpoints") if (folder / "checkpoints").exists() else None
    return checkpoint.load(path)[0]["episode"] if path else None


def stage_meta(plan: Plan, args, out: Path) -> None:
    jobs, configs = [], {}
    for learner, settings in plan.learners.items():
        for fold, (train, _) in folds(plan).items():
            folder = out / "meta" / learner / fold
            if (folder / "adapters.safetensors").exists():
                continue
            settings_all = {**plan.common, **settings, "tasks": ",".join(train), "out": str(folder),
                            "seed": args.seed, "quiet": True, **args.overrides}
            if args.model:
                settings_all["model"] = args.model
            cfg = out / "meta" / learner / f"{fold}.yaml"
            cfg.parent.mkdir(parents=True, exist_ok=True)
            cfg.write_text(yaml.safe_dump({k.replace("_", "-"): v for k, v in settings_all.items()}))
            configs[f"{learner}/{fold}"] = (cfg, folder)
            resume = ["--resume"] if _latest_episode(folder) is not None else []
            jobs.append((f"{learner}/{fold}", _cli("meta-train", "-c", cfg, *resume), out / "meta" / learner / f"{fold}.log"))
    deadline = time.time() + args.deadline if args.deadline else None
    run_jobs(jobs, args.jobs, deadline, "meta")
    # Runs stopped by the deadline: finish each start at the episode it reached.
    finish = []
    for name, (cfg, folder) in configs.items():
        reached = _latest_episode(folder)
        if not (folder / "adapters.safetensors").exists() and reached:
            finish.append((name, _cli("meta-train", "-c", cfg, "--resume", "--episodes", reached), folder.with_suffix(".log")))
    if finish:
        run_jobs(finish, args.jobs, None, "finish")
    missing = [n for n, (_, f) in configs.items() if not (f / "adapters.safetensors").exists()]
    if missing:
        print(f"[meta] no start yet for {missing}: re-run to continue them", flush=True)


def _compare_jobs(plan: Plan, args, out: Path) -> list:
    jobs = []
    common = ["--split", "test", "--shots", ",".join(map(str, plan.shots)), "--draws", 1 if args.quick else plan.draws,
              "--seed", args.seed, "--batch-size", args.batch_size, "-q"] + (["--model", args.model] if args.model else [])
    if args.limit:
        common += ["--limit", args.limit]
    for fold, (_, held) in folds(plan).items():
        starts = {learner: out / "meta" / learner / fold for learner in plan.learners}
        for label, start in starts.items():
            dest = out / "test" / label / fold
            if (start / "adapters.safetensors").exists() and not (dest / "results.json").exists():
                jobs.append((f"{label}/{fold}", _cli("compare", "--adapters", start, "--systems", "reptilora",
                                                     "--tasks", ",".join(held), "--out", dest, *common),
                             dest.with_suffix(".log")))
            for variant, over in plan.variants.items():
                dest = out / "test" / f"{label}+{variant.replace(' ', '-')}" / fold
                flags = [x for k, v in over.items() for x in (f"--{k.replace('_', '-')}", v)]
                if (start / "adapters.safetensors").exists() and not (dest / "results.json").exists():
                    jobs.append((f"{label}+{variant}/{fold}", _cli("compare", "--adapters", start, "--systems", "reptilora",
                                                                   "--tasks", ",".join(held), "--out", dest, *common, *flags),
                                 dest.with_suffix(".log")))
        any_start = next((s for s in starts.values() if (s / "adapters.safetensors").exists()), None)
        for label, over in plan.baselines.items():  # LoRA's start reads only the rank etc. from the start
            dest = out / "test" / label / fold
            if any_start and not (dest / "results.json").exists():
                flags = [x for k, v in over.items() for x in (f"--{k.replace('_', '-')}", v)]
                jobs.append((f"{label}/{fold}", _cli("compare", "--adapters", any_start, "--tasks", ",".join(held),
                                                     "--out", dest, *common, *flags), dest.with_suffix(".log")))
    return jobs


def stage_test(plan: Plan, args, out: Path) -> None:
    jobs = _compare_jobs(plan, args, out)
    deadline = time.time() + args.deadline if args.deadline else None
    run_jobs(jobs, args.jobs, deadline, "test")


# -- the report -------------------------------------------------------------------------------

def rows_of(plan: Plan, out: Path) -> list[dict]:
    """Every test row, its "system" the learner's or baseline's label."""
    rows = []
    variants = [f"{x} ({v})" for x in plan.learners for v in plan.variants]
    for label in [*plan.learners, *plan.baselines, *variants]:
        folder = label.replace(" (", "+").rstrip(")").replace(" ", "-") if label in variants else label
        for path in sorted((out / "test" / folder).glob("*/results.json")):
            result = json.loads(path.read_text())
            rows += [{**r, "system": label if label in plan.learners or label in variants
                      else f"{label}" if r["system"] == "lora"
                      else f"{label}:{r['system']}", "fold": path.parent.name} for r in result["rows"]]
    for label, (file, system) in plan.references.items():
        ref = json.loads((ROOT / file).read_text())
        rows += [{**r, "system": label, "reference": file} for r in ref if r["system"] == system and r["task"] in plan.pool]
    return rows


def cell(rows, task, system, k):
    return next((r for r in rows if (r["task"], r["system"], r["shots"]) == (task, system, k)), None)


def _fmt(r, m="rougeL"):
    return f"{r[m]['mid']:.2f} [{r[m]['low']:.1f}, {r[m]['high']:.1f}]" if r else "–"


def table(rows, plan: Plan, systems: list[str]) -> str:
    lines = ["| task | shots | " + " | ".join(f"{s} R-L" for s in systems) + " | " + " | ".join(f"{s} R-1" for s in systems)
             + " | " + " | ".join(f"{s} R-2" for s in systems) + " |", "|" + " --- |" * (2 + 3 * len(systems))]
    for t in plan.pool:
        for k in plan.shots:
            cells = [_fmt(cell(rows, t, s, k), m) for m in ("rougeL", "rouge1", "rouge2") for s in systems]
            lines.append(f"| {t} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def checks(rows, plan: Plan, learners: list[str], lora: str | None) -> list[dict]:
    """Per learner, task and k > 0: the adapted start against the un-adapted one (its 0-shot row),
    and against LoRA at the same k; 'apart' means the 95% intervals do not overlap. A variant
    ("maml++ (steps auto)") is held against its learner's un-adapted start."""
    found = []
    for s in learners:
        for t in plan.pool:
            zero = cell(rows, t, s, 0) or cell(rows, t, s.split(" (")[0], 0)
            for k in (k for k in plan.shots if k):
                r = cell(rows, t, s, k)
                if not (r and zero):
                    continue
                item = {"system": s, "task": t, "shots": k, "rougeL": r["rougeL"]["mid"],
                        "vs_start": r["rougeL"]["mid"] - zero["rougeL"]["mid"],
                        "below_start_apart": r["rougeL"]["high"] < zero["rougeL"]["low"]}
                base = cell(rows, t, lora, k) if lora else None
                if base:
                    item.update(vs_lora=r["rougeL"]["mid"] - base["rougeL"]["mid"],
                                lora_apart=r["rougeL"]["low"] > base["rougeL"]["high"]
                                or base["rougeL"]["low"] > r["rougeL"]["high"])
                found.append(item)
    return found


def cost(plan: Plan, out: Path) -> list[dict]:
    """Per learner and fold: episodes, time in episodes, tokens, peak memory (from metrics.jsonl)."""
    found = []
    for learner in plan.learners:
        for fold in folds(plan):
            path = out / "meta" / learner / fold / "metrics.jsonl"
            if not path.exists():
                continue
            recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            recs = [r for r in recs if "seconds" in r]
            found.append({"learner": learner, "fold": fold, "episodes": len(recs),
                          "seconds": round(sum(r["seconds"] for r in recs), 1),
                          "tokens": sum(r["tokens"] for r in recs),
                          "peak_memory_gb": max((r.get("peak_memory_gb", 0) for r in recs), default=0)})
    return found


def charts(rows, plan: Plan, systems: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for t in plan.pool:
        fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
        for j, s in enumerate(systems):
            pts = [(k, cell(rows, t, s, k)) for k in plan.shots]
            pts = [(k, r) for k, r in pts if r]
            if not pts:
                continue
            xs = [plan.shots.index(k) + (j - len(systems) / 2) * 0.04 for k, _ in pts]
            ys = [r["rougeL"]["mid"] for _, r in pts]
            err = [[y - r["rougeL"]["low"] for y, (_, r) in zip(ys, pts)], [r["rougeL"]["high"] - y for y, (_, r) in zip(ys, pts)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=s)
        ax.set_xticks(range(len(plan.shots)), [f"{k}-shot" for k in plan.shots])
        ax.set(title=f"{t} (held out)", ylabel="ROUGE-L F (x100)")
        ax.legend(frameon=False, fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{t}.png")
        plt.close(fig)
    runs = [(learner, fold, out.parent / "meta" / learner / fold / "metrics.jsonl") for learner in plan.learners
            for fold in folds(plan)]
    fig, axes = plt.subplots(1, len(plan.learners), figsize=(4.5 * len(plan.learners), 3.2), dpi=120, squeeze=False)
    for ax, learner in zip(axes[0], plan.learners):
        for name, fold, path in runs:
            if name != learner or not path.exists():
                continue
            recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            recs = [r for r in recs if "query_loss_after" in r]
            line = ax.plot([r["episode"] for r in recs], [r["query_loss_after"] for r in recs], label=f"without {fold}")
            ax.plot([r["episode"] for r in recs], [r["query_loss_before"] for r in recs], ls=":", color=line[0].get_color())
        ax.set(title=f"{learner}: query loss (dotted: θ, solid: adapted)", xlabel="episode", ylabel="loss")
        ax.legend(frameon=False, fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "query-loss.png")
    plt.close(fig)


def stage_report(plan: Plan, args, out: Path) -> None:
    rows = rows_of(plan, out)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    learners = [s for s in plan.learners] + [f"{x} ({v})" for x in plan.learners for v in plan.variants]
    systems = learners + [s for s in plan.references] + [s for s in plan.baselines]
    lora = next((s for s in systems if s.startswith("lora")), None)
    found = checks(rows, plan, learners + [s for s in plan.references if not s.startswith("lora")], lora)
    spent = cost(plan, out)
    lines = [f"# {plan.about}", "", table(rows, plan, systems),
             "ROUGE F x100, bootstrap mean [95% interval]; k > 0: the draws pooled; test splits; every start "
             "adapted with its own recipe.", "",
             "| system | task | shots | R-L | − un-adapted start | below it, intervals apart | − LoRA | apart from LoRA |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: | --- |"]
    for c in found:
        lines.append(f"| {c['system']} | {c['task']} | {c['shots']} | {c['rougeL']:.2f} | {c['vs_start']:+.2f} | "
                     f"{'yes' if c['below_start_apart'] else 'no'} | {c.get('vs_lora', float('nan')):+.2f} | "
                     f"{'yes' if c.get('lora_apart') else 'no'} |")
    lines += ["", "| learner | fold (held out) | episodes | time in episodes (s) | tokens | peak memory (GB) |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {c['learner']} | {c['fold']} | {c['episodes']} | {c['seconds']} | {c['tokens']:,} | {c['peak_memory_gb']} |"
              for c in spent]
    (report / "tables.md").write_text("\n".join(lines) + "\n")
    (report / "report.json").write_text(json.dumps({"rows": rows, "checks": found, "cost": spent}, indent=2))
    charts(rows, plan, systems, report)
    print((report / "tables.md").read_text())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plan", default="learned-adaptation", choices=sorted(PLANS))
    ap.add_argument("--stage", default="meta,test,report", help="comma-separated: meta, test, report")
    ap.add_argument("--out", default=None, help="default: runs/<plan>")
    ap.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M-Instruct")
    ap.add_argument("--jobs", type=int, default=1, help="processes at once (meta-training runs, compare runs)")
    ap.add_argument("--deadline", type=float, default=None, help="seconds each stage may run (lent GPU time)")
    ap.add_argument("--batch-size", type=int, default=16, help="sequences generated together")
    ap.add_argument("--limit", type=int, default=None, help="first N test examples per task (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=None, help="meta-training episodes of every start [the plan's]")
    ap.add_argument("--quick", action="store_true", help="toy sizes on a CPU: a smoke run of every stage")
    args = ap.parse_args(argv)
    plan = PLANS[args.plan]
    args.overrides = ({"episodes": 2, "support": 2, "query": 2, "inner_steps": 1, "max_length": 96, "micro_batch": 2,
                       "eval_every": 1, "checkpoint_every": 1} if args.quick else {})
    if args.episodes:
        args.overrides["episodes"] = args.episodes
    if args.quick:
        args.limit = args.limit or 3
    out = Path(args.out or f"runs/{args.plan}")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    stages = {"meta": stage_meta, "test": stage_test, "report": stage_report}
    for s in args.stage.split(","):
        if s not in stages:
            ap.error(f"--stage: comma-separated among {', '.join(stages)}")
    for s in args.stage.split(","):
        t = time.time()
        stages[s](plan, args, out if s != "report" else out)
        print(f"[{s}] finished in {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
