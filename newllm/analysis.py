"""Study-level analyses over the tidy runs table (SPEC §8).  No torch import.

- :func:`sliding_window_fits`: α in windows of consecutive sample sizes.
- :func:`comparison_table`: one row per configuration (variant × context_dim).
- :func:`prediction_analysis`: do Phase 1 metrics predict Phase 2 perplexity?
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from newllm.scaling import fit_power_law

PREDICTORS = ("val_er_pct", "train_er_pct", "train_val_er_gap_pct", "phase1_iterations")
"""Phase 1 metrics related to validation PPL in :func:`prediction_analysis`."""


def sliding_window_fits(
    runs: pd.DataFrame, group_by: Sequence[str], window: int, step: int = 1, tokens: str = "train_tokens", ppl: str = "val_ppl"
) -> pd.DataFrame:
    """Fit ``PPL = A·tokens^α`` in windows of ``window`` consecutive sizes, stepping by ``step``.

    Per group, sizes are ordered by tokens; window ``k`` covers sizes ``k·step …
    k·step + window − 1``.  ``delta_alpha`` is the change from the previous window of the
    same group (more negative = scaling improves with data) and
    ``delta_alpha_stderr = sqrt(se_k² + se_{k−1}²)`` (windows treated as independent).

    Returns:
        One row per window: group keys, ``window``, ``tokens_min``, ``tokens_max``,
        ``alpha``, ``A``, ``r2``, ``alpha_stderr``, ``delta_alpha``, ``delta_alpha_stderr``.

    Raises:
        ValueError: ``window < 2`` or ``step < 1``.
    """
    if window < 2 or step < 1:
        raise ValueError(f"window must be >= 2 and step >= 1, got window={window}, step={step}")
    rows = []
    for keys, group in runs.groupby(list(group_by), sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        group = group.sort_values(tokens)
        previous = None
        for k, start in enumerate(range(0, len(group) - window + 1, step)):
            part = group.iloc[start : start + window]
            fit = fit_power_law(part[tokens], part[ppl])
            row = dict(zip(group_by, keys)) | {
                "window": k,
                "tokens_min": fit["tokens_min"],
                "tokens_max": fit["tokens_max"],
                "alpha": fit["alpha"],
                "A": fit["A"],
                "r2": fit["r2"],
                "alpha_stderr": fit["alpha_stderr"],
                "delta_alpha": math.nan if previous is None else fit["alpha"] - previous["alpha"],
                "delta_alpha_stderr": math.nan if previous is None else math.hypot(fit["alpha_stderr"], previous["alpha_stderr"]),
            }
            rows.append(row)
            previous = fit
    return pd.DataFrame(rows)


def comparison_table(runs: pd.DataFrame, fits: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, context_dim): its settings, scaling fit and best run.

    Columns: settings (``num_input_tokens``, ``num_layers``, ``ffn_layers``,
    ``activation``, ``diversity``, ``dist_reg_weight``), ``alpha``, ``A``, ``r2``,
    ``best_val_ppl`` (lowest over sizes) with its ``val_accuracy`` and ``samples``,
    ``val_er_pct`` and ``train_er_pct`` at the largest size, mean ``phase1_iterations``,
    ``parameters`` (ContextBlock + TokenBlock) and ``ppl_per_million_parameters``
    (best PPL / parameters in millions; lower is more efficient).
    """
    settings = ["num_input_tokens", "num_layers", "ffn_layers", "activation", "diversity", "dist_reg_weight"]
    rows = []
    for (variant, dim), group in runs.groupby(["variant", "context_dim"], sort=True):
        best = group.loc[group["val_ppl"].idxmin()]
        largest = group.loc[group["train_tokens"].idxmax()]
        fit = fits[(fits["variant"] == variant) & (fits["context_dim"] == dim)]
        params = int(best["context_block_parameters"] + best["token_block_parameters"])
        rows.append({
            "variant": variant,
            "context_dim": dim,
            **{s: best[s] for s in settings if s in group},
            "alpha": fit["alpha"].iloc[0] if len(fit) else math.nan,
            "A": fit["A"].iloc[0] if len(fit) else math.nan,
            "r2": fit["r2"].iloc[0] if len(fit) else math.nan,
            "best_val_ppl": best["val_ppl"],
            "best_samples": best["samples"],
            "val_accuracy": best["val_accuracy"],
            "val_er_pct": largest["val_er_pct"],
            "train_er_pct": largest["train_er_pct"],
            "phase1_iterations": group["phase1_iterations"].mean(),
            "parameters": params,
            "ppl_per_million_parameters": best["val_ppl"] / (params / 1e6),
        })
    return pd.DataFrame(rows)


