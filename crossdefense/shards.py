"""Merge `<stem>.shard{i}-of-{n}.json` generation files back into `<stem>.json`.

`generate_answers.py --num_shards n --shard_index i` keeps records i, i+n, i+2n, ... of an eval
file, so one eval set can be split over GPUs. The merge puts the records back in the eval file's
order and refuses shards that do not belong together (missing, duplicated, or generated with
other settings), so the merged file is the one an unsharded run would have written.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.io import (
    expand_paths,
    read_json,
    read_jsonl,
    sha256_file,
    write_json,
    write_jsonl,
)
from crossdefense.runs import is_shard, parse_shard_name

log = logging.getLogger(__name__)
# Lists of one value per record, merged in record order.
RECORD_FIELDS = ("instructions", "inputs", "outputs", "ids", "references")


@dataclass(frozen=True)
class ShardGroup:
    """The shard files of one eval file in one run directory."""

    final: Path
    shards: tuple[Path, ...]  # ordered by shard index


def find_groups(paths: list[Path]) -> list[ShardGroup]:
    """Group shard files by (folder, stem); each group must hold shards 0..n-1 of one n."""
    by_key: dict[tuple[Path, str], dict[int, tuple[int, Path]]] = defaultdict(dict)
    for p in paths:
        parsed = parse_shard_name(p)
        if parsed is None:
            raise UserError(f"{p}: not a shard file (<stem>.shard<i>-of-<n>.json)")
        stem, i, n = parsed
        key = (p.parent, stem)
        if i in by_key[key]:
            raise UserError(f"{p}: shard {i} of {stem} given twice")
        by_key[key][i] = (n, p)
    groups = []
    for (folder, stem), found in sorted(by_key.items()):
        counts = {n for n, _ in found.values()}
        if len(counts) != 1:
            raise UserError(f"{folder / stem}: shards of different splits ({sorted(counts)})")
        n = counts.pop()
        missing = sorted(set(range(n)) - set(found))
        extra = sorted(set(found) - set(range(n)))
        if missing or extra:
            what = f"missing shard(s) {missing}" if missing else f"shard index(es) {extra} >= {n}"
            raise UserError(f"{folder / stem}: {what} of {n}")
        groups.append(ShardGroup(folder / f"{stem}.json", tuple(found[i][1] for i in range(n))))
    return groups


def expand_shards(input_path: str | Path | list | tuple) -> list[Path]:
    """Shard files from run directories, globs, single files, or comma-separated lists."""
    return expand_paths(
        input_path,
        lambda d: sorted(x for x in d.glob("*.json") if is_shard(x)),
        "shard files",
    )


def _check_same(docs: list[dict[str, Any]], shards: tuple[Path, ...], n: int) -> None:
    """Shards belong together: same settings (fingerprint), eval file, parameters and split."""
    first = docs[0]["metadata"]
    for i, (doc, path) in enumerate(zip(docs, shards, strict=True)):
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or "config_fingerprint" not in meta:
            raise UserError(f"{path}: no metadata.config_fingerprint (not a generation file)")
        shard = meta.get("generation", {}).get("shard")
        if shard != [i, n]:
            raise UserError(f"{path}: metadata says shard {shard}, the name says [{i}, {n}]")
        for key in ("config_fingerprint", "eval_sha256", "run_name"):
            if meta.get(key) != first.get(key):
                raise UserError(
                    f"{path}: {key} {meta.get(key)!r} differs from {shards[0].name}'s "
                    f"{first.get(key)!r}; the shards were not generated together"
                )
        if doc.get("parameters") != docs[0].get("parameters"):
            raise UserError(f"{path}: parameters differ from {shards[0].name}'s")


def record_order(
    docs: list[dict[str, Any]], shards: tuple[Path, ...]
) -> tuple[list[tuple[int, int]], list[Any] | None]:
    """(shard, position) per record in eval file order, and the eval records: the eval file's
    ids when it is still there unchanged, else the inverse of the round-robin split (record j
    is in shard j % n) and no records."""
    from crossdefense.data import read_eval_records

    n = len(docs)
    total = sum(len(d["outputs"]) for d in docs)
    where = {}
    for s, doc in enumerate(docs):
        ids = doc.get("ids") or []
        if len(ids) != len(doc["outputs"]):
            raise UserError(f"{shards[s]}: {len(ids)} ids for {len(doc['outputs'])} outputs")
        for pos, rid in enumerate(ids):
            if rid in where:
                raise UserError(f"{shards[s]}: record id {rid!r} is also in another shard")
            where[rid] = (s, pos)
    meta = docs[0]["metadata"]
    eval_file = Path(meta.get("eval_file", ""))
    if eval_file.is_file() and sha256_file(eval_file) == meta.get("eval_sha256"):
        records = read_eval_records(eval_file)
        if sorted(r.id for r in records) != sorted(where):
            raise UserError(f"{shards[0].parent}: the shards do not cover {eval_file} exactly")
        return [where[r.id] for r in records], records
    log.warning("%s is gone or changed: ordering records by the shard split", eval_file)
    sizes = [len(d["outputs"]) for d in docs]
    if sizes != [len(range(s, total, n)) for s in range(n)]:
        raise UserError(f"{shards[0].parent}: shard sizes {sizes} are not a split of {total}")
    return [(j % n, j // n) for j in range(total)], None


@dataclass
class Merged:
    final: Path
    doc: dict[str, Any]
    jsonl_rows: list[dict[str, Any]] | None


def merge_group(group: ShardGroup) -> Merged:
    """The merged document (and JSONL rows when every shard has its JSONL); writes nothing."""
    from crossdefense.generation import eval_metadata

    docs = [read_json(p) for p in group.shards]
    for p, doc in zip(group.shards, docs, strict=True):
        if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list):
            raise UserError(f"{p}: not a generation file (no 'outputs' list)")
    _check_same(docs, group.shards, len(docs))
    order, records = record_order(docs, group.shards)

    merged: dict[str, Any] = {"parameters": docs[0]["parameters"]}
    for key in RECORD_FIELDS:
        if all(key in d for d in docs) and any(d[key] for d in docs):
            merged[key] = [docs[s][key][pos] for s, pos in order]
        elif key == "inputs":
            merged[key] = []  # upstream's shape: an empty list when no record has an input
    meta = dict(docs[0]["metadata"])
    if records is not None:
        meta.update(eval_metadata(Path(meta["eval_file"]), records))
    else:
        tasks = {d["metadata"].get("eval_task") for d in docs}
        meta.update(n_records=len(order), eval_task=tasks.pop() if len(tasks) == 1 else None)
    meta["generation"] = {**meta.get("generation", {}), "shard": [0, 1]}
    meta["merged_from"] = [p.name for p in group.shards]
    merged["metadata"] = meta

    rows = None
    jsonls = [p.with_suffix(".jsonl") for p in group.shards]
    if all(p.is_file() for p in jsonls):
        by_id = {row["id"]: row for p in jsonls for row in read_jsonl(p)}
        rows = [by_id[i] for i in merged["ids"] if i in by_id]
    return Merged(group.final, merged, rows)


def merge_shards(
    input_path: str | Path | list | tuple, overwrite: bool = False, remove_shards: bool = False
) -> list[Path]:
    """Merge every shard group found; nothing is written unless every group validates."""
    from contextlib import ExitStack

    from crossdefense.io import output_lock

    groups = find_groups(expand_shards(input_path))

    def check_targets() -> None:
        for g in groups:
            # the merged file and its progress log: either may belong to an unsharded run
            for target in (g.final, g.final.with_suffix(".jsonl")):
                if target.exists() and not overwrite:
                    raise UserError(f"{target} exists; pass --overwrite to replace it")

    check_targets()
    with ExitStack() as locks:  # one writer per run folder, as generation holds it
        for folder in sorted({g.final.parent for g in groups}):
            locks.enter_context(output_lock(folder, "merge or generation"))
        check_targets()
        merged = [merge_group(g) for g in groups]
        for m in merged:
            if m.jsonl_rows is not None:
                write_jsonl(m.final.with_suffix(".jsonl"), m.jsonl_rows)
            write_json(m.final, m.doc)
        if remove_shards:
            for g in groups:
                for p in g.shards:
                    p.unlink()
                    p.with_suffix(".jsonl").unlink(missing_ok=True)
    return [m.final for m in merged]
