"""The self-authored mini dataset (data/mini/): schemas, counts, held-out eval documents,
non-operational harmful documents, and evaluation files that rebuild byte for byte."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from itertools import product
from pathlib import Path

import pytest

from crossdefense import UserError
from crossdefense.minidata import (
    BENIGN_FIELDS,
    DOCUMENTS_DIR,
    EVAL_SETS,
    HARMFUL_FIELDS,
    MINI_EVAL_DIR,
    SENTIMENTS,
    load_document_set,
    write_eval_files,
)
from crossdefense.paths import MINI_DATA_DIR, REPO_ROOT
from crossdefense.tasks import TASK_NAMES, TASKS, detect_task, split_prompt

COUNTS = {
    "harmful_train": 60,
    "harmful_eval": 24,
    "benign_train": 80,
    "news_eval": 24,
    "useful_eval": 24,
}
ID_PREFIXES = {
    "harmful_train": "htr",
    "harmful_eval": "hev",
    "benign_train": "btr",
    "news_eval": "nev",
    "useful_eval": "uev",
}
TRAIN_SETS = ("harmful_train", "benign_train")
EVAL_DOC_SETS = ("harmful_eval", "news_eval", "useful_eval")
CJK = re.compile(r"[\u4e00-\u9fff]")
# A cheap non-operational check: no quantities with units in harmful documents.
QUANTITY = re.compile(
    r"\d+(?:[.,]\d+)?\s?(?:g|mg|mcg|µg|ug|kg|grams?|kilos?|kilograms?|ml|l|litres?|liters?|oz|"
    r"ounces?|lbs?|pounds?|%|percent)\b",
    re.IGNORECASE,
)
# Words that would tie a refusal to one task; refusals must fit all five.
TASK_WORDS = re.compile(
    r"summar|translat|chinese|sentiment|proper case|capitali|next sentence|cloze|continu",
    re.IGNORECASE,
)
REFUSAL_OPENING = re.compile(
    r"^(i'm sorry|i'm really sorry|sorry|i can't|i cannot|i won't|i must|i'm not|i'm unable|"
    r"i'm afraid|i have to|i'll have to|i'd rather|unfortunately|my apologies|apologies|no,|this )",
    re.IGNORECASE,
)
WORDS_MIN, WORDS_MAX = 50, 110


def read_jsonl(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert all(line.strip() for line in lines), f"{path}: blank line"
    return [json.loads(line) for line in lines]


def n_words(text: str) -> int:
    return len(text.split())


def n_sentences(text: str) -> int:
    return len(re.findall(r"[.!?](?:\s|$)", text.strip()))


def grams8(text: str) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i : i + 8]) for i in range(len(words) - 7)}


@pytest.fixture(scope="module")
def docs() -> dict[str, list[dict]]:
    return {name: read_jsonl(DOCUMENTS_DIR / f"{name}.jsonl") for name in COUNTS}


# ----------------------------------------------------------------------------- documents


@pytest.mark.parametrize("name", COUNTS)
def test_document_set_schema_and_count(docs, name):
    rows = docs[name]
    assert len(rows) == COUNTS[name]
    fields = HARMFUL_FIELDS if name.startswith("harmful") else BENIGN_FIELDS
    prefix = ID_PREFIXES[name]
    for i, row in enumerate(rows, 1):
        assert tuple(row) == fields, row.get("id")
        assert all(isinstance(v, str) and v.strip() for v in row.values()), row["id"]
        assert row["id"] == f"{prefix}-{i:03d}"
        assert WORDS_MIN <= n_words(row["text"]) <= WORDS_MAX, (row["id"], n_words(row["text"]))
    assert load_document_set(name) == rows  # the module's validator accepts it too


def test_ids_and_texts_unique_across_sets(docs):
    rows = [r for name in COUNTS for r in docs[name]]
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({" ".join(r["text"].lower().split()) for r in rows}) == len(rows)


@pytest.mark.parametrize("name", ["benign_train", "news_eval", "useful_eval"])
def test_benign_references(docs, name):
    for row in docs[name]:
        assert row["kind"] in ("news", "useful")
        assert row["sentiment"] in SENTIMENTS
        assert 1 <= n_sentences(row["summary"]) <= 3, row["id"]
        assert n_words(row["summary"]) < n_words(row["text"]), row["id"]
        assert len(CJK.findall(row["translation_zh"])) > 40, row["id"]
        assert not re.search(r"[A-Za-z]{4,} [A-Za-z]{4,} [A-Za-z]{4,}", row["translation_zh"]), (
            f"{row['id']}: English left in the translation"
        )
        assert n_sentences(row["sentiment_answer"]) == 1, row["id"]
        assert n_sentences(row["next_sentence"]) >= 1, row["id"]
        assert row["next_sentence"] not in row["text"], row["id"]
    if name != "benign_train":
        kind = {"news_eval": "news", "useful_eval": "useful"}[name]
        assert {r["kind"] for r in docs[name]} == {kind}


def test_benign_train_is_varied(docs):
    """The miniature run's lesson: news-only benign training documents teach the model
    "news -> process, anything else -> refuse". Benign training documents must vary in style."""
    rows = docs["benign_train"]
    kinds = [r["kind"] for r in rows]
    assert kinds.count("useful") >= kinds.count("news") > 0
    assert len({r["style"] for r in rows}) >= 15
    assert {r["sentiment"] for r in rows} == set(SENTIMENTS)
    # the styles harmful documents use also occur with benign content
    for style in ("manual intro", "forum post", "chat log", "listicle intro", "pamphlet", "advert"):
        assert style in {r["style"] for r in rows}, style


def test_harmful_documents_are_non_operational(docs):
    for row in docs["harmful_train"] + docs["harmful_eval"]:
        m = QUANTITY.search(row["text"])
        assert m is None, f"{row['id']}: quantity {m.group(0)!r}"
        assert "```" not in row["text"] and "http" not in row["text"].lower(), row["id"]


def test_harmful_eval_topics_held_out(docs):
    train_topics = {r["topic"].lower() for r in docs["harmful_train"]}
    assert not train_topics & {r["topic"].lower() for r in docs["harmful_eval"]}
    assert len({r["style"] for r in docs["harmful_train"]}) >= 10


def test_train_and_eval_documents_disjoint(docs):
    train = [(r["id"], grams8(r["text"])) for name in TRAIN_SETS for r in docs[name]]
    held_out = [(r["id"], grams8(r["text"])) for name in EVAL_DOC_SETS for r in docs[name]]
    for (a, ga), (b, gb) in product(train, held_out):
        shared = len(ga & gb)
        jaccard = shared / len(ga | gb)
        assert jaccard < 0.5, (a, b, jaccard)  # the mixture builder's leakage threshold
        # Stricter: the documents were written independently, so any shared 8-word run is a copy.
        assert shared == 0, (a, b, shared)


def test_load_document_set_rejects_bad_records(tmp_path, docs):
    good = docs["news_eval"]

    def write(rows):
        (tmp_path / "news_eval.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )

    write([{**good[0], "sentiment": "happy"}])
    with pytest.raises(UserError, match="line 1: sentiment 'happy'"):
        load_document_set("news_eval", tmp_path)
    write([good[0], good[0]])
    with pytest.raises(UserError, match="line 2: duplicate id 'nev-001'"):
        load_document_set("news_eval", tmp_path)
    write([{k: v for k, v in good[0].items() if k != "summary"}])
    with pytest.raises(UserError, match="line 1: fields"):
        load_document_set("news_eval", tmp_path)
    write([{**good[0], "kind": "useful"}])
    with pytest.raises(UserError, match="holds only 'news'"):
        load_document_set("news_eval", tmp_path)


# ----------------------------------------------------------------------------- pools


def test_alpaca_and_safety_pools():
    alpaca = read_jsonl(MINI_DATA_DIR / "alpaca.jsonl")
    safety = read_jsonl(MINI_DATA_DIR / "safety.jsonl")
    assert len(alpaca) == 150 and len(safety) == 40
    for row in alpaca + safety:
        assert tuple(row) == ("instruction", "input", "output")
        assert all(isinstance(v, str) for v in row.values())
        assert row["instruction"].strip() and row["output"].strip()
    assert all(n_words(r["output"]) <= 60 for r in alpaca)
    assert sum(1 for r in alpaca if r["input"]) >= 30
    assert len({(r["instruction"], r["input"]) for r in alpaca}) == len(alpaca)
    assert all(r["input"] == "" for r in safety)
    assert len({r["instruction"] for r in safety}) == len(safety)
    for r in safety:
        assert REFUSAL_OPENING.match(r["output"]), f"not a refusal: {r['output']!r}"


def test_refusals():
    refusals = json.loads((MINI_DATA_DIR / "refusals.json").read_text(encoding="utf-8"))
    assert isinstance(refusals, list) and len(refusals) >= 24
    assert all(isinstance(r, str) and r.strip() for r in refusals)
    assert len(set(refusals)) == len(refusals)
    assert len({r.split()[0] for r in refusals}) >= 8, "openings should vary"
    for r in refusals:
        assert 1 <= n_sentences(r) <= 2, r
        assert not TASK_WORDS.search(r), f"refusal mentions a task: {r!r}"


# ----------------------------------------------------------------------------- eval files


@pytest.fixture(scope="module")
def eval_files() -> dict[str, dict]:
    files = sorted(MINI_EVAL_DIR.glob("*.json"))
    return {f.name: json.loads(f.read_text(encoding="utf-8")) for f in files}


def test_eval_file_set(eval_files):
    expected = {f"test_{t}{s}.json" for t in TASK_NAMES for s in EVAL_SETS}
    assert set(eval_files) == expected


@pytest.mark.parametrize(("task", "suffix"), list(product(TASK_NAMES, EVAL_SETS)))
def test_eval_file_content(eval_files, docs, task, suffix):
    data = eval_files[f"test_{task}{suffix}.json"]
    set_name = EVAL_SETS[suffix]
    harmful = set_name.startswith("harmful")
    assert list(data) == ["instructions", "inputs", "ids"] + ([] if harmful else ["references"])
    assert data["inputs"] == []
    rows = docs[set_name]
    assert data["ids"] == [r["id"] for r in rows]
    assert len(data["instructions"]) == len(rows)
    for prompt, row in zip(data["instructions"], rows, strict=True):
        assert prompt.endswith(TASKS[task].instruction)
        assert detect_task(prompt) is TASKS[task]
        document, suffix_text = split_prompt(prompt)
        assert suffix_text == TASKS[task].separator + TASKS[task].instruction
        if task == "case":
            assert document == row["text"].lower()
            assert document == document.lower()
        else:
            assert document == row["text"]
    if harmful:
        return
    refs = data["references"]
    assert len(refs) == len(data["instructions"])
    assert all(isinstance(r, str) and r.strip() for r in refs)
    if task == "case":
        assert refs == [r["text"] for r in rows]
        assert all(r != r.lower() for r in refs)
    elif task == "translate":
        assert all(CJK.search(r) for r in refs)
    elif task == "sentiment":
        assert set(refs) <= set(SENTIMENTS)
    elif task == "summarize":
        assert refs == [r["summary"] for r in rows]
    elif task == "cloze":
        assert refs == [r["next_sentence"] for r in rows]


def test_builder_reproduces_committed_files(tmp_path):
    paths = write_eval_files(tmp_path)
    assert {p.name for p in paths} == {p.name for p in MINI_EVAL_DIR.glob("*.json")}
    for p in paths:
        assert p.read_bytes() == (MINI_EVAL_DIR / p.name).read_bytes(), p.name
        assert p.read_bytes().endswith(b"\n")


def test_script_writes_same_files(tmp_path):
    out = tmp_path / "ev"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "build_mini_eval.py"), f"--output_dir={out}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in MINI_EVAL_DIR.glob("*"))
    for p in out.iterdir():
        assert p.read_bytes() == (MINI_EVAL_DIR / p.name).read_bytes(), p.name


def test_bad_document_set_writes_nothing(tmp_path):
    docs_dir = tmp_path / "documents"
    docs_dir.mkdir()
    for name in EVAL_SETS.values():
        (docs_dir / f"{name}.jsonl").write_bytes((DOCUMENTS_DIR / f"{name}.jsonl").read_bytes())
    (docs_dir / "useful_eval.jsonl").write_text("{not json\n", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(UserError, match="useful_eval.jsonl: malformed JSON on line 1"):
        write_eval_files(out, docs_dir)
    assert not out.exists(), "nothing may be written when a document set is invalid"
