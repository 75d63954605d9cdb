"""`mlx-reptilora`: meta-train a LoRA start, adapt it to a task from k shots, evaluate it."""

from __future__ import annotations

import json
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
    from . import backend, models

    base = models.load(model, dtype=dtype, quantize_bits=quantize)
    for k, v in {**backend.describe(), **models.describe(base)}.items():
        typer.echo(f"{k:>14}: {v}")


@app.command("export-peft")
def export_peft(adapters: str = typer.Argument(..., help="folder with mlx-lm adapters"),
                out: str = typer.Argument(..., help="output folder for PEFT's format"),
                base_model: Optional[str] = typer.Option(None, help="base_model_name_or_path to record")):
    """Convert mlx-lm adapters to PEFT's format (adapter_model.safetensors + adapter_config.json)."""
    from . import adapters as ad

    typer.echo(str(ad.to_peft(adapters, out, base_model)))


@app.command("import-peft")
def import_peft(adapters: str = typer.Argument(..., help="folder with PEFT LoRA adapters"),
                out: str = typer.Argument(..., help="output folder for mlx-lm's format")):
    """Convert PEFT LoRA adapters to mlx-lm's format."""
    from . import adapters as ad

    typer.echo(str(ad.from_peft(adapters, out)))


def _not_built(name: str):
    raise UserError(f"`{name}` is not built yet")


@app.command("meta-train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def meta_train(ctx: typer.Context):
    """Meta-learn the LoRA start with Reptile over many tasks."""
    _not_built("meta-train")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def adapt(ctx: typer.Context):
    """Fine-tune LoRA on k examples of a task, from the meta-learned or the standard start."""
    _not_built("adapt")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def evaluate(ctx: typer.Context):
    """Generate summaries for a task's test split and score ROUGE-1/2/L."""
    _not_built("evaluate")


def main(argv: list[str] | None = None) -> int:
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
