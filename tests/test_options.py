"""Options are declared once: every config field is a flag, YAML values parse to the declared type,
bad values are one line before any work, the README names only flags that exist, and the package's
imports follow the data flow."""

import ast
import re
import time
from pathlib import Path

import pytest
import typer

from mlx_reptilora import cli, options
from mlx_reptilora.crosscheck import check
from mlx_reptilora.errors import UserError
from mlx_reptilora.evaluation import adapt, compare, evaluate
from mlx_reptilora.meta import train

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"meta-train": train.MetaTrainConfig, "adapt": adapt.AdaptConfig, "evaluate": evaluate.EvalConfig,
           "compare": compare.CompareConfig, "crosscheck": check.CrosscheckConfig}


def command_flags() -> dict[str, set[str]]:
    group = typer.main.get_command(cli.app)
    out = {}
    for name, command in group.commands.items():
        out[name] = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    return out


def test_every_config_field_has_a_flag():
    flags = command_flags()
    for name, cls in CONFIGS.items():
        for f in options.fields(cls):
            spelled = (f.metadata["flag"] or options.flag_name(f.name)).split("/")
            assert set(spelled) <= flags[name], f"{name}: option {f.name} has no flag {spelled}"
            assert f.metadata["help"], f"{name}: option {f.name} has no help"
        assert "--config" in flags[name]


def _readme_flag_uses():
    """(command or None, flag) for every flag the README shows: in mlx-reptilora command lines (code
    blocks and inline code), and alone in inline code in the prose."""
    text = (ROOT / "README.md").read_text() + (ROOT / "docs" / "GUIDE.md").read_text()
    pieces = [line for block in re.findall(r"```(?:bash)?\n(.*?)```", text, re.S) for line in block.splitlines()]
    pieces += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    for piece in pieces:
        piece = piece.split("#")[0]
        m = re.search(r"mlx-reptilora\s+([a-z-]+)(.*)", piece)
        if m:
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-c|-q)\b", m.group(2)):
                yield m.group(1), flag
        elif re.fullmatch(r"\s*--[a-z][a-z0-9-]*(\s.*)?", piece):
            yield None, piece.split()[0]


def test_readme_names_only_flags_that_exist():
    flags = command_flags()
    every = set().union(*flags.values())
    uses = list(_readme_flag_uses())
    assert len(uses) > 20  # the README's commands were found
    for command, flag in uses:
        if command is None:
            assert flag in every, f"README mentions {flag}, which no command has"
        else:
            assert command in flags, f"README runs `mlx-reptilora {command}`, which does not exist"
            assert flag in flags[command], f"README passes {flag} to `mlx-reptilora {command}`, which has no such flag"


