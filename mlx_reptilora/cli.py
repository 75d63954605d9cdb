"""`mlx-reptilora`: meta-train a LoRA start, adapt it to a task from k shots, evaluate it."""

from __future__ import annotations

import signal
import sys
from typing import Optional

import typer

from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ReptiLoRA in MLX: meta-learn a LoRA initialisation, adapt it from k shots, evaluate.")

MODEL_HELP = "HF repo id, local model folder or .gguf file; default: the bundled SmolLM2-135M-Instruct"


@app.command()
def info(model: Optional[str] = typer.Option(None, help=MODEL_HELP),
         dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16 (default: by device)"),
         quantize: Optional[int] = typer.Option(None, help="quantize the frozen base to N bits (QLoRA)")):
    """Print the resolved base model, backend device, compute dtype and BLAS in use."""
    from .model import backend, models

    base = models.load(model, dtype=dtype, quantize_bits=quantize)
    for k, v in {**backend.describe(), **models.describe(base)}.items():
        typer.echo(f"{k:>14}: {v}")


@app.command("export-peft")
def export_peft(adapters: str = typer.Argument(..., help="folder with mlx-lm adapters"),
                out: str = typer.Argument(..., help="output folder for PEFT's format"),
                base_model: Optional[str] = typer.Option(None, help="base_model_name_or_path to record")):
    """Convert mlx-lm adapters to PEFT's format (adapter_model.safetensors + adapter_config.json)."""
    from .model import adapters as ad

    typer.echo(str(ad.to_peft(adapters, out, base_model)))


@app.command("import-peft")
def import_peft(adapters: str = typer.Argument(..., help="folder with PEFT LoRA adapters"),
                out: str = typer.Argument(..., help="output folder for mlx-lm's format")):
    """Convert PEFT LoRA adapters to mlx-lm's format."""
    from .model import adapters as ad

    typer.echo(str(ad.from_peft(adapters, out)))


@app.command("tasks")
def list_tasks(model: Optional[str] = typer.Option(None, help=MODEL_HELP + " (its tokenizer is used)"),
               max_length: int = typer.Option(512, help="truncate documents to fit this many tokens"),
               include_hub: bool = typer.Option(False, "--hub", help="also try the paper's hub corpora (network)")):
    """List the available tasks with split sizes and token statistics."""
    import numpy as np
    from mlx_lm.utils import load_tokenizer

    from .data import prompts, tasks
    from .model import models

    tokenizer = load_tokenizer(models.resolve(model))
    fmt = prompts.PromptFormat.for_tokenizer(tokenizer)
    typer.echo(f"{'task':<18} {'train':>6} {'valid':>6} {'test':>6}   doc tokens p50/p95   summary tokens p50/p95   truncated@{max_length}")
    for name in tasks.available():
        if name not in tasks.OFFLINE_TASKS and not include_hub:
            typer.echo(f"{name:<18} {'(hub corpus: needs network; list with --hub)'}")
            continue
        try:
            task = tasks.load(name)
        except UserError as e:
            typer.echo(f"{name:<18} unavailable: {e}")
            continue
        exs = [e for split in task.splits.values() for e in split]
        doc = np.array([len(x) for x in tokenizer._tokenizer([e.document for e in exs], add_special_tokens=False)["input_ids"]])
        summ = np.array([len(x) for x in tokenizer._tokenizer([e.summary for e in exs], add_special_tokens=False)["input_ids"]])
        cut = sum(t.truncated for t in prompts.tokenize(fmt, tokenizer, exs, max_length) if t)
        sizes = [len(task.splits.get(s, [])) for s in tasks.SPLITS]
        typer.echo(f"{name:<18} {sizes[0]:>6} {sizes[1]:>6} {sizes[2]:>6}   "
                   f"{np.median(doc):>8.0f} / {np.percentile(doc, 95):<8.0f}   "
                   f"{np.median(summ):>12.0f} / {np.percentile(summ, 95):<8.0f}   {cut:>6}")


