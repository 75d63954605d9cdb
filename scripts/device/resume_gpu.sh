#!/usr/bin/env bash
# On the lent GPU machine (staged as for starts_gpu.sh): is meta-training bit-identical on CUDA at
# all? Each learner twice straight, and once stopped after 10 episodes and resumed; the starts'
# bytes compared (cmp) and their largest difference printed. Learners: arguments (default: reptile
# and the test generator).
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD MLX_REPTILORA_CACHE=/tmp/mrcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
GGUF=/root/stage/files/SmolLM2-135M-Instruct.Q4_1.gguf
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/aclsum-*.whl
cli() { python3 -c "import sys, mlx_reptilora; import tests.test_starts; from mlx_reptilora.cli import main; sys.exit(main(sys.argv[1:]))" "$@"; }
for learner in ${@:-reptile test-generator}; do
  A=(--model "$GGUF" --learner "$learner" --tasks aclsum-title,pydoc --support 4 --query 4 --inner-steps 3
     --max-length 512 --eval-every 5 --checkpoint-every 5 --quiet)
  d=/tmp/resume/$learner; rm -rf "$d"
  cli meta-train "${A[@]}" --episodes 20 --out "$d/a" && cli meta-train "${A[@]}" --episodes 20 --out "$d/b"
  cli meta-train "${A[@]}" --episodes 10 --out "$d/r" && cli meta-train "${A[@]}" --episodes 20 --out "$d/r" --resume
  f=$(ls "$d/a" | grep -E "^(adapters|start)\.safetensors$")
  python3 - "$d" "$f" "$learner" <<'PY' | tee -a "$OUT/resume.txt"
import sys, mlx.core as mx
d, f, learner = sys.argv[1:]
a, b, r = (mx.load(f"{d}/{x}/{f}") for x in "abr")
diff = lambda x, y: max(float(mx.abs(x[k] - y[k]).max()) for k in x)
print(f"{learner}: straight twice max |diff| {diff(a, b):.3g}, straight vs resumed {diff(a, r):.3g}")
PY
done
