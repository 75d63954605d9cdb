"""Any task a user brings: mlx-lm's row formats, task.yaml, choice tasks scored by likelihood with
accuracy, NLL and ECE, folder tasks in every command from any directory, and the data-hygiene lines."""

import json
import os
from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest

from mlx_reptilora.data import episodes, hygiene, prompts, tasks
from mlx_reptilora.errors import UserError
from mlx_reptilora.evaluation import evaluate, metrics, scoring
from tests.conftest import run_cli

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "pink", "brown"]
WARM = {"red", "yellow", "orange", "pink"}


def _write(folder, rows, yaml=None):
    folder.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    parts = {"train": rows[: n * 6 // 10], "valid": rows[n * 6 // 10: n * 8 // 10], "test": rows[n * 8 // 10:]}
    for name, part in parts.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    if yaml:
        (folder / "task.yaml").write_text(yaml)
    return folder


def user_folders(root):
    """The four formats and a choice task, as a user would write them."""
    return {
        "chat": _write(root / "chat", [{"messages": [
            {"role": "user", "content": f"Name colour number {i}."}, {"role": "assistant", "content": c},
            {"role": "user", "content": "And in capitals?"}, {"role": "assistant", "content": c.upper()}]}
            for i, c in enumerate(COLOURS * 3)]),
        "completion": _write(root / "completion", [{"prompt": f"Reverse {c}{i}:", "completion": f"{i}{c[::-1]}"}
                                                   for i, c in enumerate(COLOURS * 3)]),
        "text": _write(root / "text", [{"text": f"The {c} fox number {i} jumps over the lazy dog."}
                                       for i, c in enumerate(COLOURS * 3)]),
        "notes": _write(root / "notes", [{"document": f"Meeting {i}: the {c} release is ready; Ana ships it.",
                                          "summary": f"Ana ships the {c} release."} for i, c in enumerate(COLOURS * 3)],
                        "instruction: List the action items.\nmetric: exact\n"),
        "warmth": _write(root / "warmth", [{"question": f"Is {c} (shade {i}) a warm colour?",
                                            "answer": "yes" if c in WARM else "no"} for i, c in enumerate(COLOURS * 3)],
                         "instruction: Answer yes or no.\nfields: {input: question, target: answer}\n"
                         "choices: [yes, no]\nsource: made up for the tests\nlicence: CC0-1.0\n"),
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return user_folders(tmp_path_factory.mktemp("user-tasks"))


@pytest.fixture(scope="module")
def tokenizer(bundled_dir):
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(bundled_dir)


def _spans(tok):
    return tok.spans or ((tok.prompt_len, len(tok.ids)),)


def test_every_format_round_trips_from_file_to_tokens_and_loss_mask(folders, tokenizer):
    kinds = {n: tasks.load(str(p)) for n, p in folders.items()}
    assert {n: (t.format, t.kind, t.metric) for n, t in kinds.items()} == {
        "chat": ("messages", "generate", "rouge"), "completion": ("prompt-completion", "generate", "rouge"),
        "text": ("text", "text", "nll"), "notes": ("document-summary", "generate", "exact"),
        "warmth": ("fields", "choice", "accuracy")}
    eos = tokenizer.eos_token
    for name, task in kinds.items():
        ex = task.splits["train"][0]
        tok = episodes.prepare(task, tokenizer, None, 256, ("train",)).splits["train"][0]
        ids = tok.ids.tolist()
        covered = [tokenizer.decode(ids[a:b]) for a, b in _spans(tok)]
        batch = episodes.make_batch([tok], [256])
        n_loss = int(batch.target_weight.sum())
        assert n_loss == sum(b - a for a, b in _spans(tok))  # the mask is exactly the spans
        # each loss position predicts the next token, which is one of the spans' tokens
        assert batch.target_ids[:n_loss].tolist() == [ids[p] for a, b in _spans(tok) for p in range(a, b)]
        if name == "chat":  # every assistant turn, nothing of the user's
            assert [c.strip() for c in covered] == [f"{ex.messages[1]['content']}{eos}", f"{ex.target}{eos}"]
            assert "Name colour" not in "".join(covered)
        elif name == "text":  # every token but the first, which nothing predicts
            assert tokenizer.decode(ids) == f"{ex.target}{eos}" and len(covered) == 1
            assert tok.prompt_len == 1
        else:
            assert covered == [ex.target + eos]
            prompt = tokenizer.decode(ids[: tok.prompt_len])
            assert ex.input in prompt
            # the instruction only where task.yaml gives one: never a silent "Summarize"
            assert ("List the action items." in prompt) == (name == "notes")
            assert "Summarize" not in prompt and ("Answer yes or no." in prompt) == (name == "warmth")


def test_task_yaml_and_row_errors_are_one_line(tmp_path):
    bad = _write(tmp_path / "bad", [{"q": "a", "a": "b"}], "fields: {input: q, target: a}\nkind: nonsense\n")
    with pytest.raises(UserError, match="kind 'nonsense' is not one of"):
        tasks.load(str(bad))
    (bad / "task.yaml").write_text("fields: {input: q, target: a}\nchoices: [x, y]\n")
    with pytest.raises(UserError, match=r"the answer 'b' is not one of its choices \(x, y\)"):
        tasks.load(str(bad))
    (bad / "task.yaml").write_text("fields: {input: q, target: a}\nmetric: accuracy\n")
    with pytest.raises(UserError, match="metric 'accuracy' does not score a generate task"):
        tasks.load(str(bad))
    (bad / "task.yaml").write_text("instructions: typo\n")
    with pytest.raises(UserError, match="unknown key 'instructions'"):
        tasks.load(str(bad))
    chat = _write(tmp_path / "c", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(UserError, match="last message must be the assistant's"):
        tasks.load(str(chat))
    # an answer may be given as its option's index
    idx = _write(tmp_path / "i", [{"input": "q", "target": 1, "choices": ["a", "b"]}] * 5,
                 "fields: {input: input, target: target}\n")
    assert tasks.load(str(idx)).splits["train"][0].target == "b"


def test_what_a_reviewer_found_is_said_in_one_line_or_read_right(tmp_path):
    import datasets

    numeric = _write(tmp_path / "n", [{"input": "q", "target": 1, "choices": ["1", "2"]}] * 5,
                     "fields: {input: input, target: target}\n")
    assert tasks.load(str(numeric)).splits["train"][0].target == "1"  # an option itself, not an index
    unsafe = _write(tmp_path / "u", [{"prompt": "p", "completion": "c"}] * 5, "name: ../../escape\n")
    with pytest.raises(UserError, match="name '../../escape': letters, digits"):
        tasks.load(str(unsafe))
    partial = _write(tmp_path / "p", [{"input": "q", "target": "a", "choices": ["a", "b"]}, {"input": "r", "target": "a"}] * 3,
                     "fields: {input: input, target: target}\n")
    with pytest.raises(UserError, match="a choice task needs options for every row"):
        tasks.load(str(partial))
    for roles, message in ((["assistant"], "alternate, user first"), (["user", "bot"], "role is one of")):
        bad = _write(tmp_path / f"c{len(roles)}", [{"messages": [{"role": r, "content": "x"} for r in roles]}] * 3)
        with pytest.raises(UserError, match=message):
            tasks.load(str(bad))
    csv = tmp_path / "csv"
    csv.mkdir()
    datasets.Dataset.from_list([{"q": f"q{i}", "a": None if i == 2 else float(i % 2)} for i in range(6)]).to_csv(
        str(csv / "train.csv"), index=False)
    (csv / "task.yaml").write_text("fields: {input: q, target: a}\nchoices: ['0', '1']\n")
    loaded = tasks.load(str(csv))  # a blank cell is dropped and counted; 1.0 is the option "1"
    assert len(loaded.splits["train"]) == 5 and {e.target for e in loaded.splits["train"]} == {"0", "1"}


def test_expected_calibration_error_on_a_hand_made_case():
    # 0.9 lands in bin (0.867, 0.933]: accuracy 1/2, confidence 0.9 -> |0.5 - 0.9| x 2/4 = 0.2;
    # 0.6 in (0.533, 0.6]: accuracy 1, confidence 0.6 -> |1 - 0.6| x 2/4 = 0.2. ECE = 0.4 = 40 points.
    assert metrics.ece([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1]) == pytest.approx(40.0)
    assert metrics.ece([0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7], [1] * 7 + [0] * 3) == pytest.approx(0.0)
    bins = metrics.reliability([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1])
    assert [(b["n"], b["accuracy"]) for b in bins] == [(2, 1.0), (2, 0.5)]
    scores = metrics.choice([{"probs": [0.9, 0.1], "answer": 0}, {"probs": [0.6, 0.4], "answer": 1}])
    assert scores["accuracy"]["mid"] == 50.0 and scores["nll"]["mid"] == pytest.approx(
        (-np.log(0.9) - np.log(0.4)) / 2)
    assert metrics.normalize("The  Café!") == metrics.normalize("café") == "café"
    assert metrics.normalize("!") == "!" != metrics.normalize("")


def test_the_ece_interval_is_the_ece_of_resampled_rows():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 1.0, 200)
    right = (rng.uniform(size=200) < conf * 0.8).astype(float)
    low, high = metrics.ece_interval(conf, right, seed=3, samples=400)
    # the same resamples, each scored by ece() itself
    idx = np.random.Generator(np.random.PCG64(3)).integers(0, 200, (400, 200))
    each = [metrics.ece(conf[i], right[i]) for i in idx]
    assert (low, high) == pytest.approx((np.percentile(each, 2.5), np.percentile(each, 97.5)))
    assert low < metrics.ece(conf, right) < high


def test_balanced_accuracy_scores_one_answer_for_every_row_as_chance():
    rows = lambda answers, said: [{"reference": a, "prediction": p} for a, p in zip(answers, said)]
    skewed = ["a"] * 8 + ["b"] * 2
    assert metrics.balanced_accuracy(rows(skewed, ["a"] * 10)) == 0.5  # accuracy 0.8
    assert metrics.balanced_accuracy(rows(skewed, ["b"] * 10)) == 0.5  # accuracy 0.2
    # a right for 6 of 8, b for 1 of 2: (0.75 + 0.5) / 2
    assert metrics.balanced_accuracy(rows(skewed, ["a"] * 6 + ["b"] * 3 + ["a"])) == pytest.approx(0.625)


def test_choice_scoring_matches_an_independent_computation(tiny, folders):
    """Each option's mean log-probability per token, from one full forward pass per option with
    every logit, against the batched, gathered pass."""
    task = tasks.load(str(folders["warmth"]))
    exs = task.splits["test"][:4]
    fmt = prompts.PromptFormat.for_task(tiny.tokenizer, task)
    prompt_ids = prompts.in_context(tiny.tokenizer, [], exs, 128, task.instruction)
    got = scoring.choices(tiny.model, fmt, tiny.tokenizer, exs, batch_size=3, max_length=128)
    for p, e, g in zip(prompt_ids, exs, got):
        means = []
        for option in e.choices:
            ids = p + tiny.tokenizer.encode(option, add_special_tokens=False) + [tiny.tokenizer.eos_token_id]
            logits = tiny.model(mx.array([ids]))[0].astype(mx.float32)
            logp = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
            means.append(np.mean([logp[t - 1, ids[t]] for t in range(len(p), len(ids))]))
        want = np.exp(np.array(means) - max(means))
        np.testing.assert_allclose(g["probs"], want / want.sum(), rtol=1e-4, atol=1e-6)
        assert g["prediction"] == e.choices[int(np.argmax(means))] and g["answer"] == e.choices.index(e.target)


def test_contextual_calibration_divides_out_what_content_free_inputs_get(tiny, folders):
    """By hand: a prior that puts every row on one option is divided out; then end to end, evaluate's
    calibrated probabilities are its raw ones over the mean of the content-free rows' own."""
    exs = [tasks.Example("x", "b", choices=("a", "b")), tasks.Example("y", "a", choices=("a", "b"))]
    rows = [{"prediction": "a", "reference": "b", "probs": [0.7, 0.3]},
            {"prediction": "a", "reference": "a", "probs": [0.9, 0.1]}]
    free = scoring.content_free(exs)
    assert [e.input for e in free] == list(scoring.CONTENT_FREE) and {e.choices for e in free} == {("a", "b")}
    prior = [{"probs": [0.8, 0.2]}, {"probs": [0.8, 0.2]}, {"probs": [0.8, 0.2]}]
    got = scoring.calibrated(exs, rows, free, prior)
    assert [g["prediction"] for g in got] == ["b", "a"]  # 0.7/0.8 < 0.3/0.2; 0.9/0.8 > 0.1/0.2
    np.testing.assert_allclose(got[0]["probs"], [0.875 / 2.375, 1.5 / 2.375])
    assert got[0]["raw_probs"] == [0.7, 0.3]

    task = tasks.load(str(folders["warmth"]))
    exs = task.splits["test"][:4]
    cfg = evaluate.EvalConfig(task=task.name, max_length=128)
    raw, _ = evaluate.records(tiny, task, exs, cfg)
    cal, _ = evaluate.records(tiny, task, exs, replace(cfg, calibrate="content-free"))
    free = scoring.content_free(exs)
    prior = {}
    for e, r in zip(free, scoring.choices(tiny.model, prompts.PromptFormat.for_task(tiny.tokenizer, task),
                                          tiny.tokenizer, free, 4, 128)):
        prior.setdefault(e.choices, []).append(r["probs"])
    for e, r, c in zip(exs, raw, cal):
        want = np.asarray(r["probs"]) / np.mean(prior[e.choices], axis=0)
        np.testing.assert_allclose(c["probs"], want / want.sum(), rtol=1e-5)
        assert c["raw_probs"] == r["probs"] and c["prediction"] == e.choices[int(np.argmax(want))]


def test_hygiene_lines_fire(tmp_path, capsys, tokenizer):
    hygiene._said.clear()
    rows = [{"prompt": f"p{i % 6}", "completion": "c"} for i in range(12)]
    rows[3] = {"prompt": "  ", "completion": "x"}  # empty: dropped and counted
    folder = _write(tmp_path / "messy", rows)
    task = tasks.load(str(folder))
    err = capsys.readouterr().err
    assert "task messy: 1 train row dropped: an empty field" in err
    assert "duplicate row" in err and "in train (kept)" in err
    assert "test rows have an input that is also in train (leakage" in err
    long = _write(tmp_path / "long", [{"prompt": "p", "completion": "word " * 300}] * 3 + [
        {"prompt": "q", "completion": "short"}] * 2)
    episodes.prepare(tasks.load(str(long)), tokenizer, None, 64, ("train",))
    assert "train rows dropped: the target is longer than --max-length 64" in capsys.readouterr().err
    lines = hygiene.shared_rows("v", task.splits, {"t": task.splits})
    assert lines and "are rows of training task t" in lines[0]
    assert task.name == "messy"


def test_folder_tasks_everywhere_from_another_directory_write_only_under_out(tiny_dir, tmp_path):
    data = user_folders(tmp_path / "data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    before = sorted(p for p in (tmp_path / "data").rglob("*"))
    rel = {n: os.path.relpath(p, elsewhere) for n, p in data.items()}
    start = tmp_path / "runs" / "start"
    r = run_cli("meta-train", "--model", tiny_dir, "--tasks", f"{rel['chat']},{rel['completion']},{rel['text']}",
                "--valid-tasks", rel["warmth"], "--valid-shots", "1", "--valid-every", "2", "--valid-limit", "4",
                "--episodes", "2", "--support", "2", "--query", "2", "--inner-steps", "1", "--rank", "2",
                "--max-length", "64", "--out", start, "-q", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    valid = [json.loads(line) for line in (start / "metrics.jsonl").read_text().splitlines() if "valid" in line]
    assert valid and valid[-1]["metrics"] == {"warmth": "accuracy"}
    adapted = tmp_path / "runs" / "warm2"
    r = run_cli("adapt", "--model", tiny_dir, "--adapters", start, "--task", rel["warmth"], "--shots", "2",
                "--max-length", "64", "--out", adapted, "-q", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    scores = tmp_path / "runs" / "warm.json"
    r = run_cli("evaluate", "--model", tiny_dir, "--adapters", adapted, "--task", rel["warmth"], "--limit", "6",
                "--json", scores, cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    saved = json.loads(scores.read_text())
    assert saved["metric"] == "accuracy" and {"accuracy", "nll", "ece", "reliability"} <= set(saved)
    assert set(saved["accuracy"]) == {"low", "mid", "high"} and 0 <= saved["ece"] <= 100
    assert (tmp_path / "runs" / "warm.reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert "accuracy" in r.stdout and "ECE" in r.stdout
    cmp = tmp_path / "runs" / "cmp"
    r = run_cli("compare", "--model", tiny_dir, "--adapters", start, "--tasks", f"{rel['warmth']},{rel['text']},"
                f"{data['notes']}", "--shots", "0,1", "--draws", "1", "--steps", "1", "--limit", "3",
                "--max-length", "64", "--systems", "lora,meta", "--out", cmp, "-q", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert sorted(p for p in (tmp_path / "data").rglob("*")) == before  # nothing written beside the data
    assert list(elsewhere.iterdir()) == []
    names = {p.name for p in cmp.iterdir()}
    assert {"warmth.png", "warmth-reliability.png", "text.png", "notes.png", "table.md", "results.json"} <= names
    table = (cmp / "table.md").read_text()
    assert "| warmth | accuracy | 1 |" in table and "| text | NLL per token (lower is better) | 0 |" in table
    assert "| notes | exact match | 1 |" in table
    rows = json.loads((cmp / "results.json").read_text())["rows"]
    assert {r["metric"] for r in rows} == {"accuracy", "nll", "exact"}


def test_in_context_on_a_text_task_is_one_line_before_the_model_loads(folders):
    r = run_cli("evaluate", "--task", folders["text"], "--in-context", "2")
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: --in-context: text is a text task, with no answers to show as examples")
