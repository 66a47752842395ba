"""Judge and measure generation outputs: writes scores.jsonl and summary.json."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import fire

from crossdefense import UserError
from crossdefense.cli import reject_unknown_flags
from crossdefense.paths import EVALUATION_DIR


def main(
    input_path: str | tuple[str, ...],
    output_dir: str = str(EVALUATION_DIR / "scores"),
    judge: str | tuple[str, ...] = "keyword",
    references_path: str | None = None,
    harm_model: str | None = None,
    device: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    overwrite: bool = False,
) -> None:
    """Score every response of one or more generation runs.

    Args:
        input_path: a generation file `<run>/<eval_stem>.json`, a run directory, an output root
            holding run directories, or a glob (several: comma-separated).
        output_dir: where scores.jsonl and summary.json go.
        judge: one or more of keyword (default: keyword phrases with document-echo guard),
            keyword_prefix, keyword_substring, embedding, harmfulness, moderation. The first
            judge gives `refusal_label` and the headline refusal rate; comma-separate several.
        references_path: optional JSON/JSONL of `{id, reference[, eval_stem]}` rows adding
            references to files that lack them (ROUGE/BLEU/case accuracy need them).
        harm_model: path or hub id for the harmfulness judge
            (default safepaca/absolute-harmfulness-predictor-redteam-osst).
        device: device for model judges (default: cuda if available, else cpu).
        n_boot: bootstrap resamples for the 95% refusal-rate interval.
        seed: bootstrap seed.
        overwrite: replace existing scores.jsonl / summary.json.
    """
    flags = dict(locals())
    from crossdefense.scoring import score_paths

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        results = score_paths(
            input_path,
            output_dir,
            judge,
            references_path=references_path,
            harm_model=harm_model,
            device=device,
            n_boot=n_boot,
            seed=seed,
            overwrite=overwrite,
            flags=flags,
        )
    except UserError as e:
        sys.exit(f"error: {e}")
    for r in results:
        print(
            f"{r['run']}/{r['eval_stem']}: n={r['n']} refusal={r['refusal_rate']:.1%} "
            f"partial={r['partial_rate']:.1%} utility={r['utility_metric']}={r['utility']}"
        )
    print(f"wrote {Path(output_dir) / 'scores.jsonl'} and {Path(output_dir) / 'summary.json'}")


if __name__ == "__main__":
    reject_unknown_flags(main)
    fire.Fire(main)
