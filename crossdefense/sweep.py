"""Grid sweeps: cells (model x task x N), one run name per cell, and when a cell may be skipped.

The shell scripts only fan cells out over devices; every decision lives here, so it is tested
without GPUs and is the same for a local sweep and for a SLURM array task.

Resumability rests on two markers per stage directory (`checkpoints/<run>/`,
`<generations>/<run>/`), both JSON holding a hash of everything the stage's output depends on:
`started` is written before the stage runs, `done` after it succeeded. A stage is skipped when
its outputs and a `done` marker with the current hash exist. Outputs found beside a `started`
marker with the current hash were made under the current settings, so an interrupted stage
resumes (training from its last trainer checkpoint, generation from the eval files and JSONL
records it had finished); outputs under another hash are deleted before the stage starts over.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.io import LOCK_FILE, read_json, sha256_file, write_json
from crossdefense.mixture import DEFAULT_ALPACA, DEFAULT_SAFETY_PATH, mixture_name, normalize_grid
from crossdefense.paths import DATA_DIR, REPO_ROOT
from crossdefense.tasks import MIX, TASK_NAMES

STAGES = ("build", "train", "generate", "score", "report")
CELL_STAGES = ("train", "generate")
STARTED, DONE = "started", "done"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "prompt_template.json")
TRAINED_FILES = ("adapter_config.json", "adapter_model.safetensors", "run_config.json")
UPSTREAM_MODELS = "llama=yahma/llama-7b-hf:alpaca llama2=meta-llama/Llama-2-7b-hf:llama2"
# Flags the sweep sets itself per cell; passing them through TRAIN_ARGS/GEN_ARGS would make
# several cells write to one place or resume from the wrong run.
OWN_TRAIN_FLAGS = (
    "base_model",
    "data_path",
    "output_dir",
    "prompt_template_name",
    "resume_from_checkpoint",
    "overwrite",
)
OWN_GEN_FLAGS = (
    "input_path",
    "output_path",
    "base_model",
    "lora_weights",
    "run_name",
    "overwrite",
    "num_shards",
    "shard_index",
)
SCORE_OWN = ("input_path", "output_dir", "overwrite")
REPORT_OWN = ("summary_path", "output_dir", "overwrite")
BUILD_OWN = ("task", "grid", "num_defense", "num_safety", "output_dir")
TRAIN_SCRIPT = Path("training/finetuning.py")
GENERATE_SCRIPT = Path("generation/generate_answers.py")
BUILD_SCRIPT = Path("scripts/build_defense_data.py")
SCORE_SCRIPT = Path("scripts/score_answers.py")
REPORT_SCRIPT = Path("scripts/report.py")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Model:
    name: str
    path: str
    template: str


def parse_models(text: str) -> list[Model]:
    """`name=path_or_hub_id:template` entries separated by spaces; the template defaults to
    alpaca. The last colon splits, so a template is a name or a JSON path without colons."""
    from crossdefense.prompts import load_template

    models: list[Model] = []
    for entry in text.split():
        name, eq, rest = entry.partition("=")
        if not eq or not name or not rest:
            raise UserError(f"MODELS: {entry!r} is not name=path_or_hub_id:template")
        if not _NAME_RE.match(name):
            raise UserError(f"MODELS: model name {name!r} may only use letters, digits, . _ -")
        path, colon, template = rest.rpartition(":")
        if not colon:
            path, template = rest, "alpaca"
        if not path or not template:
            raise UserError(f"MODELS: {entry!r} is not name=path_or_hub_id:template")
        try:
            load_template(template)
        except UserError as e:
            raise UserError(f"MODELS: {entry}: {e}") from None
        if any(m.name == name for m in models):
            raise UserError(f"MODELS: model name {name!r} is used twice")
        models.append(Model(name, path, template))
    if not models:
        raise UserError("MODELS is empty: give entries like llama=yahma/llama-7b-hf:alpaca")
    return models


def script_flags(script: Path) -> set[str] | None:
    """The parameters of a fire script's `main`, read without importing it (None if absent)."""
    import ast

    if not script.is_file():
        return None
    tree = ast.parse(script.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "main":
            a = node.args
            return {x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)}
    return None


def parse_args(text: str, var: str, own: Sequence[str], script: Path | None = None) -> list[str]:
    """Shell-split pass-through flags. Flags the sweep sets per cell are refused, and so are
    flags the script does not have: fire reports those only after `main` has run, i.e. after
    a whole training run."""
    try:
        args = shlex.split(text)
    except ValueError as e:
        raise UserError(f"{var}: cannot split {text!r} ({e})") from None
    known = script_flags(script) if script is not None else None
    for arg in args:
        if arg == "--":
            break  # what follows is for fire itself
        if not arg.startswith("--"):
            continue
        flag = arg[2:].split("=", 1)[0].replace("-", "_")
        if flag in own:
            raise UserError(f"{var}: --{flag} is set by the sweep for each cell; remove it")
        if known is not None and flag not in known and flag.removeprefix("no") not in known:
            raise UserError(f"{var}: {script.relative_to(REPO_ROOT)} has no flag --{flag}")
    return args


def _default_alpaca() -> str:
    local = DATA_DIR / "external" / "alpaca_cleaned.json"
    return str(local.relative_to(REPO_ROOT)) if local.is_file() else DEFAULT_ALPACA


