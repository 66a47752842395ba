"""LoRA training on the tiny model: weights that move, the checkpoint, the recorded config."""

from __future__ import annotations

import json

import pytest
import torch

from crossdefense import UserError
from crossdefense.io import sha256_file
from crossdefense.paths import REPO_ROOT
from crossdefense.training import TrainConfig, normalise_modules, train
from tests.helpers import write_mixture

CHECKPOINT_FILES = {
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "prompt_template.json",
    "run_config.json",
}


def config(tiny_model_dir, tmp_path, **kw) -> TrainConfig:
    data = write_mixture(tmp_path / "saferpaca_Instructions_3_6_summarize.json")
    base = dict(
        base_model=str(tiny_model_dir),
        data_path=str(data),
        output_dir=str(tmp_path / "ckpt"),
        batch_size=4,
        micro_batch_size=2,
        max_steps=2,
        val_set_size=0,
        learning_rate=1e-2,
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    cfg = config(tiny_model_dir, tmp)
    return cfg, train(cfg, {"note": "test"})


def test_two_steps_move_lora_and_not_base(trained, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    _, result = trained
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    lora_b = 0
    for name, param in result.model.named_parameters():
        if "lora_B" in name:
            lora_b += 1
            assert param.abs().sum() > 0, f"{name} did not move from its zero init"
        elif "lora_" not in name:
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(param.detach().cpu(), base[key]), f"base weight {key} changed"
    assert lora_b == 4  # q_proj and v_proj in 2 layers


def test_checkpoint_files_exact_and_reloadable(trained, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, result = trained
    assert {p.name for p in result.output_dir.iterdir()} == CHECKPOINT_FILES
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), result.output_dir
    ).eval()
    result.model.eval()
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, result.model(ids).logits, atol=1e-5)


def test_run_config_records_lineage(trained):
    cfg, result = trained
    rc = json.loads((result.output_dir / "run_config.json").read_text())
    assert rc["flags"] == {"note": "test"}
    assert rc["config"]["lora_target_modules"] == ["q_proj", "v_proj"]
    assert rc["train_data"]["sha256"] == sha256_file(cfg.data_path)
    assert (rc["train_data"]["task"], rc["train_data"]["num_defense"]) == ("summarize", 6)
    assert rc["train_data"]["n_records"] == 12
    assert rc["truncation"]["records"] == 12
    assert rc["effective_batch_size"] == 4 and rc["dtype"] == "float32"
    assert "transformers" in rc["versions"] and "date" in rc and "git_hash" in rc
    stored = json.loads((result.output_dir / "prompt_template.json").read_text())
    assert stored["name"] == "alpaca"


def test_truncation_stats_count_cut_documents(tiny_model_dir, tmp_path):
    cfg = config(tiny_model_dir, tmp_path, cutoff_len=96, max_steps=1, group_by_length=True)
    out = train(cfg).output_dir
    trunc = json.loads((out / "run_config.json").read_text())["truncation"]
    assert trunc["documents_cut"] == 12 and trunc["document_tokens_cut"] > 0
    assert trunc["targets_cut"] == 0


