"""Build defense mixtures: an Alpaca sample + K safety examples + N refusals of harmful documents.

    python scripts/build_defense_data.py --task=summarize --num_defense=100 \
        --documents_path=harmful.jsonl --refusals_path=refusals.json \
        --eval_dir=data/upstream/evaluation

writes data/training/summarize/saferpaca_Instructions_100_100_summarize.json and its
.manifest.json (sources with sha256, sampled indices, counts, leakage check, provenance).

Preference pairs for --method dpo, on-policy (the rejected side is the model's own answer):
    ... --format prompts          # -> ..._summarize.prompts.json (the refusal prompts)
    python generation/generate_answers.py --input_path <that file> --base_model <model> ...
    ... --format dpo --rejected_path <its output .json>   # -> ..._summarize.dpo.json
"""

from __future__ import annotations

import logging
import sys

from crossdefense import UserError
from crossdefense.cli import run
from crossdefense.mixture import DEFAULT_ALPACA, DEFAULT_SAFETY_PATH, build_defense_data


def main(
    task: str,
    num_defense: int | None = None,
    grid: int | str | tuple | list | None = None,
    alpaca_path: str = DEFAULT_ALPACA,
    alpaca_size: int = 20000,
    safety_path: str = str(DEFAULT_SAFETY_PATH),
    num_safety: int = 100,
    documents_path: str | None = None,
    refusals_path: str | None = None,
    seed: int = 42,
    output_dir: str | None = None,
    eval_dir: str | None = None,
    allow_leakage: bool = False,
    overwrite: bool = False,
    format: str = "sft",
    rejected_path: str | None = None,
    benign_documents_path: str | None = None,
    num_benign_documents: int | None = None,
) -> None:
    """Build one mixture per N; nothing is written unless every input validates.

    Args:
        task: summarize, translate, sentiment, case, cloze, or mix (N per task, 5N in all).
        num_defense: N, defense examples (per task for mix); 0 = the no-defense baseline.
        grid: several Ns at once (e.g. 10,100,500); a smaller N's defense set is a subset of a
            larger N's, and the Alpaca and safety samples are the same.
        alpaca_path: Alpaca JSON/JSONL file, or a hub dataset id (needs the network).
        alpaca_size: Alpaca records to sample; all of them (with a warning) if the base has fewer.
        safety_path: safety pool (Alpaca records), from scripts/download_data.sh.
        num_safety: K, safety examples to sample.
        documents_path: harmful documents: JSON/JSONL of strings or {"id", "text"|"document"}.
        refusals_path: JSON list of refusal strings (sampled per example), or JSON/JSONL of
            {"id"|"document", "refusal"|"output"} matched to the documents.
        seed: seed of every sample and of the final shuffle.
        output_dir: where to write (default data/training/<task>/).
        eval_dir: folder of upstream-style evaluation *.json to check for document leakage.
        allow_leakage: keep documents that match evaluation documents; record them in the manifest.
        overwrite: replace existing mixtures.
        format: sft ({instruction, input, output}: the paper), dpo (pairs {instruction, input,
            chosen, rejected} from the same sample: refusal targets get chosen = the refusal,
            rejected = the model's answer; benign records chosen = the answer, rejected = a
            refusal), or prompts (the refusal prompts to answer for --rejected_path).
        rejected_path: for --format dpo: generate_answers.py's output on the prompts file.
        benign_documents_path: benign documents with an answer per task (JSONL with text,
            summary, translation_zh, sentiment_answer, next_sentence; e.g.
            data/mini/documents/benign_train.jsonl): each is added under the defended task and
            two others, and the benign part is then all of them plus the first --alpaca_size
            Alpaca rows, unsampled (the embedded demo's mixture).
        num_benign_documents: use only the first N benign documents (default: all).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        paths = build_defense_data(
            task=task,
            num_defense=num_defense,
            grid=grid,
            alpaca_path=alpaca_path,
            alpaca_size=alpaca_size,
            safety_path=safety_path,
            num_safety=num_safety,
            documents_path=documents_path,
            refusals_path=refusals_path,
            seed=seed,
            output_dir=output_dir,
            eval_dir=eval_dir,
            allow_leakage=allow_leakage,
            overwrite=overwrite,
            format=format,
            rejected_path=rejected_path,
            benign_documents_path=benign_documents_path,
            num_benign_documents=num_benign_documents,
        )
    except UserError as e:
        sys.exit(f"error: {e}")
    for path in paths:
        print(path)


if __name__ == "__main__":
    run(main)
