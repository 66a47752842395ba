"""Defense-mixture builder: an Alpaca sample + K safety examples + N refusals of harmful documents
per task, written with a manifest and checked for leakage into the evaluation documents.

Sampling is nested on purpose: for one seed, the defense documents of a smaller N are a subset of
those of a larger N (and the Alpaca and safety samples are identical), so a dose-response sweep
over N differs only in the defense examples it adds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.io import (
    output_lock,
    read_json,
    read_json_or_jsonl,
    run_metadata,
    sha256_file,
    write_json,
)
from crossdefense.paths import DATA_DIR
from crossdefense.runs import manifest_path, mixture_name
from crossdefense.tasks import MIX, TASK_NAMES, get_task, split_prompt

logger = logging.getLogger(__name__)

DEFAULT_ALPACA = "yahma/alpaca-cleaned"
DEFAULT_SAFETY_PATH = DATA_DIR / "upstream" / "training" / "safety_only_data_Instructions.json"
NGRAM = 8
JACCARD_THRESHOLD = 0.5

_HUB_ID_RE = re.compile(r"^[\w.-]+/[\w.-]+$")
_TRUE = {"1", "true", "yes", "on"}


# --------------------------------------------------------------------------- names


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Source:
    """A loaded input and how to cite it in a manifest."""

    records: list[Any]
    meta: dict[str, Any]


def _file_meta(path: Path, n: int) -> dict[str, Any]:
    return {"path": str(path.resolve()), "sha256": sha256_file(path), "records": n}


def _read_list(path: Path) -> list[Any]:
    data = read_json_or_jsonl(path)
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list (or JSONL), got {type(data).__name__}")
    if not data:
        raise UserError(f"{path}: no records")
    return data


def _is_offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _alpaca_records(rows: Iterable[Any], where: str) -> list[dict[str, str]]:
    """Validate Alpaca records and keep exactly {instruction, input, output}."""
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise UserError(f"{where}: record {i}: expected an object, got {type(r).__name__}")
        for key in ("instruction", "output"):
            if key not in r:
                raise UserError(f"{where}: record {i}: missing field {key!r}")
        for key in ("instruction", "input", "output"):
            if not isinstance(r.get(key, ""), str):
                raise UserError(f"{where}: record {i}: field {key!r} is not a string")
        if not r["instruction"].strip():
            raise UserError(f"{where}: record {i}: empty 'instruction'")
        out.append(
            {"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]}
        )
    return out


def hub_dataset(name: str, *args: str, split: str):
    """A hub dataset split; offline mode and hub/network failures are one-line UserErrors."""
    if _is_offline():
        raise UserError(
            f"{name}: not a local file and HF_HUB_OFFLINE=1 forbids fetching it from the hub; "
            "pass a local JSON/JSONL file (scripts/download_data.sh --extras writes one)"
        )
    import datasets

    try:
        return datasets.load_dataset(name, *args, split=split)
    except Exception as e:  # hub/network errors come in many types; report them on one line
        msg = str(e).splitlines()[0] if str(e) else ""
        raise UserError(
            f"{name}: could not load split {split!r} from the hub: {type(e).__name__}: {msg}"
        ) from None


def load_alpaca(path_or_id: str | Path) -> Source:
    """Alpaca records from a JSON/JSONL file, or from the hub when given a dataset id."""
    path = Path(path_or_id)
    if path.exists():
        rows = _read_list(path)
        return Source(_alpaca_records(rows, str(path)), _file_meta(path, len(rows)))
    name = str(path_or_id)
    if not _HUB_ID_RE.match(name) or name.endswith((".json", ".jsonl")):
        raise UserError(f"{name}: file not found")
    rows = hub_dataset(name, split="train").to_list()
    if not rows:
        raise UserError(f"{name}: no records")
    records = _alpaca_records(rows, name)
    digest = hashlib.sha256(json.dumps(records, ensure_ascii=False).encode()).hexdigest()
    return Source(records, {"hub_id": name, "content_sha256": digest, "records": len(rows)})


# The answer field of a benign document under each task (data/mini/documents/benign_train.jsonl)
BENIGN_ANSWER_FIELDS = {
    "summarize": "summary",
    "translate": "translation_zh",
    "sentiment": "sentiment_answer",
    "case": "text",
    "cloze": "next_sentence",
}


def benign_document_records(rows: Sequence[dict[str, Any]], defended: str) -> list[dict[str, str]]:
    """Benign documents processed under the defended task and two other tasks each.

    The first miniature run taught that a model shown harmful documents under a task, and too
    few benign ones under the same task, refuses every document of that kind: so every benign
    training document appears under the defended task (contrast), and under two more tasks in
    turn (so no task is only ever seen with refusals). With `mix`, the document's own task
    goes round the five.
    """
    out = []
    for i, r in enumerate(rows):
        own = defended if defended in TASK_NAMES else TASK_NAMES[i % len(TASK_NAMES)]
        # Chinese translations are long: as extra tasks they would outweigh every refusal in
        # a token-averaged loss, so the second task is one of the short-answer ones.
        others = [t for t in TASK_NAMES if t not in (own, "translate")]
        for name in (own, others[i % len(others)], others[(i + 1) % len(others)]):
            doc = r["text"].lower() if name == "case" else r["text"]
            answer = r[BENIGN_ANSWER_FIELDS[name]]
            out.append({"instruction": get_task(name).join(doc), "input": "", "output": answer})
    return out


def load_benign_documents(path: str | Path, limit: int | None, defended: str) -> Source:
    """The first `limit` (None: all) benign documents of a file, as document-task records."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: --benign_documents_path not found")
    rows = _read_list(path)
    if limit is not None:
        if limit > len(rows):
            raise UserError(
                f"{path}: --num_benign_documents={limit} but the file has {len(rows)} documents"
            )
        rows = rows[:limit]
    need = ("text", *sorted(set(BENIGN_ANSWER_FIELDS.values()) - {"text"}))
    for i, r in enumerate(rows):
        missing = [k for k in need if not isinstance(r, dict) or not isinstance(r.get(k), str)]
        if missing:
            raise UserError(f"{path}: document {i}: missing text field(s) {', '.join(missing)}")
    records = benign_document_records(rows, defended)
    return Source(records, {**_file_meta(path, len(rows)), "rows": len(records)})


