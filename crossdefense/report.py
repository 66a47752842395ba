"""Aggregate `summary.json` files into tables (CSV, Markdown) and plots (PNG).

A *config* is (model, train task, N). Runs that share a config are seeds: a cell shows their
mean ± sd and a Wilson interval pooled over their documents (one run: its Wilson interval). The base model is the row
"none x 0"; an adapter trained on the safety-only mixture is "safety-only x 0" and is the N = 0
point of every dose-response line when present (else the base model is).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.io import atomic_open, expand_paths, read_json
from crossdefense.metrics import PRIMARY_UTILITY
from crossdefense.scoring import SUMMARY_FILE
from crossdefense.stats import seed_summary, significance_mark
from crossdefense.tasks import MIX, TASK_NAMES
from crossdefense.xstest import KINDS as XSTEST_KINDS

log = logging.getLogger(__name__)

TRAIN_ORDER = ("none", "safety-only", *TASK_NAMES, MIX)
BENIGN = ("useful", "cnn")
CSV_COLUMNS = (
    "model",
    "run",
    "train_task",
    "num_defense",
    "num_safety",
    "seed",
    "eval_task",
    "doc_kind",
    "eval_stem",
    "n",
    "judge",
    "refusal_rate",
    "refusal_ci_low",
    "refusal_ci_high",
    "vs_base_p",
    "partial_rate",
    "utility_metric",
    "utility",
    "train_task_from",
    "num_defense_from",
    "eval_task_from",
    "doc_kind_from",
    "summary_path",
)
REPORT_FILES = (
    "results.csv",
    "results.md",
    "results.txt",
    "dose_response.png",
    "cross_task_heatmap.png",
    "safety_utility.png",
    "xstest.png",  # only when XSTest was scored
    "frontier.png",  # only when some config has several seeds
)


# ----------------------------------------------------------------------------- loading


def expand_summary_paths(summary_path: str | Sequence[str]) -> list[Path]:
    """Files, globs, or directories holding a summary.json (searched recursively)."""
    return expand_paths(summary_path, lambda d: sorted(d.rglob(SUMMARY_FILE)), SUMMARY_FILE)


def load_results(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """All per-file results; a (run, eval file) scored twice keeps the later summary's row."""
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for path in paths:
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise UserError(f"{path}: not a summary.json (no 'results' list)")
        for i, r in enumerate(data["results"]):
            if not isinstance(r, dict):
                raise UserError(f"{path}: results[{i}] is not an object")
            missing = [k for k in ("run", "eval_stem", "model", "refusal_rate") if k not in r]
            if missing:
                raise UserError(f"{path}: results[{i}] lacks {', '.join(missing)}")
            n = r.get("num_defense")
            if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
                raise UserError(f"{path}: results[{i}] num_defense {n!r} is not an integer")
            rate = r["refusal_rate"]
            if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)):
                raise UserError(f"{path}: results[{i}] refusal_rate {rate!r} is not a number")
            key = (r["run"], r["eval_stem"])
            if key in by_key:
                log.warning("%s: %s/%s scored again; keeping this one", path, *key)
            by_key[key] = {**r, "summary_path": str(path)}
    if not by_key:
        raise UserError("no results in the summary files")
    return list(by_key.values())


def train_label(r: dict[str, Any]) -> str:
    """The train task, with the method when it is not the paper's SFT (`summarize+dpo`): runs
    of two methods are two configs, never seeds of one."""
    task = r.get("train_task") or "unknown"
    method = r.get("method")
    return f"{task}+{method}" if method and method != "sft" else task


def config_of(r: dict[str, Any]) -> tuple[str, str, int | None]:
    return (r.get("model") or "unknown", train_label(r), r.get("num_defense"))


def _config_sort(cfg: tuple[str, str, int | None]) -> tuple:
    model, task, n = cfg
    plain = task.split("+")[0]
    order = TRAIN_ORDER.index(plain) if plain in TRAIN_ORDER else len(TRAIN_ORDER)
    return (model, order, task, -1 if n is None else n)


# ----------------------------------------------------------------------------- aggregation


def _counts(r: dict[str, Any]) -> tuple[int, int]:
    """(refusals, judged responses) of one result; schema-1 summaries carry only the rate."""
    n = r.get("n_parsed", r.get("n")) or 0
    k = r.get("refusals")
    if k is None:
        k = round(r["refusal_rate"] * n)
    return int(k), int(n)


def _seed_key(r: dict[str, Any]) -> tuple:
    seed = r.get("seed")
    return (seed is None, seed if isinstance(seed, int) else 0, r["run"])


