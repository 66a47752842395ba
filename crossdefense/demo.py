"""The miniature cross-task defense experiment on the embedded SmolLM2-135M-Instruct.

The demo is the sweep preset `configs/sweeps/demo.toml` run by the sweep pipeline
(crossdefense.sweep: build -> train -> generate -> capabilities -> score -> report, each stage
skipped when its output exists and was made the same way). This module turns the demo's flags
into sweep variables over the preset, converts the embedded model on first use, prepares the
on-policy preference pairs when DPO is asked for, and adds the report's header.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.io import read_jsonl
from crossdefense.paths import EMBEDDED_MODEL_DIR, REPO_ROOT, XSTEST_DIR
from crossdefense.tasks import TASK_NAMES, get_task
from crossdefense.xstest import PROMPTS_FILE

log = logging.getLogger(__name__)
PRESET = "demo"
XSTEST_DEFAULT = XSTEST_DIR / PROMPTS_FILE


@dataclass
class DemoConfig:
    """The demo's flags. None: as the preset (configs/sweeps/demo.toml) has it."""

    task: str | None = None
    numbers: tuple[int, ...] | None = None
    eval_dir: str | None = None
    eval_tasks: tuple[str, ...] = TASK_NAMES
    eval_limit: int | None = None
    eval_offset: int | None = None
    contrast: bool = False  # also train on the 40 topic-matched contrast documents
    max_steps: int | None = None
    learning_rate: float | None = None
    max_new_tokens: int | None = None
    seeds: tuple[int, ...] | None = None  # one adapter per seed and N; the first seeds the data
    methods: tuple[str, ...] = ("sft",)  # sft (the paper) and/or dpo (preference pairs)
    dpo_learning_rate: float = 2e-3
    dpo_micro_batch_size: int = 4  # pairs per step: 8 sequences, as many as an SFT step
    # dpo starts from: "base" (a fresh LoRA, reference = base model) or "sft" (each SFT
    # adapter, its own reference; the rejected side is still the base model's answers, which
    # the SFT adapter would mostly refuse itself; needs --method sft,dpo)
    dpo_init: str = "base"
    dpo_steps: int = 0  # 0 = --max_steps
    beta: float = 0.1
    sft_weight: float = 1.0  # DPO + NLL of the chosen response (pure DPO barely moved: README)
    judges: tuple[str, ...] | None = None  # the first gives the headline rate
    # XSTest prompts per type (18 types; 0 = none); skipped with a warning when the default
    # file is absent (scripts/download_data.sh fetches it), an error for a path given
    xstest_per_type: int | None = None
    xstest_path: str | None = None
    capability_limit: int | None = None  # lm-eval capability questions per model; 0 = none
    base_model: str | None = None  # the preset's SmolLM2 (chat template) unless given
    output_dir: str | None = None  # default evaluation/demo
    checkpoint_dir: str | None = None  # default checkpoints/demo


def validate(cfg: DemoConfig) -> None:
    """The demo's own rules (the sweep checks the rest when it reads the variables)."""
    if cfg.task is not None:
        get_task(cfg.task)
    for t in cfg.eval_tasks:
        get_task(t)
    if cfg.numbers is not None:
        if not cfg.numbers or any(n < 1 for n in cfg.numbers):
            raise UserError("--numbers must be positive defense sizes, e.g. 20,40")
        if len(set(cfg.numbers)) != len(cfg.numbers):
            raise UserError("--numbers: a defense size is listed twice")
    for name in ("eval_limit", "max_steps", "max_new_tokens"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise UserError(f"--{name} must be >= 1")
    if cfg.eval_offset is not None and cfg.eval_offset < 0:
        raise UserError("--eval_offset must be >= 0")
    if cfg.learning_rate is not None and cfg.learning_rate <= 0:
        raise UserError("--learning_rate must be > 0")
    if not cfg.methods or any(m not in ("sft", "dpo") for m in cfg.methods):
        raise UserError("--method must be sft, dpo or sft,dpo")
    if cfg.dpo_init not in ("base", "sft") or (cfg.dpo_init == "sft" and "sft" not in cfg.methods):
        raise UserError("--dpo_init must be base, or sft together with --method sft,dpo")
    if cfg.dpo_steps < 0:
        raise UserError("--dpo_steps must be >= 0 (0 = --max_steps)")
    if cfg.beta <= 0 or cfg.dpo_learning_rate <= 0 or cfg.sft_weight < 0:
        raise UserError("--beta and --dpo_learning_rate must be > 0, --sft_weight >= 0")
    if cfg.capability_limit is not None and cfg.capability_limit < 0:
        raise UserError("--capability_limit must be >= 0 (0 = no capability task)")
    if cfg.xstest_per_type is not None and cfg.xstest_per_type < 0:
        raise UserError("--xstest must be >= 0 (prompts per XSTest type; 0 = none)")
    if cfg.xstest_path is not None and cfg.xstest_per_type != 0:
        from crossdefense.xstest import read_prompts

        read_prompts(cfg.xstest_path)  # a path the user gave must be there and readable
    if cfg.seeds is not None and (
        not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds) or any(s < 0 for s in cfg.seeds)
    ):
        raise UserError("--seeds must be distinct non-negative integers, e.g. 1,2,3")
    if cfg.judges is not None:
        from crossdefense.judges import normalize_judge_names

        normalize_judge_names(cfg.judges)


