"""adapt, evaluate and compare: shots 0 changes nothing, the standard start is the base model,
ROUGE is rouge-score's, the comparison runs end to end with a real chart, bad input fails in one line."""

import json
import shutil

import mlx.core as mx
import pytest

from mlx_reptilora.data import prompts, tasks
from mlx_reptilora.errors import UserError
from mlx_reptilora.evaluation import adapt, compare, evaluate, report
from mlx_reptilora.meta import train as meta_train
from mlx_reptilora.model import adapters
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def meta_dir(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("meta") / "run"
    meta_train.run(meta_train.MetaTrainConfig(
        model=str(tiny_dir), tasks=["aclsum-title", "pydoc"], episodes=2, support=4, query=0, inner_steps=2, rank=4,
        max_length=128, eval_every=0, checkpoint_every=5, out=str(out), quiet=True))
    return out


def test_shots_0_leaves_adapters_unchanged(tiny_dir, meta_dir, tmp_path):
    out = adapt.run(adapt.AdaptConfig(task="aclsum-title", shots=0, adapters=str(meta_dir), model=str(tiny_dir),
                                      out=str(tmp_path / "a"), quiet=True))
    before, after = adapters.read_weights(meta_dir), adapters.read_weights(out)
    assert set(before) == set(after) and all(mx.array_equal(before[k], after[k]) for k in before)


def test_adapt_moves_the_meta_start_and_records_it(tiny_dir, meta_dir, tmp_path):
    out = adapt.run(adapt.AdaptConfig(task="aclsum-title", shots=2, steps=2, adapters=str(meta_dir),
                                      model=str(tiny_dir), max_length=128, out=str(tmp_path / "a"), quiet=True))
    before, after = adapters.read_weights(meta_dir), adapters.read_weights(out)
    assert any(not mx.array_equal(before[k], after[k]) for k in before)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["shots"] == 2 and cfg["start"] == str(meta_dir) and len(cfg["losses"]) == 2


def test_standard_start_reproduces_the_base_model(tiny_dir, tmp_path):
    std = adapt.run(adapt.AdaptConfig(task="aclsum-title", shots=0, model=str(tiny_dir), out=str(tmp_path / "std"),
                                      quiet=True))
    common = dict(task="aclsum-title", model=str(tiny_dir), limit=4, batch_size=4, max_new_tokens=8, quiet=True)
    with_std = evaluate.run(evaluate.EvalConfig(adapters=str(std), json=str(tmp_path / "a.json"), **common))
    plain = evaluate.run(evaluate.EvalConfig(json=str(tmp_path / "b.json"), **common))
    a = [json.loads(line)["prediction"] for line in open(with_std["predictions"])]
    b = [json.loads(line)["prediction"] for line in open(plain["predictions"])]
    assert a == b and any(a)  # the same text, and some was generated
    for m in evaluate.METRICS:
        assert with_std[m] == plain[m]
    saved = json.loads((tmp_path / "a.json").read_text())
    assert set(saved) >= {"task", "n", "shots", "seed", "adapters", "rouge1", "rouge2", "rougeL", "predictions"}
    assert set(saved["rougeL"]) == {"low", "mid", "high"} and saved["n"] == 4


def test_rouge_matches_rouge_score_on_a_hand_checked_pair():
    from rouge_score import rouge_scorer

    pred, ref = "the cat sat on the mat", "the cat is on the mat"
    ours = evaluate.rouge([pred], [ref])
    # By hand: 5 of 6 unigrams shared (P = R = 5/6); 3 of 5 bigrams; LCS "the cat on the mat" = 5.
    assert ours["rouge1"]["mid"] == pytest.approx(100 * 5 / 6)
    assert ours["rouge2"]["mid"] == pytest.approx(60.0)
    assert ours["rougeL"]["mid"] == pytest.approx(100 * 5 / 6)
    theirs = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(ref, pred)
    for m in evaluate.METRICS:
        assert ours[m]["mid"] == pytest.approx(100 * theirs[m].fmeasure)
        assert ours[m]["low"] == ours[m]["mid"] == ours[m]["high"]  # one pair: nothing to resample


def test_in_context_prompt_holds_the_shots(bundled_dir):
    from mlx_lm.utils import load_tokenizer

    tok = load_tokenizer(bundled_dir)
    task = tasks.load("aclsum-title")
    shots, exs = task.splits["train"][:2], task.splits["test"][:3]
    ids = prompts.in_context(tok, shots, exs, 400)
    text = tok.decode(ids[0])
    assert all(len(x) <= 400 for x in ids)
    assert shots[0].target in text and shots[1].target in text
    assert text.endswith("<|im_start|>assistant\n") and text.count("<|im_start|>user") == 3


def test_compare_end_to_end_with_png_chart(tiny_dir, meta_dir, tmp_path):
    cfg = compare.CompareConfig(adapters=str(meta_dir), tasks=["aclsum-title", "pydoc"], shots=[0, 1], draws=2,
                                model=str(tiny_dir), steps=1, limit=3, batch_size=3, max_length=128,
                                out=str(tmp_path / "cmp"), quiet=True)
    result = compare.run(cfg)
    cells = {(r["task"], r["system"], r["shots"]) for r in result["rows"]}
    for t in cfg.tasks:
        for s in compare.SYSTEMS:
            assert (t, s, 0) in cells and (t, s, 1) in cells
    one_shot = next(r for r in result["rows"] if r["system"] == "lora" and r["shots"] == 1)
    assert one_shot["n"] == 6 and one_shot["draws"] == 2  # 3 examples x 2 draws, pooled
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "| Reptile start |" in table and "| pydoc | ROUGE-L | 1 |" in table and "ReptiLoRA" not in table
    assert result["start_label"] == "Reptile start"
    for t in cfg.tasks:
        png = (tmp_path / "cmp" / f"{t}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_compare_names_the_learner_and_still_takes_reptilora(meta_dir, tmp_path):
    assert compare.CompareConfig(adapters="x", systems=["lora", "reptilora", "meta"]).systems == ["lora", "meta"]
    assert compare.learner_label(str(meta_dir)) == "Reptile start"
    for learner, name in (({"learner": "maml", "lslr": True}, "MAML++ start"), ({"learner": "maml"}, "MAML start"),
                          ({"learner": "meta-sgd"}, "Meta-SGD start"), ({"learner": "fomaml"}, "FOMAML start")):
        folder = tmp_path / name.replace(" ", "-")
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"meta_learned": learner["learner"], "learner": learner}))
        assert compare.learner_label(str(folder)) == name
    # rows written when the system was called "reptilora" are found as "meta"
    old = [{"task": "t", "system": "reptilora", "shots": 1}]
    assert report.cell(old, "t", "meta", 1) is old[0]


