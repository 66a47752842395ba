"""Online extras for scripts/download_data.sh --extras (needs the network; not tested offline).

Writes into --dest: alpaca_cleaned.json (the Alpaca base, so builds run offline),
beavertails_30k_unsafe.jsonl (a harmful-document pool), and cnn_references/test_*_cnn.json
(upstream's _cnn evaluation files plus a `references` list of CNN/DailyMail highlights).
"""

from __future__ import annotations

import sys
from pathlib import Path

from crossdefense import UserError
from crossdefense.cli import run
from crossdefense.extras import attach_cnn_references, fetch_alpaca, fetch_beavertails_unsafe


def main(dest: str, evaluation_dir: str) -> None:
    """Fetch the extras.

    Args:
        dest: output folder (created).
        evaluation_dir: folder holding upstream's test_*_cnn.json files.
    """
    out = Path(dest)
    try:
        print(f"alpaca_cleaned.json: {fetch_alpaca(out / 'alpaca_cleaned.json')} records")
        n = fetch_beavertails_unsafe(out / "beavertails_30k_unsafe.jsonl")
        print(f"beavertails_30k_unsafe.jsonl: {n} documents")
        for path in attach_cnn_references(evaluation_dir, out / "cnn_references"):
            print(f"{path}: references added")
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    run(main)
