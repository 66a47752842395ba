"""Capability regression through lm-evaluation-harness: the offline task on the tiny Llama,
base and LoRA runs, their pairing in the report, and bad input as one error line."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import pytest

from crossdefense import UserError
from crossdefense.capabilities import (
    DEFAULT_TASK,
    GENERATION_OUTPUTS,
    SECTION_TITLE,
    capabilities_markdown,
    capability_rows,
    default_run_name,
    evaluate_capabilities,
    flat_metrics,
    project_tasks,
    result_table,
    task_config,
)
from crossdefense.io import sha256_file
from crossdefense.modeling import adapter_sha256
from crossdefense.paths import REPO_ROOT
from tests.helpers import run_script

SCRIPT = REPO_ROOT / "scripts" / "eval_capabilities.py"
REPORT = REPO_ROOT / "scripts" / "report.py"
LIMIT = 8


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter with non-zero weights on the tiny model and a run_config.json as
    training writes it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapters") / "Instructions_4_8_summarize_tiny"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(out)
    run_config = {
        "train_data": {"task": "summarize", "num_defense": 8, "num_safety": 4},
        "config": {"seed": 7},
    }
    (out / "run_config.json").write_text(json.dumps(run_config))
    return out


@pytest.fixture(scope="module")
def runs(tiny_model_dir, adapter_dir, tmp_path_factory) -> dict:
    """The base run through the script from another directory (the task's relative data path
    must still resolve), the adapter run through the library."""
    out = tmp_path_factory.mktemp("capabilities")
    proc = run_script(
        SCRIPT,
        "--base_model",
        tiny_model_dir,
        "--limit",
        str(LIMIT),
        "--batch_size",
        "4",
        "--output_dir",
        out,
        "--run_name",
        "base",
        cwd=tmp_path_factory.mktemp("elsewhere"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    path, _ = evaluate_capabilities(
        str(tiny_model_dir),
        lora_weights=str(adapter_dir),
        output_dir=out,
        limit=LIMIT,
        batch_size=4,
        device="cpu",
    )
    return {"out": out, "stdout": proc.stdout, "base": out / "base.json", "adapter": path}


def test_base_and_adapter_runs_record_metrics_and_lineage(runs, tiny_model_dir, adapter_dir):
    base = json.loads(runs["base"].read_text())
    adapter = json.loads(runs["adapter"].read_text())
    assert runs["adapter"].name == f"{adapter_dir.name}.json"  # run name from the adapter dir
    for doc in (base, adapter):
        res = doc["results"][DEFAULT_TASK]
        assert 0 <= res["acc,none"] <= 1 and 0 <= res["acc_norm,none"] <= 1
        assert res["acc_stderr,none"] > 0
        assert doc["n_samples"][DEFAULT_TASK]["effective"] == LIMIT
        got = {m["metric"]: m for m in doc["metrics"]}
        assert got["acc"]["value"] == res["acc,none"] and got["acc"]["n"] == LIMIT
        assert got["acc_norm"]["stderr"] == res["acc_norm_stderr,none"]
        assert doc["base_model"] == str(Path(tiny_model_dir).resolve())
        assert doc["lm_eval_version"] == doc["metadata"]["versions"]["lm_eval"] == "0.4.13"
        assert {"git_hash", "date", "flags"} <= set(doc["metadata"])
        cfg = doc["configs"][DEFAULT_TASK]
        assert cfg["output_type"] == "multiple_choice"
        data = cfg["dataset_kwargs"]["data_files"]["test"]
        assert Path(data).is_absolute() and Path(data).is_file()
        assert doc["task_data"][DEFAULT_TASK] == {data: sha256_file(data)}
        assert (doc["limit"], doc["device"], doc["dtype"]) == (LIMIT, "cpu", "float32")
    assert base["lora_weights"] is None and base["adapter_sha256"] is None
    assert adapter["lora_weights"] == str(adapter_dir.resolve())
    assert adapter["adapter_sha256"] == adapter_sha256(str(adapter_dir))  # weights + config
    assert adapter["train"] == {
        "task": "summarize",
        "num_defense": 8,
        "num_safety": 4,
        "seed": 7,
        "method": "sft",
    }
    assert adapter["lm_eval_config"]["model_args"]["peft"] == str(adapter_dir.resolve())
    assert base["metadata"]["flags"]["limit"] == LIMIT  # the script's own flags
    # the script's table: one line per metric with value ± stderr and n
    lines = {ln.split()[1]: ln for ln in runs["stdout"].splitlines() if ln.startswith(DEFAULT_TASK)}
    acc = base["results"][DEFAULT_TASK]["acc,none"]
    assert f"{acc:.4f} ± " in lines["acc"] and lines["acc"].endswith(str(LIMIT))
    assert "acc_norm" in lines


def test_rows_pair_each_adapter_with_its_base_run(runs, tmp_path):
    base = json.loads(runs["base"].read_text())
    adapter = json.loads(runs["adapter"].read_text())
    # a base run with another limit must not be taken as the pair
    other = {**base, "run_name": "base-limit4", "limit": 4}
    (tmp_path / "base-limit4.json").write_text(json.dumps(other))
    rows = capability_rows(f"{runs['out']},{tmp_path / 'base-limit4.json'}")
    paired = [r for r in rows if r["adapter_run"] == adapter["run_name"]]
    assert {r["metric"] for r in paired} == {"acc", "acc_norm"}
    for r in paired:
        assert r["base_run"] == "base" and r["task"] == DEFAULT_TASK and r["n"] == LIMIT
        b = base["results"][DEFAULT_TASK]
        a = adapter["results"][DEFAULT_TASK]
        m = r["metric"]
        assert (r["base"], r["adapter"]) == (b[f"{m},none"], a[f"{m},none"])
        assert r["diff"] == pytest.approx(a[f"{m},none"] - b[f"{m},none"])
        se = math.sqrt(a[f"{m}_stderr,none"] ** 2 + b[f"{m}_stderr,none"] ** 2)
        assert r["diff_stderr"] == pytest.approx(se)
        assert (r["train_task"], r["num_defense"], r["seed"]) == ("summarize", 8, 7)
    # the unpaired base run is listed on its own
    alone = [r for r in rows if r["base_run"] == "base-limit4"]
    assert alone and all(r["adapter_run"] is None and r["diff"] is None for r in alone)
    md = capabilities_markdown(paired)
    assert md.startswith(f"## {SECTION_TITLE}")
    assert sum(ln.startswith(f"| {adapter['model_name']} |") for ln in md.splitlines()) == 2


def test_the_offline_task_data_is_well_formed():
    ours = project_tasks()
    assert set(ours) == {DEFAULT_TASK}
    cfg = task_config(ours[DEFAULT_TASK])
    assert cfg["dataset_path"] == "json" and cfg["output_type"] == "multiple_choice"
    assert {m["metric"] for m in cfg["metric_list"]} == {"acc", "acc_norm"}
    path = Path(cfg["dataset_kwargs"]["data_files"]["test"])
    assert path.is_absolute() and path.parent == REPO_ROOT / "data" / "mini"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 100
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["question"].strip().lower() for r in rows}) == len(rows)
    for r in rows:
        assert list(r) == ["id", "subject", "question", "choices", "answer"]
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4
        assert isinstance(r["answer"], int) and 0 <= r["answer"] < 4
    positions = Counter(r["answer"] for r in rows)
    assert max(positions.values()) - min(positions.values()) <= 1  # balanced answer positions
    assert len({r["subject"] for r in rows}) >= 6


def test_groups_report_their_aggregate_and_subtask_counts():
    def m(acc, se, name):
        return {"alias": name, "acc,none": acc, "acc_stderr,none": se}

    res = {
        "results": {
            "mmlu": m(0.5, 0.01, "mmlu"),
            "mmlu_stem": m(0.4, 0.02, " - stem"),
            "mmlu_anatomy": m(0.3, 0.05, "  - anatomy"),
            "mmlu_astronomy": m(0.6, 0.04, "  - astronomy"),
            "arc_easy": {"acc,none": 0.7, "acc_stderr,none": "N/A", "sample_len": 9},
        },
        "groups": {"mmlu": {}, "mmlu_stem": {}},
        "group_subtasks": {"mmlu_stem": ["mmlu_anatomy", "mmlu_astronomy"], "mmlu": ["mmlu_stem"]},
        "n-samples": {
            "mmlu_anatomy": {"original": 135, "effective": 135},
            "mmlu_astronomy": {"original": 152, "effective": 152},
            "arc_easy": {"original": 2376, "effective": 9},
        },
    }
    rows = {r["task"]: r for r in flat_metrics(res)}
    assert {t for t, r in rows.items() if r["top_level"]} == {"mmlu", "arc_easy"}
    assert rows["mmlu"]["n"] == rows["mmlu_stem"]["n"] == 287 and rows["arc_easy"]["n"] == 9
    assert rows["arc_easy"]["stderr"] is None and rows["mmlu"]["stderr"] == 0.01
    table = result_table(list(rows.values()))
    assert "mmlu_stem" not in table and "0.5000 ± 0.0100  287" in table


def test_default_run_names():
    assert default_run_name("org/Model-1B", None, [DEFAULT_TASK]) == "Model-1B"
    assert default_run_name("org/Model-1B", "/ckpt/run_a/", [DEFAULT_TASK]) == "run_a"
    assert default_run_name("/m/Model-1B", None, ["arc_easy", "mmlu"]) == "Model-1B_arc_easy-mmlu"


def test_bad_flags_are_one_error_line_before_any_model(runs, tiny_model_dir, tmp_path):
    def fails(*args: object) -> str:
        proc = run_script(SCRIPT, "--base_model", tiny_model_dir, *args, timeout=120)
        assert proc.returncode == 1, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and "Traceback" not in proc.stderr
        return lines[-1]

    missing = tmp_path / "no-such-adapter"
    assert "LoRA adapter directory not found" in fails("--lora_weights", missing)
    line = fails("--output_dir", runs["out"], "--run_name", "base", "--limit", LIMIT)
    assert "base.json: exists; pass --overwrite" in line
    line = fails("--tasks", "crossdefense_mcq", "--output_dir", tmp_path / "x")
    assert "unknown task crossdefense_mcq (did you mean crossdefense_mc" in line
    assert "lm-eval ls tasks --include_path" in line
    assert not (tmp_path / "x").exists()
    with pytest.raises(UserError, match="score_answers.py would read"):
        evaluate_capabilities(str(tiny_model_dir), output_dir=GENERATION_OUTPUTS / "caps")
    with pytest.raises(UserError, match="--run_name"):
        evaluate_capabilities(str(tiny_model_dir), output_dir=tmp_path, run_name="../up")
    assert not (GENERATION_OUTPUTS / "caps").exists()


def test_report_adds_the_capability_section_and_csv(runs, tmp_path):
    summary = tmp_path / "scores" / "summary.json"
    summary.parent.mkdir()
    result = {
        "run": "base",
        "eval_stem": "test_summarize",
        "model": "tiny-llama",
        "refusal_rate": 0.5,
        "n": 4,
        "refusals": 2,
        "eval_task": "summarize",
        "doc_kind": "harmful",
        "train_task": "none",
        "num_defense": 0,
        "judge": "keyword",
    }
    summary.write_text(json.dumps({"results": [result]}))
    out = tmp_path / "report"
    args = ["--summary_path", summary.parent, "--output_dir", out]
    proc = run_script(REPORT, *args, "--capabilities_path", runs["out"], timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "results.md").read_text()
    assert md.startswith("# Results") and f"## {SECTION_TITLE}" in md
    adapter = json.loads(runs["adapter"].read_text())["run_name"]
    assert any(ln.startswith("| ") and f"| {adapter} |" in ln for ln in md.splitlines())
    with open(out / "capabilities.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["adapter_run"], r["base_run"], r["metric"]) for r in rows} == {
        (adapter, "base", "acc"),
        (adapter, "base", "acc_norm"),
    }
    assert f"wrote {out / 'capabilities.csv'}" in proc.stdout
    # without the flag: the report as before, no section
    from crossdefense.report import make_report

    plain = tmp_path / "plain"
    written = make_report(str(summary.parent), plain)
    assert "capabilities.csv" not in {p.name for p in written}
    assert SECTION_TITLE not in (plain / "results.md").read_text()
    assert not (plain / "capabilities.csv").exists()
    # the same folder again without capabilities: the earlier report's csv does not linger
    make_report(str(summary.parent), out, overwrite=True)
    assert not (out / "capabilities.csv").exists()
    assert SECTION_TITLE not in (out / "results.md").read_text()
