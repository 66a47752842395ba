"""Preference tuning (--method dpo) on the tiny model: pair encoding, the trainer, reloading."""

from __future__ import annotations

import json

import pytest
import torch

from crossdefense import UserError
from crossdefense.data import IGNORE_INDEX, Pair, encode, encode_pair, read_preference_records
from crossdefense.paths import REPO_ROOT
from crossdefense.prompts import load_prompter
from crossdefense.tasks import TASKS
from crossdefense.training import TrainConfig, train
from tests.helpers import run_script

REFUSAL = "I can't help with this document: it asks for harm."


def pairs_file(path, n: int = 8) -> str:
    rows = []
    for i in range(n):
        doc = f"Heavy rain flooded road {i} near the river on monday morning. " * (1 + i % 3)
        harmful = i % 2 == 0
        rows.append(
            {
                "instruction": TASKS["summarize"].join(doc),
                "input": "",
                "chosen": REFUSAL if harmful else f"Road {i} flooded on monday.",
                "rejected": f"Road {i} flooded on monday." if harmful else REFUSAL,
            }
        )
    path.write_text(json.dumps(rows))
    return str(path)


@pytest.fixture(scope="module")
def tok_prompter(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return tok, load_prompter("alpaca", tok)


def test_pair_masking_is_exactly_the_sft_encoding(tok_prompter):
    tok, prompter = tok_prompter
    pair = Pair("p", TASKS["summarize"].join("Rain flooded the road."), "", REFUSAL, "Rain fell.")
    enc = encode_pair(tok, prompter, pair, 256)
    for side, ids in (("chosen", enc.chosen_ids), ("rejected", enc.rejected_ids)):
        sft = encode(tok, prompter, pair.with_response(side), 256)
        assert enc.prompt_ids + ids == sft.input_ids
        # the response part is at least what SFT trains on (a boundary token may join it)
        n_labelled = sum(lab != IGNORE_INDEX for lab in sft.labels)
        assert len(ids) >= n_labelled and ids[-1] == tok.eos_token_id
    assert enc.doc_tokens_cut == 0


def test_long_pairs_cut_the_document_once_for_both_sides(tok_prompter):
    tok, prompter = tok_prompter
    doc = "The storm moved east over the hills and the valley. " * 40
    long_answer = "A storm crossed the hills. " * 8
    pair = Pair("p", TASKS["summarize"].join(doc), "", long_answer, REFUSAL)
    enc = encode_pair(tok, prompter, pair, 160)
    assert enc.doc_tokens_cut > 0
    assert len(enc.prompt_ids) + len(enc.chosen_ids) <= 160
    assert len(enc.prompt_ids) + len(enc.rejected_ids) <= 160
    prompt = tok.decode(enc.prompt_ids, skip_special_tokens=True)
    assert TASKS["summarize"].instruction in prompt  # the task instruction is never cut
    assert tok.decode(enc.rejected_ids, skip_special_tokens=True).strip().endswith("harm.")


def test_preference_files_are_validated(tmp_path):
    sft = tmp_path / "sft.json"
    sft.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}]))
    with pytest.raises(UserError, match="an SFT record; train it with --method sft"):
        read_preference_records(sft)
    same = tmp_path / "same.json"
    same.write_text(json.dumps([{"instruction": "a", "chosen": "b", "rejected": "b"}]))
    with pytest.raises(UserError, match="record 0: 'chosen' and 'rejected' are the same"):
        read_preference_records(same)
    assert len(read_preference_records(pairs_file(tmp_path / "ok.json"))) == 8


