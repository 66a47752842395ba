"""Sweeps on the tiny model and the CPU: the grid runs over two workers, a re-run does nothing,
lost or failed cells (and only those) are redone, the SLURM index maps to the same cell,
merged shards equal an unsharded run, and training runs as two DDP processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crossdefense import UserError
from crossdefense import sweep as sw
from crossdefense.paths import REPO_ROOT
from crossdefense.shards import merge_shards
from tests.helpers import REFUSAL, run_script, write_eval, write_mixture

RUN_SWEEP = REPO_ROOT / "scripts" / "run_sweep.sh"
SBATCH = REPO_ROOT / "scripts" / "slurm" / "sweep.sbatch"
SHELL_SCRIPTS = [
    RUN_SWEEP,
    REPO_ROOT / "scripts" / "train_sweep.sh",
    REPO_ROOT / "scripts" / "generate_sweep.sh",
    SBATCH,
]
PLAN = REPO_ROOT / "scripts" / "sweep_plan.py"
MERGE = REPO_ROOT / "scripts" / "merge_shards.py"
GENERATE = REPO_ROOT / "generation" / "generate_answers.py"
TRAIN = REPO_ROOT / "training" / "finetuning.py"
RUNS = [  # the 2x2 grid in cell order: model-major, then task, then N
    "Instructions_2_2_summarize_tiny",
    "Instructions_2_4_summarize_tiny",
    "Instructions_2_2_translate_tiny",
    "Instructions_2_4_translate_tiny",
]


def sweep_env(tmp: Path, model: Path, **extra: str) -> dict[str, str]:
    """A 1 model x 2 tasks x 2 Ns grid with everything under `tmp` and tiny settings."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHON": sys.executable,
        "TASKS": "summarize translate",
        "NUMBERS": "2 4",
        "NUM_SAFETY": "2",
        "MODELS": f"tiny={model}:alpaca",
        "EVAL_SETS": "test_summarize",
        "EVAL_DIR": str(tmp / "eval"),
        "DATA_DIR": str(tmp / "data"),
        "OUT_DIR": str(tmp / "out"),
        "GPUS": "cpu cpu",
        "STEPS": "train generate",
        "TRAIN_ARGS": "--max_steps 1 --batch_size 2 --micro_batch_size 2 --val_set_size 0",
        "GEN_ARGS": "--max_new_tokens 2 --num_beams 1",
    }
    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_ARRAY_TASK_ID", "DRY_RUN", "OMP_NUM_THREADS"):
        env.pop(key, None)
    return {**env, **extra}


def mixture(tmp: Path, task: str, n: int) -> Path:
    return tmp / "data" / task / f"saferpaca_Instructions_2_{n}_{task}.json"


def grid_inputs(tmp: Path) -> None:
    """One eval file and the four mixtures, written like upstream's."""
    (tmp / "eval").mkdir(parents=True, exist_ok=True)
    write_eval(tmp / "eval" / "test_summarize.json", n=3)
    for task in ("summarize", "translate"):
        for n in (2, 4):
            mixture(tmp, task, n).parent.mkdir(parents=True, exist_ok=True)
            write_mixture(mixture(tmp, task, n), n=6)


def build_pools(tmp: Path) -> dict[str, str]:
    """Tiny inputs for scripts/build_defense_data.py (the sweep's build step)."""
    pools = tmp / "pools"
    pools.mkdir()
    alpaca = [
        {"instruction": f"Name a colour, please ({i}).", "input": "", "output": "Blue."}
        for i in range(6)
    ]
    safety = [
        {"instruction": f"How do I hurt someone, way {i}?", "input": "", "output": REFUSAL}
        for i in range(3)
    ]
    docs = [f"The manual describes how to make a dangerous weapon, chapter {i}." for i in range(4)]
    files = {"ALPACA_PATH": alpaca, "SAFETY_PATH": safety, "DOCUMENTS_PATH": docs}
    files["REFUSALS_PATH"] = [REFUSAL]
    out = {}
    for key, rows in files.items():
        path = pools / f"{key.lower()}.json"
        path.write_text(json.dumps(rows))
        out[key] = str(path)
    return out


