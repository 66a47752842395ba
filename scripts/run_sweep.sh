#!/usr/bin/env bash
# Run a grid of defense experiments: build -> train -> generate -> score -> report.
#
# One cell = one model x one training task x one N; its run name Instructions_{K}_{N}_{task}_{model}
# names checkpoints/<run>/, evaluation/generations/<run>/ and logs/<run>.{train,generate}.log.
# Cells wait in a queue; each entry of GPUS runs one cell at a time (CUDA_VISIBLE_DEVICES set to
# it; `cpu` runs on the CPU, `0,1` trains one cell with DDP over two GPUs). A finished cell is
# skipped, an interrupted one resumes, a failed one is listed at the end (exit status 1).
#
# The paper's summarize-defense experiment, N=1000, LLaMA-1 and LLaMA-2, on 4 GPUs:
#   GPUS="0 1 2 3" TASKS=summarize NUMBERS=1000 \
#     MODELS="llama=yahma/llama-7b-hf:alpaca llama2=meta-llama/Llama-2-7b-hf:llama2" \
#     DOCUMENTS_PATH=harmful.jsonl REFUSALS_PATH=refusals.json scripts/run_sweep.sh
#
# Environment (defaults in brackets; all decisions are made by scripts/sweep_plan.py):
#   GPUS         workers, e.g. "0 1 2 3", "cpu cpu", "0,1 2,3"  [all GPUs nvidia-smi lists, else cpu]
#   STEPS        some of: build train generate score report  [all five]
#   DRY_RUN=1    print the plan (cells, workers, decisions, commands) and do nothing
#   TASKS        training tasks: summarize translate sentiment case cloze mix  [summarize]
#   NUMBERS      defense sizes N; 0 is the no-defense baseline  [1000]
#   MODELS       name=path_or_hub_id:template entries  [llama=yahma/llama-7b-hf:alpaca
#                llama2=meta-llama/Llama-2-7b-hf:llama2]
#   EVAL_SETS    eval file stems or globs in EVAL_DIR, or xstest (data/xstest, see
#                scripts/download_data.sh)  [test_*: five tasks x harmful/cnn/useful]
#   EVAL_DIR     [data/upstream/evaluation, written by scripts/download_data.sh]
#   NUM_SAFETY   K safety examples in each mixture  [100]
#   SEEDS        training seeds, e.g. "1 2 3": one adapter per seed, run names end _seed<k> [one run]
#   DATA_DIR     mixtures: DATA_DIR/<task>/saferpaca_Instructions_{K}_{N}_{task}.json  [data/training]
#   OUT_DIR      root of checkpoints/ evaluation/ logs/  [the repository]; or set CHECKPOINTS_DIR,
#                GENERATIONS_DIR, LOGS_DIR, SCORES_DIR, REPORT_DIR one by one
#   TRAIN_ARGS   extra flags for training/finetuning.py  [--num_epochs 3 --cutoff_len 1024
#                --val_set_size 0], GEN_ARGS for generation/generate_answers.py, SCORE_ARGS,
#                REPORT_ARGS, BUILD_ARGS for the other steps
#   ALPACA_PATH SAFETY_PATH DOCUMENTS_PATH REFUSALS_PATH   inputs of scripts/build_defense_data.py;
#                the build step only builds missing mixtures and needs the last two for N > 0
#   PYTHON       [.venv/bin/python if present, else python3]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() {
  echo "error: $*" >&2
  exit 1
}

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# Default workers: the visible GPUs, one worker each; the CPU when there is none.
detect_gpus() {
  local ids=""
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    ids="${CUDA_VISIBLE_DEVICES//,/ }"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    ids="$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | paste -sd' ' -)" || ids=""
  fi
  echo "${ids:-cpu}"
}

STEPS="${STEPS:-build train generate score report}"
: "${STEPS:?STEPS is empty}"
GPUS="${GPUS:-$(detect_gpus)}"
: "${GPUS:?GPUS is empty: give device ids like \"0 1\" or cpu}"
read -r -a workers <<<"$GPUS"
[[ ${#workers[@]} -gt 0 ]] || die "GPUS is empty: give device ids like \"0 1\" or cpu"

plan() {
  "$PYTHON" scripts/sweep_plan.py "${1:?action}" --steps "$STEPS" "${@:2}"
}

has_step() {
  [[ " ${STEPS//,/ } " == *" ${1:?step} "* ]]
}

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  plan plan --gpus "$GPUS"
  exit 0
fi

ncells="$(plan count)" || exit 1
failed=0

if has_step build; then
  plan build || failed=1
fi

state=""
worker_pids=()
cleanup() {
  if [[ -n "$state" ]]; then rm -rf -- "$state"; fi
}
stop() {
  if [[ ${#worker_pids[@]} -gt 0 ]]; then kill -TERM "${worker_pids[@]}" 2>/dev/null || true; fi
  wait || true
  exit "$1"
}
trap cleanup EXIT
trap 'stop 130' INT
trap 'stop 143' TERM

# worker GPU: take the next unclaimed cell (mkdir is atomic) and run it, until none is left.
worker() {
  local gpu="${1:?gpu}" i child=""
  local visible="$gpu"
  if [[ "$gpu" == cpu ]]; then visible=""; fi
  trap 'if [[ -n "$child" ]]; then kill -TERM "$child" 2>/dev/null; wait "$child"; fi; exit 143' TERM
  for ((i = 0; i < ncells; i++)); do
    mkdir "$state/claim.$i" 2>/dev/null || continue
    # Not through plan(): $! must be python itself for the TERM trap to reach it.
    CUDA_VISIBLE_DEVICES="$visible" "$PYTHON" scripts/sweep_plan.py run --steps "$STEPS" \
      --index "$i" --gpu "$gpu" --results_dir "$state" &
    child=$!
    wait "$child" || true # the outcome is in $state/cell-$i.json
    child=""
  done
}

if has_step train || has_step generate; then
  state="$(mktemp -d "${TMPDIR:-/tmp}/sweep.XXXXXX")"
  ncpu=0
  for gpu in "${workers[@]}"; do
    if [[ "$gpu" == cpu ]]; then ncpu=$((ncpu + 1)); fi
  done
  if [[ $ncpu -gt 0 && -z "${OMP_NUM_THREADS:-}" ]]; then
    # CPU workers share the cores instead of each starting one thread per core.
    cores="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)"
    export OMP_NUM_THREADS=$((cores / ncpu > 0 ? cores / ncpu : 1))
  fi
  echo "[$(date +%H:%M:%S)] sweep: $ncells cells on ${#workers[@]} worker(s): $GPUS"
  for gpu in "${workers[@]}"; do
    worker "$gpu" &
    worker_pids+=("$!")
  done
  wait "${worker_pids[@]}" || true
  worker_pids=()
  plan summary --results_dir "$state" || failed=1
fi

if has_step score; then
  plan score || failed=1
fi
if has_step report; then
  plan report || failed=1
fi
if [[ $failed -ne 0 ]]; then exit 1; fi
