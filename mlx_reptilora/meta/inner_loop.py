"""The inner loop shared by every meta-learner: T optimizer steps on a task's support set from the
adapters the model holds (only the LoRA tensors are read or written), and a functional core, the
loss and gradient at given adapters (`loss_at`, `gradient_at`) and the base model's pooled hidden
states of examples (`pooled`), that leaves the model's adapters as they were.

A gradient and an update are separate, so a learner can take a query set's gradient without
stepping (FOMAML) or run its own differentiable steps (MAML). Each piece is compiled once, taking
the model, optimizer and RNG state explicitly, so the only retraces come from new bucket shapes.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from ..data import episodes
from ..model import activations, adapters, graph, memory, quantized
from .inner_config import InnerConfig, make_optimizer
from .losses import batch_arrays, summed_loss

__all__ = ["InnerConfig", "InnerLoop", "NonFiniteLoss", "Trajectory"]  # InnerConfig: where the loop's users import it


@dataclass
class Trajectory:
    """The inner steps of a task: φ_t, ∇L_S(φ_t), the RNG seed and the loss of each step, and φ_T."""
    states: list[dict]
    grads: list[dict]
    seeds: list[int | None]
    losses: list[float]
    final: dict


class NonFiniteLoss(Exception):
    def __init__(self, value: float, where: str = "inner loss"):
        super().__init__(f"non-finite {where} ({value})")
        self.where = where


def _copy(tree):
    return tree_map(lambda x: x, tree)  # new containers, same (immutable) arrays


class InnerLoop:
    def __init__(self, model: nn.Module, cfg: InnerConfig, bucket_lengths: list[int], rows: int = 1,
                 second_order: bool = False, say=None, loss=summed_loss):
        """`cfg.micro_batch` None is chosen here (fit_micro_batch) for steps of up to `rows` examples,
        gradients (or with `second_order`, Hessian-vector products) alike; `say(line)` reports it.
        `loss(model, *batch_arrays)` is the summed loss every step takes (losses.summed_loss: token
        cross-entropy); a learner with a term of its own passes its own."""
        self.model, self.cfg, self.bucket_lengths = model, cfg, bucket_lengths
        self.optimizer = make_optimizer(cfg)
        self.optimizer.init(model.trainable_parameters())
        self._fresh = _copy(self.optimizer.state)
        self.traces = 0  # how often a compiled function was traced (tests: no retrace per episode)
        self._need = memory.NeedLimit(cfg.memory_limit)  # the derived memory limit (--memory-limit)
        dense = quantized.is_dense(cfg.quantized_matmul)
        activations.check(model, cfg.lora_dtype, cfg.recompute_swiglu)

        def train_loss(*arrays):
            self.traces += 1  # runs only while tracing
            model.train()  # the traced graph includes dropout
            with graph.checkpointed_layers(model) if cfg.grad_checkpoint else nullcontext(), quantized.dense_matmuls(dense), \
                    activations.keep_less(model, cfg.lora_dtype, cfg.recompute_swiglu, cfg.fused_lora):
                return loss(model, *arrays)

        def eval_loss(*arrays):
            self.traces += 1
            model.eval()  # the traced graph has no dropout
            with quantized.dense_matmuls(dense):
                return loss(model, *arrays)

        self._train_loss = train_loss
        loss_and_grad = nn.value_and_grad(model, train_loss)
        # value_and_grad swaps the adapters for traced arrays inside the model: listing model.state
        # as an output writes the real ones back after each call.
        self._grad = mx.compile(loss_and_grad, inputs=[model.state, mx.random.state],
                                outputs=[model.state, mx.random.state])
        self._eval = mx.compile(eval_loss, inputs=[model.state])
        self._hvp = None  # compiled on first use: only second-order learners need it

        state = [model.state, self.optimizer.state]

        @partial(mx.compile, inputs=state, outputs=state)
        def update(grads):
            self.traces += 1
            if cfg.grad_clip > 0:
                grads, _ = optim.clip_grad_norm(grads, cfg.grad_clip)
            self.optimizer.update(model, grads)

        self._update = update
        if cfg.micro_batch is None:
            self.cfg = cfg = replace(cfg, micro_batch=memory.CPU_MICRO_BATCH)  # the probe's own batches
            if memory.measures():
                cfg.micro_batch, why = self.fit_micro_batch(rows, second_order)
                if say:
                    say(f"micro-batch {cfg.micro_batch} ({why}; --micro-batch sets it)")

    # -- the micro-batch (model/memory.py measures it) ------------------------------------------
    def fit_micro_batch(self, rows: int, second_order: bool = False, free: int | None = None) -> tuple[int, str]:
        return memory.fit_micro_batch(self, rows, second_order, free)

    # -- state ------------------------------------------------------------------------------
    def reset_optimizer(self) -> None:
        """A fresh optimizer for a new task, restored in place (the compiled update holds this dict)."""
        self.optimizer.state.update(_copy(self._fresh))

    def optimizer_state(self) -> dict:
        return self.optimizer.state

    def weights(self) -> dict:
        return adapters.get_weights(self.model)

    def set_weights(self, weights: dict) -> None:
        adapters.set_weights(self.model, weights)

    # -- gradients --------------------------------------------------------------------------
    def batches(self, examples) -> list[episodes.Batch]:
        return episodes.micro_batches(examples, self.cfg.micro_batch, self.bucket_lengths)

    def _accumulate(self, batches: list[episodes.Batch], where: str = "inner loss") -> tuple[float, dict, int]:
        """Summed token loss, summed gradient (nested, as the model holds it) and token count."""
        total, grads, n = 0.0, None, 0
        for b in batches:
            with self._need.first("gradient", arrays := batch_arrays(b)):
                loss, g = self._grad(*arrays)
                grads = g if grads is None else tree_map(mx.add, grads, g)
                mx.eval(loss, grads)  # one micro-batch's activations alive at a time
            total += loss.item()
            n += b.n_targets
        if not math.isfinite(total):
            raise NonFiniteLoss(total, where)
        return total, grads, n

    def gradient(self, examples_or_batches, where: str = "inner loss") -> tuple[float, dict]:
        """Mean token loss and its gradient {name: array} at the current adapters (dropout on, as in
        training); the adapters do not move. `where` names the loss if it is not finite."""
        batches = self._as_batches(examples_or_batches)
        total, grads, n = self._accumulate(batches, where)
        grads = {k: v * (1.0 / n) for k, v in tree_flatten(grads)}
        mx.eval(grads)
        return total / n, grads

    def hvp(self, examples_or_batches, vector: dict) -> dict:
        """Hessian of the mean token loss at the current adapters times `vector`: reverse mode over
        the gradient, one micro-batch at a time (the Hessian of a sum is the sum of Hessians). The
        RNG must stand where it stood for the matching gradient() call, so dropout draws its masks."""
        if self._hvp is None:
            self._hvp = self._compile_hvp()
        batches = self._as_batches(examples_or_batches)
        v = tree_unflatten(list(vector.items()))
        params = self.model.trainable_parameters()
        out, n = None, 0
        try:
            with graph.twice_differentiable():
                for b in batches:
                    with self._need.first("hvp", arrays := batch_arrays(b)):
                        hv = self._hvp(params, v, *arrays)
                        out = hv if out is None else tree_map(mx.add, out, hv)
                        mx.eval(out)
                    n += b.n_targets
        finally:
            self.model.update(params)  # the real adapters back, even if tracing failed half-way
        return {k: x * (1.0 / n) for k, x in tree_flatten(out)}

    def _compile_hvp(self):
        model, train_loss = self.model, self._train_loss

        def loss_at(params, *arrays):
            model.update(params)
            return train_loss(*arrays)

        grad_at = mx.grad(loss_at)

        def hvp(params, v, *arrays):
            def directional(p):  # <∇L(p), v>: its gradient is H v
                g = grad_at(p, *arrays)
                return sum((a * b).sum() for (_, a), (_, b) in zip(tree_flatten(g), tree_flatten(v)))
            return mx.grad(directional)(params)

        return mx.compile(hvp, inputs=[model.state, mx.random.state], outputs=[model.state, mx.random.state])

    def _as_batches(self, examples_or_batches) -> list[episodes.Batch]:
        items = list(examples_or_batches)
        return items if items and isinstance(items[0], episodes.Batch) else self.batches(items)

    # -- steps ------------------------------------------------------------------------------
    def apply(self, grads: dict) -> None:
        """One optimizer step (clipped as configured) with a mean gradient {name: array}."""
        self._update(tree_unflatten(list(grads.items())))
        mx.eval(self.model.trainable_parameters(), self.optimizer.state)

    def step(self, batches: list[episodes.Batch]) -> float:
        """One optimizer step on the mean token loss over all `batches`; returns that loss."""
        loss, grads = self.gradient(batches)
        self.apply(grads)
        return loss

    def adapt(self, support, steps: int | None = None, rng: np.random.Generator | None = None) -> list[float]:
        """`steps` optimizer steps on `support` from the current adapters; the per-step losses."""
        steps = self.cfg.steps if steps is None else steps
        whole = None if self.cfg.batch else self.batches(support)  # same batches every step
        losses = []
        for _ in range(steps):
            if whole is None:
                rng = rng or np.random.default_rng(0)
                pick = rng.choice(len(support), min(self.cfg.batch, len(support)), replace=False)
                losses.append(self.step(self.batches([support[i] for i in pick])))
            else:
                losses.append(self.step(whole))
        return losses

    def adapt_from(self, theta: dict, support, reset_optimizer: bool = True, rng=None) -> tuple[dict, list[float]]:
        """φ = T steps from θ on `support` (a fresh optimizer unless told otherwise): (φ, losses)."""
        self.set_weights(theta)
        if reset_optimizer:
            self.reset_optimizer()
        losses = self.adapt(support, rng=rng)
        return self.weights(), losses

    def sgd_steps(self, theta: dict, support, lrs, steps: int, replay: bool = False) -> Trajectory:
        """`steps` plain SGD steps from θ, φ_{t+1} = φ_t − lr_t ⊙ ∇L_S(φ_t), written out rather than
        left to an optimizer so that they can be differentiated (MAML) and their learning rates
        learned (Meta-SGD, MAML++): `lrs(t)` gives step t's rate per tensor ({name: scalar or array})
        or one float. With `replay`, each step draws its dropout masks from a seed of its own, kept
        in the trajectory for the backward pass to draw them again. No clipping, no weight decay."""
        batches = self.batches(support)
        out = Trajectory([], [], [], [], theta)
        phi = theta
        for t in range(steps):
            seed = int(mx.random.randint(0, 2**31 - 1, ()).item()) if replay else None
            if seed is not None:
                mx.random.seed(seed)
            self.set_weights(phi)
            loss, grad = self.gradient(batches)
            lr = lrs(t)
            out.states.append(phi)
            out.grads.append(grad)
            out.seeds.append(seed)
            out.losses.append(loss)
            phi = {k: phi[k] - (lr[k] if isinstance(lr, dict) else lr) * grad[k] for k in phi}
            mx.eval(phi)
        out.final = phi
        self.set_weights(phi)
        return out

    def loss(self, examples) -> float:
        """Mean token loss on `examples` (dropout off), without touching the adapters."""
        total, n = 0.0, 0
        for b in self.batches(examples):
            loss = self._eval(*batch_arrays(b))
            total += loss.item()
            n += b.n_targets
        return total / n

    # -- the functional core: at given adapters, leaving the model's as they were -----------------
    @contextmanager
    def at(self, weights: dict):
        held = self.weights()
        self.set_weights(weights)
        try:
            yield
        finally:
            self.set_weights(held)

    def loss_at(self, weights: dict, examples) -> float:
        with self.at(weights):
            return self.loss(examples)

    def gradient_at(self, weights: dict, examples, where: str = "inner loss") -> tuple[float, dict]:
        with self.at(weights):
            return self.gradient(examples, where)

    def pooled(self, examples, inputs_only: bool = False) -> mx.array:
        """The base model's last hidden states of each example averaged over its tokens (its input's
        alone with `inputs_only`): (n, hidden) in the order given, what a task-conditioned learner
        encodes. B is zeroed while it runs (the base model) and dropout is off; no gradient flows."""
        base = {k: mx.zeros_like(v) if k.endswith("lora_b") else v for k, v in self.weights().items()}
        was, out = self.model.training, []
        self.model.eval()
        try:
            with self.at(base):
                for i in range(0, len(examples), self.cfg.micro_batch):
                    b = episodes.make_batch(list(examples[i:i + self.cfg.micro_batch]), self.bucket_lengths)
                    hidden = self.model.model(mx.array(b.tokens)).astype(mx.float32)
                    upto = mx.array(b.prompt_lens if inputs_only else b.lengths)[:, None]
                    mask = (mx.arange(hidden.shape[1])[None] < upto)[..., None]
                    out.append(mx.stop_gradient((hidden * mask).sum(1) / mx.maximum(mask.sum(1), 1)))
                    mx.eval(out[-1])
        finally:
            self.model.train(was)
        return mx.concatenate(out)
