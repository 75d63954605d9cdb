"""The frozen record of issue #8's experiment (docs/records/paper_experiment.py), kept runnable:
which starts it meta-trains, and a report from whatever a cut-short run left on disk."""

import importlib.util
import json
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("paper_experiment", ROOT / "docs" / "records" / "paper_experiment.py")
exp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(exp)


def args(**over):
    return Namespace(**{"micro_batch": 8, "seed": 0, "quick": False, "variants": ["paper", "anneal"],
                        "loo_episodes": 150, "limit": None, **over})


def test_meta_runs_cover_both_protocols():
    runs = exp.meta_runs(args())
    assert set(runs) == {"all-paper", "all-anneal", "all-k5", *(f"without-{t}" for t in exp.TASKS)}
    assert runs["all-k5"]["support"] == 5 and runs["all-k5"]["tasks"] == exp.TASKS  # the why stage's probe
    assert runs["all-anneal"]["meta_lr"] == 1.0 and runs["all-anneal"]["meta_lr_final"] == 0.0
    assert "meta_lr" not in runs["all-paper"]  # the paper's α comes from configs/paper.yaml
    for t in exp.TASKS:
        assert t not in runs[f"without-{t}"]["tasks"] and len(runs[f"without-{t}"]["tasks"]) == 4
        assert runs[f"without-{t}"]["episodes"] == 150


def _row(task, system, k, mid):
    score = {"low": mid - 1, "mid": mid, "high": mid + 1}
    return {"task": task, "system": system, "shots": k, "draws": 3, "n": 10,
            "rouge1": score, "rouge2": score, "rougeL": score}


def test_report_from_a_run_cut_short(tmp_path):
    for system, base in (("lora", 20.0), ("reptilora", 23.0)):
        folder = tmp_path / "test" / f"a-{system}"
        folder.mkdir(parents=True)
        rows = [_row(t, system, k, base + k) for t in exp.TASKS for k in (0, 1, 5)]
        (folder / "results.json").write_text(json.dumps({"rows": rows}))
    exp.stage_report(args(), tmp_path)
    tables = (tmp_path / "report" / "tables.md").read_text()
    assert "| a | pydoc | 5 | +3.00 | yes |" in tables
    assert "Not run (no results): a-in-context, b-aclsum-challenge" in tables
    gains = json.loads((tmp_path / "report" / "gains.json").read_text())
    assert len(gains) == 15 and all(g["protocol"] == "a" for g in gains)
    assert (tmp_path / "report" / "a-pydoc.png").stat().st_size > 0


def test_report_includes_the_why_probes(tmp_path):
    for system, base in (("lora", 20.0), ("reptilora", 23.0)):
        folder = tmp_path / "test" / f"a-{system}"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"rows": [_row(t, system, k, base) for t in exp.TASKS
                                                                   for k in (0, 1, 5)]}))
    best = tmp_path / "why" / "test-reptilora-lr0.0001"
    best.mkdir(parents=True)
    (best / "results.json").write_text(json.dumps({"rows": [_row(t, "reptilora", k, 30.0) for t in exp.TASKS
                                                            for k in (0, 1, 5)]}))
    summary = {"valid": {"reptilora|tuned": {"start": "all-paper-at-250", "steps": 7, "mean": 22.0},
                         "reptilora|lr0.0001": {"start": "all-paper-at-250", "steps": 7, "lr": 1e-4, "mean": 24.5},
                         "lora|tuned": {"start": "all-paper", "steps": 21, "mean": 21.0}},
               "best_reptilora": "lr0.0001", "best_lora": "tuned", "test": {"reptilora": best.name}}
    (tmp_path / "why" / "summary.json").write_text(json.dumps(summary))
    exp.stage_report(args(), tmp_path)
    tables = (tmp_path / "report" / "tables.md").read_text()
    why = tables.split("## Why: probes")[1]
    assert "| reptilora | lr0.0001 | all-paper-at-250 | 7 | 0.0001 | 24.50 |" in why
    assert "| lora | tuned | standard (B = 0) | 21 | 0.0005 | 21.00 |" in why
    assert "| pydoc | ROUGE-L | 5 | 20.00 [19.0, 21.0] | 30.00 [29.0, 31.0] |" in why  # LoRA's (a), the probe's test


def test_test_and_why_stages_need_the_tuning_choice(tmp_path):
    import pytest

    for stage in (exp.stage_test, exp.stage_why):
        with pytest.raises(SystemExit, match="run --stage tune first"):
            stage(args(), tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written
