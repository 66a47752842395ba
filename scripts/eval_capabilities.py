"""Capability regression: lm-evaluation-harness tasks on a base model, with or without a LoRA
adapter; writes evaluation/capabilities/<run_name>.json (see crossdefense/capabilities.py)."""

from __future__ import annotations

import logging

from crossdefense.capabilities import DEFAULT_TASK, OUTPUT_DIR
from crossdefense.cli import run


def main(
    base_model: str,
    lora_weights: str | None = None,
    tasks: str | tuple[str, ...] = DEFAULT_TASK,
    output_dir: str = str(OUTPUT_DIR),
    run_name: str | None = None,
    batch_size: int | str = 8,
    limit: int | None = None,
    device: str | None = None,
    num_fewshot: int | None = None,
    seed: int = 1234,
    overwrite: bool = False,
) -> None:
    """Score a model on lm-evaluation-harness tasks (log-likelihood multiple choice and others).

    Args:
        base_model: hub id or local model directory (required).
        lora_weights: optional LoRA adapter directory (adapter_config.json + weights); lm-eval
            loads it on top of the base model with peft.
        tasks: lm-eval task, group or tag names, comma-separated, e.g. arc_easy,hellaswag,mmlu
            (default crossdefense_mc: the project's offline 134-question task in
            configs/lm_eval/). List them with `lm-eval ls tasks --include_path configs/lm_eval`.
        output_dir: folder of the result files (default evaluation/capabilities; never inside
            evaluation/outputs, where scripts/score_answers.py would read them).
        run_name: result file name without .json (default: the adapter folder's name, else the
            base model's short name, plus `_<task>-<task>` unless --tasks is the default).
        batch_size: lm-eval batch size: an integer, auto or auto:N.
        limit: score only the first N documents of each task (for quick checks; the default
            scores all of them).
        device: cpu, cuda or cuda:K (default: cuda if available, else cpu); bf16 on CUDA
            (fp16 without bf16 support), float32 on CPU.
        num_fewshot: few-shot examples per prompt (default: each task's own, 0 for most).
        seed: seed of Python, numpy, torch and lm-eval's few-shot sampler.
        overwrite: replace an existing <output_dir>/<run_name>.json.
    """
    flags = dict(locals())
    from crossdefense.capabilities import evaluate_capabilities, result_table

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path, doc = evaluate_capabilities(
        base_model,
        lora_weights=lora_weights,
        tasks=tasks,
        output_dir=output_dir,
        run_name=run_name,
        batch_size=batch_size,
        limit=limit,
        device=device,
        num_fewshot=num_fewshot,
        seed=seed,
        overwrite=overwrite,
        flags=flags,
    )
    print(result_table(doc["metrics"]))
    print(f"wrote {path} ({doc['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    run(main)