def test_resume_from_adapter_dir_starts_from_its_weights(trained, tiny_model_dir, tmp_path):
    _, first = trained
    cfg = config(
        tiny_model_dir,
        tmp_path,
        resume_from_checkpoint=str(first.output_dir),
        learning_rate=1e-12,  # one Adam step moves weights by ~lr: far inside allclose
        max_steps=1,
        lora_dropout=0.0,
    )
    result = train(cfg)
    before = {n: p for n, p in first.model.named_parameters() if "lora_" in n}
    for name, param in result.model.named_parameters():
        if "lora_" in name:
            assert torch.allclose(param.detach(), before[name].detach()), name


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"load_8bit": True, "load_4bit": True}, "exclusive"),
        ({"base_model": "./no/such/model"}, "base model directory not found"),
        ({"prompt_template_name": "nope"}, "unknown prompt template"),
        ({"batch_size": 6, "micro_batch_size": 4}, "not a multiple"),
        ({"val_set_size": 12}, "leaves no training records"),
        ({"val_set_size": -1}, "--val_set_size must be >= 0"),
        ({"learning_rate": 0.0}, "--learning_rate must be > 0"),
        ({"lora_r": 0}, "--lora_r must be an integer >= 1"),
        ({"lora_dropout": 1.0}, "--lora_dropout must be in"),
        ({"max_steps": 0}, "--max_steps must be > 0, or -1"),
        ({"max_steps": -1, "num_epochs": 0}, "--num_epochs must be > 0"),
        ({"learning_rate": "fast"}, "--learning_rate must be > 0"),
        ({"cutoff_len": 12}, "the prompt without its document"),
        ({"lora_target_modules": ("nope_proj",)}, "no module named nope_proj"),
    ],
)
def test_bad_training_input(tiny_model_dir, tmp_path, kw, match):
    with pytest.raises(UserError, match=match):
        train(config(tiny_model_dir, tmp_path, **kw))
    assert not (tmp_path / "ckpt" / "adapter_config.json").exists()


def test_existing_adapter_needs_overwrite(trained, tiny_model_dir, tmp_path):
    _, first = trained
    with pytest.raises(UserError, match="already holds an adapter"):
        train(config(tiny_model_dir, tmp_path, output_dir=str(first.output_dir)))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("q_proj", ("q_proj",)),
        (("q_proj", "v_proj"), ("q_proj", "v_proj")),
        ("[q_proj,v_proj]", ("q_proj", "v_proj")),
        (["k_proj"], ("k_proj",)),
    ],
)
def test_normalise_modules(value, expected):
    assert normalise_modules(value) == expected


def test_repo_root_is_the_checkout():
    assert (REPO_ROOT / "training" / "finetuning.py").is_file()


def test_response_only_loss_equals_the_model_loss(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq

    from crossdefense.data import Record, encode
    from crossdefense.prompts import load_prompter
    from crossdefense.training import response_only_loss

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    p = load_prompter("alpaca", tok)
    rows = []
    for i, out in enumerate(["Short.", "A much longer answer with many more words in it.", "Hi"]):
        enc = encode(tok, p, Record(str(i), "Say something " * (i * 3 + 1), "", out), 256)
        rows.append(
            {
                "input_ids": enc.input_ids,
                "attention_mask": [1] * len(enc.input_ids),
                "labels": enc.labels,
            }
        )
    batch = DataCollatorForSeq2Seq(tok, pad_to_multiple_of=8, return_tensors="pt")(rows)
    assert tok.padding_side == "left"
    with torch.no_grad():
        expected = model(**batch).loss
        got, out = response_only_loss(model, dict(batch))
        n = int((batch["labels"][:, 1:] != -100).sum())
        summed, _ = response_only_loss(model, dict(batch), num_items_in_batch=n * 2)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(summed, expected / 2, atol=1e-5)
    assert out.logits.shape[1] < batch["input_ids"].shape[1]  # logits only for the tail


def test_an_interrupted_run_is_not_silently_restarted(tiny_model_dir, tmp_path):
    (tmp_path / "ckpt" / "checkpoint-50").mkdir(parents=True)
    (tmp_path / "ckpt" / "checkpoint-50" / "trainer_state.json").write_text("{}")
    with pytest.raises(UserError, match="holds checkpoint-50 from an interrupted run"):
        train(config(tiny_model_dir, tmp_path))
    assert (tmp_path / "ckpt" / "checkpoint-50").is_dir()  # nothing deleted


def test_a_checkpoint_resumes_only_with_the_settings_it_was_made_with(
    tiny_model_dir, tmp_path, monkeypatch
):
    import crossdefense.training as training

    def crash(*args, **kwargs):
        raise RuntimeError("killed after the last checkpoint")

    cfg = config(tiny_model_dir, tmp_path, save_steps=1)
    monkeypatch.setattr(training, "save_run", crash)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg)
    monkeypatch.undo()
    ckpt = tmp_path / "ckpt" / "checkpoint-2"
    assert (ckpt / "trainer_state.json").is_file()
    assert (tmp_path / "ckpt" / training.TRAINING_STARTED).is_file()

    # another learning rate, seed or data: refused before the model loads
    for change, match in (
        (dict(learning_rate=5e-3), r"learning_rate: 0\.01 -> 0\.005"),
        (dict(data_path=str(write_mixture(tmp_path / "other.json", n=8))), "data changed"),
        (dict(seed=7), "seed: 42 -> 7"),
    ):
        with pytest.raises(UserError, match=match):
            train(config(tiny_model_dir, tmp_path, resume_from_checkpoint=str(ckpt), **change))
    assert ckpt.is_dir()  # nothing removed by a refused resume
    # a damaged checkpoint (a cut optimiser state) is named, not an anonymous OSError
    first = tmp_path / "ckpt" / "checkpoint-1"
    optimizer = first / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    with pytest.raises(UserError, match="checkpoint-1: cannot be read"):
        train(config(tiny_model_dir, tmp_path, save_steps=1, resume_from_checkpoint=str(first)))

    # the same settings with a longer budget resume (the data named another way is the same
    # data); the finished run leaves no marker behind
    same_data = tmp_path / "." / "saferpaca_Instructions_3_6_summarize.json"
    result = train(
        config(
            tiny_model_dir,
            tmp_path,
            save_steps=1,
            max_steps=3,
            resume_from_checkpoint=str(ckpt),
            data_path=str(same_data),
        )
    )
    run = json.loads((result.output_dir / "run_config.json").read_text())
    assert run["log_history"][-1]["step"] == 3
    assert {p.name for p in result.output_dir.iterdir()} == CHECKPOINT_FILES


