"""Scaling-law fits ``PPL = A · tokens^α`` (SPEC §8).  No torch import.

Least squares on ``(ln tokens, ln PPL)`` with ``scipy.stats.linregress`` (as the source
did): ``α`` is the slope, ``A = exp(intercept)``.  The 95 % confidence interval of α
uses Student's t with ``n - 2`` degrees of freedom.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats


def fit_power_law(tokens: Sequence[float], ppl: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Fit ``PPL = A · tokens^α`` in log-log space.

    Args:
        tokens: training tokens per run (> 0).
        ppl: validation perplexity per run (> 0).
        confidence: level of the α interval.

    Returns:
        ``alpha``, ``A``, ``r2``, ``alpha_stderr``, ``alpha_ci_low``, ``alpha_ci_high``
        (NaN when ``n < 3``: no degrees of freedom), ``n_points``, ``tokens_min``,
        ``tokens_max``.

    Raises:
        ValueError: fewer than 2 points, mismatched lengths, non-positive values, or
            all token counts equal.
    """
    x = np.asarray(tokens, dtype=float)
    y = np.asarray(ppl, dtype=float)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"need >= 2 (tokens, ppl) pairs of equal length, got {x.size} and {y.size}")
    if (x <= 0).any() or (y <= 0).any() or not np.isfinite(np.r_[x, y]).all():
        raise ValueError("tokens and ppl must be finite and > 0 for a log-log fit")
    if np.unique(x).size < 2:
        raise ValueError("need at least two distinct token counts to fit a slope")
    res = stats.linregress(np.log(x), np.log(y))
    n = x.size
    if n > 2:
        half = stats.t.ppf(0.5 + confidence / 2, n - 2) * res.stderr
        ci = (res.slope - half, res.slope + half)
        stderr = float(res.stderr)
    else:
        ci, stderr = (math.nan, math.nan), math.nan
    return {
        "alpha": float(res.slope),
        "A": float(math.exp(res.intercept)),
        "r2": float(res.rvalue**2),
        "alpha_stderr": stderr,
        "alpha_ci_low": float(ci[0]),
        "alpha_ci_high": float(ci[1]),
        "n_points": int(n),
        "tokens_min": float(x.min()),
        "tokens_max": float(x.max()),
    }


def predict_ppl(fit: dict[str, float], tokens: float) -> float:
    """``A · tokens^α`` from a :func:`fit_power_law` result."""
    return fit["A"] * tokens ** fit["alpha"]


EXTRAPOLATE_TOKENS = (1_000_000, 10_000_000)


def fit_table(runs, group_by: list[str], tokens: str = "train_tokens", ppl: str = "val_ppl"):
    """One :func:`fit_power_law` row per group of a runs table, with extrapolated PPL.

    Args:
        runs: ``pandas.DataFrame`` with the ``group_by`` columns, ``tokens`` and ``ppl``.

    Returns:
        ``pandas.DataFrame``: the group keys, the fit columns, and ``ppl_at_1M`` /
        ``ppl_at_10M`` (``A·tokens^α`` at 10^6 and 10^7 tokens).
    """
    import pandas as pd

    rows = []
    for keys, group in runs.groupby(group_by, sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        fit = fit_power_law(group[tokens].to_numpy(), group[ppl].to_numpy())
        row = dict(zip(group_by, keys)) | fit
        for t in EXTRAPOLATE_TOKENS:
            row[f"ppl_at_{t // 1_000_000}M"] = predict_ppl(fit, t)
        rows.append(row)
    return pd.DataFrame(rows)
