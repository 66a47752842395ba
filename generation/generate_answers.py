"""Generate answers for evaluation files with a base model and an optional LoRA adapter.

Upstream-compatible flags; unlike upstream, every decoding flag reaches `generate`, the `input`
field is used, prompts are batched, and only new tokens are decoded.
"""

from __future__ import annotations

import logging
import sys

from crossdefense import UserError
from crossdefense.cli import run
from crossdefense.generation import DecodingConfig

UPSTREAM_BASE_MODEL = "yahma/llama-7b-hf"  # upstream's default when no adapter is given


def main(
    input_path: str | tuple[str, ...],
    output_path: str = "evaluation/generations",
    base_model: str | None = None,
    lora_weights: str | None = None,
    prompt_template_path: str | None = None,
    run_name: str | None = None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    max_new_tokens: int = DecodingConfig.max_new_tokens,
    num_beams: int = DecodingConfig.num_beams,
    do_sample: bool = DecodingConfig.do_sample,
    temperature: float = DecodingConfig.temperature,
    top_p: float = DecodingConfig.top_p,
    top_k: int = DecodingConfig.top_k,
    seed: int = DecodingConfig.seed,
    batch_size: int = 8,
    share_prefix: bool = True,
    max_input_tokens: int = DecodingConfig.max_input_tokens,
    num_shards: int = 1,
    shard_index: int = 0,
    trust_remote_code: bool = False,
    skip_existing: bool = False,
    overwrite: bool = False,
) -> None:
    """Write <output_path>/<run_name>/<eval file stem>.json (+ a resumable .jsonl).

    Args:
        input_path: eval file(s): upstream `{"instructions", "inputs"}` JSON, Alpaca-style
            records, or XSTest's xstest_prompts.csv; a directory (all *.json and *.csv), a
            glob, or a comma-separated list. A file may declare its `doc_kind` (README).
        output_path: folder that receives one sub-folder per run.
        base_model: local model directory or hub id (default: the base model the adapter
            names in its adapter_config.json; without --lora_weights, upstream's
            yahma/llama-7b-hf).
        lora_weights: LoRA adapter directory; omit to evaluate the base model alone.
        prompt_template_path: template name (alpaca, llama2, llama2_upstream, chat) or JSON
            path; default: the template stored with the adapter, else alpaca.
        run_name: sub-folder name; default: the adapter's folder name, else the model's.
        load_8bit: load the base model in 8-bit (bitsandbytes).
        load_4bit: load the base model in 4-bit NF4 (bitsandbytes).
        max_new_tokens: new tokens per answer.
        num_beams: beam-search width (upstream default 4; 1 = greedy).
        do_sample: sample instead of greedy/beam search; only then temperature/top_p/top_k apply.
        temperature: sampling temperature (with --do_sample).
        top_p: nucleus sampling mass (with --do_sample).
        top_k: top-k sampling cut (with --do_sample).
        seed: random seed for sampling.
        batch_size: prompts per generate call (length-sorted, left-padded).
        share_prefix: compute a prefix shared by several prompts once (the template header; a
            document under several task instructions) and reuse its KV cache; --noshare_prefix
            turns it off (one plain left-padded batch per call).
        max_input_tokens: prompt token limit; longer prompts lose the end of their document,
            never the task instruction.
        num_shards: split each eval file into this many shards (one per GPU) ...
        shard_index: ... and generate this one; merge with scripts/merge_shards.py.
        trust_remote_code: allow model code from the hub (off by default).
        skip_existing: leave outputs made with the same settings (and adapter bytes) alone;
            outputs made otherwise still need --overwrite.
        overwrite: replace existing outputs instead of refusing.
    """
    flags = dict(locals())
    from crossdefense.generation import expand_inputs, run_generation
    from crossdefense.runs import short_model_name

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = DecodingConfig(
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_input_tokens=max_input_tokens,
            seed=seed,
        )
        if not do_sample:
            from crossdefense.cli import raw_flag_text

            ignored = [f"--{f}" for f in ("temperature", "top_p", "top_k") if raw_flag_text(f)]
            if ignored:
                logging.getLogger(__name__).warning(
                    "%s only apply with --do_sample; decoding is greedy/beam search",
                    ", ".join(ignored),
                )
        paths = expand_inputs(input_path)
        if base_model is None:
            from crossdefense.modeling import adapter_base_model

            base_model = (adapter_base_model(lora_weights) if lora_weights else None) or (
                UPSTREAM_BASE_MODEL
            )
        name = run_name or short_model_name(lora_weights or base_model)
        written = run_generation(
            base_model=base_model,
            lora_weights=lora_weights,
            input_paths=paths,
            output_path=output_path,
            run_name=name,
            prompt_template=prompt_template_path,
            cfg=cfg,
            batch_size=batch_size,
            share_prefix=share_prefix,
            load_8bit=load_8bit,
            load_4bit=load_4bit,
            trust_remote_code=trust_remote_code,
            overwrite=overwrite,
            num_shards=num_shards,
            shard_index=shard_index,
            skip_existing=skip_existing,
            flags=flags,
        )
    except UserError as e:
        sys.exit(f"error: {e}")
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    run(main)
