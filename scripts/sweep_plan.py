"""The sweep's Python entry point, one action per call, configured by a sweep file
(configs/sweeps/*.toml, `--config` or $SWEEP_FILE) and the sweep's variables on top (TASKS,
NUMBERS, MODELS, EVAL_SETS, ...; see scripts/run_sweep.sh). The shell scripts and the SLURM
array job call it, so a cell runs through the same code wherever it runs.

    python scripts/sweep_plan.py sweep --config paper  # the whole sweep (scripts/run_sweep.sh)
    python scripts/sweep_plan.py plan                # cells, decisions and commands (DRY_RUN)
    python scripts/sweep_plan.py count               # number of cells (for sbatch --array)
    python scripts/sweep_plan.py commands --index 3  # what cell 3 would run
    python scripts/sweep_plan.py run --index 3       # run cell 3 (train, then generate)
    SLURM_ARRAY_TASK_ID=3 python scripts/sweep_plan.py run   # the same, as an array task
"""

from __future__ import annotations

import sys

from crossdefense import UserError
from crossdefense.cli import run

ACTIONS = ("sweep", "plan", "count", "commands", "run", "build", "score", "report")


def _words(value: str | int | tuple | list | None) -> str | None:
    """fire turns "0,1" into a tuple and "0" into an int; the sweep wants the text back."""
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return None if value is None else str(value)


def main(
    action: str,
    config: str | None = None,
    index: int | None = None,
    steps: str | tuple | list | None = None,
    gpu: str | int | tuple | None = None,
    gpus: str | int | tuple | None = None,
) -> None:
    """Run, plan or count a sweep; exits non-zero when a cell or step failed.

    Args:
        action: sweep | plan | count | commands | run | build | score | report.
        config: sweep file: a path or a preset name in configs/sweeps/ (paper, full_grid,
            cpu_smoke, demo); default $SWEEP_FILE, else none (the variables and defaults).
        index: cell index for `commands` and `run` (default: $SLURM_ARRAY_TASK_ID).
        steps: steps to plan or run, e.g. "train generate" (default: $STEPS, else the file's
            `steps`, else all of build train generate score report).
        gpu: the worker's devices for `commands`/`run`: an id, a comma list (several: training
            runs DDP under torchrun) or cpu; default: CUDA_VISIBLE_DEVICES as it is.
        gpus: the workers for `sweep` and `plan`, e.g. "0 1 2 3", "cpu cpu" or "0,1 2,3"
            (default: $GPUS, else the file's `gpus`, else every visible GPU, else cpu).
    """
    from crossdefense.sweep import (
        SweepConfig,
        cell_commands,
        cells,
        detect_gpus,
        parse_steps,
        plan_lines,
        run_cell,
        run_step,
        run_sweep,
    )

    try:
        if action not in ACTIONS:
            raise UserError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
        cfg = SweepConfig.load(config)
        stage_list = cfg.steps if steps is None else parse_steps(_words(steps))
        workers = (_words(gpus) or "").split() or cfg.gpus
        ok = True
        if action == "count":
            if "generate" in stage_list:
                # a wrong EVAL_SETS or EVAL_OFFSET fails now, not after every training run
                cfg.eval_digests()
            print(len(cells(cfg)))
        elif action == "plan":
            print("\n".join(plan_lines(cfg, stage_list, workers or detect_gpus())))
        elif action == "commands":
            print("\n".join(cell_commands(cfg, index, stage_list, _words(gpu))))
        elif action == "run":
            ok = run_cell(cfg, index, stage_list, _words(gpu))
        elif action == "sweep":
            if "generate" in stage_list:
                cfg.eval_digests()
            ok = run_sweep(cfg, stage_list, workers)
        else:
            ok = run_step(cfg, action)
    except UserError as e:
        sys.exit(f"error: {e}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    run(main)
