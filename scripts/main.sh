#!/usr/bin/env bash
# The main job on the embedded defaults (bundled SmolLM2-135M-Instruct, offline tasks), sized for a
# 2-core CPU: meta-train a LoRA start, meta-validated -> adapt it to a task from 5 shots -> evaluate ->
# the paper's table, LoRA against the start. Re-running continues the finished or interrupted run in
# runs/main.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
run() { echo "+ mlx-reptilora $*" >&2; .venv/bin/mlx-reptilora "$@"; }
OUT=runs/main
RESUME=(); [ -f "$OUT/meta/meta.json" ] && RESUME=(--resume)

run meta-train -c cpu-small --out "$OUT/meta" "${RESUME[@]}"
run adapt --task aclsum-title --shots 5 --adapters "$OUT/meta" --max-length 256 --out "$OUT/adapted"
run evaluate --task aclsum-title --adapters "$OUT/adapted" --limit 20 --max-length 256 --json "$OUT/eval.json"
run compare --adapters "$OUT/meta" --tasks aclsum-title,pydoc --shots 0,1,5 --draws 1 --limit 10 \
    --max-length 256 --out "$OUT/compare"
