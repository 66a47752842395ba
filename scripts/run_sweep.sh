#!/usr/bin/env bash
# Run a grid of defense experiments: build -> train -> generate -> [capabilities] -> score -> report.
#
# One cell = one model x one training task x one N; its run name Instructions_{K}_{N}_{task}_{model}
# names checkpoints/<run>/, evaluation/generations/<run>/ and logs/<run>.{train,generate}.log.
# Cells wait in a queue; each entry of GPUS runs one cell at a time (CUDA_VISIBLE_DEVICES set to
# it; `cpu` runs on the CPU, `0,1` trains one cell with DDP over two GPUs). A finished cell is
# skipped, an interrupted one resumes, a failed one is listed at the end (exit status 1).
# The queue, the decisions and the logs live in crossdefense.sweep (scripts/sweep_plan.py sweep).
#
# The paper's summarize-defense experiment, N=1000, LLaMA-1 and LLaMA-2, on 4 GPUs:
#   SWEEP_FILE=paper GPUS="0 1 2 3" \
#     DOCUMENTS_PATH=harmful.jsonl REFUSALS_PATH=refusals.json scripts/run_sweep.sh
# or, without a sweep file, the same with variables only:
#   GPUS="0 1 2 3" TASKS=summarize NUMBERS=1000 \
#     MODELS="llama=yahma/llama-7b-hf:alpaca llama2=meta-llama/Llama-2-7b-hf:llama2" \
#     DOCUMENTS_PATH=harmful.jsonl REFUSALS_PATH=refusals.json scripts/run_sweep.sh
#
# Environment (defaults in brackets; a variable that is set beats the sweep file):
#   SWEEP_FILE   a sweep file, a path or a preset of configs/sweeps/: paper full_grid cpu_smoke
#                demo (keys: configs/sweeps/README.md)  [none: the defaults below]
#   GPUS         workers, e.g. "0 1 2 3", "cpu cpu", "0,1 2,3"  [all GPUs nvidia-smi lists, else cpu]
#   STEPS        some of: build train generate capabilities score report  [all]
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
#   BENIGN_DOCUMENTS  benign documents with an answer per task, added to every mixture under the
#                defended task and two others (--benign_documents_path)  [none]
#   BASE_RUNS    yes: also evaluate each model untrained, run base_<model>  [no]
#   EVAL_OFFSET EVAL_LIMIT  documents EVAL_OFFSET .. +EVAL_LIMIT-1 of each eval file, written to
#                DATA_DIR/eval/<part>/  [0 0: every document]
#   XSTEST_PER_TYPE  with EVAL_SETS xstest: prompts per XSTest type, seeded like the mixture [0: all]
#   CAPABILITIES yes: the lm-eval capability task per cell (scripts/eval_capabilities.py, flags in
#                CAPABILITY_ARGS, results in CAPABILITIES_DIR) and in the report  [no]
#   PYTHON       [.venv/bin/python if present, else python3]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  exec "$PYTHON" scripts/sweep_plan.py plan "$@"
fi
exec "$PYTHON" scripts/sweep_plan.py sweep "$@"
