"""LoRA fine-tuning in the alpaca-lora style, on current transformers/peft, by supervised
fine-tuning (`method="sft"`, the paper) or by preference tuning (`method="dpo"`, TRL's
DPOTrainer on {prompt, chosen, rejected} pairs).

Differences from upstream, each deliberate: the loss is on the response only by default
(`train_on_inputs=False`, the paper's conditional loss); an over-long record loses the end of
its document, never its task instruction; shuffling is seeded; precision follows the device.
DPO's reference model is the starting point of the LoRA (a frozen copy of the adapter's
initial weights, i.e. the base model for a fresh LoRA): no second copy of the base in memory.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.data import (
    Pair,
    Record,
    TruncationStats,
    encode,
    encode_pair,
    read_preference_records,
    read_training_records,
)
from crossdefense.io import read_json, run_metadata, sha256_file, write_json
from crossdefense.runs import TRAINING_STARTED

log = logging.getLogger(__name__)
RUN_CONFIG = "run_config.json"
METHODS = ("sft", "dpo")
# Written into --output_dir when training starts (removed when it finishes): what a Trainer
# checkpoint in that folder was made with, so a resumption with other settings is refused.
# What a finished run leaves in --output_dir (besides peft's README.md)
FINISHED_FILES = (
    "adapter_model.safetensors",
    "adapter_model.bin",
    "adapter_config.json",
    "prompt_template.json",
    RUN_CONFIG,
    "README.md",
)
# Flags that may differ between a run and its resumption (where to write, how long, logging).
RESUMABLE_CHANGES = frozenset(
    {
        "output_dir",
        "resume_from_checkpoint",
        "overwrite",
        "max_steps",
        "num_epochs",
        "save_steps",
        "logging_steps",
        "report_to",
        "wandb_project",
        "wandb_run_name",
        "wandb_watch",
        "wandb_log_model",
    }
)


@dataclass
class TrainConfig:
    base_model: str
    data_path: str
    output_dir: str
    batch_size: int = 128
    micro_batch_size: int = 4
    num_epochs: float = 3
    learning_rate: float = 3e-4
    cutoff_len: int = 256
    val_set_size: int | float = 2000
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    train_on_inputs: bool = False
    add_eos_token: bool = True
    group_by_length: bool = False
    wandb_project: str = ""
    wandb_run_name: str = ""
    wandb_watch: str = ""
    wandb_log_model: str = ""
    resume_from_checkpoint: str | None = None
    prompt_template_name: str = "alpaca"
    load_8bit: bool = False
    load_4bit: bool = False
    seed: int = 42
    max_steps: int = -1
    report_to: str = "none"
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    save_steps: int = 200
    warmup_steps: int = 10
    logging_steps: int = 10
    overwrite: bool = False
    method: str = "sft"  # sft (the paper) or dpo (preference pairs)
    beta: float = 0.1  # DPO: strength of the pull towards the reference model
    sft_weight: float = 0.0  # DPO: + this x the NLL of the chosen response (RPO); 0 = pure DPO


def normalise_modules(value: Any) -> tuple[str, ...]:
    """fire hands `q_proj` as str, `q_proj,v_proj` as a tuple, upstream `[q_proj,v_proj]`."""
    from crossdefense.cli import as_list

    mods = tuple(as_list(value))
    if not mods:
        raise UserError("--lora_target_modules is empty")
    return mods


def _number(x: Any) -> bool:
    """A real number (fire may hand a string or a bool for a mistyped flag)."""
    return isinstance(x, int | float) and not isinstance(x, bool)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def validate(cfg: TrainConfig) -> None:
    """Everything that can be checked before a model is loaded."""
    from crossdefense import modeling
    from crossdefense.prompts import load_template
    from crossdefense.trackers import check_trackers

    # a missing wandb/tensorboard is one line now, not a transformers traceback after loading
    # the model (--wandb_project switches wandb on, as in setup_wandb)
    check_trackers("wandb" if cfg.wandb_project else cfg.report_to, allow_other=True)
    modeling.check_quantization(cfg.load_8bit, cfg.load_4bit)
    modeling.check_base_model(cfg.base_model)
    load_template(cfg.prompt_template_name)
    if cfg.micro_batch_size < 1 or cfg.batch_size < cfg.micro_batch_size:
        raise UserError("--batch_size must be >= --micro_batch_size >= 1")
    if cfg.batch_size % (cfg.micro_batch_size * world_size()):
        raise UserError(
            f"--batch_size {cfg.batch_size} is not a multiple of --micro_batch_size "
            f"{cfg.micro_batch_size} x {world_size()} processes"
        )
    if cfg.cutoff_len < 8:
        raise UserError("--cutoff_len must be >= 8")
    if cfg.method not in METHODS:
        raise UserError(f"--method {cfg.method!r}: expected one of {', '.join(METHODS)}")
    checks = (
        (_number(cfg.beta) and cfg.beta > 0, "--beta must be > 0"),
        (_number(cfg.sft_weight) and cfg.sft_weight >= 0, "--sft_weight must be >= 0"),
        (_number(cfg.learning_rate) and cfg.learning_rate > 0, "--learning_rate must be > 0"),
        (
            _number(cfg.lora_r) and cfg.lora_r >= 1 and cfg.lora_r == int(cfg.lora_r),
            "--lora_r must be an integer >= 1",
        ),
        (_number(cfg.lora_alpha) and cfg.lora_alpha > 0, "--lora_alpha must be > 0"),
        (
            _number(cfg.lora_dropout) and 0 <= cfg.lora_dropout < 1,
            "--lora_dropout must be in [0, 1)",
        ),
        (
            _number(cfg.val_set_size) and cfg.val_set_size >= 0,
            "--val_set_size must be >= 0 (a count, or a fraction below 1)",
        ),
        (
            _number(cfg.max_steps) and (cfg.max_steps > 0 or cfg.max_steps == -1),
            "--max_steps must be > 0, or -1 to train --num_epochs",
        ),
        (
            cfg.max_steps > 0 or (_number(cfg.num_epochs) and cfg.num_epochs > 0),
            "--num_epochs must be > 0",
        ),
        (_number(cfg.warmup_steps) and cfg.warmup_steps >= 0, "--warmup_steps must be >= 0"),
        (_number(cfg.logging_steps) and cfg.logging_steps >= 1, "--logging_steps must be >= 1"),
        (_number(cfg.save_steps) and cfg.save_steps >= 1, "--save_steps must be >= 1"),
        (
            isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool) and 0 <= cfg.seed < 2**32,
            "--seed must be an integer in [0, 2**32)",
        ),
    )
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    if 0 < cfg.max_steps <= cfg.warmup_steps:
        log.warning(
            "--max_steps %d <= --warmup_steps %d: the learning rate never leaves its warm-up "
            "(a 1-step run does not move the adapter at all); lower --warmup_steps",
            cfg.max_steps,
            cfg.warmup_steps,
        )
    out = Path(cfg.output_dir)
    base = Path(cfg.base_model).expanduser()
    if base.is_dir() and (
        out.resolve() == base.resolve() or base.resolve() in out.resolve().parents
    ):
        raise UserError(
            f"--output_dir {out}: is inside the base model's folder; the adapter would be "
            "loaded with the base model from then on. Choose another folder"
        )
    # a finished run's folder holds its adapter (and no checkpoints): training into it again,
    # from scratch or from another adapter, replaces it, so only --overwrite may
    if (out / "adapter_config.json").exists() and not cfg.overwrite:
        raise UserError(f"{out} already holds an adapter; pass --overwrite to replace it")
    left = trainer_checkpoints(out)
    if left and not (cfg.overwrite or cfg.resume_from_checkpoint):
        raise UserError(
            f"{out} holds {left[-1].name} from an interrupted run; pass --resume_from_checkpoint "
            f"{left[-1]} to continue it, or --overwrite to start over"
        )
    if cfg.resume_from_checkpoint and not Path(cfg.resume_from_checkpoint).exists():
        raise UserError(f"{cfg.resume_from_checkpoint}: checkpoint not found")


def load_records(data_path: str, method: str = "sft") -> list[Record] | list[Pair]:
    """A local JSON/JSONL file, or a hub dataset id (e.g. yahma/alpaca-cleaned) when online;
    `method="dpo"` reads preference pairs {instruction, input, chosen, rejected}."""
    if Path(data_path).expanduser().exists() or data_path.endswith((".json", ".jsonl")):
        path = Path(data_path).expanduser()
        return read_preference_records(path) if method == "dpo" else read_training_records(path)
    from datasets import load_dataset

    try:
        ds = load_dataset(data_path, split="train")
    except Exception as e:  # datasets raises many types for a missing/offline hub id
        raise UserError(f"{data_path}: not a file and not loadable from the hub ({e})") from None
    if method == "dpo":
        return [
            Pair(str(i), r["instruction"], r.get("input", "") or "", r["chosen"], r["rejected"])
            for i, r in enumerate(ds)
        ]
    return [
        Record(str(i), r["instruction"], r.get("input", "") or "", r["output"])
        for i, r in enumerate(ds)
    ]


def train_data_facts(data_path: str, n_records: int) -> dict[str, Any]:
    """Task, N and K of a defense mixture (from its manifest, else its upstream-style name)."""
    from crossdefense.runs import manifest_path, parse_mixture_name

    facts: dict[str, Any] = {"data_path": data_path, "n_records": n_records}
    path = Path(data_path)
    if path.is_file():
        facts["sha256"] = sha256_file(path)
    manifest = manifest_path(path)
    try:
        parsed = parse_mixture_name(path.name)
    except UserError:
        parsed = None  # any Alpaca-style file is fine; it just is not a named defense mixture
    if manifest.is_file():
        m = read_json(manifest)
        facts.update(
            task=m.get("task"),
            num_defense=m.get("num_defense"),
            num_safety=m.get("num_safety"),
            source="manifest",
        )
    elif parsed is not None:
        k, n, task = parsed
        facts.update(task=task, num_defense=n, num_safety=k, source="file name")
    else:
        facts.update(task=None, num_defense=None, num_safety=None, source=None)
    return facts


def tokenize_all(records, tokenizer, prompter, cfg: TrainConfig):
    from tqdm.auto import tqdm

    stats = TruncationStats()
    rows = []
    for r in tqdm(records, desc="tokenizing", unit="rec", disable=not is_main_process()):
        if cfg.method == "dpo":
            pair = encode_pair(tokenizer, prompter, r, cfg.cutoff_len, cfg.add_eos_token)
            stats.add(r.id, pair)
            rows.append(
                {
                    "prompt_ids": pair.prompt_ids,
                    "chosen_ids": pair.chosen_ids,
                    "rejected_ids": pair.rejected_ids,
                    # for --group_by_length (transformers reads the `length` column)
                    "length": len(pair.prompt_ids)
                    + max(len(pair.chosen_ids), len(pair.rejected_ids)),
                }
            )
            continue
        enc = encode(tokenizer, prompter, r, cfg.cutoff_len, cfg.train_on_inputs, cfg.add_eos_token)
        stats.add(r.id, enc)
        rows.append(
            {
                "input_ids": enc.input_ids,
                "attention_mask": [1] * len(enc.input_ids),
                "labels": enc.labels,
            }
        )
    return rows, stats


def split(rows: list, val_set_size: int | float, seed: int) -> tuple[list, list]:
    """Seeded shuffle, then hold out `val_set_size` records (a fraction when < 1)."""
    import random

    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_val = int(val_set_size * len(rows)) if 0 < val_set_size < 1 else int(val_set_size)
    if n_val >= len(rows):
        raise UserError(
            f"--val_set_size {val_set_size} leaves no training records ({len(rows)} total)"
        )
    return rows[n_val:], rows[:n_val]


def setup_wandb(cfg: TrainConfig) -> str:
    """Upstream's wandb flags: a project name switches reporting on."""
    report_to = cfg.report_to
    if cfg.wandb_project:
        os.environ["WANDB_PROJECT"] = cfg.wandb_project
        report_to = "wandb"
    if cfg.wandb_watch:
        os.environ["WANDB_WATCH"] = cfg.wandb_watch
    if cfg.wandb_log_model:
        os.environ["WANDB_LOG_MODEL"] = cfg.wandb_log_model
    return report_to