def run_sh(script: Path, env: dict[str, str], timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def status_lines(out: str, word: str) -> set[tuple[str, str]]:
    """(stage, run) of every `word` status line (start, done, skip, FAIL)."""
    pat = re.compile(rf"^\[[\d:]+\] {word}\s+(\w+)\s+cell \d+ of \d+\s+(\S+)", re.M)
    return set(pat.findall(out))


def mtimes(*roots: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for r in roots for p in r.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- configuration


def test_config_cells_and_run_names(tmp_path):
    cfg = sw.SweepConfig.from_env(
        {
            "TASKS": "summarize mix",
            "NUMBERS": "0 10",
            "MODELS": "llama=yahma/llama-7b-hf llama2=meta-llama/Llama-2-7b-hf:llama2",
            "OUT_DIR": str(tmp_path),
        }
    )
    assert [m.template for m in cfg.models] == ["alpaca", "llama2"]
    # N=0 is the task-less baseline: one run per model, not one per task.
    assert [c.run_name for c in sw.cells(cfg)] == [
        "Instructions_100_llama",
        "Instructions_100_10_summarize_llama",
        "Instructions_100_10_mix_llama",
        "Instructions_100_llama2",
        "Instructions_100_10_summarize_llama2",
        "Instructions_100_10_mix_llama2",
    ]
    paths = sw.cell_paths(cfg, sw.cells(cfg)[2])
    assert paths.mixture == Path("data/training/mix/saferpaca_Instructions_100_10_mix.json")
    assert paths.checkpoint == tmp_path / "checkpoints" / "Instructions_100_10_mix_llama"
    assert paths.log("generate") == tmp_path / "logs" / "Instructions_100_10_mix_llama.generate.log"
    baseline = sw.cell_paths(cfg, sw.cells(cfg)[0]).mixture
    assert baseline == Path("data/training/summarize/saferpaca_Instructions_100.json")
    # The defaults are the paper's experiment.
    default = sw.SweepConfig.from_env({})
    assert [c.run_name for c in sw.cells(default)] == [
        "Instructions_100_1000_summarize_llama",
        "Instructions_100_1000_summarize_llama2",
    ]
    assert default.train_args == [
        "--num_epochs",
        "3",
        "--cutoff_len",
        "1024",
        "--val_set_size",
        "0",
    ]


def test_seeds_are_an_axis_of_cells(tmp_path):
    cfg = sw.SweepConfig.from_env(
        {"NUMBERS": "0 10", "MODELS": "m=/models/m", "SEEDS": "1 2", "OUT_DIR": str(tmp_path)}
    )
    cells = sw.cells(cfg)
    assert [c.run_name for c in cells] == [
        "Instructions_100_m_seed1",
        "Instructions_100_m_seed2",
        "Instructions_100_10_summarize_m_seed1",
        "Instructions_100_10_summarize_m_seed2",
    ]
    # each seed trains on the same mixture with its own --seed, and its hash differs
    a, b = (sw.decide_train(cfg, c) for c in cells[2:])
    assert a.command[a.command.index("--seed") + 1] == "1"
    assert b.command[b.command.index("--seed") + 1] == "2"
    assert sw.cell_paths(cfg, cells[2]).mixture == sw.cell_paths(cfg, cells[3]).mixture
    assert sw.config_hash(sw.train_config(cfg, cells[2])) != sw.config_hash(
        sw.train_config(cfg, cells[3])
    )
    # without SEEDS: upstream's names and no --seed (the trainer's default)
    plain = sw.SweepConfig.from_env({"NUMBERS": "10", "MODELS": "m=/models/m"})
    (cell,) = sw.cells(plain)
    assert cell.run_name == "Instructions_100_10_summarize_m" and cell.seed is None
    assert "--seed" not in sw.decide_train(plain, cell).command


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SEEDS": "1 x"}, "SEEDS: 'x' is not a non-negative integer"),
        ({"SEEDS": "3 3"}, "SEEDS: a seed is listed twice"),
        ({"SEEDS": "1 2", "TRAIN_ARGS": "--seed 5"}, "TRAIN_ARGS: --seed is set by the sweep"),
        ({"TASKS": "summarise"}, "TASKS: unknown task 'summarise'"),
        # the rest of the line is crossdefense.mixture.normalize_grid's
        ({"NUMBERS": "10 ten"}, "NUMBERS: 'ten' is not a"),
        ({"MODELS": "llama"}, "MODELS: 'llama' is not name=path_or_hub_id:template"),
        ({"MODELS": "a=x:nope"}, "unknown prompt template 'nope'"),
        ({"MODELS": "a=x a=y"}, "model name 'a' is used twice"),
        ({"TRAIN_ARGS": "--output_dir=x"}, "TRAIN_ARGS: --output_dir is set by the sweep"),
        ({"GEN_ARGS": "--num_shards 2"}, "GEN_ARGS: --num_shards is set by the sweep"),
        # fire would only complain after a whole training run
        ({"TRAIN_ARGS": "--log_every 5"}, "training/finetuning.py has no flag --log_every"),
        ({"NUM_SAFETY": "-1"}, "NUM_SAFETY: '-1' is not a non-negative integer"),
    ],
)
def test_config_errors_are_one_line(env, message):
    with pytest.raises(UserError, match=re.escape(message)):
        sw.SweepConfig.from_env(env)


