"""Ordinary mistakes found by an adversarial pass: each is one clear UserError, before any work."""

from __future__ import annotations

import json
import subprocess

import pytest

from crossdefense import UserError
from crossdefense.paths import REPO_ROOT


def test_eval_files_with_bad_references_or_duplicate_ids(tmp_path):
    from crossdefense.data import read_eval_records

    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"instructions": ["a", "b"], "references": 5}))
    with pytest.raises(UserError, match="'references' must be a list of strings"):
        read_eval_records(refs)
    dup = tmp_path / "dup.jsonl"
    dup.write_text("".join(json.dumps({"id": "a", "instruction": x}) + "\n" for x in "xy"))
    with pytest.raises(UserError, match="duplicate ids"):
        read_eval_records(dup)


def test_xstest_csv_saved_with_a_bom_is_read(tmp_path):
    from crossdefense.xstest import read_prompts

    path = tmp_path / "x.csv"
    path.write_bytes("\ufeffid,prompt,type,label\n1,hi,homonyms,safe\n".encode())
    assert read_prompts(path)[0]["id"] == "1"


def test_report_and_capability_inputs_of_the_wrong_shape(tmp_path):
    from crossdefense.capabilities import KIND, load_capabilities
    from crossdefense.report import load_results

    bad = tmp_path / "summary.json"
    bad.write_text(json.dumps({"results": [1, 2]}))
    with pytest.raises(UserError, match=r"results\[0\] is not an object"):
        load_results([bad])
    cap = tmp_path / "cap.json"
    cap.write_text(json.dumps({"kind": KIND, "base_model": "m", "metrics": ["acc"]}))
    with pytest.raises(UserError, match=r"metrics\[0\] is not an object"):
        load_capabilities([cap])


def test_rejected_answers_must_be_text_and_never_an_output(tmp_path):
    from crossdefense.mixture import build_defense_data, load_rejected

    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({"instructions": ["a"], "inputs": [""], "outputs": [None]}))
    with pytest.raises(UserError, match=r"outputs\[0\] is not a string"):
        load_rejected(answers)
    target = tmp_path / "saferpaca_Instructions_1_1_summarize.dpo.json"
    target.write_text(json.dumps({"instructions": ["a"], "inputs": [""], "outputs": ["b"]}))
    pool = tmp_path / "alpaca.json"
    pool.write_text(json.dumps([{"instruction": "i", "input": "", "output": "o"}]))
    safety = tmp_path / "safety.json"
    safety.write_text(json.dumps([{"instruction": "s", "input": "", "output": "no"}]))
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"id": "d", "text": "A long harmful document."}) + "\n")
    refusals = tmp_path / "refusals.json"
    refusals.write_text(json.dumps(["I can't help."]))
    with pytest.raises(UserError, match="is also an input of this build"):
        build_defense_data(
            task="summarize",
            num_defense=1,
            alpaca_path=pool,
            alpaca_size=1,
            safety_path=safety,
            num_safety=1,
            documents_path=docs,
            refusals_path=refusals,
            output_dir=tmp_path,
            format="dpo",
            rejected_path=target,
            overwrite=True,
        )


def test_a_lock_file_that_is_not_an_object_is_taken_over(tmp_path):
    from crossdefense.io import LOCK_FILE, live_writer, output_lock

    (tmp_path / LOCK_FILE).write_text("[1]")
    assert live_writer(tmp_path) is None
    with output_lock(tmp_path, "test"):
        pass
    assert not (tmp_path / LOCK_FILE).exists()


def test_generation_refuses_inputs_sharing_a_name_and_a_bad_batch_size(tiny_model_dir, tmp_path):
    from crossdefense.generation import DecodingConfig, run_generation
    from tests.helpers import write_eval

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one, two = write_eval(tmp_path / "a" / "x.json"), write_eval(tmp_path / "b" / "x.json")
    args = dict(
        base_model=str(tiny_model_dir),
        lora_weights=None,
        output_path=str(tmp_path / "out"),
        run_name="r",
        prompt_template=None,
        cfg=DecodingConfig(max_new_tokens=2, num_beams=1),
        load_8bit=False,
        load_4bit=False,
        trust_remote_code=False,
        overwrite=False,
    )
    with pytest.raises(UserError, match="have the same name"):
        run_generation(input_paths=[one, two], batch_size=2, **args)
    with pytest.raises(UserError, match="--batch_size must be >= 1"):
        run_generation(input_paths=[one], batch_size=0, **args)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "r").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="run folder is a symbolic link"):
        run_generation(input_paths=[one], batch_size=2, **args)
    assert not list((tmp_path / "elsewhere").iterdir())


def test_training_flags_checked_before_a_model_loads(tmp_path):
    from crossdefense.training import TrainConfig, validate

    (tmp_path / "config.json").write_text("{}")  # a folder that passes the base-model check
    base = dict(base_model=str(tmp_path), data_path="x.json", output_dir=str(tmp_path / "o"))
    with pytest.raises(UserError, match="--logging_steps must be >= 1"):
        validate(TrainConfig(**base, logging_steps=0))
    with pytest.raises(UserError, match="unknown tracker 'nosuch'"):
        validate(TrainConfig(**base, report_to="nosuch"))