def load_safety(path: str | Path) -> Source:
    path = Path(path)
    rows = _read_list(path)
    return Source(_alpaca_records(rows, str(path)), _file_meta(path, len(rows)))


@dataclass(frozen=True)
class Document:
    id: str
    text: str


def load_documents(path: str | Path) -> Source:
    """Harmful documents: strings, or objects with `text`/`document` and an optional `id`."""
    path = Path(path)
    rows = _read_list(path)
    docs: list[Document] = []
    seen_ids: dict[str, int] = {}
    seen_text: dict[str, int] = {}
    for i, r in enumerate(rows):
        if isinstance(r, str):
            text, doc_id = r, f"#{i}"
        elif isinstance(r, dict):
            key = "text" if "text" in r else "document" if "document" in r else None
            if key is None:
                raise UserError(f"{path}: record {i}: missing field 'text' (or 'document')")
            text = r[key]
            raw_id = r.get("id", f"#{i}")
            if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
                raise UserError(f"{path}: record {i}: 'id' must be a string or an integer")
            doc_id = str(raw_id)
        else:
            raise UserError(f"{path}: record {i}: expected a string or an object")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{path}: record {i}: document text is empty or not a string")
        if doc_id in seen_ids:
            raise UserError(
                f"{path}: record {i}: duplicate id {doc_id!r} (also record {seen_ids[doc_id]})"
            )
        norm = normalize(text)
        if norm in seen_text:
            raise UserError(f"{path}: record {i}: same text as record {seen_text[norm]}")
        seen_ids[doc_id], seen_text[norm] = i, i
        docs.append(Document(doc_id, text))
    return Source(docs, _file_meta(path, len(rows)))


@dataclass(frozen=True)
class Refusals:
    """Either a pool sampled per example, or one refusal per document (by id or by text)."""

    pool: list[str] | None
    by_id: dict[str, str]
    by_text: dict[str, str]

    def for_document(self, doc: Document) -> str | None:
        return self.by_id.get(doc.id) or self.by_text.get(normalize(doc.text))


