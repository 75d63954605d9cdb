"""The CLI as a user meets it: one-line errors, no tracebacks. In this process (`cli.main`), except
where a real process is the point."""

import subprocess
import sys
from pathlib import Path

import pytest

from mlx_reptilora import cli


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_commands(capsys):
    for argv in (["--help"], []):  # no command at all is a request for the help
        code, out, _ = run(capsys, *argv)
        assert code == 0
        for cmd in ("meta-train", "adapt", "evaluate", "info"):
            assert cmd in out


def test_info_reports_model_backend_dtype_blas(tiny_dir, capsys):
    code, out, err = run(capsys, "info", "--model", tiny_dir)
    assert code == 0, err
    for key in ("backend: cpu", "compute_dtype: float32", "blas:", "architecture: llama", "layers: 2",
                f"path: {tiny_dir}"):
        assert key in out
    code, out, err = run(capsys, "info", "--path")  # the bundled model's converted folder, for mlx_lm.generate
    assert code == 0 and (Path(out.strip()) / "config.json").exists(), err


@pytest.mark.parametrize("model,message", [
    ("/no/such/model", "no such file or folder"),
    ("meta-llama/Llama-2-7b-hf", "Hugging Face hub"),
])
def test_bad_model_is_one_line(model, message, capsys):
    code, _, err = run(capsys, "info", "--model", model)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert "Traceback" not in err


def test_peft_commands_round_trip(tiny, tmp_path, capsys):
    from mlx_reptilora.model import adapters

    cfg = adapters.LoraConfig(rank=4)
    adapters.attach(tiny.model, cfg)
    adapters.save(tiny.model, cfg, tmp_path / "a")
    assert run(capsys, "export-peft", tmp_path / "a", tmp_path / "p", "--base-model", "me/base")[0] == 0
    assert run(capsys, "import-peft", tmp_path / "p", tmp_path / "b")[0] == 0
    assert (tmp_path / "b" / "adapters.safetensors").exists()
    code, _, err = run(capsys, "import-peft", tmp_path / "a", tmp_path / "c")  # not PEFT
    assert code == 2 and "PEFT" in err and "Traceback" not in err


def test_tasks_lists_offline_tasks_with_stats(bundled_dir, capsys):
    code, out, err = run(capsys, "tasks")
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("aclsum-title"))
    assert row.split()[1:7] == ["aclsum", "generate", "rouge", "100", "50", "100"]
    assert "pydoc" in out and "xsum" in out


def test_a_real_process_says_errors_in_one_line_and_exits_2():
    r = subprocess.run([sys.executable, "-m", "mlx_reptilora", "adapt", "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: No such option: --bogus") and "Traceback" not in r.stderr


def test_the_cli_imports_without_mlx_lm():
    """mlx-lm takes ~2 s to import: the CLI's help and one-line errors come before it (a top-level
    import of it once made every command, even a bad flag, 2 s slower)."""
    code = "import sys, mlx_reptilora.cli; assert 'mlx_lm' not in sys.modules, sorted(m for m in sys.modules if 'mlx_lm' in m)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1000:]


def test_progress_is_one_line_per_update_off_a_terminal():
    """Through tqdm, but with plain lines where tqdm's carriage returns would pile onto one line."""
    import io

    from mlx_reptilora.progress import Progress

    stream = io.StringIO()
    p = Progress(4, stream=stream, every_s=0)
    p.start = 1  # a resumed loop: the rate counts only what is done from here
    for done in (2, 3, 4):
        p.update(done, f"episode {done}")
    p.log("a line of its own")
    p.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 4
    assert lines[0].startswith("[2/4] episode 2 | ") and "elapsed, eta" in lines[0] and lines[-1] == "a line of its own"


def test_no_private_module_of_another_package_is_imported():
    import ast

    root = Path(__file__).resolve().parents[1] / "mlx_reptilora"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                parts = name.split(".")
                assert not any(p.startswith("_") for p in parts[1:]) or parts[0] == "mlx_reptilora", (path, name)
