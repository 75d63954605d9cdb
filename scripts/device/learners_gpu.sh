#!/usr/bin/env bash
# On the lent GPU machine (after ../shared/device/stage.py's chunks are unstaged): issue #13's learner
# benchmark (episode time and peak memory of each learner against Reptile's, MAML and FOMAML as T
# grows) for one model shape, and with `check` the FOMAML / MAML meta-gradients against the PyTorch
# twin on CUDA. Writes JSON, markdown and logs under $OUT.
#   bash scripts/device/learners_gpu.sh smollm2-135m            # support 8 x 512, query 8 x 512
#   bash scripts/device/learners_gpu.sh llama2-7b --support 4 --query 4
#   bash scripts/device/learners_gpu.sh check
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD MLX_REPTILORA_CACHE=/tmp/mrcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
GGUF=/root/stage/files/SmolLM2-135M-Instruct.Q4_1.gguf
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
what=${1:-smollm2-135m}; shift || true
if [ "$what" = check ]; then
  # the aclsum tasks need the aclsum wheel, carried in .whl/ (pip download --no-deps aclsum)
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/aclsum-*.whl
  for learner in fomaml maml; do
    python3 -m mlx_reptilora crosscheck --learner $learner --model "$GGUF" --device cuda --dtype float32 \
        --json "$OUT/crosscheck_$learner.json" 2>&1 | grep -v -i warn | tee "$OUT/crosscheck_$learner.log"
  done
else
  python3 -m benchmarks.learners --model "$GGUF" --shape "$what" --out "$OUT" "$@" 2>&1 | tee "$OUT/learners-$what.log"
fi
