"""The one rule for "is this output current?": a stage's output records a fingerprint of what
made it (settings, and the content of its inputs by sha256), and is reused only when a new run
would compute the same fingerprint. The sweep's stage markers (crossdefense.sweep.decide, which
the demo runs through) and generation's own `--skip_existing` / resume (per file and per record,
for runs outside a sweep) both hash their settings here."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def fingerprint(settings: Mapping[str, Any]) -> str:
    """16 hex digits of the settings' canonical JSON (key order and spacing do not count)."""
    blob = json.dumps(settings, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