def test_overwrite_removes_an_earlier_runs_checkpoints(tiny_model_dir, tmp_path):
    (tmp_path / "ckpt" / "checkpoint-50").mkdir(parents=True)
    (tmp_path / "ckpt" / "checkpoint-50" / "trainer_state.json").write_text("{}")
    result = train(config(tiny_model_dir, tmp_path, overwrite=True))
    assert {p.name for p in result.output_dir.iterdir()} == CHECKPOINT_FILES


def test_mistakes_that_would_replace_lose_or_leave_work(trained, tiny_model_dir, tmp_path):
    _, first = trained
    # a finished adapter is replaced only with --overwrite, whatever run would start there
    with pytest.raises(UserError, match="already holds an adapter; pass --overwrite"):
        train(
            config(
                tiny_model_dir,
                tmp_path,
                output_dir=str(first.output_dir),
                resume_from_checkpoint=str(first.output_dir),
            )
        )
    # the adapter may not land inside the base model's folder
    with pytest.raises(UserError, match="inside the base model's folder"):
        train(config(tiny_model_dir, tmp_path, output_dir=str(tiny_model_dir / "lora")))
    for seed in (-5, 2**40):
        with pytest.raises(UserError, match=r"--seed must be an integer in \[0, 2\*\*32\)"):
            train(config(tiny_model_dir, tmp_path, seed=seed))
    # checkpoints are listed in step order, and a failure before training touches none of
    # them and leaves no marker (here: more validation records than the data holds)
    out = tmp_path / "ckpt"
    for step in (9, 10, 11):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (out / "checkpoint-12").mkdir()  # a kill while it was being saved: not resumable
    with pytest.raises(UserError, match=r"pass --resume_from_checkpoint \S+checkpoint-11 "):
        train(config(tiny_model_dir, tmp_path))
    with pytest.raises(UserError, match="val_set_size"):
        train(config(tiny_model_dir, tmp_path, overwrite=True, val_set_size=500))
    assert sorted(p.name for p in out.iterdir()) == [f"checkpoint-{s}" for s in (10, 11, 12, 9)]