@app.command("meta-train")
def meta_train(
    config_file: Optional[str] = typer.Option(None, "-c", "--config",
                                              help="YAML file (keys as the flags) or a shipped config: cpu-small, paper"),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    tasks: Optional[str] = typer.Option(None, help="comma-separated task names or folders [all 5 offline tasks]"),
    task_weights: Optional[str] = typer.Option(None, help="comma-separated sampling weights [uniform]"),
    episodes: Optional[int] = typer.Option(None, help="meta-training episodes [500]"),
    support: Optional[int] = typer.Option(None, help="support examples per episode, k [32]"),
    query: Optional[int] = typer.Option(None, help="query examples for monitoring, M [128]"),
    inner_steps: Optional[int] = typer.Option(None, help="inner optimizer steps, T [7]"),
    inner_lr: Optional[float] = typer.Option(None, help="inner learning rate [5e-4]"),
    inner_optimizer: Optional[str] = typer.Option(None, help="adamw | adam0 | sgd [adamw]"),
    inner_batch: Optional[int] = typer.Option(None, help="examples per inner step [the whole support set]"),
    micro_batch: Optional[int] = typer.Option(None, help="examples per forward pass [4]"),
    grad_checkpoint: Optional[bool] = typer.Option(None, "--grad-checkpoint",
                                                   help="recompute activations in backward: less memory, slower"),
    grad_clip: Optional[float] = typer.Option(None, help="inner gradient-norm clip [0.5]"),
    meta_lr: Optional[float] = typer.Option(None, help="Reptile step size α [0.1]"),
    meta_lr_final: Optional[float] = typer.Option(None, help="anneal α linearly to this [constant]"),
    meta_batch: Optional[int] = typer.Option(None, help="tasks per meta-step [1]"),
    reset_optimizer: Optional[bool] = typer.Option(None, "--reset-optimizer/--carry-optimizer",
                                                   help="fresh inner optimizer per task [reset]"),
    rank: Optional[int] = typer.Option(None, help="LoRA rank [16]"),
    alpha: Optional[float] = typer.Option(None, help="LoRA alpha; scale = alpha / rank [32]"),
    dropout: Optional[float] = typer.Option(None, help="LoRA dropout [0.1]"),
    lora_keys: Optional[str] = typer.Option(None, help="comma-separated module paths [self_attn.q_proj,self_attn.v_proj]"),
    lora_layers: Optional[int] = typer.Option(None, help="LoRA on the last N layers, -1 = all [-1]"),
    max_length: Optional[int] = typer.Option(None, help="max tokens per example; documents are truncated [512]"),
    dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16 [by device]"),
    quantize: Optional[int] = typer.Option(None, help="quantize the frozen base to N bits (QLoRA)"),
    seed: Optional[int] = typer.Option(None, help="random seed [0]"),
    eval_every: Optional[int] = typer.Option(None, help="query loss every N episodes, 0 = never [10]"),
    checkpoint_every: Optional[int] = typer.Option(None, help="checkpoint every N episodes [50]"),
    out: Optional[str] = typer.Option(None, help="output folder [runs/meta]"),
    resume: Optional[bool] = typer.Option(None, "--resume", help="continue the run in --out"),
    quiet: Optional[bool] = typer.Option(None, "--quiet", "-q", help="no progress output"),
):
    """Meta-learn the LoRA start with Reptile over many tasks (the paper's defaults)."""
    from . import options as config
    from .meta import train as mt

    floats = lambda s: [float(x) for x in s.split(",")] if s else None  # noqa: E731
    cfg = config.build(mt.MetaTrainConfig, config_file, model=model, tasks=tasks, task_weights=floats(task_weights),
                       episodes=episodes, support=support, query=query, inner_steps=inner_steps, inner_lr=inner_lr,
                       inner_optimizer=inner_optimizer, inner_batch=inner_batch, micro_batch=micro_batch,
                       grad_checkpoint=grad_checkpoint,
                       grad_clip=grad_clip, meta_lr=meta_lr, meta_lr_final=meta_lr_final, meta_batch=meta_batch,
                       reset_optimizer=reset_optimizer, rank=rank, alpha=alpha, dropout=dropout,
                       lora_keys=lora_keys, lora_layers=lora_layers, max_length=max_length, dtype=dtype,
                       quantize=quantize, seed=seed, eval_every=eval_every, checkpoint_every=checkpoint_every,
                       out=out, resume=resume, quiet=quiet)
    mt.run(cfg)



