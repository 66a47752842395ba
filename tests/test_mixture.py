"""Defense-mixture builder: record shapes, counts, determinism, nesting, leakage, bad input."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from crossdefense import UserError
from crossdefense.extras import match_references
from crossdefense.io import sha256_file
from crossdefense.mixture import build_defense_data, normalize_grid
from crossdefense.paths import REPO_ROOT
from crossdefense.runs import manifest_path, mixture_name, parse_mixture_name
from crossdefense.tasks import TASKS, detect_task, split_prompt

REFUSALS = [f"I'm sorry, but I cannot help with that request ({i})." for i in range(5)]
_VOCAB = [f"w{i}" for i in range(300)]


def make_doc(i: int, n_words: int = 40) -> str:
    rng = random.Random(i)
    words = [rng.choice(_VOCAB) for _ in range(n_words)]
    return f"The Report {i} From Springfield: " + " ".join(words) + "."


def write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def pools(tmp_path: Path) -> dict[str, Path]:
    alpaca = [
        {"instruction": f"Alpaca task {i}", "input": "", "output": f"answer {i}"} for i in range(50)
    ]
    safety = [
        {"instruction": f"Unsafe request {i}", "input": "", "output": f"no {i}"} for i in range(30)
    ]
    docs = tmp_path / "documents.jsonl"
    docs.write_text(
        "".join(json.dumps({"id": f"doc-{i}", "text": make_doc(i)}) + "\n" for i in range(60)),
        encoding="utf-8",
    )
    return {
        "alpaca_path": write(tmp_path / "alpaca.json", alpaca),
        "safety_path": write(tmp_path / "safety.json", safety),
        "documents_path": docs,
        "refusals_path": write(tmp_path / "refusals.json", REFUSALS),
    }


def build(tmp_path: Path, pools: dict[str, Path], out: str = "out", **kw) -> list[Path]:
    args = dict(pools, alpaca_size=20, num_safety=5, output_dir=tmp_path / out)
    args.update(kw)
    return build_defense_data(**args)


def load(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def defense(records: list[dict]) -> list[dict]:
    return [r for r in records if detect_task(r["instruction"]) is not None]


def deterministic(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "provenance"}


def test_summarize_records_and_counts(tmp_path, pools):
    (path,) = build(tmp_path, pools, task="summarize", num_defense=10)
    assert path.name == "saferpaca_Instructions_5_10_summarize.json"
    records = load(path)
    assert len(records) == 20 + 5 + 10
    assert all(set(r) == {"instruction", "input", "output"} for r in records)
    dfs = defense(records)
    assert len(dfs) == 10
    docs = {make_doc(i) for i in range(60)}
    instruction = TASKS["summarize"].instruction
    for r in dfs:
        assert r["instruction"].endswith(instruction)
        assert r["instruction"][: -len(instruction)] in docs
        assert r["input"] == "" and r["output"] in REFUSALS
    assert sum(r["instruction"].startswith("Alpaca task") for r in records) == 20
    assert sum(r["instruction"].startswith("Unsafe request") for r in records) == 5
    manifest = json.loads(manifest_path(path).read_text(encoding="utf-8"))
    assert manifest["counts"] == {"alpaca": 20, "safety": 5, "defense": {"summarize": 10}}
    assert manifest["num_records"] == 35 and manifest["seed"] == 42
    assert len(manifest["sampled"]["alpaca"]) == 20 and len(manifest["sampled"]["safety"]) == 5
    assert [d["document_id"] for d in manifest["sampled"]["defense"]] == [
        f"doc-{d['document_index']}" for d in manifest["sampled"]["defense"]
    ]
    assert set(manifest["sources"]) == {"alpaca", "safety", "documents", "refusals"}
    assert manifest["sources"]["documents"]["records"] == 60
    assert manifest["leakage"] == {"checked": False, "matches": []}
    assert {"date", "git_hash", "host", "flags"} <= set(manifest["provenance"])
    assert manifest["mixture_sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    # upstream's layout: a JSON list, indented, not ASCII-escaped
    assert path.read_text(encoding="utf-8").startswith('[\n  {\n    "instruction"')


def test_mix_takes_n_per_task(tmp_path, pools):
    (path,) = build(tmp_path, pools, task="mix", num_defense=3)
    assert path.name == "saferpaca_Instructions_5_3_mix.json"
    dfs = defense(load(path))
    assert sorted(detect_task(r["instruction"]).name for r in dfs) == sorted(list(TASKS) * 3)
    documents = [split_prompt(r["instruction"])[0].lower() for r in dfs]
    assert len(set(documents)) == 15  # each document serves one task only
    manifest = json.loads(manifest_path(path).read_text(encoding="utf-8"))
    assert manifest["counts"]["defense"] == {t: 3 for t in TASKS}


def test_case_lower_cases_the_document(tmp_path, pools):
    (path,) = build(tmp_path, pools, task="case", num_defense=5)
    lowered = {make_doc(i).lower() for i in range(60)}
    for r in defense(load(path)):
        assert r["instruction"].endswith("\nWrite the above sentence using proper case.")
        document, _ = split_prompt(r["instruction"])
        assert document in lowered and document == document.lower()


def test_same_inputs_same_bytes_other_seed_differs(tmp_path, pools):
    (a,) = build(tmp_path, pools, "a", task="summarize", num_defense=10)
    (b,) = build(tmp_path, pools, "b", task="summarize", num_defense=10)
    (c,) = build(tmp_path, pools, "c", task="summarize", num_defense=10, seed=7)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    ma, mb = (json.loads(manifest_path(p).read_text(encoding="utf-8")) for p in (a, b))
    assert deterministic(ma) == deterministic(mb)


@pytest.mark.parametrize("task,grid", [("summarize", (2, 5, 10)), ("mix", "1,3")])
def test_grid_is_nested(tmp_path, pools, task, grid):
    paths = build(tmp_path, pools, task=task, grid=grid)
    assert len(paths) == len(normalize_grid(grid))
    sets = [load(p) for p in paths]
    base = [
        sorted(json.dumps(r) for r in recs if detect_task(r["instruction"]) is None)
        for recs in sets
    ]
    assert all(b == base[0] for b in base)  # identical Alpaca + safety sample
    dfs = [{json.dumps(r) for r in defense(recs)} for recs in sets]
    for small, large in zip(dfs[:-1], dfs[1:], strict=True):
        assert small < large
    # A grid member is byte-identical to building that N alone.
    (alone,) = build(tmp_path, pools, "alone", task=task, num_defense=normalize_grid(grid)[0])
    assert alone.read_bytes() == paths[0].read_bytes()


def test_grid_with_zero_builds_the_no_defense_baseline(tmp_path, pools):
    no_docs = {k: v for k, v in pools.items() if k in ("alpaca_path", "safety_path")}
    (path,) = build(tmp_path, no_docs, task="summarize", num_defense=0)
    assert path.name == "saferpaca_Instructions_5.json"
    assert len(load(path)) == 25 and not defense(load(path))


def test_normalize_grid():
    assert normalize_grid(10) == [10]
    assert normalize_grid((100, 10, 10)) == [10, 100]
    assert normalize_grid("10,100 500") == [10, 100, 500]
    assert normalize_grid("[2, 20]") == [2, 20]
    for bad in ("ten", -1, 1.5, True, ""):
        with pytest.raises(UserError, match="--grid"):
            normalize_grid(bad)


def test_alpaca_smaller_than_requested_uses_all(tmp_path, pools, caplog):
    (path,) = build(tmp_path, pools, task="summarize", num_defense=2, alpaca_size=1000)
    manifest = json.loads(manifest_path(path).read_text(encoding="utf-8"))
    assert manifest["alpaca_size"] == {"requested": 1000, "used": 50}
    assert manifest["counts"]["alpaca"] == 50
    assert "fewer than --alpaca_size=1000" in caplog.text


def test_per_document_refusals(tmp_path, pools):
    rows = [{"id": f"doc-{i}", "refusal": f"No, not document {i}."} for i in range(0, 60, 2)]
    rows += [{"document": make_doc(i), "output": f"No, not document {i}."} for i in range(1, 60, 2)]
    refusals = tmp_path / "per_doc.jsonl"
    refusals.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (path,) = build(tmp_path, dict(pools, refusals_path=refusals), task="cloze", num_defense=20)
    for r in defense(load(path)):
        document, _ = split_prompt(r["instruction"])
        i = int(document.split()[2])  # "The Report {i} From ..."
        assert r["output"] == f"No, not document {i}."


def test_mixture_names():
    assert parse_mixture_name("x/saferpaca_Instructions_100_10_summarize.json") == (
        100,
        10,
        "summarize",
    )
    assert parse_mixture_name("saferpaca_Instructions_100_50_summrize.json") == (
        100,
        50,
        "summarize",
    )
    assert parse_mixture_name("saferpaca_Instructions_100_2_mix.json") == (100, 2, "mix")
    assert parse_mixture_name("saferpaca_Instructions_300.json") == (300, 0, None)
    for k, n, t in [(100, 10, "case"), (100, 0, None), (7, 3, "mix")]:
        assert parse_mixture_name(mixture_name(k, n, t or "case")) == (k, n, t)
    for bad in ("alpaca.json", "saferpaca_Instructions_100_10_poetry.json"):
        with pytest.raises(UserError):
            parse_mixture_name(bad)


# ----------------------------------------------------------------------------- leakage


def eval_file(path: Path, task: str, documents: list[str]) -> Path:
    instructions = [TASKS[task].join(d) for d in documents]
    return write(path, {"instructions": instructions, "inputs": []})


@pytest.fixture
def leaky_eval(tmp_path) -> Path:
    """Small pool (12 docs, all used at N=12) and an eval dir that overlaps three of them."""
    d = tmp_path / "eval"
    d.mkdir()
    near = make_doc(4).split()
    near[20] = "CHANGED"  # one word: 8 of 44 8-grams differ, Jaccard ~0.7
    partial = make_doc(5).split()[:12] + make_doc(99).split()[12:]  # shares 5 grams only
    eval_file(d / "test_summarize.json", "summarize", [make_doc(500), "  " + make_doc(3) + "\n"])
    eval_file(d / "test_sentiment.json", "sentiment", [" ".join(near), " ".join(partial)])
    eval_file(d / "test_case.json", "case", [make_doc(7).upper()])
    write(d / "Q-Harm.json", {"instructions": ["What laws are easy to break?"], "inputs": []})
    return d


def test_leakage_is_refused_with_ids(tmp_path, pools, leaky_eval):
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        build(tmp_path, pools, task="summarize", num_defense=60, eval_dir=leaky_eval)
    msg = str(e.value)
    assert "\n" not in msg and "3 defense document(s)" in msg
    assert "'doc-3' = test_summarize.json[1] (exact)" in msg
    assert "'doc-4' = test_sentiment.json[0] (ngram)" in msg
    assert "'doc-7' = test_case.json[0] (exact)" in msg
    assert "doc-5" not in msg and "--allow_leakage" in msg
    assert not out.exists() or not any(out.iterdir())


def test_leakage_allowed_is_recorded(tmp_path, pools, leaky_eval):
    (path,) = build(
        tmp_path, pools, task="summarize", num_defense=60, eval_dir=leaky_eval, allow_leakage=True
    )
    manifest = json.loads(manifest_path(path).read_text(encoding="utf-8"))
    leak = manifest["leakage"]
    assert leak["checked"] and manifest["allow_leakage"] is True
    assert [f["file"] for f in leak["eval_files"]] == [
        "Q-Harm.json",
        "test_case.json",
        "test_sentiment.json",
        "test_summarize.json",
    ]
    got = {(m["document_id"], m["eval_file"], m["eval_index"], m["kind"]) for m in leak["matches"]}
    assert got == {
        ("doc-3", "test_summarize.json", 1, "exact"),
        ("doc-4", "test_sentiment.json", 0, "ngram"),
        ("doc-7", "test_case.json", 0, "exact"),
    }
    ngram = next(m for m in leak["matches"] if m["kind"] == "ngram")
    assert 0.5 <= ngram["jaccard"] < 1


def test_clean_leakage_check_records_files(tmp_path, pools, leaky_eval):
    docs = write(tmp_path / "clean.json", [{"id": i, "text": make_doc(i)} for i in range(10, 60)])
    kw = dict(pools, documents_path=docs)
    (path,) = build(tmp_path, kw, task="mix", num_defense=10, eval_dir=leaky_eval)
    manifest = json.loads(manifest_path(path).read_text(encoding="utf-8"))
    assert manifest["leakage"]["checked"] and manifest["leakage"]["matches"] == []
    assert len(manifest["leakage"]["eval_files"]) == 4


# ----------------------------------------------------------------------------- bad input


def _bad(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


BAD_CASES = {
    "unknown task": (dict(task="poetry", num_defense=2), "unknown task 'poetry'"),
    "N larger than pool": (
        dict(task="summarize", num_defense=61),
        "needs 61 documents, the pool has 60",
    ),
    "mix 5N larger than pool": (
        dict(task="mix", num_defense=13),
        "needs 65 documents (13 per task",
    ),
    "K larger than pool": (dict(task="summarize", num_defense=1, num_safety=31), "--num_safety=31"),
    "N and grid": (dict(task="summarize", num_defense=1, grid=(1, 2)), "exactly one of"),
    "neither N nor grid": (dict(task="summarize"), "exactly one of"),
    "negative N": (dict(task="summarize", num_defense=-1), "--num_defense"),
    "bad grid": (dict(task="summarize", grid="1,x"), "--grid"),
    "no documents": (
        dict(task="summarize", num_defense=1, documents_path=None),
        "--documents_path",
    ),
    "hub id offline": (
        dict(task="summarize", num_defense=1, alpaca_path="yahma/alpaca-cleaned"),
        "HF_HUB_OFFLINE",
    ),
    "missing file": (
        dict(task="summarize", num_defense=1, safety_path="nope/safety.json"),
        "file not found",
    ),
}
BAD_FILES = {
    "non-UTF-8": ("documents_path", "docs.json", b'["caf\xe9 text"]', "not UTF-8"),
    "malformed JSON": ("documents_path", "docs.json", b'["a", ', "malformed JSON"),
    "malformed JSONL": ("documents_path", "docs.jsonl", b'{"text": "a"}\n{oops\n', "line 2"),
    "empty pool": ("documents_path", "docs.json", b"[]", "no records"),
    "not a list": ("documents_path", "docs.json", b'{"text": "a"}', "expected a JSON list"),
    "document without text": (
        "documents_path",
        "docs.json",
        b'[{"id": 1, "body": "x"}]',
        "record 0: missing field 'text'",
    ),
    "document a number": (
        "documents_path",
        "docs.json",
        b'["ok", 3]',
        "record 1: expected a string or an object",
    ),
    "empty document": (
        "documents_path",
        "docs.json",
        b'["ok", "  "]',
        "record 1: document text is empty",
    ),
    "duplicate id": (
        "documents_path",
        "docs.json",
        b'[{"id": 1, "text": "a"}, {"id": 1, "text": "b"}]',
        "duplicate id '1'",
    ),
    "duplicate text": (
        "documents_path",
        "docs.json",
        b'["a  b", "a b"]',
        "record 1: same text as record 0",
    ),
    "safety missing output": (
        "safety_path",
        "s.json",
        b'[{"instruction": "x"}]',
        "record 0: missing field 'output'",
    ),
    "safety not an object": ("safety_path", "s.json", b'["x"]', "record 0: expected an object"),
    "alpaca input not a string": (
        "alpaca_path",
        "a.jsonl",
        b'{"instruction": "x", "input": 3, "output": "y"}\n',
        "field 'input' is not a string",
    ),
    "refusals mixed": (
        "refusals_path",
        "r.json",
        b'["no", {"refusal": "no"}]',
        "record 0: expected an object",
    ),
    "refusal without match key": (
        "refusals_path",
        "r.json",
        b'[{"refusal": "no"}]',
        "needs an 'id' or a 'document'",
    ),
    "per-document refusal missing": (
        "refusals_path",
        "r.json",
        b'[{"id": "zzz", "refusal": "no"}]',
        "no refusal for document",
    ),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_arguments(tmp_path, pools, case):
    kw, match = BAD_CASES[case]
    with pytest.raises(UserError, match=match.replace("(", r"\(")):
        build(tmp_path, pools, **kw)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files(tmp_path, pools, case):
    flag, name, content, match = BAD_FILES[case]
    path = _bad(tmp_path, name, content)
    with pytest.raises(UserError) as e:
        build(tmp_path, dict(pools, **{flag: path}), task="summarize", num_defense=1)
    assert match in str(e.value) and "\n" not in str(e.value)
    assert str(path) in str(e.value) or flag == "refusals_path"
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite(tmp_path, pools):
    (path,) = build(tmp_path, pools, task="summarize", grid=5)
    before = path.read_bytes()
    with pytest.raises(UserError, match="already exists"):
        build(tmp_path, pools, task="summarize", grid=(5, 10))
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, manifest_path(path).name]
    assert path.read_bytes() == before
    build(tmp_path, pools, task="summarize", grid=(5, 10), overwrite=True)
    assert len(list(path.parent.iterdir())) == 4


# ----------------------------------------------------------------------------- script


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "build_defense_data.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_script_builds_a_grid(tmp_path, pools):
    out = tmp_path / "script-out"
    flags = [f"--{k}={v}" for k, v in pools.items()]
    proc = run_script(
        "--task=translate",
        "--grid=2,4",
        "--alpaca_size=10",
        "--num_safety=3",
        f"--output_dir={out}",
        *flags,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.glob("*[0-9]_translate.json")) == [
        "saferpaca_Instructions_3_2_translate.json",
        "saferpaca_Instructions_3_4_translate.json",
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["--task=poetry", "--num_defense=1"],
        ["--task=summarize", "--num_defense=100"],
        ["--task=summarize", "--num_defense=1", "--alpaca_path=yahma/alpaca-cleaned"],
    ],
)
def test_script_bad_input_is_one_line(tmp_path, pools, args):
    out = tmp_path / "script-out"
    flags = [
        f"--{k}={v}"
        for k, v in pools.items()
        if not (k == "alpaca_path" and any("alpaca" in a for a in args))
    ]
    proc = run_script(*args, f"--output_dir={out}", *flags)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert not out.exists()


# ----------------------------------------------------------------------------- upstream data


def test_real_safety_pool_and_eval_files(tmp_path, pools, paper_data):
    safety = paper_data / "training" / "safety_only_data_Instructions.json"
    harmful = json.loads(
        (paper_data / "evaluation" / "test_sentiment.json").read_text(encoding="utf-8")
    )
    leaked, _ = split_prompt(harmful["instructions"][3])
    docs = tmp_path / "with_leak.json"
    write(docs, [make_doc(i) for i in range(20)] + [{"id": "leak", "text": leaked}])
    kw = dict(pools, safety_path=safety, documents_path=docs)
    with pytest.raises(UserError) as e:
        build(
            tmp_path,
            kw,
            task="case",
            num_defense=21,
            num_safety=100,
            eval_dir=paper_data / "evaluation",
        )
    # found in all five harmful files (case-insensitively in test_case.json), listed once
    assert "1 defense document(s)" in str(
        e.value
    ) and "'leak' = test_case.json[3] (exact) and 4 more" in str(e.value)

    write(docs, [make_doc(i) for i in range(20)])
    (path,) = build(
        tmp_path,
        kw,
        task="case",
        num_defense=20,
        num_safety=100,
        eval_dir=paper_data / "evaluation",
    )
    records = load(path)
    pool = {json.dumps(r, sort_keys=True) for r in json.loads(safety.read_text(encoding="utf-8"))}
    assert sum(json.dumps(r, sort_keys=True) in pool for r in records) == 100
    manifest = json.loads(manifest_path(path).read_text(encoding="utf-8"))
    expected = dict(
        line.split()[::-1]
        for line in (REPO_ROOT / "data" / "upstream_sha256.txt").read_text().splitlines()
    )
    assert (
        manifest["sources"]["safety"]["sha256"]
        == expected["training/safety_only_data_Instructions.json"]
    )
    assert manifest["sources"]["safety"]["records"] == 2483
    assert len(manifest["leakage"]["eval_files"]) == 22 and manifest["leakage"]["matches"] == []


def test_match_references():
    articles = ["(CNN) First  article text.", "Second article, much longer text here.", "Third."]
    highlights = ["h1", "h2", "h3"]
    assert match_references(
        ["(CNN) first article text.", "Second article, much"], articles, highlights
    ) == [
        "h1",
        "h2",
    ]
    with pytest.raises(UserError, match=r"documents \[0\]"):
        match_references(["Unknown article."], articles, highlights)


def fake_answers(prompts: Path, refuse_every: int = 4) -> Path:
    """A generation output for a prompts file: every `refuse_every`-th answer a refusal."""
    data = load(prompts)
    outputs = [
        REFUSALS[0] if i % refuse_every == 0 else f"Sure, here it is: {ins[:20]}"
        for i, ins in enumerate(data["instructions"])
    ]
    return write(prompts.with_name("answers.json"), {**data, "outputs": outputs})


def test_dpo_pairs_are_on_policy_deterministic_and_leakage_checked(tmp_path, pools, leaky_eval):
    (prompts,) = build(tmp_path, pools, task="summarize", grid="4,8", format="prompts")
    assert prompts.name == "saferpaca_Instructions_5_8_summarize.prompts.json"
    data = load(prompts)
    assert len(data["instructions"]) == 5 + 8  # safety + the largest N's defense prompts
    assert len(set(data["ids"])) == 13
    answers = fake_answers(prompts)
    paths = build(
        tmp_path, pools, task="summarize", grid="4,8", format="dpo", rejected_path=answers
    )
    assert [p.name for p in paths] == [
        "saferpaca_Instructions_5_4_summarize.dpo.json",
        "saferpaca_Instructions_5_8_summarize.dpo.json",
    ]
    pairs = load(paths[1])
    by_prompt = dict(zip(data["instructions"], load(answers)["outputs"], strict=True))
    kinds = Counter(p["kind"] for p in pairs)
    manifest = json.loads(manifest_path(paths[1]).read_text())
    counts = manifest["preference_pairs"]
    dropped = sum(v for k, v in counts.items() if k.endswith("already_refused"))
    assert dropped == sum(1 for i in range(13) if i % 4 == 0)  # answers that already refuse
    assert kinds["benign"] == 20 and kinds["safety"] + kinds["defense"] == 13 - dropped
    for p in pairs:
        assert set(p) == {"instruction", "input", "chosen", "rejected", "kind"}
        if p["kind"] == "benign":
            assert p["rejected"] in REFUSALS and p["chosen"].startswith("answer")
        else:
            assert p["rejected"] == by_prompt[p["instruction"]]  # the model's own answer
            assert p["chosen"] in REFUSALS or p["chosen"].startswith("no ")
    assert manifest["format"] == "dpo" and manifest["task"] == "summarize"
    assert counts["rejected_sha256"] == sha256_file(answers)  # which answers, by content
    # same inputs, same bytes
    again = build(
        tmp_path, pools, "again", task="summarize", grid="4,8", format="dpo", rejected_path=answers
    )
    assert again[1].read_bytes() == paths[1].read_bytes()
    # the leakage check runs for pairs too
    with pytest.raises(UserError, match="leak"):
        build(
            tmp_path,
            pools,
            "leak",
            task="summarize",
            num_defense=8,
            format="dpo",
            rejected_path=answers,
            eval_dir=leaky_eval,
        )


def test_dpo_format_errors(tmp_path, pools):
    with pytest.raises(UserError, match="--format dpo needs --rejected_path"):
        build(tmp_path, pools, task="summarize", num_defense=4, format="dpo")
    with pytest.raises(UserError, match="--format 'kto'"):
        build(tmp_path, pools, task="summarize", num_defense=4, format="kto")
    (prompts,) = build(tmp_path, pools, task="summarize", num_defense=2, format="prompts")
    answers = fake_answers(prompts)
    with pytest.raises(UserError, match="--rejected_path is read only with --format dpo"):
        build(
            tmp_path,
            pools,
            "p2",
            task="summarize",
            num_defense=2,
            format="prompts",
            rejected_path=answers,
        )
    with pytest.raises(UserError, match=r"no answer for \d+ refusal prompt"):
        build(tmp_path, pools, task="summarize", num_defense=8, format="dpo", rejected_path=answers)
    assert not (tmp_path / "out" / "saferpaca_Instructions_5_8_summarize.dpo.json").exists()


def test_a_second_builder_on_the_same_folder_is_refused(tmp_path, pools):
    from crossdefense.io import output_lock

    with (
        output_lock(tmp_path / "out", "mixture build"),  # another build, still writing
        pytest.raises(UserError, match="another mixture build is writing here"),
    ):
        build(tmp_path, pools, task="summarize", num_defense=2)
    (path,) = build(tmp_path, pools, task="summarize", num_defense=2)  # free again
    assert json.loads(manifest_path(path).read_text())["mixture_sha256"] == sha256_file(path)
