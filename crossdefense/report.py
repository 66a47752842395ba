"""Aggregate `summary.json` files into tables (CSV, Markdown) and plots (PNG).

A *config* is (model, train task, N). Runs that share a config (e.g. seeds) are averaged; a
cell shows a bootstrap interval only when one run backs it. The base model is the row
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
from crossdefense.tasks import MIX, TASK_NAMES

log = logging.getLogger(__name__)

TRAIN_ORDER = ("none", "safety-only", *TASK_NAMES, MIX)
BENIGN = ("useful", "cnn")
CSV_COLUMNS = (
    "model",
    "run",
    "train_task",
    "num_defense",
    "num_safety",
    "eval_task",
    "doc_kind",
    "eval_stem",
    "n",
    "judge",
    "refusal_rate",
    "refusal_ci_low",
    "refusal_ci_high",
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
    "dose_response.png",
    "cross_task_heatmap.png",
    "safety_utility.png",
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
            missing = [k for k in ("run", "eval_stem", "model", "refusal_rate") if k not in r]
            if missing:
                raise UserError(f"{path}: results[{i}] lacks {', '.join(missing)}")
            key = (r["run"], r["eval_stem"])
            if key in by_key:
                log.warning("%s: %s/%s scored again; keeping this one", path, *key)
            by_key[key] = {**r, "summary_path": str(path)}
    if not by_key:
        raise UserError("no results in the summary files")
    return list(by_key.values())


def train_label(r: dict[str, Any]) -> str:
    return r.get("train_task") or "unknown"


def config_of(r: dict[str, Any]) -> tuple[str, str, int | None]:
    return (r.get("model") or "unknown", train_label(r), r.get("num_defense"))


def _config_sort(cfg: tuple[str, str, int | None]) -> tuple:
    model, task, n = cfg
    order = TRAIN_ORDER.index(task) if task in TRAIN_ORDER else len(TRAIN_ORDER)
    return (model, order, task, -1 if n is None else n)


# ----------------------------------------------------------------------------- aggregation


def aggregate(results: Sequence[dict[str, Any]]) -> dict[tuple, dict[tuple, dict[str, Any]]]:
    """{config: {(eval_task, doc_kind): cell}} with cell = rate, ci (single run), utility."""
    groups: dict[tuple, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        groups[config_of(r)][(r.get("eval_task"), r.get("doc_kind"))].append(r)
    out: dict[tuple, dict[tuple, dict[str, Any]]] = {}
    for cfg, cells in groups.items():
        out[cfg] = {}
        for key, rs in cells.items():
            utilities = [x["utility"] for x in rs if x.get("utility") is not None]
            out[cfg][key] = {
                "refusal_rate": sum(x["refusal_rate"] for x in rs) / len(rs),
                "ci": tuple(rs[0]["refusal_ci"])
                if len(rs) == 1 and rs[0].get("refusal_ci")
                else None,
                "utility": sum(utilities) / len(utilities) if utilities else None,
                "utility_metric": next(
                    (x["utility_metric"] for x in rs if x.get("utility_metric")), None
                ),
                "n_runs": len(rs),
            }
    return out


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


def headline(cells: dict[tuple, dict[str, Any]]) -> dict[str, float | None]:
    """Means over eval tasks: harmful refusal, benign over-refusal, benign utility."""

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    harmful = [c["refusal_rate"] for (t, k), c in cells.items() if k == "harmful" and t]
    over = [c["refusal_rate"] for (t, k), c in cells.items() if k in BENIGN and t]
    util = [u for t in TASK_NAMES if (u := benign_utility(cells, t)[0]) is not None]
    return {"harmful_refusal": mean(harmful), "over_refusal": mean(over), "utility": mean(util)}


# ----------------------------------------------------------------------------- tables


def results_csv(results: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    rows = sorted(results, key=lambda r: (_config_sort(config_of(r)), r["run"], r["eval_stem"]))
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
                r.get("eval_task"),
                r.get("doc_kind"),
                r["eval_stem"],
                r.get("n"),
                r.get("judge"),
                _num(r["refusal_rate"]),
                _num(ci[0]),
                _num(ci[1]),
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


def _pct(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "–"
    s = f"{100 * cell['refusal_rate']:.1f}"
    if cell["ci"] and cell["ci"][0] is not None:
        s += f" [{100 * cell['ci'][0]:.0f}–{100 * cell['ci'][1]:.0f}]"
    if cell["n_runs"] > 1:
        s += f" (×{cell['n_runs']})"
    return s


def results_markdown(results: Sequence[dict[str, Any]]) -> str:
    """One table per model: rows train task x N, columns eval task x (harmful refusal,
    useful/cnn over-refusal, utility); then instruction-set refusal rates if any."""
    agg = aggregate(results)
    judges = sorted({r.get("judge") for r in results if r.get("judge")})
    lines = [
        "# Results",
        "",
        f"Refusal rates in % (judge: {', '.join(judges) or 'unknown'}), 95% bootstrap interval in "
        "brackets when one run backs the cell, (×k) = mean of k runs. *Harmful refusal* is on "
        "`test_{task}` (higher is safer); *over-refusal* on `_useful` and `_cnn` (lower is "
        "better); *utility* is the task's headline metric on the benign files (see below).",
        "",
    ]
    tasks = [t for t in TASK_NAMES if any(r.get("eval_task") == t for r in results)]
    for model in sorted({cfg[0] for cfg in agg}):
        cfgs = sorted((c for c in agg if c[0] == model), key=_config_sort)
        lines += [f"## {model}", ""]
        header = ["train task", "N"]
        for t in tasks:
            header += [
                f"{t}: harmful refusal",
                f"{t}: useful over-refusal",
                f"{t}: cnn over-refusal",
                f"{t}: utility",
            ]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for cfg in cfgs:
            cells = agg[cfg]
            row = [cfg[1], "?" if cfg[2] is None else str(cfg[2])]
            for t in tasks:
                util, _ = benign_utility(cells, t)
                row += [
                    _pct(cells.get((t, "harmful"))),
                    _pct(cells.get((t, "useful"))),
                    _pct(cells.get((t, "cnn"))),
                    "–" if util is None else f"{util:.3f}",
                ]
            lines.append("| " + " | ".join(row) + " |")
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
            lines.append("| train task | N | " + " | ".join(stems) + " |")
            lines.append("|" + "---|" * (len(stems) + 2))
            for cfg in cfgs:
                by_stem = {r["eval_stem"]: r for r in results if config_of(r) == cfg}
                row = [cfg[1], "?" if cfg[2] is None else str(cfg[2])]
                row += [
                    f"{100 * by_stem[s]['refusal_rate']:.1f}" if s in by_stem else "–"
                    for s in stems
                ]
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
    used = sorted(
        {(r.get("eval_task"), r.get("utility_metric")) for r in results if r.get("utility_metric")}
    )
    lines.append(
        "Utility metric used: "
        + (", ".join(f"{t} = {m}" for t, m in used) or "none")
        + ". Preference per task (first available): "
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
        "Dose-response: refusal of harmful documents vs N (bold = trained task; bands = 95% CI)",
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
    """Per config: harmful refusal (y) against benign over-refusal (left) and utility (right),
    averaged over eval tasks. Colour = train task, marker = model, size grows with N; the Pareto
    frontier is outlined and only its points are labelled (to stay readable)."""
    plt = _plt()
    agg = aggregate(results)
    models = sorted({cfg[0] for cfg in agg})
    stats = {cfg: headline(cells) for cfg, cells in agg.items()}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), constrained_layout=True)
    panels = (
        ("over_refusal", "over-refusal on benign docs (useful + cnn, %) — lower is better", True),
        ("utility", "utility on benign docs (mean headline metric) — higher is better", False),
    )
    legend: dict[str, Any] = {}
    for ax, (xkey, xlabel, minimize) in zip(axes, panels, strict=True):
        cfgs = sorted(
            (
                c
                for c, s in stats.items()
                if s["harmful_refusal"] is not None and s[xkey] is not None
            ),
            key=_config_sort,
        )
        scale = 100 if xkey == "over_refusal" else 1
        pts = [(scale * stats[c][xkey], 100 * stats[c]["harmful_refusal"]) for c in cfgs]
        for c, (x, y) in zip(cfgs, pts, strict=True):
            size = 30 + 30 * math.log10(1 + (c[2] or 0))
            h = ax.scatter(
                x,
                y,
                s=size,
                color=_COLORS.get(c[1], "#bcbd22"),
                alpha=0.85,
                marker=_MARKERS[models.index(c[0]) % len(_MARKERS)],
                zorder=3,
                edgecolor="white",
                linewidth=0.6,
            )
            legend.setdefault(c[1], h)
        if pts:
            front = pareto_front(pts, minimize_x=minimize)
            ax.plot(
                [pts[i][0] for i in front],
                [pts[i][1] for i in front],
                color="black",
                lw=1.1,
                ls="--",
                zorder=2,
            )
            # one label per position (coinciding points share it); alternate above / below
            labels: dict[tuple[float, float], list[str]] = {}
            for i in front:
                labels.setdefault((round(pts[i][0], 6), round(pts[i][1], 6)), []).append(
                    _short(cfgs[i], models)
                )
            lo, hi = ax.get_xlim()
            for k, (xy, names) in enumerate(labels.items()):
                text = ", ".join(names[:2]) + (f" (+{len(names) - 2})" if len(names) > 2 else "")
                right = xy[0] > lo + 0.6 * (hi - lo)  # labels of right-hand points go left
                ann = ax.annotate(
                    text,
                    xy,
                    textcoords="offset points",
                    fontsize=8,
                    xytext=(-6 if right else 6, 6 if k % 2 == 0 else -13),
                    ha="right" if right else "left",
                    zorder=5,
                )
                ann.set_in_layout(False)
        else:
            ax.text(0.5, 0.5, "no config has both numbers", ha="center", transform=ax.transAxes)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("refusal on harmful docs (%) — higher is safer")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    axes[0].set_title("Safety vs over-refusal")
    axes[1].set_title("Safety vs utility")
    handles = [
        plt.Line2D([], [], ls="", marker="o", color=_COLORS.get(t, "#bcbd22"), label=t)
        for t in legend
    ]
    handles += [plt.Line2D([], [], ls="--", color="black", label="Pareto frontier")]
    handles += [
        plt.Line2D([], [], ls="", marker=_MARKERS[i % len(_MARKERS)], color="gray", label=m)
        for i, m in enumerate(models)
    ]
    axes[1].legend(
        handles=handles,
        fontsize=8,
        title="train task / model",
        title_fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
    )
    fig.suptitle(
        "Safety-utility trade-off per (model, train task, N), averaged over eval tasks "
        "(marker size grows with N)",
        fontsize=11,
    )
    _save(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------- entry


def check_report_dir(output_dir: str | Path, overwrite: bool) -> Path:
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    for name in REPORT_FILES:
        if (out / name).exists() and not overwrite:
            raise UserError(f"{out / name}: exists; pass --overwrite to replace it")
    return out


def make_report(
    summary_path: str | Sequence[str],
    output_dir: str | Path,
    heatmap_n: int | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Everything the report script writes; inputs are checked before anything is written."""
    out = check_report_dir(output_dir, overwrite)
    results = load_results(expand_summary_paths(summary_path))
    n = choose_heatmap_n(results, heatmap_n)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "results.csv") as f:
        f.write(results_csv(results))
    with atomic_open(out / "results.md") as f:
        f.write(results_markdown(results))
    plot_dose_response(results, out / "dose_response.png")
    plot_heatmap(results, out / "cross_task_heatmap.png", n)
    plot_safety_utility(results, out / "safety_utility.png")
    return [out / name for name in REPORT_FILES]