@app.command()
def adapt(
    task: str = typer.Option(..., help="task name or folder"),
    shots: int = typer.Option(..., help="k training examples to adapt on; 0 = no adaptation"),
    adapters: Optional[str] = typer.Option(None, help="meta-learned adapters folder [standard LoRA start]"),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    config_file: Optional[str] = typer.Option(None, "-c", "--config", help="YAML file; keys as the flags"),
    steps: Optional[int] = typer.Option(None, help="optimizer steps [7]"),
    lr: Optional[float] = typer.Option(None, help="learning rate [5e-4]"),
    grad_clip: Optional[float] = typer.Option(None, help="gradient-norm clip [0.5]"),
    micro_batch: Optional[int] = typer.Option(None, help="examples per forward pass [4]"),
    grad_checkpoint: Optional[bool] = typer.Option(None, "--grad-checkpoint",
                                                   help="recompute activations in backward: less memory, slower"),
    rank: Optional[int] = typer.Option(None, help="standard start only: LoRA rank [16]"),
    alpha: Optional[float] = typer.Option(None, help="standard start only: LoRA alpha [32]"),
    dropout: Optional[float] = typer.Option(None, help="standard start only: LoRA dropout [0.1]"),
    max_length: Optional[int] = typer.Option(None, help="max tokens per example [512]"),
    seed: Optional[int] = typer.Option(None, help="which shots are drawn [0]"),
    dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16 [by device]"),
    quantize: Optional[int] = typer.Option(None, help="quantize the frozen base to N bits (QLoRA)"),
    out: Optional[str] = typer.Option(None, help="output folder for the adapted adapters [runs/adapted]"),
    quiet: Optional[bool] = typer.Option(None, "--quiet", "-q"),
):
    """Fine-tune LoRA on k examples of a task, from the meta-learned or the standard start."""
    from . import options as config
    from .evaluation import adapt as ad

    cfg = config.build(ad.AdaptConfig, config_file, task=task, shots=shots, adapters=adapters, model=model,
                       steps=steps, lr=lr, grad_clip=grad_clip, micro_batch=micro_batch,
                       grad_checkpoint=grad_checkpoint, rank=rank, alpha=alpha, dropout=dropout, max_length=max_length, seed=seed, dtype=dtype, quantize=quantize, out=out,
                       quiet=quiet)
    ad.run(cfg)


