"""The inner loop shared by every meta-learner: T optimizer steps on a task's support set, starting
from whatever adapters the model holds. Only the LoRA tensors are read or written; the base weights
are never copied.

Computing a gradient and applying an update are separate, so a learner can take the gradient of a
query set without stepping (FOMAML), or run its own differentiable steps (MAML). Each piece is
compiled once and reused for every step, episode and task: the gradient of one micro-batch, the
optimizer update, the evaluation loss and (for second-order learners) the Hessian-vector product.
They take the model, optimizer and RNG state explicitly (mx.compile inputs/outputs), so the only
retraces come from new bucket shapes.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields, replace
from functools import partial
from unittest.mock import patch

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from ..data import episodes, prompts
from ..errors import UserError
from ..model import activations, adapters, backend, quantized
from ..options import option
from .losses import batch_arrays, summed_loss

OPTIMIZERS = ("adamw", "adam0", "sgd")
FILL = 0.8  # of the free memory an automatic micro-batch may take: the rest for fragmentation and the rest of a step
CPU_MICRO_BATCH = 4  # MLX's CPU backend gains nothing from wider forward passes, and its memory is the host's


def measures() -> bool:
    """Whether an automatic micro-batch is measured (on a GPU) rather than CPU_MICRO_BATCH."""
    return backend.backend_name() != "cpu"


def free_memory() -> int:
    """Bytes this process may still allocate: MLX's memory limit less what it holds; on CUDA, no
    more than the device's free memory (other processes count) plus MLX's own cached buffers; on
    Metal, no more than the recommended working set."""
    active = mx.get_active_memory()
    free = mx.get_memory_limit() - active
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    if "free_memory" in info:
        free = min(free, int(info["free_memory"]) + mx.get_cache_memory())
    if "max_recommended_working_set_size" in info:
        free = min(free, int(info["max_recommended_working_set_size"]) - active)
    return max(free, 0)


@dataclass
class InnerConfig:
    steps: int = 7
    lr: float = 5e-4
    optimizer: str = "adamw"  # adamw | adam0 (Adam with beta1 = 0, as in Reptile) | sgd
    weight_decay: float = 0.01  # AdamW's (PyTorch's default, as the paper used)
    grad_clip: float = 0.5  # global norm; 0 = off
    micro_batch: int | None = 4  # examples per forward pass (None: fit to the free memory); gradients accumulate
    batch: int | None = None  # examples per step; None = the whole support set
    grad_checkpoint: bool = False  # recompute each layer's activations in backward: less memory, ~30% slower
    quantized_matmul: str = "kernel"  # a quantized base in training steps: kernel | dense (model/quantized.py)
    lora_dtype: str = "float32"  # the LoRA branch's dtype in training steps: float32 | base (model/activations.py)
    recompute_swiglu: bool = False  # silu(gate) * up recomputed in the backward (model/activations.py)


@dataclass
class StepOptions:
    """How each inner step is computed, in meta-training and in adaptation alike."""

    weight_decay: float = option(0.01, "AdamW weight decay (PyTorch's default, as the paper used)", min=0)
    grad_clip: float = option(0.5, "gradient-norm clip per inner step; 0 = off", min=0)
    micro_batch: int | None = option(None, "examples per forward pass; gradients accumulate to the whole batch",
                                     min=1, default_text=f"auto: on a GPU the largest power of two whose measured "
                                     f"step fits in {FILL:.0%} of the free memory; {CPU_MICRO_BATCH} on a CPU")
    grad_checkpoint: bool = option(False, "recompute each layer's activations in the backward pass: less memory, "
                                          "~30% slower")
    quantized_matmul: str = option("kernel", "with --quantize, how training steps multiply by the frozen weights: "
                                             "kernel (MLX's quantized matmul, built for decoding) or dense (each "
                                             "weight dequantized just in time for the dense GEMM, and again in the "
                                             "backward)", choices=quantized.MODES)
    lora_dtype: str = option("float32", "the LoRA branch's dtype in training steps: float32 (the adapters' own: a "
                                        "bf16 base's activations are promoted and kept in float32) or base (the "
                                        "base's compute dtype, as PyTorch's autocast runs PEFT; the adapters, their "
                                        "gradients and the optimizer stay float32)", choices=activations.LORA_DTYPES)
    recompute_swiglu: bool = option(False, "recompute silu(gate) * up in the backward pass instead of keeping it "
                                           "(llama-family MLPs): less memory at about the same speed")

    def inner_config(self, steps: int, lr: float, optimizer: str, **over) -> InnerConfig:
        """The inner loop these options describe, taking steps, lr and optimizer from a recipe."""
        return InnerConfig(**{"steps": steps, "lr": lr, "optimizer": optimizer,
                              **{f.name: getattr(self, f.name) for f in fields(StepOptions)}, **over})


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


def make_optimizer(cfg: InnerConfig) -> optim.Optimizer:
    # Bias correction on, as in PyTorch's AdamW (the paper's): with only T = 7 steps per task, MLX's
    # default (off) would make the first steps ~3x larger than the paper's.
    if cfg.optimizer == "adamw":
        return optim.AdamW(learning_rate=cfg.lr, weight_decay=cfg.weight_decay, bias_correction=True)
    if cfg.optimizer == "adam0":
        return optim.Adam(learning_rate=cfg.lr, betas=[0.0, 0.999], bias_correction=True)
    if cfg.optimizer == "sgd":
        return optim.SGD(learning_rate=cfg.lr)
    raise UserError(f"--inner-optimizer {cfg.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")


def bucket_lengths(max_length: int) -> list[int]:
    """The padded lengths every inner loop uses: multiples of the device's attention tile."""
    return episodes.buckets(max_length, multiple=backend.attention_tile())


