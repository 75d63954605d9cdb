#!/usr/bin/env bash
# --learner hyper end to end on the bundled model at CPU size: meta-train (cpu-small's tasks and
# meta-validation, 4 episodes), adapt to a task it never trained on from 5 shots, score it, load
# what adapt wrote in mlx-lm's own generate, and the task-similarity picture of the pool it trained
# on. It shows the path runs; its numbers are 4 episodes' worth. Writes runs/hyper-small/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/logged.sh
logged runs/hyper-small
run meta-train -c cpu-small --learner hyper --hyper-hidden 32 --episodes 4 --inner-steps 2 --valid-every 4 \
    --out "$OUT/meta"
run adapt --task numpy-name --shots 5 --adapters "$OUT/meta" --max-length 256 --out "$OUT/adapted"
run evaluate --task numpy-name --adapters "$OUT/adapted" --limit 20 --max-length 256 --json "$OUT/eval.json"
echo "+ mlx_lm.generate --adapter-path $OUT/adapted"
.venv/bin/mlx_lm.generate --model "$(.venv/bin/mlx-reptilora info --path)" --adapter-path "$OUT/adapted" \
    --prompt "numpy.linalg.norm" --max-tokens 24
run tasks --similarity aclsum-challenge aclsum-approach aclsum-outcome aclsum-title pydoc numpy-doc numpy-name \
    --examples 8 --max-length 256 \
    --out "$OUT/similarity.png"