def response_only_loss(model, inputs: dict, num_items_in_batch=None):
    """Causal-LM loss on the labelled (response) tokens, with logits only where needed.

    Left padding right-aligns every sequence, so all labelled tokens sit in the last k
    positions: asking the model for `logits_to_keep=k` skips the vocabulary projection (and
    its B x T x V float buffer) over the document, which is most of a defense example.
    Equal to the model's own loss (mean over labelled tokens, or sum / num_items_in_batch).
    """
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    features = {k: v for k, v in inputs.items() if k != "labels"}
    length = labels.shape[1]
    labelled = labels != -100
    first = torch.where(labelled.any(dim=1), labelled.float().argmax(dim=1), length - 1)
    keep = min(length, int(length - first.min()) + 1)
    keep = max(keep, 2)
    outputs = model(**features, logits_to_keep=keep, use_cache=False)
    logits = outputs.logits[:, :-1].float()
    targets = labels[:, length - keep + 1 :].to(logits.device)
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    denom = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum()
    return loss / denom, outputs


def response_loss_trainer_class():
    from transformers import Trainer

    class ResponseLossTrainer(Trainer):
        """Trainer whose loss skips the logits of unlabelled positions (train_on_inputs=False)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = response_only_loss(model, inputs, num_items_in_batch)
            return (loss, outputs) if return_outputs else loss

    return ResponseLossTrainer


@dataclass
class TrainResult:
    output_dir: Path
    model: Any  # the trained PeftModel, for callers that go on in-process (tests, benchmarks)


def train(cfg: TrainConfig, flags: dict[str, Any] | None = None) -> TrainResult:
    """Validate, then train under a lock on the output folder (the main process holds it:
    under DDP every rank trains, rank 0 writes)."""
    from contextlib import nullcontext

    from crossdefense.io import output_lock

    validate(cfg)
    base = Path(cfg.base_model).expanduser()
    if base.is_dir():
        # the adapter records its base model: a path relative to where training ran would
        # name another folder (or none) wherever generation runs
        from dataclasses import replace

        cfg = replace(cfg, base_model=str(base.resolve()))
    records = load_records(cfg.data_path, cfg.method)  # bad data fails before anything is written
    lock = output_lock(cfg.output_dir, "training") if is_main_process() else nullcontext()
    with lock:
        return _train(cfg, records, flags)


def _train(cfg: TrainConfig, records: list, flags: dict[str, Any] | None = None) -> TrainResult:
    from transformers import set_seed

    from crossdefense import modeling
    from crossdefense.prompts import load_prompter

    data_facts = train_data_facts(cfg.data_path, len(records))
    fingerprint = resume_fingerprint(cfg, data_facts)
    if cfg.resume_from_checkpoint and is_trainer_checkpoint(cfg.resume_from_checkpoint):
        check_resumable(Path(cfg.resume_from_checkpoint), fingerprint)
    set_seed(cfg.seed)
    tokenizer = modeling.load_tokenizer(cfg.base_model, cfg.trust_remote_code)
    prompter = load_prompter(cfg.prompt_template_name, tokenizer)
    rows, stats = tokenize_all(records, tokenizer, prompter, cfg)
    train_rows, val_rows = split(rows, cfg.val_set_size, cfg.seed)
    if stats.documents_cut or stats.targets_cut:
        log.warning(
            "truncation: %d documents cut (%d tokens), %d responses cut (%d tokens)",
            stats.documents_cut,
            stats.document_tokens_cut,
            stats.targets_cut,
            stats.target_tokens_cut,
        )
    model, resume = load_lora_model(cfg)
    trainer = make_trainer(cfg, model, tokenizer, train_rows, val_rows)
    model.config.use_cache = False
    if is_main_process():  # only now: a run that fails before training leaves nothing behind
        if cfg.overwrite and not cfg.resume_from_checkpoint:
            # starting over: an earlier run's checkpoints must not be resumed into this one,
            # nor its adapter pass for this run's result if this one is interrupted
            for stale in trainer_checkpoints(cfg.output_dir):
                shutil.rmtree(stale)
            for name in FINISHED_FILES:
                (Path(cfg.output_dir) / name).unlink(missing_ok=True)
        write_json(Path(cfg.output_dir) / TRAINING_STARTED, fingerprint)
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    except (OSError, RuntimeError) as e:
        # a damaged checkpoint (a cut optimizer.pt) fails inside torch.load with a message
        # that names no file: name the checkpoint instead
        damaged = isinstance(e, OSError) and not e.filename
        damaged |= isinstance(e, RuntimeError) and "PytorchStreamReader" in str(e)
        if resume and damaged:
            raise UserError(
                f"--resume_from_checkpoint {resume}: cannot be read ({str(e).splitlines()[0]}); "
                "resume from an earlier checkpoint-* of the run, or start over with --overwrite"
            ) from None
        raise
    out = Path(cfg.output_dir)
    if is_main_process():
        save_run(
            cfg,
            model,
            prompter,
            trainer,
            result,
            flags,
            data_facts,
            stats,
            rows=(train_rows, val_rows),
        )
    return TrainResult(out, model)


def trainer_checkpoints(out: str | Path) -> list[Path]:
    """The Trainer checkpoints in a folder, in step order (checkpoint-9 before checkpoint-10)."""
    out = Path(out)
    if not out.is_dir():
        return []
    # one cut short by a kill (saved without its trainer_state.json) cannot be resumed
    found = [
        p
        for p in out.glob("checkpoint-*")
        if p.is_dir() and p.name[11:].isdigit() and is_trainer_checkpoint(p)
    ]
    return sorted(found, key=lambda p: int(p.name[11:]))


def is_trainer_checkpoint(path: str | Path) -> bool:
    """A Trainer checkpoint (weights, optimiser, step) rather than a finished adapter folder."""
    return (Path(path) / "trainer_state.json").is_file()


def resume_fingerprint(cfg: TrainConfig, data_facts: dict[str, Any]) -> dict[str, Any]:
    """What must be the same for a Trainer checkpoint to be resumed: every flag but where to
    write, how long to train and logging, and the training data's content."""
    config = {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in sorted(vars(cfg).items())
        if k not in RESUMABLE_CHANGES
    }
    # the same folder or file given another way (relative, absolute) is the same run; the
    # data counts by content (its sha256), not by where it is
    base = Path(cfg.base_model).expanduser()
    config["base_model"] = str(base.resolve()) if base.exists() else cfg.base_model
    if data_facts.get("sha256"):
        config.pop("data_path", None)
    return {"config": config, "data_sha256": data_facts.get("sha256")}


