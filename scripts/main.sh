#!/usr/bin/env bash
# The main job on the embedded defaults: set up, then show what the tool resolves to.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/mlx-reptilora info
