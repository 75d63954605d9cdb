"""The inner loop's one config: how each step is computed (StepOptions, the flags meta-training and
adaptation share) plus what a recipe sets (steps, learning rate, optimizer, batch)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import mlx.optimizers as optim

from ..data import episodes
from ..errors import UserError
from ..model import activations, backend, memory, quantized
from ..options import option

OPTIMIZERS = ("adamw", "adam0", "sgd")


@dataclass
class StepOptions:
    """How each inner step is computed, in meta-training and in adaptation alike."""

    weight_decay: float = option(0.01, "AdamW weight decay (PyTorch's default, as the paper used)", min=0)
    grad_clip: float = option(0.5, "gradient-norm clip per inner step; 0 = off", min=0)
    micro_batch: int | None = option(None, "examples per forward pass; gradients accumulate to the whole batch",
                                     min=1, default_text=f"auto: on a GPU the largest power of two whose measured "
                                     f"step fits in {memory.FILL:.0%} of the free memory; {memory.CPU_MICRO_BATCH} "
                                     f"on a CPU")
    grad_checkpoint: bool = option(False, "recompute each layer's activations in the backward pass: less memory, "
                                          "slower")
    quantized_matmul: str = option("auto", "with --quantize, how training steps multiply by the frozen weights: "
                                           "kernel (MLX's quantized matmul, built for decoding), dense (each weight "
                                           "dequantized just in time for the dense GEMM, and again in the "
                                           "backward) or auto (dense on CUDA, where it is faster)",
                                   choices=quantized.MODES)
    lora_dtype: str = option("auto", "the LoRA branch's dtype in training steps: float32 (the adapters' own: a "
                                     "bf16 base's activations are promoted and kept in float32), base (the base's "
                                     "compute dtype, as PyTorch's autocast runs PEFT; the adapters, their gradients "
                                     "and the optimizer stay float32) or auto (base on CUDA, where it keeps less and "
                                     "is no slower)", choices=activations.LORA_DTYPES)
    recompute_swiglu: bool | None = option(None, "recompute silu(gate) * up in the backward pass instead of keeping "
                                                  "it (llama-family MLPs): less memory at about the same speed",
                                           flag="--recompute-swiglu/--keep-swiglu",
                                           default_text="auto: on CUDA, where it costs no speed, for models with a "
                                                        "SwiGLU MLP")
    memory_limit: str = option("auto", "need: each step shape's first step runs under a memory limit at what is "
                                       "held, and the rest of the process (later steps, generation, evaluation) "
                                       "under the largest peak so measured; past it work waits for queued kernels "
                                       "(on CUDA their buffers otherwise raise the peak); none: MLX's own limit; "
                                       "auto: need on CUDA; MLX_REPTILORA_MEMORY_LIMIT_GB sets a fixed one instead",
                               choices=memory.LIMITS)
    fused_lora: bool = option(False, "the LoRA branch with a hand-written backward that draws the dropout mask "
                                     "again instead of keeping it and the dropped input: keeps less for the backward, "
                                     "though on CUDA the peak does not fall (its masks come from keys of its own, so "
                                     "a run differs from one without it)")

    def inner_config(self, steps: int, lr: float, optimizer: str, **over) -> InnerConfig:
        """The inner loop these options describe, taking steps, lr and optimizer from a recipe."""
        return InnerConfig(**{"steps": steps, "lr": lr, "optimizer": optimizer,
                              **{f.name: getattr(self, f.name) for f in fields(StepOptions)}, **over})


@dataclass
class InnerConfig(StepOptions):
    steps: int = 7
    lr: float = 5e-4
    optimizer: str = "adamw"  # adamw | adam0 (Adam with beta1 = 0, as in Reptile) | sgd
    batch: int | None = None  # examples per step; None = the whole support set


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
