"""Scaling fits per configuration and the tables of rule fit_scaling (docs/method.md §8.2).
No torch import.

:func:`fit_scaling_group` fits both forms of :mod:`newllm.scaling.forms` to one
configuration's points and every bootstrap resample, with extrapolations to multiples of
its largest size; :func:`fit_points` builds the fits, extrapolations and curves tables,
:func:`model_fit_table` the per-model summary and :func:`fit_table` the fit of an
external table (``newllm-fit``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from newllm.scaling.forms import (
    MIN_POINTS_LOSS_FORM,
    criteria_columns,
    fit_loss_form,
    fit_loss_form_batch,
    fit_power_law,
    intervals_disagree,
    loss_form_predict,
    ols_lines,
    power_law_prediction_interval,
    predict_ppl,
)
from newllm.uncertainty import percentile_interval

EXTRAPOLATE_MULTIPLES = (2.0, 10.0)
"""Extrapolation targets as multiples of a configuration's largest training size; never
beyond 10×: one decade past the data is as far as five to ten sizes support."""

# ----------------------------------------------------------------------------- one group
NO_LOSS_FORM = {
    "E": math.nan,
    "B": math.nan,
    "beta": math.nan,
    "rss": math.nan,
    "E_stderr": math.nan,
    "beta_stderr": math.nan,
    "beta_at_bound": False,
    "E_at_bound": False,
}
"""The loss-form fit of a group with fewer than :data:`MIN_POINTS_LOSS_FORM` sizes."""


def _loss_form_columns(
    t: np.ndarray, y: np.ndarray, boot: np.ndarray | None, confidence: float
) -> tuple[dict, dict | None, dict[str, Any]]:
    """The loss form on sorted tokens ``t`` and losses ``y`` (and every resample of ``boot``).

    Returns:
        ``(fit, boot fits or None, columns)``: ``E``, ``B``, ``beta`` (+ SEs, bounds),
        ``rss_loss_form``, ``E``/``beta`` bootstrap intervals.
    """
    lf, lf_boot = dict(NO_LOSS_FORM), None
    if t.size >= MIN_POINTS_LOSS_FORM:
        lf = fit_loss_form(t, y)
        if boot is not None:
            lf_boot = fit_loss_form_batch(t, boot)
    columns = {k: lf[k] for k in ("E", "B", "beta", "E_stderr", "beta_stderr", "beta_at_bound", "E_at_bound")}
    columns["rss_loss_form"] = lf["rss"]
    for name in ("E", "beta"):
        lo, hi = percentile_interval(lf_boot[name], confidence) if lf_boot is not None else (math.nan, math.nan)
        columns[f"{name}_ci_low"], columns[f"{name}_ci_high"] = float(lo), float(hi)
    return lf, lf_boot, columns


def multiple_tag(multiple: float) -> str:
    """The column tag of an extrapolation multiple: 2 -> ``"2x"``, 1.5 -> ``"1.5x"``."""
    return f"{multiple:g}x"


def _extrapolation_columns(
    row: dict,
    t: np.ndarray,
    y: np.ndarray,
    multiple: float,
    boot_lines: tuple | None,
    lf: dict,
    lf_boot: dict | None,
    confidence: float,
) -> dict[str, Any]:
    """Both forms at ``multiple`` × the largest size ``t[-1]``: ``tokens_at_{m}x``,
    ``ppl_at_{m}x`` (+ bootstrap CI, OLS prediction interval), ``ppl_at_{m}x_loss_form``
    (+ bootstrap CI) and ``forms_disagree_at_{m}x`` (the two bootstrap intervals are
    disjoint; ``None`` without both); ``boot_lines`` = ``(a [B], alpha [B])`` or ``None``."""
    tag, target = multiple_tag(multiple), float(multiple * t.max())
    nan2 = (math.nan, math.nan)
    power_ci = percentile_interval(np.exp(boot_lines[0] + boot_lines[1] * math.log(target)), confidence) if boot_lines else nan2
    loss_ci = percentile_interval(np.exp(loss_form_predict(lf_boot, np.array([target]))[:, 0]), confidence) if lf_boot else nan2
    fitted = t.size >= MIN_POINTS_LOSS_FORM
    out = {f"tokens_at_{tag}": target, f"ppl_at_{tag}": predict_ppl(row, target)}
    out[f"ppl_at_{tag}_ci_low"], out[f"ppl_at_{tag}_ci_high"] = float(power_ci[0]), float(power_ci[1])
    out[f"ppl_at_{tag}_pi_low"], out[f"ppl_at_{tag}_pi_high"] = power_law_prediction_interval(t, np.exp(y), target, confidence)
    out[f"ppl_at_{tag}_loss_form"] = float(math.exp(loss_form_predict(lf, target))) if fitted else math.nan
    out[f"ppl_at_{tag}_loss_form_ci_low"], out[f"ppl_at_{tag}_loss_form_ci_high"] = float(loss_ci[0]), float(loss_ci[1])
    out[f"forms_disagree_at_{tag}"] = intervals_disagree(*power_ci, *loss_ci)
    return out


def _power_law_boot_columns(t: np.ndarray, boot: np.ndarray | None, confidence: float) -> tuple[tuple | None, dict]:
    """The OLS lines of every resample, ``(a [B], alpha [B])`` or ``None``, and the
    ``alpha_boot_se``, ``alpha_boot_ci_low/high`` columns (NaN without a bootstrap)."""
    if boot is None:
        return None, {"alpha_boot_se": math.nan, "alpha_boot_ci_low": math.nan, "alpha_boot_ci_high": math.nan}
    lines = ols_lines(np.log(t), boot)
    lo, hi = percentile_interval(lines[1], confidence)
    return lines, {
        "alpha_boot_se": float(np.nanstd(lines[1], ddof=1)),
        "alpha_boot_ci_low": float(lo),
        "alpha_boot_ci_high": float(hi),
    }


def fit_scaling_group(
    tokens: Sequence[float],
    losses: Sequence[float],
    boot: np.ndarray | None = None,
    confidence: float = 0.95,
    multiples: Sequence[float] = EXTRAPOLATE_MULTIPLES,
) -> dict:
    """Both forms on one configuration's points, with bootstrap intervals.

    Args:
        tokens: ``[n]`` training tokens per point.
        losses: ``[n]`` test loss per point (nats; seeds already averaged).
        boot: ``[B, n]`` the points' losses on each bootstrap resample, or ``None``
            (then no bootstrap columns: NaN).
        multiples: extrapolation targets as multiples of the largest of ``tokens``.

    Returns:
        A flat dict: the :func:`fit_power_law` columns; ``alpha_boot_se``,
        ``alpha_boot_ci_low/high``; loss form ``E``, ``B``, ``beta`` (+ ``_stderr``,
        ``_ci_low/high``), ``beta_at_bound``, ``E_at_bound``, ``rss_loss_form``; the
        :func:`criteria_columns` (``preferred_form`` by AICc); per multiple ``m`` the
        :func:`_extrapolation_columns` (``tokens_at_{m}x``, ``ppl_at_{m}x`` …,
        ``forms_disagree_at_{m}x``).  ``_boot``: the resamples' fits (popped by callers).
    """
    t = np.asarray(tokens, dtype=float)
    y = np.asarray(losses, dtype=float)
    order = np.argsort(t)
    t, y = t[order], y[order]
    boot = None if boot is None else np.asarray(boot, dtype=float)[:, order]
    row = fit_power_law(t, np.exp(y), confidence)
    boot_lines, boot_columns = _power_law_boot_columns(t, boot, confidence)
    row.update(boot_columns)
    lf, lf_boot, lf_columns = _loss_form_columns(t, y, boot, confidence)
    row.update(lf_columns)
    row.update(criteria_columns(t.size, row["rss"], lf["rss"]))
    for multiple in multiples:
        row.update(_extrapolation_columns(row, t, y, multiple, boot_lines, lf, lf_boot, confidence))
    row["_boot"] = {"a": boot_lines[0], "alpha": boot_lines[1], "loss_form": lf_boot} if boot is not None else None
    return row


# ----------------------------------------------------------------------------- tables
FIT_KEYS = ["model", "variant", "context_dim"]
EXTRAPOLATION_COLUMNS = [
    "multiple",
    "tokens",
    "tokens_max",
    "power_law_ppl",
    "power_law_ci_low",
    "power_law_ci_high",
    "power_law_pi_low",
    "power_law_pi_high",
    "loss_form_ppl",
    "loss_form_ci_low",
    "loss_form_ci_high",
    "forms_disagree",
    "preferred_form",
]
"""Columns of the extrapolations table after the group keys (:func:`_extrapolation_rows`)."""


def _extrapolation_rows(keys: dict, row: dict, multiples: Sequence[float]) -> list[dict]:
    """One row per multiple of a group's fit, both forms side by side: ``tokens`` (the
    target), ``tokens_max`` (the largest fitted size), each form's ``ppl`` and bootstrap
    ``ci_low/high``, the power law's prediction interval ``pi_low/high``,
    ``forms_disagree`` (disjoint bootstrap intervals) and the ``preferred_form`` (AICc)."""
    rows = []
    for multiple in multiples:
        at = f"ppl_at_{multiple_tag(multiple)}"
        rows.append(
            keys
            | {
                "multiple": float(multiple),
                "tokens": row[f"tokens_at_{multiple_tag(multiple)}"],
                "tokens_max": row["tokens_max"],
                "power_law_ppl": row[at],
                "power_law_ci_low": row[f"{at}_ci_low"],
                "power_law_ci_high": row[f"{at}_ci_high"],
                "power_law_pi_low": row[f"{at}_pi_low"],
                "power_law_pi_high": row[f"{at}_pi_high"],
                "loss_form_ppl": row[f"{at}_loss_form"],
                "loss_form_ci_low": row[f"{at}_loss_form_ci_low"],
                "loss_form_ci_high": row[f"{at}_loss_form_ci_high"],
                "forms_disagree": row[f"forms_disagree_at_{multiple_tag(multiple)}"],
                "preferred_form": row["preferred_form"],
            }
        )
    return rows


def _curve_rows(
    keys: dict, form: str, grid: np.ndarray, centre: np.ndarray, lo: np.ndarray, hi: np.ndarray, t_max: float
) -> list[dict]:
    """One row per grid token count: fitted PPL (``exp`` of the ln-PPL ``centre``) and band."""
    return [
        keys
        | {
            "form": form,
            "tokens": g,
            "ppl": math.exp(c),
            "ci_low": math.exp(lo_),
            "ci_high": math.exp(hi_),
            "extrapolation": bool(g > t_max),
        }
        for g, c, lo_, hi_ in zip(grid, centre, lo, hi)
    ]


def _fitted_curves(
    keys: dict, row: dict, b: dict | None, multiples: Sequence[float], curve_points: int, confidence: float
) -> list[dict]:
    """Both forms' fitted PPL with bootstrap bands on a log grid from the smallest size to
    the largest multiple of the largest size (the loss form only where it was fitted)."""
    t_max = row["tokens_max"]
    grid = np.geomspace(row["tokens_min"], t_max * max([1.0, *multiples]), curve_points)
    grid = np.unique(np.r_[grid, t_max])
    lx = np.log(grid)
    centre = math.log(row["A"]) + row["alpha"] * lx
    if b is not None:
        lo, hi = percentile_interval(b["a"][:, None] + b["alpha"][:, None] * lx[None, :], confidence)
    else:
        lo = hi = np.full(grid.size, np.nan)
    curves = _curve_rows(keys, "power_law", grid, centre, lo, hi, t_max)
    if np.isfinite(row["E"]):
        lf_centre = loss_form_predict({k: row[k] for k in ("E", "B", "beta")}, grid)
        if b is not None and b["loss_form"] is not None:
            lo, hi = percentile_interval(loss_form_predict(b["loss_form"], grid), confidence)
        else:
            lo = hi = np.full(grid.size, np.nan)
        curves += _curve_rows(keys, "loss_form", grid, lf_centre, lo, hi, t_max)
    return curves


def fit_points(
    points: pd.DataFrame,
    point_boot: np.ndarray | None,
    group_by: Sequence[str] = FIT_KEYS,
    tokens: str = "train_tokens",
    loss: str = "test_loss",
    confidence: float = 0.95,
    multiples: Sequence[float] = EXTRAPOLATE_MULTIPLES,
    curve_points: int = 60,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Fit both forms per group of scaling points, with bootstrap intervals.

    Args:
        points: one row per (group, size) with ``tokens`` and ``loss`` (seed-mean test
            loss, nats); optional ``undertrained_runs`` and ``runs`` counts.
        point_boot: ``[B, P]`` bootstrap losses of the points (row order of ``points``).
        multiples: extrapolation targets as multiples of each group's largest size.
        curve_points: grid size of the fitted curve per group (smallest size to the
            largest multiple of the largest size).

    Returns:
        ``(fits, extrapolations, curves)``: ``fits`` one row per group (group keys,
        :func:`fit_scaling_group` columns, ``undertrained_points`` = sizes with at least
        one undertrained run, ``undertrained_runs``); ``extrapolations`` one row per
        (group, multiple) with both forms side by side (:data:`EXTRAPOLATION_COLUMNS`);
        ``curves`` one row per (group, form, grid token count) with the fitted PPL, its
        bootstrap band and ``extrapolation`` (beyond the largest size).  Groups with fewer
        than 2 sizes are skipped.
    """
    fits, extrap, curves = [], [], []
    points = points.reset_index(drop=True)
    for key, idx in points.groupby(list(group_by), sort=True).indices.items():
        keys = dict(zip(group_by, key if isinstance(key, tuple) else (key,)))
        group = points.iloc[idx]
        if group[tokens].nunique() < 2:
            continue
        boot = None if point_boot is None else np.asarray(point_boot)[:, idx]
        row = fit_scaling_group(group[tokens].to_numpy(), group[loss].to_numpy(), boot, confidence, multiples)
        b = row.pop("_boot")
        if "undertrained_runs" in group:
            row["undertrained_points"] = int((group["undertrained_runs"] > 0).sum())
            row["undertrained_runs"] = int(group["undertrained_runs"].sum())
        fits.append(keys | row)
        extrap += _extrapolation_rows(keys, row, multiples)
        curves += _fitted_curves(keys, row, b, multiples, curve_points, confidence)
    return pd.DataFrame(fits), pd.DataFrame(extrap, columns=[*group_by, *EXTRAPOLATION_COLUMNS]), pd.DataFrame(curves)


