"""Judges against hand labels: accuracy with Wilson intervals, confusion matrices, kappa."""

from __future__ import annotations

import sys
from pathlib import Path

from crossdefense import UserError
from crossdefense.cli import as_list, run


def main(
    labels_path: str | tuple[str, ...] | None = None,
    xstest_dir: str | None = None,
    judge: str | tuple[str, ...] | None = None,
    judge_model: str | tuple[str, ...] | None = None,
    device: str | None = None,
    output_path: str | None = None,
    show_errors: bool = False,
    overwrite: bool = False,
) -> None:
    """Per judge and labelled source: refusal-vs-comply and 3-way accuracy (95% Wilson),
    partial recall, unparsed answers, the confusion matrix; Cohen's kappa for every judge pair.

    Args:
        labels_path: JSONL rows with `response`, `label` (refusal/comply/partial) and optionally
            `document` and `task` (comma-separate several files; each is reported on its own),
            e.g. ../shared/judge/refusal-dev.jsonl.
        xstest_dir: also report on XSTest's human-labelled completions of three real models
            (the folder holding model_completions/, e.g. data/xstest); one source per model.
            The learned judge was fitted on these: use its leave-one-model-out figures
            (data/judge/README.md) for a held-out number.
        judge: judges to compare (comma-separated); default keyword_prefix, keyword_substring,
            keyword, learned.
        judge_model: `judge=model` entries for model judges (hub id or local folder), as in
            scripts/score_answers.py.
        device: device for model judges (default: cuda if available, else cpu).
        output_path: also write the results (with misjudged ids) as JSON here.
        show_errors: print the id, gold and predicted label of each misjudged row.
        overwrite: replace an existing --output_path.
    """
    from crossdefense.calibration import (
        calibrate,
        format_calibration,
        pairwise_agreement,
        validate_labels,
    )
    from crossdefense.io import read_jsonl, write_json
    from crossdefense.judges import make_judge, normalize_judge_names
    from crossdefense.scoring import MODEL_JUDGES, parse_judge_models

    try:
        if labels_path is None and xstest_dir is None:
            raise UserError("give --labels_path and/or --xstest_dir")
        if output_path and Path(output_path).is_dir():
            raise UserError(f"--output_path {output_path}: is a directory; give a file name")
        if output_path and Path(output_path).exists() and not overwrite:
            raise UserError(f"{output_path}: exists; pass --overwrite to replace it")
        sources = []
        paths = as_list(labels_path)
        if output_path and any(Path(output_path).resolve() == Path(p).resolve() for p in paths):
            raise UserError(f"--output_path {output_path}: is also --labels_path")
        for p in paths:
            sources.append((p, validate_labels(read_jsonl(p), p)))
        if xstest_dir is not None:
            from crossdefense.learned_judge import load_xstest

            by_model: dict[str, list] = {}
            for ex in load_xstest(xstest_dir):
                by_model.setdefault(f"xstest:{ex.model}", []).append(
                    {
                        "id": ex.id,
                        "response": ex.response,
                        "label": ex.label,
                        "document": ex.document,
                        "task": None,
                    }
                )
            sources += list(by_model.items())
        names = normalize_judge_names(
            judge or ("keyword_prefix", "keyword_substring", "keyword", "learned")
        )
        models = parse_judge_models(judge_model, names)
        judges = []
        for n in names:
            kwargs = {"model": models[n]} if n in models else {}
            if device and n in MODEL_JUDGES:
                kwargs["device"] = device
            judges.append(make_judge(n, **kwargs))
        results, agreement = [], []
        for source, rows in sources:
            here = [calibrate(j, rows, source) for j in judges]
            results += here
            agreement += [{**a, "source": source} for a in pairwise_agreement(here)]
    except UserError as e:
        sys.exit(f"error: {e}")
    print(format_calibration(results, agreement))
    if show_errors:
        for res in results:
            for e in res["errors"]:
                print(
                    f"{res['judge']} {res['source']}: {e['id']} gold={e['gold']} pred={e['pred']}"
                )
    if output_path:
        slim = [{k: v for k, v in r.items() if k != "predictions"} for r in results]
        write_json(output_path, {"results": slim, "agreement": agreement})


if __name__ == "__main__":
    run(main)
