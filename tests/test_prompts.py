"""Exact prompt strings for every template, and template resolution from any cwd."""

from __future__ import annotations

import json

import pytest

from crossdefense import UserError
from crossdefense.paths import CONFIGS_DIR
from crossdefense.prompts import (
    Prompter,
    all_template_names,
    load_prompter,
    load_template,
    save_prompter,
    stored_prompter,
)

EXPECTED = {
    ("alpaca", True): (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nDo X.\n\n### Input:\nSome text.\n\n### Response:\n"
    ),
    ("alpaca", False): (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nDo X.\n\n### Response:\n"
    ),
    ("llama2", True): (
        "[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nDo X.\n\nSome text. [/INST]"
    ),
    ("llama2", False): "[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nDo X. [/INST]",
    ("llama2_upstream", True): "<s>[INST] <<SYS>>\nDo X.\n<<SYS>>\n\nSome text. [/INST]",
    ("llama2_upstream", False): "[INST] <<SYS>>\nDo X.\n<<SYS>>\n\n[/INST]",
}


@pytest.mark.parametrize(("name", "with_input"), sorted(EXPECTED))
def test_exact_prompt(name, with_input):
    prompter = load_prompter(name)
    got = prompter.build("Do X.", "Some text." if with_input else "")
    assert got == EXPECTED[(name, with_input)]


def test_training_text_llama2_puts_one_space_after_inst():
    p = load_prompter("llama2")
    assert p.training_text(p.build("Do X."), "Sure.").endswith("[/INST] Sure.")
    up = load_prompter("llama2_upstream")
    assert up.training_text(up.build("Do X."), "Sure.").endswith("[/INST]Sure.")


def test_chat_mode_uses_tokenizer_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    p = load_prompter("chat", tok)
    assert p.build("Do X.", "Some text.") == "<s>user\nDo X.\n\nSome text.</s>\n<s>assistant\n"
    assert p.build("Do X.") == "<s>user\nDo X.</s>\n<s>assistant\n"


def test_chat_mode_without_chat_template_is_a_user_error(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    with pytest.raises(UserError, match="has none"):
        load_prompter("chat", tok).build("Do X.")


def test_every_config_loads():
    names = all_template_names()
    assert {"alpaca", "llama2", "llama2_upstream", "chat"} <= set(names)
    for path in CONFIGS_DIR.glob("*.json"):
        name, template = load_template(path)
        assert name == path.stem and template["description"]


def test_resolution_by_relative_path_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_prompter("./configs/alpaca.json").template == load_prompter("alpaca").template
    assert load_prompter("configs/llama2.json").name == "llama2"


def test_unknown_name_and_missing_key(tmp_path):
    with pytest.raises(UserError, match="unknown prompt template 'nope'"):
        load_prompter("nope")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"description": "x", "prompt_input": "{instruction} {input}"}))
    with pytest.raises(UserError, match="missing key.*prompt_no_input"):
        load_prompter(bad)


def test_stored_template_round_trip(tmp_path):
    p = load_prompter("llama2_upstream")
    save_prompter(p, tmp_path)
    back = stored_prompter(tmp_path)
    assert isinstance(back, Prompter) and back.name == "llama2_upstream"
    assert back.build("a", "b") == p.build("a", "b")
    assert stored_prompter(tmp_path / "nothing-here") is None