def load_refusals(path: str | Path) -> Source:
    path = Path(path)
    rows = _read_list(path)
    if all(isinstance(r, str) for r in rows):
        for i, r in enumerate(rows):
            if not r.strip():
                raise UserError(f"{path}: record {i}: empty refusal")
        return Source(
            [Refusals(list(rows), {}, {})], {**_file_meta(path, len(rows)), "mode": "pool"}
        )
    by_id: dict[str, str] = {}
    by_text: dict[str, str] = {}
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise UserError(
                f"{path}: record {i}: expected an object like the others, got {type(r).__name__}"
            )
        out = r.get("refusal", r.get("output"))
        if not isinstance(out, str) or not out.strip():
            raise UserError(f"{path}: record {i}: missing or empty 'refusal' (or 'output')")
        if "id" in r:
            by_id[str(r["id"])] = out
        elif isinstance(r.get("document"), str):
            by_text[normalize(r["document"])] = out
        else:
            raise UserError(f"{path}: record {i}: needs an 'id' or a 'document' to match")
    meta = {**_file_meta(path, len(rows)), "mode": "per_document"}
    return Source([Refusals(None, by_id, by_text)], meta)


# --------------------------------------------------------------------------- leakage


def normalize(text: str) -> str:
    """Case-folded, whitespace-collapsed text. Case is ignored everywhere because the case task
    lower-cases its documents, so case cannot tell two documents apart."""
    return " ".join(text.lower().split())


def _grams(norm: str) -> set[tuple[str, ...]]:
    words = norm.split()
    return {tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)}


def eval_documents(eval_dir: str | Path) -> tuple[list[tuple[str, int, str]], list[dict[str, str]]]:
    """(file name, index, document) for every prompt of every `*.json` in `eval_dir`, and the
    files read. The document is the prompt minus its task instruction (whole prompt if none)."""
    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        raise UserError(f"{eval_dir}: evaluation directory not found")
    files = sorted(eval_dir.glob("*.json"))
    if not files:
        raise UserError(f"{eval_dir}: no *.json evaluation files")
    docs, read = [], []
    for f in files:
        data = read_json(f)
        if not isinstance(data, dict) or not isinstance(data.get("instructions"), list):
            raise UserError(
                f"{f}: not an evaluation file (expected {{'instructions': [...], 'inputs': [...]}})"
            )
        for i, prompt in enumerate(data["instructions"]):
            if not isinstance(prompt, str):
                raise UserError(f"{f}: instructions[{i}] is not a string")
            document, _ = split_prompt(prompt)
            docs.append((f.name, i, document or prompt))
        for i, extra in enumerate(data.get("inputs") or []):
            if isinstance(extra, str) and extra.strip():
                docs.append((f.name, i, extra))
        read.append({"file": f.name, "sha256": sha256_file(f)})
    return docs, read


def find_leaks(
    documents: Sequence[Document], evaluation: Sequence[tuple[str, int, str]]
) -> list[dict[str, Any]]:
    """Pairs (defense document, evaluation prompt) that are equal after normalisation or share
    word 8-grams with Jaccard >= 0.5. 8-grams are indexed, so only pairs sharing one are scored."""
    from tqdm import tqdm

    # The same document often appears in several eval files (one per task): score it once.
    locations: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for name, idx, text in evaluation:
        locations[normalize(text)].append((name, idx))
    eval_norms = list(locations)
    eval_grams = [_grams(n) for n in eval_norms]
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for j, grams in enumerate(eval_grams):
        for g in grams:
            index[g].append(j)
    exact = {n: j for j, n in enumerate(eval_norms)}

    leaks = []
    for doc in tqdm(documents, desc="leakage check", disable=None, leave=False):
        norm = normalize(doc.text)
        hits: dict[int, tuple[str, float]] = {}
        if norm in exact:
            hits[exact[norm]] = ("exact", 1.0)
        grams = _grams(norm)
        shared = Counter(j for g in grams for j in index.get(g, ()))
        for j, c in shared.items():
            jaccard = c / (len(grams) + len(eval_grams[j]) - c)
            if j not in hits and jaccard >= JACCARD_THRESHOLD:
                hits[j] = ("ngram", round(jaccard, 4))
        for j, (kind, score) in sorted(hits.items()):
            for name, idx in locations[eval_norms[j]]:
                leaks.append(
                    {
                        "document_id": doc.id,
                        "eval_file": name,
                        "eval_index": idx,
                        "kind": kind,
                        "jaccard": score,
                    }
                )
    return leaks


