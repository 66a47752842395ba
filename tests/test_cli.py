"""The two upstream scripts as users call them: --help anywhere, the README's commands on the
tiny model, and bad input as one line on stderr with a non-zero exit and nothing written."""

from __future__ import annotations

import json
import re
import sys

import pytest

from crossdefense.paths import REPO_ROOT
from tests.helpers import run_script, write_eval, write_mixture

TRAIN = REPO_ROOT / "training" / "finetuning.py"
GENERATE = REPO_ROOT / "generation" / "generate_answers.py"


@pytest.mark.parametrize("script", [TRAIN, GENERATE])
def test_help_from_another_cwd(script, tmp_path):
    res = run_script(script, "--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    shown = res.stdout + res.stderr  # fire prints help to stderr when there is no pager
    assert "BASE_MODEL" in shown and "--output" in shown and "local model directory" in shown


def test_upstream_style_commands_run_on_the_tiny_model(tiny_model_dir, tmp_path):
    data = write_mixture(tmp_path / "saferpaca_Instructions_100_10_summrize.json")
    ckpt = tmp_path / "checkpoints" / "Instructions_100_10_summrize_tiny"
    res = run_script(
        TRAIN,
        "--num_epochs",
        "3",
        "--cutoff_len",
        "1024",
        "--val_set_size",
        "0",
        "--base_model",
        tiny_model_dir,
        "--data_path",
        data,
        "--output_dir",
        ckpt,
        "--batch_size",
        "4",
        "--micro_batch_size",
        "2",
        "--max_steps",
        "2",
        "--lora_target_modules",
        "q_proj,v_proj",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    rc = json.loads((ckpt / "run_config.json").read_text())
    assert rc["train_data"]["task"] == "summarize" and rc["train_data"]["num_defense"] == 10
    ev = write_eval(tmp_path / "test_case.json", n=3)
    res = run_script(
        GENERATE,
        "--prompt_template_path",
        "./configs/alpaca.json",
        "--input_path",
        ev,
        "--output_path",
        tmp_path / "evaluation" / "summarize",
        "--base_model",
        tiny_model_dir,
        "--lora_weights",
        ckpt,
        "--max_new_tokens",
        "4",
        "--num_beams",
        "2",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = tmp_path / "evaluation" / "summarize" / ckpt.name / "test_case.json"
    doc = json.loads(out.read_text())
    assert len(doc["outputs"]) == 3
    assert doc["metadata"]["train"]["num_defense"] == 10
    assert doc["metadata"]["generation"]["num_beams"] == 2


@pytest.mark.parametrize(
    ("script", "args", "match"),
    [
        (
            TRAIN,
            ["--base_model", "./missing-model", "--data_path", "x.json"],
            "base model directory not found",
        ),
        (
            GENERATE,
            ["--input_path", "nothing.json", "--base_model", "./m"],
            "nothing.json: file not found",
        ),
        (
            GENERATE,
            ["--input_path", "{ev}", "--base_model", "{model}", "--load_8bit", "--load_4bit"],
            "exclusive",
        ),
        (GENERATE, ["--input_path", "{bad}", "--base_model", "{model}"], "malformed JSON"),
        (TRAIN, ["--base_model", "{model}", "--data_path", "{empty}"], "no records"),
        (TRAIN, ["--base_model", "{model}", "--data_pth", "{ev}"], "unknown flag --data_pth"),
        (GENERATE, ["--input_path", "{ev}", "--num_beam", "2"], "unknown flag --num_beam"),
    ],
)
def test_bad_input_is_one_line(tiny_model_dir, tmp_path, script, args, match):
    ev = write_eval(tmp_path / "test_summarize.json", n=2)
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "empty.json").write_text("[]")
    subst = {
        "{ev}": ev,
        "{model}": tiny_model_dir,
        "{bad}": tmp_path / "bad.json",
        "{empty}": tmp_path / "empty.json",
    }
    argv = [str(subst.get(a, a)) for a in args]
    res = run_script(
        script,
        *argv,
        "--output_dir" if script == TRAIN else "--output_path",
        tmp_path / "out",
        cwd=tmp_path,
    )
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and match in last, res.stderr[-1500:]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (KeyboardInterrupt(), 130, "interrupted: nothing half-written is left"),
        (
            OSError(28, "No space left on device", "/out/x.json"),
            "error: /out/x.json: No space left on device",
            None,
        ),
    ],
)
def test_run_turns_ctrl_c_and_os_errors_into_one_line(monkeypatch, capsys, exc, code, line):
    from crossdefense.cli import run

    def main(flag: int = 1) -> None:
        raise exc

    monkeypatch.setattr(sys, "argv", ["script.py", "--flag", "2"])
    with pytest.raises(SystemExit) as info:
        run(main)
    assert info.value.code == code
    if line:
        assert line in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (("--top_p", "2", "--do_sample"), "error: --top_p must be in (0, 1]"),
        (("--temperature", "0"), "error: --temperature must be > 0"),
        (("--num_beams", "0"), "error: --num_beams must be an integer >= 1"),
        (("--run_name", "../../x"), "error: --run_name: '../../x' must be a single folder name"),
    ],
)
def test_generation_flags_are_checked_before_any_model_loads(tmp_path, flags, line):
    ev = write_eval(tmp_path / "test_case.json", n=1)
    res = run_script(
        GENERATE,
        "--base_model",
        tmp_path / "no-model-needed",
        "--input_path",
        ev,
        "--output_path",
        tmp_path / "out",
        *flags,
        timeout=120,
    )
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith(line)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("value", "annotation", "expected"),
    [
        (2024, "str | None", "2024"),  # --run_name 2024
        (5, "str | tuple[str, ...]", "5"),
        (("a", "b"), "str", "a,b"),  # --output_dir a,b is one name
        (3, "float", 3),
        (("a", "b"), "str | tuple[str, ...]", ("a", "b")),
        (None, "int | None", None),
        ("no", "bool", False),  # --overwrite no: fire keeps the word, which would be truthy
        ("False", "bool", False),
        ("yes", "bool", True),
        (0, "bool", False),
    ],
)
def test_fire_values_are_coerced_to_what_the_flag_means(value, annotation, expected):
    from crossdefense.cli import coerce_flag

    assert coerce_flag("x", value, eval(annotation)) == expected


