"""Build the mini evaluation files from the self-authored documents in data/mini/documents/.

    python scripts/build_mini_eval.py                        # rewrites data/mini/evaluation/
    python scripts/build_mini_eval.py --output_dir=/tmp/ev   # writes somewhere else

writes test_{task}.json (harmful), test_{task}_cnn.json (news) and test_{task}_useful.json
(benign but safety-sensitive) for the five tasks, in upstream's schema plus `ids` and, for the
benign files, `references`. The output is deterministic, so the committed files can be checked by
rebuilding them (tests/test_minidata.py does).
"""

from __future__ import annotations

import sys

from crossdefense import UserError
from crossdefense.cli import run
from crossdefense.minidata import MINI_EVAL_DIR, write_eval_files


def main(output_dir: str | None = None) -> None:
    """Build the 15 evaluation files; nothing is written unless every document set validates.

    Args:
        output_dir: folder to write into, created if missing (default data/mini/evaluation/).
            Files of the same names there are replaced.
    """
    try:
        paths = write_eval_files(output_dir or MINI_EVAL_DIR)
    except UserError as e:
        sys.exit(f"error: {e}")
    for path in paths:
        print(path)


if __name__ == "__main__":
    run(main)
