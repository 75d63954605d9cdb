"""`mlx-reptilora crosscheck`: the MLX learners and their PyTorch + PEFT twins, started from identical
adapters and fed identical batches (dropout off), episode by episode.

- reptile: both run the same episodes; prints both inner losses and the relative difference of the
  adapters at the end. Proof that the MLX code computes the paper's algorithm.
- fomaml, maml: at each episode's θ both compute the meta-gradient (FOMAML: the query gradient after
  T AdamW steps; MAML: the gradient through T SGD steps, written in PyTorch with torch.func) and
  print its relative difference; θ then moves by MLX's update in both.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .. import options
from ..data import episodes, prompts, tasks
from ..meta import train
from ..meta.inner_loop import InnerLoop
from ..model import adapters, backend, models
from ..options import option
from . import torch_ref


@dataclass
class CrosscheckConfig:
    learner: str = option("reptile", "which learner to check", choices=("reptile", "fomaml", "maml"))
    model: str | None = option(None, "HF repo id, local model folder or .gguf file",
                               default_text="the bundled SmolLM2-135M-Instruct")
    tasks: list[str] = option(["aclsum-title", "pydoc"], "comma-separated tasks")
    episodes: int = option(2, "episodes", min=1)
    support: int = option(4, "support examples per episode", min=1)
    query: int = option(4, "query examples per episode (fomaml, maml)", min=1)
    inner_steps: int = option(3, "inner steps", min=1)
    inner_lr: float | None = option(None, "inner learning rate", gt=0, max=1, default_text="the learner's: 5e-4, or 0.1 "
                                                                                   "for maml's SGD")
    meta_lr: float = option(0.1, "Reptile step size α", gt=0, max=1)
    rank: int = option(16, "LoRA rank", min=1)
    alpha: float = option(32.0, "LoRA alpha", gt=0)
    max_length: int = option(128, "max tokens per example", min=16)
    micro_batch: int = option(4, "examples per forward pass", min=1)
    seed: int = option(0, "seed of the episodes and the start", min=0)
    dtype: str = option("float32", "compute dtype of both frameworks (adapters stay float32)",
                        choices=tuple(backend.DTYPES))
    device: str | None = option(None, "torch device", default_text="cuda when there is one, else cpu")
    json: str | None = option(None, "write the numbers here")
    quiet: bool = option(False, "no progress output", short="-q")


def compare_adapters(a: dict, b: dict, step: float) -> dict:
    """How far two adapter sets are apart.

    `rel_diff` is ||a - b|| / ||b|| over all adapter tensors as one vector. Per tensor, B of a
    freshly started LoRA is tiny (|B| ~ lr x α after an episode) and Adam's first steps are close to
    lr x sign(g): where a gradient entry is ~0 in both frameworks, rounding decides its sign, and
    that entry lands 2 x lr x α away. `sign_flips` counts entries off by more than one such step."""
    keys = sorted(b)
    va = np.concatenate([np.asarray(a[k], np.float64).ravel() for k in keys])
    vb = np.concatenate([np.asarray(b[k], np.float64).ravel() for k in keys])
    per_tensor = max(float(np.linalg.norm(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64))
                           / max(np.linalg.norm(np.asarray(b[k], np.float64)), 1e-30)) for k in keys)
    return {"rel_diff": float(np.linalg.norm(va - vb) / np.linalg.norm(vb)), "max_tensor_rel_diff": per_tensor,
            "sign_flips": int((np.abs(va - vb) > step).sum()), "elements": int(va.size)}


def run(cfg: CrosscheckConfig) -> dict:
    options.check(cfg)
    base = models.load(cfg.model, cfg.dtype, verbose=not cfg.quiet)
    lora = adapters.LoraConfig(cfg.rank, cfg.alpha, 0.0)  # dropout off: both must see the same function
    adapters.attach(base.model, lora, seed=cfg.seed)
    fmt = prompts.PromptFormat.for_tokenizer(base.tokenizer)
    prepared = [episodes.prepare(t, base.tokenizer, fmt, cfg.max_length, ("train",))
                for t in tasks.load_many(cfg.tasks)]
    query = 0 if cfg.learner == "reptile" else cfg.query
    sampler = episodes.EpisodeSampler(prepared, cfg.support, query, None, cfg.seed)
    # the project's own learner and inner loop, with the settings under test
    meta_cfg = train.MetaTrainConfig(learner=cfg.learner, meta_lr=cfg.meta_lr, inner_steps=cfg.inner_steps,
                                     inner_lr=cfg.inner_lr, episodes=cfg.episodes, micro_batch=cfg.micro_batch)
    learner = train.make_learner(meta_cfg)
    buckets = episodes.buckets(cfg.max_length)
    mlx_inner = InnerLoop(base.model, meta_cfg.inner(), buckets)
    dev = cfg.device or torch_ref.device()
    peft_model = torch_ref.load_peft(base.path, lora, dtype=cfg.dtype, dev=dev)
    torch_inner = torch_ref.TorchInnerLoop(peft_model, meta_cfg.inner(), dev) if cfg.learner != "maml" else None
    sides = (cfg, sampler, learner, mlx_inner, peft_model, torch_inner, buckets, dev)
    result = _reptile(*sides) if cfg.learner == "reptile" else _meta_gradients(*sides)
    import torch

    result = {"learner": cfg.learner, "device": {"mlx": backend.describe(), "torch": dev,
                                                 "torch_version": torch.__version__},
              "dtype": cfg.dtype, **result, "config": options.to_dict(cfg)}
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


def _reptile(cfg, sampler, learner, mlx_inner, peft_model, torch_inner, buckets, dev) -> dict:
    theta_mlx = mlx_inner.weights()
    names = list(theta_mlx)
    theta_torch = {k: np.array(v) for k, v in theta_mlx.items()}
    rows = []
    for e in range(cfg.episodes):
        ep = sampler.sample()
        batches = episodes.micro_batches(ep.support, cfg.micro_batch, buckets)  # the very same token ids
        t0 = time.perf_counter()
        step = learner.step({"theta": theta_mlx}, [ep], mlx_inner, e)
        new_mlx, mlx_losses = step.params["theta"], step.metrics["inner_losses"]
        mx.eval(new_mlx)
        t1 = time.perf_counter()
        torch_ref.set_adapters(peft_model, theta_torch)
        torch_inner.reset_optimizer()
        torch_losses = [torch_inner.step(batches) for _ in range(cfg.inner_steps)]
        adapted = torch_ref.get_adapters(peft_model, names)
        theta_torch = {k: theta_torch[k] + cfg.meta_lr * (adapted[k] - theta_torch[k]) for k in names}
        t2 = time.perf_counter()
        theta_mlx = new_mlx
        loss_rel = max(abs(a - b) / abs(b) for a, b in zip(mlx_losses[0], torch_losses))
        rows.append({"episode": e, "task": ep.task, "mlx_losses": mlx_losses[0], "torch_losses": torch_losses,
                     "loss_max_rel_diff": loss_rel, "mlx_s": round(t1 - t0, 2), "torch_s": round(t2 - t1, 2)})
        if not cfg.quiet:
            for s, (a, b) in enumerate(zip(mlx_losses[0], torch_losses)):
                print(f"episode {e} ({ep.task}) step {s}: MLX {a:.6f}  PyTorch {b:.6f}  rel diff {abs(a - b) / abs(b):.2e}")
    diff = compare_adapters({k: np.array(v) for k, v in theta_mlx.items()}, theta_torch,
                            mlx_inner.cfg.lr * cfg.meta_lr)
    b_moved = max(float(np.abs(theta_torch[k]).max()) for k in names if k.endswith("lora_b"))
    if not cfg.quiet:
        print(f"adapters: relative difference {diff['rel_diff']:.2e} (largest per tensor "
              f"{diff['max_tensor_rel_diff']:.2e}; {diff['sign_flips']} of {diff['elements']} entries one Adam "
              f"sign-step apart); losses: max relative difference {max(r['loss_max_rel_diff'] for r in rows):.2e}")
    return {"episodes": rows, "adapters": diff, "loss_max_rel_diff": max(r["loss_max_rel_diff"] for r in rows),
            "lora_b_max_abs": b_moved}


def _meta_gradients(cfg, sampler, learner, mlx_inner, peft_model, torch_inner, buckets, dev) -> dict:
    theta = mlx_inner.weights()
    inner_cfg = mlx_inner.cfg
    rows = []
    for e in range(cfg.episodes):
        ep = sampler.sample()
        support = episodes.micro_batches(ep.support, cfg.micro_batch, buckets)
        query = episodes.micro_batches(ep.query, cfg.micro_batch, buckets)
        t0 = time.perf_counter()
        result = learner.task({"theta": theta}, ep, mlx_inner, None, e)
        mlx_grad = {k: np.array(v) for k, v in result.contribution["theta"].items()}
        t1 = time.perf_counter()
        start = {k: np.array(v) for k, v in theta.items()}
        if cfg.learner == "maml":
            torch_grad = torch_ref.maml_meta_gradient(peft_model, start, support, query, inner_cfg.steps,
                                                      inner_cfg.lr, second_order=True, dev=dev)
        else:
            torch_ref.set_adapters(peft_model, start)
            torch_inner.reset_optimizer()
            for _ in range(inner_cfg.steps):
                torch_inner.step(support)
            torch_grad = torch_inner.gradient(query, list(theta))
        t2 = time.perf_counter()
        diff = compare_adapters(mlx_grad, torch_grad, np.inf)
        rows.append({"episode": e, "task": ep.task, "meta_gradient_rel_diff": diff["rel_diff"],
                     "max_tensor_rel_diff": diff["max_tensor_rel_diff"],
                     "meta_gradient_norm": float(np.sqrt(sum((g.astype(np.float64) ** 2).sum()
                                                             for g in torch_grad.values()))),
                     "mlx_s": round(t1 - t0, 2), "torch_s": round(t2 - t1, 2)})
        if not cfg.quiet:
            print(f"episode {e} ({ep.task}): {cfg.learner} meta-gradient, MLX vs PyTorch relative difference "
                  f"{diff['rel_diff']:.2e} (norm {rows[-1]['meta_gradient_norm']:.3e})")
        theta = learner.update({"theta": theta}, {"theta": {k: mx.array(v) for k, v in mlx_grad.items()}}, e)["theta"]
    return {"episodes": rows, "meta_gradient_max_rel_diff": max(r["meta_gradient_rel_diff"] for r in rows)}
