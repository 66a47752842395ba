"""Cells (model x task x N x seed), their run names and paths, and the devices they run on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from crossdefense import UserError
from crossdefense.runs import mixture_name, run_name
from crossdefense.sweep.config import Model, SweepConfig, python


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
        return run_name(self.num_safety, self.n, self.task, self.model.name, seed=self.seed)


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

    def stage_dir(self, stage: str) -> Path:
        """Where a cell stage writes its outputs and markers."""
        return self.checkpoint if stage == "train" else self.generations

    def log(self, stage: str) -> Path:
        return self.train_log if stage == "train" else self.generate_log


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
