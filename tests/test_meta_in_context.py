"""Meta + in-context: a start adapted on k shots, with the same k shots in the prompt too (a compare
system and evaluate --with-shots). The shots shown are the adaptation's own, found by their rows in
the task's train split even where rows were dropped for length."""

import json

import numpy as np

from mlx_reptilora.data import episodes, prompts, tasks
from tests.conftest import run_cli


def test_shot_rows_are_the_rows_the_shots_were_made_from(bundled):
    task = tasks.load("pydoc")
    prepared = episodes.prepare(task, bundled.tokenizer, None, 48, ("train",))
    assert prepared.dropped > 0  # rows dropped, so a kept shot's index is not its row
    fmt = prompts.PromptFormat.for_task(bundled.tokenizer, task)
    for seed in range(3):
        shots, rows = episodes.draw_shot_rows(prepared, 4, seed)
        assert shots == episodes.draw_shots(prepared.splits["train"], 4, seed)  # the draw compare always made
        again = prompts.tokenize(fmt, bundled.tokenizer, [task.split("train")[r] for r in rows], 48)
        assert all(np.array_equal(a.ids, b.ids) for a, b in zip(again, shots))


def test_evaluate_with_shots_and_the_compare_system(tiny_dir, tmp_path):
    model = ["--model", str(tiny_dir)]
    ran = run_cli("adapt", *model, "--task", "afinn-polarity", "--shots", "2", "--seed", "3", "--out", tmp_path / "a")
    assert ran.returncode == 0, ran.stderr
    rows = json.loads((tmp_path / "a" / "adapter_config.json").read_text())["shot_rows"]
    assert len(rows) == 2
    ran = run_cli("evaluate", *model, "--adapters", tmp_path / "a", "--task", "afinn-polarity", "--with-shots",
                  "--limit", "3", "--json", tmp_path / "e.json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads((tmp_path / "e.json").read_text())["in_context"] == 2

    refused = run_cli("evaluate", *model, "--task", "afinn-polarity", "--with-shots")
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1 and "adapt" in refused.stderr
    refused = run_cli("evaluate", *model, "--adapters", tmp_path / "a", "--task", "vader-polarity", "--with-shots")
    assert refused.returncode != 0 and "afinn-polarity" in refused.stderr

    ran = run_cli("compare", *model, "--adapters", tmp_path / "a", "--tasks", "afinn-polarity", "--shots", "0,2",
                  "--draws", "1", "--limit", "3", "--systems", "meta,meta+in-context", "--out", tmp_path / "cmp")
    assert ran.returncode == 0, ran.stderr
    out = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert {(r["system"], r["shots"]) for r in out["rows"]} == {("meta", 0), ("meta", 2), ("meta+in-context", 2)}
    assert "+ in-context |" in (tmp_path / "cmp" / "table.md").read_text().splitlines()[0]
