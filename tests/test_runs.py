"""Every derived name has one home (crossdefense/runs.py) and its parser reads it back."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossdefense import runs
from crossdefense.tasks import TASK_NAMES


@pytest.mark.parametrize("task", [*TASK_NAMES, "mix"])
@pytest.mark.parametrize("seed", [None, 3])
@pytest.mark.parametrize(("method", "from_sft"), [("sft", False), ("dpo", False), ("dpo", True)])
def test_run_names_read_back_as_the_run_they_name(task, seed, method, from_sft):
    name = runs.run_name(100, 500, task, "llama2", seed=seed, method=method, from_sft=from_sft)
    assert runs.train_from_name(name) == {"task": task, "num_defense": 500, "num_safety": 100}
    assert name.startswith(f"Instructions_100_500_{task}_llama2")
    assert name.endswith(f"_seed{seed}" if seed is not None else ("_from_sft" if from_sft else ""))
    assert ("_dpo" in name) == (method == "dpo")


def test_the_no_defense_baseline_and_upstream_spellings():
    assert runs.run_name(100, 0, "summarize", "llama") == "Instructions_100_llama"
    assert runs.train_from_name("Instructions_100_llama") is None  # no defense: no task
    assert runs.train_from_name("lora-Instructions_100_50_summrize")["task"] == "summarize"
    assert runs.parse_mixture_name("saferpaca_Instructions_100_50_summrize.json")[2] == "summarize"
    for k, n, task in ((100, 0, None), (5, 40, "cloze"), (7, 3, "mix")):
        assert runs.parse_mixture_name(runs.mixture_name(k, n, task or "case")) == (k, n, task)


def test_mixture_and_its_manifest():
    assert runs.manifest_path("d/saferpaca_Instructions_5_8_summarize.dpo.json") == Path(
        "d/saferpaca_Instructions_5_8_summarize.dpo.manifest.json"
    )
    assert runs.manifest_path(Path("saferpaca_Instructions_5.json")).name == (
        "saferpaca_Instructions_5.manifest.json"
    )


def test_generation_outputs_and_shards_read_back():
    suffix = runs.shard_suffix(1, 4)
    paths = runs.output_paths("out", "run-a", Path("evals/test_cloze_cnn.json"), suffix)
    assert paths.final == Path("out/run-a/test_cloze_cnn.shard1-of-4.json")
    assert paths.jsonl == paths.final.with_suffix(".jsonl")
    assert runs.parse_shard_name(paths.final) == ("test_cloze_cnn", 1, 4)
    assert runs.is_shard(paths.final)
    unsplit = runs.output_paths("out", "run-a", "test_cloze.json", runs.shard_suffix(0, 1))
    assert unsplit.final == Path("out/run-a/test_cloze.json") and not runs.is_shard(unsplit.final)


def test_short_model_names():
    assert runs.short_model_name("meta-llama/Llama-2-7b-hf") == "Llama-2-7b-hf"
    assert runs.short_model_name("/models/smollm2/") == "smollm2"
    assert runs.short_model_name(None) is None
