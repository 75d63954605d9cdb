#!/usr/bin/env bash
# On the lent GPU machine, after stage.py's chunks are unstaged and with .whl (rouge-score + nltk
# wheels) carried: run issue #8's experiment in the background (it outlives this command and
# resumes where it stopped), follow it for up to $1 seconds, and pack what exists into $OUT.
#   bash scripts/device/experiment_gpu.sh start 540   # first call: install, warm caches, launch
#   bash scripts/device/experiment_gpu.sh follow 560  # later calls: keep following, repack
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD MLX_REPTILORA_CACHE=/tmp/mrcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
GGUF=/root/stage/files/SmolLM2-135M-Instruct.Q4_1.gguf
EXP=/tmp/experiment
mode=$1 budget=$2; shift 2
if [ "$mode" = start ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -m mlx_reptilora info --model "$GGUF"          # converts the GGUF once, before 7 processes race
  python3 -m mlx_reptilora tasks --model "$GGUF" | tail -8  # caches pydoc once
  mkdir -p $EXP
  for t in .exp/*.tar; do [ -f "$t" ] && tar xf "$t" -C $EXP; done  # finished starts / checkpoints of a lost lease
  setsid nohup python3 docs/records/paper_experiment.py --stage all --jobs "${JOBS:-6}" --micro-batch 8 \
      --batch-size 128 --model "$GGUF" --out $EXP "$@" > $EXP/driver.log 2>&1 < /dev/null &
fi
end=$((SECONDS + budget))
while [ $SECONDS -lt $end ] && pgrep -f paper_experiment.py > /dev/null; do sleep 20; done
tail -25 $EXP/driver.log
for f in $EXP/meta/*/metrics.jsonl; do echo "$f: $(wc -l < $f) episodes, last: $(tail -1 $f | cut -c1-200)"; done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
cd $EXP && tar czf $OUT/results.tar.gz --exclude='*.safetensors' --exclude=checkpoints . 2>/dev/null
i=0; for d in meta/all-paper meta/all-anneal "meta/all-paper-at-250 meta/all-k5" "meta/without-aclsum-challenge meta/without-aclsum-approach" \
  "meta/without-aclsum-outcome meta/without-aclsum-title" meta/without-pydoc; do
  i=$((i+1)); ls $d/adapters.safetensors > /dev/null 2>&1 && tar cf $OUT/adapters-$i.tar $(for x in $d; do echo $x/adapters.safetensors $x/adapter_config.json; done) 2>/dev/null
done
# The newest checkpoint of each unfinished run: a lost lease resumes from it (carry it as .exp/).
for r in $EXP/meta/all-*; do n=$(basename $r); [ -f $r/checkpoints/latest ] && [ ! -f $r/adapters.safetensors ] && \
  (cd $EXP && tar cf $OUT/ckpt-$n.tar meta/$n/meta.json meta/$n/metrics.jsonl meta/$n/checkpoints/latest meta/$n/checkpoints/$(cat $r/checkpoints/latest))
done
ls -la $OUT
