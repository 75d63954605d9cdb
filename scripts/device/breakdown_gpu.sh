#!/usr/bin/env bash
# On the lent GPU machine (after stage.py's chunks are unstaged): benchmarks.step_breakdown at the
# Llama-2-7B geometry, the chosen variants and PyTorch + PEFT in one run. Writes breakdown.json and
# breakdown.md under $OUT/breakdown.
#   bash scripts/device/breakdown_gpu.sh "ours,fused lora,swiglu recompute + fused lora" [--profile 3 ...]
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD MLX_REPTILORA_CACHE=/tmp/mrcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
GGUF=/root/stage/files/SmolLM2-135M-Instruct.Q4_1.gguf
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import mlx.core as mx; print('mlx', mx.__version__, mx.default_device())" | tee -a "$OUT/gpu.txt"
variants=$1; shift
python3 -m benchmarks.step_breakdown --shape "${SHAPE:-llama2-7b}" --model "$GGUF" --torch --variants "$variants" \
    --out "$OUT/breakdown" "$@" 2>&1 | tee "$OUT/breakdown.log"