def _copy(tree):
    return tree_map(lambda x: x, tree)  # new containers, same (immutable) arrays


@contextmanager
def checkpointed_layers(model: nn.Module):
    """Gradient checkpointing per transformer layer while a step is traced: each layer's activations
    are recomputed in the backward pass instead of kept. The traced graph keeps the checkpoints, so
    the classes (Python looks __call__ up on them) are patched only for the duration.

    Unlike mlx-lm's grad_checkpoint, dropout inside a layer draws its masks from a key fixed for
    that layer's call: drawn from the global key, the recomputation would get new masks and
    differentiate through masks the forward pass never used."""
    layer_cls, dropout_call = type(model.layers[0]), nn.Dropout.__call__
    layer_call = layer_cls.__call__
    keys: list[mx.array] = []  # the key of the layer being computed, advanced by each dropout

    def keyed_dropout(self, x):
        if not keys:  # a dropout outside the checkpointed layers
            return dropout_call(self, x)
        if self._p_1 == 1 or not self.training:
            return x
        keys[-1], key = mx.random.split(keys[-1])
        return (mx.random.bernoulli(self._p_1, x.shape, key=key) * x) * (1 / self._p_1)

    def call(layer, *args, **kwargs):
        # a fresh key per layer and step, drawn from (so advancing) the global key; closed over,
        # not an input, so the recomputation uses the same array and no gradient flows into it
        key = mx.random.randint(0, 2**31 - 1, (2,)).astype(mx.uint32)

        def layer_fn(params, *args):
            layer.update(params)
            keys.append(key)
            try:
                return layer_call(layer, *args, **kwargs)
            finally:
                keys.pop()

        return mx.checkpoint(layer_fn)(layer.trainable_parameters(), *args)

    layer_cls.__call__, nn.Dropout.__call__ = call, keyed_dropout
    try:
        yield
    finally:
        layer_cls.__call__, nn.Dropout.__call__ = layer_call, dropout_call


def _attention(queries, keys, values, scale, mask=None, **kwargs):
    """scaled_dot_product_attention written out (grouped-query heads, causal or additive/boolean
    masks): the function mx.fast computes, in ops that can be differentiated twice."""
    if kwargs.get("sinks") is not None:
        raise NotImplementedError("attention sinks in a second-order gradient")
    repeats = queries.shape[1] // keys.shape[1]
    if repeats > 1:
        keys, values = mx.repeat(keys, repeats, axis=1), mx.repeat(values, repeats, axis=1)
    scores = (queries * scale) @ keys.swapaxes(-1, -2)
    if isinstance(mask, str):  # "causal": queries are the last L of S positions
        n, m = scores.shape[-2:]
        mask = (mx.arange(n)[:, None] + (m - n)) >= mx.arange(m)[None]
    if mask is not None:
        scores = mx.where(mask, scores, -mx.inf) if mask.dtype == mx.bool_ else scores + mask
    return mx.softmax(scores, axis=-1, precise=True) @ values


def _cross_entropy(logits, targets):
    """mlx.nn.losses.cross_entropy's own CPU path (class indices, last axis)."""
    logits = logits - mx.stop_gradient(logits.max(axis=-1, keepdims=True))
    score = mx.take_along_axis(logits, mx.expand_dims(targets, -1), -1).squeeze(-1)
    return mx.logsumexp(logits, axis=-1) - score


