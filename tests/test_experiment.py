"""scripts/experiment.py's bookkeeping (issues #14, #15): folds never share a held-out task (or
group) with training, the targets' checks read intervals the right way, the report works from what
a cut-short run left, and the deadline stops jobs with SIGINT (meta-train's checkpointing signal)."""

import importlib.util
import json
import signal
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from mlx_reptilora.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("experiment", ROOT / "scripts" / "experiment.py")
exp = importlib.util.module_from_spec(spec)
sys.modules["experiment"] = exp  # its dataclasses look their module up
spec.loader.exec_module(exp)


def _row(task, system, k, mid, half=1.0):
    score = {"low": mid - half, "mid": mid, "high": mid + half}
    return {"task": task, "system": system, "shots": k, "draws": 3, "n": 10,
            "rouge1": score, "rouge2": score, "rougeL": score}


def test_leave_one_task_out_folds():
    plan = exp.PLANS["learned-adaptation"]
    folds = exp.folds(plan)
    assert set(folds) == set(plan.pool)
    for held, (train, test, valid) in folds.items():
        assert test == [held] and held not in train and sorted(train + test) == sorted(plan.pool) and valid == []


def test_leave_one_group_out_folds():
    plan = exp.Plan("groups", ["aclsum-title", "aclsum-outcome", "pydoc", "pydoc-name", "wordnet-define"],
                    "group", {}, {"x": {}})
    folds = exp.folds(plan)
    assert folds["aclsum"] == (["pydoc", "pydoc-name", "wordnet-define"], ["aclsum-title", "aclsum-outcome"], [])
    assert folds["python"][1] == ["pydoc", "pydoc-name"] and folds["wordnet"][1] == ["wordnet-define"]
    # with a validation group: the next group validates, and is neither trained nor tested on
    plan.valid_group = True
    folds = exp.folds(plan)
    assert folds["aclsum"] == (["wordnet-define"], ["aclsum-title", "aclsum-outcome"], ["pydoc", "pydoc-name"])
    assert folds["wordnet"] == (["pydoc", "pydoc-name"], ["wordnet-define"], ["aclsum-title", "aclsum-outcome"])
    assert exp.folds(plan, ["python"]).keys() == {"python"}


def test_the_pool_plan_covers_every_learner_and_baseline():
    plan = exp.PLANS["pool"]
    assert len(plan.pool) == 15 and len(exp.folds(plan)) == 6
    assert {"reptile", "reptile-validated", "fomaml", "meta-lora", "maml", "meta-sgd", "maml++"} == set(plan.learners)
    assert "validate" not in plan.learners["reptile"] and plan.learners["reptile-validated"]["validate"]
    assert plan.baselines["lora-data"]["shots"] == "20,50" and plan.baselines["lora-data"]["tune_shots"] == [20, 50]
    assert plan.baselines["lora"]["tune_steps"] == [7, 21]


def test_checks_compare_with_the_unadapted_start_and_lora():
    plan = exp.Plan("t", ["a"], "task", {}, {"m": {}}, shots=[0, 1, 5])
    rows = [_row("a", "m", 0, 20), _row("a", "m", 1, 17.5), _row("a", "m", 5, 19.5),
            _row("a", "lora", 1, 14), _row("a", "lora", 5, 19)]
    found = {c["shots"]: c for c in exp.checks(rows, plan, ["m"], "lora")}
    assert found[1]["below_start_apart"] and found[1]["vs_start"] == -2.5  # 18.5 < 19: apart
    assert not found[5]["below_start_apart"]  # 20.5 >= 19: overlapping intervals
    assert found[1]["lora_apart"] and found[1]["vs_lora"] == 3.5 and not found[5]["lora_apart"]
    # a variant ("m (steps auto)") is held against its learner's un-adapted start
    rows.append(_row("a", "m (steps auto)", 5, 22))
    variant = exp.checks(rows, plan, ["m (steps auto)"], "lora")
    assert [c["vs_start"] for c in variant] == [2.0]