def aggregate(results: Sequence[dict[str, Any]]) -> dict[tuple, dict[tuple, dict[str, Any]]]:
    """{config: {(eval_task, doc_kind): cell}}. Runs sharing a config are seeds: the cell's
    rate is their mean, `sd` their spread, `ci` the Wilson interval pooled over all their
    documents (for one run: that run's Wilson interval), `p_values` each run's McNemar test
    against the base model."""
    groups: dict[tuple, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        groups[config_of(r)][(r.get("eval_task"), r.get("doc_kind"))].append(r)
    out: dict[tuple, dict[tuple, dict[str, Any]]] = {}
    for cfg, cells in groups.items():
        out[cfg] = {}
        for key, rs in cells.items():
            rs = sorted(rs, key=_seed_key)
            judged = [x for x in rs if x.get("refusal_rate") is not None]
            counts = [_counts(x) for x in judged]
            seeds = seed_summary(counts)
            utilities = [x["utility"] for x in rs if x.get("utility") is not None]
            out[cfg][key] = {
                "refusal_rate": seeds["mean"],
                "sd": seeds["sd"],
                "ci": seeds["pooled_ci"],
                "n_runs": len(rs),
                "seeds": [x.get("seed") for x in judged],
                "p_values": [x.get("vs_base_p") for x in judged],
                "utility": sum(utilities) / len(utilities) if utilities else None,
                "utility_metric": next(
                    (x["utility_metric"] for x in rs if x.get("utility_metric")), None
                ),
            }
    return out


def worst_p(cell: dict[str, Any] | None) -> float | None:
    """The largest McNemar p over a cell's runs: a mark means every seed differs from base."""
    ps = (cell or {}).get("p_values") or []
    return max(ps) if ps and all(p is not None for p in ps) else None


def benign_utility(
    cells: dict[tuple, dict[str, Any]], task: str
) -> tuple[float | None, str | None]:
    """Mean headline utility of the benign files of `task` (cnn and useful) sharing one metric."""
    found = [cells[(task, k)] for k in ("cnn", "useful") if (task, k) in cells]
    found = [c for c in found if c["utility"] is not None]
    if not found:
        return None, None
    metric = found[0]["utility_metric"]
    values = [c["utility"] for c in found if c["utility_metric"] == metric]
    return sum(values) / len(values), metric


# ----------------------------------------------------------------------------- tables


def results_csv(results: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    rows = sorted(
        results,
        key=lambda r: (_config_sort(config_of(r)), _seed_key(r), r["eval_stem"]),
    )
    for r in rows:
        ci = r.get("refusal_ci") or [None, None]
        src = r.get("inferred_from") or {}
        w.writerow(
            [
                r.get("model"),
                r["run"],
                r.get("train_task"),
                r.get("num_defense"),
                r.get("num_safety"),
                r.get("seed"),
                r.get("eval_task"),
                r.get("doc_kind"),
                r["eval_stem"],
                r.get("n"),
                r.get("judge"),
                _num(r["refusal_rate"]),
                _num(ci[0]),
                _num(ci[1]),
                _num(r.get("vs_base_p")),
                _num(r.get("partial_rate")),
                r.get("utility_metric"),
                _num(r.get("utility")),
                src.get("train_task"),
                src.get("num_defense"),
                src.get("eval_task"),
                src.get("doc_kind"),
                r["summary_path"],
            ]
        )
    return buf.getvalue()


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.6g}"


def _pct(cell: dict[str, Any] | None, mark: bool = True) -> str:
    """`58 [32–81]**` for one run, `58±7 [45–70]` (mean ± sd over seeds, pooled interval)."""
    if cell is None or cell["refusal_rate"] is None:
        return "–"
    s = f"{100 * cell['refusal_rate']:.0f}"
    if cell["n_runs"] > 1 and cell["sd"] is not None:
        s += f"±{100 * cell['sd']:.0f}"
    if cell["ci"]:
        s += f" [{100 * cell['ci'][0]:.0f}–{100 * cell['ci'][1]:.0f}]"
    return s + (significance_mark(worst_p(cell)) if mark else "")


def _util(cell: dict[str, Any] | None) -> str:
    if cell is None or cell.get("utility") is None:
        return "–"
    u = cell["utility"]
    return f"{u:.1f}" if abs(u) > 1.5 else f"{u:.2f}"


def _train(cfg: tuple[str, str, int | None]) -> str:
    if cfg[1] == "none":
        return "base"
    return f"{cfg[1]} {'?' if cfg[2] is None else cfg[2]}"


TABLE_HEADER = ("train", "eval task", "harmful ↑", "useful ↓", "cnn ↓", "utility u/c")


def table_rows(results: Sequence[dict[str, Any]], model: str) -> list[tuple[str, ...]]:
    """One row per (config, eval task) of `model`: refusal on harmful / benign-sensitive /
    news documents, and the task's utility on useful / cnn documents (never averaged)."""
    agg = aggregate(results)
    tasks = [t for t in TASK_NAMES if any(r.get("eval_task") == t for r in results)]
    rows = []
    for cfg in sorted((c for c in agg if c[0] == model), key=_config_sort):
        cells = agg[cfg]
        for t in tasks:
            if not any(k[0] == t for k in cells):
                continue
            util = f"{_util(cells.get((t, 'useful')))} / {_util(cells.get((t, 'cnn')))}"
            rows.append(
                (
                    _train(cfg),
                    t,
                    _pct(cells.get((t, "harmful"))),
                    _pct(cells.get((t, "useful"))),
                    _pct(cells.get((t, "cnn"))),
                    util,
                )
            )
    return rows


def _models(results: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({r.get("model") or "unknown" for r in results})


def _legend(results: Sequence[dict[str, Any]]) -> str:
    judges = sorted({r.get("judge") for r in results if r.get("judge")})
    used = sorted(
        {
            (r.get("eval_task"), r.get("utility_metric"))
            for r in results
            if r.get("utility_metric") and r.get("doc_kind") in BENIGN
        }
    )
    many = any(c["n_runs"] > 1 for cells in aggregate(results).values() for c in cells.values())
    return (
        f"Refusal % (judge: {', '.join(judges) or 'unknown'}) with its 95% Wilson interval"
        + (" (mean±sd over seeds, interval pooled over their documents)" if many else "")
        + "; * ** *** = exact McNemar p < .05 / .01 / .001 against the base model on the same "
        "documents (every seed). harmful = `test_{task}` (higher is safer); useful = "
        "benign-sensitive `_useful`, cnn = news `_cnn` (over-refusal, lower is better). "
        "Utility on useful / cnn: "
        + (", ".join(f"{t} = {m}" for t, m in used) or "none")
        + " (chrf on a 0-100 scale, the others 0-1; see README, Utility metrics)."
    )


def compact_table(results: Sequence[dict[str, Any]]) -> str:
    """The terminal table (fits 100 columns): one block per model."""
    lines = []
    for model in _models(results):
        rows = [TABLE_HEADER, *table_rows(results, model)]
        if len(rows) == 1:
            continue
        widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADER))]
        lines += [model]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        lines.append("")
    return "\n".join(lines) + _wrap(_legend(results), 100) + "\n" + xstest_compact(results)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def judges_markdown(results: Sequence[dict[str, Any]]) -> list[str]:
    """Every refusal judge's rate side by side per run x eval file, with Cohen's kappa of each
    pair (from summary.json); nothing when one judge scored the runs."""
    names: list[str] = []
    for r in results:
        for name, j in (r.get("judges") or {}).items():
            if j.get("kind") == "refusal" and name not in names:
                names.append(name)
    if len(names) < 2:
        return []
    pairs = [f"{a}|{b}" for i, a in enumerate(names) for b in names[i + 1 :]]
    lines = [
        "## Judges side by side",
        "",
        "Refusal % per judge (95% Wilson interval); κ = Cohen's kappa on refusal vs not.",
        "",
        "| model | train | eval file | "
        + " | ".join(names)
        + " | "
        + " | ".join(f"κ {p.replace('|', '/')}" for p in pairs)
        + " |",
        "|" + "---|" * (3 + len(names) + len(pairs)),
    ]
    for r in sorted(
        results, key=lambda r: (_config_sort(config_of(r)), _seed_key(r), r["eval_stem"])
    ):
        judges = r.get("judges") or {}
        cells = []
        for name in names:
            j = judges.get(name)
            if not j or j.get("refusal_rate") is None:
                cells.append("–")
                continue
            ci = j.get("refusal_ci")
            cells.append(
                f"{100 * j['refusal_rate']:.0f}"
                + (f" [{100 * ci[0]:.0f}–{100 * ci[1]:.0f}]" if ci else "")
            )
        agree = r.get("agreement") or {}
        kappas = [
            "–" if (agree.get(p) or {}).get("kappa") is None else f"{agree[p]['kappa']:.2f}"
            for p in pairs
        ]
        train = _train(config_of(r)) + (f" s{r['seed']}" if r.get("seed") is not None else "")
        lines.append(
            f"| {r.get('model')} | {train} | {r['eval_stem']} | "
            + " | ".join(cells + kappas)
            + " |"
        )
    return [*lines, ""]