def test_steps_and_eval_sets(tmp_path):
    assert sw.parse_steps("generate,train") == ["train", "generate"]
    with pytest.raises(UserError, match="unknown step 'eval'"):
        sw.parse_steps("train eval")
    for stem in ("test_case", "test_case_cnn", "I-Alpaca"):
        write_eval(tmp_path / f"{stem}.json", n=2)
    cfg = sw.SweepConfig.from_env({"EVAL_DIR": str(tmp_path), "EVAL_SETS": "test_* I-Alpaca"})
    assert [p.name for p in cfg.eval_files()] == [
        "test_case.json",
        "test_case_cnn.json",
        "I-Alpaca.json",
    ]
    cfg = sw.SweepConfig.from_env({"EVAL_DIR": str(tmp_path), "EVAL_SETS": "test_nope"})
    with pytest.raises(UserError, match="EVAL_SETS: no evaluation file matches 'test_nope'"):
        cfg.eval_files()


def test_eval_sets_take_xstest(tmp_path, monkeypatch):
    import crossdefense.paths

    monkeypatch.setattr(crossdefense.paths, "XSTEST_DIR", tmp_path / "xs")
    write_eval(tmp_path / "test_case.json", n=2)
    cfg = sw.SweepConfig.from_env({"EVAL_DIR": str(tmp_path), "EVAL_SETS": "test_case xstest"})
    with pytest.raises(UserError, match="no evaluation file matches 'xstest'"):
        cfg.eval_files()
    (tmp_path / "xs").mkdir()
    (tmp_path / "xs" / "xstest_prompts.csv").write_text(
        "id,prompt,type,label\n1,hi,homonyms,safe\n"
    )
    cfg = sw.SweepConfig.from_env({"EVAL_DIR": str(tmp_path), "EVAL_SETS": "test_case xstest"})
    assert [p.name for p in cfg.eval_files()] == ["test_case.json", "xstest_prompts.csv"]


