"""Benchmarks (scripts print the figures): upstream-style generation and training setups
against crossdefense's, on the same model, prompts and steps."""

from __future__ import annotations

import os
import platform
import resource
import time
from typing import Any

from crossdefense.data import Record
from crossdefense.generation import DecodingConfig, generate_records
from crossdefense.prompts import Prompter


def machine_info() -> dict[str, Any]:
    import torch

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Measured fp32 matmul rate of this machine: the denominator of model-FLOP utilisation."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, device=device)
    a @ a  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    if device == "cuda":
        torch.cuda.synchronize()
    return repeats * 2 * n**3 / (time.perf_counter() - start) / 1e9


def upstream_style_generate(
    model, tokenizer, prompter: Prompter, records: list[Record], cfg: DecodingConfig
) -> tuple[list[str], int, int]:
    """Upstream's loop: one prompt at a time, full sequence decoded, split on the marker."""
    import torch

    outs, prompt_tokens, new_tokens = [], 0, 0
    device = next(model.parameters()).device
    for r in records:
        prompt = prompter.build(r.instruction, r.input)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=not prompter.is_chat)
        with torch.inference_mode():
            seq = model.generate(
                **{k: v.to(device) for k, v in ids.items()},
                pad_token_id=tokenizer.pad_token_id,
                **cfg.generate_kwargs(),
            )[0]
        n_prompt = ids["input_ids"].shape[1]
        prompt_tokens += n_prompt
        new_tokens += len(seq) - n_prompt
        text = tokenizer.decode(seq, skip_special_tokens=True)
        split = prompter.template.get("response_split") or "assistant\n"
        outs.append(text.split(split)[-1].strip())
    return outs, prompt_tokens, new_tokens


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def batched_generate(model, tokenizer, prompter, records, cfg, batch_size, share_prefix=True):
    rows = generate_records(
        model,
        tokenizer,
        prompter,
        records,
        cfg,
        batch_size,
        progress=False,
        share_prefix=share_prefix,
    )
    prompt_tokens = sum(r["prompt_tokens"] for r in rows)
    return rows, prompt_tokens, sum(r["new_tokens"] for r in rows)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def demo_mixture(out_dir) -> Any:
    """The demo's summarize N=40 mixture, built from data/mini by the sweep's build step of
    the demo preset (configs/sweeps/demo.toml), into `out_dir`."""
    from crossdefense.demo import preset, run_checked
    from crossdefense.sweep.decide import build_command, mixture_path

    cfg = preset({"DATA_DIR": str(out_dir)})
    [task], [n] = cfg.tasks, cfg.numbers
    run_checked(build_command(cfg, task, [n]), "the demo's mixture")
    return mixture_path(cfg, task, n)
