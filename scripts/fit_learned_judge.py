"""Fit the learned refusal judge (data/judge/learned_judge.json) and, optionally, evaluate it."""

from __future__ import annotations

import sys

from crossdefense import UserError
from crossdefense.cli import run


def main(
    output_path: str,
    xstest_dir: str = "data/xstest",
    corpus: str | tuple[str, ...] = "data/judge",
    evaluate: bool = False,
    dev_path: str | None = None,
    eval_path: str | None = None,
    overwrite: bool = False,
    check: bool = False,
) -> None:
    """Fit on the labelled corpus and the XSTest completions; write the weights as JSON.

    The fit runs on the CPU with fixed thread counts and rounded features, so the same data and
    library versions give a byte-identical file (use --check to verify a shipped file).

    Args:
        output_path: weights JSON to write (data/judge/learned_judge.json is the shipped one).
        xstest_dir: XSTest folder (from scripts/download_data.sh) holding
            model_completions/xstest_v2_completions_{gpt4,llama2new,mistralinstruct}.csv.
        corpus: labelled corpus: a folder (its corpus_*.jsonl), a file, or several.
        evaluate: also run leave-one-model-out on XSTest, grouped 5-fold CV on the corpus and
            score the held-out dev file with the fitted weights, against the keyword judge.
        dev_path: held-out labelled JSONL scored by --evaluate (report only, never fitted on);
            default ../shared/judge/refusal-dev.jsonl when it exists.
        eval_path: where --evaluate writes its JSON; default <output_path stem>.eval.json.
        overwrite: replace an existing output_path / eval_path.
        check: fit and compare with the existing output_path byte for byte; write nothing and
            exit non-zero when they differ.
    """
    from crossdefense import learned_judge as lj

    try:
        out, eval_out = lj.output_paths(output_path, eval_path)
        if not (overwrite or check):
            for p in [out, *([eval_out] if evaluate else [])]:
                if p.exists():
                    raise UserError(f"{p} exists; pass --overwrite to replace it")
        if check and not out.is_file():
            raise UserError(f"{out}: nothing to check against")
        dev = lj.resolve_dev_path(dev_path) if evaluate else None
        data = lj.load_training(xstest_dir, corpus)
        dev_rows = lj.load_dev(dev) if dev else None
        fitted = lj.fit_training(data)
    except UserError as e:
        sys.exit(f"error: {e}")
    text = lj.dump_weights(fitted.weights)
    if check:
        same = out.read_text(encoding="utf-8") == text
        print(f"{out}: {'identical' if same else 'DIFFERS from a refit'}")
        if not same:
            sys.exit(1)
    else:
        lj.write_text(out, text)
        print(f"wrote {out} ({len(data.examples)} training rows)")
    if evaluate:
        report = lj.evaluate(fitted, dev_rows, dev)
        print(lj.format_evaluation(report))
        if not check:
            lj.write_json(eval_out, report)
            print(f"wrote {eval_out}")


if __name__ == "__main__":
    run(main)
