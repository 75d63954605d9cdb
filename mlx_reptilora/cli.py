"""`mlx-reptilora`: meta-train a LoRA start, adapt it to a task from k shots, evaluate it."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
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
         quantize: Optional[int] = typer.Option(None, help="quantize the frozen base to N bits (QLoRA)"),
         path: bool = typer.Option(False, "--path", help="print only the base model's local folder (what "
                                                         "mlx_lm.generate --model and transformers load)")):
    """Print the resolved base model (its local folder), backend device, compute dtype and BLAS in use."""
    from .model import backend, models

    if path:
        typer.echo(str(models.resolve(model)))
        return
    base = models.load(model, dtype=dtype, quantize_bits=quantize)
    for k, v in {**backend.describe(), **models.describe(base)}.items():
        typer.echo(f"{k:>14}: {v}")


@app.command("export-peft")
def export_peft(adapters: str = typer.Argument(..., help="folder with mlx-lm adapters (ours or mlx_lm.lora's)"),
                out: str = typer.Argument(..., help="output folder for PEFT's format"),
                base_model: Optional[str] = typer.Option(None, help="base_model_name_or_path to record (default: the "
                                                                    "base the adapters record)")):
    """Convert mlx-lm adapters to PEFT's format (adapter_model.safetensors + adapter_config.json): every
    LoRA tensor, or one line of refusal. A start's adaptation recipe and learned learning rates go along."""
    import shutil

    from .meta import recipe, start as starts
    from .model import hub

    start = starts.read(adapters)  # not a start at all: that is the one line to say
    base = base_model or hub.base_of(adapters)
    if base is None and start.is_point:
        raise UserError(f"{adapters} does not record its base model, which PEFT's AutoPeftModel needs: pass "
                        f"--base-model HUB_ID_OR_FOLDER")
    folder = start.export_peft(adapters, out, base)
    for name in (recipe.RECIPE, recipe.LEARNED):
        if (Path(adapters) / name).exists():
            shutil.copy2(Path(adapters) / name, folder / name)
    typer.echo(str(folder))


@app.command("import-peft")
def import_peft(adapters: str = typer.Argument(..., help="folder with PEFT LoRA adapters"),
                out: str = typer.Argument(..., help="output folder for mlx-lm's format")):
    """Convert PEFT LoRA adapters to mlx-lm's format."""
    from .model import adapters as ad

    typer.echo(str(ad.from_peft(adapters, out)))


@app.command("push")
def push(start: str = typer.Argument(..., help="a meta-learned start (adapters folder)"),
         repo_id: str = typer.Argument(..., help="the hub repo to upload to, owner/name"),
         private: bool = typer.Option(False, "--private", help="create the repo private"),
         dry_run: bool = typer.Option(False, "--dry-run", help="write the folder that would be uploaded; upload nothing"),
         out: Optional[str] = typer.Option(None, help="where the upload folder is written [runs/push/OWNER--NAME]")):
    """Upload a start to the Hugging Face hub: its adapters, a PEFT export (subfolder peft/) and a model card."""
    from .meta import start as starts
    from .model import hub

    the_start = starts.read(start)  # a start of a kind known here, or one line
    export = the_start.export_peft if the_start.is_point else None  # a generator has no one adapter to export
    folder = hub.push(start, repo_id, out, private, dry_run, export)
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        typer.echo(str(f.relative_to(folder)))
    typer.echo(f"{'would upload' if dry_run else 'uploaded'} {folder} {'to' if not dry_run else 'as'} "
               f"https://huggingface.co/{repo_id}")