@pytest.fixture(scope="module")
def dpo_trained(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpo")
    cfg = TrainConfig(
        base_model=str(tiny_model_dir),
        data_path=pairs_file(tmp / "pairs.json"),
        output_dir=str(tmp / "ckpt"),
        batch_size=4,
        micro_batch_size=2,
        max_steps=2,
        val_set_size=0,
        learning_rate=1e-2,
        method="dpo",
        beta=0.2,
        logging_steps=1,
        group_by_length=True,  # the demo's setting: needs a length column
    )
    return cfg, train(cfg, {"note": "dpo test"})


def test_dpo_moves_lora_not_base_and_keeps_the_reference(dpo_trained, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    cfg, result = dpo_trained
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    moved = ref_zero = 0
    for name, param in result.model.named_parameters():
        if ".lora_B.default." in name:
            moved += bool(param.abs().sum() > 0)
        elif ".lora_B.ref." in name:
            # TRL's reference adapter is the LoRA's starting point (B = 0: the base model)
            ref_zero += bool(param.abs().sum() == 0)
            assert not param.requires_grad
        elif "lora_" not in name:
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(param.detach().cpu(), base[key]), f"base weight {key} changed"
    assert moved == 4 and ref_zero == 4


def test_dpo_adapter_reloads_and_records_its_method(dpo_trained, tiny_model_dir, tmp_path):
    from crossdefense.generation import DecodingConfig
    from crossdefense.scoring import score_paths
    from tests.helpers import generate, write_eval

    cfg, _ = dpo_trained
    out = cfg.output_dir
    from pathlib import Path

    ckpt = Path(out)
    assert not (ckpt / "ref").exists()  # the frozen reference copy is not saved
    saved = json.loads((ckpt / "adapter_config.json").read_text())
    assert saved["r"] == cfg.lora_r
    rc = json.loads((ckpt / "run_config.json").read_text())
    assert rc["method"]["name"] == "dpo" and rc["method"]["beta"] == 0.2
    assert rc["config"]["method"] == "dpo"
    logged = {k for h in rc["log_history"] for k in h}
    assert {"loss", "rewards/margins", "rewards/accuracies"} <= logged, logged
    [final] = generate(
        tiny_model_dir,
        [write_eval(tmp_path / "test_summarize.json", n=3)],
        tmp_path / "gen",
        lora_weights=str(ckpt),
        run_name="dpo",
        cfg=DecodingConfig(max_new_tokens=4, num_beams=1),
    )
    [res] = score_paths(str(final), tmp_path / "scores", "keyword")
    assert res["n"] == 3 and res["run"] == "dpo"


def test_dpo_cli_errors(tiny_model_dir, tmp_path):
    script = REPO_ROOT / "training" / "finetuning.py"
    sft = tmp_path / "sft.json"
    sft.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}]))
    for args, line in (
        (["--method", "ppo"], "error: --method 'ppo': expected one of sft, dpo"),
        (["--method", "dpo", "--beta", "0"], "error: --beta must be > 0"),
        (["--method", "dpo"], "an SFT record; train it with --method sft"),
    ):
        res = run_script(
            script,
            "--base_model",
            tiny_model_dir,
            "--data_path",
            sft,
            "--output_dir",
            tmp_path / "o",
            *args,
        )
        assert res.returncode == 1, res.stderr
        assert line in res.stderr.strip().splitlines()[-1]
        assert "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


def test_reference_log_probs_are_precomputed_when_pairs_repeat(tiny_model_dir, tmp_path):
    from crossdefense.training import training_arguments

    cfg = TrainConfig(
        base_model=str(tiny_model_dir),
        data_path=pairs_file(tmp_path / "pairs.json", n=4),
        output_dir=str(tmp_path / "ckpt"),
        batch_size=4,
        micro_batch_size=2,
        max_steps=2,  # 8 pairs seen of 4: twice each
        val_set_size=0,
        method="dpo",
    )
    assert training_arguments(cfg, False, n_train=4).precompute_ref_log_probs
    assert not training_arguments(cfg, False, n_train=16).precompute_ref_log_probs
    result = train(cfg)
    moved = [p for n, p in result.model.named_parameters() if ".lora_B.default." in n]
    assert moved and all(p.abs().sum() > 0 for p in moved)


def test_sft_weight_adds_the_chosen_nll_to_the_dpo_loss(tiny_model_dir, tmp_path):
    from crossdefense.training import method_facts, training_arguments

    cfg = TrainConfig(
        base_model=str(tiny_model_dir),
        data_path="x.json",
        output_dir=str(tmp_path / "o"),
        method="dpo",
        sft_weight=0.5,
    )
    args = training_arguments(cfg, False, n_train=100)
    assert args.loss_type == ["sigmoid", "sft"] and args.loss_weights == [1.0, 0.5]
    assert method_facts(cfg)["loss"] == "sigmoid (DPO) + 0.5 x NLL(chosen)"
    plain = training_arguments(TrainConfig(**{**vars(cfg), "sft_weight": 0.0}), False, 100)
    assert plain.loss_type == ["sigmoid"]


def test_generation_takes_the_base_model_from_the_adapter(dpo_trained, tiny_model_dir, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.helpers import write_eval

    cfg, _ = dpo_trained
    script = REPO_ROOT / "generation" / "generate_answers.py"
    evals = write_eval(tmp_path / "test_summarize.json", n=2)
    common = ["--input_path", evals, "--num_beams", "1", "--max_new_tokens", "2"]
    res = run_script(script, *common, "--lora_weights", cfg.output_dir, "--output_path", tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    [out] = tmp_path.glob("*/test_summarize.json")
    assert json.loads(out.read_text())["parameters"]["model"] == str(tiny_model_dir)
    # an adapter on a base model of another shape: one line, not a size-mismatch traceback
    other = tmp_path / "wider"
    shutil.copytree(tiny_model_dir, other)
    config = LlamaConfig.from_pretrained(other)
    config.hidden_size = 32  # q_proj and v_proj (the LoRA targets) change shape
    AutoModelForCausalLM.from_config(config).save_pretrained(other)
    res = run_script(
        script,
        *common,
        "--base_model",
        other,
        "--lora_weights",
        cfg.output_dir,
        "--output_path",
        tmp_path / "o2",
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "does not fit this base model" in res.stderr.strip().splitlines()[-1]
