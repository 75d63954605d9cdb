# Sourced by the end-to-end scripts (hyper_small.sh, abmll_small.sh, user_tasks.sh): a fresh output
# folder whose run.log keeps everything printed, and `run` to show each command before it runs.
logged() {
  OUT=$1
  rm -rf "$OUT" && mkdir -p "$OUT"
  exec > >(tee "$OUT/run.log") 2>&1
}
run() { echo "+ mlx-reptilora $*"; .venv/bin/mlx-reptilora "$@"; }