@contextmanager
def twice_differentiable():
    """While a second-order gradient is traced, two fused GPU kernels are swapped for the same
    functions written out: their derivatives cannot be differentiated again on CUDA (see
    scripts/device/second_order_ops.py). The cuDNN attention backward (bf16/fp16, query lengths a
    multiple of 128) fails with "Number of outputs ... does not match number of cotangents", and
    mx.fast.cross_entropy (what nn.losses.cross_entropy uses on a GPU) with "[gather_axis] Cannot
    calculate VJP with respect to indices"."""
    with patch.object(mx.fast, "scaled_dot_product_attention", _attention), \
            patch.object(mx.fast, "cross_entropy", _cross_entropy):
        yield


class InnerLoop:
    def __init__(self, model: nn.Module, cfg: InnerConfig, bucket_lengths: list[int], rows: int = 1,
                 second_order: bool = False, say=None):
        """`cfg.micro_batch` None is chosen here (fit_micro_batch) for steps of up to `rows` examples,
        gradients (or with `second_order`, Hessian-vector products) alike; `say(line)` reports it."""
        self.model, self.cfg, self.bucket_lengths = model, cfg, bucket_lengths
        self.optimizer = make_optimizer(cfg)
        self.optimizer.init(model.trainable_parameters())
        self._fresh = _copy(self.optimizer.state)
        self.traces = 0  # how often a compiled function was traced (tests: no retrace per episode)
        dense = quantized.is_dense(cfg.quantized_matmul)
        activations.check(model, cfg.lora_dtype, cfg.recompute_swiglu)

        def train_loss(*arrays):
            self.traces += 1  # runs only while tracing
            model.train()  # the traced graph includes dropout
            with checkpointed_layers(model) if cfg.grad_checkpoint else nullcontext(), quantized.dense_matmuls(dense), \
                    activations.keep_less(model, cfg.lora_dtype, cfg.recompute_swiglu):
                return summed_loss(model, *arrays)

        def eval_loss(*arrays):
            self.traces += 1
            model.eval()  # the traced graph has no dropout
            with quantized.dense_matmuls(dense):
                return summed_loss(model, *arrays)

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
            self.cfg = cfg = replace(cfg, micro_batch=CPU_MICRO_BATCH)  # the probe's own batches
            if measures():
                cfg.micro_batch, why = self.fit_micro_batch(rows, second_order)
                if say:
                    say(f"micro-batch {cfg.micro_batch} ({why}; --micro-batch sets it)")

    # -- the micro-batch ----------------------------------------------------------------------
    def fit_micro_batch(self, rows: int, second_order: bool = False, free: int | None = None) -> tuple[int, str]:
        """The largest power of two, up to `rows` rounded up to one, whose step fits in FILL of the
        free memory (or `free` bytes): one step at 1 and at 2 rows of the longest bucket measures
        what a step needs and what each row adds. The adapters and the RNG are left as they were.
        Returns (micro-batch, why)."""
        most = 1 << max(rows - 1, 0).bit_length()
        if most == 1:
            return 1, "one example per step"
        length = self.bucket_lengths[-1]
        one, two = (self._probe(n, length, second_order) for n in (1, 2))
        per_row = max(two - one, 1)
        fixed = max(one - per_row, 0)
        free = free_memory() if free is None else free
        m = 1
        while m < most and fixed + 2 * m * per_row <= FILL * free:
            m *= 2
        return m, (f"{'a second-order' if second_order else 'a'} step at {length} tokens measured {fixed / 1e9:.2f} GB "
                   f"+ {per_row / 1e9:.3f} GB a row, {free / 1e9:.1f} GB free, at most {most} rows a step")

    def _probe(self, rows: int, length: int, second_order: bool) -> int:
        """Peak bytes above what is held of one gradient (or Hessian-vector product) on `rows`
        rows of `length` tokens, half of them summary."""
        ids = np.arange(1, length + 1, dtype=np.int32) % 1000
        batch = episodes.make_batch([prompts.Tokenized(ids, length // 2, False)] * rows, [length])
        key, weights = mx.random.state[0].tolist(), self.weights()
        mx.eval(weights)
        held = mx.get_active_memory()
        mx.reset_peak_memory()
        try:
            if second_order:
                self.hvp([batch], {k: mx.zeros_like(v) for k, v in weights.items()})
            else:
                self.gradient([batch])
            return mx.get_peak_memory() - held
        finally:
            self.set_weights(weights)
            mx.random.seed((key[0] << 32) | key[1])  # the key as it was: a seed of 64 bits is the key
            mx.reset_peak_memory()

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
            loss, g = self._grad(*batch_arrays(b))
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
            with twice_differentiable():
                for b in batches:
                    hv = self._hvp(params, v, *batch_arrays(b))
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
