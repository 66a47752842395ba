#!/usr/bin/env bash
# Generate answers for every trained cell of the sweep on EVAL_SETS: scripts/run_sweep.sh with
# STEPS=generate. Same variables (SWEEP_FILE, TASKS, NUMBERS, MODELS, EVAL_SETS, GPUS, GEN_ARGS,
# DRY_RUN, ...).
#   GPUS="0 1" EVAL_SETS="test_summarize test_case" GEN_ARGS="--batch_size 16" scripts/generate_sweep.sh
set -euo pipefail
export STEPS=generate
exec "$(dirname "${BASH_SOURCE[0]}")/run_sweep.sh" "$@"
