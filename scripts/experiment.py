"""Meta-learners on tasks they never saw: leave-one-out over tasks or groups (issues #14, #15).

    python scripts/experiment.py --plan learned-adaptation [--stage meta,test,report] [--jobs N]
                                 [--deadline S] [--out runs/<plan>]

A plan (PLANS below) names the task pool, what a fold holds out (one task, or one group of tasks
that share documents), the learners (meta-train settings), the baselines, and rows of earlier runs
it compares with without re-running them. Stages skip finished work, so a re-run after a lost
lease carries on where it stopped:
  meta    one start per (learner, fold), meta-trained on the fold's training tasks, --jobs at a time;
          learners marked `validate` meta-validate on the fold's validation group (never trained on,
          never tested on) and keep the best θ and recipe.
          --deadline S stops the runs still going after S seconds (each checkpoints on SIGINT), and
          each such start is then finished at the episode it reached (`meta-train --resume
          --episodes N`); the report says how many episodes every start had
  tune    baselines with `tune_steps`: each steps value on the fold's validation tasks (valid split,
          1 and 5 shots); the best mean ROUGE-L is the one tested
  test    each start adapted with its own recipe on its held-out tasks' shots, the test split
          scored (0/1/5 shots, 3 draws pooled, 95% bootstrap intervals); the baselines likewise
  report  tables, the targets' checks (adapted vs the un-adapted start; each learner vs LoRA),
          ROUGE-L-against-shots charts, query-loss curves, and time and tokens per learner

--quick runs every stage at toy size on a CPU (seconds per job), for tests and smoke runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from fnmatch import fnmatch
from pathlib import Path
from typing import NamedTuple

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing: the package beside it
from mlx_reptilora.evaluation.metrics import HEADLINE  # noqa: E402
from mlx_reptilora.evaluation.report import apart, cell, fmt, query_losses, records  # noqa: E402
from mlx_reptilora.meta.start import finished  # noqa: E402 -- a start of any kind: its arrays are written last
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
    valid_group: bool = False  # group folds: the next group validates (never trained or tested on)
    fixed_folds: dict = field(default_factory=dict)  # fold name -> Fold, instead of folds made from the pool


class Fold(NamedTuple):
    train: list[str]
    test: list[str]
    valid: list[str]


PAPER_REPTILE: dict = {}  # the defaults are the paper's (configs/paper.yaml)
# configs/recommended.yaml's learner settings (its tasks, validation tasks and folder are the plan's)
RECOMMENDED = {k.replace("-", "_"): v for k, v in
               yaml.safe_load((ROOT / "mlx_reptilora" / "configs" / "recommended.yaml").read_text()).items()
               if k not in ("tasks", "valid-tasks", "out")}
DEFAULTS_TRAIN = ["aclsum-challenge", "aclsum-approach", "aclsum-outcome", "aclsum-title", "pydoc", "pydoc-name"]
SECOND_ORDER = {"support": 5, "query": 8, "inner_steps": 3, "inner_lr": 0.1, "inner_optimizer": "sgd", "outer_lr": 1e-3}
VALIDATE = {"validate": True, "valid_every": 50}
# issue #28's starts also learn on validation whether content-free calibration helps their choice tasks
VALIDATE_28 = {**VALIDATE, "valid_calibrate": True}


POOL_61 = ["aclsum-challenge", "aclsum-approach", "aclsum-outcome", "aclsum-title", "pydoc", "pydoc-name", "numpy-doc",
           "numpy-name", "wordnet-define", "wordnet-name", "wordnet-pos", "wordnet-domain", "foldoc-name",
           "foldoc-define", "jargon-name", "manpage-summary", "manpage-name", "pandas-doc", "pandas-name",
           "matplotlib-doc", "matplotlib-name", "vera-expand", "vera-acronym", "elements-symbol", "elements-name",
           "elements-number", "devil-define", "devil-name", "gcide-define", "gcide-name", "gcide-pos", "mime-kind",
           "mime-type", "freedict-fra-eng", "freedict-eng-fra", "freedict-spa-eng", "freedict-eng-spa",
           "freedict-ita-eng", "freedict-eng-ita", "freedict-por-eng", "freedict-eng-por", "freedict-swe-eng",
           "freedict-eng-swe", "freedict-afr-eng", "freedict-eng-afr", "freedict-cym-eng", "freedict-eng-cym",
           "freedict-lat-eng", "freedict-eng-lat", "iso-country-language", "iso-language-language",
           "iso-subdivision-country", "unicode-name", "unicode-character", "unicode-category", "vader-polarity",
           "afinn-polarity", "afinn-strength", "emoji-name", "emoji-from-name", "emoji-name-language"]
HELD = {"sentiment": ["vader-polarity", "afinn-polarity", "afinn-strength"],
        "iso-codes": ["iso-country-language", "iso-language-language", "iso-subdivision-country"],
        "numpy": ["numpy-doc", "numpy-name"],
        "wordnet": ["wordnet-define", "wordnet-name", "wordnet-pos", "wordnet-domain"]}
VALID_28 = ["mime-kind", "mime-type", "manpage-summary", "manpage-name"]  # media types (choice), man pages
GCIDE = ["gcide-define", "gcide-name", "gcide-pos"]


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
                "outer_lr": 1e-3, "meta_batch": 1, "episodes": 100, "max_length": 512, "micro_batch": 4, "eval_every": 5,
                "checkpoint_every": 5, "keep_checkpoints": 2},
        learners={"meta-sgd": {"learner": "meta-sgd"},
                  "maml++": {"learner": "maml", "lslr": True, "multi_step_loss": 50, "first_order_episodes": 20}},
        references={"reptile (#8)": ("docs/results/protocol-b.json", "reptilora"),
                    "lora (#8)": ("docs/results/protocol-a.json", "lora")},
        # adapt's own guard against over- and under-adapting: hold each shot out, choose 0..2T steps
        variants={"steps auto": {"steps": "auto", "shots": "5"}}),
    # Issue #15: every learner on the 15-task pool, leave one group out; each fold's next group
    # meta-validates. Reptile runs twice: the paper's recipe, and meta-validated.
    "pool": Plan(
        about="issue #15: every learner on the 15-task pool, leave one group out",
        pool=["aclsum-challenge", "aclsum-approach", "aclsum-outcome", "aclsum-title", "pydoc", "pydoc-name",
              "numpy-doc", "numpy-name", "wordnet-define", "wordnet-name", "foldoc-name", "foldoc-define",
              "jargon-name", "manpage-summary", "manpage-name"],
        hold_out="group", valid_group=True,
        # 150 episodes, as protocol (b) of issue #8: seven learners x six folds fit a lease per fold or two
        common={"episodes": 150, "max_length": 512, "eval_every": 10, "checkpoint_every": 10, "keep_checkpoints": 2,
                "micro_batch": 8, "valid_limit": 32},
        learners={"reptile": PAPER_REPTILE,
                  "reptile-validated": {**PAPER_REPTILE, **VALIDATE},
                  "fomaml": {"learner": "fomaml", "query": 32, **VALIDATE},
                  "meta-lora": {"learner": "fomaml", "support": 8, "query": 8, "inner_steps": 3, "meta_batch": 4,
                                "outer_lr": 3e-4, **VALIDATE},
                  "maml": {"learner": "maml", **SECOND_ORDER, **VALIDATE},
                  "meta-sgd": {"learner": "meta-sgd", **SECOND_ORDER, **VALIDATE},
                  "maml++": {"learner": "maml", "lslr": True, "multi_step_loss": 50, "first_order_episodes": 20,
                             **SECOND_ORDER, **VALIDATE}},
        baselines={"lora": {"systems": "lora", "tune_steps": [7, 21]},
                   # LoRA with more data, its steps tuned at those shot counts (7 steps over 50 shots underfit)
                   "lora-data": {"systems": "lora", "shots": "20,50", "tune_steps": [7, 21, 63], "tune_shots": [20, 50]},
                   "in-context": {"systems": "in-context", "shots": "1,5", "in_context_length": 2048,
                                  "batch_size": 16}}),
    # The README's defaults on a group no start saw: -c recommended as shipped (trained on its six
    # PyPI tasks, validated on numpy), beside the paper's Reptile with and without the same validation,
    # and LoRA with its steps tuned on the validation group; tested on WordNet.
    "defaults": Plan(
        about="the README's defaults (-c recommended; the paper's Reptile with and without meta-validation) "
              "against LoRA on a group no start saw",
        pool=DEFAULTS_TRAIN + ["numpy-doc", "numpy-name", "wordnet-define", "wordnet-name"],
        hold_out="group",
        fixed_folds={"wordnet": Fold(DEFAULTS_TRAIN, ["wordnet-define", "wordnet-name"], ["numpy-doc", "numpy-name"])},
        common={"episodes": 150, "max_length": 512, "eval_every": 10, "checkpoint_every": 10, "keep_checkpoints": 2,
                "micro_batch": 8, "valid_limit": 32},
        learners={"recommended": {**RECOMMENDED, "validate": True},
                  "reptile": PAPER_REPTILE,
                  "reptile-validated": {**PAPER_REPTILE, **VALIDATE}},
        baselines={"lora": {"systems": "lora", "tune_steps": [7, 21]}}),
    # Issue #28: the starts that depend on the task, on the 61-task pool, leave one group out: two choice
    # groups and two generation groups held out, the same two groups (one of each kind) validating every
    # fold. WordNet's fold also leaves out GCIDE, whose dictionary defines the same words.
    "task-starts": Plan(
        about="issue #28: hyper and ABMLL against MAML++, Reptile, LoRA and in-context, leave one group out",
        pool=POOL_61, hold_out="group",
        fixed_folds={g: Fold([t for t in POOL_61 if t not in HELD[g] + VALID_28 + (GCIDE if g == "wordnet" else [])],
                             HELD[g], VALID_28) for g in HELD},
        common={"episodes": 150, "max_length": 512, "eval_every": 10, "checkpoint_every": 10, "keep_checkpoints": 2,
                "micro_batch": 8, "valid_limit": 32},
        learners={"maml++": {"learner": "maml", "lslr": True, "multi_step_loss": 50, "first_order_episodes": 20,
                             **SECOND_ORDER, **VALIDATE_28},
                  "hyper": {"learner": "hyper", "lslr": True, "multi_step_loss": 50, "first_order_episodes": 20,
                            **SECOND_ORDER, **VALIDATE_28},
                  # the generator's alternative: a head per kind writing one rank's row at a time (Text-to-LoRA's S)
                  "hyper-rank": {"learner": "hyper", "hyper_generator": "rank", "lslr": True, "multi_step_loss": 50,
                                 "first_order_episodes": 20, **SECOND_ORDER, **VALIDATE_28},
                  # log σ's own outer step: at the outer 3e-4 the prior's width cannot move (RESULTS, abmll-small)
                  "abmll": {"learner": "abmll", **{k: v for k, v in SECOND_ORDER.items() if k != "inner_optimizer"},
                            "abmll_sigma_lr": 1e-2, **VALIDATE_28},
                  "reptile": PAPER_REPTILE},
        baselines={"lora": {"systems": "lora", "tune_steps": [7, 21]},
                   "lora-data": {"systems": "lora", "shots": "20,50", "tune_steps": [7, 21, 63], "tune_shots": [20, 50]},
                   "in-context": {"systems": "in-context", "shots": "1,5", "in_context_length": 2048,
                                  "batch_size": 16},
                   # contextual calibration (evaluate --calibrate): whether it takes out the label prior
                   # that one shot imposed on the sentiment fold; LoRA keeps the uncalibrated tuning
                   "lora (calibrated)": {"systems": "lora", "tune_steps": "lora", "calibrate": "content-free",
                                         "only": "choice"},
                   "in-context (calibrated)": {"systems": "in-context", "shots": "1,5", "in_context_length": 2048,
                                               "batch_size": 16, "calibrate": "content-free", "only": "choice"}},
        variants={"+ in-context": {"systems": "meta+in-context", "shots": "1,5", "in_context_length": 2048},
                  "calibrated": {"calibrate": "content-free", "only": "choice"},
                  # what each start's meta-validation chose, per shot count (--valid-calibrate)
                  "calibration validated": {"calibrate": "auto", "only": "choice"}}),
}


def tested(plan: Plan, names=None) -> dict[str, tuple[str, str, dict]]:
    """Every tested system of the learners (`names`, default all): label -> (learner, its test
    folder under test/, extra compare settings). A variant is "maml++ (steps auto)" in test/maml++
    +steps-auto/."""
    names = list(names or plan.learners)
    out = {x: (x, x, {"calibrate": "none"}) for x in names}  # a start as it is; its variants say otherwise
    out.update({f"{x} ({v})": (x, f"{x}+{v.replace(' ', '-')}", over) for x in names for v, over in plan.variants.items()})
    return out


def key(row: dict) -> str:
    """The score a row is judged by: its task's headline (ROUGE-L, exact match, a choice task's
    accuracy); rows written before tasks had metrics are ROUGE."""
    return HEADLINE[row.get("metric", "rouge")][0]


def mid(row: dict) -> float:
    return row[key(row)]["mid"]


def _deadline(args) -> float | None:
    return time.time() + args.deadline if args.deadline else None


def folds(plan: Plan, only: list[str] | None = None) -> dict[str, Fold]:
    """fold name -> Fold(training tasks, held-out tasks, validation tasks)."""
    if plan.fixed_folds:
        found = dict(plan.fixed_folds)
    elif plan.hold_out == "task":
        found = {t: Fold([x for x in plan.pool if x != t], [t], []) for t in plan.pool}
    else:
        from mlx_reptilora.data import tasks

        groups = tasks.groups(plan.pool)
        names = list(groups)
        found = {}
        for i, g in enumerate(names):
            valid = groups[names[(i + 1) % len(names)]] if plan.valid_group else []
            found[g] = Fold([x for x in plan.pool if x not in groups[g] and x not in valid], groups[g], valid)
    return {k: v for k, v in found.items() if not only or k in only}


def _cli(*argv) -> list[str]:
    return [sys.executable, "-m", "mlx_reptilora", *map(str, argv)]


GRACE = 60  # seconds a job has after SIGINT (a checkpoint to write) before SIGTERM, and again before SIGKILL


def heed_sigint() -> None:
    """In a child: SIGINT back to its default, so Python turns it into KeyboardInterrupt (meta-train's
    checkpoint-and-stop). A driver started with `&` from a script (scripts/device/detached.sh) has it
    ignored, children inherit that, and the deadline's SIGINT would go unheard until SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_jobs(jobs: list[tuple[str, list[str], Path]], n: int, deadline: float | None = None, what: str = "") -> dict:
    """Run (name, argv, log) jobs n at a time; {name: (exit code, stopped by the deadline)}. At
    `deadline` (time.time()) the running ones get SIGINT once (meta-train checkpoints and stops; a
    second one would cut that checkpoint short), SIGTERM GRACE s later, SIGKILL GRACE s after that
    (a process compiling kernels only sees signals between them); the rest are not started."""
    todo, running, codes = list(jobs), [], {}
    while todo or running:
        while todo and len(running) < n and (deadline is None or time.time() < deadline):
            name, argv, log = todo.pop(0)
            log.parent.mkdir(parents=True, exist_ok=True)
            print(f"[{what}] start {name}", flush=True)
            with open(log, "a") as f:  # the child keeps its own descriptor
                running.append([name, subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, preexec_fn=heed_sigint),
                                time.time(), None])
        now = time.time()
        if deadline is not None and now >= deadline:
            todo.clear()
            for job in running:
                proc, signalled = job[1], job[3]
                if proc.poll() is not None:
                    continue
                if signalled is None:
                    proc.send_signal(signal.SIGINT)
                    job[3] = now
                elif now - signalled > 2 * GRACE:
                    proc.kill()
                elif now - signalled > GRACE:
                    proc.terminate()
        time.sleep(1)
        for job in list(running):
            name, proc, t0, signalled = job
            if proc.poll() is not None:
                running.remove(job)
                codes[name] = (proc.returncode, signalled is not None)
                print(f"[{what}] {name}: exit {proc.returncode} after {time.time() - t0:.0f} s"
                      + (" (stopped by the deadline)" if signalled else ""), flush=True)
    return codes