def test_slurm_index_maps_to_the_same_cell(tmp_path, monkeypatch):
    grid_inputs(tmp_path)
    env = sweep_env(tmp_path, tmp_path / "model")
    monkeypatch.setattr(os, "environ", env)
    cfg = sw.SweepConfig.from_env()
    for i, run in enumerate(RUNS):
        monkeypatch.setitem(env, "SLURM_ARRAY_TASK_ID", str(i))
        assert sw.cell_at(cfg, None).run_name == run
    monkeypatch.setitem(env, "SLURM_ARRAY_TASK_ID", "4")
    with pytest.raises(UserError, match=r"cell index 4 is out of range: the sweep has 4 cells"):
        sw.cell_at(cfg, None)
    monkeypatch.undo()

    count = subprocess.run(
        [sys.executable, str(PLAN), "count"], env=env, capture_output=True, text=True
    )
    assert (count.returncode, count.stdout) == (0, "4\n"), count.stderr
    # The array job by hand: each index prints the commands of its own cell.
    res = run_sh(SBATCH, {**env, "SLURM_ARRAY_TASK_ID": "2", "DRY_RUN": "1"})
    assert res.returncode == 0, res.stderr
    first = res.stdout.splitlines()[0]
    assert first.startswith(f"# cell 2 of 4: {RUNS[2]}")
    assert f"--output_dir {tmp_path}/out/checkpoints/{RUNS[2]}" in res.stdout
    res = run_sh(SBATCH, {**env, "SLURM_ARRAY_TASK_ID": "9", "DRY_RUN": "1"})
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "error: cell index 9 is out of range: the sweep has 4 cells (0-3)"
    )
    res = run_sh(SBATCH, env)  # no SLURM_ARRAY_TASK_ID
    assert res.returncode != 0 and "not an array task" in res.stderr


# --------------------------------------------------------------------------- decisions


def fake_adapter(ckpt: Path) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    for name in (*sw.TRAINED_FILES, "prompt_template.json"):
        (ckpt / name).write_text("{}")


