"""Batched generation equals one-at-a-time generation; flags reach generate; resume works."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from crossdefense import UserError
from crossdefense.data import Record, read_eval_records
from crossdefense.generation import (
    DecodingConfig,
    expand_inputs,
    generate_records,
    run_generation,
    shard,
)
from crossdefense.prompts import load_prompter
from crossdefense.tasks import doc_kind
from tests.helpers import write_eval


@pytest.fixture(scope="module")
def model_and_tok(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, tok


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = write_eval(tmp_path_factory.mktemp("ev") / "test_summarize.json", n=7)
    return read_eval_records(path)


def outputs(model, tok, records, cfg, batch_size):
    rows = generate_records(
        model, tok, load_prompter("alpaca", tok), records, cfg, batch_size, progress=False
    )
    return [(row["id"], row["output"], row["new_tokens"]) for row in rows]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_equals_one_by_one(model_and_tok, records, num_beams):
    model, tok = model_and_tok
    cfg = DecodingConfig(max_new_tokens=12, num_beams=num_beams)
    one = outputs(model, tok, records, cfg, batch_size=1)
    batched = outputs(model, tok, records, cfg, batch_size=4)
    assert one == batched
    assert any(text for _, text, _ in one)


def test_max_new_tokens_and_sampling_flags_are_honoured(model_and_tok, records):
    model, tok = model_and_tok
    short = outputs(model, tok, records, DecodingConfig(max_new_tokens=3, num_beams=1), 4)
    assert max(n for _, _, n in short) <= 3
    sampled = DecodingConfig(
        max_new_tokens=10, num_beams=1, do_sample=True, temperature=5.0, top_k=0, top_p=1.0, seed=1
    )
    a = outputs(model, tok, records, sampled, 4)
    b = outputs(model, tok, records, sampled, 4)
    greedy = outputs(model, tok, records, DecodingConfig(max_new_tokens=10, num_beams=1), 4)
    assert a == b  # seeded
    assert a != greedy  # temperature 5 really samples


def test_input_field_reaches_the_prompt(model_and_tok):
    model, tok = model_and_tok
    cfg = DecodingConfig(max_new_tokens=2, num_beams=1)
    p = load_prompter("alpaca", tok)
    rows = generate_records(
        model,
        tok,
        p,
        [Record("a", "Do it."), Record("b", "Do it.", "ctx ctx")],
        cfg,
        2,
        progress=False,
    )
    assert rows[1]["prompt_tokens"] > rows[0]["prompt_tokens"]


def run(tiny_model_dir, inputs, out, **kw):
    args = dict(
        base_model=str(tiny_model_dir),
        lora_weights=None,
        input_paths=inputs,
        output_path=str(out),
        run_name="tiny",
        prompt_template=None,
        cfg=DecodingConfig(max_new_tokens=6, num_beams=1),
        batch_size=3,
        load_8bit=False,
        load_4bit=False,
        trust_remote_code=False,
        overwrite=False,
    )
    return run_generation(**{**args, **kw})


def test_output_shape_and_resume(tiny_model_dir, tmp_path):
    ev = write_eval(tmp_path / "test_summarize_cnn.json", n=5, inputs=True)
    (final,) = run(tiny_model_dir, [ev], tmp_path / "out")
    assert final == tmp_path / "out" / "tiny" / "test_summarize_cnn.json"
    doc = json.loads(final.read_text())
    assert set(doc) >= {"parameters", "inputs", "instructions", "outputs", "ids", "metadata"}
    assert doc["parameters"] == {
        "model": str(tiny_model_dir),
        "prompt_template": "alpaca",
        "lora_weights": None,
        "load_8bit": False,
    }
    assert doc["inputs"] == [f"context {i}" for i in range(5)] and len(doc["outputs"]) == 5
    meta = doc["metadata"]
    assert (meta["eval_task"], meta["doc_kind"], meta["train"]) == ("summarize", "cnn", None)

    # a crash after two records: the JSONL keeps them, the final JSON is not there yet
    jsonl = final.with_suffix(".jsonl")
    lines = jsonl.read_text().splitlines()
    jsonl.write_text("\n".join(lines[:2]) + "\n")
    final.unlink()
    run(tiny_model_dir, [ev], tmp_path / "out")
    again = json.loads(final.read_text())
    assert again["outputs"] == doc["outputs"]
    assert sorted(jsonl.read_text().splitlines()) == sorted(lines)

    with pytest.raises(UserError, match="exists; pass --overwrite"):
        run(tiny_model_dir, [ev], tmp_path / "out")
    final.unlink()
    with pytest.raises(UserError, match="other settings"):
        run(tiny_model_dir, [ev], tmp_path / "out", cfg=DecodingConfig(max_new_tokens=7))
    run(
        tiny_model_dir, [ev], tmp_path / "out", overwrite=True, cfg=DecodingConfig(max_new_tokens=7)
    )
    assert len(jsonl.read_text().splitlines()) == 5


def test_shards_merge_to_the_whole(tiny_model_dir, tmp_path):
    ev = write_eval(tmp_path / "test_summarize.json", n=7)
    (whole,) = run(tiny_model_dir, [ev], tmp_path / "out")
    outs = {}
    for i in range(3):
        (part,) = run(tiny_model_dir, [ev], tmp_path / "out", num_shards=3, shard_index=i)
        d = json.loads(part.read_text())
        outs.update(zip(d["ids"], d["outputs"], strict=True))
    w = json.loads(whole.read_text())
    assert [outs[i] for i in w["ids"]] == w["outputs"]


def test_bad_generation_input(tiny_model_dir, tmp_path):
    ev = write_eval(tmp_path / "test_summarize.json", n=2)
    with pytest.raises(UserError, match="no adapter files"):
        run(tiny_model_dir, [ev], tmp_path / "o", lora_weights=str(tmp_path))
    with pytest.raises(UserError, match="exclusive"):
        run(tiny_model_dir, [ev], tmp_path / "o", load_8bit=True, load_4bit=True)
    with pytest.raises(UserError, match="unknown prompt template"):
        run(tiny_model_dir, [ev], tmp_path / "o", prompt_template="nope")
    with pytest.raises(UserError, match="no evaluation files"):
        expand_inputs(str(tmp_path / "*.missing"))
    assert not (tmp_path / "o").exists()


def test_helpers():
    stems = ("test_case", "test_case_cnn", "test_cloze_useful", "I-CoNa", "mine")
    assert [doc_kind(s) for s in stems] == [
        "harmful",
        "cnn",
        "useful",
        "instructions",
        None,
    ]
    assert [r.id for r in shard([Record(str(i), "x") for i in range(5)], 2, 1)] == ["1", "3"]
    with pytest.raises(UserError):
        shard([], 2, 2)


def test_skip_existing_only_skips_outputs_made_the_same_way(tiny_model_dir, tmp_path):
    ev = write_eval(tmp_path / "test_cloze.json", n=2)
    (final,) = run(tiny_model_dir, [ev], tmp_path / "out")
    stamp = final.stat().st_mtime_ns
    assert run(tiny_model_dir, [ev], tmp_path / "out", skip_existing=True) == []
    assert final.stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        run(
            tiny_model_dir,
            [ev],
            tmp_path / "out",
            skip_existing=True,
            cfg=DecodingConfig(max_new_tokens=9),
        )


def test_a_retrained_adapter_invalidates_old_outputs(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    ev = write_eval(tmp_path / "test_case.json", n=2)
    adapter = tmp_path / "adapter"
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        peft = get_peft_model(
            model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
        )
        peft.save_pretrained(adapter)
        if seed == 0:
            run(tiny_model_dir, [ev], tmp_path / "out", lora_weights=str(adapter))
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        run(tiny_model_dir, [ev], tmp_path / "out", lora_weights=str(adapter), skip_existing=True)