def _latest_episode(folder: Path) -> int | None:
    from mlx_reptilora.meta import checkpoint

    path = checkpoint.latest(folder / "checkpoints") if (folder / "checkpoints").exists() else None
    return json.loads((path / checkpoint.INFO).read_text())["episode"] if path else None  # latest() loaded it


def stage_meta(plan: Plan, args, out: Path) -> None:
    jobs, configs = [], {}
    for learner, settings in learners(plan, args).items():
        for fold, f in folds(plan, args.folds).items():
            folder = out / "meta" / learner / fold
            if finished(folder) or any(fnmatch(f"{learner}/{fold}", x) for x in args.skip):
                continue
            settings_all = {**plan.common, **settings, "tasks": ",".join(f.train), "out": str(folder),
                            "seed": args.seed, "quiet": True, **args.overrides}
            if settings_all.pop("validate", False) and f.valid:
                settings_all["valid_tasks"] = ",".join(f.valid)
            else:
                settings_all = {k: v for k, v in settings_all.items() if not k.startswith("valid_")}
            if args.model:
                settings_all["model"] = args.model
            cfg = out / "meta" / learner / f"{fold}.yaml"
            cfg.parent.mkdir(parents=True, exist_ok=True)
            cfg.write_text(yaml.safe_dump({k.replace("_", "-"): v for k, v in settings_all.items()}))
            configs[f"{learner}/{fold}"] = (cfg, folder)
            resume = ["--resume"] if _latest_episode(folder) is not None else []
            jobs.append((f"{learner}/{fold}", _cli("meta-train", "-c", cfg, *resume), out / "meta" / learner / f"{fold}.log"))
    deadline = _deadline(args)
    codes = run_jobs(jobs, args.jobs, deadline, "meta")
    # Runs the deadline stopped (only those: a run that failed on its own is reported, not frozen)
    # are finished at the episode they reached; each is meta-validated there if it validates.
    finish, failed = [], []
    for name, (code, stopped) in codes.items():
        cfg, folder = configs[name]
        reached = _latest_episode(folder)
        if stopped and reached and not finished(folder):
            finish.append((name, _cli("meta-train", "-c", cfg, "--resume", "--episodes", reached), folder.with_suffix(".log")))
        elif code != 0 and not stopped:
            failed.append(name)
    if finish:
        run_jobs(finish, args.jobs, deadline + 2 * GRACE if deadline else None, "finish")
    missing = [n for n, (_, f) in configs.items() if not finished(f)]
    if failed:
        print(f"[meta] FAILED (see their logs): {failed}", flush=True)
    if missing:
        print(f"[meta] no start yet for {missing}: re-run to continue them", flush=True)