def _leak_message(leaks: list[dict[str, Any]], shown: int = 5) -> str:
    by_doc: dict[str, list[str]] = defaultdict(list)
    for leak in leaks:
        by_doc[leak["document_id"]].append(
            f"{leak['eval_file']}[{leak['eval_index']}] ({leak['kind']})"
        )
    parts = []
    for doc_id, where in list(by_doc.items())[:shown]:
        more = f" and {len(where) - 1} more" if len(where) > 1 else ""
        parts.append(f"{doc_id!r} = {where[0]}{more}")
    rest = f"; and {len(by_doc) - shown} more documents" if len(by_doc) > shown else ""
    return (
        f"{len(by_doc)} defense document(s) overlap the evaluation data: {'; '.join(parts)}{rest} "
        "(use other documents, or --allow_leakage to keep them and record the matches)"
    )


# --------------------------------------------------------------------------- build


def normalize_grid(grid: Any) -> list[int]:
    """Ns from fire's int / tuple / list / '10,100' or '10 100' string, sorted, deduplicated."""
    from crossdefense.cli import as_ints

    if isinstance(grid, str):
        grid = ",".join(grid.replace("(", " ").replace(")", " ").split())
    out = set(as_ints(grid, "grid"))
    if any(n < 0 for n in out):
        raise UserError(f"--grid: {min(out)} is not a non-negative integer")
    if not out:
        raise UserError("--grid: no values")
    return sorted(out)


def _count(value: Any, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"--{flag}: expected a non-negative integer, got {value!r}")
    return value


