"""Bad inputs and faults, through the CLI as a demanding user meets them (in this process, but where
another process is the point: a second run holding the folder). Each case asserts: a non-zero exit,
exactly one line on stderr and no traceback, nothing half-written, and that the same command with
the input corrected then succeeds."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_reptilora.model import adapters
from tests.conftest import run_cli

PASSED: set = set()  # corrected commands already seen to succeed (keyed without their output path)


def cli(*args, env=None, cwd=None):
    return run_cli(*args, env=env, cwd=cwd)


def fails_in_one_line(r, message):
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0, r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert message in lines[0], lines[0]


def succeeds(args, out=None):
    """The corrected command succeeds: run once per distinct command (its output is not used)."""
    key = tuple(str(a) for a in args)
    if key not in PASSED:
        made(args, out)
        PASSED.add(key)


def made(args, out=None):
    """Run a command whose output the test goes on to use; it must succeed."""
    r = cli(*args, *(["--out", out] if out else []))
    assert r.returncode == 0, r.stderr
    return out


def meta_args(tiny, *extra, episodes=1, quiet=True):
    return ["meta-train", "--model", tiny, "--tasks", "aclsum-title", "--episodes", str(episodes), "--support", "2",
            "--query", "2", "--inner-steps", "1", "--rank", "4", "--max-length", "128", "--eval-every", "0",
            *(["-q"] if quiet else []), *extra]


@pytest.fixture(scope="module")
def _finished(tiny_dir, tmp_path_factory):
    return made(meta_args(tiny_dir, "--checkpoint-every", "1"), tmp_path_factory.mktemp("finished") / "run")


@pytest.fixture
def finished(_finished, tmp_path):
    """A fresh copy of a finished 1-episode run (checkpointed every episode)."""
    return Path(shutil.copytree(_finished, tmp_path / "run"))


# ---- options: every range checked before any work ----------------------------------------------

META_CASES = [
    (["--inner-lr", "nan"], "--inner-lr must be a finite number"),
    (["--inner-lr", "inf"], "--inner-lr must be a finite number"),
    (["--inner-lr", "1e6"], "--inner-lr must be <= 1"),
    (["--inner-lr", "1e39"], "--inner-lr must be <= 1"),
    (["--query", "-1"], "--query must be >= 0"),
    (["--meta-lr-final", "-5"], "--meta-lr-final must be >= 0"),
    (["--meta-lr", "0"], "--meta-lr must be > 0"),
    (["--grad-clip", "-1"], "--grad-clip must be >= 0"),
    (["--alpha", "0"], "--alpha must be > 0"),
    (["--alpha", "nan"], "--alpha must be a finite number"),
    (["--inner-batch", "0"], "--inner-batch must be >= 1"),
    (["--inner-batch", "-2"], "--inner-batch must be >= 1"),
    (["--eval-every", "-1"], "--eval-every must be >= 0"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--support", "2.5"], "--support: expected an integer, got '2.5'"),
    (["--task-weights", "a"], "--task-weights: expected a number, got 'a'"),
    (["--task-weights", "nan"], "--task-weights must be a finite number"),
    (["--task-weights", "1,1"], "--task-weights has 2 numbers for 1 tasks"),
    (["--dropout", "1"], "--dropout must be < 1"),
    (["--learner", "maml", "--inner-optimizer", "adam0"], "plain SGD inner steps"),
]


@pytest.mark.parametrize("bad,message", META_CASES, ids=[" ".join(c[0]) for c in META_CASES])
def test_meta_train_values_out_of_range(tiny_dir, tmp_path, bad, message):
    out = tmp_path / "run"
    fails_in_one_line(cli(*meta_args(tiny_dir), *bad, "--out", out), message)
    assert not out.exists()
    succeeds(meta_args(tiny_dir), tmp_path / "good")


YAML_CASES = [
    ("episodes: true\n", "--episodes: expected an integer, got True"),
    ("episodes: two\n", "--episodes: expected an integer, got 'two'"),
    ("support: 2.5\n", "--support: expected an integer, got 2.5"),
    ("tasks: 5\n", "--tasks: expected text, got 5"),
    ("inner-lr: nan\n", "--inner-lr must be a finite number"),
]


BASE_YAML = ("tasks: aclsum-title\nepisodes: 1\nsupport: 2\nquery: 2\ninner-steps: 1\nrank: 4\nmax-length: 128\n"
             "eval-every: 0\nquiet: true\n")


@pytest.fixture(scope="module")
def good_yaml(tmp_path_factory):
    good = tmp_path_factory.mktemp("yaml") / "good.yaml"
    # unquoted 1e-3 is text to PyYAML; '4' is quoted text: both become the declared numbers
    good.write_text(BASE_YAML + "inner-lr: 1e-3\nrank: '4'\n")
    return good


@pytest.mark.parametrize("text,message", YAML_CASES, ids=[c[0].strip() for c in YAML_CASES])
def test_yaml_values_of_the_wrong_type(tiny_dir, tmp_path, good_yaml, text, message):
    bad, good = tmp_path / "bad.yaml", good_yaml
    bad.write_text(BASE_YAML + text)  # a repeated key: PyYAML keeps the last
    fails_in_one_line(cli("meta-train", "--model", tiny_dir, "-c", bad, "--out", tmp_path / "run"), message)
    assert not (tmp_path / "run").exists()
    succeeds(["meta-train", "--model", str(tiny_dir), "-c", str(good)], tmp_path / "good")


ADAPT = ["adapt", "--task", "aclsum-title", "--shots", "1", "--steps", "1", "--max-length", "128", "-q"]
EVALUATE = ["evaluate", "--task", "aclsum-title", "--limit", "2", "--max-length", "128", "-q"]
OTHER_CASES = [  # (command, bad flag and value, message); the corrected command drops the bad flag
    (ADAPT, ["--lr", "-1"], "--lr must be > 0"),
    (ADAPT, ["--steps", "-3"], "--steps must be >= 0"),
    (EVALUATE, ["--batch-size", "0"], "--batch-size must be >= 1"),
    (EVALUATE, ["--limit", "0"], "--limit must be >= 1"),
    (EVALUATE, ["--limit", "-2"], "--limit must be >= 1"),
    (EVALUATE, ["--max-new-tokens", "-1"], "--max-new-tokens must be >= 1"),
    (EVALUATE, ["--in-context", "-1"], "--in-context must be >= 0"),
    (EVALUATE, ["--max-length", "0"], "--max-length must be >= 16"),
]


@pytest.mark.parametrize("command,bad,message", OTHER_CASES, ids=[f"{c[0][0]} {' '.join(c[1])}" for c in OTHER_CASES])
def test_adapt_and_evaluate_values_out_of_range(tiny_dir, tmp_path, command, bad, message):
    out = ["--out", tmp_path / "a"] if command[0] == "adapt" else []
    fails_in_one_line(cli(*command, "--model", tiny_dir, *bad, *out), message)
    assert not (tmp_path / "a").exists()
    succeeds(command + ["--model", str(tiny_dir)], tmp_path / "a" if command[0] == "adapt" else None)


def test_compare_shots_that_are_not_numbers(tiny_dir, tmp_path, finished):
    start = finished
    base = ["compare", "--adapters", start, "--model", tiny_dir, "--tasks", "aclsum-title", "--limit", "2",
            "--draws", "1", "--steps", "1", "--max-length", "128", "--systems", "lora,reptilora", "-q"]
    fails_in_one_line(cli(*base, "--shots", "a,b", "--out", tmp_path / "c"), "--shots: expected an integer, got 'a'")
    assert not (tmp_path / "c").exists()
    succeeds(base + ["--shots", "0,1"], tmp_path / "c")


# ---- output folders ------------------------------------------------------------------------------

def test_out_that_is_a_file_or_under_a_file_fails_before_the_model_loads(tiny_dir, tmp_path):
    (tmp_path / "f").write_text("x")
    for out, message in ((tmp_path / "f", "is a file, not a folder"), (tmp_path / "f" / "sub", "cannot be written")):
        t = time.perf_counter()
        fails_in_one_line(cli(*meta_args(tiny_dir), "--out", out), message)
        fails_in_one_line(cli("adapt", "--task", "aclsum-title", "--shots", "1", "--model", tiny_dir, "--out", out),
                          message)
        assert time.perf_counter() - t < 40
    fails_in_one_line(cli("evaluate", "--task", "aclsum-title", "--model", tiny_dir, "--json", tmp_path / "f" / "x.json"),
                      f"--json {tmp_path / 'f'} is a file, not a folder")
    assert (tmp_path / "f").read_text() == "x"
    succeeds(meta_args(tiny_dir), tmp_path / "g")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out(tiny_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    fails_in_one_line(cli(*meta_args(tiny_dir), "--out", ro / "run"), "cannot be written")


def test_two_runs_into_one_out_at_once(tiny_dir, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "mlx_reptilora", *map(str, meta_args(tiny_dir, episodes=40)),
                              "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "meta.json").exists():
        time.sleep(0.05)
    second = cli(*meta_args(tiny_dir, "--seed", "1"), "--out", out)
    fails_in_one_line(second, f"--out {out} is in use by another run (pid {first.pid})")
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=120)
    assert json.loads((out / "meta.json").read_text())["config"]["seed"] == 0  # the first run's, untouched
    succeeds(meta_args(tiny_dir, "--seed", "1"), tmp_path / "other")


# ---- broken adapters are never written, and never loaded silently -------------------------------

def test_nan_adapters_are_refused_by_adapt_and_evaluate(tiny_dir, tmp_path, finished):
    start = finished
    broken = tmp_path / "broken"
    shutil.copytree(start, broken)
    w = adapters.read_weights(start)
    k = next(iter(w))
    w[k] = mx.full(w[k].shape, float("nan"))
    mx.save_safetensors(str(broken / adapters.WEIGHTS), w)
    for command in (["adapt", "--task", "aclsum-title", "--shots", "1", "--steps", "1", "--out", tmp_path / "a"],
                    ["evaluate", "--task", "aclsum-title", "--limit", "2"]):
        fails_in_one_line(cli(*command, "--model", tiny_dir, "--adapters", broken, "--max-length", "128"),
                          "hold non-finite values")
    assert not (tmp_path / "a").exists()
    succeeds(["evaluate", "--task", "aclsum-title", "--limit", "2", "--model", str(tiny_dir), "--adapters", str(start),
              "--max-length", "128", "-q"])


def test_a_diverged_run_leaves_no_adapters(tiny_dir, tmp_path):
    from tests.test_meta_train import poisoned

    model = poisoned(tiny_dir, tmp_path / "nan-model")
    out = tmp_path / "run"
    r = cli(*meta_args(model, "--max-nonfinite", "2", episodes=3), "--out", out)
    fails_in_one_line(r, "episodes in a row had a non-finite loss")
    assert not (out / adapters.WEIGHTS).exists()


# ---- resume ------------------------------------------------------------------------------------

def test_resume_under_another_spelling_of_the_same_folder(tiny_dir, tmp_path, finished):
    for spelling, episodes in (("./run", 2), (str(tmp_path / "run") + "/", 3)):
        r = cli(*meta_args(tiny_dir, "--checkpoint-every", "1", "--resume", episodes=episodes), "--out", spelling,
                cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["config"]["episodes"] == 3 and [r["after_episode"] for r in meta["resumed"]] == [1, 2]


def test_a_damaged_latest_checkpoint_resumes_from_the_one_before(tiny_dir, tmp_path):
    out = tmp_path / "run"
    args = ("--checkpoint-every", "1", "--keep-checkpoints", "3")
    made(meta_args(tiny_dir, *args, episodes=3), out)
    ckpt = out / "checkpoints"
    (ckpt / "episode-000003" / "state.safetensors").write_bytes(b"garbage")
    r = cli(*meta_args(tiny_dir, *args, "--resume", episodes=4, quiet=False), "--out", out)
    assert r.returncode == 0, r.stderr
    assert "the newest checkpoint is damaged: resuming from episode-000002" in r.stderr
    rows = [json.loads(line)["episode"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == [0, 1, 2, 3]
    (ckpt / "latest").write_text("episode-999999")  # a pointer to nothing
    r = cli(*meta_args(tiny_dir, *args, "--resume", episodes=5), "--out", out)
    assert r.returncode == 0, r.stderr


def test_a_run_from_before_a_validation_default_changed_resumes(tiny_dir, finished):
    """Without validation, its settings are unused: a run written when --valid-steps defaulted to 1,2
    resumes under today's default (0,1,2)."""
    meta = json.loads((finished / "meta.json").read_text())
    meta["config"]["valid_steps"] = [1.0, 2.0]
    (finished / "meta.json").write_text(json.dumps(meta))
    r = cli(*meta_args(tiny_dir, "--resume", episodes=2), "--out", finished)
    assert r.returncode == 0, r.stderr
    fails_in_one_line(cli(*meta_args(tiny_dir, "--resume", "--support", "3", episodes=3), "--out", finished),
                      "different settings than the run in")  # a setting that is used still must match


