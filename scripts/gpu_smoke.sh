#!/usr/bin/env bash
# GPU smoke test on a CUDA machine: 8-bit and 4-bit LoRA (20 steps each) and batched generation
# on the embedded SmolLM2-135M-Instruct, then the generation benchmark; prints the GPU's name.
# Usage (repository root, after `make setup`): bash scripts/gpu_smoke.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-evaluation/gpu_smoke}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "error: no CUDA device visible")'
"$PY" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
"$PY" scripts/fetch_embedded_model.py
MODEL=checkpoints/base/SmolLM2-135M-Instruct
mkdir -p "$OUT"
"$PY" -c 'from crossdefense.bench import demo_mixture; import sys; print(demo_mixture(sys.argv[1]))' "$OUT/data" > "$OUT/mixture.txt"
DATA=$(cat "$OUT/mixture.txt")

for quant in load_8bit load_4bit; do
  start=$(date +%s)
  "$PY" training/finetuning.py --base_model "$MODEL" --data_path "$DATA" \
    --output_dir "$OUT/lora_$quant" --"$quant" --prompt_template_name chat \
    --batch_size 8 --micro_batch_size 8 --max_steps 20 --learning_rate 2e-3 \
    --val_set_size 0 --cutoff_len 384 --overwrite
  echo "train $quant: 20 steps in $(( $(date +%s) - start )) s"
  start=$(date +%s)
  "$PY" generation/generate_answers.py --base_model "$MODEL" --lora_weights "$OUT/lora_$quant" \
    --"$quant" --input_path data/mini/evaluation --output_path "$OUT/generations" \
    --num_beams 1 --max_new_tokens 48 --batch_size 64 --overwrite
  echo "generate $quant: 360 prompts in $(( $(date +%s) - start )) s"
done

"$PY" scripts/bench_generation.py --output_json "$OUT/bench_generation.json"
