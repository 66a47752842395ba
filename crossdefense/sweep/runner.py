"""Running a sweep: one worker per GPUS entry takes the next waiting cell, one subprocess per
stage with its own log, a status line per stage (with its duration and the sweep's ETA).

The same `run_stage` runs a cell for a local sweep (`run_sweep`) and for a SLURM array task
(`run_cell`), so a cell behaves the same wherever it runs. Decisions come from
crossdefense.sweep.decide; nothing here looks at the disk to decide what to do.
"""

from __future__ import annotations

import datetime as _dt
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossdefense.io import LOCK_FILE
from crossdefense.sweep.cells import Cell, cell_at, cell_paths, cells, devices
from crossdefense.sweep.config import SweepConfig, _rel
from crossdefense.sweep.decide import DONE, STARTED, decide, step_decisions, write_marker

# --------------------------------------------------------------------------- output


def _now() -> str:
    return time.strftime("%H:%M:%S")


_SAY = threading.Lock()


def say(line: str) -> None:
    """Print one line in a single write, under a lock: the workers are threads sharing stdout
    (and print() writes the text and its newline separately), so their lines could merge."""
    with _SAY:
        sys.stdout.write(line.rstrip() + "\n")
        sys.stdout.flush()


def status(word: str, stage: str, cell: Cell, total: int, detail: str = "") -> None:
    """One line per cell stage as it starts and ends."""
    say(f"[{_now()}] {word:<6} {stage:<8} cell {cell.index} of {total}  {cell.run_name}  {detail}")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


@dataclass
class Progress:
    """Finished cell stages and the time the rest should take: each waiting stage costs the
    mean of the stages of its kind that ran (a skipped one costs nothing), spread over the
    workers. An estimate from above: some waiting stages may turn out to be skips."""

    total: int
    workers: int = 1
    finished: int = 0
    seconds: dict[str, list[float]] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, stage: str, ran: bool, seconds: float) -> str:
        with self.lock:
            self.finished += 1
            self.waiting[stage] = self.waiting.get(stage, 0) - 1
            if ran:
                self.seconds.setdefault(stage, []).append(seconds)
            return self._line()

    def cancel(self, stage: str) -> None:
        """A stage that will not run: its cell failed or stopped before it."""
        with self.lock:
            self.total -= 1
            self.waiting[stage] = self.waiting.get(stage, 0) - 1

    def _line(self) -> str:
        text = f"[{self.finished}/{self.total} stages"
        means = {s: sum(v) / len(v) for s, v in self.seconds.items() if v}
        left = sum(n for n in self.waiting.values() if n > 0)
        if left and means:
            fallback = sum(means.values()) / len(means)
            eta = sum(n * means.get(s, fallback) for s, n in self.waiting.items() if n > 0)
            text += f", ETA {_duration(eta / max(self.workers, 1))}"
        return text + "]"


# --------------------------------------------------------------------------- children and signals


class _Children:
    """The stage subprocesses running now, so a signal stops all of them. Reentrant: the
    signal handler runs in the main thread, which may hold the lock at that moment."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.running: set[subprocess.Popen] = set()
        self.signum: int | None = None

    @property
    def stopped(self) -> bool:
        return self.signum is not None

    def start(self, command: Sequence[str], log: Any, env: Mapping[str, str]) -> subprocess.Popen:
        with self.lock:
            if self.stopped:
                raise _Stopped()
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            self.running.add(child)
            return child

    def wait(self, child: subprocess.Popen) -> int:
        try:
            return child.wait()
        finally:
            with self.lock:
                self.running.discard(child)

    def stop(self, signum: int, frame: Any = None) -> None:
        with self.lock:
            self.signum = signum
            for child in self.running:
                child.terminate()


class _Stopped(Exception):
    """A stage was about to start after the sweep was told to stop."""


CHILDREN = _Children()


@contextmanager
def handle_signals() -> Iterator[None]:
    """SIGTERM and SIGINT stop every running stage (which resumes next time from its
    `started` marker); on the way out the process exits 143 or 130 as a shell would."""
    CHILDREN.signum = None
    previous = {s: signal.signal(s, CHILDREN.stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if CHILDREN.signum is not None:
        raise SystemExit(128 + CHILDREN.signum)


def run_logged(
    command: Sequence[str], log: Path, header: str, env: Mapping[str, str] | None = None
) -> int:
    """Run `command` appending its output to `log`; return its exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n### {_dt.datetime.now().isoformat(timespec='seconds')} {header}\n")
        f.write(f"### {shlex.join(command)}\n")
        f.flush()
        child_env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        return CHILDREN.wait(CHILDREN.start(command, f, child_env))