def test_capability_device_is_checked(tmp_path):
    from crossdefense.capabilities import _device_dtype

    with pytest.raises(UserError, match="--device 'banana'"):
        _device_dtype("banana")
    assert _device_dtype("cpu") == ("cpu", "float32")


@pytest.mark.parametrize("arg", ["--dest=", "--dest=--no_xstest", "--xstest_source="])
def test_download_flag_values_that_are_not_folders(tmp_path, arg):
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "download_data.sh"), arg, "--no_xstest"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: {arg.split('=')[0]} needs a directory"]
    assert not list(tmp_path.iterdir())


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody may write into: mode 555 (ignored by root, so as root a sysfs path,
    which refuses even root)."""
    from pathlib import Path

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").mkdir()
    except OSError:
        yield ro / "out"
        ro.chmod(0o755)
        return
    (ro / "probe").rmdir()
    ro.chmod(0o755)
    try:
        (Path("/sys") / "crossdefense-probe").mkdir()
    except OSError:
        yield Path("/sys") / "crossdefense-out"
        return
    pytest.skip("no read-only folder here (root, and /sys is writable)")


def test_an_unwritable_output_folder_is_one_line_and_nothing_is_half_written(
    tiny_model_dir, tmp_path, read_only_dir
):
    from tests.helpers import run_script, write_eval, write_mixture

    ev = write_eval(tmp_path / "test_summarize.json", n=2)
    data = write_mixture(tmp_path / "mix.json")
    mini = REPO_ROOT / "data" / "mini"
    commands = {
        "generation": [
            REPO_ROOT / "generation" / "generate_answers.py",
            "--input_path", ev, "--base_model", tiny_model_dir, "--output_path", read_only_dir,
        ],
        "training": [
            REPO_ROOT / "training" / "finetuning.py",
            "--base_model", tiny_model_dir, "--data_path", data, "--output_dir", read_only_dir,
            "--max_steps", "1", "--val_set_size", "0",
        ],
        "mixture": [
            REPO_ROOT / "scripts" / "build_defense_data.py",
            "--task", "summarize", "--num_defense", "2", "--num_safety", "2",
            "--alpaca_path", mini / "alpaca.jsonl", "--safety_path", mini / "safety.jsonl",
            "--documents_path", mini / "documents" / "harmful_train.jsonl",
            "--refusals_path", mini / "refusals.json", "--output_dir", read_only_dir,
        ],
    }  # fmt: skip
    for what, argv in commands.items():
        res = run_script(*argv, cwd=tmp_path)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1, (what, res.stderr[-1500:])
        assert lines[-1].startswith("error: ") and str(read_only_dir) in lines[-1], what
        assert "Traceback" not in res.stderr, what
        assert not read_only_dir.exists(), what


def test_comparing_a_run_with_itself_a_directory_target_and_repeated_seeds(tmp_path):
    from crossdefense.capabilities import check_output
    from crossdefense.cli import as_ints
    from crossdefense.demo import DemoConfig, validate
    from crossdefense.scoring import compare_runs

    rows = [{"run": "a", "eval_stem": "t", "id": "0", "refusal_label": "refusal"}]
    with pytest.raises(UserError, match="both 'a': compare two different runs"):
        compare_runs(rows, "a", "a")
    (tmp_path / "base.json").mkdir()
    with pytest.raises(UserError, match="base.json: is a directory"):
        check_output(tmp_path, "base", overwrite=True)  # before minutes of evaluation
    seeds = tuple(as_ints("1,1", "seeds", unique=False))
    with pytest.raises(UserError, match="--seeds must be distinct"):
        validate(DemoConfig(seeds=seeds, output_dir=str(tmp_path / "d")))
    numbers = tuple(as_ints("40,40", "numbers", unique=False))
    with pytest.raises(UserError, match="--numbers: a defense size is listed twice"):
        validate(DemoConfig(numbers=numbers, output_dir=str(tmp_path / "d")))


def test_reports_and_exports_never_go_into_a_generation_run_folder(tmp_path):
    from crossdefense.inspect_export import export_inspect
    from crossdefense.report import make_report

    run = tmp_path / "generations" / "tiny"
    run.mkdir(parents=True)
    (run / "test_case.json").write_text("{}")
    (run / "test_case.jsonl").write_text("")
    with pytest.raises(UserError, match="holds generation outputs"):
        make_report(str(tmp_path / "nowhere"), run)
    with pytest.raises(UserError, match="holds generation outputs"):
        export_inspect(tmp_path / "scores", run, progress=False)
    with pytest.raises(UserError, match="holds generation outputs"):  # nor their root
        export_inspect(tmp_path / "scores", run.parent, progress=False)
    assert sorted(p.name for p in run.iterdir()) == ["test_case.json", "test_case.jsonl"]


def test_torn_weights_are_one_line_and_an_unfinished_training_folder_is_no_adapter(
    tiny_model_dir, tmp_path, monkeypatch, caplog
):
    import shutil

    import crossdefense.training as training
    from crossdefense.modeling import check_adapter_dir, load_base_model
    from crossdefense.training import TrainConfig, train
    from tests.helpers import generate, write_eval, write_mixture

    data = write_mixture(tmp_path / "mix.json")
    cfg = dict(base_model=str(tiny_model_dir), data_path=str(data), batch_size=2)
    cfg.update(micro_batch_size=2, max_steps=1, val_set_size=0)
    adapter = train(TrainConfig(output_dir=str(tmp_path / "a"), **cfg)).output_dir
    ev = write_eval(tmp_path / "test_summarize.json", n=2)

    # an adapter trained on another model (same shapes): generated, with a warning
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    with caplog.at_level("WARNING"):
        generate(other, [ev], tmp_path / "gen", lora_weights=str(adapter))
    assert f"was trained on {tiny_model_dir}" in caplog.text

    # torn weights: one error line, not the reader's traceback
    torn = tmp_path / "torn"
    shutil.copytree(adapter, torn)
    weights = torn / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match="torn: cannot load the adapter"):
        generate(tiny_model_dir, [ev], tmp_path / "gen2", lora_weights=str(torn))
    base = tmp_path / "torn-base"
    shutil.copytree(tiny_model_dir, base)
    model_file = base / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:1000])
    with pytest.raises(UserError, match="torn-base: cannot load model"):
        load_base_model(str(base))

    # an --overwrite retraining that dies after it started: the old adapter is gone, and the
    # folder is refused as an adapter until the run is finished or resumed
    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(training, "save_run", crash)
    with pytest.raises(RuntimeError, match="killed"):
        train(TrainConfig(output_dir=str(adapter), overwrite=True, save_steps=1, **cfg))
    assert not (adapter / "adapter_model.safetensors").exists()
    assert not (adapter / "run_config.json").exists()
    (adapter / "adapter_config.json").write_text("{}")  # e.g. an interrupted copy
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="a training run started here and has not finished"):
        check_adapter_dir(str(adapter))


def test_references_that_cover_part_of_a_file_and_a_mixture_inside_the_eval_folder(
    tmp_path, caplog
):
    from crossdefense.mixture import build_defense_data

    mini = REPO_ROOT / "data" / "mini"
    ev = tmp_path / "evals"
    ev.mkdir()
    (ev / "test_summarize.json").write_text(json.dumps({"instructions": ["A document."]}))
    with pytest.raises(UserError, match="inside --eval_dir"):
        build_defense_data(
            task="summarize",
            num_defense=2,
            alpaca_path=mini / "alpaca.jsonl",
            safety_path=mini / "safety.jsonl",
            num_safety=2,
            documents_path=mini / "documents" / "harmful_train.jsonl",
            refusals_path=mini / "refusals.json",
            output_dir=ev / "mixtures",
            eval_dir=ev,
        )
    assert not (ev / "mixtures").exists()


def test_relative_base_models_redone_shards_and_ignored_sampling_flags(
    tiny_model_dir, tmp_path, monkeypatch
):
    import os

    from crossdefense.shards import merge_shards
    from crossdefense.training import TrainConfig, train
    from tests.helpers import generate, run_script, write_eval, write_mixture

    # a relative --base_model is recorded as the folder it named, not as text
    monkeypatch.chdir(tiny_model_dir.parent)
    data = write_mixture(tmp_path / "mix.json")
    out = train(
        TrainConfig(
            base_model=os.path.relpath(tiny_model_dir),
            data_path=str(data),
            output_dir=str(tmp_path / "a"),
            batch_size=2,
            micro_batch_size=2,
            max_steps=1,
            val_set_size=0,
        )
    ).output_dir
    recorded = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(tiny_model_dir.resolve())

    # a shard redone with --overwrite: the merged file made from its old answers goes
    ev = write_eval(tmp_path / "test_summarize.json", n=4)
    for i in range(2):
        generate(tiny_model_dir, [ev], tmp_path / "gen", num_shards=2, shard_index=i)
    (merged,) = merge_shards(str(tmp_path / "gen" / "tiny"))
    generate(tiny_model_dir, [ev], tmp_path / "gen", num_shards=2, shard_index=0, overwrite=True)
    assert not merged.exists()

    # sampling values without --do_sample are said to do nothing
    res = run_script(
        REPO_ROOT / "generation" / "generate_answers.py",
        "--input_path", ev, "--base_model", tiny_model_dir, "--output_path", tmp_path / "g2",
        "--num_beams", "1", "--max_new_tokens", "2", "--temperature", "0.9",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-1500:]
    assert "--temperature only apply with --do_sample" in res.stderr


def test_a_run_shorter_than_its_warm_up_is_reported(tmp_path, caplog):
    from crossdefense.training import TrainConfig, validate

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    base = dict(base_model=str(tmp_path / "m"), data_path="x.json", output_dir=str(tmp_path / "o"))
    with caplog.at_level("WARNING"):
        validate(TrainConfig(**base, max_steps=1, warmup_steps=10))
    assert "never leaves its warm-up" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        validate(TrainConfig(**base, max_steps=20, warmup_steps=10))
    assert "warm-up" not in caplog.text
