"""Learned adaptation: Meta-SGD's gradient with respect to its learning rates against finite
differences, MAML++'s per-layer per-step rates (used in order) and multi-step-loss weights, a start's
recipe used by default and overridden by flags, mlx-lm still reading the folder, and kill -9 +
--resume bit-identical with the learned rates included."""

import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

from mlx_reptilora.meta import recipe as recipes
from mlx_reptilora.meta import train
from mlx_reptilora.meta.maml import msl_weights
from mlx_reptilora.model import adapters, models
from tests.conftest import run_cli
from tests.test_learners import episode_of, learner_and_loop, nudged
from tests.test_meta_train import kill_9_then_resume


def test_meta_sgd_gradient_of_its_learning_rates_matches_finite_differences(tiny_dir):
    """float64 on the CPU, dropout off; Richardson extrapolation of central differences (see the MAML
    test for why: MLX's float64 transcendental functions are float32-accurate)."""
    base = models.load(str(tiny_dir), verbose=False)
    base.model.set_dtype(mx.float64)
    adapters.attach(base.model, adapters.LoraConfig(rank=2, dropout=0.0))
    theta = {k: v.astype(mx.float64) for k, v in nudged(base.model).items()}
    ep = episode_of(base.tokenizer)
    steps = 2
    learner, inner = learner_and_loop(base.model, "meta-sgd", inner_steps=steps, inner_lr=0.01)
    rng = np.random.default_rng(1)
    alpha = {k: mx.array(0.01 + 0.005 * rng.random(v.shape)).astype(mx.float64) for k, v in theta.items()}
    mx.random.seed(11)
    result = learner.task({"theta": theta, "rates": dict(alpha)}, ep, inner, None, 0)
    g_alpha = result.contribution["rates"]
    assert set(g_alpha) == set(theta)

    def meta_loss(a):  # L_Q(φ_T) with φ_{t+1} = φ_t − α ⊙ ∇L_S(φ_t), written out
        phi = theta
        for _ in range(steps):
            inner.set_weights(phi)
            _, g = inner.gradient(ep.support)
            phi = {k: phi[k] - a[k] * g[k] for k in phi}
        inner.set_weights(phi)
        return inner.gradient(ep.query)[0]

    d = {k: mx.array(rng.standard_normal(v.shape)).astype(mx.float64) for k, v in theta.items()}
    n = np.sqrt(sum(float((v * v).sum()) for v in d.values()))
    d = {k: v / n for k, v in d.items()}

    def central(eps):
        return (meta_loss({k: alpha[k] + eps * d[k] for k in d}) - meta_loss({k: alpha[k] - eps * d[k] for k in d})) / (2 * eps)

    fd = (4 * central(5e-5) - central(1e-4)) / 3
    analytic = sum(float((g_alpha[k] * d[k]).sum()) for k in d)
    norm = np.sqrt(sum(float((v * v).sum()) for v in g_alpha.values()))
    assert abs(fd - analytic) <= 1e-3 * norm, (fd, analytic, norm)
    assert abs(analytic) > 1e-3 * norm  # a direction the gradient really moves along


def test_lslr_has_one_rate_per_tensor_and_step_used_in_order(tiny):
    adapters.attach(tiny.model, adapters.LoraConfig(rank=4, dropout=0.0))
    ep = episode_of(tiny.tokenizer)
    steps = 3
    learner, inner = learner_and_loop(tiny.model, "maml", inner_steps=steps, inner_lr=0.05, lslr=True)
    theta = nudged(tiny.model)
    rates = learner.init(theta)["rates"]
    assert set(rates) == set(theta) and all(v.shape == (steps,) for v in rates.values())
    assert all(mx.all(v == 0.05).item() for v in rates.values())
    # distinct rates per step and tensor: the trajectory must apply rate[t] at step t
    rates = {k: mx.array([0.01, 0.2, 0.05]) * (1 + 0.1 * i) for i, k in enumerate(theta)}
    got = learner.task({"theta": theta, "rates": rates}, ep, inner, None, 0).adapted
    phi = theta
    for t in range(steps):
        inner.set_weights(phi)
        _, g = inner.gradient(ep.support)
        phi = {k: phi[k] - rates[k][t] * g[k] for k in phi}
    for k in phi:
        assert mx.allclose(got[k], phi[k], rtol=1e-6, atol=1e-9), k
    phi_reversed = theta
    for t in reversed(range(steps)):
        inner.set_weights(phi_reversed)
        _, g = inner.gradient(ep.support)
        phi_reversed = {k: phi_reversed[k] - rates[k][t] * g[k] for k in phi_reversed}
    assert any(not mx.allclose(got[k], phi_reversed[k], rtol=1e-6, atol=1e-9) for k in phi)


def test_multi_step_loss_weights_sum_to_one_and_anneal_toward_the_last_step():
    steps, anneal = 5, 10
    previous = None
    for episode in range(0, 15):
        w = msl_weights(steps, episode, anneal)
        assert w.sum() == pytest.approx(1.0) and (w > 0).all()
        if previous is not None:
            assert (w[:-1] <= previous[:-1] + 1e-12).all() and w[-1] >= previous[-1] - 1e-12
        previous = w
    assert np.allclose(msl_weights(steps, 0, anneal), 1 / steps)  # uniform at first
    late = msl_weights(steps, anneal, anneal)
    assert np.allclose(late[:-1], 0.03 / steps) and late[-1] == pytest.approx(1 - 4 * 0.03 / steps)
    assert np.array_equal(msl_weights(steps, 100, anneal), late)  # and stays there


def cli(*args):
    return run_cli(*args)


