"""How far to trust a judge: its labels against hand labels, with intervals, and how judges
agree with one another.

Accuracy figures carry Wilson intervals; judge pairs get Cohen's kappa (chance-corrected), on
refusal vs not and on the three labels. `refusal_vs_comply` is the figure the literature
reports (XSTest's string match: full refusal vs full compliance): it is computed on rows whose
gold label is refusal or comply, a predicted `partial` counting as not refusing, which is what a
refusal rate counts. Partial answers are reported on their own (recall of `partial`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from crossdefense import UserError
from crossdefense.judges import LABELS, UNPARSED, Judge
from crossdefense.metrics import COMPLY, PARTIAL, REFUSAL
from crossdefense.stats import cohen_kappa, wilson

PREDICTED = (*LABELS, UNPARSED)


def validate_labels(rows: Any, path: str) -> list[dict[str, Any]]:
    """Check a hand-labelled file: each row needs a response and a label among LABELS."""
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{path}: expected a non-empty JSONL of labelled responses")
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict) or not isinstance(r.get("response"), str):
            raise UserError(f"{path}: line {i} has no string 'response'")
        if r.get("label") not in LABELS:
            raise UserError(f"{path}: line {i} label {r.get('label')!r} is not one of {LABELS}")
    return rows


def _share(k: int, n: int) -> dict[str, Any]:
    return {"k": k, "n": n, "value": k / n if n else None, "ci": wilson(k, n)}


def calibrate(judge: Judge, rows: Sequence[dict[str, Any]], source: str = "") -> dict[str, Any]:
    """Confusion matrix (gold x predicted), accuracies with Wilson intervals, and the
    predicted labels (for agreement between judges)."""
    preds = [
        p.label
        for p in judge.judge_batch(
            [r["response"] for r in rows],
            [r.get("document") for r in rows],
            [r.get("task") for r in rows],
        )
    ]
    gold = [r["label"] for r in rows]
    confusion = Counter(zip(gold, preds, strict=True))
    n = len(rows)
    binary = [(g, p) for g, p in zip(gold, preds, strict=True) if g in (REFUSAL, COMPLY)]
    return {
        "judge": judge.name,
        "source": source,
        "n": n,
        "accuracy": _share(sum(confusion[(lab, lab)] for lab in LABELS), n),
        "refusal_vs_comply": _share(
            sum((g == REFUSAL) == (p == REFUSAL) for g, p in binary), len(binary)
        ),
        "partial_recall": _share(confusion[(PARTIAL, PARTIAL)], gold.count(PARTIAL)),
        "n_unparsed": preds.count(UNPARSED),
        "confusion": {g: {p: confusion[(g, p)] for p in PREDICTED} for g in LABELS},
        "predictions": preds,
        "errors": [
            {"id": r.get("id"), "gold": g, "pred": p}
            for r, g, p in zip(rows, gold, preds, strict=True)
            if g != p
        ],
    }


def pairwise_agreement(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cohen's kappa for every pair of judges scored on the same rows."""
    out = []
    for i, a in enumerate(results):
        for b in results[i + 1 :]:
            pa, pb = a["predictions"], b["predictions"]
            keep = [k for k in range(len(pa)) if UNPARSED not in (pa[k], pb[k])]
            xa, xb = [pa[k] for k in keep], [pb[k] for k in keep]
            ra = [str(x == REFUSAL) for x in xa]
            rb = [str(x == REFUSAL) for x in xb]
            out.append(
                {
                    "a": a["judge"],
                    "b": b["judge"],
                    "n": len(keep),
                    "agreement": sum(x == y for x, y in zip(ra, rb, strict=True)) / len(keep)
                    if keep
                    else None,
                    "kappa_refusal": cohen_kappa(ra, rb),
                    "kappa_3way": cohen_kappa(xa, xb),
                }
            )
    return out


def _fmt(share: dict[str, Any]) -> str:
    if share["value"] is None:
        return "–"
    lo, hi = share["ci"]
    return f"{share['value']:.1%} [{100 * lo:.1f}–{100 * hi:.1f}] (n={share['n']})"


def _kappa(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def format_calibration(
    results: Sequence[dict[str, Any]], agreement: Sequence[dict[str, Any]] = ()
) -> str:
    """Confusion matrices, the accuracy table (Markdown) and the kappa table."""
    lines = []
    for res in results:
        lines.append(
            f"{res['judge']} on {res['source'] or 'labels'} (rows gold, columns predicted; "
            f"n={res['n']})"
        )
        lines.append(f"{'':>10} " + " ".join(f"{p:>8}" for p in PREDICTED))
        for g in LABELS:
            lines.append(f"{g:>10} " + " ".join(f"{res['confusion'][g][p]:>8}" for p in PREDICTED))
        lines.append("")
    lines.append(
        "| judge | labels | refusal vs comply (95% Wilson) | 3-way accuracy | partial recall "
        "| unparsed |"
    )
    lines.append("|---|---|---|---|---|---|")
    for res in results:
        lines.append(
            f"| {res['judge']} | {res['source']} | {_fmt(res['refusal_vs_comply'])} | "
            f"{_fmt(res['accuracy'])} | {_fmt(res['partial_recall'])} | {res['n_unparsed']} |"
        )
    if agreement:
        lines += [
            "",
            "| judge A | judge B | labels | n | agreement | kappa (refusal vs not) | "
            "kappa (3-way) |",
        ]
        lines.append("|---|---|---|---|---|---|---|")
        for a in agreement:
            agree = "–" if a["agreement"] is None else f"{a['agreement']:.1%}"
            lines.append(
                f"| {a['a']} | {a['b']} | {a.get('source', '')} | {a['n']} | {agree} | "
                f"{_kappa(a['kappa_refusal'])} | "
                f"{_kappa(a['kappa_3way'])} |"
            )
    return "\n".join(lines)
