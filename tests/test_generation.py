"""Batched generation equals one-at-a-time generation; flags reach generate; resume works."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from crossdefense import UserError, modeling
from crossdefense.data import Record, read_eval_records
from crossdefense.generation import (
    DecodingConfig,
    expand_inputs,
    generate_records,
    group_prompts,
    plan_batches,
    shard,
    shared_layout,
)
from crossdefense.prompts import load_prompter
from crossdefense.tasks import TASKS, doc_kind
from tests.helpers import generate, write_eval


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


@pytest.fixture(scope="module")
def cross_task_records():
    """Three documents under every task, as upstream's five test_{task}.json files hold them."""
    docs = [
        "The school opened a garden where students grow tomatoes and beans. " * 4,
        "Heavy rain flooded several roads near the river on monday morning. " * 5,
        "A local bakery won a prize for its sourdough bread and rye rolls. " * 6,
    ]
    return [
        Record(f"{name}-{d}", task.join(doc))
        for name, task in TASKS.items()
        for d, doc in enumerate(docs)
    ]


def count_prefilled_tokens(model, monkeypatch) -> list[int]:
    """Patch the model so every forward call records how many new positions it computed."""
    seen: list[int] = []
    forward = model.forward

    @functools.wraps(forward)  # generate reads forward's signature to decide on position ids
    def counting(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen.append(ids.numel())
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    return seen


@pytest.mark.parametrize("num_beams", [1, 3])
def test_shared_prefixes_give_the_same_answers(model_and_tok, cross_task_records, num_beams):
    model, tok = model_and_tok
    cfg = DecodingConfig(max_new_tokens=10, num_beams=num_beams)
    shared = outputs(model, tok, cross_task_records, cfg, batch_size=15)
    rows = generate_records(
        model,
        tok,
        load_prompter("alpaca", tok),
        cross_task_records,
        cfg,
        15,
        progress=False,
        share_prefix=False,
    )
    plain = [(r["id"], r["output"], r["new_tokens"]) for r in rows]
    one = outputs(model, tok, cross_task_records, cfg, batch_size=1)
    assert shared == plain == one
    assert len({text for _, text, _ in shared}) > 1


def test_shared_prefixes_under_a_lora_adapter(tiny_model_dir, cross_task_records, monkeypatch):
    """The adapter wrapper (PeftModel) passes the precomputed cache through to the base model:
    same answers, fewer positions computed."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, lora).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompter = load_prompter("alpaca", tok)
    cfg = DecodingConfig(max_new_tokens=8, num_beams=2)
    seen = count_prefilled_tokens(base, monkeypatch)
    texts, computed = [], []
    for share in (True, False):
        seen.clear()
        rows = generate_records(
            model, tok, prompter, cross_task_records, cfg, 15, progress=False, share_prefix=share
        )
        texts.append([r["output"] for r in rows])
        computed.append(sum(seen))
    assert texts[0] == texts[1]
    assert computed[0] < computed[1] / 2


def test_a_shared_prefix_is_computed_once(model_and_tok, cross_task_records, monkeypatch):
    model, tok = model_and_tok
    prompter = load_prompter("alpaca", tok)
    cfg = DecodingConfig(max_new_tokens=1, num_beams=1)
    seen = count_prefilled_tokens(model, monkeypatch)
    rows = generate_records(model, tok, prompter, cross_task_records, cfg, 15, progress=False)
    shared = sum(seen)
    seen.clear()
    generate_records(
        model, tok, prompter, cross_task_records, cfg, 15, progress=False, share_prefix=False
    )
    padded = sum(seen)
    real = sum(r["prompt_tokens"] for r in rows)
    # the case task lower-cases nothing here, so each document is one group of five prompts
    assert shared < real / 2 < padded


def test_prompt_groups_and_batches():
    doc_a, doc_b = list(range(100, 140)), list(range(200, 230))
    prompts = [
        doc_a + [1, 2],
        [7, 8, 9],
        doc_b + [3],
        doc_a + [4, 5, 6],
        doc_b + [1, 2],
        doc_a[:10] + [9] * 40,  # shares a quarter with doc_a: no group
    ]
    groups = group_prompts(prompts)
    assert sorted(sorted(g) for g in groups) == [[0, 3], [1], [2, 4], [5]]
    for size in (1, 2, 3, 4):
        batches = plan_batches(prompts, size)
        assert all(sum(len(g) for g in b) <= size for b in batches)
        flat = sorted(i for b in batches for g in b for i in g)
        assert flat == list(range(len(prompts)))
    # whole groups stay together when they fit, longest first
    assert plan_batches(prompts, 4)[0] == [[5], [0, 3]]
    # without sharing: single prompts, longest first
    assert plan_batches(prompts, 4, share_prefix=False) == [[[5], [3], [0], [4]], [[2], [1]]]
    with pytest.raises(UserError, match="batch_size"):
        plan_batches(prompts, 0)


def test_shared_layout_rebuilds_every_prompt():
    header, doc_a, doc_b = [1, 2, 3], list(range(10, 30)), list(range(40, 55))
    groups = [
        [header + doc_a + [5, 6], header + doc_a + [7], header + doc_a + [5, 8, 9]],
        [header + doc_b + [5]],
    ]
    layout = shared_layout(groups, pad_id=0)
    assert layout.head.tolist() == [header]
    # group 0 shares doc_a; a one-prompt group keeps only its last token for generate
    assert layout.part_mask.sum(1).tolist() == [len(doc_a), len(doc_b)]
    assert layout.tail_mask.sum(1).tolist() == [2, 1, 3, 1]
    ids, mask = layout.inputs()
    flat = [p for g in groups for p in g]
    assert [row[m == 1].tolist() for row, m in zip(ids, mask, strict=True)] == flat
    assert mask[:, -1].tolist() == [1, 1, 1, 1]  # every prompt ends with a real token


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


run = generate


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
    # merging next to an unsharded run's files replaces neither its result nor its progress
    from crossdefense.shards import merge_shards

    whole.unlink()
    progress = whole.with_suffix(".jsonl").read_bytes()
    with pytest.raises(UserError, match=r"test_summarize\.jsonl exists; pass --overwrite"):
        merge_shards(str(tmp_path / "out" / "tiny"))
    assert whole.with_suffix(".jsonl").read_bytes() == progress and not whole.exists()
    (merged,) = merge_shards(str(tmp_path / "out" / "tiny"), overwrite=True)
    assert json.loads(merged.read_text())["outputs"] == w["outputs"]


def test_a_failed_run_leaves_no_folders_behind(tiny_model_dir, tmp_path):
    ev = write_eval(tmp_path / "test_summarize.json", n=2)
    deep = tmp_path / "new" / "deeper"
    for kw, match in (
        (dict(num_shards=2, shard_index=2), "shard"),
        (dict(cfg=DecodingConfig(max_new_tokens=2, num_beams=1, max_input_tokens=8)), "token"),
    ):
        with pytest.raises(UserError, match=match):
            run(tiny_model_dir, [ev], deep, **kw)
        assert not (tmp_path / "new").exists(), kw


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


def test_an_edited_adapter_config_or_model_file_invalidates_old_outputs(tiny_model_dir, tmp_path):
    import shutil

    from peft import LoraConfig, get_peft_model

    ev = write_eval(tmp_path / "test_case.json", n=2)
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    adapter = tmp_path / "adapter"
    torch.manual_seed(0)
    peft = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False),
    )
    peft.save_pretrained(adapter)
    kw = dict(lora_weights=str(adapter), skip_existing=True)
    run(model_dir, [ev], tmp_path / "out", **kw)
    run(model_dir, [ev], tmp_path / "out", **kw)  # unchanged: skipped, no error
    # lora_alpha scales the adapter's effect: the same weights now answer differently
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 400}))
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        run(model_dir, [ev], tmp_path / "out", **kw)
    run(model_dir, [ev], tmp_path / "out2", **kw)
    # a chat template (or any tokenizer file) saved beside the weights changes prompts too
    (model_dir / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        run(model_dir, [ev], tmp_path / "out2", **kw)


def test_a_torn_last_line_is_dropped_and_regenerated(tiny_model_dir, tmp_path, caplog, monkeypatch):
    ev = write_eval(tmp_path / "test_summarize.json", n=4)
    (final,) = run(tiny_model_dir, [ev], tmp_path / "out")
    whole = json.loads(final.read_text())
    jsonl = final.with_suffix(".jsonl")
    lines = jsonl.read_text().splitlines()
    # a kill in the middle of the third write: two whole lines and half of the third
    jsonl.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    final.unlink()
    with caplog.at_level("WARNING"):
        run(tiny_model_dir, [ev], tmp_path / "out")
    assert "dropped a torn last line" in caplog.text
    assert json.loads(final.read_text())["outputs"] == whole["outputs"]
    assert [json.loads(x)["id"] for x in jsonl.read_text().splitlines()] == [
        json.loads(x)["id"] for x in lines[:2]
    ] + [json.loads(x)["id"] for x in lines[2:]]
    # a corrupt line in the middle is not guessed at, and is found before the model loads
    jsonl.write_text(lines[0] + "\n{not json\n" + lines[1] + "\n")
    final.unlink()
    loads = []
    monkeypatch.setattr(modeling, "load_base_model", lambda *a, **k: loads.append(a))
    with pytest.raises(UserError, match=r"line 2 is not valid JSON"):
        run(tiny_model_dir, [ev], tmp_path / "out")
    assert loads == []


def test_an_edited_eval_file_never_keeps_old_answers(tiny_model_dir, tmp_path, caplog):
    ev = write_eval(tmp_path / "test_summarize.json", n=3)
    (final,) = run(tiny_model_dir, [ev], tmp_path / "out")
    before = json.loads(final.read_text())
    # the same ids (positions) now hold other documents
    data = json.loads(ev.read_text())
    data["instructions"][1] = TASKS["summarize"].join("The bakery won a prize for its bread.")
    ev.write_text(json.dumps(data))
    # skip_existing no longer skips: the eval file's content changed
    (again,) = run(tiny_model_dir, [ev], tmp_path / "out", skip_existing=True, overwrite=True)
    after = json.loads(again.read_text())
    assert after["metadata"]["eval_sha256"] != before["metadata"]["eval_sha256"]
    assert after["instructions"][1] != before["instructions"][1]
    # a crash then a re-run on the edited file: the changed record is regenerated, not reused
    jsonl = final.with_suffix(".jsonl")
    rows = [json.loads(x) for x in jsonl.read_text().splitlines()]
    data["instructions"][1] = TASKS["summarize"].join("Scientists measured the ocean for years.")
    ev.write_text(json.dumps(data))
    final.unlink()
    with caplog.at_level("WARNING"):
        run(tiny_model_dir, [ev], tmp_path / "out")
    assert "1 earlier answers belong to records that changed" in caplog.text
    new_rows = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert len(new_rows) == len(rows) + 1  # only record 1 was generated again
    fresh = outputs_for(tiny_model_dir, data["instructions"][1])
    assert json.loads(final.read_text())["outputs"][1] == fresh


def outputs_for(tiny_model_dir, instruction: str) -> str:
    """What the generator answers for one prompt alone (greedy, same settings as `run`)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        ev = Path(d) / "test_summarize.json"
        ev.write_text(json.dumps({"instructions": [instruction], "inputs": []}))
        (final,) = run(tiny_model_dir, [ev], Path(d) / "out")
        return json.loads(final.read_text())["outputs"][0]


@pytest.mark.parametrize("bad", ["../../x", "/tmp/abs", "a/b", ".hidden", "", True])
def test_run_names_cannot_leave_the_output_folder(tiny_model_dir, tmp_path, bad):
    ev = write_eval(tmp_path / "test_summarize.json", n=1)
    with pytest.raises(UserError, match="--run_name"):
        run(tiny_model_dir, [ev], tmp_path / "out", run_name=bad)
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_an_input_is_never_an_output_and_int_run_names_work(tiny_model_dir, tmp_path):
    (tmp_path / "out" / "tiny").mkdir(parents=True)
    ev = write_eval(tmp_path / "out" / "tiny" / "test_summarize.json", n=1)
    before = ev.read_bytes()
    with pytest.raises(UserError, match="is also this run's output"):
        run(tiny_model_dir, [ev], tmp_path / "out", overwrite=True)
    assert ev.read_bytes() == before
    (final,) = run(tiny_model_dir, [ev], tmp_path / "out", run_name=2024)  # fire's int
    assert final.parent.name == "2024"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a directory"):
        run(tiny_model_dir, [ev], tmp_path / "file")


def test_one_writer_per_run_folder(tiny_model_dir, tmp_path, caplog):
    import os
    import platform

    from crossdefense.io import LOCK_FILE

    ev = write_eval(tmp_path / "test_summarize.json", n=1)
    run_dir = tmp_path / "out" / "tiny"
    run_dir.mkdir(parents=True)
    lock = run_dir / LOCK_FILE
    # a live writer (this test process stands in for it): the second run stops, writes nothing
    lock.write_text(json.dumps({"pid": os.getpid(), "host": platform.node(), "started": "t"}))
    with pytest.raises(UserError, match="another generation is writing here"):
        run(tiny_model_dir, [ev], tmp_path / "out")
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]
    # a lock left by a dead process is reported and taken over; it is gone after the run
    dead = 2**22 + 12345
    lock.write_text(json.dumps({"pid": dead, "host": platform.node(), "started": "t"}))
    with caplog.at_level("WARNING"):
        (final,) = run(tiny_model_dir, [ev], tmp_path / "out")
    assert "stale lock of dead process" in caplog.text
    assert final.is_file() and not lock.exists()


