"""Export every scored sample as an Inspect eval log: one `.eval` file per run x eval file,
to browse with `inspect view --log-dir <output_dir>`."""

from __future__ import annotations

import logging

from crossdefense.cli import run


def main(
    input_path: str,
    output_dir: str,
    overwrite: bool = False,
    generation_dir: str | None = None,
    require_generation: bool = False,
    render_prompts: bool = True,
) -> None:
    """Write `<output_dir>/<run>__<eval_stem>.eval` for every run x eval file that was scored.

    Each sample holds the document and instruction (input), the reference (target), the
    model's answer (output), one score per judge (value: the label; the numeric score, the
    evidence and the judge's extras in its metadata) and the task, document kind, id, model,
    adapter lineage and utility metrics (metadata). Each log's results hold every judge's
    refusal, partial and comply rates with their Wilson intervals.

    Args:
        input_path: the --output_dir of scripts/score_answers.py (holding scores.jsonl and
            summary.json), or one of those two files.
        output_dir: folder for the logs (created if missing). It may be the scores folder
            itself, since the logs end in .eval and never replace scores.jsonl or summary.json.
        overwrite: replace logs that already exist (otherwise an existing log is an error and
            nothing is written).
        generation_dir: where the generation runs live now, if they moved since scoring: each
            file is looked for as <generation_dir>/<run>/<eval_stem>.json before the path
            summary.json recorded.
        require_generation: stop with an error when a generation file is missing, instead of
            warning and writing its samples without document, instruction or reference.
        render_prompts: add the prompt as the model saw it (rebuilt from the template that the
            generation recorded) to each sample's metadata; a chat template needs the base
            model's tokenizer in a local folder. --norender_prompts skips it.
    """
    from crossdefense.inspect_export import export_inspect

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    written = export_inspect(
        input_path,
        output_dir,
        overwrite=overwrite,
        generation_dir=generation_dir,
        require_generation=require_generation,
        render_prompts=render_prompts,
    )
    for item in written:
        print(item.line())


if __name__ == "__main__":
    run(main)