def check_resumable(checkpoint: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse to resume a Trainer checkpoint made with other settings or data (its optimiser
    state and step belong to that run; continuing it under new ones mixes two runs)."""
    started = checkpoint.parent / TRAINING_STARTED
    if not started.is_file():
        log.warning(
            "%s: no %s beside it (an older run?); cannot check that it was made with the "
            "same settings",
            checkpoint,
            TRAINING_STARTED,
        )
        return
    before = read_json(started)
    old, new = before.get("config", {}), fingerprint["config"]
    changes = [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    if before.get("data_sha256") != fingerprint["data_sha256"]:
        changes.insert(0, "the training data changed (sha256)")
    if changes:
        shown = "; ".join(changes[:3]) + (
            f"; and {len(changes) - 3} more" if len(changes) > 3 else ""
        )
        raise UserError(
            f"--resume_from_checkpoint {checkpoint}: it was made with other settings ({shown}); "
            "resume with the same ones, or start over with --overwrite and no --resume_from_checkpoint"
        )


def load_lora_model(cfg: TrainConfig) -> tuple[Any, str | None]:
    """The base model with a fresh LoRA (or an adapter-only `--resume_from_checkpoint`'s
    weights, with a fresh optimiser); returns it and the Trainer checkpoint to resume, if any."""
    from crossdefense import modeling

    model = modeling.load_base_model(
        cfg.base_model, cfg.load_8bit, cfg.load_4bit, cfg.trust_remote_code
    )
    model = modeling.attach_lora(
        model,
        cfg.lora_r,
        cfg.lora_alpha,
        cfg.lora_dropout,
        list(cfg.lora_target_modules),
        quantized=cfg.load_8bit or cfg.load_4bit,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    resume = cfg.resume_from_checkpoint
    if resume and not is_trainer_checkpoint(resume):
        # An adapter-only directory: start from its weights with a fresh optimiser (under DPO
        # it is also the reference: e.g. DPO on top of an SFT adapter).
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        modeling.check_adapter_dir(resume)
        try:
            weights = load_file(str(Path(resume) / "adapter_model.safetensors"))
        except Exception as e:  # a torn copy: the reader's own error names no file
            raise UserError(
                f"--resume_from_checkpoint {resume}: cannot load the adapter ({e})"
            ) from None
        set_peft_model_state_dict(model, weights)
        resume = None
    if is_main_process():
        model.print_trainable_parameters()
    return model, resume


def training_arguments(cfg: TrainConfig, has_validation: bool, n_train: int = 0) -> Any:
    """transformers' TrainingArguments (sft) or TRL's DPOConfig (dpo) from the same flags."""
    import torch

    from crossdefense import modeling

    device, dtype = modeling.device_and_dtype()
    use_cuda = device == "cuda"
    common = dict(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.batch_size // cfg.micro_batch_size // world_size(),
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        logging_steps=cfg.logging_steps,
        optim="adamw_torch",
        bf16=use_cuda and dtype == torch.bfloat16,
        fp16=use_cuda and dtype == torch.float16,
        use_cpu=not use_cuda,
        eval_strategy="steps" if has_validation else "no",
        eval_steps=cfg.save_steps if has_validation else None,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=3,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=setup_wandb(cfg),
        run_name=cfg.wandb_run_name or None,
        ddp_find_unused_parameters=False if world_size() > 1 else None,
        remove_unused_columns=False,
        disable_tqdm=not is_main_process(),
    )
    if cfg.method == "sft":
        from transformers import TrainingArguments

        return TrainingArguments(**common)
    from trl import DPOConfig

    return DPOConfig(
        **common,
        beta=cfg.beta,
        # the DPO loss of Rafailov et al. (2023), plus the chosen response's NLL when asked
        # (RPO, Pang et al. 2024: DPO alone lowers both sides' likelihood)
        loss_type=["sigmoid", "sft"] if cfg.sft_weight else ["sigmoid"],
        loss_weights=[1.0, cfg.sft_weight] if cfg.sft_weight else None,
        max_length=None,  # pairs are already cut to --cutoff_len, document first (data.py)
        # the reference's log-probs once per pair before training instead of a forward every
        # step: cheaper when the run sees each pair at least twice
        precompute_ref_log_probs=passes(cfg, n_train) >= 2,
        dataset_num_proc=None,
    )


def passes(cfg: TrainConfig, n_train: int) -> float:
    """How many times the run sees each training example."""
    if cfg.max_steps > 0:
        return cfg.max_steps * cfg.batch_size / max(n_train, 1)
    return float(cfg.num_epochs)


def dpo_trainer_class():
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """TRL's DPOTrainer on pairs tokenised by `crossdefense.data.encode_pair`, so DPO and SFT
        share one template and one truncation rule (the document is cut, never the task)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    return PretokenizedDPOTrainer


def make_trainer(cfg: TrainConfig, model: Any, tokenizer: Any, train_rows: list, val_rows: list):
    args = training_arguments(cfg, bool(val_rows), len(train_rows))
    if cfg.method == "dpo":
        from datasets import Dataset

        return dpo_trainer_class()(
            model=model,
            ref_model=None,  # TRL: a frozen copy of the LoRA's starting weights (adapter "ref")
            args=args,
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(val_rows) if val_rows else None,
            processing_class=tokenizer,
        )
    from transformers import DataCollatorForSeq2Seq, Trainer

    trainer_class = Trainer if cfg.train_on_inputs else response_loss_trainer_class()
    return trainer_class(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=val_rows or None,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(
            tokenizer, pad_to_multiple_of=8, return_tensors="pt", padding=True
        ),
    )


def save_run(cfg, model, prompter, trainer, result, flags, data_facts, stats, rows) -> None:
    """The adapter (only the trained one: DPO's frozen reference copy is not saved), the
    template and run_config.json; Trainer checkpoints of the finished run are removed."""
    from crossdefense import modeling
    from crossdefense.prompts import save_prompter

    out = Path(cfg.output_dir)
    device, dtype = modeling.device_and_dtype()
    model.save_pretrained(out, safe_serialization=True, selected_adapters=["default"])
    save_prompter(prompter, out)
    meta = run_metadata(flags or {})
    args = trainer.args  # what the trainer actually ran with, not a second computation
    write_json(
        out / RUN_CONFIG,
        {
            **meta,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
            "method": method_facts(cfg),
            "train_data": data_facts,
            "split": {"train": len(rows[0]), "validation": len(rows[1])},
            "truncation": stats.to_dict(),
            "effective_batch_size": args.per_device_train_batch_size
            * args.gradient_accumulation_steps
            * world_size(),
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "world_size": world_size(),
            "device": device,
            "dtype": str(dtype).removeprefix("torch."),
            "train_metrics": result.metrics,
            "log_history": trainer.state.log_history,
        },
    )
    for stale in out.glob("checkpoint-*"):
        shutil.rmtree(stale)
    (out / TRAINING_STARTED).unlink(missing_ok=True)


def method_facts(cfg: TrainConfig) -> dict[str, Any]:
    """What the training objective was, for run_config.json and the scores downstream."""
    if cfg.method == "sft":
        return {"name": "sft", "loss": "cross-entropy on the response tokens"}
    import trl

    return {
        "name": "dpo",
        "loss": "sigmoid (DPO)" + (f" + {cfg.sft_weight} x NLL(chosen)" if cfg.sft_weight else ""),
        "beta": cfg.beta,
        "sft_weight": cfg.sft_weight,
        # DPO that starts from an adapter (e.g. an SFT one) has that adapter as its reference
        "init": cfg.resume_from_checkpoint,
        "reference": "the LoRA's starting weights, frozen (the base model for a fresh LoRA)",
        "trl": trl.__version__,
    }
