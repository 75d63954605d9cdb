"""--learner abmll: a Gaussian prior over the LoRA tensors whose posterior each task refines on its
shots. The KL is the closed form (checked against PyTorch's), the refinement reduces to plain SGD
when the posterior has no width and no KL, the first-order meta-gradient is the one the module
docstring derives; it meta-trains, resumes bit-identically, adapts to a plain mlx-lm adapter, and
compare averages posterior samples on a choice task."""

import json
import math
import re
import subprocess
import sys

import mlx.core as mx
import numpy as np
import torch

from mlx_reptilora.meta import abmll, start as starts
from mlx_reptilora.model import adapters
from tests.conftest import assert_close, run_cli, trained_and_resumed
from tests.test_learners import episode_of, learner_and_loop, nudged


def _gaussians(seed):
    rng = np.random.default_rng(seed)
    shapes = {"a": (3, 4), "b": (5,)}
    make = lambda scale: {k: mx.array(scale * rng.standard_normal(s).astype(np.float32)) for k, s in shapes.items()}  # noqa: E731
    return {"theta": make(1.0), "rho": make(0.3)}, {"theta": make(1.0), "rho": make(0.3)}


def test_kl_is_the_closed_form_of_two_diagonal_gaussians():
    q, p = _gaussians(0)
    want = sum(torch.distributions.kl_divergence(
        torch.distributions.Normal(torch.tensor(np.array(q["theta"][k])), torch.tensor(np.exp(np.array(q["rho"][k])))),
        torch.distributions.Normal(torch.tensor(np.array(p["theta"][k])), torch.tensor(np.exp(np.array(p["rho"][k]))))
    ).sum().item() for k in q["theta"])
    assert abs(abmll.kl(q, p).item() - want) <= 1e-5 * abs(want)
    assert abmll.kl(q, q).item() == 0.0


def test_first_order_the_kl_pulls_only_the_prior_width():
    """Through q and through p at once, KL's gradient on μ cancels and on ρ_p is −(μ_q − μ_p)²/σ_p²."""
    q, p = _gaussians(1)
    _, (g_q, g_p) = abmll._kl_grads(q, p)
    for k in q["theta"]:
        assert float(mx.abs(g_q["theta"][k] + g_p["theta"][k]).max()) <= 1e-5
        want = -(q["theta"][k] - p["theta"][k]) ** 2 / mx.exp(2 * p["rho"][k])
        assert mx.allclose(g_q["rho"][k] + g_p["rho"][k], want, rtol=1e-4, atol=1e-5).item()


def test_a_posterior_without_width_or_kl_refines_as_plain_sgd(tiny):
    adapters.attach(tiny.model, adapters.LoraConfig(rank=4, dropout=0.0))
    ep = episode_of(tiny.tokenizer)
    learner, inner = learner_and_loop(tiny.model, "abmll", inner_steps=3, inner_lr=0.05, abmll_sigma=1e-12,
                                      abmll_beta=0.0)
    prior = learner.init(nudged(tiny.model), inner)
    q, nlls = abmll.refine(inner, prior, ep.support, 3, 0.05, 0.0, mx.random.key(0))
    path = inner.sgd_steps(prior["theta"], ep.support, lambda t: 0.05, 3)
    assert_close(q["theta"], path.final, rel=1e-5)
    assert np.allclose(nlls, path.losses, rtol=1e-5)
    # the meta-gradient on μ is the query gradient at the (width-less) posterior: FOMAML's with SGD steps
    mx.random.seed(4)
    got = learner.task(prior, ep, inner, None, 0).contribution
    _, want = inner.gradient_at(path.final, ep.query)
    assert_close(got["theta"], want, rel=1e-4)


def test_the_kl_holds_the_posterior_near_the_prior(tiny):
    adapters.attach(tiny.model, adapters.LoraConfig(rank=4, dropout=0.0))
    ep = episode_of(tiny.tokenizer)
    learner, inner = learner_and_loop(tiny.model, "abmll", inner_steps=3, inner_lr=0.05)
    prior = learner.init(nudged(tiny.model), inner)
    far = [abmll.kl(abmll.refine(inner, prior, ep.support, 3, 0.05, beta, mx.random.key(0))[0], prior).item()
           for beta in (0.0, 1e-4, 1e-3)]
    assert far[0] > far[1] > far[2] > 0