def test_a_resumed_run_keeps_the_step_settings_it_started_with(tiny_dir, finished, monkeypatch):
    """--recompute-swiglu, --quantized-matmul and --lora-dtype are chosen per device (auto): a resume that leaves
    them to it takes the run's own values (here ones this CPU's auto would not choose), a run from
    before they existed takes what its step did then, and a resume that names another is refused.
    --memory-limit changes no number: a resume may change it."""
    from mlx_reptilora.meta import run_folder, train

    meta = json.loads((finished / "meta.json").read_text())
    meta["config"].update(recompute_swiglu=True, quantized_matmul="dense", lora_dtype="base")
    (finished / "meta.json").write_text(json.dumps(meta))
    given = []
    real = train.prepare
    monkeypatch.setattr(train, "prepare", lambda cfg, *a: given.append(cfg) or real(cfg, *a))
    r = cli(*meta_args(tiny_dir, "--resume", "--memory-limit", "none", episodes=2), "--out", finished)
    assert r.returncode == 0, r.stderr
    assert (given[0].recompute_swiglu, given[0].quantized_matmul, given[0].lora_dtype) == (True, "dense", "base")
    fails_in_one_line(cli(*meta_args(tiny_dir, "--resume", "--quantized-matmul", "kernel", episodes=3), "--out",
                          finished), "different settings than the run in")
    for k in run_folder.DEVICE_DEFAULTS:
        del meta["config"][k]
    (finished / "meta.json").write_text(json.dumps(meta))
    cfg = train.MetaTrainConfig(out=str(finished), resume=True)
    assert run_folder.started_with(finished, cfg) == {"recompute_swiglu": False, "quantized_matmul": "kernel",
                                                      "lora_dtype": "float32"}


