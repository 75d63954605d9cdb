"""What a training step keeps for its backward (model/activations.py): the two choices change memory,
not the step's arithmetic beyond the LoRA branch's dtype, and refuse models they do not apply to."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_reptilora.data import prompts, tasks
from mlx_reptilora.errors import UserError
from mlx_reptilora.meta.inner_loop import InnerConfig, InnerLoop
from tests.conftest import assert_close
from mlx_reptilora.model import activations, adapters, models


def loop(tiny_dir, dtype=None, dropout=0.0, **cfg):
    """The tiny model with LoRA (attach's own seed: the same A every time), four pydoc rows, and an
    inner loop over them."""
    base = models.load(str(tiny_dir), dtype=dtype, verbose=False)
    adapters.attach(base.model, adapters.LoraConfig(rank=4, dropout=dropout))
    fmt = prompts.PromptFormat.for_tokenizer(base.tokenizer)
    exs = prompts.tokenize(fmt, base.tokenizer, tasks.load("pydoc").splits["train"][:4], 128)
    mx.random.seed(0)
    return InnerLoop(base.model, InnerConfig(micro_batch=2, **cfg), [64, 128]), exs


def adapted(tiny_dir, dtype=None, dropout=0.0, **cfg):
    inner, exs = loop(tiny_dir, dtype, dropout, steps=2, **cfg)
    return inner.adapt(exs), inner.weights()


@pytest.mark.parametrize("choice", [{"recompute_swiglu": True}, {"lora_dtype": "base"}])
def test_on_a_float32_base_the_step_is_unchanged(tiny_dir, choice):
    """SwiGLU recomputed gives the step it replaces; the LoRA branch in a float32 base's dtype is the
    float32 branch. With dropout on: the masks are drawn as before."""
    (ref_losses, ref), (losses, got) = adapted(tiny_dir, dropout=0.1), adapted(tiny_dir, dropout=0.1, **choice)
    assert np.allclose(ref_losses, losses, rtol=1e-5)
    assert_close(got, ref)


def hvps(tiny_dir, dtype=None, **choices):
    inner, exs = loop(tiny_dir, dtype, **choices)
    return inner.hvp(exs, {k: mx.full(v.shape, 0.01) for k, v in inner.weights().items()})


def test_second_order_learners_differentiate_through_the_recomputed_swiglu(tiny_dir):
    """On CUDA the recompute is the default, and MAML's Hessian-vector products go through it."""
    assert_close(hvps(tiny_dir, recompute_swiglu=True), hvps(tiny_dir, recompute_swiglu=False))


def test_second_order_learners_differentiate_through_the_lora_branch_in_a_bf16_base_dtype(tiny_dir):
    """So is the LoRA branch in the base's dtype: with a bf16 base MAML's Hessian-vector products
    through it stay float32 and land near the float32 branch's (the branch's bf16 rounding only)."""
    got, want = (hvps(tiny_dir, "bfloat16", lora_dtype=d) for d in ("base", "float32"))
    assert all(v.dtype == mx.float32 for v in got.values())
    assert any(not mx.array_equal(got[k], want[k]).item() for k in want)  # the branch did run in bf16
    assert_close(got, want, rel=3e-2)  # measured 8.5e-3 on this CPU: about one bf16 rounding


def test_lora_in_a_bf16_base_dtype_trains_float32_adapters_close_to_the_float32_branch(tiny_dir):
    """As PyTorch's autocast: the branch computes in bf16, the adapters, gradients and AdamW stay
    float32, and the step lands near the float32 branch's (bf16 rounding of the branch only). SGD, so the
    update is the gradient itself: Adam's first steps are its signs, which rounding flips where it is ~0."""
    (ref_losses, ref), (losses, got) = (adapted(tiny_dir, dtype="bfloat16", lora_dtype=d, optimizer="sgd", lr=0.1)
                                        for d in ("float32", "base"))
    assert all(v.dtype == mx.float32 for v in got.values())
    assert np.allclose(ref_losses, losses, rtol=2e-2)
    assert any(not mx.array_equal(ref[k], got[k]).item() for k in ref)  # the branch did run in bf16
    moved = {k for k in ref if k.endswith("lora_b")}
    assert all(mx.abs(got[k]).max().item() > 0 for k in moved)  # the float32 B moved off zero
    for k in moved:
        assert mx.abs(got[k] - ref[k]).max().item() <= 0.05 * mx.abs(ref[k]).max().item(), k


def test_choices_that_do_not_apply_are_one_line_errors():
    from mlx_lm.models import gpt2

    model = gpt2.Model(gpt2.ModelArgs(model_type="gpt2", n_ctx=64, n_embd=32, n_head=2, n_layer=1,
                                      n_positions=64, layer_norm_epsilon=1e-5, vocab_size=64))
    with pytest.raises(UserError, match="--recompute-swiglu: mlx_lm.models.gpt2 has no swiglu"):
        activations.check(model, recompute_swiglu=True)
    with pytest.raises(UserError, match="--lora-dtype 'float16': choose one of auto, float32, base"):
        activations.check(model, lora_dtype="float16")
    activations.check(model)  # the defaults apply to every model
    activations.check(model, lora_dtype="auto", recompute_swiglu=None)


def test_the_lora_branch_is_in_the_bases_dtype_by_default_on_cuda_only(monkeypatch):
    from mlx_reptilora.meta.inner_config import StepOptions
    from mlx_reptilora.model import backend

    assert StepOptions().lora_dtype == "auto"
    assert activations.lora_dtype_here("auto") == ("base" if backend.backend_name() == "cuda" else "float32")
    monkeypatch.setattr(backend, "backend_name", lambda: "cuda")
    assert [activations.lora_dtype_here(d) for d in activations.LORA_DTYPES] == ["base", "float32", "base"]
    monkeypatch.setattr(backend, "backend_name", lambda: "metal")
    assert activations.lora_dtype_here("auto") == "float32"