@app.command("tasks")
def list_tasks(names: Optional[list[str]] = typer.Argument(None, help="task names or folders to show in full: kind, "  # noqa: B008
                                                                       "sizes, tokens, warnings, the first example "
                                                                       "as the model sees it"),
               model: Optional[str] = typer.Option(None, help=MODEL_HELP + " (its tokenizer is used)"),
               max_length: int = typer.Option(512, help="truncate inputs to fit this many tokens"),
               include_hub: bool = typer.Option(False, "--hub", help="also try the paper's hub corpora (network)"),
               similarity: bool = typer.Option(False, "--similarity", help="each task's embedding as --learner "
                                               "hyper makes it, and their cosine similarity: each task's nearest, "
                                               "and a heatmap"),
               examples: int = typer.Option(16, help="with --similarity: training examples per task", min=1),
               inputs_only: bool = typer.Option(False, "--inputs-only", help="with --similarity: embed the inputs "
                                                "alone (hyper's --hyper-inputs-only)"),
               out: str = typer.Option("runs/task-similarity.png", help="with --similarity: the heatmap")):
    """List the tasks: group, kind, metric, split sizes and token statistics, then each one's source
    and licence. With names or folders: what the library sees of each. With --similarity: which tasks
    look alike to a task-conditioned start."""
    from mlx_lm.utils import load_tokenizer

    from .data import show, tasks
    from .model import models

    if similarity:
        from .evaluation import similarity as sim
        from .paths import writable_folder

        loaded = tasks.load_many(list(names)) if names else [t for t in map(_available, tasks.OFFLINE_TASKS) if t]
        writable_folder(Path(out).parent, "--out")
        base = models.load(model)
        z = sim.embeddings(base, loaded, examples, max_length, inputs_only)
        typer.echo("\n".join(sim.report([t.name for t in loaded], z, Path(out))))
        return

    tokenizer = load_tokenizer(models.resolve(model))
    if names:
        for t in tasks.load_many(list(names)):
            typer.echo("\n".join(show.describe(t, tokenizer, max_length)))
        return
    typer.echo(f"{'task':<26} {'group':<22} {'kind':<8} {'metric':<8} {'train':>6} {'valid':>6} {'test':>6}   "
               f"input tokens p50/p95   target tokens p50/p95   truncated@{max_length}")
    sources, groups = [], {}
    for name in tasks.available():
        if name not in tasks.OFFLINE_TASKS and not include_hub:
            typer.echo(f"{name:<26} (hub corpus: needs network; list with --hub)")
            continue
        try:
            task = tasks.load(name)
        except UserError as e:
            typer.echo(f"{name:<26} unavailable: {e}")
            continue
        groups.setdefault(task.group, set()).add(task.kind)
        sources.append(f"{name:<26} {task.licence or '?':<24} {task.source}")
        s = show.token_stats(task, tokenizer, max_length)
        sizes = [len(task.splits.get(x, [])) for x in tasks.SPLITS]
        typer.echo(f"{name:<26} {task.group or '-':<22} {task.kind:<8} {task.metric:<8} {sizes[0]:>6} {sizes[1]:>6} "
                   f"{sizes[2]:>6}   {s['input']:>20}   {s['target']:>21}   {s['truncated']:>6}")
    choice = sum(kinds == {"choice"} for kinds in groups.values())
    typer.echo(f"\n{len(sources)} tasks in {len(groups)} groups ({choice} of them choice tasks only)")
    typer.echo(f"\n{'task':<26} {'licence':<24} source")
    for line in sources:
        typer.echo(line)


def _available(name: str):
    """The task, or None when its corpus is not on this machine (the listing says why)."""
    from .data import tasks

    try:
        return tasks.load(name)
    except UserError:
        return None


def _command(name: str, cls, run, doc: str) -> None:
    """Register a command whose options are the fields of `cls` (declared once, in options.option()
    style): every field becomes a flag, `-c FILE` reads the same keys from YAML, flags win."""
    from . import options

    params = [inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                                default=typer.Option(None, "-c", "--config", show_default=False,
                                                     help="YAML file with these options as keys (dashes or underscores), "
                                                          "or a shipped config: " + ", ".join(
                                                              sorted(p.stem for p in options.PACKAGED.glob("*.yaml")))))]
    for f in options.fields(cls):
        kind, is_list, _ = options.value_type(cls, f.name)
        meta = f.metadata
        decls = [meta["flag"] or options.flag_name(f.name), *meta["aliases"]] + ([meta["short"]] if meta["short"] else [])
        named = meta["choices"] and all(str(c) in meta["help"] for c in meta["choices"])
        text = meta["help"] + (f": {' | '.join(map(str, meta['choices']))}" if meta["choices"] and not named else "")
        # parentheses, not brackets: typer's rich help would read "[reptile]" as markup and drop it
        text += " (required)" if meta["required"] else f" (default: {options.default_text(f)})"
        text += f" (also {', '.join(meta['aliases'])}, as in mlx-lm)" if meta["aliases"] else ""
        # Values arrive as text and are parsed by options.coerce, as YAML values are: the same
        # one-line error for "--episodes 2.5" and "episodes: 2.5".
        metavar = "A,B,..." if is_list else {int: "INT", float: "NUMBER", str: "TEXT"}.get(kind)
        params.append(inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[bool if kind is bool else str],
            default=typer.Option(None, *decls, help=text, show_default=False, metavar=metavar)))

    def command(**flags):
        run(options.build(cls, flags.pop("config_file"), **flags))

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    app.command(name)(command)