def _rel(path: Path) -> str:
    """A path as the user reads it: relative to the cwd when it lies below it."""
    try:  # no resolve(): the venv's python is a symlink that must stay one
        return str(Path(os.path.abspath(path)).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# Every variable with its default (scripts/run_sweep.sh documents them for users).
DEFAULTS: dict[str, str] = {
    "TASKS": "summarize",
    "NUMBERS": "1000",
    "MODELS": UPSTREAM_MODELS,
    "EVAL_SETS": "test_*",
    "EVAL_DIR": "data/upstream/evaluation",
    "NUM_SAFETY": "100",
    "SEEDS": "",  # e.g. "1 2 3": one adapter per seed (run names end _seed<k>); empty: one run
    "DATA_DIR": "data/training",
    "OUT_DIR": ".",
    "CHECKPOINTS_DIR": "",  # default $OUT_DIR/checkpoints
    "GENERATIONS_DIR": "",  # default $OUT_DIR/evaluation/generations
    "LOGS_DIR": "",  # default $OUT_DIR/logs
    "SCORES_DIR": "",  # default $OUT_DIR/evaluation/scores
    "REPORT_DIR": "",  # default $OUT_DIR/evaluation/report
    "TRAIN_ARGS": "--num_epochs 3 --cutoff_len 1024 --val_set_size 0",
    "GEN_ARGS": "",
    "SCORE_ARGS": "",
    "REPORT_ARGS": "",
    "ALPACA_PATH": "",  # default data/external/alpaca_cleaned.json if present, else the hub id
    "SAFETY_PATH": str(DEFAULT_SAFETY_PATH.relative_to(REPO_ROOT)),
    "DOCUMENTS_PATH": "",
    "REFUSALS_PATH": "",
    "BUILD_ARGS": "",
}


# the shell entry points' own variables (scripts/run_sweep.sh), besides DEFAULTS
SHELL_VARIABLES = ("GPUS", "STEPS", "DRY_RUN", "PYTHON")


def check_variable_names(env: Mapping[str, str]) -> None:
    """A variable that looks like a misspelt sweep variable (`TASK` for `TASKS`) is an error:
    ignored, it would plan the default grid on the default 7B models."""
    import difflib

    known = (*DEFAULTS, *SHELL_VARIABLES)
    for name in sorted(env):
        if name in known or not name.isupper() or not env.get(name, "").strip():
            continue
        near = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
        if near:
            raise UserError(
                f"{name} is not a sweep variable; did you mean {near[0]}? (unset {name} if it "
                "is meant for something else)"
            )


@dataclass
class SweepConfig:
    tasks: list[str]
    numbers: list[int]
    models: list[Model]
    eval_sets: list[str]
    eval_dir: Path
    num_safety: int
    seeds: list[int | None]
    data_dir: Path
    checkpoints_dir: Path
    generations_dir: Path
    logs_dir: Path
    scores_dir: Path
    report_dir: Path
    train_args: list[str]
    gen_args: list[str]
    score_args: list[str]
    report_args: list[str]
    alpaca_path: str
    safety_path: str
    documents_path: str
    refusals_path: str
    build_args: list[str]
    _eval_files: list[Path] | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SweepConfig:
        """Read the sweep's variables (unset or empty ones take their default)."""
        env = os.environ if env is None else env
        check_variable_names(env)

        def get(key: str) -> str:
            value = env.get(key, "")
            return value if value.strip() else DEFAULTS[key]

        tasks = get("TASKS").split()
        for t in tasks:
            if t not in (*TASK_NAMES, MIX):
                raise UserError(
                    f"TASKS: unknown task {t!r}; expected {', '.join((*TASK_NAMES, MIX))}"
                )
        if len(set(tasks)) != len(tasks):
            raise UserError(f"TASKS: a task is listed twice in {get('TASKS')!r}")
        try:
            numbers = normalize_grid(get("NUMBERS").split())
        except UserError as e:
            raise UserError(f"NUMBERS: {str(e).removeprefix('--grid: ')}") from None
        try:
            num_safety = int(get("NUM_SAFETY"))
        except ValueError:
            num_safety = -1
        if num_safety < 0:
            raise UserError(f"NUM_SAFETY: {get('NUM_SAFETY')!r} is not a non-negative integer")
        seeds = parse_seeds(env.get("SEEDS", ""))
        out = Path(get("OUT_DIR"))

        def out_dir(key: str, default: str) -> Path:
            return Path(env.get(key) or out / default)

        return cls(
            tasks=tasks,
            numbers=numbers,
            models=parse_models(get("MODELS")),
            eval_sets=get("EVAL_SETS").split(),
            eval_dir=Path(get("EVAL_DIR")),
            num_safety=num_safety,
            seeds=seeds,
            data_dir=Path(get("DATA_DIR")),
            checkpoints_dir=out_dir("CHECKPOINTS_DIR", "checkpoints"),
            generations_dir=out_dir("GENERATIONS_DIR", "evaluation/generations"),
            logs_dir=out_dir("LOGS_DIR", "logs"),
            scores_dir=out_dir("SCORES_DIR", "evaluation/scores"),
            report_dir=out_dir("REPORT_DIR", "evaluation/report"),
            train_args=parse_args(
                get("TRAIN_ARGS"),
                "TRAIN_ARGS",
                (*OWN_TRAIN_FLAGS, "seed") if seeds != [None] else OWN_TRAIN_FLAGS,
                REPO_ROOT / TRAIN_SCRIPT,
            ),
            gen_args=parse_args(
                get("GEN_ARGS"), "GEN_ARGS", OWN_GEN_FLAGS, REPO_ROOT / GENERATE_SCRIPT
            ),
            score_args=parse_args(
                get("SCORE_ARGS"), "SCORE_ARGS", SCORE_OWN, REPO_ROOT / SCORE_SCRIPT
            ),
            report_args=parse_args(
                get("REPORT_ARGS"), "REPORT_ARGS", REPORT_OWN, REPO_ROOT / REPORT_SCRIPT
            ),
            alpaca_path=env.get("ALPACA_PATH") or _default_alpaca(),
            safety_path=get("SAFETY_PATH"),
            documents_path=env.get("DOCUMENTS_PATH", ""),
            refusals_path=env.get("REFUSALS_PATH", ""),
            build_args=parse_args(
                get("BUILD_ARGS"), "BUILD_ARGS", BUILD_OWN, REPO_ROOT / BUILD_SCRIPT
            ),
        )

    def eval_files(self) -> list[Path]:
        """EVAL_SETS entries: a stem (EVAL_DIR/<stem>.json), a glob in EVAL_DIR, a path, or
        `xstest` (data/xstest/xstest_prompts.csv, from scripts/download_data.sh)."""
        from crossdefense.paths import XSTEST_DIR
        from crossdefense.xstest import PROMPTS_FILE

        if self._eval_files is not None:
            return self._eval_files
        files: list[Path] = []
        for entry in self.eval_sets:
            if any(c in entry for c in "*?["):
                base = Path(entry) if Path(entry).is_absolute() else self.eval_dir / entry
                found = sorted(
                    p for p in base.parent.glob(base.name) if p.suffix in (".json", ".csv")
                )
            elif entry == "xstest":
                found = [XSTEST_DIR / PROMPTS_FILE]
            elif entry.endswith((".json", ".jsonl", ".csv")):
                given = Path(entry)
                found = [given if given.is_file() else self.eval_dir / entry]
            else:
                found = [self.eval_dir / f"{entry}.json"]
            found = [p for p in found if p.is_file()]
            if not found:
                raise UserError(
                    f"EVAL_SETS: no evaluation file matches {entry!r} in {self.eval_dir}"
                )
            files.extend(found)
        files = list(dict.fromkeys(files))
        stems: dict[str, Path] = {}
        for f in files:
            if f.stem in stems:
                raise UserError(
                    f"EVAL_SETS: {stems[f.stem]} and {f} have the same name; their outputs "
                    "would collide"
                )
            stems[f.stem] = f
        self._eval_files = files
        return files


def parse_seeds(text: str) -> list[int | None]:
    """SEEDS: whitespace-separated non-negative integers; empty means one run, no seed axis
    (the trainer's default seed, upstream's run names)."""
    items = text.replace(",", " ").split()
    if not items:
        return [None]
    seeds = []
    for item in items:
        if not item.isdigit():
            raise UserError(f"SEEDS: {item!r} is not a non-negative integer")
        seeds.append(int(item))
    if len(set(seeds)) != len(seeds):
        raise UserError(f"SEEDS: a seed is listed twice in {text!r}")
    return seeds


# --------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    index: int
    model: Model
    task: str
    n: int
    num_safety: int
    seed: int | None = None  # None: no seed axis (the trainer's default seed)

    @property
    def run_name(self) -> str:
        """Upstream's checkpoint names: Instructions_{K}_{N}_{task}_{model}; N=0 is the
        no-defense baseline, one run per model whatever the task. With SEEDS, `_seed<k>`."""
        if self.n == 0:
            name = f"Instructions_{self.num_safety}_{self.model.name}"
        else:
            name = f"Instructions_{self.num_safety}_{self.n}_{self.task}_{self.model.name}"
        return name if self.seed is None else f"{name}_seed{self.seed}"


def cells(cfg: SweepConfig) -> list[Cell]:
    """Model-major, then task, then N, then seed; the order of SLURM array indices."""
    out: list[Cell] = []
    seen: set[str] = set()
    for model in cfg.models:
        for task in cfg.tasks:
            for n in cfg.numbers:
                for seed in cfg.seeds:
                    cell = Cell(len(out), model, task, n, cfg.num_safety, seed)
                    if cell.run_name not in seen:
                        seen.add(cell.run_name)
                        out.append(cell)
    return out


def cell_at(cfg: SweepConfig, index: int | None) -> Cell:
    """The cell of an index, or of $SLURM_ARRAY_TASK_ID when no index is given."""
    all_cells = cells(cfg)
    if index is None:
        raw = os.environ.get("SLURM_ARRAY_TASK_ID", "")
        if not raw.strip():
            raise UserError("give --index (or run as a SLURM array task: SLURM_ARRAY_TASK_ID)")
        try:
            index = int(raw)
        except ValueError:
            raise UserError(f"SLURM_ARRAY_TASK_ID={raw!r} is not an integer") from None
    if isinstance(index, bool) or not isinstance(index, int):
        raise UserError(f"--index {index!r} is not an integer")
    if not 0 <= index < len(all_cells):
        raise UserError(
            f"cell index {index} is out of range: the sweep has {len(all_cells)} cells "
            f"(0-{len(all_cells) - 1})"
        )
    return all_cells[index]


@dataclass(frozen=True)
class CellPaths:
    mixture: Path
    checkpoint: Path
    generations: Path
    train_log: Path
    generate_log: Path


def cell_paths(cfg: SweepConfig, cell: Cell) -> CellPaths:
    run = cell.run_name
    # The N=0 baseline lives in the first task's folder, where the builder writes it.
    task_dir = cfg.tasks[0] if cell.n == 0 else cell.task
    return CellPaths(
        mixture=cfg.data_dir / task_dir / mixture_name(cfg.num_safety, cell.n, cell.task),
        checkpoint=cfg.checkpoints_dir / run,
        generations=cfg.generations_dir / run,
        train_log=cfg.logs_dir / f"{run}.train.log",
        generate_log=cfg.logs_dir / f"{run}.generate.log",
    )


# --------------------------------------------------------------------------- markers and hashes


def config_hash(config: Mapping[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _sha(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def train_config(cfg: SweepConfig, cell: Cell) -> dict[str, Any]:
    """What an adapter depends on. The data counts by content, not by path."""
    mixture = cell_paths(cfg, cell).mixture
    return {
        "base_model": cell.model.path,
        "template": cell.model.template,
        "data_sha256": _sha(mixture),
        "train_args": cfg.train_args,
        **({"seed": cell.seed} if cell.seed is not None else {}),
    }


def generate_config(cfg: SweepConfig, cell: Cell) -> dict[str, Any]:
    """What the generations depend on: the adapter by content (a retrained but identical
    adapter keeps its generations), the eval files by content, the decoding flags."""
    ckpt = cell_paths(cfg, cell).checkpoint
    return {
        "base_model": cell.model.path,
        "adapter": {name: _sha(ckpt / name) for name in ADAPTER_FILES},
        "eval_files": {p.stem: sha256_file(p) for p in cfg.eval_files()},
        "gen_args": cfg.gen_args,
    }


def read_marker(directory: Path, name: str) -> dict[str, Any] | None:
    path = directory / name
    if not path.is_file():
        return None
    try:
        marker = read_json(path)
    except UserError:
        return None  # a torn or hand-edited marker only means "not done"
    return marker if isinstance(marker, dict) else None


def write_marker(directory: Path, name: str, config: Mapping[str, Any], **extra: Any) -> None:
    write_json(
        directory / name,
        {
            "config_hash": config_hash(config),
            "config": config,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **extra,
        },
    )


def _changed(marker: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    old = marker.get("config") or {}
    keys = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
    return ", ".join(keys) or "settings"


def _is_current(marker: Mapping[str, Any] | None, config: Mapping[str, Any]) -> bool:
    return marker is not None and marker.get("config_hash") == config_hash(config)


def latest_checkpoint(directory: Path) -> Path | None:
    """The trainer checkpoint with the highest step that can be resumed from."""
    found = []
    for p in directory.glob("checkpoint-*"):
        step = p.name.removeprefix("checkpoint-")
        if step.isdigit() and (p / "trainer_state.json").is_file():
            found.append((int(step), p))
    return max(found)[1] if found else None


# --------------------------------------------------------------------------- decisions


@dataclass
class Decision:
    """What a stage of a cell will do. `action`: skip, run, resume, mark (outputs complete,
    only the done marker is missing) or error (cannot run, `reason` says why)."""

    stage: str
    action: str
    reason: str
    config: dict[str, Any] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    remove: list[Path] = field(default_factory=list)  # stale outputs deleted before running


def _script(path: Path) -> str:
    return _rel(REPO_ROOT / path)


def python() -> str:
    return _rel(Path(sys.executable)) if Path(sys.executable).is_absolute() else sys.executable


def devices(gpu: str | None) -> list[str]:
    """The CUDA devices of a worker: its GPUS entry, else (SLURM) CUDA_VISIBLE_DEVICES."""
    if gpu is None:
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if gpu.strip() in ("", "cpu"):
        return []
    return [d for d in gpu.split(",") if d.strip()]


def train_launcher(gpu: str | None) -> list[str]:
    """One process per device of the worker: DDP via torchrun when it has several."""
    n = len(devices(gpu))
    if n > 1:
        return [python(), "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    return [python()]


def decide_train(cfg: SweepConfig, cell: Cell, gpu: str | None = None) -> Decision:
    paths = cell_paths(cfg, cell)
    config = train_config(cfg, cell)
    ckpt = paths.checkpoint
    command = [
        *train_launcher(gpu),
        _script(TRAIN_SCRIPT),
        "--base_model",
        cell.model.path,
        "--data_path",
        str(paths.mixture),
        "--output_dir",
        str(ckpt),
        "--prompt_template_name",
        cell.model.template,
        *(["--seed", str(cell.seed)] if cell.seed is not None else []),
        *cfg.train_args,
    ]
    trained = all((ckpt / f).is_file() for f in TRAINED_FILES)
    if config["data_sha256"] is None:
        return Decision("train", "error", f"mixture {paths.mixture} not found", config, command)
    done = read_marker(ckpt, DONE)
    if trained and _is_current(done, config):
        return Decision("train", "skip", "done, settings unchanged", config)
    started = read_marker(ckpt, STARTED)
    if _is_current(started, config):
        if trained:
            return Decision("train", "mark", "adapter complete, marking done", config)
        last = latest_checkpoint(ckpt)
        if last is not None:
            resume = [*command, "--resume_from_checkpoint", str(last)]
            return Decision("train", "resume", f"interrupted: resuming {last.name}", config, resume)
        reason = "interrupted before its first checkpoint: starting over"
    elif done is not None or started is not None:
        reason = f"settings changed ({_changed(done or started or {}, config)}): starting over"
    elif trained:
        reason = "adapter from outside the sweep: starting over"
    else:
        reason = "not trained yet"
    stale = [p for p in ckpt.glob("checkpoint-*") if p.is_dir()]
    stale += [ckpt / f for f in (*TRAINED_FILES, "prompt_template.json", DONE)]
    return Decision("train", "run", reason, config, command, [p for p in stale if p.exists()])


def generation_outputs(cfg: SweepConfig, cell: Cell) -> dict[str, tuple[Path, Path]]:
    """eval stem -> (final JSON, resumable JSONL), as crossdefense.generation names them."""
    run_dir = cell_paths(cfg, cell).generations
    return {
        p.stem: (run_dir / f"{p.stem}.json", run_dir / f"{p.stem}.jsonl") for p in cfg.eval_files()
    }


def decide_generate(cfg: SweepConfig, cell: Cell, gpu: str | None = None) -> Decision:
    paths = cell_paths(cfg, cell)
    ckpt, run_dir = paths.checkpoint, paths.generations

    def command(files: Sequence[Path]) -> list[str]:
        return [
            python(),
            _script(GENERATE_SCRIPT),
            "--input_path",
            ",".join(str(f) for f in files),
            "--output_path",
            str(cfg.generations_dir),
            "--base_model",
            cell.model.path,
            "--lora_weights",
            str(ckpt),
            "--run_name",
            cell.run_name,
            *cfg.gen_args,
        ]

    files = cfg.eval_files()
    if not all((ckpt / f).is_file() for f in TRAINED_FILES):
        return Decision("generate", "error", f"no trained adapter in {ckpt}", {}, command(files))
    config = generate_config(cfg, cell)
    outputs = generation_outputs(cfg, cell)
    finished = [f for f in files if outputs[f.stem][0].is_file()]
    done = read_marker(run_dir, DONE)
    if len(finished) == len(files) and _is_current(done, config):
        return Decision("generate", "skip", "done, settings unchanged", config)
    started = read_marker(run_dir, STARTED)
    if _is_current(started, config):
        todo = [f for f in files if f not in finished]
        if not todo:
            return Decision("generate", "mark", "outputs complete, marking done", config)
        partial = sum(outputs[f.stem][1].is_file() for f in todo)
        reason = f"interrupted: resuming {len(todo)} of {len(files)} eval files"
        reason += f" ({partial} partly done)" if partial else ""
        return Decision("generate", "resume", reason, config, command(todo))
    if done is not None or started is not None:
        reason = f"settings changed ({_changed(done or started or {}, config)}): starting over"
    else:
        reason = "not generated yet"
    stale = [p for pair in outputs.values() for p in pair if p.exists()]
    stale += [run_dir / DONE] if (run_dir / DONE).exists() else []
    return Decision("generate", "run", reason, config, command(files), stale)


def decide(cfg: SweepConfig, cell: Cell, stage: str, gpu: str | None = None) -> Decision:
    if stage == "train":
        return decide_train(cfg, cell, gpu)
    if stage == "generate":
        return decide_generate(cfg, cell, gpu)
    raise UserError(f"unknown cell stage {stage!r}; expected train or generate")


def parse_steps(steps: str | Sequence[str] | None) -> list[str]:
    """STEPS / --steps: stage names separated by spaces or commas, kept in pipeline order."""
    if steps is None:
        return list(STAGES)
    items = steps.replace(",", " ").split() if isinstance(steps, str) else list(steps)
    for s in items:
        if s not in STAGES:
            raise UserError(f"STEPS: unknown step {s!r}; expected some of {' '.join(STAGES)}")
    if not items:
        raise UserError(f"STEPS is empty; expected some of {' '.join(STAGES)}")
    return [s for s in STAGES if s in items]


# --------------------------------------------------------------------------- running a cell


def _now() -> str:
    return time.strftime("%H:%M:%S")


def say(line: str) -> None:
    """Print one line in a single write: workers share stdout, and under PYTHONUNBUFFERED
    print() writes the text and its newline separately, so lines of two workers could merge."""
    sys.stdout.write(line.rstrip() + "\n")
    sys.stdout.flush()


def status(word: str, stage: str, cell: Cell, total: int, detail: str = "") -> None:
    """One line per cell stage as it starts and ends."""
    say(f"[{_now()}] {word:<6} {stage:<8} cell {cell.index} of {total}  {cell.run_name}  {detail}")


class _Terminated(Exception):
    pass


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


def run_logged(command: Sequence[str], log: Path, header: str) -> int:
    """Run `command` appending its output to `log`; SIGTERM stops the child too."""
    log.parent.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n### {_dt.datetime.now().isoformat(timespec='seconds')} {header}\n")
        f.write(f"### {shlex.join(command)}\n")
        f.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        child = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            return child.wait()
        except (_Terminated, KeyboardInterrupt):
            child.terminate()
            child.wait()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)


def last_error(log: Path) -> str:
    """The last `error: ...` line of a log (the scripts' one-line message), for the summary."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    found = [ln.strip() for ln in lines if ln.startswith(("error:", "### the command"))]
    return found[-1].removeprefix("### ") if found else ""


def _remove(paths: Sequence[Path]) -> None:
    import shutil

    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def run_stage(
    cfg: SweepConfig, cell: Cell, stage: str, total: int, gpu: str | None
) -> dict[str, Any]:
    """Decide, run and mark one stage of one cell; return its result row."""
    paths = cell_paths(cfg, cell)
    log = paths.train_log if stage == "train" else paths.generate_log
    directory = paths.checkpoint if stage == "train" else paths.generations
    result: dict[str, Any] = {"log": str(log), "seconds": 0.0}
    try:
        d = decide(cfg, cell, stage, gpu)
    except UserError as e:
        d = Decision(stage, "error", str(e))
    result["reason"] = d.reason
    if d.action == "skip":
        status("skip", stage, cell, total, f"({d.reason})")
        return {**result, "status": "skip"}
    if d.action == "mark":
        write_marker(directory, DONE, d.config, stage=stage, run_name=cell.run_name)
        status("skip", stage, cell, total, f"({d.reason})")
        return {**result, "status": "skip"}
    if d.action == "error":
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"\n### {_dt.datetime.now().isoformat(timespec='seconds')} error: {d.reason}\n")
        status("FAIL", stage, cell, total, f"error: {d.reason}  log: {_rel(log)}")
        return {**result, "status": "fail"}
    where = "cpu" if not devices(gpu) else ",".join(devices(gpu))
    status("start", stage, cell, total, f"gpu={where}  {d.action}: {d.reason}")
    start = time.monotonic()
    _remove(d.remove)
    # The sweep owns this cell (its claim), so a writer lock here was left by an earlier attempt
    # of the same stage, possibly on another node (a requeued SLURM task): release it.
    lock = directory / LOCK_FILE
    if lock.exists():
        say(f"releasing {_rel(lock)} left by an earlier attempt of this cell")
        lock.unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    write_marker(directory, STARTED, d.config, stage=stage, command=shlex.join(d.command))
    try:
        rc = run_logged(d.command, log, f"cell {cell.index} {cell.run_name} {stage} gpu={where}")
    except (_Terminated, KeyboardInterrupt) as e:
        # Stopped from outside: the next sweep resumes this stage from its `started` marker.
        status("stop", stage, cell, total, f"{time.monotonic() - start:.1f}s  log: {_rel(log)}")
        raise SystemExit(143 if isinstance(e, _Terminated) else 130) from None
    seconds = round(time.monotonic() - start, 1)
    result["seconds"] = seconds
    if rc == 0:
        try:
            after = decide(cfg, cell, stage, gpu)
        except UserError as e:
            after = Decision(stage, "error", str(e))
        if after.action not in ("mark", "skip"):
            rc = 1
            with open(log, "a", encoding="utf-8") as f:
                f.write(
                    f"### the command succeeded but its outputs are incomplete: {after.reason}\n"
                )
    if rc != 0:
        result["reason"] = f"exit {rc}" + (f": {last_error(log)}" if last_error(log) else "")
        status("FAIL", stage, cell, total, f"{seconds:.1f}s  exit {rc}  log: {_rel(log)}")
        return {**result, "status": "fail", "exit_code": rc}
    write_marker(directory, DONE, d.config, stage=stage, run_name=cell.run_name, seconds=seconds)
    status("done", stage, cell, total, f"{seconds:.1f}s")
    return {**result, "status": "done"}


def run_cell(
    cfg: SweepConfig,
    index: int | None,
    steps: Sequence[str],
    gpu: str | None = None,
    results_dir: str | Path | None = None,
) -> bool:
    """Run the cell stages of `steps` in order; a failed stage stops the cell. True if all ok."""
    cell = cell_at(cfg, index)
    total = len(cells(cfg))
    row: dict[str, Any] = {
        "index": cell.index,
        "run_name": cell.run_name,
        "gpu": gpu if gpu is not None else os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "stages": {},
    }
    out = Path(results_dir) / f"cell-{cell.index}.json" if results_dir else None
    ok = True
    for stage in (s for s in steps if s in CELL_STAGES):
        row["stages"][stage] = run_stage(cfg, cell, stage, total, gpu)
        if out is not None:
            write_json(out, row)
        if row["stages"][stage]["status"] == "fail":
            ok = False
            break
    return ok


def summarize(cfg: SweepConfig, results_dir: str | Path, steps: Sequence[str]) -> bool:
    """Print the final table and the failed cells with their logs; True if none failed."""
    stages = [s for s in steps if s in CELL_STAGES]
    all_cells = cells(cfg)
    rows = []
    failed: list[str] = []
    counts = {"done": 0, "skip": 0, "fail": 0}
    for cell in all_cells:
        path = Path(results_dir) / f"cell-{cell.index}.json"
        row = read_json(path) if path.is_file() else {"gpu": "", "stages": {}}
        cols = []
        for s in stages:
            r = row["stages"].get(s)
            if r is None:
                cols.append("-")
                continue
            text = {"done": "done", "skip": "skip", "fail": "FAIL"}[r["status"]]
            cols.append(f"{text} {r['seconds']:.0f}s" if r["status"] != "skip" else text)
        stage_status = [row["stages"].get(s, {}).get("status") for s in stages]
        if "fail" in stage_status or not row["stages"]:
            counts["fail"] += 1
            bad = next(
                (s for s in stages if row["stages"].get(s, {}).get("status") == "fail"), None
            )
            if bad is None:
                failed.append(f"  {cell.index}  {cell.run_name}: no result (its worker died)")
            else:
                r = row["stages"][bad]
                failed.append(
                    f"  {cell.index}  {cell.run_name} ({bad}): {r.get('reason', '')}; "
                    f"log: {_rel(Path(r['log']))}"
                )
        elif "done" in stage_status:
            counts["done"] += 1
        else:
            counts["skip"] += 1
        rows.append([str(cell.index), cell.run_name, str(row.get("gpu") or "cpu"), *cols])
    header = ["cell", "run", "gpu", *stages]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("\nsummary", flush=True)
    for r in [header, *rows]:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(
        f"{len(all_cells)} cells: {counts['done']} ran, {counts['skip']} skipped, "
        f"{counts['fail']} failed"
    )
    if failed:
        print("failed cells:")
        print("\n".join(failed), flush=True)
    return not failed


# --------------------------------------------------------------------------- build, score, report


def build_decisions(cfg: SweepConfig) -> list[tuple[str, Decision]]:
    """One mixture build per task, for the Ns whose mixture is missing (nested sampling makes
    building a subset of the grid give the same files as building all of it)."""
    out = []
    for task in cfg.tasks:
        missing = missing_mixtures(cfg, task)
        if not missing:
            out.append((task, Decision("build", "skip", "all mixtures present")))
            continue
        if max(missing) > 0 and not (cfg.documents_path and cfg.refusals_path):
            reason = (
                f"N={','.join(map(str, missing))} missing and DOCUMENTS_PATH/REFUSALS_PATH are "
                "not set: those cells will fail"
            )
            out.append((task, Decision("build", "error", reason)))
            continue
        command = [
            python(),
            _script(BUILD_SCRIPT),
            "--task",
            task,
            f"--grid={','.join(map(str, missing))}",
            "--num_safety",
            str(cfg.num_safety),
            "--alpaca_path",
            cfg.alpaca_path,
            "--safety_path",
            cfg.safety_path,
            "--output_dir",
            str(cfg.data_dir / task),
        ]
        if max(missing) > 0:
            command += ["--documents_path", cfg.documents_path]
            command += ["--refusals_path", cfg.refusals_path]
        if cfg.eval_dir.is_dir():
            command += ["--eval_dir", str(cfg.eval_dir)]  # the leakage check
        reason = f"building N={','.join(map(str, missing))}"
        out.append((task, Decision("build", "run", reason, command=command + cfg.build_args)))
    return out


def _mixture(cfg: SweepConfig, task: str, n: int) -> Path:
    return cfg.data_dir / task / mixture_name(cfg.num_safety, n, task)


def missing_mixtures(cfg: SweepConfig, task: str) -> list[int]:
    """The Ns of `task` whose mixture is not there (the N=0 baseline belongs to the first task)."""
    ns = [n for n in cfg.numbers if n > 0 or task == cfg.tasks[0]]
    return [n for n in ns if not _mixture(cfg, task, n).is_file()]


def score_decision(cfg: SweepConfig) -> Decision:
    """Score every finished cell of the sweep into SCORES_DIR (again only when a generation
    or SCORE_ARGS changed)."""
    script = REPO_ROOT / SCORE_SCRIPT
    if not script.is_file():
        return Decision("score", "skip", "scripts/score_answers.py not found")
    run_dirs = [
        cell_paths(cfg, c).generations
        for c in cells(cfg)
        if read_marker(cell_paths(cfg, c).generations, DONE) is not None
    ]
    if not run_dirs:
        return Decision("score", "skip", "no finished generations")
    config = {
        "generations": {
            f"{d.name}/{p.name}": sha256_file(p) for d in run_dirs for p in sorted(d.glob("*.json"))
        },
        "score_args": cfg.score_args,
    }
    summary = cfg.scores_dir / "summary.json"
    if summary.is_file() and _is_current(read_marker(cfg.scores_dir, DONE), config):
        return Decision("score", "skip", "done, generations unchanged", config)
    command = [
        python(),
        _rel(script),
        "--input_path",
        ",".join(str(d) for d in run_dirs),
        "--output_dir",
        str(cfg.scores_dir),
        *cfg.score_args,
    ]
    if summary.exists() or (cfg.scores_dir / "scores.jsonl").exists():
        command.append("--overwrite")
    return Decision("score", "run", f"{len(run_dirs)} finished cells", config, command)


def report_decision(cfg: SweepConfig) -> Decision:
    script = REPO_ROOT / REPORT_SCRIPT
    summary = cfg.scores_dir / "summary.json"
    if not script.is_file():
        return Decision("report", "skip", "scripts/report.py not found")
    if not summary.is_file():
        return Decision("report", "skip", f"no {summary} yet")
    config = {"summary_sha256": sha256_file(summary), "report_args": cfg.report_args}
    if _is_current(read_marker(cfg.report_dir, DONE), config):
        return Decision("report", "skip", "done, scores unchanged", config)
    command = [
        python(),
        _rel(script),
        "--summary_path",
        str(summary),
        "--output_dir",
        str(cfg.report_dir),
        *cfg.report_args,
    ]
    if cfg.report_dir.is_dir() and any(p.name != DONE for p in cfg.report_dir.iterdir()):
        command.append("--overwrite")
    return Decision("report", "run", "scores changed", config, command)


def run_step(cfg: SweepConfig, step: str) -> bool:
    """The sweep-wide steps (build, score, report), with the same status lines as cells."""
    if step == "build":
        todo = [(f"build.{task}", task, d) for task, d in build_decisions(cfg)]
    elif step == "score":
        todo = [("score", "", score_decision(cfg))]
    elif step == "report":
        todo = [("report", "", report_decision(cfg))]
    else:
        raise UserError(f"unknown sweep step {step!r}; expected build, score or report")
    ok = True
    for log_name, what, d in todo:
        label = f"[{_now()}] {{:<6}} {step:<8} {what}".rstrip()
        if d.action == "skip":
            say(f"{label.format('skip')}  ({d.reason})")
            continue
        if d.action == "error":
            # A build that cannot run is reported, not fatal: its cells fail on their own.
            say(f"{label.format('warn')}  {d.reason}")
            continue
        log = cfg.logs_dir / f"{log_name}.log"
        say(f"{label.format('start')}  {d.reason}")
        start = time.monotonic()
        rc = run_logged(d.command, log, step)
        seconds = time.monotonic() - start
        if rc != 0:
            say(f"{label.format('FAIL')}  {seconds:.1f}s  exit {rc}  log: {_rel(log)}")
            ok = False
            continue
        if step != "build":
            directory = cfg.scores_dir if step == "score" else cfg.report_dir
            write_marker(directory, DONE, d.config, stage=step)
        say(f"{label.format('done')}  {seconds:.1f}s")
    return ok


# --------------------------------------------------------------------------- the plan


def _decide_for_plan(cfg: SweepConfig, cell: Cell, stage: str, gpu: str | None) -> Decision:
    """As `decide`, but a generate stage after a train stage that will run is predicted."""
    try:
        return decide(cfg, cell, stage, gpu)
    except UserError as e:
        return Decision(stage, "error", str(e))


def cell_commands(
    cfg: SweepConfig,
    index: int | None,
    steps: Sequence[str],
    gpu: str | None = None,
    to_build: Sequence[Path] = (),
) -> list[str]:
    """Lines describing what running one cell would do: decisions and the exact commands.
    `to_build`: mixtures the build step will make first."""
    cell = cell_at(cfg, index)
    where = ",".join(devices(gpu)) or "cpu"
    lines = [
        f"# cell {cell.index} of {len(cells(cfg))}: {cell.run_name}  model={cell.model.name} "
        f"task={cell.task} N={cell.n}  gpu={where}"
    ]
    train_runs = False
    for stage in (s for s in steps if s in CELL_STAGES):
        d = _decide_for_plan(cfg, cell, stage, gpu)
        if stage == "train" and d.action == "error" and cell_paths(cfg, cell).mixture in to_build:
            d = Decision("train", "run", "after the build step", command=d.command)
        if stage == "generate" and train_runs and d.action == "error":
            d = Decision("generate", "run", "after training", command=d.command)
        train_runs = train_runs or (stage == "train" and d.action in ("run", "resume"))
        lines.append(f"  {stage:<8} {d.action}: {d.reason}")
        if d.command and d.action in ("run", "resume", "error"):
            env = f"CUDA_VISIBLE_DEVICES={','.join(devices(gpu))} " if gpu is not None else ""
            lines.append(f"    {env}{shlex.join(d.command)}")
    return lines


def plan_lines(cfg: SweepConfig, steps: Sequence[str], gpus: Sequence[str]) -> list[str]:
    """The DRY_RUN view: cells, the worker each would go to, decisions and commands."""
    all_cells = cells(cfg)
    lines = [
        f"sweep: {len(cfg.models)} model(s) x {len(cfg.tasks)} task(s) x {len(cfg.numbers)} N "
        f"= {len(all_cells)} cells; steps: {' '.join(steps)}; workers: {' '.join(gpus)}"
    ]
    if "generate" in steps:
        files = cfg.eval_files()
        lines.append(f"eval sets ({len(files)}): {', '.join(_rel(f) for f in files)}")
    to_build: list[Path] = []
    if "build" in steps:
        for task, d in build_decisions(cfg):
            lines.append(f"build {task}: {d.action}: {d.reason}")
            if d.command:
                lines.append(f"    {shlex.join(d.command)}")
            if d.action == "run":
                to_build += [_mixture(cfg, task, n) for n in missing_mixtures(cfg, task)]
    new_outputs = False
    for cell in all_cells:
        gpu = gpus[cell.index % len(gpus)] if gpus else None
        cell_lines = cell_commands(cfg, cell.index, steps, gpu, to_build)
        new_outputs |= any(
            ln.startswith(("  generate run", "  generate resume")) for ln in cell_lines
        )
        lines += cell_lines
    for step, decision in (("score", score_decision), ("report", report_decision)):
        if step not in steps:
            continue
        d = decision(cfg)
        if new_outputs and d.action == "skip" and "not found" not in d.reason:
            # Its inputs are still to be made; the command is known once they are.
            lines.append(f"{step}: run: after the cells")
            continue
        new_outputs |= d.action == "run"
        lines.append(f"{step}: {d.action}: {d.reason}")
        if d.command:
            lines.append(f"    {shlex.join(d.command)}")
    if len(gpus) > 1:
        lines.append(
            "(gpu: the first round; each worker then takes the next waiting cell when it is free)"
        )
    return lines
