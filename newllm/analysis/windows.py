"""Sliding-window power-law fits (docs/method.md §8.3): α in windows of consecutive sizes
and the change between windows, with a standard error that accounts for shared points.
No torch import.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from newllm.scaling import fit_power_law
from newllm.uncertainty import percentile_interval

MIN_WINDOW_POINTS = 4
"""A window fit needs >= 4 sizes: 2 residual degrees of freedom for its standard error."""


# ----------------------------------------------------------------------------- sliding windows
def _window_deltas(alpha: np.ndarray, rss: np.ndarray, weights: np.ndarray, dof: int) -> tuple[np.ndarray, np.ndarray]:
    """``α_w − α_{w−1}`` and its covariance-aware SE ``σ̂·‖c_w − c_{w−1}‖`` (pooled σ̂ of the
    two windows; see :func:`window_fits`), both ``[..., W]``, NaN for window 0."""
    delta = np.full_like(alpha, np.nan)
    delta_se = np.full_like(alpha, np.nan)
    if weights.shape[0] > 1:
        delta[..., 1:] = alpha[..., 1:] - alpha[..., :-1]
        diff_norm = np.linalg.norm(weights[1:] - weights[:-1], axis=1)  # ‖c_w − c_{w−1}‖
        sigma2 = (rss[..., 1:] + rss[..., :-1]) / (2 * dof)
        delta_se[..., 1:] = np.sqrt(sigma2) * diff_norm
    return delta, delta_se


def window_fits(x: np.ndarray, y: np.ndarray, window: int, step: int = 1) -> dict[str, np.ndarray]:
    """OLS lines in windows of ``window`` consecutive points, for many responses at once.

    Window ``w`` covers points ``w·step … w·step + window − 1`` of the sorted ``x``.  Its
    slope is linear in the data, ``α_w = c_wᵀ y`` with ``c_{w,i} = (x_i − x̄_w)/S_xx,w``
    inside the window and 0 outside.  For ``y_i = μ_i + ε_i`` with independent errors of
    variance σ², ``Cov(α_v, α_w) = σ² c_vᵀ c_w`` (windows share points), hence

        SE(α_w − α_{w−1}) = σ̂ · ‖c_w − c_{w−1}‖,
        σ̂² = (RSS_{w−1} + RSS_w) / ((n_{w−1} − 2) + (n_w − 2)),

    the pooled residual variance of the two windows (each ``RSS/(n−2)`` is unbiased when
    the power law holds within its window, so the pool is too, though the RSS share
    points).  The independent-windows formula ``sqrt(se_{w−1}² + se_w²)`` drops the
    ``−2σ² c_{w−1}ᵀc_w`` term and overstates the SE for overlapping windows.

    Args:
        x: ``[n]`` sorted regressor (ln tokens).
        y: ``[..., n]`` responses (ln PPL), e.g. ``[B, n]`` bootstrap resamples.

    Returns:
        ``start [W]``, ``weights [W, n]`` (the ``c_w``), ``alpha``, ``intercept``, ``rss``,
        ``alpha_stderr`` (``s_w / sqrt(S_xx,w)``) as ``[..., W]``, and ``delta_alpha``,
        ``delta_alpha_stderr`` as ``[..., W]`` (NaN for window 0).

    Raises:
        ValueError: ``window < 3`` (no residual degree of freedom) or ``step < 1``.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = x.size
    if window < 3 or step < 1:
        raise ValueError(f"window must be >= 3 and step >= 1, got window={window}, step={step}")
    starts = np.arange(0, n - window + 1, step)
    weights = np.zeros((starts.size, n))
    for w, s in enumerate(starts):
        xs = x[s : s + window]
        weights[w, s : s + window] = (xs - xs.mean()) / ((xs - xs.mean()) ** 2).sum()
    alpha = y @ weights.T  # [..., W]
    intercept = np.zeros_like(alpha)
    rss = np.zeros_like(alpha)
    for w, s in enumerate(starts):
        xs, ys = x[s : s + window], y[..., s : s + window]
        intercept[..., w] = ys.mean(-1) - alpha[..., w] * xs.mean()
        rss[..., w] = ((ys - intercept[..., w, None] - alpha[..., w, None] * xs) ** 2).sum(-1)
    sxx = 1.0 / (weights**2).sum(axis=1)  # ‖c_w‖² = 1/S_xx,w
    dof = window - 2
    alpha_se = np.sqrt(rss / dof / sxx)
    delta, delta_se = _window_deltas(alpha, rss, weights, dof)
    return {
        "start": starts,
        "weights": weights,
        "alpha": alpha,
        "intercept": intercept,
        "rss": rss,
        "alpha_stderr": alpha_se,
        "delta_alpha": delta,
        "delta_alpha_stderr": delta_se,
    }


