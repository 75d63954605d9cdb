#!/usr/bin/env bash
# On the lent GPU machine (after ../shared/device/stage.py's chunks are unstaged, with .whl/aclsum-*.whl):
# issue #27's check that the redesign (learners over parameter trees, starts, the functional inner
# loop) runs on CUDA as it did. 1: every learner's episode time and peak memory on SmolLM2, the
# command of issue #14's table; 2: the FOMAML and MAML meta-gradients against the PyTorch twin;
# 3: tests/test_starts.py's shot-conditioned start meta-trained straight and stopped-then-resumed
# (are the two starts' bytes equal on CUDA?), adapted and compared. Writes logs and JSON under $OUT.
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD MLX_REPTILORA_CACHE=/tmp/mrcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
GGUF=/root/stage/files/SmolLM2-135M-Instruct.Q4_1.gguf
bash scripts/device/learners_gpu.sh smollm2-135m --sweep ""
bash scripts/device/learners_gpu.sh check
gen() {  # the CLI with the test learner registered, as tests/test_starts.py runs it
  python3 -c "import sys, mlx_reptilora; import tests.test_starts; from mlx_reptilora.cli import main; sys.exit(main(sys.argv[1:]))" "$@"
}
ARGS=(--model "$GGUF" --learner test-generator --tasks aclsum-title,pydoc --support 4 --query 4 --inner-steps 3
      --max-length 512 --eval-every 5 --checkpoint-every 5 --quiet)
t0=$SECONDS
gen meta-train "${ARGS[@]}" --episodes 20 --out /tmp/gen/straight 2>&1 | tee "$OUT/generator.log"
echo "straight: $((SECONDS - t0)) s" | tee -a "$OUT/generator.log"
gen meta-train "${ARGS[@]}" --episodes 10 --out /tmp/gen/resumed 2>&1 | tee -a "$OUT/generator.log"
gen meta-train "${ARGS[@]}" --episodes 20 --out /tmp/gen/resumed --resume 2>&1 | tee -a "$OUT/generator.log"
if cmp -s /tmp/gen/straight/start.safetensors /tmp/gen/resumed/start.safetensors; then r=identical; else r=different; fi
echo "resumed start vs straight: $r" | tee -a "$OUT/generator.log"
cp /tmp/gen/straight/metrics.jsonl "$OUT/generator-metrics.jsonl"
gen compare --model "$GGUF" --adapters /tmp/gen/straight --tasks numpy-name --shots 0,1,5 --draws 2 --limit 64 \
    --systems lora,meta --out /tmp/gen/compare --quiet 2>&1 | tee -a "$OUT/generator.log"
cp /tmp/gen/compare/table.md "$OUT/generator-compare.md"
