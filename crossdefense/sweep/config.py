"""What a sweep is: a sweep file (TOML under configs/sweeps/) with environment variables on top.

Every key of a sweep file is the lowercase name of a variable (`tasks` is `TASKS`). The file is
turned into the variables' text form and read by the same parser as the environment, so a file
and a variable mean exactly the same thing; a variable that is set (not empty) beats the file,
and what neither sets keeps the default below (the paper's experiment).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.cli import as_ints
from crossdefense.evalsets import Part, encoded, write_part
from crossdefense.io import sha256_file
from crossdefense.mixture import DEFAULT_ALPACA, DEFAULT_SAFETY_PATH, normalize_grid
from crossdefense.paths import CONFIGS_DIR, DATA_DIR, REPO_ROOT
from crossdefense.tasks import MIX, TASK_NAMES

STAGES = ("build", "train", "generate", "capabilities", "score", "report")
CELL_STAGES = ("train", "generate", "capabilities")
SWEEPS_DIR = CONFIGS_DIR / "sweeps"
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
CAPABILITIES_SCRIPT = Path("scripts/eval_capabilities.py")
CAPABILITY_OWN = ("base_model", "lora_weights", "output_dir", "run_name", "overwrite")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

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
    # benign documents with an answer per task, added under the defended task and two others
    # (scripts/build_defense_data.py --benign_documents_path; the embedded demo's mixture)
    "BENIGN_DOCUMENTS": "",
    "METHODS": "sft",  # sft and/or dpo (preference pairs; DATA_DIR/<task>/*.dpo.json must exist)
    "DPO_ARGS": "",  # training flags of the dpo cells, over TRAIN_ARGS (e.g. --learning_rate)
    "DPO_INIT": "base",  # dpo cells start from a fresh LoRA (base) or their SFT cell's adapter
    "BASE_RUNS": "no",  # yes: also evaluate each model untrained (run base_<model>)
    "EVAL_OFFSET": "0",  # first document of each upstream-style eval file
    "EVAL_LIMIT": "0",  # documents per eval file from EVAL_OFFSET on (0 = to the end)
    "XSTEST_PER_TYPE": "0",  # XSTest prompts per type with EVAL_SETS xstest (0 = all 450)
    "CAPABILITIES": "no",  # yes: the lm-eval capability task for every cell
    "CAPABILITY_ARGS": "",  # flags of scripts/eval_capabilities.py, e.g. --limit 40
    "CAPABILITIES_DIR": "",  # default $OUT_DIR/evaluation/capabilities
}
# How the runner is run rather than what the sweep is; a sweep file may set GPUS and STEPS.
RUN_VARIABLES = ("GPUS", "STEPS")
# the entry points' own variables, besides DEFAULTS
SHELL_VARIABLES = (*RUN_VARIABLES, "DRY_RUN", "PYTHON", "SWEEP_FILE")
# keys of a sweep file: the variables in lowercase
FILE_KEYS = tuple(k.lower() for k in (*DEFAULTS, *RUN_VARIABLES))
_LIST_KEYS = ("tasks", "numbers", "eval_sets", "seeds", "gpus", "steps", "methods")
_ARGS_KEYS = (
    "train_args",
    "gen_args",
    "score_args",
    "report_args",
    "build_args",
    "capability_args",
    "dpo_args",
)
_SWITCH_KEYS = ("base_runs", "capabilities")
_YES, _NO = ("1", "yes", "true", "on"), ("", "0", "no", "false", "off")


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


def check_variable_names(env: Mapping[str, str]) -> None:
    """A variable that looks like a misspelt sweep variable (`TASK` for `TASKS`) is an error:
    ignored, it would plan the default grid on the default 7B models."""
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


# --------------------------------------------------------------------------- sweep files


def resolve_sweep_file(name: str | Path) -> Path:
    """A path, or the name of a preset in configs/sweeps/ (`paper` or `paper.toml`)."""
    given = Path(name)
    if given.is_file():
        return given
    for candidate in (SWEEPS_DIR / given, SWEEPS_DIR / f"{given}.toml"):
        if given.parent == Path(".") and candidate.is_file():
            return candidate
    presets = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.toml")))
    raise UserError(f"sweep file {name} not found (presets in {_rel(SWEEPS_DIR)}: {presets})")


def _as_words(path: Path, key: str, value: Any) -> str:
    """A file value in the text form of its variable."""
    where = f"{_rel(path)}: {key}"
    if key == "models":
        if isinstance(value, str):
            return value
        if not isinstance(value, dict):
            raise UserError(f'{where}: expected a table name = "path:template"')
        entries = []
        for name, spec in value.items():
            if isinstance(spec, dict):
                unknown = sorted(set(spec) - {"path", "template"})
                if unknown or "path" not in spec:
                    raise UserError(f"{where}.{name}: expected keys path and template")
                spec = f"{spec['path']}:{spec.get('template', 'alpaca')}"
            if not isinstance(spec, str) or any(c.isspace() for c in f"{name}{spec}"):
                raise UserError(f'{where}.{name}: expected "path:template" without spaces')
            entries.append(f"{name}={spec}")
        return " ".join(entries)
    if isinstance(value, bool) and key in _SWITCH_KEYS:
        return "yes" if value else "no"
    if isinstance(value, bool):
        raise UserError(f"{where}: expected a string, a number or a list, not {value}")
    if isinstance(value, str | int):
        return str(value)
    if isinstance(value, list) and key in (*_LIST_KEYS, *_ARGS_KEYS):
        if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in value):
            raise UserError(f"{where}: expected a list of strings or numbers")
        items = [str(v) for v in value]
        # a list of flags is passed as is, each item one argument (spaces included)
        return shlex.join(items) if key in _ARGS_KEYS else " ".join(items)
    raise UserError(f"{where}: expected a string{' or a list' if key in _LIST_KEYS else ''}")


def read_sweep_file(path: str | Path) -> dict[str, str]:
    """A sweep file as variables (`tasks = ["a", "b"]` -> TASKS="a b"); unknown keys refused."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the variables still work, only files need 3.11
        raise UserError("sweep files need Python 3.11 or later (tomllib)") from None
    path = resolve_sweep_file(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{_rel(path)}: not valid TOML ({e})") from None
    out: dict[str, str] = {}
    for key, value in data.items():
        if key not in FILE_KEYS:
            near = difflib.get_close_matches(key.lower(), FILE_KEYS, n=1, cutoff=0.6)
            hint = f"did you mean {near[0]!r}?" if near else f"valid keys: {', '.join(FILE_KEYS)}"
            raise UserError(f"{_rel(path)}: unknown key {key!r}; {hint}")
        out[key.upper()] = _as_words(path, key, value)
    return out


def layered(env: Mapping[str, str], file: str | Path | None = None) -> dict[str, str]:
    """The sweep's variables: the file's values (file or $SWEEP_FILE), with every variable
    that is set in `env` on top. The result has no SWEEP_FILE: it is read once."""
    check_variable_names(env)
    file = file or env.get("SWEEP_FILE", "").strip() or None
    merged = read_sweep_file(file) if file else {}
    for key, value in env.items():
        if value.strip() and key != "SWEEP_FILE":
            merged[key] = value
    return merged


# --------------------------------------------------------------------------- the config


def _default_alpaca() -> str:
    local = DATA_DIR / "external" / "alpaca_cleaned.json"
    return str(local.relative_to(REPO_ROOT)) if local.is_file() else DEFAULT_ALPACA


def _rel(path: Path) -> str:
    """A path as the user reads it: relative to the cwd when it lies below it."""
    try:  # no resolve(): the venv's python is a symlink that must stay one
        return str(Path(os.path.abspath(path)).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def python() -> str:
    return _rel(Path(sys.executable)) if Path(sys.executable).is_absolute() else sys.executable


def script(path: Path) -> str:
    """A repository script as the command line shows it."""
    return _rel(REPO_ROOT / path)


def parse_methods(text: str) -> list[str]:
    methods = text.replace(",", " ").split()
    for m in methods:
        parse_choice(m, "METHODS", ("sft", "dpo"))
    if not methods or len(set(methods)) != len(methods):
        raise UserError(f"METHODS: {text!r}: give sft, dpo or both, each once")
    return methods


def parse_choice(value: str, key: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise UserError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    return value


def parse_switch(text: str, key: str) -> bool:
    value = text.strip().lower()
    if value not in (*_YES, *_NO):
        raise UserError(f"{key}: {value!r} is not yes or no")
    return value in _YES


def parse_count(text: str, key: str) -> int:
    value = text.strip()
    if not value.isdigit():
        raise UserError(f"{key}: {value!r} is not a non-negative integer")
    return int(value)


def flag_values(args: Sequence[str]) -> dict[str, str | None]:
    """`--key value` / `--key=value` pairs of pass-through flags (a switch: None)."""
    out: dict[str, str | None] = {}
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq:
            following = args[i + 1] if i + 1 < len(args) else None
            value = following if following is not None and not following.startswith("--") else None
        out[key.replace("-", "_")] = value
    return out


def build_seed(build_args: Sequence[str]) -> int | None:
    """The --seed BUILD_ARGS give the builder, else its own default."""
    import inspect

    from crossdefense.mixture import build_defense_data

    if "seed" in (given := flag_values(build_args)):
        value = given["seed"] or ""
        return int(value) if value.strip().lstrip("-").isdigit() else None
    return inspect.signature(build_defense_data).parameters["seed"].default


def check_gpus(entries: list[str]) -> list[str]:
    """GPUS entries: `cpu`, or device indices joined by commas (`0`, `0,1`)."""
    for entry in entries:
        if entry != "cpu" and not all(d.isdigit() for d in entry.split(",")):
            raise UserError(
                f'GPUS: {entry!r} is not a worker; give cpu or device indices, e.g. "0 1" '
                'or "0,1 2,3"'
            )
    return entries


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
    benign_documents: str = ""
    methods: list[str] = field(default_factory=lambda: ["sft"])
    dpo_args: list[str] = field(default_factory=list)
    dpo_init: str = "base"
    base_runs: bool = False
    eval_offset: int = 0
    eval_limit: int = 0
    xstest_per_type: int = 0
    capabilities: bool = False
    capability_args: list[str] = field(default_factory=list)
    capabilities_dir: Path = Path("evaluation/capabilities")
    steps: list[str] = field(default_factory=lambda: list(STAGES))
    gpus: list[str] = field(default_factory=list)  # workers; empty: the visible GPUs, else cpu
    source: Path | None = None  # the sweep file, if any
    _eval_files: list[Path] | None = field(default=None, repr=False)
    _eval_reads_cache: list[tuple[Path, bytes | None, str]] | None = field(default=None, repr=False)

    @classmethod
    def load(
        cls, file: str | Path | None = None, env: Mapping[str, str] | None = None
    ) -> SweepConfig:
        """A sweep file (else $SWEEP_FILE, else none) with the environment on top."""
        env = os.environ if env is None else env
        file = file or env.get("SWEEP_FILE", "").strip() or None
        if file is None:
            return cls.from_env(env)
        path = resolve_sweep_file(file)
        from_file = read_sweep_file(path)
        try:
            cfg = cls.from_env(layered(env, path))
        except UserError as e:
            # name the file when the faulty value came from it, not from a variable
            var = str(e).split(":", 1)[0]
            if var in from_file and not env.get(var, "").strip():
                detail = str(e).split(":", 1)[1].strip()
                raise UserError(f"{_rel(path)}: {var.lower()}: {detail}") from None
            raise
        cfg.source = path
        return cfg

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SweepConfig:
        """Read the sweep's variables (unset or empty ones take their default); a SWEEP_FILE
        among them is read first, under them."""
        env = os.environ if env is None else env
        check_variable_names(env)
        if env.get("SWEEP_FILE", "").strip():
            return cls.load(env=env)

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
        listed = as_ints(",".join(get("NUMBERS").split()), "NUMBERS", unique=False)
        if len(numbers) != len(listed):
            raise UserError(f"NUMBERS: a value is listed twice in {get('NUMBERS')!r}")
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

        cfg = cls(
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
            benign_documents=env.get("BENIGN_DOCUMENTS", "").strip(),
            methods=parse_methods(get("METHODS")),
            dpo_args=parse_args(
                get("DPO_ARGS"),
                "DPO_ARGS",
                (*OWN_TRAIN_FLAGS, "method", "seed"),
                REPO_ROOT / TRAIN_SCRIPT,
            ),
            dpo_init=parse_choice(get("DPO_INIT"), "DPO_INIT", ("base", "sft")),
            base_runs=parse_switch(get("BASE_RUNS"), "BASE_RUNS"),
            eval_offset=parse_count(get("EVAL_OFFSET"), "EVAL_OFFSET"),
            eval_limit=parse_count(get("EVAL_LIMIT"), "EVAL_LIMIT"),
            xstest_per_type=parse_count(get("XSTEST_PER_TYPE"), "XSTEST_PER_TYPE"),
            capabilities=parse_switch(get("CAPABILITIES"), "CAPABILITIES"),
            capability_args=parse_args(
                get("CAPABILITY_ARGS"),
                "CAPABILITY_ARGS",
                CAPABILITY_OWN,
                REPO_ROOT / CAPABILITIES_SCRIPT,
            ),
            capabilities_dir=out_dir("CAPABILITIES_DIR", "evaluation/capabilities"),
            steps=parse_steps(env.get("STEPS", "").strip() or None),
            gpus=check_gpus(env.get("GPUS", "").split()),
        )
        if cfg.dpo_init == "sft" and "sft" not in cfg.methods:
            raise UserError(
                "DPO_INIT: sft needs METHODS to include sft (the adapters it starts from)"
            )
        return cfg

    def cell_stages(self, steps: Sequence[str]) -> list[str]:
        """The cell stages of `steps` this sweep has (capabilities only with CAPABILITIES)."""
        return [s for s in steps if s in CELL_STAGES and (s != "capabilities" or self.capabilities)]

    def eval_part(self) -> Part:
        """EVAL_OFFSET / EVAL_LIMIT / XSTEST_PER_TYPE; XSTest is drawn with the data seed."""
        seed = build_seed(self.build_args)
        # XSTest's sample (and its seed) only names the part when XSTest is evaluated
        xstest = any(f.suffix == ".csv" for f in self.eval_sources())
        per_type = self.xstest_per_type if xstest else 0
        return Part(self.eval_offset, self.eval_limit, per_type, (seed or 0) if per_type else 0)

    def _eval_reads(self) -> list[tuple[Path, bytes | None, str]]:
        """(the file generation reads, its bytes when it is a part, their sha256) per eval
        source, worked out once: a part's bytes come from its source, so they are known (and
        fingerprinted) before the part is written."""
        if self._eval_reads_cache is None:
            part = self.eval_part()
            folder = self.data_dir / "eval" / part.folder_name()
            reads: list[tuple[Path, bytes | None, str]] = []
            for f in self.eval_sources():
                if part.applies_to(f):
                    data = encoded(part.content(f))
                    reads.append((part.target(f, folder), data, hashlib.sha256(data).hexdigest()))
                else:
                    reads.append((f, None, sha256_file(f)))
            self._eval_reads_cache = reads
        return self._eval_reads_cache

    def eval_files(self) -> list[Path]:
        """The files generation reads: the sources, or where EVAL_OFFSET / EVAL_LIMIT /
        XSTEST_PER_TYPE apply, their parts in DATA_DIR/eval/<part>/ (`write_eval_parts`)."""
        return [read for read, _, _ in self._eval_reads()]

    def eval_digests(self) -> dict[str, str]:
        """eval stem -> sha256 of the file generation reads (a part: of the bytes it will be)."""
        return {read.stem: digest for read, _, digest in self._eval_reads()}

    def write_eval_parts(self) -> list[Path]:
        """Write the parts generation will read (unchanged ones are left alone)."""
        return [
            read
            for read, data, _ in self._eval_reads()
            if data is not None and write_part(data, read)
        ]

    def eval_sources(self) -> list[Path]:
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