TUNE_SHOTS = [1, 5]  # where a baseline's steps are tuned unless it names its own `tune_shots`


def _passed_on(over: dict) -> dict:
    """A baseline's settings that are compare flags (not the driver's own keys)."""
    return {k: v for k, v in over.items() if k not in ("tune_steps", "tune_shots", "shots", "only")}


def _held(f: Fold, over: dict) -> list[str]:
    """The fold's held-out tasks a system is tested on: all, or those of the kind its `only` names."""
    return [t for t in f.test if "only" not in over or _kind(t) == over["only"]]


@functools.cache
def _kind(task: str) -> str:
    """A task's kind, loaded once however many systems ask (every learner and variant of a fold)."""
    from mlx_reptilora.data import tasks

    return tasks.load(task).kind


def _flags(over: dict) -> list:
    return [x for k, v in over.items() for x in (f"--{k.replace('_', '-')}", v)]


def _common(plan: Plan, args, split: str = "test", shots=None) -> list:
    flags = ["--split", split, "--shots", ",".join(map(str, shots or plan.shots)), "--draws",
             1 if args.quick else plan.draws, "--seed", args.seed, "--batch-size", args.batch_size, "-q",
             # as every test so far ran; jobs sharing a GPU must not each size it to the free memory
             "--micro-batch", 4]
    flags += ["--max-length", 128] if args.quick else []  # a CPU smoke run: short prompts
    return flags + (["--model", args.model] if args.model else []) + (["--limit", args.limit] if args.limit else [])


