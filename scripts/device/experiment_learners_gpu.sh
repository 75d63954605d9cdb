#!/usr/bin/env bash
# On the lent GPU machine, after ../shared/device/stage.py's chunks are unstaged and with .whl carried
# (aclsum, rouge-score, nltk, typer, pydantic and their pure-Python dependencies, plus pydantic-core's
# wheel for the machine's Python: pip download --only-binary=:all: --python-version 3.12
# --platform manylinux2014_x86_64 pydantic-core) and, for the pool's
# Debian corpora, .taskcache (`python scripts/device/pack_taskcache.py` where they are installed: one
# parsed JSON per corpus, as the portable cache here requires):
# scripts/experiment.py for one plan within $2 seconds of lent time, every stage time-boxed, and what
# exists packed into $OUT.
# A later lease carries the packed starts back as .exp/ and the driver skips what is done.
#   bash scripts/device/experiment_learners_gpu.sh learned-adaptation 540
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD MLX_REPTILORA_CACHE=/tmp/mrcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# 10 processes on one GPU: each keeps at most 3 GB of freed buffers (without a cap they ran an H200 out)
export MLX_REPTILORA_CACHE_LIMIT_GB=${MLX_REPTILORA_CACHE_LIMIT_GB:-3}
[ -f .taskcache/tasks.tar.gz ] && tar xzf .taskcache/tasks.tar.gz -C .taskcache  # packed: fits one call beside a chunk
[ -d .taskcache ] && export MLX_REPTILORA_TASK_CACHE=$PWD/.taskcache
# STAGES=meta: all the time left to meta-training; tune,test: to tuning and testing; tune: all to tuning
STAGES=${STAGES:-meta,tune,test}
GGUF=/root/stage/files/SmolLM2-135M-Instruct.Q4_1.gguf
plan=$1 budget=$2; shift 2
EXP=/tmp/exp/$plan
t0=$SECONDS
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $OUT/gpu.txt
python3 -c "import sys, mlx.core as mx, mlx_lm; print(sys.version.split()[0], 'mlx', mx.__version__, 'mlx-lm', mlx_lm.__version__, mx.default_device())" | tee -a $OUT/gpu.txt
python3 -m mlx_reptilora info --model "$GGUF" | tail -3       # converts the GGUF once, before the jobs race
python3 -m mlx_reptilora tasks --model "$GGUF" | tail -3      # caches pydoc once
mkdir -p $EXP
# a former lease's test results and logs (results.tar.gz as it came back): finished tests are skipped
[ -f .exp/results.tar.gz ] && tar xzf .exp/results.tar.gz -C $EXP
if ls .exp/starts.tar.part* > /dev/null 2>&1; then  # a former lease's starts, only when every part is whole
  (cd .exp && sha256sum -c --quiet starts.sha256) && cat .exp/starts.tar.part* | tar xf - -C $EXP \
    || echo "the starts in .exp/ are incomplete (a part is missing or damaged): not used"
fi
left() { echo $((budget - (SECONDS - t0))); }
pack() {  # what exists, into $OUT (at most 8 files of 16 MiB come back), under a lock (the live loop packs too)
  # built beside, then moved in: scripts/device/detached.sh copies $OUT while this runs, and a copy
  # caught between two moves has parts that starts.sha256 refuses
  (flock 9
   rm -rf /tmp/pack && mkdir -p /tmp/pack
   cd $EXP && tar czf /tmp/pack/results.tar.gz --exclude='*.safetensors' --exclude=checkpoints --exclude=predictions . 2>/dev/null
   # -print0: systems such as "lora (calibrated)" have spaces in their folder names
   [ -n "$(find test -name predictions -type d 2>/dev/null)" ] \
     && find test -name predictions -type d -print0 | tar czf /tmp/pack/predictions.tar.gz --null -T -
   # the finished starts (adapters, config, recipe, learned rates) in 15 MiB parts with their checksums:
   # copy them and starts.sha256 into .exp/ here and carry .exp to a later lease to test them there
   tar cf - --exclude=checkpoints --exclude='*.log' --exclude=metrics.jsonl meta 2>/dev/null | split -b 15M -d - /tmp/pack/starts.tar.part
   (cd /tmp/pack && sha256sum starts.tar.part* > starts.sha256)
   rm -f $OUT/starts.tar.part*
   mv /tmp/pack/* $OUT/) 9> /tmp/pack.lock
}
# everything so far, every LIVE_EVERY s while the stages run: a lease taken back mid-stage keeps
# what the last wait copied
( while sleep ${LIVE_EVERY:-120}; do pack; done ) &
live=$!
# What is left after setup: ~45% meta-training, the rest testing, finishing, report and packing. A
# stage may run 2 x 60 s past its deadline (a checkpoint to write, then SIGTERM, then SIGKILL).
meta=$(( $(left) * ${META_SHARE:-45} / 100 - 120 )); [ "$STAGES" = meta ] && meta=$(( $(left) - 200 ))
[ $meta -gt 30 ] || meta=30
if [[ $STAGES == *meta* ]]; then
  timeout $(( $(left) - 30 )) python3 scripts/experiment.py --plan $plan --out $EXP --model "$GGUF" --stage meta \
      --jobs ${JOBS:-10} --deadline $meta --batch-size 128 "$@" 2>&1 | tee $EXP/driver.log | grep -v "start "
  pack
fi
# tuning gets TUNE_SHARE % of what is left (a third: a few short runs), testing the rest
for stage in tune test; do
  [[ $STAGES == *$stage* ]] || continue
  d=$(( $(left) - 200 )); [ $stage = tune ] && [[ $STAGES == *test* ]] && d=$(( d * ${TUNE_SHARE:-33} / 100 ))
  [ $d -gt 20 ] || d=20
  timeout $(( $(left) - 30 )) python3 scripts/experiment.py --plan $plan --out $EXP --model "$GGUF" --stage $stage \
      --jobs ${JOBS:-10} --deadline $d --batch-size 128 "$@" 2>&1 | tee -a $EXP/driver.log | grep -v "start "
done
kill $live 2>/dev/null
python3 scripts/experiment.py --plan $plan --out $EXP --stage report "$@" > $EXP/report.log 2>&1; tail -5 $EXP/report.log
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
pack
ls -la $OUT; echo "used $((SECONDS - t0)) s of $budget"
