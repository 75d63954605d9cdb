"""A start generated from the task's shots: a hypernetwork over MAML (Text-to-LoRA's "M" design,
conditioned on examples as Drag-and-Drop and MetaLoRA are, refined by gradient steps).

The task embedding z is the frozen base's own hidden states of the support examples, averaged over
tokens and shots (InnerLoop.pooled), RMS-normalised, then centered by the training tasks' mean
embedding (fixed at init) and RMS-normalised again: pooled hidden states share one large direction
whatever the task, so without the centering the generator reads mostly what every task has in
common (docs/RESULTS.md measures it); with no shots z is a learned null embedding.
A generator adds to every LoRA tensor of a meta-learned point θ:

    φ₀ = θ + G(z),   G(z)_{l,m} = H_m tanh(W z + e_l + e_m) / d,

one hidden layer of width d shared by every tensor, an embedding per layer l and per kind of tensor
m (module and A or B), and one output head H_m per kind, shared over layers. The alternative
(--hyper-generator rank) writes each tensor one rank's row at a time, G(z)_{l,m,i} = H_m tanh(W z +
e_l + e_m + e_i) / d, so a head is r times smaller. The 1/d is muP's readout: Adam moves every entry
of H by about the outer lr, so without it one step moved every generated entry about 0.6 d times
further than θ's own, all in the gradient's sign, and the start diverged within a few episodes
(docs/RESULTS.md). H starts at 0, so G = 0 and the
first step is MAML's. From φ₀ the task is adapted by MAML's T differentiable SGD steps (with its
MAML++ options); the meta-gradient v = ∇_{φ₀} L_Q reaches θ as it is, and the generator as
J_G(z)ᵀ v. With --first-order, v is the query gradient at φ_T (FOMAML's). A share of episodes
(--hyper-null) are 0-shot ones: z is the null embedding and the query loss is taken at φ₀, which is
what teaches the null embedding; a 0-shot start is θ + G(null).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from ..model import adapters
from ..options import option
from . import start as starts
from .learner import OuterOptions, TaskResult
from .maml import MAML, LslrOptions, MamlOptions


@dataclass
class HyperOptions:
    hyper_hidden: int = option(64, "hyper: width of the generator's hidden layer", min=1)
    hyper_generator: str = option("kind", "hyper: kind = one output head per kind of tensor, shared over layers "
                                          "(Text-to-LoRA's M); rank = one head per kind that writes one rank's row at "
                                          "a time from a rank embedding (its S: 1/r of the heads' parameters)",
                                  choices=("kind", "rank"))
    hyper_inputs_only: bool = option(False, "hyper: embed the shots' inputs only (their prompts without the "
                                            "answers), as Drag-and-Drop conditions on unlabeled prompts")
    hyper_center: bool = option(True, "hyper: subtract the training tasks' mean embedding from z, so the "
                                      "generator reads what differs between tasks")
    hyper_null: float = option(0.1, "hyper: share of tasks meta-trained at 0 shots (the null embedding, no "
                                    "inner steps), so a start for no shots is learned too", min=0, max=1)


def _kind(name: str) -> tuple[int, str]:
    """(layer, kind) of a LoRA tensor's name: kind is the module path and lora_a or lora_b."""
    m = adapters._BLOCK_LORA.match(name)
    return int(m[1]), f"{m[2]}.{m[3]}"


def _in_order(names) -> list[str]:
    """By kind, then layer: one order however θ's dict was built (a model, a checkpoint), since the
    heads' gradients sum over layers and float sums depend on their order (resume is bit-identical)."""
    return sorted(names, key=lambda n: _kind(n)[::-1])


def _rows(name: str, shape) -> tuple[int, int]:
    """(rank, length of one rank's row) of a LoRA tensor: A is (in, r), B is (r, out)."""
    return (shape[0], shape[1]) if name.endswith("lora_b") else (shape[1], shape[0])


def init(theta: dict, hidden_size: int, width: int, key: mx.array, per_rank: bool = False) -> dict:
    """The generator's arrays; its heads are 0, so G(z) = 0 for every z."""
    kinds = {}
    for name in _in_order(theta):
        layer, kind = _kind(name)
        size = _rows(name, theta[name].shape)[1] if per_rank else theta[name].size
        kinds.setdefault(kind, (size, []))[1].append(layer)
    layers = sorted({layer for _, ls in kinds.values() for layer in ls})
    k = mx.random.split(key, 4 if per_rank else 3)  # the default generator's keys as they always were
    layer_keys, kind_keys = mx.random.split(k[1], len(layers)), mx.random.split(k[2], len(kinds))
    gen = {"null": mx.zeros((hidden_size,)),
           "w": mx.random.normal((hidden_size, width), key=k[0]) / math.sqrt(hidden_size),
           "layer": {str(layer): 0.02 * mx.random.normal((width,), key=layer_keys[i]) for i, layer in enumerate(layers)},
           "kind": {kind: 0.02 * mx.random.normal((width,), key=kind_keys[i]) for i, kind in enumerate(kinds)},
           "head": {kind: mx.zeros((width, size)) for kind, (size, _) in kinds.items()}}
    if per_rank:
        name = next(iter(theta))
        rank = _rows(name, theta[name].shape)[0]
        gen["rank"] = 0.02 * mx.random.normal((rank, width), key=k[3])
    return gen


def _rms(z: mx.array) -> mx.array:
    return z * mx.rsqrt((z * z).mean(-1, keepdims=True) + 1e-6)


def embed(gen: dict, pooled: mx.array | None) -> mx.array:
    """z: the shots' mean pooled hidden state, RMS-normalised and, when the generator has a center,
    centered by it and normalised again; or the null embedding, RMS-normalised."""
    if pooled is None:
        return _rms(gen["null"])
    z = _rms(pooled.mean(0))
    return _rms(z - mx.stop_gradient(gen["center"])) if "center" in gen else z