def test_damaged_meta_json_is_one_line(tiny_dir, finished):
    out = finished
    good = (out / "meta.json").read_text()
    (out / "meta.json").write_text("{not json")
    fails_in_one_line(cli(*meta_args(tiny_dir, "--resume", episodes=2), "--out", out), "meta.json is damaged")
    (out / "meta.json").write_text(good)
    assert cli(*meta_args(tiny_dir, "--resume", episodes=2), "--out", out).returncode == 0


def test_a_cut_metrics_line_is_dropped_on_resume(tiny_dir, finished):
    out = finished
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"episode": 1, "tas')  # what a kill in the middle of a write leaves
    r = cli(*meta_args(tiny_dir, "--resume", episodes=2, quiet=False), "--out", out)
    assert r.returncode == 0 and "dropped 1 line(s) that did not parse" in r.stderr, r.stderr
    assert [json.loads(line)["episode"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_resume_refuses_to_splice_two_annealing_schedules(tiny_dir, tmp_path):
    out = tmp_path / "run"
    args = meta_args(tiny_dir, "--meta-lr", "1", "--meta-lr-final", "0.5", "--checkpoint-every", "1")
    made(args, out)
    fails_in_one_line(cli(*args, "--resume", "--episodes", "5", "--out", out),
                      "this run anneals α over 1 episodes (--meta-lr-final); resume it with --episodes 1")


def test_a_run_that_failed_before_its_first_checkpoint_does_not_block_a_retry(tiny_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"config": {"episodes": 1}}))  # what a crashed start leaves
    made(meta_args(tiny_dir), out)
    assert json.loads((out / "meta.json").read_text())["config"]["tasks"] == ["aclsum-title"]


