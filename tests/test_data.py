"""Reading records, label masking and instruction-preserving truncation."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from crossdefense import UserError
from crossdefense.data import IGNORE_INDEX, Record, encode, read_eval_records, read_training_records
from crossdefense.prompts import load_prompter
from crossdefense.tasks import TASKS

REFUSAL = "I'm sorry, but I cannot help with that request."


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def doc(n: int) -> str:
    return " ".join(f"The city council approved budget number {i}." for i in range(n))


@pytest.mark.parametrize("template", ["alpaca", "llama2", "llama2_upstream", "chat"])
def test_mask_covers_exactly_the_prompt(tok, template):
    p = load_prompter(template, tok)
    rec = Record("r", TASKS["summarize"].join(doc(3)), "", REFUSAL)
    enc = encode(tok, p, rec, 512)
    n_prompt = len(tok(p.build(rec.instruction), add_special_tokens=not p.is_chat).input_ids)
    assert enc.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert IGNORE_INDEX not in enc.labels[n_prompt:]
    assert enc.labels[-1] == tok.eos_token_id
    answer = tok.decode(enc.labels[n_prompt:], skip_special_tokens=True)
    assert answer.strip() == REFUSAL


def test_train_on_inputs_labels_everything(tok):
    p = load_prompter("alpaca", tok)
    rec = Record("r", "Say hi.", "", "Hi.")
    enc = encode(tok, p, rec, 512, train_on_inputs=True)
    assert enc.labels == enc.input_ids


def test_add_eos_token_false(tok):
    p = load_prompter("alpaca", tok)
    enc = encode(tok, p, Record("r", "Say hi.", "", "Hi."), 512, add_eos_token=False)
    assert enc.input_ids[-1] != tok.eos_token_id


@pytest.mark.parametrize("task", list(TASKS))
def test_truncation_cuts_document_keeps_instruction_and_target(tok, task):
    p = load_prompter("alpaca", tok)
    rec = Record("r", TASKS[task].join(doc(40)), "", REFUSAL)
    full = encode(tok, p, rec, 4096)
    enc = encode(tok, p, rec, 120)
    assert len(enc.input_ids) <= 120 and len(full.input_ids) > 120
    assert enc.doc_tokens_cut > 0 and enc.target_tokens_cut == 0
    text = tok.decode(enc.input_ids, skip_special_tokens=True)
    assert TASKS[task].instruction.strip() in text
    assert text.endswith(REFUSAL)
    assert "budget number 0." in text and "budget number 39." not in text
    # generation prompts (no output) are cut the same way
    gen = encode(tok, p, Record("g", rec.instruction), 100)
    assert len(gen.input_ids) <= 100 and gen.labels is None
    assert tok.decode(gen.input_ids, skip_special_tokens=True).endswith("### Response:\n")


def test_truncation_cuts_the_input_field_when_no_task(tok):
    p = load_prompter("alpaca", tok)
    rec = Record("r", "Summarize this.", doc(40), "Short.")
    enc = encode(tok, p, rec, 100)
    text = tok.decode(enc.input_ids, skip_special_tokens=True)
    assert len(enc.input_ids) <= 100 and "### Instruction:\nSummarize this." in text
    assert text.endswith("Short.")


def test_cutoff_too_small_is_a_user_error(tok):
    p = load_prompter("alpaca", tok)
    with pytest.raises(UserError, match="record r: the prompt without its document"):
        encode(tok, p, Record("r", TASKS["cloze"].join(doc(5)), "", REFUSAL), 20)


def test_long_response_without_document_is_cut_at_its_end(tok):
    p = load_prompter("alpaca", tok)
    enc = encode(tok, p, Record("r", "Write.", "", doc(30)), 80)
    assert len(enc.input_ids) == 80 and enc.target_tokens_cut > 0
    assert enc.input_ids[-1] == tok.eos_token_id


def test_read_eval_upstream_schema_and_records(tmp_path):
    up = tmp_path / "up.json"
    up.write_text(json.dumps({"instructions": ["a", "b"], "inputs": []}))
    assert [(r.id, r.instruction, r.input) for r in read_eval_records(up)] == [
        ("0", "a", ""),
        ("1", "b", ""),
    ]
    up.write_text(json.dumps({"instructions": ["a"], "inputs": ["ctx"], "references": ["R"]}))
    (r,) = read_eval_records(up)
    assert (r.input, r.reference) == ("ctx", "R")
    recs = tmp_path / "recs.jsonl"
    recs.write_text('{"instruction": "x", "input": "y", "output": "z"}\n')
    assert read_eval_records(recs)[0].input == "y"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "malformed JSON"),
        (json.dumps({"instructions": ["a", "b"], "inputs": ["x"]}), "2 instructions but 1 inputs"),
        (json.dumps({"prompts": []}), "expected an 'instructions' list"),
        (json.dumps({"instructions": []}), "no records"),
        (json.dumps([1, 2]), "record 0: expected an object"),
    ],
)
def test_bad_eval_files(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=match):
        read_eval_records(path)


def test_bad_training_files(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    with pytest.raises(UserError, match="record 1: missing field 'output'"):
        read_training_records(path)
    path.write_bytes(b"\xff\xfe[]")
    with pytest.raises(UserError, match="not UTF-8"):
        read_training_records(path)
    with pytest.raises(UserError, match="file not found"):
        read_training_records(tmp_path / "missing.json")


def test_upstream_eval_files_all_load(paper_data):
    files = sorted((paper_data / "evaluation").glob("*.json"))
    assert len(files) == 22
    for f in files:
        records = read_eval_records(f)
        assert records and all(r.instruction for r in records)