def _any_start(plan: Plan, out: Path, fold: str) -> Path | None:
    """Some finished start of the fold: LoRA's compare reads only the rank etc. from it."""
    return next((p for p in (out / "meta" / x / fold for x in plan.learners) if finished(p)), None)


def _tuned(plan: Plan, out: Path, label: str, fold: str) -> int | None:
    """The steps a baseline's tuning chose for the fold (None: not tuned yet)."""
    source = plan.baselines[label].get("tune_steps")
    name = source if isinstance(source, str) else label
    path = out / "tune" / name / fold / "choice.json"
    return json.loads(path.read_text())["steps"] if path.exists() else None


def stage_tune(plan: Plan, args, out: Path) -> None:
    """Baselines with a steps list: each value on the fold's validation tasks at its `tune_shots`
    (default 1 and 5 shots)."""
    jobs, tried = [], {}  # (label, fold) -> {steps: its compare folder}
    for label, over in plan.baselines.items():
        if not isinstance(over.get("tune_steps"), list):
            continue
        for fold, f in folds(plan, args.folds).items():
            start = _any_start(plan, out, fold)
            if not f.valid or start is None:
                continue
            for steps in ([1, 2] if args.quick else over["tune_steps"]):
                dest = tried.setdefault((label, fold), {})[steps] = out / "tune" / label / fold / f"steps{steps}"
                if not (dest / "results.json").exists():
                    jobs.append((f"{label}/{fold}/steps{steps}", _cli(
                        "compare", "--adapters", start, "--tasks", ",".join(f.valid), "--out", dest,
                        *_common(plan, args, "valid", over.get("tune_shots", TUNE_SHOTS)), *_flags(_passed_on(over)),
                        "--steps", steps),
                        dest.with_suffix(".log")))
    run_jobs(jobs, args.jobs, _deadline(args), "tune")
    for (label, fold), dests in tried.items():
        scores = {}
        for steps, dest in dests.items():
            if (dest / "results.json").exists():
                rows = json.loads((dest / "results.json").read_text())["rows"]
                scores[steps] = sum(mid(r) for r in rows) / len(rows)
        if len(scores) == len(dests):
            best = max(scores, key=scores.get)
            choice = out / "tune" / label / fold / "choice.json"
            choice.with_suffix(".tmp").write_text(json.dumps(
                {"steps": best, "mean_valid_score": scores,
                 "criterion": f"mean headline score (ROUGE-L, accuracy) over the validation tasks at {plan.baselines[label].get('tune_shots', TUNE_SHOTS)} shots"}))
            os.replace(choice.with_suffix(".tmp"), choice)  # a half-written choice never reaches the test stage
            print(f"[tune] {label}/{fold}: {best} steps ({scores})", flush=True)


