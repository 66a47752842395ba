"""Capability regression through EleutherAI's lm-evaluation-harness (lm-eval 0.4.x).

`evaluate_capabilities` runs lm-eval in-process on a base model, optionally with a LoRA adapter,
and writes one JSON per run to `evaluation/capabilities/<run_name>.json`: lm-eval's metrics and
their standard errors, samples per task, the task configs and the run's lineage (flags, git
hash, versions, adapter sha256 and training facts). `capability_rows` pairs each adapter run with
the base model's run on the same tasks and gives the difference per task and metric, which
`crossdefense.report` turns into a results.md section and capabilities.csv.

The project's own tasks live in `configs/lm_eval/` (an lm-eval include path). Their YAMLs name
local data files relative to the repository root; lm-eval hands `dataset_kwargs` to
`datasets.load_dataset` unchanged, and that resolves a relative `data_files` against the
current directory, not against the YAML. So for those tasks this module passes lm-eval the
YAML's config as a dict with the path made absolute (lm-eval's `TaskManager.load` accepts an
inline config dict), and the script works from any directory.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.io import (
    expand_paths,
    output_lock,
    path_component,
    read_json,
    run_metadata,
    write_json,
)
from crossdefense.paths import CONFIGS_DIR, EVALUATION_DIR, REPO_ROOT

log = logging.getLogger(__name__)

TASKS_DIR = CONFIGS_DIR / "lm_eval"
OUTPUT_DIR = EVALUATION_DIR / "capabilities"
DEFAULT_TASK = "crossdefense_mc"
KIND = "crossdefense-capabilities"
SCHEMA = 1
CAPABILITIES_CSV = "capabilities.csv"
SECTION_TITLE = "Capability (lm-evaluation-harness)"
# scripts/score_answers.py reads every *.json in the run folders under this one
GENERATION_OUTPUTS = EVALUATION_DIR / "generations"  # generate_answers.py default
_NOT_METRICS = {"name", "alias", "sample_len", "samples"}
CSV_COLUMNS = (
    "model",
    "base_model",
    "adapter_run",
    "base_run",
    "train_task",
    "num_defense",
    "seed",
    "task",
    "metric",
    "filter",
    "n",
    "base",
    "base_stderr",
    "adapter",
    "adapter_stderr",
    "diff",
    "diff_stderr",
    "adapter_path",
    "base_path",
)


# ----------------------------------------------------------------------------- tasks


def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    """`arc_easy,hellaswag` (or fire's tuple of it) as a list of unique names."""
    from crossdefense.cli import as_list

    names = as_list(tasks)
    if not names:
        raise UserError("--tasks is empty; give task names, e.g. --tasks arc_easy,mmlu")
    return names


def project_tasks(tasks_dir: Path = TASKS_DIR) -> dict[str, Path]:
    """{task name: YAML file} of the project's lm-eval tasks."""
    import yaml

    found: dict[str, Path] = {}
    for path in sorted(tasks_dir.glob("*.yaml")):
        try:
            cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise UserError(f"{path}: malformed YAML ({str(e).splitlines()[0]})") from None
        if isinstance(cfg, dict) and isinstance(cfg.get("task"), str):
            found[cfg["task"]] = path
    return found


def _absolute(files: Any) -> Any:
    """`data_files` (a path, a list, or {split: path or list}) with relative paths made
    absolute against the repository root."""
    if isinstance(files, dict):
        return {k: _absolute(v) for k, v in files.items()}
    if isinstance(files, list):
        return [_absolute(v) for v in files]
    if isinstance(files, str) and "://" not in files and not Path(files).is_absolute():
        return str(REPO_ROOT / files)
    return files


def _local_files(files: Any) -> list[str]:
    if isinstance(files, dict):
        return [f for v in files.values() for f in _local_files(v)]
    if isinstance(files, list):
        return [f for v in files for f in _local_files(v)]
    return [files] if isinstance(files, str) and "://" not in files else []


def task_data(specs: Sequence[Any]) -> dict[str, dict[str, str]]:
    """{local data file: sha256} of the inline (project) task configs: an edited question file
    must not be compared with results on the old one."""
    from crossdefense.io import sha256_file

    out = {}
    for spec in specs:
        if isinstance(spec, dict):
            files = _local_files((spec.get("dataset_kwargs") or {}).get("data_files"))
            out[spec["task"]] = {f: sha256_file(f) for f in files if Path(f).is_file()}
    return out


def task_config(path: Path) -> dict[str, Any]:
    """A project task's YAML as the inline config dict lm-eval is given (see module doc)."""
    import yaml

    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    if "data_files" in kwargs:
        kwargs["data_files"] = _absolute(kwargs["data_files"])
        cfg["dataset_kwargs"] = kwargs
    return cfg


def task_manager(names: Sequence[str], tasks_dir: Path = TASKS_DIR):
    """lm-eval's TaskManager with the project's task folder on its include path; the built-in
    index (about 15,000 YAMLs, ~12 s to scan) only when a name is not a project task. An
    unknown name is a UserError saying how to list the tasks."""
    from lm_eval.tasks import TaskManager

    ours = project_tasks(tasks_dir)
    tm = TaskManager(
        include_path=str(tasks_dir), include_defaults=any(n not in ours for n in names)
    )
    unknown = [n for n in names if n not in tm.all_tasks]
    if unknown:
        import difflib

        hints = []
        for n in unknown:
            close = difflib.get_close_matches(n, tm.all_tasks, n=3)
            hints.append(n + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise UserError(
            f"--tasks: unknown task {'; '.join(hints)}; list them with "
            f"`lm-eval ls tasks --include_path {tasks_dir}`"
        )
    return tm


# ----------------------------------------------------------------------------- results


def _clean(obj: Any) -> Any:
    """lm-eval's results as plain JSON: functions by name, NaN/inf and "N/A" stderr as null,
    anything else unknown as its text."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_clean(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if callable(obj):
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    try:
        return float(obj)  # numpy scalars
    except (TypeError, ValueError):
        return str(obj)


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def _sample_count(name: str, res: dict[str, Any]) -> int | None:
    """Documents scored for a task, or for a group the sum over its subtasks."""
    n = (res.get("n-samples") or {}).get(name)
    if n is not None:
        return n.get("effective")
    children = (res.get("group_subtasks") or {}).get(name)
    if not children:
        return None
    counts = [_sample_count(c, res) for c in children]
    return sum(counts) if all(c is not None for c in counts) else None


def flat_metrics(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (task or group, metric, filter) of lm-eval's `results`; `top_level` marks
    entries not inside a group that reports an aggregate (mmlu, not mmlu_anatomy; the members
    of a group without one, or of a tag, are top level)."""
    aggregated = set(res.get("groups") or {})
    children = {
        c for g, cs in (res.get("group_subtasks") or {}).items() if g in aggregated for c in cs
    }
    rows = []
    for task, metrics in (res.get("results") or {}).items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if metric in _NOT_METRICS or metric.endswith("_stderr") or _number(value) is None:
                continue
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "filter": filt or "none",
                    "value": _number(value),
                    "stderr": _number(metrics.get(f"{metric}_stderr,{filt}")),
                    "n": _sample_count(task, res),
                    "top_level": task not in children,
                }
            )
    return rows