def test_abmll_meta_trains_resumes_adapts_and_compares_with_samples(tiny_dir, tmp_path):
    model = ["--model", str(tiny_dir)]
    args = [*model, "--learner", "abmll", "--tasks", "afinn-polarity,pydoc", "--support", "3", "--query", "3",
            "--inner-steps", "2", "--rank", "4", "--max-length", "64", "--eval-every", "2", "--checkpoint-every", "1",
            "--abmll-samples", "3", "--quiet"]
    straight = trained_and_resumed(args, 3, tmp_path)
    records = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["kl"][0] > 0 for r in records)
    start = starts.read(straight)
    assert isinstance(start, abmll.AbmllStart) and start.settings["samples"] == 3
    rho = start.arrays["rho"]["model.layers.0.self_attn.q_proj.lora_a"]
    assert float(mx.abs(rho - math.log(1e-3)).max()) > 0  # the prior's width is meta-learned too
    read_alone = subprocess.run([sys.executable, "-c", "import sys; from mlx_reptilora.meta import start; "
                                 "print(start.read(sys.argv[1]).kind)", str(straight)], capture_output=True, text=True)
    assert read_alone.stdout.strip() == "abmll", read_alone.stderr  # from Python, no learner imported first

    adapted = run_cli("adapt", *model, "--adapters", straight, "--task", "afinn-polarity", "--shots", "2", "--out",
                      tmp_path / "adapted")
    assert adapted.returncode == 0, adapted.stderr
    said = re.search(r"the start's adapters for these shots: loss on the shots ([0-9.]+) without them -> ([0-9.]+)",
                     adapted.stdout)
    assert said and said[1] != said[2], adapted.stdout  # the posterior's mean is not the prior's
    from mlx_lm.tuner.utils import load_adapters  # what mlx_lm.generate --adapter-path runs

    from mlx_reptilora.model import models
    loaded = load_adapters(models.load(str(tiny_dir), verbose=False).model, str(tmp_path / "adapted"))
    mine = adapters.read_weights(tmp_path / "adapted")
    assert all(mx.array_equal(v, mine[k]).item() for k, v in adapters.get_weights(loaded).items())

    for samples, out in ((None, "cmp"), (0, "cmp-mean")):
        extra = [] if samples is None else ["--samples", str(samples)]
        compared = run_cli("compare", *model, "--adapters", straight, "--tasks", "afinn-polarity", "--shots", "0,2",
                           "--draws", "1", "--limit", "4", "--systems", "lora,meta", *extra, "--out", tmp_path / out)
        assert compared.returncode == 0, compared.stderr
    result = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert result["start_label"] == "ABMLL start"
    rows = [json.loads(x) for x in (tmp_path / "cmp" / "predictions" / "afinn-polarity-meta-2shot.jsonl").read_text().splitlines()]
    mean = [json.loads(x) for x in (tmp_path / "cmp-mean" / "predictions" / "afinn-polarity-meta-2shot.jsonl").read_text().splitlines()]
    assert all(r["samples"] == 3 and abs(sum(r["probs"]) - 1) < 1e-6 for r in rows)
    assert all("samples" not in r for r in mean) and [r["probs"] for r in rows] != [r["probs"] for r in mean]
    lora = [json.loads(x) for x in (tmp_path / "cmp" / "predictions" / "afinn-polarity-lora-2shot.jsonl").read_text().splitlines()]
    assert all("samples" not in r for r in lora)


def test_the_prior_width_takes_its_own_outer_step(tiny):
    """Adam's first step moves each element by its learning rate: log σ by --abmll-sigma-lr, μ by --outer-lr."""
    adapters.attach(tiny.model, adapters.LoraConfig(rank=4, dropout=0.0))
    ep = episode_of(tiny.tokenizer)
    learner, inner = learner_and_loop(tiny.model, "abmll", inner_steps=2, inner_lr=0.05, abmll_sigma_lr=1e-2,
                                      outer_lr=3e-4)
    params = learner.init(nudged(tiny.model), inner)
    new = learner.step(params, [ep], inner, 0).params
    moved = lambda part: max(float(mx.abs(new[part][k] - params[part][k]).max()) for k in params[part])  # noqa: E731
    assert abs(moved("rho") - 1e-2) < 1e-4 and abs(moved("theta") - 3e-4) < 1e-5
    assert set(learner.state()) == {"mean", "rho"}