# --------------------------------------------------------------------------- flags -> sweep


def _abs(path: str | None) -> str | None:
    """A path the user typed, read from their directory (the sweep runs in the repository)."""
    return None if path is None else str(Path(path).resolve())


def preset(env: dict[str, str] | None = None) -> Any:
    """The demo preset as a SweepConfig, `env` (sweep variables) on top; read from the
    repository root, where its relative paths point."""
    from crossdefense.sweep import SweepConfig

    with contextlib.chdir(REPO_ROOT):
        return SweepConfig.load(PRESET, env=env or {})


def sweep_variables(cfg: DemoConfig) -> dict[str, str]:
    """The sweep variables that turn the preset into this demo (empty: the preset as it is)."""
    from crossdefense.sweep.config import read_sweep_file
    from crossdefense.sweep.decide import merge_flags

    file = read_sweep_file(PRESET)
    env: dict[str, str] = {}

    def args(key: str, **flags: Any) -> None:
        given = [x for k, v in flags.items() if v is not None for x in (f"--{k}", str(v))]
        if given:
            env[key] = shlex.join(merge_flags(shlex.split(file[key]), given))

    if cfg.task is not None:
        env["TASKS"] = cfg.task
    if cfg.numbers is not None:
        env["NUMBERS"] = " ".join(map(str, cfg.numbers))
    if cfg.eval_dir is not None:
        env["EVAL_DIR"] = _abs(cfg.eval_dir)
    if cfg.eval_limit is not None:
        env["EVAL_LIMIT"] = str(cfg.eval_limit)
    if cfg.eval_offset is not None:
        env["EVAL_OFFSET"] = str(cfg.eval_offset)
    # the named files of the eval tasks (a glob could pick up other test_* files of a folder)
    sets = [f"test_{t}{kind}" for t in cfg.eval_tasks for kind in ("", "_cnn", "_useful")]
    xstest = _abs(cfg.xstest_path) or "xstest"
    if cfg.xstest_per_type != 0 and cfg.xstest_path is None and not XSTEST_DEFAULT.is_file():
        log.warning("XSTest skipped: %s not found (scripts/download_data.sh fetches it)", xstest)
    elif cfg.xstest_per_type != 0:
        sets.append(xstest)
    env["EVAL_SETS"] = " ".join(sets)
    if cfg.xstest_per_type:
        env["XSTEST_PER_TYPE"] = str(cfg.xstest_per_type)
    if cfg.capability_limit == 0:
        env["CAPABILITIES"] = "no"
    args("CAPABILITY_ARGS", limit=cfg.capability_limit or None)
    args("TRAIN_ARGS", max_steps=cfg.max_steps, learning_rate=cfg.learning_rate)
    first_seed = cfg.seeds[0] if cfg.seeds else None
    args("GEN_ARGS", max_new_tokens=cfg.max_new_tokens, seed=first_seed)
    # --contrast: every benign document of the file, the 40 contrast documents included
    everything = len(read_jsonl(REPO_ROOT / file["BENIGN_DOCUMENTS"])) if cfg.contrast else None
    args("BUILD_ARGS", seed=first_seed, num_benign_documents=everything)
    if cfg.seeds is not None and list(cfg.seeds) != [42]:  # 42: the trainer's default
        env["SEEDS"] = " ".join(map(str, cfg.seeds))
    if cfg.judges is not None:
        env["SCORE_ARGS"] = shlex.join(["--judge", ",".join(cfg.judges)])
    if cfg.base_model is not None:
        [model] = file["MODELS"].split()
        name, _, spec = model.partition("=")
        env["MODELS"] = f"{name}={_abs(cfg.base_model)}:{spec.rpartition(':')[2]}"
    if cfg.output_dir is not None:
        out = Path(_abs(cfg.output_dir))
        for key, sub in OUTPUT_FOLDERS.items():
            env[key] = str(out / sub)
    if cfg.checkpoint_dir is not None:
        env["CHECKPOINTS_DIR"] = _abs(cfg.checkpoint_dir)
    if "dpo" in cfg.methods:
        env["METHODS"] = " ".join(cfg.methods)
        env["DPO_INIT"] = cfg.dpo_init
        dpo = dict(
            learning_rate=cfg.dpo_learning_rate,
            micro_batch_size=cfg.dpo_micro_batch_size,
            batch_size=cfg.dpo_micro_batch_size,
            beta=cfg.beta,
            sft_weight=cfg.sft_weight,
            max_steps=cfg.dpo_steps or None,  # 0: TRAIN_ARGS' --max_steps
        )
        given = [x for k, v in dpo.items() if v is not None for x in (f"--{k}", str(v))]
        env["DPO_ARGS"] = shlex.join(given)
    return env