@app.command()
def evaluate(
    task: str = typer.Option(..., help="task name or folder"),
    adapters: Optional[str] = typer.Option(None, help="adapters folder [none: the base model]"),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    split: str = typer.Option("test", help="test | valid"),
    limit: Optional[int] = typer.Option(None, help="evaluate the first N examples only"),
    batch_size: int = typer.Option(16, help="sequences generated together"),
    max_new_tokens: Optional[int] = typer.Option(None, help="[1.5 x the 95th percentile training summary]"),
    max_length: int = typer.Option(512, help="max prompt tokens; documents are truncated"),
    in_context: int = typer.Option(0, help="k training examples in the prompt (in-context baseline)"),
    shots: int = typer.Option(0, help="recorded in the JSON: shots the adapters were tuned on"),
    seed: int = typer.Option(0, help="recorded; picks the in-context shots"),
    dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16 [by device]"),
    quantize: Optional[int] = typer.Option(None, help="quantize the frozen base to N bits"),
    json_path: Optional[str] = typer.Option(None, "--json", help="write the scores here (+ .predictions.jsonl)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Generate summaries for a task's test split and score ROUGE-1/2/L (bootstrap 95% intervals)."""
    from .evaluation import evaluate as ev

    ev.run(ev.EvalConfig(task=task, adapters=adapters, model=model, split=split, limit=limit, batch_size=batch_size,
                         max_new_tokens=max_new_tokens, max_length=max_length, in_context=in_context, shots=shots,
                         seed=seed, dtype=dtype, quantize=quantize, json=json_path, quiet=quiet))


@app.command()
def compare(
    adapters: str = typer.Option(..., help="the meta-learned adapters folder"),
    tasks: Optional[str] = typer.Option(None, help="comma-separated tasks [the 5 offline tasks]"),
    shots: Optional[str] = typer.Option(None, help="comma-separated shot counts [0,1,5]"),
    draws: Optional[int] = typer.Option(None, help="draws of the shots per k > 0 [3]"),
    systems: Optional[str] = typer.Option(None, help="lora,reptilora,in-context [all]"),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    config_file: Optional[str] = typer.Option(None, "-c", "--config", help="YAML file; keys as the flags"),
    steps: Optional[int] = typer.Option(None, help="adaptation steps [7]"),
    lr: Optional[float] = typer.Option(None, help="adaptation learning rate [5e-4]"),
    split: Optional[str] = typer.Option(None, help="test | valid [test]"),
    limit: Optional[int] = typer.Option(None, help="first N examples of the split [all]"),
    batch_size: Optional[int] = typer.Option(None, help="sequences generated together [16]"),
    max_length: Optional[int] = typer.Option(None, help="max tokens per example [512]"),
    seed: Optional[int] = typer.Option(None, help="base seed of the draws [0]"),
    dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16 [by device]"),
    out: Optional[str] = typer.Option(None, help="output folder [runs/compare]"),
    quiet: Optional[bool] = typer.Option(None, "--quiet", "-q"),
):
    """The paper's table and charts: LoRA vs ReptiLoRA vs in-context at 0/1/5 shots."""
    from . import options as config
    from .evaluation import compare as cp

    ints = lambda s: [int(x) for x in s.split(",")] if s else None  # noqa: E731
    cfg = config.build(cp.CompareConfig, config_file, adapters=adapters, tasks=tasks, shots=ints(shots), draws=draws,
                       systems=systems, model=model, steps=steps, lr=lr, split=split, limit=limit,
                       batch_size=batch_size, max_length=max_length, seed=seed, dtype=dtype, out=out, quiet=quiet)
    cp.run(cfg)


@app.command()
def crosscheck(
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    tasks: str = typer.Option("aclsum-title,pydoc", help="comma-separated tasks"),
    episodes: int = typer.Option(2, help="Reptile episodes"),
    support: int = typer.Option(4, help="support examples per episode"),
    inner_steps: int = typer.Option(3, help="inner AdamW steps"),
    max_length: int = typer.Option(128, help="max tokens per example"),
    dtype: str = typer.Option("float32", help="compute dtype of both frameworks"),
    device: Optional[str] = typer.Option(None, help="torch device [cuda if available, else cpu]"),
    seed: int = typer.Option(0),
    json_path: Optional[str] = typer.Option(None, "--json", help="write the numbers here"),
):
    """Run the same episodes in MLX and in PyTorch + PEFT and compare losses and adapters."""
    from .crosscheck import check as cc

    cc.run(cc.CrosscheckConfig(model=model, tasks=[t for t in tasks.split(",") if t], episodes=episodes,
                               support=support, inner_steps=inner_steps, max_length=max_length, dtype=dtype,
                               device=device, seed=seed, json=json_path))


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (a scheduler, `kill`) checkpoints like Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app(args=argv, standalone_mode=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def _entry():
    sys.exit(main())


if __name__ == "__main__":
    _entry()