def _compare_jobs(plan: Plan, args, out: Path) -> list:
    jobs = []
    for fold, f in folds(plan, args.folds).items():
        for label, (learner, folder, over) in tested(plan, learners(plan, args)).items():
            start, dest = out / "meta" / learner / fold, out / "test" / folder / fold
            held = ",".join(_held(f, over))
            if held and finished(start) and not (dest / "results.json").exists():
                over = dict(over)  # a variant may name its own systems and shots: each flag once
                over.pop("only", None)
                systems = over.pop("systems", "meta")
                shots = [int(k) for k in str(over.pop("shots")).split(",")] if "shots" in over else None
                jobs.append((f"{label}/{fold}", _cli("compare", "--adapters", start, "--systems", systems,
                                                     "--tasks", held, "--out", dest, *_common(plan, args, shots=shots),
                                                     *_flags(over)), dest.with_suffix(".log")))
        start = _any_start(plan, out, fold)
        for label, over in plan.baselines.items():
            dest, held = out / "test" / label / fold, ",".join(_held(f, over))
            if start is None or not held or (dest / "results.json").exists():
                continue
            extra = _passed_on(over)
            if "tune_steps" in over:
                steps = _tuned(plan, out, label, fold)
                if steps is None:
                    print(f"[test] {label}/{fold}: not tuned yet (run --stage tune)", flush=True)
                    continue
                extra["steps"] = steps
            shots = [int(k) for k in str(over["shots"]).split(",")] if "shots" in over else None
            jobs.append((f"{label}/{fold}", _cli("compare", "--adapters", start, "--tasks", held, "--out", dest,
                                                 *_common(plan, args, shots=shots), *_flags(extra)), dest.with_suffix(".log")))
    return jobs


def stage_test(plan: Plan, args, out: Path) -> None:
    run_jobs(_compare_jobs(plan, args, out), args.jobs, _deadline(args), "test")


def learners(plan: Plan, args) -> dict[str, dict]:
    return {k: v for k, v in plan.learners.items() if not getattr(args, "learners", None) or k in args.learners}


# -- the report -------------------------------------------------------------------------------

def rows_of(plan: Plan, out: Path) -> list[dict]:
    """Every test row, its "system" the learner's or baseline's label."""
    rows = []
    folders = {**{label: folder for label, (_, folder, _) in tested(plan).items()}, **{b: b for b in plan.baselines}}
    for label, folder in folders.items():
        for path in sorted((out / "test" / folder).glob("*/results.json")):
            result = json.loads(path.read_text())
            rows += [{**r, "system": label, "fold": path.parent.name} for r in result["rows"]
                     if "same_as" not in r]
    for label, (file, system) in plan.references.items():
        ref = json.loads((ROOT / file).read_text())
        rows += [{**r, "system": label, "reference": file} for r in ref if r["system"] == system and r["task"] in plan.pool]
    return rows


def table(rows, plan: Plan, systems: list[str]) -> str:
    """Per task and shots, each system's headline score; then ROUGE-1/2 of the ROUGE tasks, and the
    NLL of the right answer and the ECE of the choice tasks."""
    shots = sorted({r["shots"] for r in rows} | set(plan.shots))
    metric = {t: next((r.get("metric", "rouge") for r in rows if r["task"] == t), "rouge") for t in plan.pool}
    lines = ["| task | shots | " + " | ".join(systems) + " |", "|" + " --- |" * (2 + len(systems))]
    for t in plan.pool:
        for k in shots:
            lines.append(f"| {t} | {k} | " + " | ".join(fmt(c, key(c)) if (c := cell(rows, t, s, k)) else "–"
                                                       for s in systems) + " |")
    used = sorted({metric[t] for t in plan.pool})
    lines += ["", "Each task's headline score: " + "; ".join(f"{HEADLINE[m][1]} ({', '.join(t for t in plan.pool if metric[t] == m)})"
                                                        for m in used) + "."]
    for what, names, show in (("ROUGE-1, ROUGE-2", "rouge", lambda c: f"{c['rouge1']['mid']:.2f}, {c['rouge2']['mid']:.2f}"),
                              ("NLL of the right answer, ECE (x100)", "accuracy",
                               lambda c: f"{c['nll']['mid']:.3f}, {c['ece']:.2f}")):
        tasks_ = [t for t in plan.pool if metric[t] == names]
        if tasks_:
            lines += ["", "| task | shots | " + " | ".join(f"{s}: {what}" for s in systems) + " |",
                      "|" + " --- |" * (2 + len(systems))]
            lines += [f"| {t} | {k} | " + " | ".join(show(c) if (c := cell(rows, t, s, k)) else "–" for s in systems) + " |"
                      for t in tasks_ for k in shots]
    return "\n".join(lines) + "\n"