# the demo's folders below --output_dir, as the preset lays them out below evaluation/demo
OUTPUT_FOLDERS = {
    "DATA_DIR": "data",
    "GENERATIONS_DIR": "generations",
    "CAPABILITIES_DIR": "capabilities",
    "SCORES_DIR": "scores",
    "REPORT_DIR": ".",
    "LOGS_DIR": "logs",
}


# --------------------------------------------------------------------------- DPO pairs


def run_checked(command: Sequence[str], what: str) -> None:
    """A pipeline script as a subprocess; its `error:` line becomes this run's."""
    res = subprocess.run(list(command), capture_output=True, text=True, cwd=REPO_ROOT)
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.startswith("error:")]
        detail = lines[-1].removeprefix("error: ") if lines else res.stderr.strip()[-500:]
        raise UserError(f"{what} failed: {detail}")


def dpo_pairs(sweep: Any) -> None:
    """The preference pairs of the dpo cells, on-policy: the build's refusal prompts
    (`--format prompts`), answered by the untrained model, are the rejected side
    (`--format dpo`). Also for DPO from an SFT adapter: that adapter already refuses the
    harmful prompts, so its own answers would leave almost only anti-refusal pairs (measured:
    README, Defense methods)."""
    from crossdefense.runs import base_run_name, mixture_name, output_paths
    from crossdefense.sweep.config import GENERATE_SCRIPT, python, script
    from crossdefense.sweep.decide import build_command

    [model] = sweep.models
    run = base_run_name(model.name)
    onpolicy = sweep.data_dir / "onpolicy"
    for task in sweep.tasks:
        ns = [n for n in sweep.numbers if n > 0]
        # rebuilt every time, like the sweep's own mixtures when their recipe changes: the
        # builder is seeded (same recipe, same bytes, so the dpo cells stay done) and the
        # answers are regenerated only when the prompts changed (--skip_existing)
        prompts = sweep.data_dir / task / mixture_name(sweep.num_safety, max(ns), task, "prompts")
        log.info("step: refusal prompts of %s", task)
        prompt_build = build_command(sweep, task, ns, "--format", "prompts", "--overwrite")
        run_checked(prompt_build, "the prompts")
        log.info("step: the untrained model answers %s", prompts.name)
        generate = [python(), script(GENERATE_SCRIPT), "--input_path", str(prompts)]
        generate += ["--output_path", str(onpolicy), "--base_model", model.path]
        generate += ["--prompt_template_path", model.template, "--run_name", run]
        # outputs made another way are redone, those made the same way kept
        keep = ["--skip_existing", "--overwrite"]
        run_checked([*generate, *sweep.gen_args, *keep], "on-policy generation")
        answers = output_paths(onpolicy, run, prompts).final
        log.info("step: preference pairs for N=%s", ",".join(map(str, ns)))
        extra = ("--format", "dpo", "--rejected_path", str(answers), "--overwrite")
        run_checked(build_command(sweep, task, ns, *extra), "the preference pairs")


# --------------------------------------------------------------------------- the demo


def run_demo(cfg: DemoConfig) -> Path:
    """Run every step; return the folder holding report.md and the plots."""
    from crossdefense.embedded import fetch_embedded_model
    from crossdefense.sweep.runner import run_sweep

    validate(cfg)
    if cfg.base_model is None and fetch_embedded_model(EMBEDDED_MODEL_DIR):
        log.info("converted the embedded model into %s", EMBEDDED_MODEL_DIR)
    env = sweep_variables(cfg)
    sweep = preset(env)
    with contextlib.chdir(REPO_ROOT):
        if "dpo" in cfg.methods:
            dpo_pairs(sweep)
        if not run_sweep(sweep, sweep.steps, sweep.gpus):
            raise UserError(
                "the demo's sweep did not finish (the failed stages and their logs are listed "
                "above)"
            )
    out = sweep.report_dir if sweep.report_dir.is_absolute() else REPO_ROOT / sweep.report_dir
    (out / "report.md").write_text(
        "# Miniature cross-task defense on SmolLM2-135M-Instruct\n\n"
        f"Made by `make demo` with:\n\n```json\n{dump_config(cfg, env)}\n```\n\n"
        + (out / "results.md").read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    return out


def dump_config(cfg: DemoConfig, env: dict[str, str]) -> str:
    """What made the report: the preset, the variables over it, the demo's flags."""
    given = {k: v for k, v in asdict(cfg).items() if v is not None}
    doc = {"sweep_file": f"configs/sweeps/{PRESET}.toml", "variables": env, "flags": given}
    return json.dumps(doc, indent=1)