def test_an_empty_lock_is_taken_over_and_symlinked_outputs_are_refused(tiny_model_dir, tmp_path):
    from crossdefense.io import LOCK_FILE

    ev = write_eval(tmp_path / "test_summarize.json", n=1)
    run_dir = tmp_path / "out" / "tiny"
    run_dir.mkdir(parents=True)
    (run_dir / LOCK_FILE).write_text("")  # killed between creating and filling the lock
    (final,) = run(tiny_model_dir, [ev], tmp_path / "out")
    assert final.is_file()
    outside = tmp_path / "victim.txt"
    outside.write_text("keep")
    final.unlink()
    final.with_suffix(".jsonl").unlink()
    final.with_suffix(".jsonl").symlink_to(outside)
    with pytest.raises(UserError, match="is a symbolic link"):
        run(tiny_model_dir, [ev], tmp_path / "out")
    assert outside.read_text() == "keep"


def test_overwrite_resumes_an_interrupted_run_and_replaces_finished_work(
    tiny_model_dir, tmp_path, caplog
):
    ev = write_eval(tmp_path / "test_summarize.json", n=4)
    (final,) = run(tiny_model_dir, [ev], tmp_path / "out")
    jsonl = final.with_suffix(".jsonl")
    lines = jsonl.read_text().splitlines()
    # interrupted (Ctrl-C) after two answers of a run started with --overwrite
    final.unlink()
    jsonl.write_text("\n".join(lines[:2]) + "\n")
    with caplog.at_level("INFO"):
        run(tiny_model_dir, [ev], tmp_path / "out", overwrite=True)
    assert "4 records, 2 already done" in caplog.text  # the same command resumes
    assert jsonl.read_text().splitlines()[:2] == lines[:2]
    # a finished output is replaced: nothing of it is reused
    caplog.clear()
    with caplog.at_level("INFO"):
        run(tiny_model_dir, [ev], tmp_path / "out", overwrite=True)
    assert "4 records, 0 already done" in caplog.text
    # progress made with other settings is replaced too (without --overwrite: refused)
    final.unlink()
    with pytest.raises(UserError, match="made with other settings"):
        run(tiny_model_dir, [ev], tmp_path / "out", cfg=DecodingConfig(max_new_tokens=3))
    caplog.clear()
    with caplog.at_level("INFO"):
        run(
            tiny_model_dir,
            [ev],
            tmp_path / "out",
            overwrite=True,
            cfg=DecodingConfig(max_new_tokens=3, num_beams=1),
        )
    assert "4 records, 0 already done" in caplog.text
    rows = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert len(rows) == 4 and len({r["config"] for r in rows}) == 1