def checks(rows, plan: Plan, learners: list[str], lora: str | None) -> list[dict]:
    """Per learner, task and k > 0: the adapted start against the un-adapted one (its 0-shot row),
    and against LoRA at the same k; 'apart' means the 95% intervals do not overlap. A variant
    ("maml++ (steps auto)") is held against its learner's un-adapted start, and against LoRA's
    variant of the same name where there is one ("lora (calibrated)")."""
    found, systems = [], {r["system"] for r in rows}
    for s in learners:
        variant = s[s.index(" ("):] if " (" in s else ""
        ref = f"{lora}{variant}" if lora and f"{lora}{variant}" in systems else lora
        for t in plan.pool:
            zero = cell(rows, t, s, 0) or cell(rows, t, s.split(" (")[0], 0)
            for k in (k for k in plan.shots if k):
                r = cell(rows, t, s, k)
                if not (r and zero):
                    continue
                m = key(r)
                item = {"system": s, "task": t, "shots": k, "metric": m, "score": r[m]["mid"],
                        "vs_start": r[m]["mid"] - zero[m]["mid"], "below_start_apart": r[m]["high"] < zero[m]["low"]}
                if "ece" in r:
                    item.update(ece=r["ece"], ece_interval=r.get("ece_interval"))
                base = cell(rows, t, ref, k) if ref else None
                if base:
                    item.update(vs_lora=r[m]["mid"] - base[m]["mid"], lora_apart=apart(r, base, m))
                    if "ece" in base:
                        item.update(lora_ece=base["ece"], lora_ece_interval=base.get("ece_interval"))
                        if item.get("ece_interval") and item["lora_ece_interval"]:  # rows written before intervals: none
                            item["ece_below_lora_apart"] = item["ece_interval"][1] < item["lora_ece_interval"][0]
                found.append(item)
    return found


def by_fold(rows, plan: Plan, systems: list[str], found: list[dict], data: str | None) -> list[str]:
    """The headline tables: each system's headline score averaged over each held-out fold's tasks, and the
    targets per fold: at k shots, the learner with the most tasks ≥ LoRA + 2 points with the intervals
    apart (the target asks for all of them); at 5 shots, the best learner against LoRA at 20 and 50."""
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    shots = sorted({r["shots"] for r in rows})
    lines = ["| held out | shots | " + " | ".join(systems) + " |", "| --- | ---: |" + " ---: |" * len(systems)]
    per = {}
    for fold, f in folds(plan).items():
        for k in shots:
            vals = [[mid(c) for t in f.test if (c := cell(rows, t, s, k))] for s in systems]
            per.update({(fold, s, k): v for s, v in zip(systems, vals)})
            if any(vals):
                cells = [f"{mean(v):.2f}" if len(v) == len(f.test) else ("–" if not v else f"({mean(v):.2f})") for v in vals]
                lines.append(f"| {fold} ({len(f.test)} tasks) | {k} | " + " | ".join(cells) + " |")
    lines += ["", "Mean of the fold's tasks' headline scores (ROUGE-L; accuracy on choice tasks; x100); in brackets: "
                  "not every task tested.", "",
              "| held out | shots | best learner | tasks ≥ LoRA + 2, intervals apart | its mean − LoRA | target met |",
              "| --- | ---: | --- | ---: | ---: | --- |"]
    learners = sorted({c["system"] for c in found})
    for fold, f in folds(plan).items():
        for k in (k for k in plan.shots if k):
            score = {}
            for s in learners:
                cs = [c for c in found if c["system"] == s and c["shots"] == k and c["task"] in f.test and "vs_lora" in c]
                if len(cs) == len(f.test):
                    wins = sum(c["vs_lora"] >= 2 and c["lora_apart"] for c in cs)
                    score[s] = (wins, mean([c["vs_lora"] for c in cs]))
            if score:
                best = max(score, key=score.get)
                wins, gap = score[best]
                lines.append(f"| {fold} | {k} | {best} | {wins} / {len(f.test)} | {gap:+.2f} | "
                             f"{'yes' if wins == len(f.test) else 'no'} |")
    if data:
        lines += ["", "| held out | best learner at 5 shots | its mean score | − LoRA 20-shot | − LoRA 50-shot |",
                  "| --- | --- | ---: | ---: | ---: |"]
        for fold, f in folds(plan).items():
            got = {s: mean(per.get((fold, s, 5), [])) for s in learners if len(per.get((fold, s, 5), [])) == len(f.test)}
            l20, l50 = per.get((fold, data, 20), []), per.get((fold, data, 50), [])
            if got and len(l20) == len(l50) == len(f.test):
                best = max(got, key=got.get)
                lines.append(f"| {fold} | {best} | {got[best]:.2f} | {got[best] - mean(l20):+.2f} | {got[best] - mean(l50):+.2f} |")
    return lines


