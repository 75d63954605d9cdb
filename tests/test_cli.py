"""The CLI as a user runs it: a real process, one-line errors, no tracebacks."""

import subprocess
import sys

import pytest


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "mlx_reptilora", *args], capture_output=True, text=True, env=env)


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("meta-train", "adapt", "evaluate", "info"):
        assert cmd in r.stdout


def test_info_reports_model_backend_dtype_blas(tiny_dir):
    r = run("info", "--model", str(tiny_dir))
    assert r.returncode == 0, r.stderr
    for key in ("backend: cpu", "compute_dtype: float32", "blas:", "architecture: llama", "layers: 2"):
        assert key in r.stdout


@pytest.mark.parametrize("model,message", [
    ("/no/such/model", "no such file or folder"),
    ("meta-llama/Llama-2-7b-hf", "Hugging Face hub"),
])
def test_bad_model_is_one_line(model, message):
    r = run("info", "--model", model)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert "Traceback" not in r.stderr


def test_peft_commands_round_trip(tiny, tmp_path):
    from mlx_reptilora.model import adapters

    cfg = adapters.LoraConfig(rank=4)
    adapters.attach(tiny.model, cfg)
    adapters.save(tiny.model, cfg, tmp_path / "a")
    assert run("export-peft", str(tmp_path / "a"), str(tmp_path / "p")).returncode == 0
    assert run("import-peft", str(tmp_path / "p"), str(tmp_path / "b")).returncode == 0
    assert (tmp_path / "b" / "adapters.safetensors").exists()
    r = run("import-peft", str(tmp_path / "a"), str(tmp_path / "c"))  # not PEFT
    assert r.returncode == 2 and "PEFT" in r.stderr and "Traceback" not in r.stderr


def test_tasks_lists_offline_tasks_with_stats(bundled_dir):
    r = run("tasks")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("aclsum-title"))
    assert row.split()[1:5] == ["aclsum", "100", "50", "100"]
    assert "pydoc" in r.stdout and "xsum" in r.stdout


def test_the_cli_imports_without_mlx_lm():
    """mlx-lm takes ~2 s to import: the CLI's help and one-line errors come before it (a top-level
    import of it once made every command, even a bad flag, 2 s slower)."""
    code = "import sys, mlx_reptilora.cli; assert 'mlx_lm' not in sys.modules, sorted(m for m in sys.modules if 'mlx_lm' in m)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1000:]