def test_train_decisions_skip_resume_and_redo(tmp_path):
    grid_inputs(tmp_path)
    env = sweep_env(tmp_path, tmp_path / "model")
    cfg = sw.SweepConfig.from_env(env)
    cell = sw.cells(cfg)[0]
    ckpt = sw.cell_paths(cfg, cell).checkpoint
    assert sw.decide_train(cfg, cell).action == "run"

    # Interrupted after two trainer checkpoints: resume from the later one.
    config = sw.train_config(cfg, cell)
    ckpt.mkdir(parents=True)
    sw.write_marker(ckpt, sw.STARTED, config)
    for step in (2, 10):
        (ckpt / f"checkpoint-{step}").mkdir()
        (ckpt / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    d = sw.decide_train(cfg, cell)
    assert d.action == "resume"
    assert d.command[-2:] == ["--resume_from_checkpoint", str(ckpt / "checkpoint-10")]

    # Other settings: those checkpoints are stale and go before training starts over.
    other = sw.SweepConfig.from_env({**env, "TRAIN_ARGS": "--max_steps 2"})
    d = sw.decide_train(other, cell)
    assert (d.action, d.reason) == ("run", "settings changed (train_args): starting over")
    assert sorted(p.name for p in d.remove) == ["checkpoint-10", "checkpoint-2"]

    # Finished and marked: skipped; a changed mixture makes it run again.
    fake_adapter(ckpt)
    sw.write_marker(ckpt, sw.DONE, config)
    assert sw.decide_train(cfg, cell).action == "skip"
    write_mixture(mixture(tmp_path, "summarize", 2), n=8)
    assert "data_sha256" in sw.decide_train(cfg, cell).reason

    # A worker with two GPUs trains its cell with DDP.
    assert sw.decide_train(cfg, cell, gpu="0,1").command[:5] == [
        sw.python(),
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
    ]
    mixture(tmp_path, "translate", 4).unlink()
    d = sw.decide_train(cfg, sw.cells(cfg)[3])
    assert d.action == "error" and "saferpaca_Instructions_2_4_translate.json not found" in d.reason


def test_generate_decisions_resume_only_what_is_missing(tmp_path):
    grid_inputs(tmp_path)
    write_eval(tmp_path / "eval" / "test_case.json", n=2)
    env = sweep_env(tmp_path, tmp_path / "model", EVAL_SETS="test_summarize test_case")
    cfg = sw.SweepConfig.from_env(env)
    cell = sw.cells(cfg)[1]
    paths = sw.cell_paths(cfg, cell)
    assert sw.decide_generate(cfg, cell).action == "error"  # no adapter yet
    fake_adapter(paths.checkpoint)
    d = sw.decide_generate(cfg, cell)
    assert d.action == "run"
    flags = dict(zip(d.command[2::2], d.command[3::2], strict=False))
    assert flags["--run_name"] == RUNS[1]
    assert flags["--input_path"].split(",") == [
        str(tmp_path / "eval" / "test_summarize.json"),
        str(tmp_path / "eval" / "test_case.json"),
    ]

    # Interrupted with test_summarize finished and test_case half done: only test_case again.
    run_dir = paths.generations
    run_dir.mkdir(parents=True)
    sw.write_marker(run_dir, sw.STARTED, sw.generate_config(cfg, cell))
    (run_dir / "test_summarize.json").write_text("{}")
    (run_dir / "test_case.jsonl").write_text("{}\n")
    d = sw.decide_generate(cfg, cell)
    assert d.action == "resume" and "(1 partly done)" in d.reason
    assert d.command[d.command.index("--input_path") + 1] == str(
        tmp_path / "eval" / "test_case.json"
    )
    assert "--overwrite" not in d.command

    # All outputs there but the done marker lost: mark, do not regenerate.
    (run_dir / "test_case.json").write_text("{}")
    assert sw.decide_generate(cfg, cell).action == "mark"

    # A retrained adapter with other weights invalidates the generations, which are removed.
    (paths.checkpoint / "adapter_model.safetensors").write_text("other")
    d = sw.decide_generate(cfg, cell)
    assert (d.action, d.reason) == ("run", "settings changed (adapter): starting over")
    assert {p.name for p in d.remove} == {
        "test_summarize.json",
        "test_case.json",
        "test_case.jsonl",
    }


def test_score_and_report_steps_run_once(tmp_path, monkeypatch):
    """With stand-in score/report scripts: each runs once, and again only when its input changed."""
    fake_root = tmp_path / "repo"
    (fake_root / "scripts").mkdir(parents=True)
    (fake_root / "scripts" / "score_answers.py").write_text(
        "import fire, pathlib\n"
        "def main(input_path, output_dir, overwrite=False):\n"
        "    pathlib.Path(output_dir).mkdir(parents=True, exist_ok=True)\n"
        "    pathlib.Path(output_dir, 'summary.json').write_text('{\"n\": %d}' % len(str(input_path)))\n"
        "fire.Fire(main)\n"
    )
    monkeypatch.setattr(sw.decide, "REPO_ROOT", fake_root)  # the module deciding score/report
    grid_inputs(tmp_path)
    cfg = sw.SweepConfig.from_env(sweep_env(tmp_path, tmp_path / "model"))
    assert sw.score_decision(cfg).reason == "no finished generations"
    assert sw.report_decision(cfg).reason == "scripts/report.py not found"
    run_dir = sw.cell_paths(cfg, sw.cells(cfg)[0]).generations
    run_dir.mkdir(parents=True)
    (run_dir / "test_summarize.json").write_text("{}")
    (run_dir / "test_old_eval_set.json").write_text("{}")  # another configuration's output
    sw.write_marker(run_dir, sw.DONE, {})
    d = sw.score_decision(cfg)
    scored = d.command[d.command.index("--input_path") + 1]
    assert d.action == "run" and scored == str(run_dir / "test_summarize.json")
    assert sw.run_step(cfg, "score")
    assert (cfg.scores_dir / "summary.json").is_file()
    assert sw.score_decision(cfg).action == "skip"
    (run_dir / "test_summarize.json").write_text('{"changed": 1}')
    d = sw.score_decision(cfg)
    assert d.action == "run" and d.command[-1] == "--overwrite"


# --------------------------------------------------------------------------- the shell sweep


def test_dry_run_prints_the_plan_and_does_nothing(tmp_path):
    grid_inputs(tmp_path)
    env = sweep_env(tmp_path, tmp_path / "model", DRY_RUN="1", GPUS="0 1")
    res = run_sh(RUN_SWEEP, env)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.startswith("sweep: 1 model(s) x 2 task(s) x 2 N = 4 cells; steps: train generate")
    for i, run in enumerate(RUNS):
        assert f"# cell {i} of 4: {run}" in out
    assert out.count("CUDA_VISIBLE_DEVICES=0 ") == 4 and out.count("CUDA_VISIBLE_DEVICES=1 ") == 4
    assert "training/finetuning.py --base_model" in out and "generate run: after training" in out
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_grid_runs_skips_and_redoes_only_what_is_missing(tiny_model_dir, tmp_path):
    grid_inputs(tmp_path)
    bad = mixture(tmp_path, "translate", 4)
    bad.write_text(json.dumps([{"bad": 1}]))
    env = sweep_env(tmp_path, tiny_model_dir)
    out = tmp_path / "out"

    # 1. One cell's data is broken: it fails, the other three finish, the exit status is 1.
    res = run_sh(RUN_SWEEP, env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert status_lines(res.stdout, "done") == {
        (stage, run) for run in RUNS[:3] for stage in ("train", "generate")
    }, res.stdout
    assert status_lines(res.stdout, "FAIL") == {("train", RUNS[3])}, res.stdout
    log = out / "logs" / f"{RUNS[3]}.train.log"
    failed = res.stdout.split("failed cells:")[1]
    assert RUNS[3] in failed and str(log) in failed, res.stdout
    assert "missing field 'instruction'" in failed, res.stdout
    assert "missing field 'instruction'" in log.read_text()
    assert "4 cells: 3 ran, 0 skipped, 1 failed" in res.stdout
    for run in RUNS[:3]:
        assert (out / "checkpoints" / run / "done").is_file()
        gen = json.loads(
            (out / "evaluation" / "generations" / run / "test_summarize.json").read_text()
        )
        assert gen["metadata"]["run_name"] == run and len(gen["outputs"]) == 3
        assert (out / "logs" / f"{run}.generate.log").is_file()

    # 2. Rebuild the broken mixture (the build step makes only what is missing) and lose one
    # finished cell's outputs: exactly those two cells run again.
    bad.unlink()
    shutil.rmtree(out / "checkpoints" / RUNS[0])
    shutil.rmtree(out / "evaluation" / "generations" / RUNS[0])
    untouched = mtimes(
        *(out / d / r for d in ("checkpoints", "evaluation/generations") for r in RUNS[1:3])
    )
    env2 = {**env, **build_pools(tmp_path), "STEPS": "build train generate score report"}
    res = run_sh(RUN_SWEEP, env2)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "building N=4" in res.stdout and bad.is_file(), res.stdout
    assert re.search(r"done\s+score", res.stdout) and re.search(r"done\s+report", res.stdout)
    assert (out / "evaluation" / "scores" / "summary.json").is_file()
    assert (out / "evaluation" / "report" / "results.csv").is_file()
    assert status_lines(res.stdout, "start") == {
        (stage, run) for run in (RUNS[0], RUNS[3]) for stage in ("train", "generate")
    }, res.stdout
    assert status_lines(res.stdout, "skip") == {
        (stage, run) for run in RUNS[1:3] for stage in ("train", "generate")
    }, res.stdout
    assert (
        mtimes(*(out / d / r for d in ("checkpoints", "evaluation/generations") for r in RUNS[1:3]))
        == untouched
    )

    # 3. Everything is done: the whole sweep, and the train and generate sweeps on their own,
    # skip every cell and step and touch nothing.
    before = mtimes(out, tmp_path / "data")
    res = run_sh(RUN_SWEEP, env2)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not re.search(r"^\[[\d:]+\] (start|done)", res.stdout, re.M), res.stdout
    assert re.search(r"skip\s+score\s+\(done, generations unchanged\)", res.stdout)
    assert re.search(r"skip\s+report\s+\(done, scores unchanged\)", res.stdout)
    for script in ("train_sweep.sh", "generate_sweep.sh"):
        res = run_sh(REPO_ROOT / "scripts" / script, env2)
        assert res.returncode == 0, res.stdout + res.stderr
        stage = "train" if script == "train_sweep.sh" else "generate"
        assert status_lines(res.stdout, "skip") == {(stage, run) for run in RUNS}
        assert not status_lines(res.stdout, "start")
        assert "4 cells: 0 ran, 4 skipped, 0 failed" in res.stdout
    assert mtimes(out, tmp_path / "data") == before


# --------------------------------------------------------------------------- shards and DDP


def test_merge_refuses_incomplete_or_foreign_shards(tmp_path):
    run = tmp_path / "run"
    run.mkdir()

    def shard(i: int, n: int, fingerprint: str = "f", ids=("0",)) -> Path:
        doc = {
            "parameters": {"model": "m"},
            "instructions": ["x"] * len(ids),
            "inputs": [],
            "outputs": ["y"] * len(ids),
            "ids": list(ids),
            "metadata": {
                "config_fingerprint": fingerprint,
                "eval_file": str(tmp_path / "gone.json"),
                "eval_sha256": "s",
                "run_name": "run",
                "generation": {"shard": [i, n]},
            },
        }
        path = run / f"test_case.shard{i}-of-{n}.json"
        path.write_text(json.dumps(doc))
        return path

    shard(0, 3, ids=("0", "3"))
    shard(2, 3, ids=("2",))
    with pytest.raises(UserError, match=r"test_case: missing shard\(s\) \[1\] of 3"):
        merge_shards(run)
    shard(1, 3, fingerprint="other", ids=("1",))
    with pytest.raises(UserError, match="config_fingerprint 'other' differs"):
        merge_shards(run)
    shard(1, 3, ids=("1",))
    # The eval file is gone: the order comes from the round-robin split itself.
    (merged,) = merge_shards(run)
    assert json.loads(merged.read_text())["ids"] == ["0", "1", "2", "3"]
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        merge_shards(run)
    merge_shards(run, overwrite=True, remove_shards=True)
    assert sorted(p.name for p in run.iterdir()) == ["test_case.json"]


@pytest.mark.slow
def test_merged_shards_equal_the_unsharded_output(tiny_model_dir, tmp_path):
    evals = write_eval(tmp_path / "test_summarize.json", n=5, inputs=True)
    common = [
        GENERATE,
        "--input_path",
        evals,
        "--base_model",
        tiny_model_dir,
        "--run_name",
        "run",
        "--max_new_tokens",
        "4",
        "--num_beams",
        "1",
        "--batch_size",
        "2",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    jobs = [
        [*common, "--output_path", tmp_path / "whole"],
        *[
            [
                *common,
                "--output_path",
                tmp_path / "sharded",
                "--num_shards",
                "2",
                "--shard_index",
                i,
            ]
            for i in ("0", "1")
        ],
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, *map(str, job)], env=env, stderr=subprocess.PIPE, text=True
        )
        for job in jobs
    ]
    for p in procs:
        assert p.wait(timeout=240) == 0, p.stderr.read()
    res = run_script(MERGE, "--input_path", tmp_path / "sharded" / "run", "--remove_shards")
    assert res.returncode == 0, res.stderr
    whole = json.loads((tmp_path / "whole" / "run" / "test_summarize.json").read_text())
    merged = json.loads((tmp_path / "sharded" / "run" / "test_summarize.json").read_text())
    for key in ("parameters", "instructions", "inputs", "outputs", "ids"):
        assert merged[key] == whole[key], key
    volatile = {"command", "date", "merged_from", "git_hash"}
    assert {k: v for k, v in merged["metadata"].items() if k not in volatile} == {
        k: v for k, v in whole["metadata"].items() if k not in volatile
    }
    rows = (tmp_path / "sharded" / "run" / "test_summarize.jsonl").read_text().splitlines()
    assert [json.loads(r)["id"] for r in rows] == whole["ids"]
    assert sorted(p.name for p in (tmp_path / "sharded" / "run").iterdir()) == [
        "test_summarize.json",
        "test_summarize.jsonl",
    ]


@pytest.mark.slow
def test_two_ddp_processes_on_cpu_write_one_adapter(tiny_model_dir, tmp_path):
    data = write_mixture(tmp_path / "saferpaca_Instructions_100_10_summarize.json", n=12)
    out = tmp_path / "ckpt"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",  # gloo on the CPU even where a GPU exists
        "TRANSFORMERS_VERBOSITY": "info",
    }
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(TRAIN),
            "--base_model",
            str(tiny_model_dir),
            "--data_path",
            str(data),
            "--output_dir",
            str(out),
            "--max_steps",
            "1",
            "--batch_size",
            "4",
            "--micro_batch_size",
            "2",
            "--val_set_size",
            "0",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "prompt_template.json",
        "run_config.json",
    ]
    config = json.loads((out / "run_config.json").read_text())
    assert config["world_size"] == 2
    assert config["effective_batch_size"] == 4  # 2 per device x 2 processes x 1 accumulation
    # The trainer itself saw two processes: 2 per device and no accumulation make 4.
    log = res.stdout + res.stderr
    assert "Total train batch size (w. parallel, distributed & accumulation) = 4" in log
    assert "Gradient Accumulation steps = 1" in log


