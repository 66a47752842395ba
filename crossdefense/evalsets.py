"""Parts of evaluation files: a window of documents of each upstream-style file, and a balanced
sample of XSTest's prompts. A sweep (EVAL_OFFSET, EVAL_LIMIT, XSTEST_PER_TYPE) and the demo
evaluate on these instead of the whole files.

A part is a plain eval file in the upstream schema, written where generation reads it; its ids
stay the source's positions (or its own ids), so answers to two windows never mix. Its bytes are
a function of the source and the window, so a part's fingerprint is known before it is written
(a dry run hashes what it would write).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.io import atomic_open, read_json, sha256_file
from crossdefense.runs import eval_part_name


@dataclass(frozen=True)
class Part:
    """Which part of each eval file to evaluate: documents `offset` .. `offset + limit - 1`
    (limit 0: to the end) of upstream-style files, `xstest_per_type` prompts of each XSTest type
    (0: all of them) drawn with `seed`."""

    offset: int = 0
    limit: int = 0
    xstest_per_type: int = 0
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("offset", "limit", "xstest_per_type", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserError(f"{name}: expected a non-negative integer, got {value!r}")

    @property
    def whole(self) -> bool:
        return not (self.offset or self.limit or self.xstest_per_type)

    def folder_name(self) -> str:
        return eval_part_name(self.offset, self.limit, self.xstest_per_type, self.seed)

    def applies_to(self, source: Path) -> bool:
        if source.suffix == ".csv":
            return self.xstest_per_type > 0
        return bool(self.offset or self.limit)

    def target(self, source: Path, folder: Path) -> Path:
        return folder / f"{source.stem}.json"

    def content(self, source: Path) -> dict[str, Any]:
        if source.suffix == ".csv":
            return xstest_sample(source, self.xstest_per_type, self.seed)
        return window(source, self.offset, self.limit)


def window(source: Path, offset: int, limit: int = 0) -> dict[str, Any]:
    """Documents `offset` .. `offset + limit - 1` (limit 0: to the end) of an upstream-style
    eval file, every parallel list cut alike and `ids` kept (the positions when it has none)."""
    data = read_json(source)
    docs = data.get("instructions") if isinstance(data, dict) else None
    if not isinstance(docs, list):
        raise UserError(f"{source}: not an upstream-style eval file (no 'instructions' list)")
    n = len(docs)
    if offset >= n:
        raise UserError(f"{source}: offset {offset} is past its {n} documents")
    data = {**data, "ids": data.get("ids") or [str(i) for i in range(n)]}
    cut = slice(offset, offset + limit if limit else n)
    return {k: (v[cut] if isinstance(v, list) and len(v) == n else v) for k, v in data.items()}


def xstest_sample(path: Path, per_type: int, seed: int) -> dict[str, Any]:
    """`per_type` prompts of each of XSTest's 18 types (safe and unsafe), as an eval file."""
    from crossdefense.xstest import eval_document, read_prompts, subset

    return eval_document(subset(read_prompts(path), per_type, seed=seed), str(path))


def encoded(doc: dict[str, Any]) -> bytes:
    """A part as written: JSON like `write_json(path, doc, indent=1)`."""
    return (json.dumps(doc, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def write_part(data: bytes, dst: Path) -> bool:
    """Write a part's bytes unless the same bytes are there already; True if it wrote."""
    if dst.is_file() and sha256_file(dst) == hashlib.sha256(data).hexdigest():
        return False
    with atomic_open(dst, "wb") as f:
        f.write(data)
    return True
