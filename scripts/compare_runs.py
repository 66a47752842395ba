"""Exact McNemar test of two runs' refusal labels on the same documents, per eval file."""

from __future__ import annotations

import sys

from crossdefense import UserError
from crossdefense.cli import as_list, run


def main(
    scores_path: str | tuple[str, ...],
    run_a: str,
    run_b: str,
    judge: str | None = None,
) -> None:
    """Compare two runs judged on the same documents (matched by record id).

    Args:
        scores_path: one or more scores.jsonl files (comma-separated) holding both runs.
        run_a: the first run name (e.g. a defended adapter).
        run_b: the second run name (e.g. the base model or another seed / method).
        judge: whose labels to compare (default: the first judge of each record).
    """
    from crossdefense.io import read_jsonl
    from crossdefense.scoring import compare_runs
    from crossdefense.stats import significance_mark

    try:
        rows = [row for part in as_list(scores_path) for row in read_jsonl(part)]
        results = compare_runs(rows, str(run_a), str(run_b), judge)
    except UserError as e:
        sys.exit(f"error: {e}")
    print(f"{'eval file':<28} {'A %':>6} {'B %':>6} {'A only':>6} {'B only':>6} {'p':>8}")
    for r in results:
        a = "–" if r["rate_a"] is None else f"{100 * r['rate_a']:.1f}"
        b = "–" if r["rate_b"] is None else f"{100 * r['rate_b']:.1f}"
        print(
            f"{r['eval_stem']:<28} {a:>6} {b:>6} {r['a_only']:>6} {r['b_only']:>6} "
            f"{r['p_value']:>8.3g}{significance_mark(r['p_value'])}"
        )
    print(f"A = {run_a}, B = {run_b}; exact McNemar on refusal vs not, n = paired documents")


if __name__ == "__main__":
    run(main)
