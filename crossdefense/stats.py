"""The statistics a reviewer expects, from statsmodels / scikit-learn rather than by hand.

- `wilson`: the Wilson score interval of a rate. Unlike a percentile bootstrap it does not
  collapse to [100, 100] at 12 of 12 (it gives [75.8, 100]), and it needs no resampling seed.
- `mcnemar_exact`: the exact (binomial) McNemar test for two runs judged on the same documents;
  only the discordant pairs carry information, so it is far more sensitive than comparing two
  independent intervals.
- `cohen_kappa`: chance-corrected agreement between two judges' labels.
- `seed_summary`: several seeds of one configuration: per-seed rates, mean ± sd and the pooled
  Wilson interval over all their documents.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

CONFIDENCE = 0.95


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Wilson score interval for k successes in n trials (None when n == 0)."""
    if n <= 0:
        return None
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(k, n, alpha=1.0 - confidence, method="wilson")
    # the bounds are exactly 0 and 1 at k = 0 and k = n (floating point leaves 1e-17)
    return (0.0 if k == 0 else float(lo)), (1.0 if k == n else float(hi))


def rate(flags: Sequence[bool], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """{k, n, rate, ci} of a list of binary outcomes; rate and ci are None when empty."""
    n, k = len(flags), sum(bool(f) for f in flags)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci": wilson(k, n, confidence)}


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """Exact McNemar test of paired binary outcomes (a[i], b[i] on the same document i).

    Returns the discordant counts (`a_only`: a true and b false; `b_only`: the reverse), the
    two-sided exact p-value (1.0 when there are no discordant pairs) and the paired n.
    """
    if len(a) != len(b):
        raise ValueError(f"paired outcomes differ in length: {len(a)} vs {len(b)}")
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    both = sum(1 for x, y in zip(a, b, strict=True) if x and y)
    neither = len(a) - a_only - b_only - both
    if a_only + b_only == 0:
        p = 1.0
    else:
        from statsmodels.stats.contingency_tables import mcnemar

        p = float(mcnemar([[both, a_only], [b_only, neither]], exact=True).pvalue)
    return {"n_pairs": len(a), "a_only": a_only, "b_only": b_only, "p_value": p}


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two label sequences; None when undefined (both judges constant and
    equal: agreement is perfect but chance agreement is too)."""
    if not a:
        return None
    if len(set(a) | set(b)) == 1:
        return None
    from sklearn.metrics import cohen_kappa_score

    value = float(cohen_kappa_score(list(a), list(b)))
    return None if math.isnan(value) else value


def seed_summary(per_seed: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """Per-seed (k, n) counts of one configuration → mean ± sd of the rates and the pooled
    Wilson interval (all documents of all seeds; the seeds share documents, so it describes
    document sampling, and the sd describes training noise)."""
    rates = [k / n for k, n in per_seed if n]
    mean = sum(rates) / len(rates) if rates else None
    sd = (
        math.sqrt(sum((r - mean) ** 2 for r in rates) / (len(rates) - 1))
        if mean is not None and len(rates) > 1
        else None
    )
    k = sum(k for k, _ in per_seed)
    n = sum(n for _, n in per_seed)
    return {
        "n_seeds": len(per_seed),
        "mean": mean,
        "sd": sd,
        "pooled_rate": k / n if n else None,
        "pooled_ci": wilson(k, n),
    }


def significance_mark(p: float | None) -> str:
    """`*` p < 0.05, `**` p < 0.01, `***` p < 0.001 (for tables)."""
    if p is None:
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""
