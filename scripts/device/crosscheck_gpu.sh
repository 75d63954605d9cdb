#!/usr/bin/env bash
# On the lent GPU machine (after ../shared/device/stage.py's chunks are unstaged): the MLX vs
# PyTorch + PEFT cross-check on CUDA, float32 and bfloat16. Writes JSON under $OUT.
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD MLX_REPTILORA_CACHE=/tmp/mrcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
GGUF=/root/stage/files/SmolLM2-135M-Instruct.Q4_1.gguf
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m mlx_reptilora info --model "$GGUF" | tee "$OUT/info.txt"
for dtype in float32 bfloat16; do
  python3 -m mlx_reptilora crosscheck --model "$GGUF" --dtype $dtype --device cuda \
      --json "$OUT/crosscheck_$dtype.json" 2>&1 | grep -v Warning | tee "$OUT/crosscheck_$dtype.log"
done