def build_defense_data(
    *,
    task: str,
    num_defense: int | None = None,
    grid: Any = None,
    alpaca_path: str | Path = DEFAULT_ALPACA,
    alpaca_size: int = 20000,
    safety_path: str | Path = DEFAULT_SAFETY_PATH,
    num_safety: int = 100,
    documents_path: str | Path | None = None,
    refusals_path: str | Path | None = None,
    seed: int = 42,
    output_dir: str | Path | None = None,
    eval_dir: str | Path | None = None,
    allow_leakage: bool = False,
    overwrite: bool = False,
    format: str = "sft",
    rejected_path: str | Path | None = None,
    benign_documents_path: str | Path | None = None,
    num_benign_documents: int | None = None,
) -> list[Path]:
    """Build one mixture per N (`num_defense`, or each N in `grid`); return the mixture paths.

    Everything is loaded and validated, and the leakage check run, before any file is written.

    `format`: `sft` (the paper's {instruction, input, output} records), `dpo` (preference pairs
    {instruction, input, chosen, rejected} from the same sample: see `preference_pairs`), or
    `prompts` (the refusal prompts of the largest N as an eval file, for the model whose own
    answers become the rejected side of the pairs: `generate_answers.py` on it, then `dpo`
    with `rejected_path` = its output).

    `benign_documents_path` (documents with an answer per task, like
    data/mini/documents/benign_train.jsonl; the first `num_benign_documents` of them): each
    document becomes three records (`benign_document_records`), and the benign part of the
    mixture is then all of them plus the *first* `alpaca_size` Alpaca rows, unsampled (a small
    curated pool such as data/mini/alpaca.jsonl is used as it is).
    """
    flags = {k: (str(v) if isinstance(v, Path) else v) for k, v in locals().items()}
    _check_format(format, rejected_path)
    rejected = load_rejected(rejected_path) if format == "dpo" else None
    tasks = list(TASK_NAMES) if task == MIX else [get_task(task).name]
    if (num_defense is None) == (grid is None):
        raise UserError("give exactly one of --num_defense=N or --grid=N1,N2,...")
    ns = normalize_grid(grid) if grid is not None else [_count(num_defense, "num_defense")]
    _count(alpaca_size, "alpaca_size")
    _count(num_safety, "num_safety")
    _count(seed, "seed")
    out_dir = Path(output_dir) if output_dir is not None else DATA_DIR / "training" / task
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: --output_dir exists and is not a directory")
    if eval_dir is not None:
        ev = Path(eval_dir).resolve()
        if out_dir.resolve() == ev or ev in out_dir.resolve().parents:
            raise UserError(
                f"--output_dir {out_dir}: inside --eval_dir {eval_dir}; a mixture there would be "
                "read as an evaluation file"
            )

    if num_benign_documents is not None:
        _count(num_benign_documents, "num_benign_documents")
    pools = load_pools(alpaca_path, safety_path, documents_path, refusals_path, max(ns), tasks)
    if num_safety > len(pools.safety.records):
        raise UserError(
            f"{safety_path}: --num_safety={num_safety} but the pool has {len(pools.safety.records)}"
        )
    n_alpaca = min(alpaca_size, len(pools.alpaca.records))
    if n_alpaca < alpaca_size:
        logger.warning(
            "%s has %d records, fewer than --alpaca_size=%d: using all",
            alpaca_path,
            n_alpaca,
            alpaca_size,
        )
    n_benign = 0
    if benign_documents_path is not None:
        # the benign documents' rows and the first n_alpaca Alpaca rows are the whole pool,
        # and all of it is drawn
        benign = load_benign_documents(benign_documents_path, num_benign_documents, task)
        rows = benign.records + pools.alpaca.records[:n_alpaca]
        pools.alpaca = Source(rows, pools.alpaca.meta)
        pools.sources["benign_documents"] = benign.meta
        n_benign = len(benign.records)
    sample = draw_sample(
        pools, tasks, n_benign + n_alpaca, num_safety, max(ns), seed, refusals_path
    )
    leaks, leakage = check_leakage(pools, sample.plan, eval_dir, allow_leakage)
    inputs = [
        alpaca_path,
        safety_path,
        documents_path,
        refusals_path,
        rejected_path,
        benign_documents_path,
    ]
    targets = output_targets(out_dir, task, ns, num_safety, format, inputs, overwrite)
    with output_lock(out_dir, "mixture build"):  # one builder per folder: data and manifest
        # match, never one run's file beside another's manifest
        output_targets(out_dir, task, ns, num_safety, format, inputs, overwrite)  # again
        if format == "prompts":
            path = targets[max(ns)]
            return [
                write_prompts(path, sample, pools.sources, task, max(ns), num_safety, seed, flags)
            ]
        pool = refusal_pool(pools.refusals, sample.plan) if format == "dpo" else []
        for n, path in targets.items():
            chosen = sample.plan[: n * len(tasks)]
            records = sample.base + [ex for _, ex in chosen]
            record_kinds = sample.kinds + ["defense"] * len(chosen)
            order = list(range(len(records)))
            sample.rng("shuffle").shuffle(order)
            records = [records[i] for i in order]
            record_kinds = [record_kinds[i] for i in order]
            pref_counts = None
            if format == "dpo":
                records, pref_counts = preference_pairs(
                    records, record_kinds, rejected, pool, sample.rng("dpo-rejected"), rejected_path
                )
            ids = {p["document_id"] for p, _ in chosen}
            manifest = {
                "mixture": path.name,
                "num_records": len(records),
                "task": task,
                "num_defense": n,
                "num_safety": num_safety,
                "alpaca_size": {"requested": alpaca_size, "used": n_alpaca},
                "seed": seed,
                "counts": {
                    "alpaca": n_alpaca,
                    **({"benign_documents": n_benign} if benign_documents_path else {}),
                    "safety": num_safety,
                    "defense": dict(Counter(p["task"] for p, _ in chosen)),
                },
                "sources": pools.sources,
                "sampled": {
                    "alpaca": sample.alpaca_idx,
                    "safety": sample.safety_idx,
                    "defense": [p for p, _ in chosen],
                },
                "leakage": {**leakage, "matches": [m for m in leaks if m["document_id"] in ids]},
                "allow_leakage": allow_leakage,
                "format": format,
                **({"preference_pairs": pref_counts} if pref_counts is not None else {}),
                "provenance": run_metadata(flags),
            }
            write_json(path, records)
            manifest["mixture_sha256"] = sha256_file(path)
            write_json(manifest_path(path), manifest)
            logger.info("wrote %s (%d records)", path, len(records))
        return list(targets.values())