def xstest_cells(results: Sequence[dict[str, Any]]) -> dict[tuple, dict[str, dict[str, Any]]]:
    """{config: {kind or type: cell}} over the XSTest results (files whose records were
    declared `xstest_safe` / `xstest_unsafe`); seeds pooled as in `aggregate`."""
    groups: dict[tuple, dict[str, list[tuple[int, int, float | None]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in results:
        for kind, part in (r.get("by_kind") or {}).items():
            if kind not in XSTEST_KINDS:
                continue
            cfg = config_of(r)
            groups[cfg][kind].append((part["refusals"], part["n_parsed"], part.get("vs_base_p")))
            for t, tp in (part.get("by_type") or {}).items():
                groups[cfg][t].append((tp["refusals"], tp["n_parsed"], None))
    out: dict[tuple, dict[str, dict[str, Any]]] = {}
    for cfg, cells in groups.items():
        out[cfg] = {}
        for key, runs in cells.items():
            seeds = seed_summary([(k, n) for k, n, _ in runs])
            out[cfg][key] = {
                "refusal_rate": seeds["mean"],
                "sd": seeds["sd"],
                "ci": seeds["pooled_ci"],
                "n_runs": len(runs),
                "n": sum(n for _, n, _ in runs),
                "p_values": [p for _, _, p in runs],
            }
    return out


def xstest_markdown(results: Sequence[dict[str, Any]]) -> list[str]:
    """The XSTest panel: refusal of safe prompts (exaggerated safety, lower is better) and of
    unsafe contrast prompts (higher is better) per config, then per XSTest type."""
    cells = xstest_cells(results)
    if not cells:
        return []
    cfgs = sorted(cells, key=_config_sort)
    lines = [
        "## XSTest (exaggerated safety)",
        "",
        "Refusal % of XSTest's safe prompts (↓: a model that refuses them over-refuses) and of "
        "its unsafe contrast prompts (↑), 95% Wilson interval; * ** *** = exact McNemar "
        "against the base model on the same prompts.",
        "",
        "| model | train | safe ↓ | unsafe ↑ |",
        "|---|---|---|---|",
    ]
    for cfg in cfgs:
        c = cells[cfg]
        lines.append(
            f"| {cfg[0]} | {_train(cfg)} | {_pct(c.get(XSTEST_KINDS[0]))} | "
            f"{_pct(c.get(XSTEST_KINDS[1]))} |"
        )
    types = sorted({t for c in cells.values() for t in c if t not in XSTEST_KINDS})
    if types:
        lines += ["", "Per XSTest type (refusal %; `contrast_*` types are the unsafe ones):", ""]
        lines.append(
            "| type | " + " | ".join(f"{m} {_train(c)}" for c in cfgs for m in [c[0]]) + " |"
        )
        lines.append("|" + "---|" * (len(cfgs) + 1))
        for t in types:
            row = [
                "–"
                if cells[c].get(t) is None or cells[c][t]["refusal_rate"] is None
                else f"{100 * cells[c][t]['refusal_rate']:.0f} (n={cells[c][t]['n']})"
                for c in cfgs
            ]
            lines.append(f"| {t} | " + " | ".join(row) + " |")
    return [*lines, ""]


def xstest_compact(results: Sequence[dict[str, Any]]) -> str:
    """The XSTest lines of the terminal table."""
    cells = xstest_cells(results)
    if not cells:
        return ""
    rows = [("model", "train", "xstest safe ↓", "unsafe ↑")]
    for cfg in sorted(cells, key=_config_sort):
        c = cells[cfg]
        rows.append(
            (cfg[0], _train(cfg), _pct(c.get(XSTEST_KINDS[0])), _pct(c.get(XSTEST_KINDS[1])))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    body = ["  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(["", "XSTest (refusal % of safe / unsafe prompts)", *body]) + "\n"


def results_markdown(results: Sequence[dict[str, Any]]) -> str:
    """One table per model (rows: config x eval task), per-seed rows when there are seeds,
    then instruction-set refusal rates if any."""
    agg = aggregate(results)
    lines = ["# Results", "", _legend(results), ""]
    for model in _models(results):
        cfgs = sorted((c for c in agg if c[0] == model), key=_config_sort)
        lines += [f"## {model}", ""]
        rows = table_rows(results, model)
        if rows:
            lines.append("| " + " | ".join(TABLE_HEADER) + " |")
            lines.append("|" + "---|" * len(TABLE_HEADER))
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            lines.append("")
        seeded = [
            r
            for r in results
            if r.get("model") == model
            and agg[config_of(r)]
            and max(c["n_runs"] for c in agg[config_of(r)].values()) > 1
        ]
        if seeded:
            lines += ["Per seed (refusal %, Wilson interval):", ""]
            lines.append("| train | seed | run | eval file | refusal | p vs base |")
            lines.append("|---|---|---|---|---|---|")
            for r in sorted(
                seeded, key=lambda r: (_config_sort(config_of(r)), _seed_key(r), r["eval_stem"])
            ):
                ci = r.get("refusal_ci")
                rate = "–" if r["refusal_rate"] is None else f"{100 * r['refusal_rate']:.0f}"
                rate += f" [{100 * ci[0]:.0f}–{100 * ci[1]:.0f}]" if ci else ""
                p = r.get("vs_base_p")
                lines.append(
                    f"| {_train(config_of(r))} | {r.get('seed')} | {r['run']} | "
                    f"{r['eval_stem']} | {rate} | {'–' if p is None else f'{p:.3g}'} |"
                )
            lines.append("")
        stems = sorted(
            {
                r["eval_stem"]
                for r in results
                if r.get("model") == model and r.get("doc_kind") == "instructions"
            }
        )
        if stems:
            lines += ["Instruction sets (refusal %):", ""]
            lines.append("| train | " + " | ".join(stems) + " |")
            lines.append("|" + "---|" * (len(stems) + 1))
            for cfg in cfgs:
                cells = {r["eval_stem"]: r for r in results if config_of(r) == cfg}
                row = [_train(cfg)]
                row += [
                    f"{100 * cells[s]['refusal_rate']:.1f}"
                    if s in cells and cells[s]["refusal_rate"] is not None
                    else "–"
                    for s in stems
                ]
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
    lines += xstest_markdown(results)
    lines += judges_markdown(results)
    lines.append(
        "Preference per task (first available): "
        + "; ".join(f"{t}: {' → '.join(ms)}" for t, ms in PRIMARY_UTILITY.items())
        + ". Missing references omit a metric (–), they never count as 0."
    )
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots

_COLORS = {
    t: c
    for t, c in zip(
        (*TASK_NAMES, MIX, "safety-only", "none", "unknown"),
        (
            "#1f77b4",
            "#d62728",
            "#2ca02c",
            "#9467bd",
            "#ff7f0e",
            "#8c564b",
            "#7f7f7f",
            "#000000",
            "#bcbd22",
        ),
        strict=True,
    )
}
_COLORS.update({f"{t}+dpo": "#17becf" for t in (*TASK_NAMES, MIX)})
_COLORS.update({f"{t}+sft+dpo": "#e377c2" for t in (*TASK_NAMES, MIX)})
_MARKERS = "osD^vP*X"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=130, bbox_inches="tight")


def trained_tasks(agg: dict) -> list[str]:
    found = {cfg[1] for cfg in agg if cfg[2] is not None and cfg[2] > 0}
    return sorted(found, key=lambda t: TRAIN_ORDER.index(t) if t in TRAIN_ORDER else 99)


def _zero_point(agg: dict, model: str) -> tuple | None:
    for task in ("safety-only", "none"):
        if (model, task, 0) in agg:
            return (model, task, 0)
    return None


def plot_dose_response(results: Sequence[dict[str, Any]], path: Path) -> None:
    """Harmful-document refusal vs N, one line per eval task with its CI band; one row of
    panels per model, one panel per train task."""
    plt = _plt()
    agg = aggregate(results)
    models = sorted({cfg[0] for cfg in agg})
    train = trained_tasks(agg) or ["(no trained runs)"]
    fig, axes = plt.subplots(
        len(models),
        len(train),
        figsize=(4.6 * len(train), 3.8 * len(models)),
        squeeze=False,
        sharey=True,
        sharex=True,
    )
    ticks = sorted({0} | {cfg[2] for cfg in agg if cfg[2]})
    handles = {}
    for i, model in enumerate(models):
        zero = _zero_point(agg, model)
        for j, tt in enumerate(train):
            ax = axes[i][j]
            ns = sorted({cfg[2] for cfg in agg if cfg[0] == model and cfg[1] == tt and cfg[2]})
            for et in TASK_NAMES:
                pts = []
                for n, cfg in [(0, zero)] + [(n, (model, tt, n)) for n in ns]:
                    cell = agg.get(cfg, {}).get((et, "harmful")) if cfg else None
                    if cell is not None:
                        pts.append((n, cell))
                if not pts:
                    continue
                x = [p[0] for p in pts]
                y = [100 * p[1]["refusal_rate"] for p in pts]
                (line,) = ax.plot(
                    x, y, marker="o", color=_COLORS[et], lw=2.6 if et == tt else 1.5, label=et
                )
                handles[et] = line
                if all(p[1]["ci"] and p[1]["ci"][0] is not None for p in pts):
                    ax.fill_between(
                        x,
                        [100 * p[1]["ci"][0] for p in pts],
                        [100 * p[1]["ci"][1] for p in pts],
                        color=_COLORS[et],
                        alpha=0.12,
                    )
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xticks(ticks)
            ax.set_xticklabels([str(n) for n in ticks], rotation=45 if len(ticks) > 5 else 0)
            ax.tick_params(labelbottom=True)
            ax.set_ylim(-3, 103)
            ax.grid(alpha=0.3)
            ax.set_title(f"{model}\ntrained on {tt}", fontsize=10)
            ax.set_xlabel("defense examples N (0 = " + (zero[1] if zero else "no point") + ")")
            if j == 0:
                ax.set_ylabel("refusal on harmful docs (%)")
    fig.suptitle(
        "Dose-response: refusal of harmful documents vs N (bold = trained task; bands = 95% Wilson)",
        fontsize=11,
    )
    if handles:
        fig.legend(
            list(handles.values()),
            [f"eval: {k}" for k in handles],
            loc="lower center",
            ncol=len(handles),
            bbox_to_anchor=(0.5, -0.06),
            frameon=False,
        )
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def choose_heatmap_n(results: Sequence[dict[str, Any]], heatmap_n: int | None) -> int | None:
    """The user's N (which must exist) or the largest N every trained task has."""
    agg = aggregate(results)
    by_task: dict[str, set[int]] = defaultdict(set)
    for _, task, n in agg:
        if n:
            by_task[task].add(n)
    all_n = set().union(*by_task.values()) if by_task else set()
    if heatmap_n is not None:
        if int(heatmap_n) not in all_n:
            raise UserError(
                f"--heatmap_n {heatmap_n}: no trained run has that N "
                f"(available: {sorted(all_n) or 'none'})"
            )
        return int(heatmap_n)
    if not by_task:
        return None
    common = set.intersection(*by_task.values())
    if common:
        return max(common)
    log.warning("no N is shared by all train tasks; the heat-map uses the largest N")
    return max(all_n)


def _row_label(task: str, n: int | None) -> str:
    return "base model" if task == "none" else f"{task} (N={n})"


def plot_heatmap(results: Sequence[dict[str, Any]], path: Path, n: int | None) -> None:
    """Train task x eval task harmful-document refusal at one N, one panel per model; the base
    model and safety-only rows (N = 0) are shown for reference."""
    import numpy as np

    plt = _plt()
    agg = aggregate(results)
    models = sorted({cfg[0] for cfg in agg})
    eval_tasks = [t for t in TASK_NAMES if any(r.get("eval_task") == t for r in results)]
    rows = sorted(
        {
            (cfg[1], cfg[2])
            for cfg in agg
            if cfg[1] in ("none", "safety-only") and cfg[2] == 0 or (n and cfg[2] == n)
        },
        key=lambda r: _config_sort(("", *r)),
    )
    fig, axes = plt.subplots(
        1,
        len(models),
        figsize=(1.25 * len(eval_tasks) * len(models) + 3.5, 0.6 * len(rows) + 2.2),
        squeeze=False,
        sharey=True,
        constrained_layout=True,
    )
    im = None
    for ax, model in zip(axes[0], models, strict=True):
        data = np.full((max(len(rows), 1), len(eval_tasks)), np.nan)
        for i, (task, n_row) in enumerate(rows):
            for j, et in enumerate(eval_tasks):
                cell = agg.get((model, task, n_row), {}).get((et, "harmful"))
                if cell is not None:
                    data[i, j] = 100 * cell["refusal_rate"]
        im = ax.imshow(data, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                v = data[i, j]
                ax.text(
                    j,
                    i,
                    "–" if math.isnan(v) else f"{v:.0f}%",
                    ha="center",
                    va="center",
                    color="white" if not math.isnan(v) and v < 60 else "black",
                    fontsize=10,
                )
        ax.set_xticks(range(len(eval_tasks)))
        ax.set_xticklabels(eval_tasks, rotation=30, ha="right")
        ax.set_xlabel("eval task (harmful documents)")
        ax.set_title(model, fontsize=10)
    axes[0][0].set_yticks(range(len(rows)))
    axes[0][0].set_yticklabels([_row_label(t, k) for t, k in rows])
    axes[0][0].set_ylabel("train task")
    fig.suptitle(
        f"Cross-task refusal of harmful documents at N = {n}"
        if n
        else "Refusal of harmful documents (no trained runs)",
        fontsize=11,
    )
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), label="refusal (%)", shrink=0.9)
    _save(fig, path)
    plt.close(fig)


def pareto_front(points: Sequence[tuple[float, float]], minimize_x: bool) -> list[int]:
    """Indices of points no other point beats on both axes (y always maximised)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = False
        for k, (x2, y2) in enumerate(points):
            if k == i:
                continue
            better_x = x2 <= x if minimize_x else x2 >= x
            strictly = (x2 != x) or (y2 != y)
            if better_x and y2 >= y and strictly:
                dominated = True
                break
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _short(cfg: tuple[str, str, int | None], models: list[str]) -> str:
    label = "base" if cfg[1] == "none" else f"{cfg[1]} {cfg[2] if cfg[2] is not None else '?'}"
    return label + (f" [{cfg[0]}]" if len(models) > 1 else "")


def plot_safety_utility(results: Sequence[dict[str, Any]], path: Path) -> None:
    """Small multiples, one column per eval task: harmful-document refusal (y) against
    benign-sensitive over-refusal, news over-refusal and the task's utility (one row each;
    never averaged across tasks or metrics). One point per config with Wilson error bars;
    colour = train task, marker = model; the Pareto frontier is dashed."""
    plt = _plt()
    agg = aggregate(results)
    models = sorted({cfg[0] for cfg in agg})
    tasks = [t for t in TASK_NAMES if any(r.get("eval_task") == t for r in results)] or ["–"]
    panels = (
        ("useful", "over-refusal, benign-sensitive (%) ↓", True),
        ("cnn", "over-refusal, news (%) ↓", True),
        ("utility", "utility on useful docs ↑", False),
    )
    fig, axes = plt.subplots(
        len(panels),
        len(tasks),
        figsize=(3.3 * len(tasks) + 1.8, 3.0 * len(panels)),
        squeeze=False,
        sharey=True,
        constrained_layout=True,
    )
    legend: dict[str, Any] = {}
    for j, task in enumerate(tasks):
        for i, (kind, xlabel, minimize) in enumerate(panels):
            ax = axes[i][j]
            pts, cfgs, metric = [], [], None
            for cfg in sorted(agg, key=_config_sort):
                y = agg[cfg].get((task, "harmful"))
                x = agg[cfg].get((task, "useful" if kind == "utility" else kind))
                if y is None or x is None or y["refusal_rate"] is None:
                    continue
                xv = x["utility"] if kind == "utility" else x["refusal_rate"]
                if xv is None:
                    continue
                metric = x.get("utility_metric") if kind == "utility" else metric
                scale = 1 if kind == "utility" else 100
                xerr = None
                if kind != "utility" and x["ci"]:
                    xerr = [[scale * (xv - x["ci"][0])], [scale * (x["ci"][1] - xv)]]
                yerr = (
                    [
                        [100 * (y["refusal_rate"] - y["ci"][0])],
                        [100 * (y["ci"][1] - y["refusal_rate"])],
                    ]
                    if y["ci"]
                    else None
                )
                h = ax.errorbar(
                    scale * xv,
                    100 * y["refusal_rate"],
                    xerr=xerr,
                    yerr=yerr,
                    fmt=_MARKERS[models.index(cfg[0]) % len(_MARKERS)],
                    color=_COLORS.get(cfg[1], "#bcbd22"),
                    ms=6,
                    elinewidth=0.8,
                    capsize=2,
                    alpha=0.85,
                    zorder=3,
                )
                legend.setdefault(cfg[1], h)
                pts.append((scale * xv, 100 * y["refusal_rate"]))
                cfgs.append(cfg)
            if pts:
                front = pareto_front(pts, minimize_x=minimize)
                ax.plot(
                    [pts[k][0] for k in front],
                    [pts[k][1] for k in front],
                    color="black",
                    lw=0.9,
                    ls="--",
                    zorder=2,
                )
                for k in front:
                    ax.annotate(
                        _short(cfgs[k], models),
                        pts[k],
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize=7,
                    ).set_in_layout(False)
            else:
                ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes, fontsize=8)
            if kind != "utility":
                ax.set_xlim(-3, 103)
            ax.set_ylim(-3, 103)
            ax.grid(alpha=0.3)
            ax.set_xlabel(
                xlabel if kind != "utility" else f"{metric or 'utility'} (useful) ↑", fontsize=8
            )
            if i == 0:
                ax.set_title(f"eval: {task}", fontsize=10)
            if j == 0:
                ax.set_ylabel("harmful refusal (%) ↑", fontsize=8)
    handles = [
        plt.Line2D([], [], ls="", marker="o", color=_COLORS.get(t, "#bcbd22"), label=t)
        for t in legend
    ]
    handles += [plt.Line2D([], [], ls="--", color="black", label="Pareto frontier")]
    handles += [
        plt.Line2D([], [], ls="", marker=_MARKERS[k % len(_MARKERS)], color="gray", label=m)
        for k, m in enumerate(models)
    ]
    fig.legend(handles=handles, fontsize=8, loc="outside right upper", title="train / model")
    fig.suptitle(
        "Safety vs over-refusal and utility, per eval task (bars = 95% Wilson intervals)",
        fontsize=11,
    )
    _save(fig, path)
    plt.close(fig)


def plot_frontier(results: Sequence[dict[str, Any]], path: Path) -> bool:
    """One point per run (every seed its own point): refusal of harmful documents (y) against
    over-refusal of benign-sensitive ones (x), one panel per eval task, colour = train config
    (task, method), marker = N. The runs of a config spread by training noise; the base model
    is the black square. False (nothing drawn) when no config has several seeds."""
    agg = aggregate(results)
    if not any(c["n_runs"] > 1 for cells in agg.values() for c in cells.values()):
        return False
    plt = _plt()
    by_run: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in results:
        if r.get("doc_kind") in ("harmful", "useful") and r.get("refusal_rate") is not None:
            by_run[(r["run"], r.get("eval_task"))][r["doc_kind"]] = r
    tasks = [t for t in TASK_NAMES if any(k[1] == t for k in by_run)]
    ns = sorted({r.get("num_defense") or 0 for r in results})
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(3.2 * len(tasks) + 1.6, 3.4), squeeze=False, sharey=True
    )
    legend: dict[str, Any] = {}
    for j, task in enumerate(tasks):
        ax = axes[0][j]
        for (_run, t), kinds in sorted(by_run.items()):
            if t != task or len(kinds) < 2:
                continue
            h, u = kinds["harmful"], kinds["useful"]
            label = train_label(h)
            base = label == "none"
            handle = ax.scatter(
                100 * u["refusal_rate"],
                100 * h["refusal_rate"],
                color="black" if base else _COLORS.get(label, _COLORS["unknown"]),
                marker="s"
                if base
                else _MARKERS[ns.index(h.get("num_defense") or 0) % len(_MARKERS)],
                s=36,
                alpha=0.8,
            )
            legend.setdefault("base" if base else f"{label} {h.get('num_defense')}", handle)
        ax.set_title(task, fontsize=10)
        ax.set_xlim(-3, 103)
        ax.set_ylim(-3, 103)
        ax.set_xlabel("over-refusal, benign-sensitive (%) ↓", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("refusal of harmful documents (%) ↑")
    fig.legend(legend.values(), legend.keys(), loc="center right", fontsize=8, frameon=False)
    fig.suptitle("Safety vs over-refusal, one point per seed", fontsize=11)
    fig.subplots_adjust(right=0.8, wspace=0.08)
    _save(fig, path)
    plt.close(fig)
    return True


def plot_xstest(results: Sequence[dict[str, Any]], path: Path) -> bool:
    """Safe-prompt refusal (x, exaggerated safety) against unsafe-prompt refusal (y) per config,
    bars = pooled 95% Wilson intervals; the ideal is the top-left corner. False: no XSTest."""
    cells = xstest_cells(results)
    if not cells:
        return False
    plt = _plt()
    models = sorted({c[0] for c in cells})
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    for cfg in sorted(cells, key=_config_sort):
        safe, unsafe = cells[cfg].get(XSTEST_KINDS[0]), cells[cfg].get(XSTEST_KINDS[1])
        if not safe or not unsafe or safe["refusal_rate"] is None:
            continue
        if unsafe["refusal_rate"] is None:
            continue
        x, y = 100 * safe["refusal_rate"], 100 * unsafe["refusal_rate"]
        xerr = [[x - 100 * safe["ci"][0]], [100 * safe["ci"][1] - x]] if safe["ci"] else None
        yerr = [[y - 100 * unsafe["ci"][0]], [100 * unsafe["ci"][1] - y]] if unsafe["ci"] else None
        ax.errorbar(
            x,
            y,
            xerr=xerr,
            yerr=yerr,
            fmt=_MARKERS[models.index(cfg[0]) % len(_MARKERS)],
            color=_COLORS.get(cfg[1], _COLORS["unknown"]),
            capsize=2,
            alpha=0.85,
        )
        ax.annotate(
            _short(cfg, models), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7
        )
    ax.set_xlim(-3, 103)
    ax.set_ylim(-3, 103)
    ax.set_xlabel("refused safe prompts % (exaggerated safety, lower is better)")
    ax.set_ylabel("refused unsafe prompts % (higher is better)")
    ax.set_title("XSTest", fontsize=11)
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- entry


def check_report_dir(output_dir: str | Path, overwrite: bool) -> Path:
    from crossdefense.io import check_not_generation_folder

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    check_not_generation_folder(out)
    from crossdefense.capabilities import CAPABILITIES_CSV

    for name in (*REPORT_FILES, CAPABILITIES_CSV):
        if (out / name).exists() and not overwrite:
            raise UserError(f"{out / name}: exists; pass --overwrite to replace it")
    return out


def make_report(
    summary_path: str | Sequence[str],
    output_dir: str | Path,
    heatmap_n: int | None = None,
    overwrite: bool = False,
    capabilities_path: str | Sequence[str] | None = None,
) -> list[Path]:
    """Everything the report script writes; inputs are checked before anything is written.
    With `capabilities_path` (capability JSONs of scripts/eval_capabilities.py: files, folders
    or comma-separated), results.md gets a capability section and capabilities.csv is written.

    The files are made in a temporary folder beside the outputs and moved in together at the
    end, so a crash or Ctrl-C leaves the previous report whole (or nothing), never a new table
    beside old plots; a file this report does not make (xstest.png without XSTest) is removed.
    """
    import shutil
    import tempfile

    out = check_report_dir(output_dir, overwrite)
    results = load_results(expand_summary_paths(summary_path))
    n = choose_heatmap_n(results, heatmap_n)
    caps = None
    if capabilities_path is not None:
        from crossdefense.capabilities import report_capabilities

        caps = report_capabilities(capabilities_path, out, overwrite)
    from crossdefense.capabilities import CAPABILITIES_CSV
    from crossdefense.io import output_lock

    with output_lock(out, "report"):  # one report writer per folder
        check_report_dir(output_dir, overwrite)  # again: another may have finished meanwhile
        tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
        try:
            (tmp / "results.csv").write_text(results_csv(results), encoding="utf-8")
            (tmp / "results.md").write_text(results_markdown(results), encoding="utf-8")
            (tmp / "results.txt").write_text(compact_table(results), encoding="utf-8")
            plot_dose_response(results, tmp / "dose_response.png")
            plot_heatmap(results, tmp / "cross_task_heatmap.png", n)
            plot_safety_utility(results, tmp / "safety_utility.png")
            plot_xstest(results, tmp / "xstest.png")
            plot_frontier(results, tmp / "frontier.png")
            if caps is not None:
                from crossdefense.capabilities import write_capability_files

                write_capability_files(tmp, caps)
            # every file this report makes replaces the old one; one it does not make this
            # time (xstest.png without XSTest, capabilities.csv without capabilities) is an
            # earlier report's and is removed, so the folder never mixes two reports
            known = (*REPORT_FILES, CAPABILITIES_CSV)
            made = [name for name in known if (tmp / name).exists()]
            for name in made:
                (tmp / name).replace(out / name)
            for name in set(known) - set(made):
                (out / name).unlink(missing_ok=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return [out / name for name in made]
