#!/usr/bin/env bash
# On the lent GPU machine (after stage.py's chunks are unstaged): the benchmark runner, MLX CUDA vs
# PyTorch + PEFT (bf16) on the same batches, both model shapes. Writes JSON + markdown under $OUT.
#   bash scripts/device/bench_gpu.sh [smollm2-135m|llama2-7b|...]   (one shape per call fits 10 min)
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD MLX_REPTILORA_CACHE=/tmp/mrcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
GGUF=/root/stage/files/SmolLM2-135M-Instruct.Q4_1.gguf
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
shape=${1:-smollm2-135m}
extra=(); [ "$shape" != smollm2-135m ] && extra=(--no-sweep)
python3 -m benchmarks --model "$GGUF" --shapes "$shape" --out "$OUT/bench-$shape" "${extra[@]}" 2>&1 | tee "$OUT/bench-$shape.log"
