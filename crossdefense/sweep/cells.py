"""Cells (model x task x N x seed, and with BASE_RUNS each model untrained), their run names and
paths, and the devices they run on."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from crossdefense import UserError
from crossdefense.runs import base_run_name, mixture_name, run_name
from crossdefense.sweep.config import Model, SweepConfig, python


@dataclass(frozen=True)
class Cell:
    index: int
    model: Model
    task: str
    n: int
    num_safety: int
    seed: int | None = None  # None: no seed axis (the trainer's default seed)
    trained: bool = True  # False: the model as it is (BASE_RUNS), nothing to train
    method: str = "sft"  # or dpo (preference pairs)
    from_sft: bool = False  # a dpo cell that starts from its SFT cell's adapter (DPO_INIT=sft)

    @property
    def run_name(self) -> str:
        """Upstream's checkpoint names: Instructions_{K}_{N}_{task}_{model}; N=0 is the
        no-defense baseline, one run per model whatever the task. With SEEDS, `_seed<k>`.
        An untrained model: base_{model}."""
        if not self.trained:
            return base_run_name(self.model.name)
        return run_name(
            self.num_safety,
            self.n,
            self.task,
            self.model.name,
            seed=self.seed,
            method=self.method,
            from_sft=self.from_sft,
        )

    def sft_cell(self) -> Cell:
        """The SFT cell a from_sft dpo cell starts from."""
        return replace(self, method="sft", from_sft=False)


def cells(cfg: SweepConfig) -> list[Cell]:
    """Model-major (its untrained cell first, with BASE_RUNS), then task, then N, then seed,
    then method (a dpo cell after the SFT cell it may start from); the order of SLURM array
    indices."""
    out: list[Cell] = []
    seen: set[str] = set()
    for model in cfg.models:
        if cfg.base_runs:
            out.append(Cell(len(out), model, cfg.tasks[0], 0, cfg.num_safety, trained=False))
        for task in cfg.tasks:
            for n in cfg.numbers:
                for seed in cfg.seeds:
                    for method in cfg.methods:
                        from_sft = method == "dpo" and cfg.dpo_init == "sft"
                        cell = Cell(
                            len(out),
                            model,
                            task,
                            n,
                            cfg.num_safety,
                            seed,
                            method=method,
                            from_sft=from_sft,
                        )
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
    capabilities: Path
    logs: Path
    run: str

    def stage_dir(self, stage: str) -> Path:
        """Where a cell stage writes its outputs and markers."""
        return {"train": self.checkpoint, "capabilities": self.capabilities}.get(
            stage, self.generations
        )

    def log(self, stage: str) -> Path:
        return self.logs / f"{self.run}.{stage}.log"

    @property
    def capability_file(self) -> Path:
        """scripts/eval_capabilities.py's result (<capabilities>/<run>.json)."""
        return self.capabilities / f"{self.run}.json"


def cell_paths(cfg: SweepConfig, cell: Cell) -> CellPaths:
    run = cell.run_name
    # The N=0 baseline lives in the first task's folder, where the builder writes it.
    task_dir = cfg.tasks[0] if cell.n == 0 else cell.task
    return CellPaths(
        mixture=cfg.data_dir
        / task_dir
        / mixture_name(cfg.num_safety, cell.n, cell.task, cell.method),
        checkpoint=cfg.checkpoints_dir / run,
        generations=cfg.generations_dir / run,
        capabilities=cfg.capabilities_dir / run,
        logs=cfg.logs_dir,
        run=run,
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
