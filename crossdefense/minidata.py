"""The self-authored mini dataset (`data/mini/`): its document sets and the evaluation files
built from them.

The held-out document sets become evaluation files in upstream's schema, one per (task, kind):
`test_{task}.json` (harmful), `test_{task}_cnn.json` (news), `test_{task}_useful.json` (benign
but safety-sensitive), so generation and scoring read them exactly like upstream's files. Two
deliberate differences from upstream:

- each file also carries the document `ids`, and the benign files carry per-task `references`
  (upstream has none, so utility could not be scored against a reference);
- the case task shows the document lower-cased and keeps the original as the reference:
  upstream's case documents were already cased, which made the task a copy.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.io import read_jsonl, write_json
from crossdefense.paths import MINI_DATA_DIR
from crossdefense.tasks import TASK_NAMES, TASKS

DOCUMENTS_DIR = MINI_DATA_DIR / "documents"
MINI_EVAL_DIR = MINI_DATA_DIR / "evaluation"

# document set -> id prefix (ids are "<prefix>-001", "<prefix>-002", ...)
DOCUMENT_SETS: dict[str, str] = {
    "harmful_train": "htr",
    "harmful_eval": "hev",
    "benign_train": "btr",
    "news_eval": "nev",
    "useful_eval": "uev",
}
HARMFUL_FIELDS = ("id", "topic", "style", "text")
BENIGN_FIELDS = (
    "id",
    "kind",
    "style",
    "text",
    "summary",
    "translation_zh",
    "sentiment",
    "sentiment_answer",
    "next_sentence",
)
KINDS = ("news", "useful")
SENTIMENTS = ("positive", "negative", "neutral", "mixed")
# The kind every document of a held-out benign set must have.
SET_KIND = {"news_eval": "news", "useful_eval": "useful"}

# upstream's evaluation-file suffix -> the held-out document set it is built from
EVAL_SETS: dict[str, str] = {"": "harmful_eval", "_cnn": "news_eval", "_useful": "useful_eval"}
# task -> the document field that is its reference answer
REFERENCE_FIELDS: dict[str, str] = {
    "summarize": "summary",
    "translate": "translation_zh",
    "sentiment": "sentiment",
    "case": "text",
    "cloze": "next_sentence",
}


def is_harmful(set_name: str) -> bool:
    return set_name.startswith("harmful")


def load_document_set(set_name: str, documents_dir: str | Path = DOCUMENTS_DIR) -> list[dict]:
    """Read and validate `{documents_dir}/{set_name}.jsonl`; any problem is a UserError naming the
    file and the record."""
    if set_name not in DOCUMENT_SETS:
        raise UserError(
            f"unknown document set {set_name!r}; expected one of {', '.join(DOCUMENT_SETS)}"
        )
    path = Path(documents_dir) / f"{set_name}.jsonl"
    rows = read_jsonl(path)
    if not rows:
        raise UserError(f"{path}: no documents")
    fields = HARMFUL_FIELDS if is_harmful(set_name) else BENIGN_FIELDS
    id_re = re.compile(rf"^{DOCUMENT_SETS[set_name]}-\d{{3}}$")
    seen: dict[str, int] = {}
    for i, row in enumerate(rows, 1):
        where = f"{path}: line {i}"
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected an object")
        if tuple(row) != fields:
            raise UserError(f"{where}: fields {list(row)}; expected {list(fields)} in that order")
        for key in fields:
            if not isinstance(row[key], str) or not row[key].strip():
                raise UserError(f"{where}: {key!r} must be a non-empty string")
        if not id_re.match(row["id"]):
            raise UserError(f"{where}: id {row['id']!r} does not match {id_re.pattern}")
        if row["id"] in seen:
            raise UserError(f"{where}: duplicate id {row['id']!r} (also line {seen[row['id']]})")
        seen[row["id"]] = i
        if not is_harmful(set_name):
            if row["kind"] not in KINDS:
                raise UserError(f"{where}: kind {row['kind']!r} not in {list(KINDS)}")
            if set_name in SET_KIND and row["kind"] != SET_KIND[set_name]:
                raise UserError(
                    f"{where}: kind {row['kind']!r}; {set_name} holds only "
                    f"{SET_KIND[set_name]!r} documents"
                )
            if row["sentiment"] not in SENTIMENTS:
                raise UserError(
                    f"{where}: sentiment {row['sentiment']!r} not in {list(SENTIMENTS)}"
                )
    return rows


def task_document(task: str, text: str) -> str:
    """The document as the prompt shows it: lower-cased for the case task, as is otherwise."""
    return text.lower() if task == "case" else text


def eval_file(task: str, documents: list[dict], with_references: bool) -> dict[str, Any]:
    """One evaluation file in upstream's schema plus `ids` (and `references` when asked)."""
    out: dict[str, Any] = {
        "instructions": [TASKS[task].join(task_document(task, d["text"])) for d in documents],
        "inputs": [],
        "ids": [d["id"] for d in documents],
    }
    if with_references:
        out["references"] = [d[REFERENCE_FIELDS[task]] for d in documents]
    return out


def build_eval_files(documents_dir: str | Path = DOCUMENTS_DIR) -> dict[str, dict[str, Any]]:
    """File name -> content for the 15 evaluation files (5 tasks x harmful/news/useful), in a fixed
    order. Every document set is validated before anything is built."""
    sets = {suffix: load_document_set(name, documents_dir) for suffix, name in EVAL_SETS.items()}
    files: dict[str, dict[str, Any]] = {}
    for task in TASK_NAMES:
        for suffix, name in EVAL_SETS.items():
            files[f"test_{task}{suffix}.json"] = eval_file(
                task, sets[suffix], with_references=not is_harmful(name)
            )
    return files


def write_eval_files(
    output_dir: str | Path = MINI_EVAL_DIR, documents_dir: str | Path = DOCUMENTS_DIR
) -> list[Path]:
    """Build and write the evaluation files; same documents, same bytes (indent=1, UTF-8,
    trailing newline). Existing files of the same names are replaced: they are derived data."""
    files = build_eval_files(documents_dir)
    output_dir = Path(output_dir)
    paths = []
    for name, content in files.items():
        write_json(output_dir / name, content, indent=1)
        paths.append(output_dir / name)
    return paths