def test_adapt_says_the_loss_after_adapting_and_what_it_truncated(tiny_dir, meta_dir, tmp_path, capsys):
    out = adapt.run(adapt.AdaptConfig(task="aclsum-title", shots=2, steps=1, adapters=str(meta_dir),
                                      model=str(tiny_dir), max_length=128, out=str(tmp_path / "a")))
    said = capsys.readouterr().out
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["loss_after"] != cfg["loss_before"]  # one step moved it: the line shows where it went
    assert f"in 1 steps: loss on the shots {cfg['loss_before']:.3f} -> {cfg['loss_after']:.3f}" in said
    assert "2 shots of aclsum-title: 2 truncated to --max-length 128" in said  # abstracts are longer than 128


def test_evaluate_records_the_shots_the_adapters_were_tuned_on(tiny_dir, meta_dir, tmp_path):
    out = adapt.run(adapt.AdaptConfig(task="aclsum-title", shots=2, steps=1, adapters=str(meta_dir),
                                      model=str(tiny_dir), max_length=128, out=str(tmp_path / "a"), quiet=True))
    common = dict(task="aclsum-title", model=str(tiny_dir), adapters=str(out), limit=1, max_length=128,
                  max_new_tokens=2, quiet=True)
    assert evaluate.run(evaluate.EvalConfig(json=str(tmp_path / "e.json"), **common))["shots"] == 2
    assert json.loads((tmp_path / "e.json").read_text())["shots"] == 2
    assert evaluate.run(evaluate.EvalConfig(shots=7, **common))["shots"] == 7  # the flag wins


def test_adapt_never_writes_over_a_start(tiny_dir, meta_dir, tmp_path):
    start, other = shutil.copytree(meta_dir, tmp_path / "start"), shutil.copytree(meta_dir, tmp_path / "other")
    weights = (start / adapters.WEIGHTS).read_bytes()
    common = dict(task="aclsum-title", shots=1, steps=1, model=str(tiny_dir), max_length=128, quiet=True)
    with pytest.raises(UserError, match="is the start being adapted"):
        adapt.run(adapt.AdaptConfig(adapters=str(start), out=str(start), **common))
    with pytest.raises(UserError, match="holds a meta-learned start"):
        adapt.run(adapt.AdaptConfig(adapters=str(start), out=str(other), **common))
    with pytest.raises(UserError, match="holds a meta-learned start"):
        adapt.run(adapt.AdaptConfig(out=str(other), **common))  # from the standard start too
    assert (start / adapters.WEIGHTS).read_bytes() == weights == (other / adapters.WEIGHTS).read_bytes()
    again = adapt.run(adapt.AdaptConfig(adapters=str(start), out=str(tmp_path / "a"), **common))
    assert adapt.run(adapt.AdaptConfig(adapters=str(start), out=str(again), **common)) == again  # an adapted folder


# ---- bad input, through the CLI as a user meets it ----------------------------------------------

def cli(*args):
    return run_cli(*args)


def one_line_error(r, message):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_shots_larger_than_the_training_split(tiny_dir, tmp_path):
    one_line_error(cli("adapt", "--task", "aclsum-title", "--shots", "500", "--model", str(tiny_dir),
                       "--out", str(tmp_path / "x")), "--shots 500 is more than the 100")
    assert not (tmp_path / "x").exists()


def test_adapters_folder_that_is_neither_ours_nor_mlx_lm(tiny_dir, tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "weights.bin").write_bytes(b"x")
    one_line_error(cli("evaluate", "--task", "aclsum-title", "--adapters", str(tmp_path / "junk"),
                       "--model", str(tiny_dir)), "neither mlx-lm adapters")


def test_task_without_a_test_split(tiny_dir, tmp_path):
    d = tmp_path / "onlytrain"
    d.mkdir()
    (d / "train.jsonl").write_text(json.dumps({"document": "a b c", "summary": "a"}) + "\n")
    one_line_error(cli("evaluate", "--task", str(d), "--model", str(tiny_dir)), "has no test split")


def test_adapt_with_grad_checkpoint_from_the_cli(tiny_dir, meta_dir, tmp_path):
    r = cli("adapt", "--task", "aclsum-title", "--shots", "2", "--steps", "2", "--adapters", str(meta_dir),
            "--model", str(tiny_dir), "--max-length", "128", "--grad-checkpoint", "--out", str(tmp_path / "a"), "-q")
    assert r.returncode == 0, r.stderr
    before, after = adapters.read_weights(meta_dir), adapters.read_weights(tmp_path / "a")
    assert any(not mx.array_equal(before[k], after[k]) for k in before)
    assert all(mx.all(mx.isfinite(after[k])).item() for k in after)
