"""Merge sharded generation outputs into the file an unsharded run would have written.

    for i in 0 1 2 3; do
      CUDA_VISIBLE_DEVICES=$i python generation/generate_answers.py --num_shards 4 \\
          --shard_index $i --input_path data/upstream/evaluation/test_summarize.json \\
          --lora_weights checkpoints/RUN --base_model BASE &
    done; wait
    python scripts/merge_shards.py --input_path evaluation/generations/RUN --remove_shards
"""

from __future__ import annotations

import logging
import sys

from crossdefense import UserError
from crossdefense.cli import run


def main(
    input_path: str | tuple[str, ...],
    overwrite: bool = False,
    remove_shards: bool = False,
) -> None:
    """Write <stem>.json (+ .jsonl) beside each complete set of <stem>.shard{i}-of-{n}.json.

    Args:
        input_path: a run folder (all its shard files), shard files, a glob, or a
            comma-separated list of these.
        overwrite: replace an existing merged <stem>.json.
        remove_shards: delete the shard files after a successful merge (otherwise a scorer
            reading the whole run folder sees each record twice).
    """
    from crossdefense.shards import merge_shards

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        written = merge_shards(input_path, overwrite=overwrite, remove_shards=remove_shards)
    except UserError as e:
        sys.exit(f"error: {e}")
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    run(main)
