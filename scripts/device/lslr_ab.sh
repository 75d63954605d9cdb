#!/usr/bin/env bash
# Issue #27's open item: `maml --lslr` against `maml`, episode time on CUDA, the code before the
# learners owned their meta-parameters (b49e646) and HEAD, alternating in one lease so that the
# machine's state is shared. Before the lease, here:
#   mkdir -p .exp/ab && git archive -o .exp/ab/old.tar b49e646 mlx_reptilora benchmarks
# then on the device (carry [".exp/ab"], after the staged chunks are unstaged), detached:
#   bash scripts/device/detached.sh start bash scripts/device/lslr_ab.sh .exp/ab/old.tar   (ROUNDS=1: one old/new pair)
set -euo pipefail
export MLX_REPTILORA_CACHE=/tmp/mrcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
GGUF=${GGUF:-/root/stage/files/SmolLM2-135M-Instruct.Q4_1.gguf}
old=/tmp/ab-old
rm -rf $old && mkdir -p $old && tar -xf "$1" -C $old
# every row's files go to $res and are packed into $OUT/ab.tar.gz after each process (a lease cut
# short keeps what ran; at most 8 files come back, and two rounds write 13)
res=/tmp/ab-out
rm -rf $res && mkdir -p $res
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$res/gpu.txt"
for round in $(seq "${ROUNDS:-2}"); do
  # reptile is the ratios' base and runs first; the second round runs LSLR before MAML (order effects)
  rows=$([ $((round % 2)) = 1 ] && echo '("reptile", "maml", "maml --lslr")' || echo '("reptile", "maml --lslr", "maml")')
  for side in old new; do
    dir=$([ $side = old ] && echo $old || echo "$PWD")
    (cd "$dir" && PYTHONPATH=/tmp/site:$dir python3 -c "
import sys, benchmarks.learners as b
b.LEARNERS = tuple(sorted((x for x in b.LEARNERS if x[0] in $rows), key=lambda x: $rows.index(x[0])))
b.main(sys.argv[1:])" --model $GGUF --shape smollm2-135m --sweep "" --repeats "${REPEATS:-3}" --out "$res/$side-$round") \
      2>&1 | tee "$res/$side-$round.log"
    tar czf "$OUT/ab.tmp" -C $res . && mv "$OUT/ab.tmp" "$OUT/ab.tar.gz"
  done
done