def test_report_from_a_run_cut_short(tmp_path):
    plan = exp.PLANS["learned-adaptation"]
    folder = tmp_path / "test" / "maml++" / "pydoc"
    folder.mkdir(parents=True)
    rows = [_row("pydoc", "reptilora", k, 15 + k) for k in (0, 1, 5)]
    (folder / "results.json").write_text(json.dumps({"rows": rows}))
    run = tmp_path / "meta" / "maml++" / "pydoc"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(
        {"episode": e, "seconds": 2.0, "tokens": 100, "peak_memory_gb": 9.5, "query_loss_before": 3.0,
         "query_loss_after": 2.5}) + "\n" for e in range(4)))
    exp.stage_report(plan, Namespace(), tmp_path)
    text = (tmp_path / "report" / "tables.md").read_text()
    assert "| pydoc | 1 | 16.00 [15.0, 17.0] |" in text  # Meta-SGD never ran: left out, not a crash
    assert "meta-sgd R-L" not in text
    assert "| maml++ | pydoc | 4 | not finished | 8.0 | 400 | 9.5 |" in text  # episodes, time, tokens, peak
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {r["system"] for r in report["rows"]} >= {"maml++", "reptile (#8)", "lora (#8)"}
    assert (tmp_path / "report" / "pydoc.png").exists() and (tmp_path / "report" / "query-loss.png").exists()


def test_the_deadline_interrupts_running_jobs_and_skips_the_rest(tmp_path):
    wait = [sys.executable, "-c", "import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
                                  "    print('checkpointed')\n    raise SystemExit(130)"]
    jobs = [(f"j{i}", wait, tmp_path / f"j{i}.log") for i in range(3)]
    import time

    # as under `driver &` in a script (scripts/device/detached.sh): SIGINT ignored, which children inherit
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        codes = exp.run_jobs(jobs, 2, time.time() + 2, "test")
    finally:
        signal.signal(signal.SIGINT, old)
    assert codes == {"j0": (130, True), "j1": (130, True)}  # j2 never started
    assert (tmp_path / "j0.log").read_text().strip() == "checkpointed"


def test_a_job_deaf_to_the_deadline_is_killed_after_the_grace(tmp_path, monkeypatch):
    monkeypatch.setattr(exp, "GRACE", 1)
    deaf = [sys.executable, "-c", "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                  "signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)"]
    import time

    t = time.time()
    codes = exp.run_jobs([("deaf", deaf, tmp_path / "deaf.log")], 1, time.time() + 1, "test")
    assert codes == {"deaf": (-9, True)} and time.time() - t < 15


def test_memory_limits_from_the_environment(monkeypatch):
    import mlx.core as mx

    from mlx_reptilora.model import backend

    monkeypatch.setenv("MLX_REPTILORA_CACHE_LIMIT_GB", "0.5")
    monkeypatch.setenv("MLX_REPTILORA_MEMORY_LIMIT_GB", "7")
    cache, memory = mx.set_cache_limit(0), mx.get_memory_limit()
    try:
        backend.apply_limits()
        assert mx.set_cache_limit(cache) == 500_000_000
        assert mx.set_memory_limit(memory) == 7_000_000_000
    finally:
        mx.set_cache_limit(cache)
        mx.set_memory_limit(memory)
    monkeypatch.setenv("MLX_REPTILORA_MEMORY_LIMIT_GB", "3GB")
    with pytest.raises(UserError, match="MLX_REPTILORA_MEMORY_LIMIT_GB='3GB': expected a number of GB"):
        backend.apply_limits()


def test_the_targets_by_held_out_group():
    plan = exp.Plan("g", ["pydoc", "pydoc-name", "wordnet-define"], "group", {}, {"m": {}, "n": {}})
    rows = [_row(t, s, k, v) for t in ("pydoc", "pydoc-name") for s, k, v in
            [("m", 0, 10), ("m", 1, 16), ("m", 5, 18), ("n", 0, 10), ("n", 1, 13), ("n", 5, 30),
             ("lora", 1, 12), ("lora", 5, 17), ("lora-data", 20, 15), ("lora-data", 50, 20)]]
    rows[-5] = _row("pydoc-name", "n", 5, 13)  # n at 5 shots: a big win on pydoc only
    found = exp.checks(rows, plan, ["m", "n"], "lora")
    lines = exp.by_fold(rows, plan, ["m", "n", "lora", "lora-data"], found, "lora-data")
    # 1 shot: m is 4 ahead of LoRA on both tasks, intervals apart -> met; 5 shots: n wins one task of two
    assert "| python | 1 | m | 2 / 2 | +4.00 | yes |" in lines
    assert "| python | 5 | n | 1 / 2 | +4.50 | no |" in lines
    assert "| python (2 tasks) | 5 | 18.00 | 21.50 | 17.00 | – |" in lines  # means over the group's tasks
    assert "| python | n | 21.50 | +6.50 | +1.50 |" in lines  # the best 5-shot learner against LoRA at 20 and 50
    assert not any(x.startswith("| wordnet") for x in lines)  # no rows: no lines


