"""Opt-in experiment trackers for scoring results (`--report_to wandb,tensorboard`).

Scores are always written to scores.jsonl / summary.json first; a tracker only mirrors them:

- wandb: one run (project `WANDB_PROJECT`, default "crossdefense"; `WANDB_MODE=offline`
  works without an account) with a per-sample table, a per-file summary table, and scalar
  summary values `refusal/<run>/<eval_stem>`, `refusal_<judge>/<run>/<eval_stem>` and
  `utility/<run>/<eval_stem>`; its config is the scoring flags.
- tensorboard: event files under `<output_dir>/tensorboard/` with the same scalars, a
  Markdown summary table and a few sample outputs per file as text.

The packages are optional (requirements-extras.txt); `check_trackers` says which one is missing
before any work starts.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.io import read_json, read_jsonl
from crossdefense.metrics import PRIMARY_UTILITY

TRACKERS = ("wandb", "tensorboard")
EXTRAS_FILE = "requirements-extras.txt"
DEFAULT_PROJECT = "crossdefense"
TENSORBOARD_DIR = "tensorboard"
SAMPLES_PER_FILE = 3  # sample outputs per run x eval file in tensorboard's text tab
SAMPLE_CHARS = 300


def parse_trackers(report_to: str | Sequence[str] | None) -> list[str]:
    """`wandb,tensorboard` (or a tuple, as fire hands it) -> names; none/empty -> []."""
    from crossdefense.cli import as_list

    names = list(dict.fromkeys(name.lower() for name in as_list(report_to)))
    if "none" in names:
        if len(names) > 1:
            raise UserError(f"--report_to: 'none' cannot be combined with {names}")
        return []
    return names


def _require(package: str) -> Any:
    """Import an optional tracker package, or a one-line UserError saying how to install it."""
    try:
        return importlib.import_module(package)
    except Exception as e:  # ImportError, or a broken install (e.g. a protobuf mismatch)
        raise UserError(
            f"--report_to {package} needs the {package} package, which cannot be imported "
            f"({type(e).__name__}: {e}); install the trackers with: "
            f"pip install -r {EXTRAS_FILE}"
        ) from None


def check_trackers(
    report_to: str | Sequence[str] | None, *, allow_other: bool = False
) -> list[str]:
    """The trackers asked for, each importable; call it before any work starts.

    Unknown names are a UserError, unless `allow_other` (training hands other names, e.g.
    mlflow or all, on to transformers, which knows more integrations).
    """
    names = parse_trackers(report_to)
    unknown = [n for n in names if n not in TRACKERS]
    if unknown and allow_other:
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        known = sorted({*INTEGRATION_TO_CALLBACK, "all"})
        bad = [n for n in unknown if n not in known]
        if bad:
            raise UserError(
                f"--report_to: unknown tracker {bad[0]!r}; transformers knows: {', '.join(known)}"
            )
    if unknown and not allow_other:
        raise UserError(
            f"--report_to: unknown tracker {unknown[0]!r}; choose none or one or more "
            f"(comma-separated) of: {', '.join(TRACKERS)}"
        )
    for name in names:
        if name in TRACKERS:
            _require(name)
    return names


# ----------------------------------------------------------------------------- data


def read_scores(output_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(scores.jsonl rows, summary.json results) of a scores directory."""
    from crossdefense.scoring import SCORES_FILE, SUMMARY_FILE

    out = Path(output_dir)
    summary = read_json(out / SUMMARY_FILE)
    return read_jsonl(out / SCORES_FILE), list(summary.get("results", []))


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return None if math.isnan(x) else float(x)


