"""The embedded demo (`make demo`): a miniature cross-task defense experiment on
SmolLM2-135M-Instruct, offline on CPU; prints the results table at the end."""

from __future__ import annotations

import logging
import sys

from crossdefense import UserError
from crossdefense.cli import as_ints, as_list, run
from crossdefense.demo import DemoConfig, run_demo


def main(
    numbers: int | str | tuple | None = DemoConfig.numbers,
    task: str | None = DemoConfig.task,
    eval_dir: str | None = DemoConfig.eval_dir,
    eval_tasks: str | tuple = DemoConfig.eval_tasks,
    eval_limit: int | None = DemoConfig.eval_limit,
    eval_offset: int | None = DemoConfig.eval_offset,
    max_steps: int | None = DemoConfig.max_steps,
    learning_rate: float | None = DemoConfig.learning_rate,
    max_new_tokens: int | None = DemoConfig.max_new_tokens,
    contrast: bool = DemoConfig.contrast,
    seeds: int | str | tuple | None = DemoConfig.seeds,
    method: str | tuple = DemoConfig.methods,
    dpo_learning_rate: float = DemoConfig.dpo_learning_rate,
    beta: float = DemoConfig.beta,
    sft_weight: float = DemoConfig.sft_weight,
    dpo_init: str = DemoConfig.dpo_init,
    dpo_steps: int = DemoConfig.dpo_steps,
    judge: str | tuple | None = DemoConfig.judges,
    xstest: int | None = DemoConfig.xstest_per_type,
    capability_limit: int | None = DemoConfig.capability_limit,
    xstest_path: str | None = DemoConfig.xstest_path,
    output_dir: str | None = DemoConfig.output_dir,
) -> None:
    """Base model vs summarize-defense LoRA(s) on the mini eval sets of all five tasks.

    The demo is the sweep preset configs/sweeps/demo.toml, run by the sweep pipeline; a flag
    left out keeps the preset's value (given in brackets).

    Args:
        numbers: defense sizes N to train, e.g. 20,40 (each one LoRA run)  [40].
        task: the defended task (summarize, translate, sentiment, case, cloze or mix)
            [summarize].
        eval_dir: folder with test_{task}{,_cnn,_useful}.json files, e.g. data/upstream/evaluation
            [data/mini/evaluation].
        eval_tasks: tasks to evaluate (comma-separated)  [all five].
        eval_limit: documents per eval file  [12].
        eval_offset: first document of each eval file (e.g. --eval_offset 50 --eval_limit 50
            for upstream documents 50-99); adapters are reused, only generation reruns  [0].
        max_steps: LoRA optimiser steps per run (batch 8)  [32].
        learning_rate: LoRA learning rate  [2e-3].
        max_new_tokens: new tokens per answer (greedy)  [32].
        contrast: also train on the 40 topic-matched contrast documents (benign texts on the
            harmful documents' topics, data/README.md); off by default (see README: on this
            model they lowered refusal without lowering over-refusal).
        seeds: training seeds, e.g. 1,2,3: one adapter per seed and N (run names end
            _seed<k>), the first also seeds the data; the report shows per-seed rows,
            mean ± sd and a pooled Wilson interval  [42, the trainer's default: one run].
        method: sft (the paper), dpo (preference pairs, on-policy: README, Defense methods) or
            sft,dpo (both, on the same documents and step budget).
        dpo_learning_rate: LoRA learning rate of the DPO runs.
        beta: DPO's beta.
        sft_weight: DPO runs: weight of the chosen response's NLL added to the DPO loss.
        dpo_init: base (DPO from a fresh LoRA, reference = the base model) or sft (DPO from
            each SFT adapter, which is also its reference; the rejected answers are the base
            model's own, as for base).
        dpo_steps: optimiser steps of the DPO runs (0 = --max_steps).
        judge: refusal judges (comma-separated, the first gives the headline rate)
            [keyword,learned].
        xstest: XSTest prompts per type (18 types, safe and unsafe; 0 = none)  [2]. Without
            data/xstest (scripts/download_data.sh) the demo skips XSTest with a warning.
        xstest_path: XSTest's xstest_prompts.csv  [data/xstest/xstest_prompts.csv].
        capability_limit: questions of the offline capability task (lm-evaluation-harness,
            data/mini/capability_mc.jsonl) scored for the base model and each adapter; 0 = none
            [40].
        output_dir: report folder  [evaluation/demo].
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = DemoConfig(
            numbers=None if numbers is None else tuple(as_ints(numbers, "numbers", unique=False)),
            task=task,
            eval_dir=eval_dir,
            eval_tasks=tuple(as_list(eval_tasks)),
            eval_limit=eval_limit,
            eval_offset=eval_offset,
            max_steps=max_steps,
            learning_rate=learning_rate,
            max_new_tokens=max_new_tokens,
            contrast=contrast,
            seeds=None if seeds is None else tuple(as_ints(seeds, "seeds", unique=False)),
            methods=tuple(as_list(method)),
            dpo_learning_rate=dpo_learning_rate,
            beta=beta,
            sft_weight=sft_weight,
            dpo_init=dpo_init,
            dpo_steps=dpo_steps,
            judges=None if judge is None else tuple(as_list(judge)),
            xstest_per_type=xstest,
            xstest_path=xstest_path,
            capability_limit=capability_limit,
            output_dir=output_dir,
        )
        out = run_demo(cfg)
    except (UserError, ValueError) as e:
        sys.exit(f"error: {e}")
    print((out / "results.txt").read_text(encoding="utf-8"))
    print(f"report: {out / 'report.md'}; plots: {out}/*.png")


if __name__ == "__main__":
    run(main)
