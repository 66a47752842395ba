"""Training benchmark: the upstream-style setup (loss on the whole sequence with full logits,
random batches padded to the longest) vs crossdefense's (response-only logits, length-grouped
batches), on the same data for one epoch; prints tokens/s and peak RSS of each.

Each setup runs in its own process so that its peak memory is its own.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import tempfile
from pathlib import Path

from crossdefense.cli import run
from crossdefense.paths import EMBEDDED_MODEL_DIR

SETUPS = {
    "upstream-style": {"train_on_inputs": True, "group_by_length": False},
    "crossdefense": {"train_on_inputs": False, "group_by_length": True},
}


def _run(
    setup: str,
    base_model: str,
    data_path: str,
    out: str,
    micro_batch_size: int,
    template: str,
    queue,
) -> None:
    import time

    from crossdefense.bench import peak_rss_mib
    from crossdefense.data import encode, read_training_records
    from crossdefense.modeling import load_tokenizer
    from crossdefense.prompts import load_prompter
    from crossdefense.training import TrainConfig, train

    cfg = TrainConfig(
        base_model=base_model,
        data_path=data_path,
        output_dir=out,
        batch_size=micro_batch_size,
        micro_batch_size=micro_batch_size,
        num_epochs=1,
        val_set_size=0,
        cutoff_len=512,
        prompt_template_name=template,
        save_steps=100_000,
        logging_steps=1000,
        **SETUPS[setup],
    )
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    rc = json.loads((Path(out) / "run_config.json").read_text())
    runtime = rc["train_metrics"]["train_runtime"]
    tok = load_tokenizer(base_model)
    prompter = load_prompter(template, tok)
    tokens = sum(
        len(encode(tok, prompter, r, 512).input_ids) for r in read_training_records(data_path)
    )
    queue.put(
        {
            "setup": setup,
            "train_seconds": round(runtime, 1),
            "total_seconds": round(seconds, 1),
            "tokens": tokens,
            "tokens_per_s": round(tokens / runtime, 1),
            "peak_rss_mib": round(peak_rss_mib()),
        }
    )


def main(
    base_model: str = str(EMBEDDED_MODEL_DIR),
    data_path: str | None = None,
    micro_batch_size: int = 8,
    prompt_template_name: str = "chat",
    max_records: int = 96,
) -> None:
    """Print tokens/s (real, non-pad tokens over one epoch) and peak RSS per setup.

    Args:
        base_model: model directory (default: the embedded SmolLM2-135M-Instruct).
        data_path: training mixture; default: the demo's summarize N=40 mixture built from
            data/mini in a temporary folder.
        micro_batch_size: examples per step (no accumulation).
        prompt_template_name: template name or path.
        max_records: use the first this many records of the (shuffled) mixture.
    """
    from crossdefense import bench
    from crossdefense.io import read_json, write_json

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        if data_path is None:
            data_path = str(bench.demo_mixture(Path(tmp) / "data"))
        records = read_json(data_path)[:max_records]
        data_path = str(Path(tmp) / "bench_records.json")
        write_json(data_path, records)
        print(
            json.dumps(
                {
                    **bench.machine_info(),
                    "model": base_model,
                    "data": data_path,
                    "micro_batch_size": micro_batch_size,
                },
                indent=1,
            )
        )
        ctx = mp.get_context("spawn")
        rows = []
        for setup in SETUPS:
            queue = ctx.Queue()
            proc = ctx.Process(
                target=_run,
                args=(
                    setup,
                    base_model,
                    data_path,
                    str(Path(tmp) / setup),
                    micro_batch_size,
                    prompt_template_name,
                    queue,
                ),
            )
            proc.start()
            rows.append(queue.get())
            proc.join()
    print(f"\n{'setup':<16}{'train s':>9}{'tokens':>9}{'tokens/s':>10}{'peak RSS MiB':>14}")
    for r in rows:
        print(
            f"{r['setup']:<16}{r['train_seconds']:>9}{r['tokens']:>9}{r['tokens_per_s']:>10}"
            f"{r['peak_rss_mib']:>14}"
        )
    print(
        f"speed-up: {rows[1]['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}x, "
        f"peak RSS ratio: {rows[1]['peak_rss_mib'] / rows[0]['peak_rss_mib']:.2f}"
    )


if __name__ == "__main__":
    run(main)