SLIDING_COLUMNS = [
    "window",
    "n_points",
    "shared_points",
    "tokens_min",
    "tokens_max",
    "alpha",
    "A",
    "r2",
    "alpha_stderr",
    "alpha_ci_low",
    "alpha_ci_high",
    "delta_alpha",
    "delta_alpha_stderr",
    "delta_alpha_boot_se",
    "delta_alpha_ci_low",
    "delta_alpha_ci_high",
]
"""Columns of :func:`sliding_window_fits` after the group keys."""


def _window_row(fit: dict[str, np.ndarray], t: np.ndarray, y: np.ndarray, w: int, window: int, step: int) -> dict[str, Any]:
    """Window ``w`` (:func:`window_fits` output ``fit``) of one group with sorted tokens
    ``t`` and ln PPL ``y``: its range, α with its OLS SE, ``A`` and ``r2`` of the
    single fit, and the change from the previous window."""
    s = fit["start"][w]
    part = slice(s, s + window)
    single = fit_power_law(t[part], np.exp(y[part]))
    return {
        "window": w,
        "n_points": window,
        "shared_points": max(window - step, 0) if w else 0,
        "tokens_min": t[part].min(),
        "tokens_max": t[part].max(),
        "alpha": fit["alpha"][w],
        "A": single["A"],
        "r2": single["r2"],
        "alpha_stderr": fit["alpha_stderr"][w],
        "delta_alpha": fit["delta_alpha"][w],
        "delta_alpha_stderr": fit["delta_alpha_stderr"][w],
    }


def _window_boot_columns(boot_alpha: np.ndarray, w: int, confidence: float) -> dict[str, float]:
    """Bootstrap interval of window ``w``'s α and, from window 1 on, the SE and interval of
    its change (``boot_alpha`` ``[B, W]``)."""
    lo, hi = percentile_interval(boot_alpha[:, w], confidence)
    out = {"alpha_ci_low": float(lo), "alpha_ci_high": float(hi)}
    if w:
        d = boot_alpha[:, w] - boot_alpha[:, w - 1]
        lo, hi = percentile_interval(d, confidence)
        out.update(delta_alpha_boot_se=float(np.nanstd(d, ddof=1)), delta_alpha_ci_low=float(lo), delta_alpha_ci_high=float(hi))
    return out


def sliding_window_fits(
    points: pd.DataFrame,
    group_by: Sequence[str],
    window: int,
    step: int = 1,
    tokens: str = "train_tokens",
    ppl: str = "test_ppl",
    boot: np.ndarray | None = None,
    min_points: int = MIN_WINDOW_POINTS,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Fit ``PPL = A·tokens^α`` in windows of ``window`` consecutive sizes per group.

    Args:
        points: one row per (group, size) with ``tokens`` and ``ppl`` (seed means).
        boot: ``[B, P]`` bootstrap losses (ln PPL) of the points in row order, or ``None``.
        min_points: smallest allowed window (4: two residual degrees of freedom).

    Returns:
        One row per window: group keys, ``window``, ``n_points``, ``shared_points`` (with
        the previous window), ``tokens_min``, ``tokens_max``, ``alpha``, ``A``, ``r2``,
        ``alpha_stderr`` (OLS), ``alpha_ci_low/high`` (bootstrap), ``delta_alpha`` (α minus
        the previous window's; more negative = scaling improves with data),
        ``delta_alpha_stderr`` (covariance-aware, :func:`window_fits`),
        ``delta_alpha_boot_se`` and ``delta_alpha_ci_low/high`` (bootstrap).  Groups with
        fewer sizes than ``window`` give no rows.

    Raises:
        ValueError: ``window < min_points`` or ``step < 1``.
    """
    if window < min_points or step < 1:
        raise ValueError(f"window must be >= {min_points} sizes (df >= 2) and step >= 1, got window={window}, step={step}")
    rows = []
    points = points.reset_index(drop=True)
    for key, idx in points.groupby(list(group_by), sort=True).indices.items():
        keys = dict(zip(group_by, key if isinstance(key, tuple) else (key,)))
        group = points.iloc[idx]
        order = np.argsort(group[tokens].to_numpy(dtype=float), kind="stable")
        t = group[tokens].to_numpy(dtype=float)[order]
        y = np.log(group[ppl].to_numpy(dtype=float))[order]
        if t.size < window:
            continue
        fit = window_fits(np.log(t), y, window, step)
        bfit = window_fits(np.log(t), np.asarray(boot)[:, idx[order]], window, step) if boot is not None else None
        for w in range(fit["start"].size):
            row = keys | _window_row(fit, t, y, w, window, step)
            if bfit is not None:
                row.update(_window_boot_columns(bfit["alpha"], w, confidence))
            rows.append(row)
    return pd.DataFrame(rows, columns=[*group_by, *SLIDING_COLUMNS])