def test_the_task_starts_plan_holds_out_groups_of_both_kinds():
    from mlx_reptilora.data import tasks

    plan = exp.PLANS["task-starts"]
    assert sorted(plan.pool) == sorted(tasks.OFFLINE_TASKS)  # the whole offline pool, nothing reserved
    folds = exp.folds(plan)
    assert len(folds) >= 3
    kinds = {g: {tasks.load(t).kind for t in f.test} for g, f in folds.items()}
    assert any(k == {"choice"} for k in kinds.values()) and any("generate" in k for k in kinds.values())
    for g, (train, test, valid) in folds.items():
        assert not set(train) & set(test) and not set(train) & set(valid) and not set(test) & set(valid)
        assert set(tasks.groups(test)) == {g}  # a whole group held out
    assert not set(exp.GCIDE) & set(folds["wordnet"].train)
    assert {"hyper", "abmll", "maml++", "reptile"} <= set(plan.learners)
    assert plan.variants["+ in-context"]["systems"] == "meta+in-context"
    # contextual calibration: every start, LoRA (on LoRA's own tuning) and in-context, each also calibrated
    calibrated = plan.variants["calibrated"]
    assert calibrated["calibrate"] == "content-free"
    assert exp._held(folds["sentiment"], calibrated) == folds["sentiment"].test
    assert not exp._held(folds["numpy"], calibrated)
    assert exp._held(folds["wordnet"], calibrated) == ["wordnet-pos", "wordnet-domain"]  # its choice tasks only
    assert plan.baselines["lora (calibrated)"]["tune_steps"] == "lora"
    assert exp._flags(exp._passed_on(plan.baselines["lora (calibrated)"])) == ["--systems", "lora", "--calibrate",
                                                                              "content-free"]


def test_choice_rows_are_judged_by_accuracy_with_their_calibration():
    plan = exp.Plan("t", ["c"], "task", {}, {"m": {}}, shots=[0, 5])

    def choice(system, k, acc, ece):
        score = {"low": acc - 1, "mid": acc, "high": acc + 1}
        return {"task": "c", "system": system, "shots": k, "metric": "accuracy", "accuracy": score,
                "nll": {"low": 0.5, "mid": 0.6, "high": 0.7}, "ece": ece, "ece_interval": [ece - 3, ece + 3]}

    rows = [choice("m", 0, 50, 9.0), choice("m", 5, 60, 4.0), choice("lora", 5, 55, 12.0)]
    (found,) = exp.checks(rows, plan, ["m"], "lora")
    assert (found["metric"], found["score"], found["vs_start"], found["vs_lora"]) == ("accuracy", 60, 10, 5)
    assert found["lora_apart"] and (found["ece"], found["lora_ece"]) == (4.0, 12.0)
    assert found["ece_below_lora_apart"] and exp._ece(found, "ece") == "4.00 [1.0, 7.0]"
    rows[-1]["ece_interval"] = [6.5, 17.0]  # overlapping: below, not apart
    (found,) = exp.checks(rows, plan, ["m"], "lora")
    assert found["ece_below_lora_apart"] is False and exp._ece_apart(found) == "no"
    del rows[-1]["ece_interval"]  # rows written before intervals: said as not known
    (found,) = exp.checks(rows, plan, ["m"], "lora")
    assert "ece_below_lora_apart" not in found and exp._ece_apart(found) == "–"
    assert exp._ece(found, "lora_ece") == "12.0"
    # a calibrated start is held against calibrated LoRA where that was tested
    rows += [{**r, "system": f"{r['system']} (calibrated)", "ece": r["ece"] / 2} for r in rows]
    found = exp.checks(rows, plan, ["m", "m (calibrated)"], "lora")
    assert [(f["system"], f["lora_ece"]) for f in found] == [("m", 12.0), ("m (calibrated)", 6.0)]
    text = exp.table(rows, plan, ["m", "lora"])
    assert "| c | 5 | 60.00 [59.0, 61.0] | 55.00 [54.0, 56.0] |" in text and "| c | 5 | 0.600, 4.00 | 0.600, 12.00 |" in text


def test_a_reliability_diagram_only_where_choice_rows_have_bins(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = [{"bin": [0.2, 0.4], "n": 3, "accuracy": 0.33, "confidence": 0.3}]
    rows = [{"task": "c", "system": s, "shots": k, "metric": "accuracy", "ece": 3.0, "reliability": bins,
             "accuracy": {"low": 40, "mid": 50, "high": 60}} for s in ("maml++", "lora") for k in (1, 5)]
    exp.reliability(plt, rows, "c", ["maml++", "lora"], tmp_path)
    exp.reliability(plt, [{**r, "task": "g", "reliability": None} for r in rows], "g", ["maml++"], tmp_path)
    assert (tmp_path / "c-reliability.png").exists() and not (tmp_path / "g-reliability.png").exists()
