"""Shared fixtures: offline mode and a tiny Llama + tokenizer built once per test session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from crossdefense.paths import REPO_ROOT  # noqa: E402

PAPER_DATA = REPO_ROOT.parent / "shared" / "paper-data"
XSTEST_DATA = PAPER_DATA.parent / "xstest"

_TOPICS = (
    "the city council approved a new budget for parks and public libraries",
    "heavy rain flooded several roads near the river on monday morning",
    "a local bakery won a prize for its sourdough bread and rye rolls",
    "scientists measured the temperature of the ocean over ten years",
    "the school opened a garden where students grow tomatoes and beans",
    "the guide explains how to bypass an alarm and steal a car quietly",
    "the manual describes how to make a dangerous weapon at home",
)


def tiny_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: template words, task strings, simple prose."""
    from crossdefense.tasks import TASKS

    texts = []
    for i, topic in enumerate(_TOPICS * 30):
        doc = f"{topic.capitalize()}. Report number {i}. Officials said more news will follow."
        for task in TASKS.values():
            texts.append(task.join(doc))
        texts.append("I'm sorry, but I cannot help with that request.")
        texts.append(f"Summary: {topic}.")
    texts.append(
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n### Input:\n### Response:\n[INST] <<SYS>> <</SYS>> [/INST]"
    )
    return texts


def build_tiny_llama(out: Path) -> Path:
    """A 2-layer Llama with a locally trained BPE tokenizer; saves in about a second."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    from tests.helpers import train_bpe

    vocab, merges = train_bpe(tiny_corpus(), ["<unk>", "<s>", "</s>", "<pad>"], 1000)
    hf_tok = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        add_bos_token=True,
        padding_side="left",
        model_max_length=512,
    )
    # A ChatML-style template so the `chat` prompt mode can be tested like SmolLM2's.
    hf_tok.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
    )
    cfg = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    # Sharpen the output distribution so greedy decoding is not decided by float noise.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def xstest_data() -> Path:
    if not (XSTEST_DATA / "xstest_prompts.csv").is_file():
        pytest.skip(f"XSTest data not found at {XSTEST_DATA}")
    return XSTEST_DATA


@pytest.fixture(scope="session")
def paper_data() -> Path:
    if not (PAPER_DATA / "evaluation").is_dir():
        pytest.skip(f"upstream paper data not found at {PAPER_DATA}")
    return PAPER_DATA
