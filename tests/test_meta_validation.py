"""Meta-validation in meta-train (issue #15): θ is adapted on held-out tasks' shots with a grid around
its recipe every --valid-every episodes, the best θ is kept with its best setting as the start's
recipe, adapt uses that recipe, and a resumed run ends bit-identical to an uninterrupted one."""

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_reptilora.cli import main
from mlx_reptilora.meta import checkpoint, train

# a tiny run on the tiny random-weight model: ACLSum titles for training, Python names (another group)
# for validation
ARGS = ["--tasks", "aclsum-title", "--valid-tasks", "pydoc-name", "--support", "2", "--query", "2",
        "--inner-steps", "1", "--max-length", "64", "--valid-every", "2", "--valid-shots", "1,2",
        "--valid-lr-scales", "1", "--valid-limit", "2", "--eval-every", "0",
        "--checkpoint-every", "1", "--keep-checkpoints", "5", "-q"]


@pytest.fixture(scope="module")
def model(tiny_dir):
    return ["--model", str(tiny_dir)]


def cli(*args):
    """The CLI in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def valid_records(out: Path) -> list[dict]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "valid_seconds"} for r in recs if "valid" in r]


@pytest.fixture(scope="module")
def run(tmp_path_factory, model):
    out = tmp_path_factory.mktemp("valid") / "run"
    code, _, err = cli("meta-train", *model, *ARGS, "--episodes", "4", "--out", out)
    assert code == 0, err
    return out


def test_validation_is_logged_and_the_best_theta_and_setting_are_kept(run):
    recs = valid_records(run)
    assert [r["episode"] for r in recs] == [1, 3]  # after episodes 2 and 4
    for r in recs:
        assert set(r["valid"]) == {"pydoc-name"} and set(r["valid"]["pydoc-name"]) == {"1", "2"}
        one, two = r["valid"]["pydoc-name"]["1"], r["valid"]["pydoc-name"]["2"]
        # the start as it is (scored once: it is the same at every count), the recipe and its 2x steps
        assert set(one) == set(two) == {"0 steps", "1 steps, lr 0.0005", "2 steps, lr 0.0005"}
        assert one["0 steps"] == two["0 steps"] and one["1 steps, lr 0.0005"] != two["1 steps, lr 0.0005"]
        assert all(set(p) == {"loss", "score"} for p in one.values())
        for k, chosen in r["recipe"]["by_shots"].items():  # the guard: never below not adapting
            assert chosen["shots"] == int(k)
            assert r["means"][k][key(chosen)] >= r["means"][k]["0 steps"]
    best = max(recs, key=lambda r: (r["score"], -r["loss"]))
    assert [r["best"] for r in recs] == [True, best is recs[1]]
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["selected_episode"] == best["episode"] + 1
    recipe = json.loads((run / "recipe.json").read_text())
    assert recipe["chosen_by"].startswith(f"meta-validation at episode {best['episode'] + 1} on pydoc-name")
    assert recipe["steps"] == best["recipe"]["steps"] and recipe["by_shots"] == best["recipe"]["by_shots"]
    # the start is the kept θ: the best group of the last checkpoint
    _, groups = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    kept = mx.load(str(run / "adapters.safetensors"))
    assert all(mx.array_equal(kept[k], groups["best"]["theta"][k]).item() for k in groups["best"]["theta"])


def key(recipe: dict) -> str:
    return "0 steps" if recipe["steps"] == 0 else f"{recipe['steps']} steps, lr {recipe['lr']:g}"


def test_adapt_uses_the_recipe_of_the_nearest_validated_shot_count(run, model, tmp_path):
    by_shots = json.loads((run / "recipe.json").read_text())["by_shots"]
    for shots, validated in ((1, 1), (2, 2), (4, 2)):
        code, out, err = cli("adapt", *model, "--adapters", run, "--task", "pydoc-name", "--shots", shots,
                             "--max-length", "64", "--out", tmp_path / f"a{shots}")
        assert code == 0, err
        assert "(meta-validation at episode" in out and f"({validated} shot{'s' * (validated != 1)})" in out, out
        assert ("the nearest validated count" in out) == (shots != validated)
        adapted = json.loads((tmp_path / f"a{shots}" / "adapter_config.json").read_text())
        assert adapted["steps"] == by_shots[str(validated)]["steps"]


def test_the_nearest_count_and_its_ties(tmp_path):
    from mlx_reptilora.meta import recipe as recipes

    assert [recipes.nearest([1, 5], k) for k in (1, 2, 3, 4, 5, 20)] == [1, 1, 1, 5, 5, 5]  # 3: a tie, the smaller
    for damaged in ("[]", '{"learner": "x", "by_shots": [1]}', "{"):
        (tmp_path / recipes.RECIPE).write_text(damaged)
        with pytest.raises(train.UserError, match="is damaged"):
            recipes.read(tmp_path, shots=1)


def test_a_shot_count_where_adapting_scores_lower_keeps_the_start_as_it_is():
    from mlx_reptilora.evaluation.validate import choose, grid, key as point
    from mlx_reptilora.meta.recipe import Recipe

    start = Recipe("reptile", "adamw", 7, 5e-4)
    cfg = train.MetaTrainConfig(valid_lr_scales=[1.0])
    points = {point(r): r for r in grid(cfg, start)}
    assert list(points) == ["0 steps", "7 steps, lr 0.0005", "14 steps, lr 0.0005"]
    scores = {1: {"0 steps": 30.2, "7 steps, lr 0.0005": 24.9, "14 steps, lr 0.0005": 22.0},  # adapting hurts at 1
              5: {"0 steps": 27.5, "7 steps, lr 0.0005": 29.6, "14 steps, lr 0.0005": 29.0}}
    results = {t: {k: {p: {"rougeL": v + d, "loss": 1.0} for p, v in s.items()} for k, s in scores.items()}
               for t, d in (("a", 1.0), ("b", -1.0))}
    chosen = choose(results, points, [1, 5], "episode 50")
    assert chosen["recipe"]["by_shots"]["1"]["steps"] == 0 and chosen["recipe"]["by_shots"]["5"]["steps"] == 7
    assert "adapting scored lower than the start as it is" in chosen["recipe"]["by_shots"]["1"]["chosen_by"]
    assert chosen["score"] == pytest.approx((30.2 + 29.6) / 2) and chosen["means"]["1"]["0 steps"] == 30.2


def test_resume_is_bit_identical_with_validation(run, model, tmp_path):
    out = tmp_path / "resumed"
    code, _, err = cli("meta-train", *model, *ARGS, "--episodes", "2", "--out", out)
    assert code == 0, err
    code, _, err = cli("meta-train", *model, *ARGS, "--episodes", "4", "--out", out, "--resume")
    assert code == 0, err
    assert (out / "adapters.safetensors").read_bytes() == (run / "adapters.safetensors").read_bytes()
    assert (out / "recipe.json").read_text() == (run / "recipe.json").read_text()
    assert valid_records(out) == valid_records(run)


def test_validation_leaves_meta_training_unchanged(run, model, tmp_path):
    """The same run without --valid-tasks ends at the same θ (validation adapts copies, on its own
    inner loops, and every task of training reseeds its RNG)."""
    plain = [a for i, a in enumerate(ARGS) if not (a.startswith("--valid") or (i and ARGS[i - 1].startswith("--valid")))]
    out = tmp_path / "plain"
    code, _, err = cli("meta-train", *model, *plain, "--episodes", "4", "--out", out)
    assert code == 0, err
    _, with_validation = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    _, without = checkpoint.load(checkpoint.latest(out / "checkpoints"))
    assert all(mx.array_equal(with_validation["params"]["theta"][k], without["params"]["theta"][k]).item()
               for k in without["params"]["theta"])
    assert not valid_records(out) and "best" not in without


@pytest.mark.parametrize("args, message", [
    (["--tasks", "aclsum-title,pydoc-name", "--valid-tasks", "pydoc-name"], "also in --tasks"),
    (["--tasks", "pydoc", "--valid-tasks", "pydoc-name"], "shares its documents with the training task pydoc"),
    (["--tasks", "pydoc", "--valid-tasks", "aclsum-title", "--valid-shots", "500"], "--valid-shots 500"),
])
def test_bad_validation_settings_are_one_line(args, message, tmp_path):
    code, _, err = cli("meta-train", *args, "--episodes", "1", "--out", tmp_path / "x")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_the_outer_loop_alone_refuses_validation_it_cannot_run():
    cfg = train.MetaTrainConfig(tasks=["aclsum-title"], valid_tasks=["pydoc-name"], episodes=1)
    with pytest.raises(train.UserError, match="needs the meta-validation"):
        train.run(cfg)


@pytest.mark.parametrize("how", ["balanced", "accuracy"])
def test_a_choice_task_is_validated_by_accuracy_or_balanced_accuracy(tiny, how):
    from types import SimpleNamespace

    from mlx_reptilora.evaluation import evaluate, metrics
    from mlx_reptilora.evaluation.validate import Validator
    from mlx_reptilora.meta.config import MetaTrainConfig
    from mlx_reptilora.model import adapters

    adapters.attach(tiny.model, adapters.LoraConfig(rank=4, dropout=0.0))
    cfg = MetaTrainConfig(tasks=["aclsum-title"], valid_tasks=["afinn-polarity"], valid_shots=[1], valid_limit=12,
                          max_length=64, valid_choice_score=how)
    v = Validator(cfg, SimpleNamespace(base=tiny, inner=SimpleNamespace(cfg=SimpleNamespace(micro_batch=4))))
    d = v.data["afinn-polarity"]
    rows, _ = evaluate.records(tiny, d["task"], d["valid"], evaluate.EvalConfig(task="afinn-polarity", max_length=64))
    accuracy, balanced = metrics.choice(rows)["accuracy"]["mid"], 100 * metrics.balanced_accuracy(rows)
    assert len({r["reference"] for r in rows}) == 2 and accuracy != balanced  # the case tells them apart
    assert v.score(d) == {"score": pytest.approx(balanced if how == "balanced" else accuracy, abs=5e-4)}


def test_calibration_is_chosen_at_the_chosen_setting_and_changes_nothing_else():
    from mlx_reptilora.evaluation.validate import choose, grid, key as point
    from mlx_reptilora.meta.recipe import Recipe

    points = {point(r): r for r in grid(train.MetaTrainConfig(valid_lr_scales=[1.0]), Recipe("maml", "sgd", 3, 0.1))}
    scores = {1: {"0 steps": 40.0, "3 steps, lr 0.1": 30.0, "6 steps, lr 0.1": 20.0},
              5: {"0 steps": 40.0, "3 steps, lr 0.1": 50.0, "6 steps, lr 0.1": 45.0}}
    # a choice task where calibration helps at 1 shot's chosen point (0 steps) and hurts at 5's, and a
    # generation task that has no calibrated score
    calibrated = {1: {"0 steps": 46.0, "3 steps, lr 0.1": 60.0, "6 steps, lr 0.1": 60.0},
                  5: {"0 steps": 90.0, "3 steps, lr 0.1": 44.0, "6 steps, lr 0.1": 90.0}}
    results = {"choice": {k: {p: {"score": v, "calibrated": calibrated[k][p], "loss": 1.0} for p, v in s.items()}
                          for k, s in scores.items()},
               "generate": {k: {p: {"score": v, "loss": 1.0} for p, v in s.items()} for k, s in scores.items()}}
    plain = {t: {k: {p: {x: e[x] for x in ("score", "loss")} for p, e in v.items()} for k, v in r.items()}
             for t, r in results.items()}
    with_it, without = choose(results, points, [1, 5], "episode 50"), choose(plain, points, [1, 5], "episode 50")
    by_shots = with_it["recipe"]["by_shots"]
    assert (by_shots["1"]["calibrate"], by_shots["5"]["calibrate"]) == ("content-free", "none")
    assert "calibrated 43.00" in by_shots["1"]["chosen_by"]
    assert [by_shots[k]["steps"] for k in "15"] == [without["recipe"]["by_shots"][k]["steps"] for k in "15"] == [0, 3]
    assert with_it["score"] == without["score"] and without["recipe"]["by_shots"]["1"]["calibrate"] == "none"
    # a tie keeps the probabilities as they are
    tied = {t: {k: {p: {**e, "calibrated": e["score"]} for p, e in v.items()} for k, v in r.items()}
            for t, r in plain.items()}
    assert {v["calibrate"] for v in choose(tied, points, [1, 5], "e")["recipe"]["by_shots"].values()} == {"none"}


def test_a_validated_calibration_reaches_the_recipe_and_evaluate(model, tmp_path):
    from mlx_reptilora.evaluation import evaluate
    from mlx_reptilora.evaluation.validate import key as point
    from mlx_reptilora.meta import recipe as recipes
    from tests.test_formats import user_folders

    warmth = user_folders(tmp_path / "data")["warmth"]
    args = [*model, "--tasks", "aclsum-title", "--valid-tasks", warmth, "--support", "2", "--query", "2",
            "--inner-steps", "1", "--max-length", "64", "--valid-every", "2", "--valid-shots", "1,2",
            "--valid-lr-scales", "1", "--valid-limit", "4", "--eval-every", "0", "--episodes", "2", "-q"]
    code, _, err = cli("meta-train", *args, "--valid-calibrate", "--out", tmp_path / "cal")
    assert code == 0, err
    code, _, err = cli("meta-train", *args, "--out", tmp_path / "plain")
    assert code == 0, err
    (rec,), (plain,) = valid_records(tmp_path / "cal"), valid_records(tmp_path / "plain")
    entries = rec["valid"]["warmth"]
    assert all(set(e) == {"loss", "score", "calibrated"} for k in entries for e in entries[k].values())
    # the same scores, the same kept start and steps; only the recipe's calibration is new
    assert {k: {p: {x: e[x] for x in ("loss", "score")} for p, e in v.items()} for k, v in entries.items()} \
        == plain["valid"]["warmth"]
    kept = [(tmp_path / run / "adapters.safetensors").read_bytes() for run in ("cal", "plain")]
    assert kept[0] == kept[1]
    for k, chosen in rec["recipe"]["by_shots"].items():
        at = entries[k][point(recipes.Recipe(**chosen))]
        helps = at["calibrated"] > at["score"]
        assert chosen["calibrate"] == ("content-free" if helps else "none")
        assert evaluate.calibration_of(str(tmp_path / "cal"), int(k)) == chosen["calibrate"]
    assert evaluate.calibration_of(str(tmp_path / "plain"), 1) == "none" and evaluate.calibration_of(None, 1) == "none"


def test_a_recipe_carries_its_calibration_and_older_ones_read_as_none(tmp_path):
    from mlx_reptilora.meta import recipe as recipes

    chosen = recipes.Recipe("maml", "sgd", 3, 0.1, calibrate="content-free")
    recipes.write(tmp_path, {**recipes.as_dict(chosen), "by_shots": {"1": recipes.as_dict(chosen)}}, {})
    assert recipes.read(tmp_path, shots=0).calibrate == "content-free"
    assert recipes.read(tmp_path).describe() == "sgd, 3 steps, lr 0.1, choice tasks calibrated (content-free)"
    older = {k: v for k, v in recipes.as_dict(chosen).items() if k != "calibrate"}
    recipes.write(tmp_path, older, {})
    assert recipes.read(tmp_path).calibrate == "none" and recipes.read(tmp_path).describe() == "sgd, 3 steps, lr 0.1"