def _correlation(fn, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if np.unique(x).size < 2 or np.unique(y).size < 2 or x.size < 3:
        return math.nan, math.nan  # undefined for constant input or < 3 points
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fn(x, y)
    return float(result[0]), float(result[1])


def prediction_analysis(runs: pd.DataFrame, predictors: Sequence[str] = PREDICTORS, er: str = "val_er_pct") -> dict[str, Any]:
    """Relate Phase 1 metrics to Phase 2 validation PPL across all runs (SPEC §8).

    Returns:
        ``correlations``: per predictor Pearson r and Spearman ρ with p-values (NaN when
        a column is constant or n < 3); ``linear``: ``PPL ≈ a + b·ER`` (``a``, ``b``,
        ``r2``, ``p_value``, ``b_stderr``); ``log_linear``: ``ln PPL = α ln tokens + β ER
        + γ`` (coefficients, standard errors, ``r2``, ``n``; NaN when the design matrix
        is rank-deficient or n ≤ 3).
    """
    y = runs["val_ppl"].to_numpy(dtype=float)
    correlations = []
    for name in predictors:
        x = runs[name].to_numpy(dtype=float)
        r, r_p = _correlation(stats.pearsonr, x, y)
        rho, rho_p = _correlation(stats.spearmanr, x, y)
        correlations.append({"predictor": name, "pearson_r": r, "pearson_p": r_p, "spearman_rho": rho, "spearman_p": rho_p, "n": int(x.size)})
    er_values = runs[er].to_numpy(dtype=float)
    linear = {"a": math.nan, "b": math.nan, "r2": math.nan, "p_value": math.nan, "b_stderr": math.nan, "n": int(y.size)}
    if np.unique(er_values).size >= 2 and y.size >= 3:
        res = stats.linregress(er_values, y)
        linear.update(a=float(res.intercept), b=float(res.slope), r2=float(res.rvalue**2), p_value=float(res.pvalue), b_stderr=float(res.stderr))
    design = np.column_stack([np.log(runs["train_tokens"].to_numpy(dtype=float)), er_values, np.ones_like(y)])
    target = np.log(y)
    log_linear = {k: math.nan for k in ("alpha", "beta", "gamma", "alpha_stderr", "beta_stderr", "gamma_stderr", "r2")}
    log_linear["n"] = int(y.size)
    if y.size > 3 and np.linalg.matrix_rank(design) == 3:
        coef, _, _, _ = np.linalg.lstsq(design, target, rcond=None)
        residuals = target - design @ coef
        dof = y.size - 3
        sigma2 = float(residuals @ residuals) / dof
        stderr = np.sqrt(np.diag(sigma2 * np.linalg.inv(design.T @ design)))
        ss_tot = float(((target - target.mean()) ** 2).sum())
        log_linear.update(
            alpha=float(coef[0]), beta=float(coef[1]), gamma=float(coef[2]),
            alpha_stderr=float(stderr[0]), beta_stderr=float(stderr[1]), gamma_stderr=float(stderr[2]),
            r2=1.0 - float(residuals @ residuals) / ss_tot if ss_tot > 0 else math.nan,
        )
    return {"correlations": correlations, "linear": linear, "log_linear": log_linear, "er_column": er}