def result_table(metrics: Sequence[dict[str, Any]]) -> str:
    """task  metric  value ± stderr  n, top-level entries only."""
    rows = [("task", "metric", "value ± stderr", "n")]
    for m in metrics:
        if not m["top_level"]:
            continue
        se = "" if m["stderr"] is None else f" ± {m['stderr']:.4f}"
        metric = m["metric"] + ("" if m["filter"] == "none" else f" ({m['filter']})")
        rows.append((m["task"], metric, f"{m['value']:.4f}{se}", str(m["n"] or "–")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


# ----------------------------------------------------------------------------- running


def default_run_name(base_model: str, lora_weights: str | None, tasks: Sequence[str]) -> str:
    """The adapter folder's name, else the base model's short name; other tasks than the
    default one are appended (`SmolLM2-135M_arc_easy-mmlu`), so a base model's runs on two
    task lists do not collide."""
    from crossdefense.runs import short_model_name

    name = Path(lora_weights.rstrip("/")).name if lora_weights else short_model_name(base_model)
    if list(tasks) != [DEFAULT_TASK]:
        name += "_" + "-".join(tasks)
    return name


def _model_id(base_model: str) -> str:
    """A local model folder as its absolute path, a hub id unchanged: what pairs runs."""
    from crossdefense.modeling import looks_like_path

    if looks_like_path(base_model):
        return str(Path(base_model).expanduser().resolve())
    return base_model


def _check_batch_size(batch_size: int | str) -> int | str:
    if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0:
        return batch_size
    text = str(batch_size)
    if text == "auto" or (text.startswith("auto:") and text[5:].isdigit()):
        return text
    raise UserError(f"--batch_size must be a positive integer, auto or auto:N, not {batch_size!r}")


def _device_dtype(device: str | None) -> tuple[str, str]:
    import re

    import torch

    from crossdefense.modeling import device_and_dtype

    best, dtype = device_and_dtype()
    device = device or best
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        raise UserError(f"--device {device!r}: expected cpu, mps, cuda or cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available here (use --device cpu)")
        return device, str(dtype).removeprefix("torch.")
    return device, "float32"


def check_output(output_dir: str | Path, run_name: str, overwrite: bool) -> Path:
    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    outputs = GENERATION_OUTPUTS.resolve()
    if out.resolve() == outputs or outputs in out.resolve().parents:
        raise UserError(
            f"--output_dir {out}: inside {GENERATION_OUTPUTS}, where scripts/score_answers.py "
            f"would read the result as a generation file; use e.g. {OUTPUT_DIR}"
        )
    path = out / f"{run_name}.json"
    if path.is_dir():
        raise UserError(f"{path}: is a directory; the result file would go there")
    if path.exists() and not overwrite:
        raise UserError(f"{path}: exists; pass --overwrite to replace it")
    return path


def evaluate_capabilities(
    base_model: str,
    lora_weights: str | None = None,
    tasks: str | Sequence[str] = DEFAULT_TASK,
    output_dir: str | Path = OUTPUT_DIR,
    run_name: str | None = None,
    batch_size: int | str = 8,
    limit: int | None = None,
    device: str | None = None,
    num_fewshot: int | None = None,
    seed: int = 1234,
    overwrite: bool = False,
    flags: dict[str, Any] | None = None,
    tasks_dir: Path = TASKS_DIR,
) -> tuple[Path, dict[str, Any]]:
    """Run lm-eval on the tasks and write `<output_dir>/<run_name>.json`; every flag is checked
    before a model is loaded. Returns the file and what it holds."""
    from crossdefense.modeling import check_adapter_dir, check_base_model

    check_base_model(base_model)
    if lora_weights is not None:
        lora_weights = str(lora_weights)
        check_adapter_dir(lora_weights)
        lora_weights = str(Path(lora_weights).expanduser().resolve())
    names = parse_tasks(tasks)
    run_name = path_component(
        run_name if run_name is not None else default_run_name(base_model, lora_weights, names),
        "--run_name",
    )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"--limit must be a positive integer, not {limit!r}")
    if num_fewshot is not None and (isinstance(num_fewshot, bool) or num_fewshot < 0):
        raise UserError(f"--num_fewshot must be 0 or more, not {num_fewshot!r}")
    batch_size = _check_batch_size(batch_size)
    device, dtype = _device_dtype(device)
    path = check_output(output_dir, run_name, overwrite)
    tm = task_manager(names, tasks_dir)
    ours = project_tasks(tasks_dir)
    specs: list[Any] = [task_config(ours[n]) if n in ours else n for n in names]

    import lm_eval

    model_args: dict[str, Any] = {"pretrained": _model_id(base_model), "dtype": dtype}
    if lora_weights:
        model_args["peft"] = lora_weights
    # one writer per run name (the whole evaluation: a second identical job stops at once)
    with output_lock(path.parent, "capability evaluation of this run", name=f".{run_name}.lock"):
        check_output(output_dir, run_name, overwrite)  # another run may have finished meanwhile
        started = time.time()
        res = lm_eval.simple_evaluate(
            model="hf",
            model_args=model_args,
            tasks=specs,
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            device=device,
            limit=limit,
            log_samples=False,
            task_manager=tm,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
        wall = time.time() - started
        if res is None:  # only rank 0 of a multi-process run gets results
            raise UserError("lm-eval returned no results (not rank 0 of a distributed run?)")
        doc = result_document(res, base_model, lora_weights, names, run_name, flags)
        doc.update(
            task_data=task_data(specs),
            limit=limit,
            num_fewshot=num_fewshot,
            seed=seed,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            wall_seconds=round(wall, 1),
        )
        write_json(path, doc)
    return path, doc


def result_document(
    res: dict[str, Any],
    base_model: str,
    lora_weights: str | None,
    names: list[str],
    run_name: str,
    flags: dict[str, Any] | None,
) -> dict[str, Any]:
    """The capability JSON (less the run settings) from simple_evaluate's results."""
    import lm_eval

    from crossdefense.generation import train_facts
    from crossdefense.modeling import adapter_sha256

    metadata = run_metadata(flags or {})
    metadata["versions"]["lm_eval"] = lm_eval.__version__
    return {
        "kind": KIND,
        "schema": SCHEMA,
        "run_name": run_name,
        "base_model": _model_id(base_model),
        "model_name": Path(base_model.rstrip("/")).name,
        "lora_weights": lora_weights,
        "adapter_sha256": adapter_sha256(lora_weights) if lora_weights else None,
        "train": train_facts(lora_weights),
        "tasks": names,
        "lm_eval_version": lm_eval.__version__,
        "metrics": flat_metrics(res),
        "results": _clean(res.get("results")),
        "groups": _clean(res.get("groups") or {}),
        "group_subtasks": _clean(res.get("group_subtasks") or {}),
        "n_samples": _clean(res.get("n-samples")),
        "n_shot": _clean(res.get("n-shot")),
        "versions": _clean(res.get("versions")),
        "higher_is_better": _clean(res.get("higher_is_better")),
        "configs": _clean(res.get("configs")),
        "lm_eval_config": _clean(res.get("config")),
        "metadata": metadata,
    }


# ----------------------------------------------------------------------------- report


def expand_capability_paths(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Capability JSONs from files, folders (their *.json) or globs, comma-separated."""
    return expand_paths(spec, lambda d: sorted(d.glob("*.json")), "capability files (*.json)")


def load_capabilities(paths: Sequence[Path]) -> list[dict[str, Any]]:
    runs = []
    for path in paths:
        doc = read_json(path)
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            raise UserError(
                f"{path}: not a capability result of scripts/eval_capabilities.py "
                f'(no "kind": "{KIND}")'
            )
        if not isinstance(doc.get("metrics"), list) or not doc.get("base_model"):
            raise UserError(f"{path}: lacks metrics or base_model")
        for i, m in enumerate(doc["metrics"]):
            if not isinstance(m, dict) or not {"task", "metric", "value"} <= set(m):
                raise UserError(f"{path}: metrics[{i}] is not an object with task, metric, value")
        runs.append({**doc, "path": str(path)})
    return runs


def _pair_key(run: dict[str, Any]) -> tuple:
    return (
        run["base_model"],
        tuple(sorted(run.get("tasks") or [])),
        run.get("limit"),
        run.get("num_fewshot"),
        json.dumps(run.get("task_data") or {}, sort_keys=True),
    )


def _top(run: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(m["task"], m["metric"], m["filter"]): m for m in run["metrics"] if m.get("top_level")}


def capability_rows(paths: str | Path | Sequence[str | Path]) -> list[dict[str, Any]]:
    """Per adapter run x task x metric: the base model's value, the adapter's, their difference
    (adapter - base) and its standard error sqrt(se_a² + se_b²). The base run is the latest one
    of the same base model with no adapter on the same tasks (and task data), limit and
    few-shot count; an adapter run without one gets empty base cells, a base run nobody pairs
    with gets its own rows."""
    runs = load_capabilities(expand_capability_paths(paths))
    dated = sorted(runs, key=lambda r: ((r.get("metadata") or {}).get("date") or "", r["path"]))
    bases: dict[tuple, dict[str, Any]] = {}
    for r in dated:
        if not r.get("lora_weights"):
            bases[_pair_key(r)] = r  # the latest wins
    rows: list[dict[str, Any]] = []
    paired: set[str] = set()
    for r in sorted(
        runs, key=lambda r: (r["base_model"], r.get("lora_weights") or "", r["run_name"])
    ):
        if not r.get("lora_weights"):
            continue
        base = bases.get(_pair_key(r))
        if base is None:
            log.warning(
                "%s: no base-model run with the same tasks, task data, limit and few-shot",
                r["path"],
            )
        else:
            paired.add(base["path"])
        rows += _rows(base, r)
    for b in bases.values():
        if b["path"] not in paired:
            rows += _rows(b, None)
    return rows


def _rows(base: dict[str, Any] | None, adapter: dict[str, Any] | None) -> list[dict[str, Any]]:
    b, a = _top(base) if base else {}, _top(adapter) if adapter else {}
    any_run = adapter or base
    assert any_run is not None
    train = (adapter or {}).get("train") or {}
    out = []
    for key in list(a) + [k for k in b if k not in a]:
        bm, am = b.get(key), a.get(key)
        diff = se = None
        if bm and am:
            diff = am["value"] - bm["value"]
            if bm["stderr"] is not None and am["stderr"] is not None:
                se = math.sqrt(am["stderr"] ** 2 + bm["stderr"] ** 2)
        out.append(
            {
                "model": any_run.get("model_name") or Path(any_run["base_model"]).name,
                "base_model": any_run["base_model"],
                "adapter_run": adapter["run_name"] if adapter else None,
                "base_run": base["run_name"] if base else None,
                "train_task": train.get("task"),
                "num_defense": train.get("num_defense"),
                "seed": train.get("seed"),
                "task": key[0],
                "metric": key[1],
                "filter": key[2],
                "n": (am or bm)["n"],
                "base": bm["value"] if bm else None,
                "base_stderr": bm["stderr"] if bm else None,
                "adapter": am["value"] if am else None,
                "adapter_stderr": am["stderr"] if am else None,
                "diff": diff,
                "diff_stderr": se,
                "adapter_path": adapter["path"] if adapter else None,
                "base_path": base["path"] if base else None,
            }
        )
    return out


def _fmt(value: float | None, se: float | None = None, sign: bool = False) -> str:
    if value is None:
        return "–"
    s = f"{value:+.3f}" if sign else f"{value:.3f}"
    return s + ("" if se is None else f" ± {se:.3f}")


def capabilities_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The results.md section: one table, a row per adapter run x task x metric."""
    lines = [
        f"## {SECTION_TITLE}",
        "",
        "Value ± standard error as lm-eval reports it; Δ = adapter − base, its error "
        "sqrt(se_a² + se_b²) treats the two runs as independent (conservative: both score the "
        "same questions); * = |Δ| > 1.96 × its error. n = documents scored per run.",
        "",
    ]
    if not rows:
        return "\n".join([*lines, "No capability runs.", ""])
    lines.append("| model | adapter | train | task | metric | n | base | adapter | Δ |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        train = "–" if r["train_task"] is None else f"{r['train_task']} {r['num_defense']}"
        metric = r["metric"] + ("" if r["filter"] == "none" else f" ({r['filter']})")
        diff = _fmt(r["diff"], r["diff_stderr"], sign=True)
        if r["diff"] is not None and r["diff_stderr"] and abs(r["diff"]) > 1.96 * r["diff_stderr"]:
            diff += " *"
        lines.append(
            f"| {r['model']} | {r['adapter_run'] or '– (base only)'} | {train} | {r['task']} | "
            f"{metric} | {r['n'] if r['n'] is not None else '–'} | "
            f"{_fmt(r['base'], r['base_stderr'])} | {_fmt(r['adapter'], r['adapter_stderr'])} | "
            f"{diff} |"
        )
    lines.append("")
    return "\n".join(lines)


def capabilities_compact(rows: Sequence[dict[str, Any]]) -> str:
    """The terminal lines: acc per adapter run against its base (the first metric per task)."""
    keep = [r for r in rows if r["metric"] == "acc" and r["adapter_run"]]
    if not keep:
        return ""
    lines = ["", "Capability (lm-evaluation-harness, acc ± se; Δ = adapter − base)"]
    for r in keep:
        lines.append(
            f"  {r['adapter_run']}  {r['task']} n={r['n']}: base {_fmt(r['base'], r['base_stderr'])}"
            f", adapter {_fmt(r['adapter'], r['adapter_stderr'])}, Δ "
            f"{_fmt(r['diff'], r['diff_stderr'], sign=True)}"
        )
    return "\n".join(lines) + "\n"


def capabilities_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow(
            [
                "" if r[c] is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c])
                for c in CSV_COLUMNS
            ]
        )
    return buf.getvalue()


def report_capabilities(
    spec: str | Sequence[str], out: Path, overwrite: bool
) -> list[dict[str, Any]]:
    """For make_report: the rows, checked before anything is written."""
    if (out / CAPABILITIES_CSV).exists() and not overwrite:
        raise UserError(f"{out / CAPABILITIES_CSV}: exists; pass --overwrite to replace it")
    return capability_rows(spec)


def write_capability_files(folder: Path, rows: Sequence[dict[str, Any]]) -> None:
    """For make_report, inside its staging folder: the section appended to results.md and
    capabilities.csv beside it."""
    with (folder / "results.md").open("a", encoding="utf-8") as f:
        f.write("\n" + capabilities_markdown(rows))
    with (folder / "results.txt").open("a", encoding="utf-8") as f:
        f.write(capabilities_compact(rows))
    (folder / CAPABILITIES_CSV).write_text(capabilities_csv(rows), encoding="utf-8")
