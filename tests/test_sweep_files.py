"""Sweep files (configs/sweeps/*.toml): every preset loads and plans, a wrong key is refused with
the nearest right one, a variable that is set beats the file, and cpu_smoke runs end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crossdefense import UserError
from crossdefense import sweep as sw
from crossdefense.paths import REPO_ROOT
from tests.helpers import write_eval
from tests.test_sweep import RUN_SWEEP, SBATCH, mtimes, run_sh, status_lines

PRESETS = {"paper": 2, "full_grid": 60, "cpu_smoke": 4, "demo": 2}  # name -> cells
GPU_PRESETS = ("paper", "full_grid")
UPSTREAM_STEMS = [
    f"test_{task}{kind}"
    for task in ("summarize", "translate", "sentiment", "case", "cloze")
    for kind in ("", "_cnn", "_useful")
]


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment without any sweep variable of the machine running the tests."""
    drop = {*sw.DEFAULTS, *sw.SHELL_VARIABLES, "CUDA_VISIBLE_DEVICES", "SLURM_ARRAY_TASK_ID"}
    env = {k: v for k, v in os.environ.items() if k not in drop and k != "OMP_NUM_THREADS"}
    return {
        **env,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHON": sys.executable,
        **extra,
    }


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def upstream_evals(tmp: Path) -> Path:
    """Stand-ins for the 15 files scripts/download_data.sh writes (not there offline)."""
    (tmp / "eval").mkdir(parents=True, exist_ok=True)
    for stem in UPSTREAM_STEMS:
        write_eval(tmp / "eval" / f"{stem}.json", n=2)
    return tmp / "eval"


def test_every_preset_is_listed_and_loads():
    assert sorted(p.stem for p in sw.SWEEPS_DIR.glob("*.toml")) == sorted(PRESETS)
    for name, n_cells in PRESETS.items():
        cfg = sw.SweepConfig.load(name, env={})
        assert cfg.source == sw.SWEEPS_DIR / f"{name}.toml"
        assert len(sw.cells(cfg)) == n_cells, name
    paper = sw.SweepConfig.load("paper", env={})
    assert [c.run_name for c in sw.cells(paper)] == [
        "Instructions_100_1000_summarize_llama",
        "Instructions_100_1000_summarize_llama2",
    ]
    assert [m.template for m in paper.models] == ["alpaca", "llama2"]
    assert paper.train_args[:6] == ["--num_epochs", "3", "--cutoff_len", "1024"] + [
        "--val_set_size",
        "0",
    ]
    # the same preset by path, and by name through $SWEEP_FILE
    by_path = sw.SweepConfig.load(str(sw.SWEEPS_DIR / "demo.toml"), env={})
    by_env = sw.SweepConfig.from_env({"SWEEP_FILE": "demo"})
    assert [c.run_name for c in sw.cells(by_path)] == [c.run_name for c in sw.cells(by_env)]
    assert [c.run_name for c in sw.cells(by_env)] == [
        "base_smollm2",
        "Instructions_16_40_summarize_smollm2",
    ]


@pytest.mark.parametrize("name", GPU_PRESETS)
def test_gpu_presets_dry_run(name, tmp_path):
    env = {
        "SWEEP_FILE": name,
        "EVAL_DIR": str(upstream_evals(tmp_path)),
        "OUT_DIR": str(tmp_path / "out"),
        "DATA_DIR": str(tmp_path / "data"),
    }
    cfg = sw.SweepConfig.from_env(env)
    lines = sw.plan_lines(cfg, cfg.steps, ["0", "1", "2", "3"])
    text = "\n".join(lines)
    assert lines[0].startswith(f"sweep: 2 model(s) x {len(cfg.tasks)} task(s)")
    assert f"sweep file: configs/sweeps/{name}.toml" in text
    assert "eval sets (15)" in text
    assert text.count("training/finetuning.py --base_model") == PRESETS[name]
    last_gpu = min(PRESETS[name], 4) - 1  # cells go round the four workers
    assert "--load_8bit" in text and f"CUDA_VISIBLE_DEVICES={last_gpu} " in text
    assert not (tmp_path / "out").exists()


