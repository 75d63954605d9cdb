"""Shared fixtures: the real bundled model (converted once per session into a private cache) and a
tiny random-weight Llama with the bundled tokenizer, for tests that need a model but not its skill."""

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest

# Offline and private: never touch the user's cache or the network from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One test file per core (pytest-xdist): BLAS threads of their own would oversubscribe the cores and
# spin against each other. Set before any BLAS loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # PyTorch's, for the same reason
# On CUDA MLX rounds float32 matmuls to TF32 (~1e-3), past the float32 comparisons' tolerances.
os.environ.setdefault("MLX_ENABLE_TF32", "0")

import mlx_reptilora  # noqa: E402,F401  -- first: it preloads OpenBLAS before mlx.core loads

import mlx.core as mx  # noqa: E402


def pytest_sessionstart(session):
    from mlx_reptilora.model import _blas

    # A suite on MLX's reference BLAS runs ~10x slower: say so rather than crawl.
    if _blas.status["reason"].startswith("mlx was imported before"):
        raise pytest.UsageError("mlx.core was imported before mlx_reptilora; the OpenBLAS preload missed")


@pytest.fixture(autouse=True)
def _no_derived_limit():
    """A derived memory limit (on CUDA the default of every inner loop) ends with its test."""
    yield
    from mlx_reptilora.model import memory

    memory.release_limit()


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    # One cache for all of pytest-xdist's workers: the bundled model is converted once, not per worker.
    root = tmp_path_factory.getbasetemp()
    shared = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "cache"
    shared.mkdir(exist_ok=True)
    cache = os.environ.get("MLX_REPTILORA_TEST_CACHE") or str(shared)
    os.environ["MLX_REPTILORA_CACHE"] = cache
    yield cache


@pytest.fixture(scope="session")
def bundled_dir(_private_cache):
    from mlx_reptilora.model import models

    return models.resolve(None, verbose=False)


@pytest.fixture(scope="session")
def bundled(bundled_dir):
    from mlx_reptilora.model import models

    return models.load(None, verbose=False)


TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "max_position_embeddings": 2048, "vocab_size": 49152, "tie_word_embeddings": True,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "hidden_act": "silu",
}


def make_tiny_model(out: Path, tokenizer_from: Path, seed: int = 0, **overrides) -> Path:
    """A random-weight Llama in HF format, saved like any downloaded model."""
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    cfg = {**TINY_CONFIG, **overrides}
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(cfg))
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())),
                        metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer_from / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_dir(bundled_dir, tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"), bundled_dir)


@pytest.fixture
def tiny(tiny_dir):
    from mlx_reptilora.model import models

    return models.load(str(tiny_dir), verbose=False)


def assert_close(got: dict, want: dict, rel: float = 1e-4) -> None:
    """Per tensor, ‖got − want‖ ≤ rel · ‖want‖. For results of two computations whose float32 sums
    run in different orders (another BLAS, another CPU, a fused or recomputed path): elementwise
    tolerances fail there on entries near zero, which carry the same absolute rounding as the rest."""
    import numpy as np

    assert set(got) == set(want), sorted(set(got) ^ set(want))
    for k in want:
        a, b = np.asarray(got[k], np.float64), np.asarray(want[k], np.float64)
        diff, norm = np.linalg.norm(a - b), np.linalg.norm(b)
        assert diff <= rel * norm, f"{k}: relative difference {diff / max(norm, 1e-300):.2e} > {rel:g}"


class Ran(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args, env: dict | None = None, cwd=None) -> Ran:
    """`mlx-reptilora ARGS` in this process (cli.main), as a user would see it: exit status, stdout,
    stderr. A real process costs ~3 s of imports per call; tests that need one (signals, locks held by
    another process, mlx.launch) start it themselves."""
    import contextlib
    import io

    from mlx_reptilora.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        if env:
            stack.enter_context(_environ(env))
        if cwd is not None:
            stack.enter_context(_cwd(cwd))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        code = main([str(a) for a in args])
    return Ran(code, out.getvalue(), err.getvalue())


@contextmanager
def _cwd(path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextmanager
def _environ(env: dict):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def trained_and_resumed(args: list, episodes: int, tmp_path):
    """meta-train `args` for `episodes` straight, and again stopped half-way and resumed: the two
    starts are the same bytes (a start of any kind: its arrays file). The straight run's folder."""
    from mlx_reptilora.meta import start as starts

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli("meta-train", *args, "--episodes", episodes, "--out", straight).returncode == 0
    assert run_cli("meta-train", *args, "--episodes", episodes // 2, "--out", resumed).returncode == 0
    ran = run_cli("meta-train", *args, "--episodes", episodes, "--out", resumed, "--resume")
    assert ran.returncode == 0, ran.stderr
    assert (resumed / starts.ARRAYS).read_bytes() == (straight / starts.ARRAYS).read_bytes()
    return straight