def test_yaml_numbers_in_any_notation_and_lists(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("inner-lr: 5e-4\nepisodes: 1e3\nrank: '16'\nmeta_lr: 1\ntask-weights: 1,2\n")
    cfg = options.build(train.MetaTrainConfig, p)
    assert cfg.inner_lr == 5e-4 and isinstance(cfg.inner_lr, float)
    assert cfg.episodes == 1000 and isinstance(cfg.episodes, int) and cfg.rank == 16
    assert cfg.meta_lr == 1.0 and isinstance(cfg.meta_lr, float) and cfg.task_weights == [1.0, 2.0]
    p.write_text("shots: 0,1,5\n")
    assert options.build(compare.CompareConfig, p, adapters="x").shots == [0, 1, 5]
    p.write_text("shots: [0, '1', 5.0]\n")
    assert options.build(compare.CompareConfig, p, adapters="x").shots == [0, 1, 5]


@pytest.mark.parametrize("yaml_text,message", [
    ("episodes: true\n", "--episodes: expected an integer, got True"),
    ("episodes: two\n", "--episodes: expected an integer, got 'two'"),
    ("support: 2.5\n", "--support: expected an integer, got 2.5"),
    ("tasks: 5\n", "--tasks: expected text, got 5"),
    ("inner-lr: .nan\n", "--inner-lr must be a finite number"),
    ("inner-lr: -1e-3\n", "--inner-lr must be > 0"),
    ("meta-lr-final: -5\n", "--meta-lr-final must be >= 0"),
    ("learner: sgd\n", "--learner 'sgd': choose one of reptile, fomaml, maml"),
    ("inner_lrr: 1\n", "unknown option 'inner_lrr'"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_bad_yaml_values_are_one_clear_error(tmp_path, yaml_text, message):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    with pytest.raises(UserError, match=re.escape(message)):
        options.build(train.MetaTrainConfig, p)


def test_the_readme_is_for_users():
    """Under 250 lines; the quick start is two commands, the main job then the tests; no issue numbers;
    and the flags it shows exist (test_readme_names_only_flags_that_exist)."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    quick = re.search(r"## Quick start\n+```bash\n(.*?)```", text, re.S)
    assert quick and quick.group(1).splitlines() == [
        "bash scripts/main.sh", "bash scripts/setup.sh --test && .venv/bin/ruff check . && .venv/bin/python -m pytest -q"]
    assert (ROOT / ".ci" / "run").read_text().strip().endswith(quick.group(1).splitlines()[1])
    assert not re.search(r"#\d+\b|issue \d+", text, re.I)
    assert "-c recommended" in text.split("## Which learner")[0]  # the first suggestion, before the details


@pytest.mark.parametrize("args,message", [
    (["meta-train", "--inner-lr", "nan"], "--inner-lr must be a finite number"),
    (["meta-train", "--episodes", "2.5"], "--episodes: expected an integer, got '2.5'"),
    (["meta-train", "--learner", "maml", "--inner-optimizer", "adamw"], "plain SGD inner steps"),
    (["meta-train", "--learner", "fomaml", "--query", "0"], "--query must be >= 1"),
    (["adapt", "--task", "aclsum-title"], "--shots is required"),
    (["adapt", "--task", "aclsum-title", "--shots", "2", "--lr", "-1"], "--lr must be > 0"),
    (["compare", "--adapters", "x", "--shots", "a,b"], "--shots: expected an integer, got 'a'"),
    (["evaluate", "--task", "aclsum-title", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["meta-train", "-c", "no-such-config"], "does not exist (shipped configs: cpu-small, meta-lora, paper, "
                                             "recommended)"),
    (["meta-train", "--bogus"], "No such option: --bogus"),
])
def test_bad_flags_fail_in_one_line_before_any_work(args, message, tmp_path, capsys):
    t = time.perf_counter()
    code = cli.main([*args, "--out", str(tmp_path / "o")] if args[0] in ("meta-train", "adapt", "compare") else args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()
    assert time.perf_counter() - t < 30  # no model was loaded


def test_the_recommended_config_is_maml_plus_plus_meta_validated():
    from mlx_reptilora.evaluation import validate

    cfg = options.build(train.MetaTrainConfig, "recommended")
    cfg.validate()
    assert (cfg.learner, cfg.lslr, cfg.multi_step_loss, cfg.first_order_episodes) == ("maml", True, 50, 20)
    assert cfg.valid_shots == [1, 5] and 0 in cfg.valid_steps  # a recipe per count, guarded by "0 steps"
    validate.check(cfg)  # its validation tasks share no documents with its training tasks, and have the splits
    paper = options.build(train.MetaTrainConfig, "paper")
    assert (paper.learner, paper.valid_tasks) == ("reptile", [])


# ---- the layout: imports point down the data flow ------------------------------------------------

LAYERS = {"errors": 0, "progress": 0, "paths": 0, "options": 0, "data": 1, "model": 2, "meta": 3,
          "evaluation": 4, "crosscheck": 5, "cli": 6, "__main__": 6, "__init__": 6}


def _modules():
    pkg = ROOT / "mlx_reptilora"
    for path in sorted(pkg.rglob("*.py")):
        parts = path.relative_to(pkg).with_suffix("").parts
        yield ".".join(parts), path


def _imports(name: str, path: Path):
    """Modules of this package that `name` imports anywhere (top level or inside functions)."""
    package = name.rsplit(".", 1)[0] if "." in name and not name.endswith("__init__") else ""
    if name.endswith("__init__"):
        package = name[: -len(".__init__")] if "." in name else ""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{target}.{alias.name}" if target else alias.name
                yield full if _exists(full) else target
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mod = node.module if isinstance(node, ast.ImportFrom) else None
            for alias in node.names:
                full = mod or alias.name
                if full.startswith("mlx_reptilora."):
                    yield full[len("mlx_reptilora."):]


def _exists(name: str) -> bool:
    base = ROOT / "mlx_reptilora" / Path(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def test_imports_point_down_the_data_flow_and_never_in_a_circle():
    graph = {}
    for name, path in _modules():
        layer = LAYERS[name.split(".")[0]]
        deps = {d for d in _imports(name, path) if d}
        for dep in deps:
            assert LAYERS[dep.split(".")[0]] <= layer, f"{name} (layer {layer}) imports {dep}, which is above it"
        graph[name] = {d for d in deps if d != name}
    seen, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in seen:
            return
        stack.append(node)
        for dep in graph.get(node, ()):
            visit(dep)
        stack.pop()
        seen.add(node)

    for node in graph:
        visit(node)


def test_no_module_is_over_300_lines():
    """Small modules, one idea each (issue #27): a module that outgrows this is split by idea."""
    long = {name: n for name, path in _modules() if (n := len(path.read_text().splitlines())) > 300}
    assert not long, f"modules over 300 lines: {long}"