MODEL_FIT_COLUMNS = [
    "alpha",
    "alpha_boot_ci_low",
    "alpha_boot_ci_high",
    "alpha_stderr",
    "r2",
    "E",
    "E_ci_low",
    "E_ci_high",
    "beta",
    "beta_ci_low",
    "beta_ci_high",
    "delta_aicc",
    "delta_aic",
    "preferred_form",
    "preferred_form_aic",
    "preferred_form_bic",
    "n_points",
    "undertrained_points",
]


def model_fit_table(fits: pd.DataFrame) -> pd.DataFrame:
    """The per-model summary of a :func:`fit_points` table: group keys, α [bootstrap CI],
    its OLS SE, R², E [CI], β [CI], ΔAICc and ΔAIC, the preferred form (by AICc, AIC, BIC)
    and undertrained points."""
    keys = [c for c in FIT_KEYS if c in fits.columns]
    return fits[keys + [c for c in MODEL_FIT_COLUMNS if c in fits.columns]].copy()


def fit_table(
    runs: pd.DataFrame,
    group_by: list[str],
    tokens: str = "train_tokens",
    ppl: str = "val_ppl",
    multiples: Sequence[float] = EXTRAPOLATE_MULTIPLES,
) -> pd.DataFrame:
    """One fit row per group of a runs table (no bootstrap), with extrapolated PPL.

    Used by ``newllm-fit`` on external tables: rows of a group are the points (no seed
    averaging).  Columns: the group keys and the :func:`fit_scaling_group` columns (the
    bootstrap ones NaN); ``ppl_at_2x`` / ``ppl_at_10x`` = ``A·T^α`` at 2× / 10× the
    group's largest size (``tokens_at_2x`` / ``tokens_at_10x``).

    Raises:
        ValueError: a group with a non-positive PPL or fewer than 2 distinct sizes.
    """
    rows = []
    for keys, group in runs.groupby(group_by, sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        values = group[ppl].to_numpy(dtype=float)
        if (values <= 0).any():
            raise ValueError(f"group {keys}: perplexity must be > 0")
        row = fit_scaling_group(group[tokens].to_numpy(dtype=float), np.log(values), multiples=multiples)
        row.pop("_boot")
        rows.append(dict(zip(group_by, keys)) | row)
    return pd.DataFrame(rows)