def test_the_shell_entry_point_plans_a_sweep_file(tmp_path):
    """DRY_RUN through scripts/run_sweep.sh, as a user types it."""
    env = clean_env(
        tmp_path,
        SWEEP_FILE="paper",
        DRY_RUN="1",
        GPUS="0,1 2,3",
        EVAL_DIR=str(upstream_evals(tmp_path)),
        OUT_DIR=str(tmp_path / "out"),
        DATA_DIR=str(tmp_path / "data"),
    )
    res = run_sh(RUN_SWEEP, env)
    assert res.returncode == 0, res.stderr
    assert "workers: 0,1 2,3" in res.stdout
    # two GPUs per worker: each cell trains with DDP over them
    assert res.stdout.count("--nproc_per_node=2") == 2
    res = run_sh(RUN_SWEEP, {**env, "SWEEP_FILE": "nope"})
    assert res.returncode == 1
    assert res.stderr.startswith("error: sweep file nope not found (presets in configs/sweeps:")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('task = ["summarize"]', "x.toml: unknown key 'task'; did you mean 'tasks'?"),
        ('TASKS = ["summarize"]', "x.toml: unknown key 'TASKS'; did you mean 'tasks'?"),
        ("numbres = [10]", "x.toml: unknown key 'numbres'; did you mean 'numbers'?"),
        ("colour = 1", "x.toml: unknown key 'colour'; valid keys: tasks, numbers, models"),
        ("tasks = [", "x.toml: not valid TOML"),
        ('numbers = ["ten"]', "x.toml: numbers: 'ten' is not a"),
        ('tasks = ["summarise"]', "x.toml: tasks: unknown task 'summarise'"),
        ("num_safety = true", "x.toml: num_safety: expected a string, a number or a list"),
        ("[models]\nm = 3", 'x.toml: models.m: expected "path:template" without spaces'),
        ('[models]\nm = { path = "p", tmpl = "x" }', "x.toml: models.m: expected keys path"),
        ('train_args = "--output_dir x"', "x.toml: train_args: --output_dir is set by the sweep"),
    ],
)
def test_a_wrong_sweep_file_is_refused_in_one_line(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    write_toml(tmp_path / "x.toml", text)
    with pytest.raises(UserError, match=re.escape(message)):
        sw.SweepConfig.load("x.toml", env={})


def test_models_as_a_table_and_lists_of_flags(tmp_path):
    path = write_toml(
        tmp_path / "s.toml",
        "numbers = [0, 10]\n"
        'gpus = ["0,1", "2,3"]\n'
        'steps = ["train", "generate"]\n'
        'gen_args = ["--max_new_tokens", "8"]\n'
        "[models]\n"
        'a = { path = "/models/a", template = "llama2" }\n'
        'b = "/models/b"\n',
    )
    cfg = sw.SweepConfig.load(path, env={})
    assert [(m.name, m.path, m.template) for m in cfg.models] == [
        ("a", "/models/a", "llama2"),
        ("b", "/models/b", "alpaca"),
    ]
    assert cfg.numbers == [0, 10] and cfg.gen_args == ["--max_new_tokens", "8"]
    assert cfg.gpus == ["0,1", "2,3"] and cfg.steps == ["train", "generate"]


def test_a_variable_that_is_set_beats_the_file():
    env = {"SWEEP_FILE": "paper", "NUMBERS": "10 100", "MODELS": "m=/models/m", "TASKS": ""}
    cfg = sw.SweepConfig.from_env(env)
    assert cfg.numbers == [10, 100]  # the variable, not the file's 1000
    assert cfg.tasks == ["summarize"]  # empty: the file's value
    assert [c.run_name for c in sw.cells(cfg)] == [
        "Instructions_100_10_summarize_m",
        "Instructions_100_100_summarize_m",
    ]
    assert "--load_8bit" in cfg.train_args  # the file's, where no variable says otherwise
    # a faulty variable is named as the variable, not as the file's key
    with pytest.raises(UserError, match=r"^NUMBERS: 'x' is not a"):
        sw.SweepConfig.from_env({**env, "NUMBERS": "x"})
    # a misspelt variable is still refused with a sweep file
    with pytest.raises(UserError, match="NUMBER is not a sweep variable; did you mean NUMBERS"):
        sw.SweepConfig.from_env({**env, "NUMBER": "10"})
    # a worker that is no device list, and an N given twice, are refused too
    for bad, match in (
        ({"GPUS": "banana"}, "GPUS: 'banana' is not a worker"),
        ({"GPUS": "0 -1"}, "GPUS: '-1' is not a worker"),
        ({"NUMBERS": "10 10"}, "NUMBERS: a value is listed twice"),
    ):
        with pytest.raises(UserError, match=match):
            sw.SweepConfig.from_env({**env, **bad})
    assert sw.SweepConfig.from_env({**env, "GPUS": "cpu 0,1"}).gpus == ["cpu", "0,1"]
    assert sw.SweepConfig.from_env({**env, "NUMBERS": "10,100"}).numbers == [10, 100]
    # without a file, the defaults are what they were: the paper's two cells
    default = sw.SweepConfig.from_env({})
    assert default.source is None and len(sw.cells(default)) == 2
    assert "--load_8bit" not in default.train_args


def test_progress_counts_stages_and_estimates_what_is_left():
    from crossdefense.sweep.runner import Progress

    progress = Progress(total=4, workers=2, waiting={"train": 2, "generate": 2})
    assert progress.record("train", ran=False, seconds=0.0) == "[1/4 stages]"  # a skip
    assert progress.record("train", ran=True, seconds=60.0) == "[2/4 stages, ETA 1m00s]"
    assert progress.record("generate", ran=True, seconds=30.0) == "[3/4 stages, ETA 0m15s]"
    assert progress.record("generate", ran=True, seconds=30.0) == "[4/4 stages]"


@pytest.mark.slow
def test_cpu_smoke_runs_for_real(tiny_model_dir, tmp_path):
    """The cpu_smoke file as it is committed, with the tests' tiny model in place of SmolLM2
    (the variable beats the file) and its outputs under tmp_path."""
    out, data = tmp_path / "out", tmp_path / "data"
    env = clean_env(
        tmp_path,
        SWEEP_FILE="cpu_smoke",
        MODELS=f"smol={tiny_model_dir}:chat",
        OUT_DIR=str(out),
        DATA_DIR=str(data),
    )
    runs = [
        f"Instructions_10_{n}_{task}_smol" for task in ("summarize", "translate") for n in (10, 20)
    ]
    res = run_sh(RUN_SWEEP, env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "sweep: 4 cells on 2 worker(s): cpu cpu" in res.stdout
    assert status_lines(res.stdout, "done") == {
        (stage, run) for run in runs for stage in ("train", "generate")
    }
    assert re.search(r"\[8/8 stages\]$", res.stdout, re.M)  # the last stage's progress
    assert re.search(r"ETA \d+m\d\ds\]$", res.stdout, re.M)
    assert "4 cells: 4 ran, 0 skipped, 0 failed" in res.stdout
    assert (out / "evaluation" / "scores" / "summary.json").is_file()
    assert (out / "evaluation" / "report" / "results.csv").is_file()
    for run in runs:
        assert (out / "checkpoints" / run / "done").is_file()
        for stem in ("test_summarize", "test_translate"):
            assert (out / "evaluation" / "generations" / run / f"{stem}.json").is_file()
        assert (out / "logs" / f"{run}.train.log").is_file()
    # Run it twice: the second run does nothing.
    before = mtimes(out, data)
    res = run_sh(RUN_SWEEP, env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not re.search(r"^\[[\d:]+\] (start|done)", res.stdout, re.M), res.stdout
    assert "4 cells: 0 ran, 4 skipped, 0 failed" in res.stdout
    # A SLURM array task runs its cell through the same runner: done, so skipped.
    res = run_sh(SBATCH, {**env, "SLURM_ARRAY_TASK_ID": "3"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert status_lines(res.stdout, "skip") == {(s, runs[3]) for s in ("train", "generate")}
    assert mtimes(out, data) == before


def test_sweep_plan_takes_config(tmp_path):
    env = clean_env(tmp_path)
    res = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "sweep_plan.py"), "count"]
        + ["--config", "full_grid", "--steps", "train"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert (res.returncode, res.stdout) == (0, "60\n"), res.stderr
