"""Compare refusal judges with hand labels: confusion matrices and accuracy."""

from __future__ import annotations

import sys

import fire

from crossdefense import UserError
from crossdefense.cli import reject_unknown_flags


def main(
    labels_path: str,
    judge: str | tuple[str, ...] | None = None,
    output_path: str | None = None,
    show_errors: bool = False,
) -> None:
    """Print a confusion matrix and accuracy per judge on a labelled JSONL.

    Args:
        labels_path: JSONL rows with `response`, `label` (refusal/comply/partial) and optionally
            `document` and `task` (e.g. ../shared/judge/refusal-dev.jsonl).
        judge: judges to compare (comma-separated); default keyword_prefix, keyword_substring,
            keyword, and embedding when its package is installed.
        output_path: also write the results (with misjudged ids) as JSON here.
        show_errors: print the id, gold and predicted label of each misjudged row.
    """
    from crossdefense.io import read_jsonl, write_json
    from crossdefense.judges import (
        calibrate,
        embedding_available,
        format_calibration,
        make_judge,
        normalize_judge_names,
        validate_labels,
    )

    try:
        rows = validate_labels(read_jsonl(labels_path), labels_path)
        if judge is None:
            names = ["keyword_prefix", "keyword_substring", "keyword"]
            names += ["embedding"] if embedding_available() else []
        else:
            names = normalize_judge_names(judge)
        results = [calibrate(make_judge(n), rows) for n in names]
    except UserError as e:
        sys.exit(f"error: {e}")
    print(format_calibration(results))
    if show_errors:
        for res in results:
            for e in res["errors"]:
                print(f"{res['judge']}: {e['id']} gold={e['gold']} predicted={e['pred']}")
    if output_path:
        write_json(output_path, {"labels_path": labels_path, "results": results})


if __name__ == "__main__":
    reject_unknown_flags(main)
    fire.Fire(main)
