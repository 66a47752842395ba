"""LoRA-tune a causal LM on an Alpaca-style mixture (upstream flag names and defaults), by
supervised fine-tuning (`--method sft`, the paper) or preference tuning (`--method dpo`).

Run on one device with `python training/finetuning.py ...`, or data-parallel with
`torchrun --nproc_per_node 4 training/finetuning.py ...` / `accelerate launch ...`.
"""

from __future__ import annotations

import logging
import sys

from crossdefense import UserError
from crossdefense.cli import run
from crossdefense.training import TrainConfig


def main(
    base_model: str,
    data_path: str = "yahma/alpaca-cleaned",
    output_dir: str = "./lora-alpaca",
    batch_size: int = TrainConfig.batch_size,
    micro_batch_size: int = TrainConfig.micro_batch_size,
    num_epochs: float = TrainConfig.num_epochs,
    learning_rate: float = TrainConfig.learning_rate,
    cutoff_len: int = TrainConfig.cutoff_len,
    val_set_size: float = TrainConfig.val_set_size,
    lora_r: int = TrainConfig.lora_r,
    lora_alpha: int = TrainConfig.lora_alpha,
    lora_dropout: float = TrainConfig.lora_dropout,
    lora_target_modules: str | tuple[str, ...] = TrainConfig.lora_target_modules,
    train_on_inputs: bool = TrainConfig.train_on_inputs,
    add_eos_token: bool = TrainConfig.add_eos_token,
    group_by_length: bool = TrainConfig.group_by_length,
    wandb_project: str = TrainConfig.wandb_project,
    wandb_run_name: str = TrainConfig.wandb_run_name,
    wandb_watch: str = TrainConfig.wandb_watch,
    wandb_log_model: str = TrainConfig.wandb_log_model,
    resume_from_checkpoint: str | None = TrainConfig.resume_from_checkpoint,
    prompt_template_name: str = TrainConfig.prompt_template_name,
    load_8bit: bool = TrainConfig.load_8bit,
    load_4bit: bool = TrainConfig.load_4bit,
    seed: int = TrainConfig.seed,
    max_steps: int = TrainConfig.max_steps,
    report_to: str = TrainConfig.report_to,
    gradient_checkpointing: bool = TrainConfig.gradient_checkpointing,
    trust_remote_code: bool = TrainConfig.trust_remote_code,
    save_steps: int = TrainConfig.save_steps,
    warmup_steps: int = TrainConfig.warmup_steps,
    logging_steps: int = TrainConfig.logging_steps,
    overwrite: bool = TrainConfig.overwrite,
    method: str = TrainConfig.method,
    beta: float = TrainConfig.beta,
    sft_weight: float = TrainConfig.sft_weight,
) -> None:
    """Train a LoRA adapter; writes adapter (safetensors), run_config.json and the template.

    Args:
        base_model: local model directory or hub id (required).
        data_path: Alpaca-style JSON/JSONL file ({instruction, input, output}; for --method dpo
            {instruction, input, chosen, rejected}), or a hub dataset id.
        output_dir: where the adapter, run_config.json and trainer checkpoints go.
        batch_size: effective batch size (micro_batch_size x accumulation x processes).
        micro_batch_size: examples per device per forward pass.
        num_epochs: passes over the training data (ignored when max_steps > 0).
        learning_rate: peak learning rate (--warmup_steps of warm-up, then linear decay).
        cutoff_len: token limit per example; over-long documents lose their end, never the
            task instruction or the response.
        val_set_size: held-out examples (a fraction when < 1; 0 for none, as in the paper).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout on the LoRA path.
        lora_target_modules: module names to adapt, e.g. q_proj,v_proj.
        train_on_inputs: also compute the loss on the prompt (upstream's default True); the
            default False is the paper's loss, conditional on the document.
        add_eos_token: end each response with EOS so the model learns to stop.
        group_by_length: batch examples of similar length (less padding).
        wandb_project: Weights & Biases project; setting it turns W&B logging on.
        wandb_run_name: W&B run name.
        wandb_watch: W&B watch mode (false | gradients | all).
        wandb_log_model: W&B model logging (false | true).
        resume_from_checkpoint: a trainer checkpoint dir (full resume) or an adapter dir
            (start from its weights).
        prompt_template_name: template name (alpaca, llama2, llama2_upstream, chat) or JSON path.
        load_8bit: load the base model in 8-bit (LoRA on int8, as upstream).
        load_4bit: load the base model in 4-bit NF4 (QLoRA).
        seed: seed for shuffling, the validation split, LoRA init and dropout.
        max_steps: stop after this many optimiser steps (-1: use num_epochs).
        report_to: transformers reporting integrations (none, tensorboard, wandb, ...).
        gradient_checkpointing: trade compute for memory.
        trust_remote_code: allow model code from the hub (off by default).
        save_steps: trainer checkpoint (and evaluation) interval in steps.
        warmup_steps: linear learning-rate warm-up steps.
        logging_steps: loss logging interval in steps.
        overwrite: allow training into an output_dir that already holds an adapter.
        method: sft (cross-entropy on the response: the paper) or dpo (TRL's DPO loss on
            preference pairs; the reference is the LoRA's starting point, so the base model,
            or the adapter given to --resume_from_checkpoint).
        beta: DPO's beta: how strongly the policy is kept near the reference (0.1 is TRL's
            default; higher = closer).
        sft_weight: DPO only: add this times the NLL of the chosen response to the loss (RPO,
            Pang et al. 2024); 0 (default) is plain DPO.
    """
    flags = dict(locals())
    from crossdefense.training import is_main_process, normalise_modules, train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = TrainConfig(
            **{**flags, "lora_target_modules": normalise_modules(lora_target_modules)}
        )
        out = train(cfg, flags).output_dir
    except UserError as e:
        sys.exit(f"error: {e}")
    if is_main_process():  # under torchrun every rank returns here
        print(f"adapter written to {out}")


if __name__ == "__main__":
    run(main)