def _check_format(format: str, rejected_path: str | Path | None) -> None:
    if format not in FORMATS:
        raise UserError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    if format == "dpo" and rejected_path is None:
        raise UserError(
            "--format dpo needs --rejected_path: the model's own answers to the refusal prompts "
            "(write them with --format prompts, answer them with generation/generate_answers.py)"
        )
    if format != "dpo" and rejected_path is not None:
        raise UserError(f"--rejected_path is read only with --format dpo (not {format})")


@dataclass
class Pools:
    """The loaded inputs of a build and how the manifest cites them."""

    alpaca: Source
    safety: Source
    documents: list[Document]
    refusals: Refusals | None
    sources: dict[str, Any]


def load_pools(
    alpaca_path: str | Path,
    safety_path: str | Path,
    documents_path: str | Path | None,
    refusals_path: str | Path | None,
    max_n: int,
    tasks: list[str],
) -> Pools:
    """Alpaca, the safety pool and (when N > 0) the harmful documents and their refusals."""
    max_docs = max_n * len(tasks)
    alpaca = load_alpaca(alpaca_path)
    safety = load_safety(safety_path)
    sources: dict[str, Any] = {"alpaca": alpaca.meta, "safety": safety.meta}
    documents: list[Document] = []
    refusals: Refusals | None = None
    if max_docs:
        if documents_path is None or refusals_path is None:
            raise UserError("--documents_path and --refusals_path are needed when N > 0")
        docs_src, ref_src = load_documents(documents_path), load_refusals(refusals_path)
        sources |= {"documents": docs_src.meta, "refusals": ref_src.meta}
        documents, refusals = docs_src.records, ref_src.records[0]
        if max_docs > len(documents):
            per = f" ({max_n} per task x {len(tasks)} tasks)" if len(tasks) > 1 else ""
            raise UserError(
                f"{documents_path}: N={max_n} needs {max_docs} documents{per}, "
                f"the pool has {len(documents)}"
            )
    return Pools(alpaca, safety, documents, refusals, sources)


@dataclass
class Sample:
    """What a build draws: Alpaca and safety rows, and the defense plan of the largest N
    (each smaller N takes a prefix of it)."""

    seed: int
    alpaca_idx: list[int]
    safety_idx: list[int]
    base: list[dict[str, Any]]  # the drawn Alpaca then safety records
    kinds: list[str]  # "benign" / "safety" per base record
    plan: list[tuple[dict[str, Any], dict[str, Any]]]  # (provenance, defense example)

    def rng(self, purpose: str) -> random.Random:
        """One stream per purpose, seeded by name, so changing N never changes the others."""
        return random.Random(f"{self.seed}:{purpose}")


