"""Tables (CSV, Markdown) and plots (PNG) across scored runs."""

from __future__ import annotations

import logging
import sys

from crossdefense import UserError
from crossdefense.cli import run
from crossdefense.paths import EVALUATION_DIR


def main(
    summary_path: str | tuple[str, ...],
    output_dir: str = str(EVALUATION_DIR / "report"),
    heatmap_n: int | None = None,
    overwrite: bool = False,
    capabilities_path: str | tuple[str, ...] | None = None,
) -> None:
    """Aggregate summary.json files into results.csv, results.md and three plots.

    Args:
        summary_path: one or more summary.json files, or directories searched for them
            (comma-separated).
        output_dir: where results.csv, results.md, dose_response.png, cross_task_heatmap.png
            and safety_utility.png go.
        heatmap_n: the N of the train task x eval task heat-map (default: the largest N that
            every train task has).
        overwrite: replace existing report files.
        capabilities_path: capability results of scripts/eval_capabilities.py (files or
            folders of *.json, comma-separated): adds a "Capability (lm-evaluation-harness)"
            section to results.md (adapter vs base model per task and metric) and
            capabilities.csv.
    """
    from crossdefense.report import make_report

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        written = make_report(
            summary_path,
            output_dir,
            heatmap_n=heatmap_n,
            overwrite=overwrite,
            capabilities_path=capabilities_path,
        )
    except UserError as e:
        sys.exit(f"error: {e}")
    for p in written:
        print(f"wrote {p}")


if __name__ == "__main__":
    run(main)