def center(inner, tasks, shots: int, inputs_only: bool = False) -> mx.array:
    """The training tasks' mean z (RMS-normalised, uncentered), each from its first `shots` training
    examples: the point the generator's input is measured from. Fixed: a zero gradient leaves it
    exactly where it is under Adam."""
    return mx.stack([embed({}, inner.pooled(t.splits["train"][:shots], inputs_only)) for t in tasks]).mean(0)


def generate(gen: dict, z: mx.array, theta: dict) -> dict:
    """φ₀ = θ + G(z), every tensor's delta from its kind's head."""
    h0 = z @ gen["w"]
    readout = 1 / h0.shape[-1]
    by_kind: dict[str, list[str]] = {}
    for name in _in_order(theta):
        by_kind.setdefault(_kind(name)[1], []).append(name)
    out = {}
    for kind, names in by_kind.items():
        h = h0 + mx.stack([gen["layer"][str(_kind(n)[0])] for n in names]) + gen["kind"][kind]
        if "rank" in gen:  # (layers, r, row length): B's rows as they are, A's as its columns
            rows = (mx.tanh(h[:, None, :] + gen["rank"][None]) @ gen["head"][kind]) * readout
            out.update({n: theta[n] + (rows[i] if n.endswith("lora_b") else rows[i].T) for i, n in enumerate(names)})
        else:
            deltas = (mx.tanh(h) @ gen["head"][kind]) * readout  # (layers of this kind, elements of one tensor)
            out.update({n: theta[n] + deltas[i].reshape(theta[n].shape) for i, n in enumerate(names)})
    return out


@starts.register
class HyperStart(starts.Start):
    kind = "hyper"

    def __init__(self, lora, arrays: dict, inputs_only: bool = False):
        super().__init__(lora, arrays)
        self.inputs_only = inputs_only

    def for_task(self, inner, shots) -> dict:
        pooled = inner.pooled(shots, self.inputs_only) if shots else None
        return generate(self.arrays["gen"], embed(self.arrays["gen"], pooled), self.arrays["theta"])

    def describe(self) -> str:
        return f"generated from the shots' {'inputs' if self.inputs_only else 'examples'} (theta + G(z))"

    def save(self, folder: str | Path, n_layers: int, extra: dict | None = None) -> Path:
        return super().save(folder, n_layers, {**(extra or {}), "hyper": {"inputs_only": self.inputs_only}})

    @classmethod
    def read(cls, folder: Path) -> starts.Start:
        start = super().read(folder)
        start.inputs_only = bool((adapters.recorded(folder, "hyper", {}) or {}).get("inputs_only", False))
        return start


class Hyper(MAML):
    name, label = "hyper", "Hyper start"
    options = (OuterOptions, MamlOptions, LslrOptions, HyperOptions)

    @classmethod
    def label_of(cls, described: dict) -> str:
        return "Hyper start (MAML++)" if described.get("lslr") else cls.label

    def init(self, theta: dict, inner=None, tasks=None) -> dict:
        hidden = inner.model.args.hidden_size  # the width of the base's last hidden state (mlx-lm's args)
        gen = init(theta, hidden, self.cfg.hyper_hidden, mx.random.key(self.cfg.seed), self.cfg.hyper_generator == "rank")
        if self.cfg.hyper_center and tasks:
            gen["center"] = center(inner, tasks, self.cfg.support or 1, self.cfg.hyper_inputs_only)
        return {**super().init(theta, inner, tasks), "gen": gen}

    def start(self, params: dict, lora) -> starts.Start:
        return HyperStart(lora, {"theta": params["theta"], "gen": params["gen"]}, self.cfg.hyper_inputs_only)

    def task(self, params, episode, inner, rng, t) -> TaskResult:
        gen, theta = params["gen"], params["theta"]
        null = rng is not None and rng.random() < self.cfg.hyper_null
        z = embed(gen, None if null else inner.pooled(episode.support, self.cfg.hyper_inputs_only))
        phi0 = generate(gen, z, theta)
        mx.eval(phi0)
        if null:  # a 0-shot task: the query loss at φ₀ itself (logged as every step's, zero_shot: 1)
            loss, v = inner.gradient_at(phi0, episode.query, "query loss")
            rates = {k: mx.zeros_like(x) for k, x in self.rates(params).items()}  # no steps took them
            result = TaskResult({"theta": v, **({"rates": rates} if rates else {})}, phi0,
                                {"inner_losses": [loss] * self.cfg.inner_steps, "query_loss_adapted": loss})
        else:
            result = super().task({**params, "theta": phi0}, episode, inner, rng, t)
        v = result.contribution["theta"]
        at = (lambda g: embed(g, None)) if null else (lambda g: z)  # a 0-shot z is the null embedding's own
        g_gen = mx.grad(lambda g: sum((d * v[k]).sum() for k, d in generate(g, at(g), theta).items()))(gen)
        mx.eval(g_gen)
        result.contribution["gen"] = g_gen
        result.metrics["zero_shot"] = int(null)
        return result

    def tokens(self, episode) -> int:
        return super().tokens(episode) + sum(len(x.ids) for x in episode.support)  # the embedding's pass

    def describe(self) -> dict:
        return {**super().describe(), "hyper_hidden": self.cfg.hyper_hidden, "hyper_generator": self.cfg.hyper_generator,
                "hyper_inputs_only": self.cfg.hyper_inputs_only, "hyper_null": self.cfg.hyper_null,
                "hyper_center": self.cfg.hyper_center}
