#!/usr/bin/env bash
# Build the missing mixtures and train every cell of the sweep: scripts/run_sweep.sh with
# STEPS="build train". Same variables (SWEEP_FILE, TASKS, NUMBERS, MODELS, GPUS, TRAIN_ARGS,
# DRY_RUN, ...).
#   GPUS="0 1" TASKS="summarize translate" NUMBERS="100 1000" scripts/train_sweep.sh
#   SWEEP_FILE=full_grid GPUS="0 1 2 3" scripts/train_sweep.sh
set -euo pipefail
export STEPS="build train"
exec "$(dirname "${BASH_SOURCE[0]}")/run_sweep.sh" "$@"