def test_overwrite_of_an_older_output_resumes_after_an_interruption(
    tiny_model_dir, tmp_path, caplog
):
    ev = write_eval(tmp_path / "test_summarize.json", n=4)
    short = DecodingConfig(max_new_tokens=2, num_beams=1)
    (old,) = run(tiny_model_dir, [ev], tmp_path / "out", cfg=short)
    # an --overwrite run with other settings, interrupted after two answers: its progress
    # rows sit beside the older output (made here in another folder, then put in place)
    (new,) = run(tiny_model_dir, [ev], tmp_path / "elsewhere")
    rows = new.with_suffix(".jsonl").read_text().splitlines()
    old.with_suffix(".jsonl").write_text("\n".join(rows[:2]) + "\n")
    with caplog.at_level("INFO"):
        (final,) = run(tiny_model_dir, [ev], tmp_path / "out", overwrite=True)
    assert "4 records, 2 already done" in caplog.text  # the same command resumed
    assert json.loads(final.read_text())["outputs"] == json.loads(new.read_text())["outputs"]
    # a corrupt progress file is what --overwrite is for (the error line says so)
    final.unlink()
    old.with_suffix(".jsonl").write_text(rows[0] + "\n{not json\n" + rows[1] + "\n")
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        run(tiny_model_dir, [ev], tmp_path / "out")
    (final,) = run(tiny_model_dir, [ev], tmp_path / "out", overwrite=True)
    assert len(final.with_suffix(".jsonl").read_text().splitlines()) == 4


def test_an_interrupted_overwrite_leaves_no_old_result_looking_current(
    tiny_model_dir, tmp_path, monkeypatch
):
    import crossdefense.generation as generation

    ev = write_eval(tmp_path / "test_summarize.json", n=3)
    (old,) = run(tiny_model_dir, [ev], tmp_path / "out", cfg=DecodingConfig(max_new_tokens=2))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generation, "generate_records", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_model_dir, [ev], tmp_path / "out", overwrite=True)
    assert not old.exists()  # scoring cannot mistake the replaced output for this run's