def cost(plan: Plan, out: Path) -> list[dict]:
    """Per learner and fold: episodes, time in episodes, tokens, peak memory (from metrics.jsonl)."""
    found = []
    for learner in plan.learners:
        for fold in folds(plan):
            path = out / "meta" / learner / fold / "metrics.jsonl"
            if not path.exists():
                continue
            recs = [r for r in records(path) if "seconds" in r]
            config = path.parent / "adapter_config.json"
            kept = json.loads(config.read_text()).get("selected_episode", "") if config.exists() else "not finished"
            found.append({"learner": learner, "fold": fold, "episodes": len(recs), "kept": kept,
                          "seconds": round(sum(r["seconds"] for r in recs), 1),
                          "tokens": sum(r["tokens"] for r in recs),
                          "peak_memory_gb": max((r.get("peak_memory_gb", 0) for r in recs), default=0)})
    return found


LINE_STYLES = {"calibrated": "--", "calibration validated": "-.", "+ in-context": ":"}  # a variant's, in charts
RELIABILITY = ("maml++", "abmll", "lora")  # the calibration target's three systems


def reliability(plt, rows, task: str, systems: list[str], out: Path) -> None:
    """A choice task's reliability diagram at 1 and 5 shots: accuracy against confidence per bin."""
    shots = [k for k in (1, 5) if any(r["task"] == task and r["shots"] == k and r.get("reliability") for r in rows)]
    if not shots or not systems:
        return
    fig, axes = plt.subplots(1, len(shots), figsize=(4 * len(shots), 3.6), dpi=120, squeeze=False)
    for ax, k in zip(axes[0], shots):
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        for s in systems:
            r = cell(rows, task, s, k)
            if r and r.get("reliability"):
                bins = r["reliability"]
                ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
                        label=f"{s} (ECE {r['ece']:.1f})")
        ax.set(title=f"{task}, {k}-shot", xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{task}-reliability.png")
    plt.close(fig)


def charts(rows, plan: Plan, systems: list[str], out: Path, full: Plan | None = None) -> None:
    """The headline score against shots per task of `plan`; query-loss and meta-validation curves of every run
    of `full` (the plan before it was narrowed to the tasks with test rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {b: f"C{i % 10}" for i, b in enumerate(dict.fromkeys(s.partition(" (")[0] for s in systems))}
    for t in plan.pool:
        if not any(r["task"] == t for r in rows):
            continue
        shots = sorted({r["shots"] for r in rows if r["task"] == t})  # 20 and 50: LoRA's data-efficiency rows
        fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=120)
        for j, s in enumerate(systems):
            pts = [(k, cell(rows, t, s, k)) for k in shots]
            pts = [(k, r) for k, r in pts if r]
            if not pts:
                continue
            xs = [shots.index(k) + (j - len(systems) / 2) * 0.04 for k, _ in pts]
            ys = [mid(r) for _, r in pts]
            err = [[y - r[key(r)]["low"] for y, (_, r) in zip(ys, pts)], [r[key(r)]["high"] - y for y, (_, r) in zip(ys, pts)]]
            learner, _, variant = s.partition(" (")  # one colour a learner, one line style a variant
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=s, color=colours[learner],
                        ls=LINE_STYLES.get(variant.rstrip(")"), "-"))
        ax.set_xticks(range(len(shots)), [f"{k}-shot" for k in shots])
        metric = next(r.get("metric", "rouge") for r in rows if r["task"] == t)
        ax.set(title=f"{t} (held out)", ylabel=f"{HEADLINE[metric][1]} (x100)")
        ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        fig.savefig(out / f"{t}.png")
        plt.close(fig)
        reliability(plt, rows, t, [s for s in RELIABILITY if s in systems], out)
    full = full or plan
    runs = [(learner, fold, out.parent / "meta" / learner / fold / "metrics.jsonl") for learner in full.learners
            for fold in folds(full)]
    fig, axes = plt.subplots(1, len(plan.learners), figsize=(4.5 * len(plan.learners), 3.2), dpi=120, squeeze=False)
    for ax, learner in zip(axes[0], plan.learners):
        for name, fold, path in runs:
            if name != learner or not path.exists():
                continue
            episodes, before, after = query_losses(path)
            line = ax.plot(episodes, after, label=f"without {fold}")
            ax.plot(episodes, before, ls=":", color=line[0].get_color())
        ax.set(title=f"{learner}: query loss (dotted: θ, solid: adapted)", xlabel="episode", ylabel="loss")
        if ax.lines:
            ax.legend(frameon=False, fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "query-loss.png")
    plt.close(fig)
    validated = [x for x in plan.learners if any("valid" in r for name, _, path in runs if name == x and path.exists()
                                                  for r in records(path))]
    if not validated:
        return
    fig, axes = plt.subplots(1, len(validated), figsize=(4.5 * len(validated), 3.2), dpi=120, squeeze=False)
    for ax, learner in zip(axes[0], validated):  # meta-validation: the best grid point's score per episode
        for name, fold, path in runs:
            if name == learner and path.exists():
                recs = [r for r in records(path) if "valid" in r]
                ax.plot([r["episode"] + 1 for r in recs], [r["score"] for r in recs], marker="o", label=f"without {fold}")
        ax.set(title=f"{learner}: meta-validation", xlabel="episode", ylabel="mean valid score")
        ax.legend(frameon=False, fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "meta-validation.png")
    plt.close(fig)


def _ece(c: dict, k: str) -> str:
    """A check's ECE (or LoRA's, k 'lora_ece') with its interval where the rows have one."""
    if k not in c:
        return "–"
    i = c.get(f"{k}_interval")
    return f"{c[k]:.2f} [{i[0]:.1f}, {i[1]:.1f}]" if i else str(c[k])


def _ece_apart(c: dict) -> str:
    return {True: "yes", False: "no"}.get(c.get("ece_below_lora_apart"), "–")


def stage_report(plan: Plan, args, out: Path) -> None:
    rows = rows_of(plan, out)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    learners = list(tested(plan))
    systems = learners + [s for s in plan.references] + [s for s in plan.baselines]
    systems = [s for s in systems if any(r["system"] == s for r in rows)]  # a plan run in parts: what exists
    learners = [s for s in learners if s in systems]
    full, plan = plan, replace(plan, pool=[t for t in plan.pool if any(r["task"] == t for r in rows)])
    lora = next((s for s in systems if s.startswith("lora")), None)
    found = checks(rows, plan, learners + [s for s in plan.references if not s.startswith("lora")], lora)
    spent = cost(full, out)  # every start meta-trained so far, tested or not
    data = next((s for s in plan.baselines if any(r["system"] == s and r["shots"] == 20 for r in rows)), None)
    lines = [f"# {plan.about}", "", *by_fold(rows, full, systems, found, data), "", table(rows, plan, systems),
             "Scores x100, bootstrap mean [95% interval]; k > 0: the draws pooled; test splits; every start "
             "adapted with its own recipe.", "",
             "| system | task | shots | score | − un-adapted start | below it, intervals apart | − LoRA | apart from LoRA "
             "| ECE | LoRA's ECE | ECE below LoRA's, intervals apart |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: | --- |"]
    for c in found:
        lines.append(f"| {c['system']} | {c['task']} | {c['shots']} | {c['score']:.2f} | {c['vs_start']:+.2f} | "
                     f"{'yes' if c['below_start_apart'] else 'no'} | {c.get('vs_lora', float('nan')):+.2f} | "
                     f"{'yes' if c.get('lora_apart') else 'no'} | {_ece(c, 'ece')} | {_ece(c, 'lora_ece')} | "
                     f"{_ece_apart(c)} |")
    lines += ["", "| learner | fold (held out) | episodes | θ kept (meta-validation) | time in episodes (s) | tokens | "
              "peak memory (GB) |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {c['learner']} | {c['fold']} | {c['episodes']} | {c['kept'] or 'the last'} | {c['seconds']} | "
              f"{c['tokens']:,} | {c['peak_memory_gb']} |" for c in spent]
    if data:  # the data-efficiency reference: each learner's 5-shot start against LoRA at 20 and 50 shots
        lines += ["", "| learner | task | 5-shot score | LoRA 20-shot | − it | LoRA 50-shot | − it |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for s in learners:
            for t in plan.pool:
                r, l20, l50 = cell(rows, t, s, 5), cell(rows, t, data, 20), cell(rows, t, data, 50)
                if r and l20 and l50:
                    a, b, c = mid(r), mid(l20), mid(l50)
                    lines.append(f"| {s} | {t} | {a:.2f} | {b:.2f} | {a - b:+.2f} | {c:.2f} | {a - c:+.2f} |")
    (report / "tables.md").write_text("\n".join(lines) + "\n")
    (report / "report.json").write_text(json.dumps({"rows": rows, "checks": found, "cost": spent}, indent=2))
    charts(rows, plan, systems, report, full)
    print((report / "tables.md").read_text())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plan", default="learned-adaptation", choices=sorted(PLANS))
    ap.add_argument("--stage", default="meta,tune,test,report", help="comma-separated: meta, tune, test, report")
    ap.add_argument("--out", default=None, help="default: runs/<plan>")
    ap.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M-Instruct")
    ap.add_argument("--jobs", type=int, default=1, help="processes at once (meta-training runs, compare runs)")
    ap.add_argument("--deadline", type=float, default=None, help="seconds each stage may run (lent GPU time)")
    ap.add_argument("--batch-size", type=int, default=16, help="sequences generated together")
    ap.add_argument("--limit", type=int, default=None, help="first N test examples per task (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=None, help="meta-training episodes of every start [the plan's]")
    ap.add_argument("--learners", default=None, help="comma-separated: only these learners of the plan")
    ap.add_argument("--folds", default=None, help="comma-separated: only these folds (held-out tasks or groups)")
    ap.add_argument("--skip", default="", help="comma-separated learner/fold globs not to meta-train now, e.g. "
                    "'maml*/python' (what fits a lease; a later run without it trains them)")
    ap.add_argument("--quick", action="store_true", help="toy sizes on a CPU: a smoke run of every stage")
    args = ap.parse_args(argv)
    plan = PLANS[args.plan]
    args.overrides = ({"episodes": 2, "support": 2, "query": 2, "inner_steps": 1, "max_length": 128, "micro_batch": 2,
                       "eval_every": 1, "checkpoint_every": 1, "valid_every": 1, "valid_limit": 2, "valid_shots": "1",
                       "valid_steps": "1", "valid_lr_scales": "1"} if args.quick else {})
    args.learners = args.learners.split(",") if args.learners else None
    args.folds = args.folds.split(",") if args.folds else None
    args.skip = [x for x in args.skip.split(",") if x]
    if args.episodes:
        args.overrides["episodes"] = args.episodes
    if args.quick:
        args.limit = args.limit or 3
    out = Path(args.out or f"runs/{args.plan}")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    stages = {"meta": stage_meta, "tune": stage_tune, "test": stage_test, "report": stage_report}
    for s in args.stage.split(","):
        if s not in stages:
            ap.error(f"--stage: comma-separated among {', '.join(stages)}")
    for s in args.stage.split(","):
        t = time.time()
        stages[s](plan, args, out)
        print(f"[{s}] finished in {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
