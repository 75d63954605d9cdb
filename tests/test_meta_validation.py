"""Meta-validation in meta-train (issue #15): θ is adapted on held-out tasks' shots with a grid around
its recipe every --valid-every episodes, the best θ is kept with its best setting as the start's
recipe, adapt uses that recipe, and a resumed run ends bit-identical to an uninterrupted one."""

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_reptilora.meta import checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
# a tiny run: ACLSum titles for training, Python names (another group) for validation
ARGS = ["--tasks", "aclsum-title", "--valid-tasks", "pydoc-name", "--support", "2", "--query", "2",
        "--inner-steps", "1", "--max-length", "64", "--valid-every", "2", "--valid-shots", "1",
        "--valid-steps", "1,2", "--valid-lr-scales", "1", "--valid-limit", "2", "--eval-every", "0",
        "--checkpoint-every", "1", "--keep-checkpoints", "5", "-q"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "mlx_reptilora", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)


def valid_records(out: Path) -> list[dict]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "valid_seconds"} for r in recs if "valid" in r]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("valid") / "run"
    r = cli("meta-train", *ARGS, "--episodes", "4", "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def test_validation_is_logged_and_the_best_theta_and_setting_are_kept(run):
    recs = valid_records(run)
    assert [r["episode"] for r in recs] == [1, 3]  # after episodes 2 and 4
    for r in recs:
        assert set(r["valid"]) == {"pydoc-name"} and set(r["valid"]["pydoc-name"]) == {"1"}
        points = r["valid"]["pydoc-name"]["1"]
        assert set(points) == {"1 steps, lr 0.0005", "2 steps, lr 0.0005"}  # the recipe and its 2x steps
        assert all(set(p) == {"loss", "rougeL"} for p in points.values())
    best = max(recs, key=lambda r: (r["score"], -r["loss"]))
    assert [r["best"] for r in recs] == [True, best is recs[1]]
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["selected_episode"] == best["episode"] + 1
    recipe = json.loads((run / "recipe.json").read_text())
    assert recipe["chosen_by"].startswith(f"meta-validation at episode {best['episode'] + 1} on pydoc-name")
    assert recipe["steps"] == best["recipe"]["steps"]
    # the start is the kept θ: the best group of the last checkpoint
    _, groups = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    kept = mx.load(str(run / "adapters.safetensors"))
    assert all(mx.array_equal(kept[k], groups["best"][k]).item() for k in groups["best"])


def test_adapt_uses_the_validated_recipe(run, tmp_path):
    r = cli("adapt", "--adapters", run, "--task", "pydoc-name", "--shots", "1", "--max-length", "64",
            "--out", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    assert "(meta-validation at episode" in r.stdout


def test_resume_is_bit_identical_with_validation(run, tmp_path):
    out = tmp_path / "resumed"
    r = cli("meta-train", *ARGS, "--episodes", "2", "--out", out)
    assert r.returncode == 0, r.stderr
    r = cli("meta-train", *ARGS, "--episodes", "4", "--out", out, "--resume")
    assert r.returncode == 0, r.stderr
    assert (out / "adapters.safetensors").read_bytes() == (run / "adapters.safetensors").read_bytes()
    assert (out / "recipe.json").read_text() == (run / "recipe.json").read_text()
    assert valid_records(out) == valid_records(run)


def test_validation_leaves_meta_training_unchanged(run, tmp_path):
    """The same run without --valid-tasks ends at the same θ (validation adapts copies, on its own
    inner loops, and every task of training reseeds its RNG)."""
    plain = [a for i, a in enumerate(ARGS) if not (a.startswith("--valid") or (i and ARGS[i - 1].startswith("--valid")))]
    out = tmp_path / "plain"
    r = cli("meta-train", *plain, "--episodes", "4", "--out", out)
    assert r.returncode == 0, r.stderr
    _, with_validation = checkpoint.load(checkpoint.latest(run / "checkpoints"))
    _, without = checkpoint.load(checkpoint.latest(out / "checkpoints"))
    assert all(mx.array_equal(with_validation["theta"][k], without["theta"][k]).item() for k in without["theta"])
    assert not valid_records(out) and "best" not in without


@pytest.mark.parametrize("args, message", [
    (["--tasks", "aclsum-title,pydoc-name", "--valid-tasks", "pydoc-name"], "also in --tasks"),
    (["--tasks", "pydoc", "--valid-tasks", "pydoc-name"], "shares its documents with the training task pydoc"),
    (["--tasks", "pydoc", "--valid-tasks", "aclsum-title", "--valid-shots", "500"], "--valid-shots 500"),
])
def test_bad_validation_settings_are_one_line(args, message, tmp_path):
    r = cli("meta-train", *args, "--episodes", "1", "--out", tmp_path / "x")
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "x").exists()


def test_the_outer_loop_alone_refuses_validation_it_cannot_run():
    cfg = train.MetaTrainConfig(tasks=["aclsum-title"], valid_tasks=["pydoc-name"], episodes=1)
    with pytest.raises(train.UserError, match="needs the meta-validation"):
        train.run(cfg)