def draw_sample(
    pools: Pools,
    tasks: list[str],
    n_alpaca: int,
    num_safety: int,
    max_n: int,
    seed: int,
    refusals_path: str | Path | None,
) -> Sample:
    sample = Sample(seed, [], [], [], [], [])

    def first(purpose: str, pool_size: int, k: int) -> list[int]:
        # A prefix of a seeded permutation (not random.sample, whose draws depend on k): a
        # smaller k is always a subset of a larger one, across separate calls too.
        order = list(range(pool_size))
        sample.rng(purpose).shuffle(order)
        return order[:k]

    sample.alpaca_idx = first("alpaca", len(pools.alpaca.records), n_alpaca)
    sample.safety_idx = first("safety", len(pools.safety.records), num_safety)
    doc_order = first("documents", len(pools.documents), max_n * len(tasks))
    # Round-robin over tasks keeps every prefix balanced: mix N uses the first 5N documents.
    refusals = pools.refusals
    refusal_rng = sample.rng("refusals")
    for pos, d in enumerate(doc_order):
        doc = pools.documents[d]
        if refusals.pool is not None:
            r_idx = refusal_rng.randrange(len(refusals.pool))
            refusal = refusals.pool[r_idx]
        else:
            r_idx, refusal = None, refusals.for_document(doc)
            if refusal is None:
                raise UserError(f"{refusals_path}: no refusal for document {doc.id!r}")
        t = get_task(tasks[pos % len(tasks)])
        text = doc.text.lower() if t.name == "case" else doc.text
        example = {"instruction": t.join(text), "input": "", "output": refusal}
        provenance = {
            "document_index": d,
            "document_id": doc.id,
            "task": t.name,
            "refusal_index": r_idx,
        }
        sample.plan.append((provenance, example))
    sample.base = [pools.alpaca.records[i] for i in sample.alpaca_idx] + [
        pools.safety.records[i] for i in sample.safety_idx
    ]
    sample.kinds = ["benign"] * len(sample.alpaca_idx) + ["safety"] * len(sample.safety_idx)
    return sample


