#!/usr/bin/env bash
# On the lent GPU machine (after ../shared/device/stage.py's chunks are unstaged, with .whl and
# .taskcache carried; .taskcache may hold tasks.tar.gz, a packed copy of ~/.cache/mlx-reptilora/tasks):
# the first measurement of choice tasks. A start is meta-trained with -c recommended on a pool that
# mixes generation and choice tasks, meta-validated on the media-types group (choice: selected on
# accuracy), and compared with LoRA and in-context on three groups it never saw: sentiment and
# iso-codes (choice only: accuracy, NLL, ECE) and Welsh translation (exact match).
#   bash scripts/device/detached.sh start bash scripts/device/choice_gpu.sh
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD MLX_REPTILORA_CACHE=/tmp/mrcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
[ -f .taskcache/tasks.tar.gz ] && tar xzf .taskcache/tasks.tar.gz -C .taskcache
[ -d .taskcache ] && export MLX_REPTILORA_TASK_CACHE=$PWD/.taskcache
GGUF=/root/stage/files/SmolLM2-135M-Instruct.Q4_1.gguf
R=/tmp/choice
TRAIN=wordnet-define,wordnet-name,wordnet-pos,wordnet-domain,gcide-define,gcide-name,gcide-pos,unicode-name,unicode-category,emoji-name,emoji-name-language,freedict-fra-eng,freedict-eng-fra,freedict-ita-eng,freedict-eng-ita,vera-expand,vera-acronym,foldoc-define
VALID=mime-kind,mime-type
TEST=vader-polarity,afinn-polarity,afinn-strength,iso-country-language,iso-subdivision-country,freedict-cym-eng,freedict-eng-cym
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $OUT/gpu.txt
python3 -c "import sys, mlx.core as mx, mlx_lm; print(sys.version.split()[0], 'mlx', mx.__version__, 'mlx-lm', mlx_lm.__version__, mx.default_device())" | tee -a $OUT/gpu.txt
mkdir -p $R
pack() { (cd $R && tar czf $OUT/choice.tmp --exclude=checkpoints . && mv $OUT/choice.tmp $OUT/choice.tar.gz); }
resume=; [ -f $R/start/meta.json ] && resume=--resume
t=$SECONDS
python3 -m mlx_reptilora meta-train -c recommended --model "$GGUF" --tasks $TRAIN --valid-tasks $VALID \
  --out $R/start $resume 2>&1 | tee -a $R/meta-train.log | grep -v "^\[" ; echo "meta-train: $((SECONDS - t)) s" | tee -a $R/times.txt
pack
t=$SECONDS
python3 -m mlx_reptilora compare --model "$GGUF" --adapters $R/start --tasks $TEST --shots 0,1,5 --draws 3 \
  --limit 200 --out $R/compare 2>&1 | tee $R/compare.log | tail -60; echo "compare: $((SECONDS - t)) s" | tee -a $R/times.txt
pack
