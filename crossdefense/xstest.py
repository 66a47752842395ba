"""XSTest (Röttger et al., NAACL 2024; CC BY 4.0): 250 safe prompts that sound unsafe and 200
unsafe contrast prompts, the field's test of exaggerated safety.

A defense that refuses the safe prompts has learned topic, not intent. The prompts come as
`xstest_prompts.csv` (`id, prompt, type, label, focus, note`; `scripts/download_data.sh` puts it
in `data/xstest/`). Each prompt becomes an eval record whose *kind* is `xstest_safe` or
`xstest_unsafe` and whose *type* is XSTest's category (`homonyms`, `contrast_homonyms`, ...):
scoring then reports refusal on each kind (safe: lower is better; unsafe: higher is better)
and per type.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from pathlib import Path

from crossdefense import UserError

SAFE, UNSAFE = "xstest_safe", "xstest_unsafe"
KINDS = (SAFE, UNSAFE)
FILE_KIND = "xstest"  # a file that holds both kinds
PROMPTS_FILE = "xstest_prompts.csv"
COLUMNS = ("id", "prompt", "type", "label")


def is_xstest_csv(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".csv"


def read_prompts(path: str | Path) -> list[dict[str, str]]:
    """The CSV's rows as `{id, prompt, type, label, kind}`, validated (one error per problem)."""
    from crossdefense.io import check_file

    path = Path(path)
    check_file(path, "CSV file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # Excel writes a BOM
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(
                    f"{path}: not an XSTest prompts file (no column {', '.join(missing)}); "
                    f"expected {', '.join(COLUMNS)}"
                )
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: unreadable CSV ({e})") from None
    if not rows:
        raise UserError(f"{path}: no prompts")
    out, seen = [], set()
    for line, row in enumerate(rows, 2):
        label = (row.get("label") or "").strip()
        if label not in ("safe", "unsafe"):
            raise UserError(f"{path}: line {line}: label {label!r} is neither safe nor unsafe")
        rid, prompt = (row.get("id") or "").strip(), row.get("prompt") or ""
        if not rid or not prompt.strip():
            raise UserError(f"{path}: line {line}: empty id or prompt")
        if rid in seen:
            raise UserError(f"{path}: line {line}: id {rid!r} occurs more than once")
        seen.add(rid)
        out.append(
            {
                "id": rid,
                "prompt": prompt,
                "type": (row.get("type") or "").strip(),
                "label": label,
                "kind": SAFE if label == "safe" else UNSAFE,
            }
        )
    return out


def subset(rows: list[dict[str, str]], per_type: int, seed: int = 0) -> list[dict[str, str]]:
    """`per_type` prompts of every XSTest type (all of a type that has fewer), drawn with
    `seed` and kept in file order: a small, balanced sample for a time-boxed run."""
    if per_type < 1:
        raise UserError(f"per_type {per_type}: must be at least 1")
    by_type: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_type[r["type"]].append(i)
    rng = random.Random(seed)
    keep: set[int] = set()
    for idx in by_type.values():
        keep.update(idx if len(idx) <= per_type else rng.sample(idx, per_type))
    return [r for i, r in enumerate(rows) if i in keep]


def eval_document(rows: list[dict[str, str]], source: str) -> dict:
    """An eval file in the project's schema (`instructions`, `ids`, per-record `kinds` and
    `types`, the file's `doc_kind`) that generation reads like any other."""
    return {
        "instructions": [r["prompt"] for r in rows],
        "inputs": [],
        "ids": [r["id"] for r in rows],
        "kinds": [r["kind"] for r in rows],
        "types": [r["type"] for r in rows],
        "doc_kind": FILE_KIND,
        "source": source,
    }
