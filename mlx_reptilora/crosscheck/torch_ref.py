"""The same inner loop and meta-gradients in PyTorch + PEFT, for cross-checking the MLX code and
for side-by-side speed.

It loads the same HF-format checkpoint in transformers, attaches PEFT LoRA with the same rank, alpha,
dropout and target modules, and trains on the very same token batches (our `episodes.Batch`) with
the same summary-only loss, AdamW (bias-corrected, eps 1e-8, decoupled weight decay) and clipping.
MAML's meta-gradient is written independently of the MLX code, as PyTorch users would: torch.func's
nested `grad` through the unrolled SGD steps. Needs the `crosscheck` extra: torch, transformers, peft.
"""

from __future__ import annotations

import numpy as np

from ..data.episodes import Batch
from ..errors import UserError
from ..meta.inner_loop import InnerConfig
from ..model import adapters


def _torch():
    try:
        import torch  # noqa: F401
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise UserError(f"the PyTorch path needs the crosscheck extra ({e.name} is missing): "
                        f"pip install 'mlx-reptilora[crosscheck]'") from None
    import torch

    return torch


def device() -> str:
    return "cuda" if _torch().cuda.is_available() else "cpu"


def load_peft(path, lora: adapters.LoraConfig, dtype: str = "float32", dev: str | None = None):
    torch = _torch()
    from transformers import AutoModelForCausalLM

    dev = dev or device()
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype)).to(dev)
    return attach_peft(model, lora)


def attach_peft(model, lora: adapters.LoraConfig):
    """PEFT LoRA with our rank, alpha, dropout and target modules on a transformers model."""
    from peft import LoraConfig, get_peft_model

    n_layers = model.config.num_hidden_layers
    layers = None if lora.num_layers == -1 else list(range(n_layers - lora.num_layers, n_layers))
    cfg = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                     target_modules=sorted({k.rsplit(".", 1)[-1] for k in lora.keys}),
                     layers_to_transform=layers, task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def _peft_name(mlx_name: str) -> str:
    module, leaf = mlx_name.rsplit(".", 1)
    return f"base_model.model.{module}.{'lora_A' if leaf == 'lora_a' else 'lora_B'}.default.weight"


def set_adapters(model, weights: dict) -> None:
    """Copy MLX adapters ({name: mx.array}) into the PEFT model (transposed to PEFT's layout)."""
    torch = _torch()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, w in weights.items():
            p = params[_peft_name(name)]
            p.copy_(torch.from_numpy(np.array(w, dtype=np.float32).T.copy()).to(p.dtype))


def get_adapters(model, names) -> dict:
    """The PEFT adapters as float32 numpy arrays under MLX names and layout."""
    params = dict(model.named_parameters())
    return {n: params[_peft_name(n)].detach().float().cpu().numpy().T for n in names}


def summed_loss(model, batch: Batch, dev: str):
    """The same loss as losses.summed_loss: summary positions only, summed over tokens."""
    torch = _torch()
    tokens = torch.from_numpy(batch.tokens.astype(np.int64)).to(dev)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT or plain
    hidden = inner.model(input_ids=tokens).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])[torch.from_numpy(batch.target_index.astype(np.int64)).to(dev)]
    logits = inner.lm_head(hidden).float()
    ce = torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch.target_ids.astype(np.int64)).to(dev),
                                           reduction="none")
    return (ce * torch.from_numpy(batch.target_weight).to(dev)).sum()


class TorchInnerLoop:
    """InnerLoop's twin: one optimizer step = mean token loss over micro-batches, clip, AdamW."""

    def __init__(self, model, cfg: InnerConfig, dev: str | None = None):
        torch = _torch()
        if cfg.optimizer != "adamw":
            raise UserError("the PyTorch path implements the paper's AdamW only")
        self.model, self.cfg, self.dev = model, cfg, dev or device()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=1e-8)

    def reset_optimizer(self) -> None:
        self.optimizer.state.clear()

    def step(self, batches: list[Batch]) -> float:
        torch = _torch()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        n = sum(b.n_targets for b in batches)
        total = 0.0
        for b in batches:
            loss = summed_loss(self.model, b, self.dev)
            (loss / n).backward()
            total += loss.item()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        return total / n

    def gradient(self, batches: list[Batch], names) -> dict:
        """The mean token loss's gradient at the current adapters, under MLX names and layout."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        n = sum(b.n_targets for b in batches)
        for b in batches:
            (summed_loss(self.model, b, self.dev) / n).backward()
        params = dict(self.model.named_parameters())
        grads = {k: params[_peft_name(k)].grad.detach().float().cpu().numpy().T for k in names}
        self.optimizer.zero_grad(set_to_none=True)
        return grads

    def loss(self, batches: list[Batch]) -> float:
        torch = _torch()
        self.model.eval()
        with torch.no_grad():
            return sum(summed_loss(self.model, b, self.dev).item() for b in batches) / sum(b.n_targets for b in batches)


def maml_meta_gradient(model, theta: dict, support: list[Batch], query: list[Batch], steps: int, lr: float,
                       second_order: bool = True, dev: str = "cpu") -> dict:
    """∇_θ L_Q(φ_T(θ)) with φ_{t+1} = φ_t − lr ∇L_S(φ_t), by torch.func: the inner gradients stay in
    the graph (second order) or are detached (first order). `theta`: MLX names and layout (numpy)."""
    torch = _torch()
    from torch.func import functional_call, grad

    class Loss(torch.nn.Module):  # a module whose forward is our loss, for functional_call
        def __init__(self, peft_model):
            super().__init__()
            self.peft = peft_model

        def forward(self, batch):
            return summed_loss(self.peft, batch, dev)

    wrapper = Loss(model)
    model.train()
    names = list(theta)
    key = {k: "peft." + _peft_name(k) for k in names}
    params = {key[k]: torch.tensor(np.ascontiguousarray(np.asarray(theta[k], np.float32).T), device=dev)
              for k in names}

    def mean_loss(p, batches):
        return sum(functional_call(wrapper, p, (b,)) for b in batches) / sum(b.n_targets for b in batches)

    def meta_loss(p):
        for _ in range(steps):
            g = grad(mean_loss)(p, support)
            p = {k: p[k] - lr * (g[k] if second_order else g[k].detach()) for k in p}
        return mean_loss(p, query)

    # The fused attention kernels have no double backward: the math kernel computes the same function.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        meta = grad(meta_loss)(params)
    return {k: meta[key[k]].detach().float().cpu().numpy().T for k in names}
