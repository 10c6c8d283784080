"""Does Phase 1 predict test perplexity? (docs/method.md §8.4).  No torch import.

Correlations of Phase 1 metrics with ln test PPL (raw, partial on ln tokens, across
configurations), intraclass correlations and the Kish effective n behind Fisher
intervals, and the linear and log-linear ER → PPL models.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

PREDICTORS = ("dev_er_pct", "train_er_pct", "train_dev_er_gap_pct", "phase1_iterations")
"""Phase 1 metrics related to test PPL in :func:`prediction_analysis`."""


# ----------------------------------------------------------------------------- prediction
def _residualise(values: np.ndarray, design: np.ndarray) -> np.ndarray:
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    return values - design @ coef


def intraclass_correlation(values: np.ndarray, clusters: np.ndarray) -> float:
    """One-way ANOVA intraclass correlation ``(MSB − MSW) / (MSB + (m₀ − 1) MSW)`` with
    ``m₀ = (n − Σ m_g²/n)/(G − 1)`` (unbalanced clusters), clipped to [0, 1]; NaN with
    fewer than 2 clusters or no cluster of size >= 2."""
    values = np.asarray(values, dtype=float)
    labels, inverse, sizes = np.unique(clusters, return_inverse=True, return_counts=True)
    g, n = labels.size, values.size
    if g < 2 or (sizes < 2).all():
        return math.nan
    means = np.bincount(inverse, weights=values) / sizes
    ssb = float((sizes * (means - values.mean()) ** 2).sum())
    ssw = float(((values - means[inverse]) ** 2).sum())
    msb, msw = ssb / (g - 1), ssw / (n - g) if n > g else 0.0
    m0 = (n - (sizes**2).sum() / n) / (g - 1)
    denom = msb + (m0 - 1) * msw
    if denom <= 0:
        return math.nan
    return float(np.clip((msb - msw) / denom, 0.0, 1.0))


def effective_n(x: np.ndarray, y: np.ndarray, clusters: np.ndarray) -> float:
    """Kish effective sample size of a correlation between ``x`` and ``y`` observed in
    clusters: ``n / (1 + (m̄ − 1) ρ_x ρ_y)`` with ρ the intraclass correlations of ``x``
    and ``y`` within clusters and ``m̄`` the mean cluster size (Scott & Holt 1982, the
    design effect of a regression slope).  Between the number of clusters (ρ = 1) and
    ``n`` (independent observations); ``n`` when the ICC is undefined."""
    n = len(x)
    sizes = np.unique(clusters, return_counts=True)[1]
    rho_x, rho_y = intraclass_correlation(x, clusters), intraclass_correlation(y, clusters)
    if not (np.isfinite(rho_x) and np.isfinite(rho_y)):
        return float(n)
    return float(n / (1 + (sizes.mean() - 1) * rho_x * rho_y))


def fisher_interval(r: float, n_eff: float, controlled: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """``tanh(atanh r ± z / sqrt(n_eff − 3 − controlled))``; NaN when that is not positive."""
    dof = n_eff - 3 - controlled
    if not np.isfinite(r) or dof <= 0 or abs(r) >= 1:
        return math.nan, math.nan
    half = stats.norm.ppf(0.5 + confidence / 2) / math.sqrt(dof)
    return math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan  # undefined for constant input or < 3 points
    return float(np.corrcoef(x, y)[0, 1])


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.spearmanr(x, y)[0])


NO_P_VALUES = (
    "no p-values: runs share configurations, training data and the test set, so they are not independent; "
    "intervals use the effective n (Kish design effect, intraclass correlations within configurations)"
)


def _predictor_correlations(
    name: str, x: np.ndarray, y: np.ndarray, lt: np.ndarray, clusters: np.ndarray, y_res: np.ndarray, confidence: float
) -> dict[str, Any]:
    """One predictor's row of :func:`prediction_analysis`: ``x``, ``y`` (ln PPL), ``lt``
    (ln tokens), ``clusters`` and ``y_res`` (``y`` less its ln-tokens trend) per run."""
    ok = np.isfinite(x) & np.isfinite(y)
    xo, yo, lto, co = x[ok], y[ok], lt[ok], clusters[ok]
    row = {"predictor": name, "pearson_r": _pearson(xo, yo), "spearman_rho": _spearman(xo, yo), "n_runs": int(ok.sum())}
    partial = n_eff = math.nan
    if ok.sum() >= 4 and np.ptp(xo) > 0 and np.ptp(yo) > 0:  # a constant column has no correlation
        design = np.column_stack([np.ones_like(lto), lto])
        xr, yr = _residualise(xo, design), _residualise(yo, design)
        partial = _pearson(xr, yr)
        n_eff = effective_n(xr, yr, co) if np.isfinite(partial) else math.nan
    lo, hi = fisher_interval(partial, n_eff, controlled=1, confidence=confidence)
    frame = pd.DataFrame({"c": co, "x": xo, "y": y_res[ok]}).groupby("c").mean()
    row.update(
        partial_r=partial,
        partial_r_ci_low=lo,
        partial_r_ci_high=hi,
        n_eff=n_eff,
        config_r=_pearson(frame["x"].to_numpy(), frame["y"].to_numpy()),
        n_configurations=int(len(frame)),
        note=NO_P_VALUES,
    )
    return row


def _linear_ppl_fit(er_values: np.ndarray, ppl: np.ndarray) -> dict[str, Any]:
    """``PPL ≈ a + b·ER`` (``a``, ``b``, ``r2``, ``n``; NaN unless every ER is finite, two
    differ and there are >= 3 runs)."""
    linear = {"a": math.nan, "b": math.nan, "r2": math.nan, "n": int(len(ppl))}
    if np.unique(er_values[np.isfinite(er_values)]).size >= 2 and len(ppl) >= 3 and np.isfinite(er_values).all():
        res = stats.linregress(er_values, ppl)
        linear.update(a=float(res.intercept), b=float(res.slope), r2=float(res.rvalue**2))
    return linear


LOG_LINEAR_COEFFICIENTS = ("alpha", "beta", "gamma")
"""``ln PPL = α ln tokens + β ER + γ``."""


def _log_linear_fit(lt: np.ndarray, er_values: np.ndarray, y: np.ndarray, clusters: np.ndarray) -> dict[str, Any]:
    """``ln PPL = α ln tokens + β ER + γ`` by OLS with OLS and cluster-robust CR1 standard
    errors and ``r2`` (NaN when the design is rank-deficient or n <= 3), ``n``, ``n_clusters``."""
    design = np.column_stack([lt, er_values, np.ones_like(y)])
    coefs = LOG_LINEAR_COEFFICIENTS
    keys = (*coefs, *(f"{c}_stderr" for c in coefs), *(f"{c}_cluster_stderr" for c in coefs), "r2")
    log_linear: dict[str, Any] = {k: math.nan for k in keys}
    log_linear.update(n=int(len(y)), n_clusters=int(np.unique(clusters).size))
    if not (len(y) > 3 and np.isfinite(design).all() and np.linalg.matrix_rank(design) == 3):
        return log_linear
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    n, k = design.shape
    bread = np.linalg.inv(design.T @ design)
    ols_se = np.sqrt(np.diag(float(resid @ resid) / (n - k) * bread))
    meat = sum(
        np.outer(design[clusters == c].T @ resid[clusters == c], design[clusters == c].T @ resid[clusters == c])
        for c in np.unique(clusters)
    )
    g = np.unique(clusters).size
    scale = g / (g - 1) * (n - 1) / (n - k) if g > 1 else math.nan
    cluster_se = np.sqrt(np.diag(scale * bread @ meat @ bread)) if g > 1 else np.full(3, np.nan)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    for i, name in enumerate(LOG_LINEAR_COEFFICIENTS):
        log_linear.update(
            {name: float(coef[i]), f"{name}_stderr": float(ols_se[i]), f"{name}_cluster_stderr": float(cluster_se[i])}
        )
    log_linear["r2"] = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else math.nan
    return log_linear


def prediction_analysis(
    runs: pd.DataFrame,
    predictors: Sequence[str] = PREDICTORS,
    er: str = "dev_er_pct",
    cluster_by: Sequence[str] = ("variant", "context_dim"),
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Relate Phase 1 metrics to test perplexity (docs/method.md §8.4).

    ``y = ln test PPL = test_loss``.  Per predictor:
    - ``pearson_r`` / ``spearman_rho``: across all runs (confounded with size; descriptive);
    - ``partial_r``: within size, the Pearson correlation of predictor and ``y`` after
      removing a linear trend in ``ln train_tokens`` from both (partial correlation on
      ln tokens), with a Fisher interval on the effective n (one controlled variable);
    - ``config_r``: across configurations (``cluster_by``), the correlation of the
      configurations' mean predictor and mean ln-tokens-adjusted ``y``; n = configurations.
    ``n_eff`` is :func:`effective_n` with configurations as clusters.  No p-values: see
    :data:`NO_P_VALUES`.

    Returns:
        ``correlations`` (list of dicts, with ``n_runs``, ``n_configurations``, ``n_eff``,
        ``note``); ``linear``: ``PPL ≈ a + b·ER`` (``a``, ``b``, ``r2``, ``n``);
        ``log_linear``: ``ln PPL = α ln tokens + β ER + γ`` (coefficients, OLS and
        cluster-robust CR1 standard errors, ``r2``, ``n``, ``n_clusters``; NaN when the
        design is rank-deficient or n <= 3); ``er_column``; ``note``.
    """
    y = runs["test_loss"].to_numpy(dtype=float) if "test_loss" in runs else np.log(runs["test_ppl"].to_numpy(dtype=float))
    lt = np.log(runs["train_tokens"].to_numpy(dtype=float))
    clusters = runs[list(cluster_by)].astype(str).agg("|".join, axis=1).to_numpy() if len(runs) else np.array([])
    trend = np.column_stack([np.ones_like(lt), lt])
    y_res = _residualise(y, trend) if len(runs) else y
    correlations = []
    for name in predictors:
        x = runs[name].to_numpy(dtype=float) if name in runs else np.full(len(runs), np.nan)
        correlations.append(_predictor_correlations(name, x, y, lt, clusters, y_res, confidence))
    er_values = runs[er].to_numpy(dtype=float) if er in runs else np.full(len(runs), np.nan)
    linear = _linear_ppl_fit(er_values, np.exp(y))
    log_linear = _log_linear_fit(lt, er_values, y, clusters)
    return {"correlations": correlations, "linear": linear, "log_linear": log_linear, "er_column": er, "note": NO_P_VALUES}