def _refusal_judges(results: Sequence[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in results:
        for name, j in r.get("judges", {}).items():
            if j.get("kind", "refusal") == "refusal" and name not in names:
                names.append(name)
    return names


def scalar_values(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Flat `refusal/<run>/<eval_stem>` (primary judge), `refusal_<judge>/...` (every refusal
    judge), `score_<judge>/...` (harm judges' mean score) and `utility/...` values; rates no
    judge could give (all unparsed) are left out."""
    out: dict[str, float] = {}
    for r in results:
        where = f"{r['run']}/{r['eval_stem']}"
        if (rate := _num(r.get("refusal_rate"))) is not None:
            out[f"refusal/{where}"] = rate
        for name, j in r.get("judges", {}).items():
            if j.get("kind", "refusal") != "refusal":  # a harm judge: its mean score
                if (score := _num(j.get("mean_score"))) is not None:
                    out[f"score_{name}/{where}"] = score
            elif (rate := _num(j.get("refusal_rate"))) is not None:
                out[f"refusal_{name}/{where}"] = rate
        if (util := _num(r.get("utility"))) is not None:
            out[f"utility/{where}"] = util
    return out


def summary_columns(results: Sequence[dict[str, Any]]) -> list[str]:
    others = [f"refusal_{n}" for n in _refusal_judges(results)]
    return [
        "run",
        "eval_stem",
        "model",
        "train_task",
        "num_defense",
        "eval_task",
        "doc_kind",
        "judge",
        "n",
        "refusals",
        "refusal_rate",
        "ci_low",
        "ci_high",
        *others,
        "utility_metric",
        "utility",
        "vs_base_p",
    ]


def summary_table(results: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """One row per run x eval file: rate, Wilson bounds, n, utility, paired p vs base."""
    columns = summary_columns(results)
    judges = _refusal_judges(results)
    data = []
    for r in results:
        ci = r.get("refusal_ci") or [None, None]
        row = {
            **{c: r.get(c) for c in columns},
            "refusal_rate": _num(r.get("refusal_rate")),
            "ci_low": _num(ci[0]),
            "ci_high": _num(ci[1]),
            "utility": _num(r.get("utility")),
            "vs_base_p": _num(r.get("vs_base_p")),
            **{
                f"refusal_{n}": _num(r.get("judges", {}).get(n, {}).get("refusal_rate"))
                for n in judges
            },
        }
        row["num_defense"] = None if row["num_defense"] is None else int(row["num_defense"])
        data.append([row[c] for c in columns])
    return columns, data


def sample_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """One row per response: facts, output, each judge's label and score, utility metrics."""
    judges: list[str] = []
    metric_names: list[str] = []
    utility = {m for names in PRIMARY_UTILITY.values() for m in names}
    for r in rows:
        for name in r.get("judges", {}):
            if name not in judges:
                judges.append(name)
        for m, v in r.get("metrics", {}).items():
            if m in utility and _num(v) is not None and m not in metric_names:
                metric_names.append(m)
    from crossdefense.scoring import ROW_FIELDS

    facts = [k for k in ROW_FIELDS if k not in ("judges", "metrics")]
    columns = [
        *facts,
        *[f"{n}_{k}" for n in judges for k in ("label", "score")],
        *metric_names,
    ]
    data = []
    for r in rows:
        verdicts = r.get("judges", {})
        data.append(
            [
                *[str(r.get(k)) if k == "id" else r.get(k) for k in facts],
                *[
                    x
                    for n in judges
                    for x in (
                        verdicts.get(n, {}).get("label"),
                        _num(verdicts.get(n, {}).get("score")),
                    )
                ],
                *[_num(r.get("metrics", {}).get(m)) for m in metric_names],
            ]
        )
    return columns, data


def _cell(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[str], data: Sequence[Sequence[Any]]) -> str:
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(_cell(x) for x in row) + " |" for row in data),
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- trackers


def default_run_name(output_dir: str | Path) -> str:
    """`<parent>/<scores dir>`, e.g. evaluation/scores."""
    return "/".join(Path(output_dir).resolve().parts[-2:])


def log_wandb(
    rows: Sequence[dict[str, Any]],
    results: Sequence[dict[str, Any]],
    output_dir: str | Path,
    run_name: str | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """One wandb run holding the scores; returns its local directory."""
    wandb = _require("wandb")
    try:
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            name=run_name or os.environ.get("WANDB_NAME") or default_run_name(output_dir),
            job_type="scoring",
            config=dict(config or {}),
            # beside the scores unless WANDB_DIR says otherwise, never in the current folder
            dir=os.environ.get("WANDB_DIR") or str(output_dir),
        )
    except Exception as e:  # no login, no network, a bad setting: wandb raises many types
        raise UserError(
            f"wandb: could not start a run ({type(e).__name__}: {e}); the scores are written "
            f"in {output_dir}; set WANDB_MODE=offline to log without an account"
        ) from None
    try:
        columns, data = sample_table(rows)
        s_columns, s_data = summary_table(results)
        run.log(
            {
                "samples": wandb.Table(columns=columns, data=data),
                "summary": wandb.Table(columns=s_columns, data=s_data),
            }
        )
        run.summary.update(scalar_values(results))
        run.summary["n_records"] = len(rows)
        run.summary["n_files"] = len(results)
        return Path(run.dir).parent
    finally:
        run.finish()
        if wandb.run is None:
            # stop wandb's service process: it flushes the offline run file, and a scoring
            # command leaves nothing running behind it
            wandb.teardown()


def log_tensorboard(
    rows: Sequence[dict[str, Any]],
    results: Sequence[dict[str, Any]],
    log_dir: str | Path,
) -> Path:
    """Scalars, a Markdown summary and sample outputs as tensorboard events in `log_dir`."""
    _require("tensorboard")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:
        raise UserError(
            f"--report_to tensorboard: torch.utils.tensorboard cannot be imported "
            f"({type(e).__name__}: {e}); install the trackers with: pip install -r {EXTRAS_FILE}"
        ) from None
    log_dir = Path(log_dir)
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for tag, value in scalar_values(results).items():
            writer.add_scalar(tag, value, global_step=0)
        writer.add_text("summary", markdown_table(*summary_table(results)), global_step=0)
        by_file: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in rows:
            by_file.setdefault((r["run"], r["eval_stem"]), []).append(r)
        for (run, stem), recs in by_file.items():
            picked = [
                [r.get("id"), r.get("refusal_label"), str(r.get("output", ""))[:SAMPLE_CHARS]]
                for r in recs[:SAMPLES_PER_FILE]
            ]
            writer.add_text(
                f"samples/{run}/{stem}",
                markdown_table(["id", "label", "output"], picked),
                global_step=0,
            )
    finally:
        writer.close()
    return log_dir


def log_scores(
    report_to: str | Sequence[str] | None,
    rows: Sequence[dict[str, Any]] | None,
    results: Sequence[dict[str, Any]] | None,
    output_dir: str | Path,
    *,
    run_name: str | None = None,
    config: dict[str, Any] | None = None,
    tracker_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Send scoring results to every tracker in `report_to`; returns where each wrote.

    `rows`/`results` default to what `output_dir` holds (scores.jsonl / summary.json);
    tensorboard writes under `tracker_dir` (default `<output_dir>/tensorboard`).
    """
    names = check_trackers(report_to)
    if not names:
        return {}
    if "tensorboard" in names and not tracker_dir:
        # our own folder: events of a replaced (--overwrite) scoring would show up twice
        for stale in (Path(output_dir) / TENSORBOARD_DIR).glob("events.out.tfevents.*"):
            stale.unlink()
    if rows is None or results is None:
        read_rows, read_results = read_scores(output_dir)
        rows = read_rows if rows is None else rows
        results = read_results if results is None else results
    written: dict[str, Path] = {}
    for name in names:
        if name == "wandb":
            written[name] = log_wandb(rows, results, output_dir, run_name, config)
        elif name == "tensorboard":
            log_dir = Path(tracker_dir) if tracker_dir else Path(output_dir) / TENSORBOARD_DIR
            written[name] = log_tensorboard(rows, results, log_dir)
    return written