@pytest.mark.parametrize(
    ("value", "annotation", "message"),
    [
        (True, "str", "--x needs a value"),  # `--output_dir` with nothing after it
        (True, "str | tuple[str, ...] | None", "--x needs a value"),
        ("abc", "int | None", "--x must be an integer, not 'abc'"),
        ("two", "int", "--x must be an integer"),
        ("fast", "float", "--x must be a number"),
        ("maybe", "bool", "--x is a switch: give --x or --nox"),
    ],
)
def test_fire_surprises_are_one_error_line(value, annotation, message):
    from crossdefense import UserError
    from crossdefense.cli import coerce_flag

    with pytest.raises(UserError, match=re.escape(message)):
        coerce_flag("x", value, eval(annotation))


def test_scripts_report_a_missing_flag_value_in_one_line(tmp_path):
    res = run_script("scripts/report.py", "--summary_path", tmp_path, "--output_dir", timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == "error: --output_dir needs a value"
    assert "Traceback" not in res.stderr


def test_a_missing_required_flag_is_one_line():
    from crossdefense.cli import missing_required

    def main(input_path: str, run_a: str, run_b: str, judge: str | None = None) -> None: ...

    assert missing_required(main, ["x.jsonl", "--run_a", "a", "--run_b", "b"]) is None
    assert missing_required(main, ["x.jsonl", "a", "b"]) is None  # all positional
    assert missing_required(main, ["--run_a", "a", "--run_b", "b"]) == "input_path"
    assert missing_required(main, ["x.jsonl", "--judge", "k", "a"]) == "run_b"
    assert missing_required(main, ["--help"]) is None
    res = run_script("scripts/merge_shards.py", timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == ["error: missing --input_path (see --help)"]


def test_short_flags_are_refused_and_dash_h_is_help(tmp_path):
    from crossdefense.cli import reject_unknown_flags

    def main(output_path: str = "x", overwrite: bool = False, heatmap_n: int = 1) -> None:
        pass

    with pytest.raises(SystemExit) as info:
        reject_unknown_flags(main, ["-o", "y"])
    assert str(info.value) == (
        "error: short flag -o is not supported; use the full name (--output_path, --overwrite)"
    )
    reject_unknown_flags(main, ["-h"])  # help, not --heatmap_n
    res = run_script(REPO_ROOT / "scripts" / "report.py", "-h", cwd=tmp_path)
    assert res.returncode == 0 and "--heatmap_n" in res.stdout + res.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a", ["a"]),
        (("a", "b"), ["a", "b"]),  # fire's `--x a,b`
        ("a, b,,a", ["a", "b"]),  # spaces, empty items and repeats dropped, order kept
        ("[q_proj,'v_proj']", ["q_proj", "v_proj"]),  # upstream's bracketed form
        (2024, ["2024"]),
        (None, []),
        ("", []),
    ],
)
def test_as_list_reads_every_shape_fire_hands(value, expected):
    from crossdefense.cli import as_list

    assert as_list(value) == expected


def test_as_ints_refuses_what_is_not_a_whole_number():
    from crossdefense import UserError
    from crossdefense.cli import as_ints

    assert as_ints((1, 2, 3), "seeds") == [1, 2, 3]
    assert as_ints("40", "numbers") == [40]
    for bad in ("x", "1.5", True, "1,two"):
        with pytest.raises(UserError, match="--seeds: .* is not a whole number"):
            as_ints(bad, "seeds")


def _script_main(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize(
    ("script", "config", "renamed"),
    [
        ("training/finetuning.py", "crossdefense.training:TrainConfig", {}),
        ("generation/generate_answers.py", "crossdefense.generation:DecodingConfig", {}),
        (
            "scripts/demo.py",
            "crossdefense.demo:DemoConfig",
            {"method": "methods", "judge": "judges", "xstest": "xstest_per_type"},
        ),
    ],
)
def test_script_defaults_are_the_config_defaults(script, config, renamed):
    """The config dataclasses are the one home of defaults: a flag's default is the field's."""
    import dataclasses
    import importlib
    import inspect

    module, name = config.split(":")
    fields = {
        f.name: f.default
        for f in dataclasses.fields(getattr(importlib.import_module(module), name))
        if f.default is not dataclasses.MISSING
    }
    params = inspect.signature(_script_main(REPO_ROOT / script)).parameters
    compared = 0
    for flag, param in params.items():
        field = renamed.get(flag, flag)
        if field in fields and param.default is not inspect.Parameter.empty:
            assert param.default == fields[field], f"{script} --{flag}"
            compared += 1
    assert compared >= 8  # the check saw the flags it is about


def test_a_number_typed_as_a_name_keeps_its_text():
    from crossdefense.cli import coerce_flag, raw_flag_text

    argv = ["--input_path", "x.json", "--run_name", "0x1F", "--lr=3e-4"]
    assert raw_flag_text("run_name", argv) == "0x1F"
    assert raw_flag_text("lr", argv) == "3e-4"
    assert raw_flag_text("seed", argv) is None
    import sys

    saved = sys.argv
    sys.argv = ["script.py", *argv]
    try:
        assert coerce_flag("run_name", 31, str) == "0x1F"  # fire read it as hex
    finally:
        sys.argv = saved