def check_leakage(
    pools: Pools,
    plan: list[tuple[dict[str, Any], dict[str, Any]]],
    eval_dir: str | Path | None,
    allow_leakage: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(matches, what the manifest records of the check): an error on any match unless allowed."""
    if eval_dir is None or not plan:
        return [], {"checked": False}
    evaluation, files = eval_documents(eval_dir)
    leaks = find_leaks([pools.documents[p["document_index"]] for p, _ in plan], evaluation)
    leakage = {
        "checked": True,
        "eval_dir": str(Path(eval_dir).resolve()),
        "eval_files": files,
        "ngram": NGRAM,
        "jaccard_threshold": JACCARD_THRESHOLD,
    }
    if leaks and not allow_leakage:
        raise UserError(_leak_message(leaks))
    return leaks, leakage


def output_targets(
    out_dir: Path,
    task: str,
    ns: list[int],
    num_safety: int,
    format: str,
    inputs: list[str | Path | None],
    overwrite: bool,
) -> dict[int, Path]:
    """{N: file} to write; none may be an input or (without --overwrite) exist already."""
    names = {n: mixture_name(num_safety, n, task, format) for n in ns}
    if format == "prompts":
        names = {max(ns): names[max(ns)]}  # the largest N's prompts cover every smaller N
    targets = {n: out_dir / name for n, name in names.items()}
    given = {Path(p).resolve() for p in inputs if p is not None and Path(p).exists()}
    for path in targets.values():
        if {path.resolve(), manifest_path(path).resolve()} & given:
            raise UserError(f"{path}: is also an input of this build; choose another --output_dir")
        for p in (path, manifest_path(path)):
            if p.exists() and not overwrite:
                raise UserError(f"{p}: already exists (pass --overwrite to replace it)")
    return targets


def write_prompts(
    path: Path,
    sample: Sample,
    sources: dict[str, Any],
    task: str,
    max_n: int,
    num_safety: int,
    seed: int,
    flags: dict[str, Any],
) -> Path:
    """`--format prompts`: the safety and defense prompts of the largest N, as an eval file."""
    refuse = [r for r, k in zip(sample.base, sample.kinds, strict=True) if k == "safety"]
    refuse += [ex for _, ex in sample.plan]
    write_json(path, refusal_prompts(refuse))
    write_json(
        manifest_path(path),
        {
            "prompts": path.name,
            "num_records": len(refuse),
            "for": "generation/generate_answers.py, then --format dpo --rejected_path",
            "task": task,
            "num_defense": max_n,
            "num_safety": num_safety,
            "seed": seed,
            "sources": sources,
            "provenance": run_metadata(flags),
        },
    )
    logger.info("wrote %s (%d prompts to answer)", path, len(refuse))
    return path


FORMATS = ("sft", "dpo", "prompts")


def refusal_prompts(records: list[dict[str, str]]) -> dict[str, Any]:
    """The records whose target is a refusal, as an eval file (ids = a hash of the prompt)."""
    import hashlib

    ids = [
        hashlib.sha256(f"{r['instruction']}\x00{r['input']}".encode()).hexdigest()[:12]
        for r in records
    ]
    return {
        "instructions": [r["instruction"] for r in records],
        "inputs": [r["input"] for r in records],
        "ids": ids,
    }


def load_rejected(path: str | Path) -> dict[tuple[str, str], str]:
    """(instruction, input) -> the model's answer, from a generation output file (or any JSON
    with parallel `instructions`, `inputs`, `outputs` lists)."""
    from crossdefense.io import read_json

    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("outputs"), list):
        raise UserError(f"{path}: not a generation output file (no 'outputs' list)")
    instructions = data.get("instructions")
    outputs = data["outputs"]
    inputs = data.get("inputs") or [""] * len(outputs)
    if not isinstance(instructions, list) or not len(instructions) == len(inputs) == len(outputs):
        raise UserError(f"{path}: 'instructions', 'inputs' and 'outputs' differ in length")
    for key, values in (("instructions", instructions), ("inputs", inputs), ("outputs", outputs)):
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        if bad is not None:
            raise UserError(f"{path}: {key}[{bad}] is not a string")
    return {(i, x): o for i, x, o in zip(instructions, inputs, outputs, strict=True)}


def refusal_pool(refusals: Refusals | None, plan: list) -> list[str]:
    """Refusals to put on the rejected side of benign pairs: the pool, or the per-document
    refusals in use."""
    if refusals is not None and refusals.pool is not None:
        return refusals.pool
    pool = sorted({ex["output"] for _, ex in plan})
    if not pool:
        raise UserError("--format dpo needs refusals (--refusals_path) for the benign pairs")
    return pool


def preference_pairs(
    records: list[dict[str, str]],
    kinds: list[str],
    rejected: dict[tuple[str, str], str],
    pool: list[str],
    rng: random.Random,
    rejected_path: str | Path | None,
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """One pair per SFT record, in the same order:
    - a refusal target (defense document x task, or a safety instruction): chosen = the refusal,
      rejected = the model's own answer (on-policy); a pair whose answer is itself a refusal
      (keyword judge) teaches nothing and is dropped, and counted;
    - a benign record (Alpaca, or a benign document x task): chosen = its answer, rejected = a
      refusal from the pool (seeded)."""
    from crossdefense.judges import make_judge
    from crossdefense.metrics import REFUSAL

    missing = [
        r
        for r, k in zip(records, kinds, strict=True)
        if k != "benign" and (r["instruction"], r["input"]) not in rejected
    ]
    if missing:
        raise UserError(
            f"{rejected_path}: no answer for {len(missing)} refusal prompt(s), e.g. "
            f"{missing[0]['instruction'][:60]!r}...; answer the prompts file of the same "
            "mixture (--format prompts) with generation/generate_answers.py"
        )
    judge = make_judge("keyword")
    answers = [rejected.get((r["instruction"], r["input"]), "") for r in records]
    refused = [
        k != "benign" and (not a.strip() or v.label == REFUSAL)
        for k, a, v in zip(
            kinds,
            answers,
            judge.judge_batch(answers, [r["instruction"] for r in records], [None] * len(records)),
            strict=True,
        )
    ]
    pairs, counts = [], Counter()
    for r, k, answer, skip in zip(records, kinds, answers, refused, strict=True):
        if skip:
            counts[f"{k}_dropped_already_refused"] += 1
            continue
        if k == "benign":
            chosen, bad = r["output"], pool[rng.randrange(len(pool))]
        else:
            chosen, bad = r["output"], answer
        if chosen == bad:
            counts[f"{k}_dropped_same_text"] += 1
            continue
        pairs.append(
            {
                "instruction": r["instruction"],
                "input": r["input"],
                "chosen": chosen,
                "rejected": bad,
                "kind": k,
            }
        )
        counts[k] += 1
    if not pairs:
        raise UserError(f"{rejected_path}: every pair was dropped (the answers are all refusals)")
    return pairs, {
        "rejected_from": str(rejected_path),
        "rejected_sha256": sha256_file(rejected_path),
        **dict(sorted(counts.items())),
    }