def last_error(log: Path) -> str:
    """The last `error: ...` line of a log (the scripts' one-line message), for the summary."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    found = [ln.strip() for ln in lines if ln.startswith(("error:", "### the command"))]
    return found[-1].removeprefix("### ") if found else ""


def _remove(paths: Sequence[Path]) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- one cell


def worker_env(gpu: str | None, cpu_threads: int | None = None) -> dict[str, str]:
    """The stages' environment: the worker's devices visible (none for `cpu`); None keeps
    CUDA_VISIBLE_DEVICES as it is (a SLURM task gets its GPUs that way)."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices(gpu))
    if cpu_threads is not None and not devices(gpu) and not env.get("OMP_NUM_THREADS"):
        env["OMP_NUM_THREADS"] = str(cpu_threads)
    return env


def run_stage(
    cfg: SweepConfig,
    cell: Cell,
    stage: str,
    total: int,
    gpu: str | None,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Decide, run and mark one stage of one cell; return its result row (status done, skip,
    fail or stop)."""
    paths = cell_paths(cfg, cell)
    log, directory = paths.log(stage), paths.stage_dir(stage)
    result: dict[str, Any] = {"log": str(log), "seconds": 0.0}

    def finish(word: str, status_: str, detail: str, ran: bool = False) -> dict[str, Any]:
        tail = f"  {progress.record(stage, ran, result['seconds'])}" if progress else ""
        status(word, stage, cell, total, detail + tail)
        return {**result, "status": status_}

    d = decide(cfg, cell, stage, gpu)
    result["reason"] = d.reason
    if d.action in ("skip", "mark"):
        if d.action == "mark":
            write_marker(directory, DONE, d.config, stage=stage, run_name=cell.run_name)
        return finish("skip", "skip", f"({d.reason})")
    if d.action == "error":
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"\n### {_dt.datetime.now().isoformat(timespec='seconds')} error: {d.reason}\n")
        return finish("FAIL", "fail", f"error: {d.reason}  log: {_rel(log)}")
    where = ",".join(devices(gpu)) or "cpu"
    status("start", stage, cell, total, f"gpu={where}  {d.action}: {d.reason}")
    start = time.monotonic()
    _remove(d.remove)
    # The sweep owns this cell, so a writer lock here was left by an earlier attempt of the
    # same stage, possibly on another node (a requeued SLURM task): release it.
    lock = directory / LOCK_FILE
    if lock.exists():
        say(f"releasing {_rel(lock)} left by an earlier attempt of this cell")
        lock.unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    write_marker(directory, STARTED, d.config, stage=stage, command=shlex.join(d.command))
    header = f"cell {cell.index} {cell.run_name} {stage} gpu={where}"
    try:
        rc = run_logged(d.command, log, header, env)
    except _Stopped:
        rc = None
    result["seconds"] = round(time.monotonic() - start, 1)
    if rc is None or (rc != 0 and CHILDREN.stopped):
        # Stopped from outside: the next sweep resumes this stage from its `started` marker.
        status("stop", stage, cell, total, f"{result['seconds']:.1f}s  log: {_rel(log)}")
        return {**result, "status": "stop"}
    if rc == 0:
        # The command says it succeeded; the same decision says whether its outputs are there.
        after = decide(cfg, cell, stage, gpu)
        if after.action not in ("mark", "skip"):
            rc = 1
            with open(log, "a", encoding="utf-8") as f:
                f.write(
                    f"### the command succeeded but its outputs are incomplete: {after.reason}\n"
                )
    if rc != 0:
        result["reason"] = f"exit {rc}" + (f": {last_error(log)}" if last_error(log) else "")
        result["exit_code"] = rc
        return finish(
            "FAIL", "fail", f"{result['seconds']:.1f}s  exit {rc}  log: {_rel(log)}", ran=True
        )
    seconds = result["seconds"]
    write_marker(directory, DONE, d.config, stage=stage, run_name=cell.run_name, seconds=seconds)
    return finish("done", "done", f"{seconds:.1f}s", ran=True)


def cell_row(
    cfg: SweepConfig,
    cell: Cell,
    steps: Sequence[str],
    gpu: str | None,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the cell stages of `steps` in order; a failed stage stops the cell."""
    total = len(cells(cfg))
    row: dict[str, Any] = {
        "index": cell.index,
        "run_name": cell.run_name,
        "gpu": gpu if gpu is not None else os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "stages": {},
    }
    stages = cfg.cell_stages(steps)
    for i, stage in enumerate(stages):
        result = run_stage(cfg, cell, stage, total, gpu, env, progress)
        row["stages"][stage] = result
        if result["status"] in ("fail", "stop"):
            if progress is not None:
                for later in stages[i + 1 :]:
                    progress.cancel(later)
            break
    return row


def run_cell(
    cfg: SweepConfig, index: int | None, steps: Sequence[str], gpu: str | None = None
) -> bool:
    """One cell (a SLURM array task: index None reads SLURM_ARRAY_TASK_ID); True if it ran
    or was skipped, False if a stage failed."""
    cell = cell_at(cfg, index)
    if "generate" in steps:
        cfg.write_eval_parts()
    with handle_signals():
        row = cell_row(cfg, cell, steps, gpu, worker_env(gpu))
    return all(r["status"] != "fail" for r in row["stages"].values())


# --------------------------------------------------------------------------- the sweep


def run_step(cfg: SweepConfig, step: str) -> bool:
    """The sweep-wide steps (build, score, report), with the same status lines as cells."""
    ok = True
    for log_name, what, d in step_decisions(cfg, step):
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
        try:
            rc = run_logged(d.command, log, step)
        except _Stopped:
            return False
        seconds = time.monotonic() - start
        if CHILDREN.stopped:
            say(f"{label.format('stop')}  {seconds:.1f}s  log: {_rel(log)}")
            return False
        if rc != 0:
            say(f"{label.format('FAIL')}  {seconds:.1f}s  exit {rc}  log: {_rel(log)}")
            ok = False
            continue
        if step != "build":
            directory = cfg.scores_dir if step == "score" else cfg.report_dir
            write_marker(directory, DONE, d.config, stage=step)
        say(f"{label.format('done')}  {seconds:.1f}s")
    return ok


def detect_gpus() -> list[str]:
    """Default workers: the visible GPUs, one worker each; the CPU when there is none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip():
        ids = [d for d in visible.replace(",", " ").split()]
    elif shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        ids = out.split()
    else:
        ids = []
    return ids or ["cpu"]


def run_queue(cfg: SweepConfig, steps: Sequence[str], gpus: Sequence[str]) -> dict[int, dict]:
    """Every cell through the workers, each worker one cell at a time; the rows by cell index."""
    all_cells = cells(cfg)
    waiting = iter(all_cells)
    take = threading.Lock()
    rows: dict[int, dict] = {}
    cell_stages = cfg.cell_stages(steps)
    progress = Progress(len(all_cells) * len(cell_stages), workers=len(gpus))
    progress.waiting = {s: len(all_cells) for s in cell_stages}
    ncpu = sum(1 for g in gpus if not devices(g))
    # CPU workers share the cores instead of each starting one thread per core.
    threads = max((os.cpu_count() or 1) // ncpu, 1) if ncpu else None

    def worker(gpu: str) -> None:
        env = worker_env(gpu, threads)
        while not CHILDREN.stopped:
            with take:
                cell = next(waiting, None)
            if cell is None:
                return
            rows[cell.index] = cell_row(cfg, cell, steps, gpu, env, progress)

    say(f"[{_now()}] sweep: {len(all_cells)} cells on {len(gpus)} worker(s): {' '.join(gpus)}")
    pool = [threading.Thread(target=worker, args=(g,), name=f"worker-{g}") for g in gpus]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return rows


def run_sweep(cfg: SweepConfig, steps: Sequence[str], gpus: Sequence[str] = ()) -> bool:
    """build -> the cells on the workers -> summary -> score -> report; True if nothing failed.
    SIGTERM/SIGINT stop it (exit 143/130) with every interrupted stage resumable."""
    from crossdefense.sweep.plan import summary_lines

    workers = list(gpus) or detect_gpus()
    ok = True
    with handle_signals():
        if "build" in steps:
            ok &= run_step(cfg, "build")
        if "generate" in steps:
            for path in cfg.write_eval_parts():
                say(f"[{_now()}] wrote {_rel(path)}")
        if cfg.cell_stages(steps) and not CHILDREN.stopped:
            rows = run_queue(cfg, steps, workers)
            if not CHILDREN.stopped:
                lines, cells_ok = summary_lines(cfg, rows, steps)
                say("\n" + "\n".join(lines))
                ok &= cells_ok
        for step in ("score", "report"):
            if step in steps and not CHILDREN.stopped:
                ok &= run_step(cfg, step)
    return ok
