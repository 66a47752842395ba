"""Device and precision choice, base-model loading (optionally 8/4-bit), LoRA attach/load."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from crossdefense import UserError

log = logging.getLogger(__name__)
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def device_and_dtype() -> tuple[str, Any]:
    """bf16 (or fp16) on CUDA, fp32 on CPU: this CPU has no fast bf16 and fp16 is not faster."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", torch.float32


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.path.exists(name)


def check_base_model(name: str) -> None:
    """Fail early, before slow imports, on a local model directory that does not exist."""
    if not name:
        raise UserError("--base_model is required (a local directory or a hub id)")
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise UserError(f"{name}: base model directory not found")
        if not (path / "config.json").is_file():
            raise UserError(f"{name}: not a model directory (no config.json)")


def check_adapter_dir(path: str) -> None:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UserError(f"{path}: LoRA adapter directory not found")
    if not (p / "adapter_config.json").is_file() or not any(
        (p / f).is_file() for f in ADAPTER_FILES
    ):
        raise UserError(
            f"{path}: no adapter files (adapter_config.json + adapter_model.safetensors)"
        )
    from crossdefense.runs import TRAINING_STARTED

    if (p / TRAINING_STARTED).is_file():
        raise UserError(
            f"{path}: a training run started here and has not finished ({TRAINING_STARTED}); "
            "the adapter files in it are not its result. Finish or resume that run first"
        )


def model_files_signature(name: str) -> list[list] | None:
    """(name, size, mtime) of every file of a local model folder (weights, config, tokenizer,
    chat template: anything there can change an answer); None for a hub id (its revision is
    fixed by the hub cache)."""
    folder = Path(name).expanduser()
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def adapter_sha256(path: str) -> str:
    """One hash of an adapter's weights and its adapter_config.json (rank, alpha and target
    modules change the answers as much as the weights do)."""
    import hashlib

    from crossdefense.io import sha256_file

    p = Path(path).expanduser()
    weights = next(p / f for f in ADAPTER_FILES if (p / f).is_file())
    parts = [sha256_file(weights)]
    if (p / "adapter_config.json").is_file():
        parts.append(sha256_file(p / "adapter_config.json"))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def check_quantization(load_8bit: bool, load_4bit: bool) -> None:
    if load_8bit and load_4bit:
        raise UserError("--load_8bit and --load_4bit are exclusive; pick one")


def load_tokenizer(base_model: str, trust_remote_code: bool = False):
    """Tokenizer with a pad token and left padding (decoder-only batched generation)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as e:  # missing files, or files of no known kind
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{base_model}: cannot load tokenizer ({first})") from None
    if tok.pad_token_id is None:
        # Llama-1/2 have none; upstream used id 0 (<unk>). unk keeps EOS distinguishable.
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    tok.padding_side = "left"
    return tok


def quantization_config(load_8bit: bool, load_4bit: bool, dtype: Any):
    if not (load_8bit or load_4bit):
        return None
    from transformers import BitsAndBytesConfig

    if load_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def load_base_model(
    base_model: str,
    load_8bit: bool = False,
    load_4bit: bool = False,
    trust_remote_code: bool = False,
    device_map: Any = None,
):
    """A causal LM on the best device; `device_map` defaults to this process's device."""
    from transformers import AutoModelForCausalLM

    device, dtype = device_and_dtype()
    if device_map is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device_map = {"": local_rank} if device == "cuda" else {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base_model,
            dtype=dtype,
            quantization_config=quantization_config(load_8bit, load_4bit, dtype),
            device_map=device_map,
            trust_remote_code=trust_remote_code,
        )
    except Exception as e:
        if not _unreadable(e):
            raise
        raise UserError(f"{base_model}: cannot load model ({_first_line(e)})") from None
    return model


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _unreadable(e: BaseException) -> bool:
    """A model or adapter file that is missing or cut short (a torn copy or download): what
    the safetensors reader and torch say then, as opposed to a bug."""
    from safetensors import SafetensorError

    return isinstance(e, OSError | SafetensorError) or (
        isinstance(e, RuntimeError | ValueError)
        and any(w in str(e) for w in ("deserializ", "incomplete", "PytorchStreamReader"))
    )


def attach_lora(
    model,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: list[str],
    quantized: bool,
    gradient_checkpointing: bool = False,
):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in target_modules if t not in names]
    if missing:
        raise UserError(f"--lora_target_modules: no module named {', '.join(missing)} in the model")
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def adapter_base_model(lora_weights: str) -> str | None:
    """The base model an adapter was trained on (`base_model_name_or_path` of its config)."""
    import json

    try:
        config = json.loads((Path(lora_weights) / "adapter_config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    name = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return name or None


def load_adapter(model, lora_weights: str):
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, lora_weights, is_trainable=False)
    except Exception as e:
        if _unreadable(e):
            raise UserError(f"{lora_weights}: cannot load the adapter ({_first_line(e)})") from None
        if not isinstance(e, RuntimeError) or "size mismatch" not in str(e):
            raise
        trained_on = adapter_base_model(lora_weights) or "another model"
        raise UserError(
            f"{lora_weights}: the adapter was trained on {trained_on} and does not fit this base "
            "model (its weight shapes differ); pass that model as --base_model"
        ) from None
