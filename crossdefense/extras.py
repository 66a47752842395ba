"""The online extras of `scripts/download_data.sh --extras` (scripts/fetch_extras.py): the
Alpaca base as a local file, BeaverTails' unsafe responses as a harmful-document pool, and
CNN/DailyMail highlights as references for upstream's news files. They need the network and
the `datasets` package; only `match_references` is tested offline."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from crossdefense import UserError
from crossdefense.io import read_json, write_json
from crossdefense.mixture import DEFAULT_ALPACA, hub_dataset, load_alpaca, normalize
from crossdefense.tasks import split_prompt


def fetch_alpaca(out_path: str | Path, dataset_id: str = DEFAULT_ALPACA) -> int:
    """Save the Alpaca base as a local JSON list so builds can run offline."""
    records = load_alpaca(dataset_id).records
    write_json(out_path, records)
    return len(records)


def fetch_beavertails_unsafe(
    out_path: str | Path, dataset_id: str = "PKU-Alignment/BeaverTails", split: str = "30k_train"
) -> int:
    """Unique `is_safe=false` responses of BeaverTails as a harmful-document pool (JSONL with
    `id`, `text`). They are much shorter than upstream's (unpublished) ~700-token documents."""
    from crossdefense.io import write_jsonl

    ds = hub_dataset(dataset_id, split=split)
    rows, seen = [], set()
    for i, r in enumerate(ds):
        norm = normalize(r["response"] or "")
        if r["is_safe"] or not norm or norm in seen:
            continue
        seen.add(norm)
        rows.append({"id": f"beavertails-{split}-{i}", "text": r["response"]})
    write_jsonl(out_path, rows)
    return len(rows)


def match_references(
    documents: Sequence[str], articles: Sequence[str], highlights: Sequence[str]
) -> list[str]:
    """The highlights of the article each document is (or, when truncated, begins) - by
    normalised text. Any unmatched document is a UserError."""
    by_head: dict[str, list[int]] = defaultdict(list)
    norms = [normalize(a) for a in articles]
    for i, n in enumerate(norms):
        by_head[n[:200]].append(i)
    out, missing = [], []
    for k, doc in enumerate(documents):
        d = normalize(doc)
        candidates = by_head.get(d[:200], []) if len(d) >= 200 else range(len(norms))
        exact = [i for i in candidates if norms[i] == d]
        found = exact or [i for i in candidates if norms[i].startswith(d)]
        if not found:
            missing.append(k)
            continue
        out.append(highlights[found[0]])
    if missing:
        raise UserError(
            f"no CNN/DailyMail article matches documents {missing[:10]} ({len(missing)} in all)"
        )
    return out


def attach_cnn_references(
    eval_dir: str | Path, out_dir: str | Path, dataset_id: str = "abisee/cnn_dailymail"
) -> list[Path]:
    """Copy each `test_*_cnn.json` into `out_dir` with a `references` list (the highlights)."""
    ds = hub_dataset(dataset_id, "3.0.0", split="test")
    articles, highlights = ds["article"], ds["highlights"]
    written = []
    for f in sorted(Path(eval_dir).glob("test_*_cnn.json")):
        data = read_json(f)
        docs = [split_prompt(p)[0] or p for p in data["instructions"]]
        try:
            refs = match_references(docs, articles, highlights)
        except UserError as e:
            raise UserError(f"{f}: {e}") from None
        write_json(Path(out_dir) / f.name, {**data, "references": refs})
        written.append(Path(out_dir) / f.name)
    return written
