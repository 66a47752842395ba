"""The sweep's Python side, one action per call, configured by the sweep's environment variables
(TASKS, NUMBERS, MODELS, EVAL_SETS, ...; see scripts/run_sweep.sh). The shell scripts and the
SLURM array job call it, so a cell runs through the same code wherever it runs.

    python scripts/sweep_plan.py plan                # cells, decisions and commands (DRY_RUN)
    python scripts/sweep_plan.py count               # number of cells (for sbatch --array)
    python scripts/sweep_plan.py commands --index 3  # what cell 3 would run
    python scripts/sweep_plan.py run --index 3       # run cell 3 (train, then generate)
    SLURM_ARRAY_TASK_ID=3 python scripts/sweep_plan.py run   # the same, as an array task
"""

from __future__ import annotations

import os
import sys

from crossdefense import UserError
from crossdefense.cli import run

ACTIONS = ("plan", "count", "commands", "run", "build", "score", "report", "summary")


def main(
    action: str,
    index: int | None = None,
    steps: str | tuple | list | None = None,
    gpu: str | int | tuple | None = None,
    gpus: str | int | tuple | None = None,
    results_dir: str | None = None,
) -> None:
    """Plan, run or summarise a sweep; exits non-zero when a cell or step failed.

    Args:
        action: plan | count | commands | run | build | score | report | summary.
        index: cell index for `commands` and `run` (default: $SLURM_ARRAY_TASK_ID).
        steps: steps to plan or run, e.g. "train generate" (default: $STEPS, else all of
            build train generate score report).
        gpu: the worker's devices for `commands`/`run`: an id, a comma list (several: training
            runs DDP under torchrun) or cpu; default: CUDA_VISIBLE_DEVICES as it is.
        gpus: the workers for `plan`, e.g. "0 1 2 3" or "cpu cpu".
        results_dir: where `run` records each cell's outcome and `summary` reads them.
    """
    from crossdefense.sweep import (
        SweepConfig,
        cell_commands,
        cells,
        parse_steps,
        plan_lines,
        run_cell,
        run_step,
        summarize,
    )

    def words(value: str | int | tuple | list | None) -> str | None:
        # fire turns "0,1" into a tuple and "0" into an int; the sweep wants the text back.
        if isinstance(value, tuple | list):
            return ",".join(str(v) for v in value)
        return None if value is None else str(value)

    try:
        if action not in ACTIONS:
            raise UserError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
        cfg = SweepConfig.from_env()
        if steps is None:
            steps = os.environ.get("STEPS") or None
        stage_list = parse_steps(steps if not isinstance(steps, tuple | list) else list(steps))
        ok = True
        if action == "count":
            if "generate" in stage_list:
                cfg.eval_files()  # a wrong EVAL_SETS fails now, not after every training run
            print(len(cells(cfg)))
        elif action == "plan":
            print("\n".join(plan_lines(cfg, stage_list, (words(gpus) or "").split())))
        elif action == "commands":
            print("\n".join(cell_commands(cfg, index, stage_list, words(gpu))))
        elif action == "run":
            ok = run_cell(cfg, index, stage_list, words(gpu), results_dir)
        elif action == "summary":
            if not results_dir:
                raise UserError("summary needs --results_dir")
            ok = summarize(cfg, results_dir, stage_list)
        else:
            ok = run_step(cfg, action)
    except UserError as e:
        sys.exit(f"error: {e}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    run(main)
