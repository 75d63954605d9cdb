#!/usr/bin/env bash
# Every command on the five task folders a user might bring (tests/test_formats.py's user_folders:
# chat, prompt/completion, text, document/summary with exact match, a yes/no choice task), on the
# bundled model. It shows that each path runs; its numbers are 6 test rows after 4 episodes.
# Writes runs/user-tasks/ (run.log, compare/, warmth-5shot.json).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/logged.sh
logged runs/user-tasks
.venv/bin/python -c "import sys, pathlib; sys.path.insert(0, 'tests'); from test_formats import user_folders; user_folders(pathlib.Path('$OUT/data'))"
D=$OUT/data
run tasks "$D/chat" "$D/completion" "$D/text" "$D/notes" "$D/warmth"
run meta-train -c cpu-small --tasks "$D/chat,$D/completion,$D/text,$D/notes" --valid-tasks "$D/warmth" \
    --episodes 4 --valid-every 4 --valid-limit 8 --max-length 128 --out "$OUT/meta"
for t in chat completion text notes warmth; do
    run adapt --task "$D/$t" --shots 5 --adapters "$OUT/meta" --max-length 128 --out "$OUT/adapted-$t"
    run evaluate --task "$D/$t" --adapters "$OUT/adapted-$t" --max-length 128 --json "$OUT/$t-5shot.json"
done
run compare --adapters "$OUT/meta" --tasks "$D/chat,$D/completion,$D/text,$D/notes,$D/warmth" --shots 0,1,5 \
    --draws 1 --systems lora,meta,in-context --max-length 128 --out "$OUT/compare"
