"""What a sweep would do (the dry run) and what it did (the final table).

The plan prints the decisions of crossdefense.sweep.decide; where a stage waits on an earlier
one (training on a mixture the build step will make, generating with an adapter still to be
trained) it says so instead of the error the decision gives today.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from crossdefense.sweep.cells import cell_at, cell_paths, cells, devices
from crossdefense.sweep.config import SweepConfig, _rel
from crossdefense.sweep.decide import (
    Decision,
    build_decisions,
    decide,
    missing_mixtures,
    mixture_path,
    report_decision,
    score_decision,
)


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
    for stage in cfg.cell_stages(steps):
        d = decide(cfg, cell, stage, gpu)
        if stage == "train" and d.action == "error" and cell_paths(cfg, cell).mixture in to_build:
            d = Decision("train", "run", "after the build step", command=d.command)
        if stage in ("generate", "capabilities") and train_runs and d.action == "error":
            d = Decision(stage, "run", "after training", command=d.command)
        train_runs = train_runs or (stage == "train" and d.runs)
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
    if cfg.source is not None:
        lines.append(f"sweep file: {_rel(cfg.source)} (variables that are set override it)")
    if "generate" in steps:
        files = cfg.eval_files()
        lines.append(f"eval sets ({len(files)}): {', '.join(_rel(f) for f in files)}")
        if not cfg.eval_part().whole:
            lines.append(f"  (parts of {', '.join(map(_rel, cfg.eval_sources()))}, written first)")
    to_build: list[Path] = []
    if "build" in steps:
        for task, d in build_decisions(cfg):
            lines.append(f"build {task}: {d.action}: {d.reason}")
            if d.command:
                lines.append(f"    {shlex.join(d.command)}")
            if d.action == "run":
                to_build += [mixture_path(cfg, task, n) for n in missing_mixtures(cfg, task)]
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


def summary_lines(
    cfg: SweepConfig, rows: Mapping[int, Mapping[str, Any]], steps: Sequence[str]
) -> tuple[list[str], bool]:
    """The final table and the failed cells with their logs; the bool: True if none failed."""
    stages = cfg.cell_stages(steps)
    all_cells = cells(cfg)
    table = []
    failed: list[str] = []
    counts = {"done": 0, "skip": 0, "fail": 0}
    for cell in all_cells:
        row = rows.get(cell.index) or {"gpu": "", "stages": {}}
        cols = []
        for s in stages:
            r = row["stages"].get(s)
            if r is None:
                cols.append("-")
                continue
            text = {"done": "done", "skip": "skip", "fail": "FAIL", "stop": "stop"}[r["status"]]
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
        table.append([str(cell.index), cell.run_name, str(row.get("gpu") or "cpu"), *cols])
    header = ["cell", "run", "gpu", *stages]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    lines = ["summary"]
    for r in [header, *table]:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    lines.append(
        f"{len(all_cells)} cells: {counts['done']} ran, {counts['skip']} skipped, "
        f"{counts['fail']} failed"
    )
    if failed:
        lines += ["failed cells:", *failed]
    return lines, not failed