def test_shell_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).is_file() and shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    res = subprocess.run(
        [shellcheck, "-S", "info", *map(str, SHELL_SCRIPTS)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(
    ("typo", "right"),
    [("TASK", "TASKS"), ("NUMBER", "NUMBERS"), ("SEED", "SEEDS"), ("GPU", "GPUS")],
)
def test_a_misspelt_sweep_variable_is_refused(typo, right):
    with pytest.raises(UserError, match=f"{typo} is not a sweep variable; did you mean {right}"):
        sw.SweepConfig.from_env({typo: "translate"})
    sw.SweepConfig.from_env({"PATH": "/bin", "HOME": "/root", "TASKS": "translate"})  # fine


def test_a_mixture_built_otherwise_is_rebuilt_not_reused(tmp_path):
    from crossdefense.mixture import build_defense_data

    mini = REPO_ROOT / "data" / "mini"
    alpaca = tmp_path / "alpaca.jsonl"
    shutil.copy(mini / "alpaca.jsonl", alpaca)
    sources = {
        "ALPACA_PATH": str(alpaca),
        "SAFETY_PATH": str(mini / "safety.jsonl"),
        "DOCUMENTS_PATH": str(mini / "documents" / "harmful_train.jsonl"),
        "REFUSALS_PATH": str(mini / "refusals.json"),
    }
    env = sweep_env(tmp_path, tmp_path / "model", TASKS="summarize", NUMBERS="2", **sources)
    build_defense_data(
        task="summarize",
        num_defense=2,
        alpaca_path=alpaca,
        alpaca_size=20,
        safety_path=mini / "safety.jsonl",
        num_safety=2,
        documents_path=mini / "documents" / "harmful_train.jsonl",
        refusals_path=mini / "refusals.json",
        output_dir=tmp_path / "data" / "summarize",
    )
    [(_, same)] = sw.build_decisions(sw.SweepConfig.from_env(env))
    assert same.action == "skip"
    [(_, seed)] = sw.build_decisions(sw.SweepConfig.from_env({**env, "BUILD_ARGS": "--seed 7"}))
    assert seed.action == "run" and "--overwrite" in seed.command
    assert "seed 42 -> 7" in seed.reason
    with alpaca.open("a") as f:  # the Alpaca pool was edited since the build
        f.write(json.dumps({"instruction": "New.", "input": "", "output": "Yes."}) + "\n")
    [(_, edited)] = sw.build_decisions(sw.SweepConfig.from_env(env))
    assert edited.action == "run" and "alpaca file changed" in edited.reason
