"""Grid sweeps: cells (model x task x N), one run name per cell, and when a cell may be skipped.

    config   a sweep file (configs/sweeps/*.toml) and the variables on top -> SweepConfig
    cells    the cells, their run names, paths and devices
    decide   what each stage will do (skip, run, resume, mark, error), from markers and hashes
    runner   the worker queue: one subprocess per stage, logs, status lines, ETA
    plan     the dry run and the final summary table

Every decision lives in `decide`, so it is tested without GPUs and is the same for a local
sweep, a dry run and a SLURM array task. (`crossdefense.sweep.cells` is the function, as
before the split; `crossdefense.sweep.decide` stays the module: patch names there.)
"""

from crossdefense.sweep.cells import (
    Cell,
    CellPaths,
    cell_at,
    cell_paths,
    cells,
    devices,
    train_launcher,
)
from crossdefense.sweep.config import (
    CELL_STAGES,
    DEFAULTS,
    FILE_KEYS,
    SHELL_VARIABLES,
    STAGES,
    SWEEPS_DIR,
    Model,
    SweepConfig,
    check_variable_names,
    parse_args,
    parse_models,
    parse_seeds,
    parse_steps,
    python,
    read_sweep_file,
    resolve_sweep_file,
)
from crossdefense.sweep.decide import (
    ADAPTER_FILES,
    DONE,
    STARTED,
    TRAINED_FILES,
    Decision,
    build_decisions,
    config_hash,
    decide_generate,
    decide_train,
    generate_config,
    latest_checkpoint,
    missing_mixtures,
    read_marker,
    report_decision,
    score_decision,
    train_config,
    write_marker,
)
from crossdefense.sweep.plan import cell_commands, plan_lines, summary_lines
from crossdefense.sweep.runner import detect_gpus, run_cell, run_stage, run_step, run_sweep

__all__ = [
    "ADAPTER_FILES",
    "CELL_STAGES",
    "DEFAULTS",
    "DONE",
    "FILE_KEYS",
    "SHELL_VARIABLES",
    "STAGES",
    "STARTED",
    "SWEEPS_DIR",
    "TRAINED_FILES",
    "Cell",
    "CellPaths",
    "Decision",
    "Model",
    "SweepConfig",
    "build_decisions",
    "cell_at",
    "cell_commands",
    "cell_paths",
    "cells",
    "check_variable_names",
    "config_hash",
    "decide_generate",
    "decide_train",
    "detect_gpus",
    "devices",
    "generate_config",
    "latest_checkpoint",
    "missing_mixtures",
    "parse_args",
    "parse_models",
    "parse_seeds",
    "parse_steps",
    "plan_lines",
    "python",
    "read_marker",
    "read_sweep_file",
    "report_decision",
    "resolve_sweep_file",
    "run_cell",
    "run_stage",
    "run_step",
    "run_sweep",
    "score_decision",
    "summary_lines",
    "train_config",
    "train_launcher",
    "write_marker",
]
