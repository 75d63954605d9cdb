#!/usr/bin/env bash
# --learner abmll end to end on the bundled model at CPU size: meta-train on a mix of choice and
# generation tasks (8 episodes, meta-validated on a choice task), adapt to a task of a group it never
# saw (sentiment) from 5 shots, score it, load what adapt wrote in mlx-lm's own generate, and compare
# it there with LoRA, in-context and meta + in-context: accuracy, NLL and ECE, posterior samples
# against the posterior mean. It shows the path runs; its numbers are 8 episodes' worth. Writes
# runs/abmll-small/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/logged.sh
logged runs/abmll-small
run meta-train --learner abmll --tasks wordnet-pos,mime-kind,unicode-category,iso-country-language,pydoc \
    --episodes 8 --support 4 --query 8 --inner-steps 2 --max-length 128 --micro-batch 4 --eval-every 4 \
    --checkpoint-every 4 --valid-tasks emoji-name-language --valid-every 8 --valid-shots 1,5 --valid-steps 0,1 \
    --valid-lr-scales 1 --valid-limit 16 --out "$OUT/meta"
run adapt --task vader-polarity --shots 5 --adapters "$OUT/meta" --max-length 128 --out "$OUT/adapted"
run evaluate --task vader-polarity --adapters "$OUT/adapted" --limit 60 --max-length 128 --json "$OUT/eval.json"
run evaluate --task vader-polarity --adapters "$OUT/adapted" --with-shots --limit 60 --max-length 128 \
    --json "$OUT/eval-with-shots.json"
echo "+ mlx_lm.generate --adapter-path $OUT/adapted"
.venv/bin/mlx_lm.generate --model "$(.venv/bin/mlx-reptilora info --path)" --adapter-path "$OUT/adapted" \
    --prompt "wonderful" --max-tokens 8
for samples in 4 0; do
  run compare --adapters "$OUT/meta" --tasks vader-polarity --shots 0,1,5 --draws 2 --limit 60 --max-length 128 \
      --systems lora,meta,in-context,meta+in-context --samples $samples --out "$OUT/compare-samples-$samples"
done
