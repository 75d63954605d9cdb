#!/usr/bin/env bash
# On the lent GPU machine (after stage.py's chunks are unstaged): the meta-training benchmark,
# MLX CUDA vs PyTorch + PEFT (bf16) on the same batches. Writes JSON under $OUT.
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD MLX_REPTILORA_CACHE=/tmp/mrcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
GGUF=/root/stage/files/SmolLM2-135M-Instruct.Q4_1.gguf
python3 -m mlx_reptilora info --model "$GGUF" > "$OUT/info.txt"
for shape in "4 256" "32 512"; do
  set -- $shape
  python3 benchmarks/meta_train.py --model "$GGUF" --batch $1 --length $2 --repeats 5 2>/dev/null \
      | tail -1 | tee "$OUT/meta_train_b$1_l$2.json"
done