@pytest.fixture(scope="module")
def meta_sgd_start(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("msgd") / "run"
    r = cli("meta-train", "--model", tiny_dir, "--learner", "meta-sgd", "--tasks", "aclsum-title,pydoc", "--episodes", "2",
            "--support", "2", "--query", "2", "--inner-steps", "2", "--rank", "4", "--max-length", "128",
            "--eval-every", "0", "--out", out, "-q")
    assert r.returncode == 0, r.stderr
    return out


def test_a_start_carries_its_recipe_and_adapt_uses_it_unless_told_otherwise(tiny_dir, meta_sgd_start, tmp_path):
    recipe = json.loads((meta_sgd_start / recipes.RECIPE).read_text())
    assert recipe == {"learner": "meta-sgd", "optimizer": "sgd", "steps": 2, "lr": 0.1, "learned_lr": "per element"}
    rates = mx.load(str(meta_sgd_start / recipes.LEARNED))
    assert set(rates) == set(adapters.read_weights(meta_sgd_start))
    assert any(not mx.allclose(v, mx.full(v.shape, 0.1)).item() for v in rates.values())  # they were learned

    common = ["adapt", "--model", tiny_dir, "--adapters", meta_sgd_start, "--task", "aclsum-title", "--shots", "2",
              "--max-length", "128"]
    r = cli(*common, "--out", tmp_path / "by-recipe")
    assert r.returncode == 0, r.stderr
    assert "recipe: sgd, 2 steps, learned learning rates (per element) (the meta-training settings)" in r.stdout
    r = cli(*common, "--lr", "0.01", "--steps", "3", "--out", tmp_path / "by-flags")
    assert r.returncode == 0, r.stderr
    assert "recipe: sgd, 3 steps, lr 0.01 (the meta-training settings, with --steps 3, --lr 0.01)" in r.stdout
    used = [json.loads((tmp_path / d / adapters.CONFIG).read_text())["recipe"] for d in ("by-recipe", "by-flags")]
    assert used[0]["learned_lr"] == "per element" and used[0]["steps"] == 2
    assert used[1]["learned_lr"] is None and used[1]["lr"] == 0.01 and used[1]["steps"] == 3
    # the learned rates really drove the first: a plain SGD at the starting rate ends elsewhere
    r = cli(*common, "--lr", "0.1", "--out", tmp_path / "plain")
    a, b = adapters.read_weights(tmp_path / "by-recipe"), adapters.read_weights(tmp_path / "plain")
    assert any(not mx.allclose(a[k], b[k], atol=1e-7).item() for k in a)


def test_steps_auto_holds_shots_out_and_may_choose_zero(tiny_dir, meta_sgd_start, tmp_path):
    r = cli("adapt", "--model", tiny_dir, "--adapters", meta_sgd_start, "--task", "aclsum-title", "--shots", "3",
            "--steps", "auto", "--max-length", "128", "--out", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("--steps auto:"))
    chosen = int(line.split()[2])
    means = [float(x) for x in line.split("steps: ")[1].split(";")[0].split(", ")]
    assert len(means) == 5 and chosen == int(np.argmin(means))  # 0 to 2 x 2 steps
    assert json.loads((tmp_path / "a" / adapters.CONFIG).read_text())["steps"] == chosen
    if chosen == 0:
        a, b = adapters.read_weights(tmp_path / "a"), adapters.read_weights(meta_sgd_start)
        assert all(mx.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("command", [["adapt", "--task", "aclsum-title", "--shots", "1"],
                                     ["compare", "--tasks", "aclsum-title", "--shots", "0,1,5"]])
def test_steps_auto_with_one_shot_is_one_line_before_any_work(command, meta_sgd_start, tmp_path):
    r = cli(*command, "--adapters", meta_sgd_start, "--steps", "auto", "--model", tmp_path / "no-such-model",
            "--out", tmp_path / "out")  # the model is never reached
    assert r.returncode == 2 and "needs --shots 2 or more" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_mlx_lm_loads_and_fuses_a_folder_with_a_recipe(tiny_dir, meta_sgd_start, tmp_path):
    from mlx_lm.utils import load

    model, _ = load(str(tiny_dir), adapter_path=str(meta_sgd_start))
    ids = mx.array([[1, 504, 3612, 314, 253]])
    r = subprocess.run([sys.executable, "-m", "mlx_lm", "fuse", "--model", str(tiny_dir), "--adapter-path",
                        str(meta_sgd_start), "--save-path", str(tmp_path / "fused")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    fused, _ = load(str(tmp_path / "fused"))
    model.eval()
    assert mx.allclose(fused(ids), model(ids), atol=1e-4)


def test_kill_9_then_resume_is_bit_identical_with_learned_rates(tiny_dir, tmp_path):
    """MAML++ all at once: learned per-layer per-step rates, the multi-step loss annealing by episode,
    and the switch from first to second order in the middle of the run."""
    kill_9_then_resume(tiny_dir, tmp_path, ["--learner", "maml", "--lslr", "--multi-step-loss", "4",
                                            "--first-order-episodes", "3"])
    a = mx.load(str(tmp_path / "straight" / recipes.LEARNED))
    b = mx.load(str(tmp_path / "killed" / recipes.LEARNED))
    assert set(a) == set(b) and all(mx.array_equal(a[k], b[k]) for k in a)


def test_options_of_other_learners_are_refused(tiny_dir, tmp_path):
    for args, message in ((["--learner", "fomaml", "--multi-step-loss", "3"], "--multi-step-loss applies to"),
                          (["--learner", "meta-sgd", "--lslr"], "--lslr is MAML's"),
                          (["--learner", "reptile", "--first-order"], "--first-order applies to")):
        r = cli("meta-train", "--model", tiny_dir, *args, "--out", tmp_path / "x")
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert train.LEARNERS["meta-sgd"].name == "meta-sgd"