def _register() -> None:
    from .crosscheck import check
    from .evaluation import adapt, compare, evaluate, validate
    from .meta import train
    from .model import hub

    _command("meta-train", train.MetaTrainConfig, lambda cfg: train.run(cfg, validate.hook),
             "Meta-learn the LoRA start over many tasks (Reptile, FOMAML, MAML, Meta-SGD), meta-validated on "
             "held-out tasks with --valid-tasks.")
    _command("adapt", adapt.AdaptConfig, adapt.run,
             "Fine-tune LoRA on k examples of a task, from a meta-learned start or the standard one.")
    _command("evaluate", evaluate.EvalConfig, evaluate.run,
             "Score a task's split by its metric: ROUGE or exact match of generations, a choice task's accuracy, NLL and ECE, a text task's loss (bootstrap 95% intervals).")
    _command("compare", compare.CompareConfig, compare.run,
             "The paper's table and charts: LoRA vs the meta start vs in-context at 0/1/5 shots.")
    _command("convert", hub.ConvertConfig, hub.convert,
             "Convert a base model once into a local MLX folder (optionally quantized) with mlx-lm's conversion.")
    _command("crosscheck", check.CrosscheckConfig, check.run,
             "Run the same Reptile episodes in MLX and in PyTorch + PEFT; compare losses and adapters.")


_register()


class Terminated(KeyboardInterrupt):
    """SIGTERM: a scheduler, `kill`, or mlx.launch stopping the ranks after one of them failed."""


_terminated = False  # SIGTERM arrived (typer turns every KeyboardInterrupt into a silent exit 130)


def _interrupt(signum, frame):
    global _terminated
    _terminated = True
    raise Terminated  # checkpoints like Ctrl-C does


def _stopped() -> int:
    """The one line for a command stopped by Ctrl-C or SIGTERM, after it saved what it could."""
    if not _terminated:
        print("interrupted", file=sys.stderr)
        return 130
    under_launch = " (under mlx.launch: another rank failed, its log says why)" if "MLX_RANK" in os.environ else ""
    print(f"error: stopped by SIGTERM{under_launch}", file=sys.stderr)
    return 143


def main(argv: list[str] | None = None) -> int:
    """The CLI: its exit status, with errors said in one line on stderr. Also callable in-process
    (the tests do); the SIGTERM handler it installs is put back on return."""
    global _terminated
    _terminated = False
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str]) -> int:
    from .model import backend

    try:
        backend.apply_limits()
        # errors come here, to be said in one line; no command at all is a request for the help
        code = app(args=argv or ["--help"], standalone_mode=False)
        if code == 130:  # every command, generated or written here: typer's exit for KeyboardInterrupt
            return _stopped()
        return code if isinstance(code, int) else 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if not _usage_error(e):
            raise
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "mlx-reptilora"
        print(f"error: {e.format_message()} (see {where} --help)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one that arrives outside typer's own handling
        return _stopped()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


def _usage_error(e: Exception) -> bool:
    """An unknown flag, a missing value: click's exception, as typer raises it. Recognised by what it
    offers rather than by its class, which moved (click's own; typer's copy of click since 0.2x)."""
    return type(e).__module__.split(".")[0] in ("click", "typer") and hasattr(e, "format_message") and hasattr(
        e, "exit_code")


def _entry():
    sys.exit(main())


if __name__ == "__main__":
    _entry()
