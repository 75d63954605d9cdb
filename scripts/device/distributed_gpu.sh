#!/usr/bin/env bash
# On a lent machine of several GPUs (nvidia-h200-x2, -x4, -x8; after stage.py's chunks are
# unstaged, with .whl/ carried for the aclsum wheel): issue #17's scaling run. `meta-train` under
# `mlx.launch --backend nccl`, one process a GPU, the meta-batch split across ranks, against 1
# process, for Reptile and FOMAML, and each N-process run's adapters against the 1-process run's.
# Process counts are 1, 2, 4, 8 up to the GPUs the machine has. Writes JSON, markdown, logs under $OUT.
#   bash scripts/device/distributed_gpu.sh smollm2-135m
#   bash scripts/device/distributed_gpu.sh llama2-7b      # random weights, written once to /tmp/dist-llama2-7b
# Both in one lease (~10-15 min): bash scripts/device/detached.sh start bash scripts/device/distributed_gpu.sh all
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD MLX_REPTILORA_CACHE=/tmp/mrcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # the machine's rule: keep them
GGUF=/root/stage/files/SmolLM2-135M-Instruct.Q4_1.gguf
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
nvidia-smi topo -m >> "$OUT/gpu.txt" 2>&1 || true  # how the GPUs are linked
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/aclsum-*.whl
gpus=$(nvidia-smi -L | wc -l)
processes=1; for n in 2 4 8; do [ "$n" -le "$gpus" ] && processes+=",$n"; done
shapes=${1:-all}; [ "$shapes" = all ] && shapes="smollm2-135m llama2-7b"
for shape in $shapes; do
  # meta-batch 8 divides by every process count; support and query 8 x 512 tokens, T = 3 (of the paper's 7,
  # to fit the lease); 5 episodes, the first (traces, kernel builds) left out of the medians
  python3 -m benchmarks.distributed --shape "$shape" --model "$GGUF" --backend nccl --processes "$processes" \
      --learners reptile,fomaml --meta-batch 8 --support 8 --query 8 --inner-steps 3 --max-length 512 \
      --episodes 5 --tasks aclsum-title,aclsum-outcome,pydoc,pydoc-name --work "/tmp/dist-$shape" \
      --out "$OUT/distributed-$shape" 2>&1 | tee "$OUT/distributed-$shape.log"
done
