"""Generation benchmark: upstream's one-prompt-at-a-time loop vs crossdefense's batched,
length-sorted generation (without and with shared-prefix KV caches), on the same model,
prompts and decoding; prints the figures."""

from __future__ import annotations

import json
import logging

from crossdefense import bench, modeling
from crossdefense.cli import as_ints, run
from crossdefense.data import read_eval_records
from crossdefense.generation import DecodingConfig, expand_inputs
from crossdefense.paths import EMBEDDED_MODEL_DIR, MINI_DATA_DIR
from crossdefense.prompts import load_prompter


def main(
    base_model: str = str(EMBEDDED_MODEL_DIR),
    input_path: str = str(MINI_DATA_DIR / "evaluation" / "test_*_useful.json"),
    prompt_template_path: str = "chat",
    num_prompts: int = 32,
    order: str = "round_robin",
    max_new_tokens: int = 64,
    beams: int | str | tuple[int, ...] = (1, 4),
    batch_size: int = 32,
    output_json: str | None = None,
) -> None:
    """Print prompts/s, new tokens/s, speed-up and model-FLOP utilisation for each setup.

    Args:
        base_model: model directory (default: the embedded SmolLM2-135M-Instruct).
        input_path: eval file(s) whose prompts are used (file, dir, glob or comma list).
        prompt_template_path: template name or path.
        num_prompts: how many prompts.
        order: "round_robin" takes the files' records in turn (record 1 of every file, then
            record 2, ...): the five task files hold the same documents, so this is what a
            real evaluation run looks like, each document under every task. "in_order" takes
            whole files one after another (mostly distinct documents: no cross-task sharing).
        max_new_tokens: new tokens per answer (both setups).
        beams: beam widths to compare (1 = greedy).
        batch_size: crossdefense batch size.
        output_json: also write the figures here.
    """
    logging.basicConfig(level=logging.WARNING)
    if order not in ("round_robin", "in_order"):
        raise SystemExit(f"error: --order must be round_robin or in_order, not {order!r}")
    files = [read_eval_records(p) for p in expand_inputs(input_path)]
    if order == "in_order":
        records = [r for f in files for r in f]
    else:
        records = [f[k] for k in range(max(map(len, files))) for f in files if k < len(f)]
    records = records[:num_prompts]
    tok = modeling.load_tokenizer(base_model)
    model = modeling.load_base_model(base_model).eval()
    prompter = load_prompter(prompt_template_path, tok)
    n_params = sum(p.numel() for p in model.parameters())
    peak = bench.matmul_gflops()
    info = {
        **bench.machine_info(),
        "model": base_model,
        "params": n_params,
        "matmul_gflops": round(peak, 1),
        "prompts": len(records),
        "order": order,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
    }
    print(json.dumps(info, indent=1))
    results = []
    for beams_ in as_ints(beams, "beams"):
        cfg = DecodingConfig(max_new_tokens=max_new_tokens, num_beams=beams_)
        bench.batched_generate(model, tok, prompter, records[:2], cfg, 2)  # warm-up
        (_, p_up, n_up), t_up = bench.timed(
            bench.upstream_style_generate, model, tok, prompter, records, cfg
        )
        setups = [("upstream loop", t_up, p_up, n_up)]
        for name, share in (("batched", False), ("batched+prefix", True)):
            (_, p, n), t = bench.timed(
                bench.batched_generate, model, tok, prompter, records, cfg, batch_size, share
            )
            setups.append((name, t, p, n))
        for name, t, p, n in setups:
            mfu = 2 * n_params * (p + n) / t / 1e9 / peak
            row = {
                "setup": name,
                "num_beams": beams_,
                "seconds": round(t, 2),
                "prompts_per_s": round(len(records) / t, 3),
                "new_tokens_per_s": round(n / t, 2),
                "mfu": round(mfu, 3),
            }
            if name != "upstream loop":
                row["speedup"] = round(t_up / t, 2)
            results.append(row)
    print(
        f"\n{'setup':<16}{'beams':>6}{'s':>9}{'prompts/s':>11}{'new tok/s':>11}{'MFU':>7}{'speed-up':>10}"
    )
    for r in results:
        print(
            f"{r['setup']:<16}{r['num_beams']:>6}{r['seconds']:>9}{r['prompts_per_s']:>11}"
            f"{r['new_tokens_per_s']:>11}{r['mfu']:>7.0%}{r.get('speedup', ''):>10}"
        )
    if output_json:
        from crossdefense.io import write_json

        write_json(output_json, {"machine": info, "results": results})


if __name__ == "__main__":
    run(main)
