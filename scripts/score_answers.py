"""Judge and measure generation outputs: writes scores.jsonl and summary.json."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from crossdefense import UserError
from crossdefense.cli import run
from crossdefense.io import read_jsonl
from crossdefense.paths import EVALUATION_DIR


def main(
    input_path: str | tuple[str, ...],
    output_dir: str = str(EVALUATION_DIR / "scores"),
    judge: str | tuple[str, ...] = "learned",
    references_path: str | None = None,
    judge_model: str | tuple[str, ...] | None = None,
    harm_model: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
    report_to: str = "none",
    tracker_dir: str | None = None,
    tracker_run_name: str | None = None,
) -> None:
    """Score every response of one or more generation runs.

    Args:
        input_path: a generation file `<run>/<eval_stem>.json`, a run directory, an output root
            holding run directories, or a glob (several: comma-separated).
        output_dir: where scores.jsonl and summary.json go.
        judge: one or more (comma-separated) of learned (default: offline classifier,
            refusal/comply/partial), keyword (phrases with document-echo guard), keyword_prefix,
            keyword_substring, embedding, wildguard, llamaguard, harmbench, llm, harmfulness,
            moderation. The first judge gives `refusal_label` and the headline refusal rate;
            with several, summary.json has each one's rates and their agreement (kappa).
        references_path: optional JSON/JSONL of `{id, reference[, eval_stem]}` rows adding
            references to files that lack them (ROUGE/chrF/case/sentiment accuracy need them).
        judge_model: `judge=model` entries (comma-separated), a hub id or a local folder per
            model judge, e.g. wildguard=allenai/wildguard,llm=/models/qwen2.5-7b-instruct
            (defaults: allenai/wildguard, meta-llama/Llama-Guard-3-1B,
            cais/HarmBench-Llama-2-13b-cls; llm has none).
        harm_model: path or hub id for the harmfulness judge (same as
            --judge_model harmfulness=...; default
            safepaca/absolute-harmfulness-predictor-redteam-osst).
        device: device for model judges (default: cuda if available, else cpu).
        batch_size: batch size for model judges (default: each judge's own).
        overwrite: replace existing scores.jsonl / summary.json.
        report_to: also log the scores to experiment trackers: none (default), wandb,
            tensorboard, or both comma-separated (pip install -r requirements-extras.txt;
            WANDB_MODE=offline logs without an account).
        tracker_dir: tensorboard event folder (default: <output_dir>/tensorboard).
        tracker_run_name: wandb run name (default: the last two parts of output_dir).
    """
    flags = dict(locals())
    from crossdefense.scoring import SCORES_FILE, format_result_line, score_paths
    from crossdefense.trackers import check_trackers, log_scores

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_trackers(report_to)  # a missing tracker package fails before any scoring
        if tracker_dir and Path(tracker_dir).exists() and not Path(tracker_dir).is_dir():
            raise UserError(f"--tracker_dir {tracker_dir}: exists and is not a directory")
        results = score_paths(
            input_path,
            output_dir,
            judge,
            references_path=references_path,
            harm_model=harm_model,
            judge_model=judge_model,
            device=device,
            batch_size=batch_size,
            overwrite=overwrite,
            flags=flags,
        )
    except UserError as e:
        sys.exit(f"error: {e}")
    for r in results:
        print(format_result_line(r))
    print(f"wrote {Path(output_dir) / 'scores.jsonl'} and {Path(output_dir) / 'summary.json'}")
    try:
        logged = log_scores(
            report_to,
            read_jsonl(Path(output_dir) / SCORES_FILE),
            results,
            output_dir,
            run_name=tracker_run_name,
            config=flags,
            tracker_dir=tracker_dir,
        )
    except UserError as e:
        sys.exit(f"error: {e}")
    for name, where in logged.items():
        print(f"logged to {name}: {where}")


if __name__ == "__main__":
    run(main)