# ---- files that are not what they should be ----------------------------------------------------

def test_task_folders_without_training_examples(tiny_dir, tmp_path):
    empty, only_test = tmp_path / "empty", tmp_path / "only-test"
    for d in (empty, only_test):
        d.mkdir()
    (empty / "train.jsonl").write_text("")
    (empty / "test.jsonl").write_text(json.dumps({"document": "a b c d", "summary": "a"}) + "\n")
    (only_test / "test.jsonl").write_text(json.dumps({"document": "a b c d", "summary": "a"}) + "\n")
    for task in (empty, only_test):
        fails_in_one_line(cli(*meta_args(tiny_dir), "--tasks", task, "--out", tmp_path / "m"), "has no train split")
        fails_in_one_line(cli("adapt", "--task", task, "--shots", "1", "--model", tiny_dir, "--out", tmp_path / "a"),
                          "has no train split")
    assert not (tmp_path / "m").exists() and not (tmp_path / "a").exists()


@pytest.fixture(scope="module")
def peft_folder(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("peft")
    base = models_load(tiny_dir)
    cfg = adapters.LoraConfig(rank=4)
    adapters.attach(base.model, cfg)
    adapters.save(base.model, cfg, root / "mlx")
    adapters.to_peft(root / "mlx", root / "peft")
    return root / "peft"


def models_load(path):
    from mlx_reptilora.model import models

    return models.load(str(path), verbose=False)


def _broken_peft(src: Path, dst: Path, config=None, tensors=None) -> Path:
    shutil.copytree(src, dst)
    if config is not None:
        (dst / "adapter_config.json").write_text(json.dumps(config))
    if tensors is not None:
        mx.save_safetensors(str(dst / adapters.PEFT_WEIGHTS), tensors, metadata={"format": "pt"})
    return dst


def test_broken_peft_folders_import_nothing(peft_folder, tmp_path):
    config = json.loads((peft_folder / "adapter_config.json").read_text())
    tensors = mx.load(str(peft_folder / adapters.PEFT_WEIGHTS))
    a_only = {k: v for k, v in tensors.items() if "lora_A" in k}
    one = next(iter(tensors))
    cases = [
        ({k: v for k, v in config.items() if k != "r"}, None, "no usable r"),
        ([config], None, "is not a JSON object"),
        (None, {**tensors, "base_model.model.model.embed_tokens.lora_embedding_A": mx.zeros((4, 8))},
         "is not LoRA on a transformer block's linear layer"),
        (None, {}, "holds no tensors"),
        (None, {**tensors, one.replace("lora_A", "lora_C").replace("lora_B", "lora_C"): tensors[one]},
         "is not LoRA on a transformer block's linear layer"),
        (None, a_only, "but no lora_B: a half adapter"),
    ]
    for i, (cfg, ts, message) in enumerate(cases):
        src = _broken_peft(peft_folder, tmp_path / f"p{i}", cfg, ts)
        fails_in_one_line(cli("import-peft", src, tmp_path / f"out{i}"), message)
        assert not (tmp_path / f"out{i}").exists()
    r = cli("import-peft", peft_folder, tmp_path / "good")
    assert r.returncode == 0, r.stderr


def test_a_corrupt_gguf_says_so_before_any_conversion_message(tmp_path):
    bad = tmp_path / "m.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    r = cli("info", "--model", bad, env={"MLX_REPTILORA_CACHE": str(tmp_path / "cache")})
    fails_in_one_line(r, "cannot read GGUF")
    assert "converting" not in r.stderr


# ---- faults inside a run -------------------------------------------------------------------------

def test_a_full_disk_during_a_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch):
    from mlx_reptilora.errors import UserError
    from mlx_reptilora.meta import checkpoint

    theta = {"a": mx.ones((2,))}
    checkpoint.save(tmp_path, 1, {"theta": theta}, {"sampler": {}, "nonfinite": 0})

    def full(*args, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mx, "save_safetensors", full)
    with pytest.raises(UserError, match="No space left on device"):
        checkpoint.save(tmp_path, 2, {"theta": theta}, {"sampler": {}, "nonfinite": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode-000001", "latest"]  # no temporary left
    assert checkpoint.latest(tmp_path).name == "episode-000001"


def test_a_full_disk_never_leaves_an_empty_file(tmp_path, monkeypatch):
    from mlx_reptilora.errors import UserError
    from mlx_reptilora.paths import atomic_write_text

    target = tmp_path / "x.json"
    target.write_text("old")

    def full(self, *args, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(UserError, match="cannot write .*x.json: No space left on device"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_files_are_written_with_the_usual_mode(_finished):
    out = _finished
    mask = os.umask(0)
    os.umask(mask)
    for name in (adapters.WEIGHTS, adapters.CONFIG, "meta.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
