"""Comparisons between models (docs/method.md §8.5, §8.6).  No torch import.

- :func:`baselines_table`, :func:`ratio_table`: every model per size, and its PPL
  relative to the reference model (cvfp), with paired bootstrap intervals.
- :func:`alpha_differences`: each configuration's scaling exponent against the
  reference's, ``Δα`` per bootstrap replicate (paired).
- :func:`matched_values`, :func:`comparison_table`: one row per configuration, with PPL
  at matched parameters and at matched training FLOPs.

Scaling points are the seed means of :func:`newllm.uncertainty.seed_mean_points`; their
bootstrap matrix ``point_boot [B, P]`` follows the row order of the points table.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from newllm import study
from newllm.analysis.runs import CONFIG_KEYS, POINT_KEYS, sort_models
from newllm.scaling import ols_lines
from newllm.uncertainty import percentile_interval

REFERENCE_MODEL = study.model_names(role="reference")[0]
"""The model every comparison is made against (the catalogue's reference, cvfp)."""

PARAMETER_TOLERANCE = 0.10
"""A single configuration counts as parameter- (or FLOP-) matched within 10 %."""

# ----------------------------------------------------------------------------- points tables
BASELINE_COLUMNS = [
    "model",
    "variant",
    "context_dim",
    "samples",
    "train_tokens",
    "n_seeds",
    "test_ppl",
    "test_ppl_ci_low",
    "test_ppl_ci_high",
    "test_loss",
    "test_loss_seed_sd",
    "test_accuracy",
    "dev_ppl",
    "parameters",
    "train_flops",
    "train_seconds",
    "undertrained_runs",
]


def baselines_table(points: pd.DataFrame) -> pd.DataFrame:
    """Every model per size: test PPL [95 % CI], accuracy, parameters, FLOPs, seconds.

    ``points`` is the bootstrap points table (seed means; ``dev_ppl`` is derived from the
    seed-mean ``dev_loss`` when absent).  Rows sorted by model (study order), variant,
    context_dim and size.
    """
    table = points.copy()
    if "dev_ppl" not in table and "dev_loss" in table:
        table["dev_ppl"] = np.exp(table["dev_loss"])
    return sort_models(table[[c for c in BASELINE_COLUMNS if c in table]], POINT_KEYS)


def _point_index(points: pd.DataFrame) -> dict[tuple, int]:
    return {tuple(r): i for i, r in enumerate(points[POINT_KEYS].itertuples(index=False, name=None))}


RATIO_COLUMNS = [
    "reference_context_dim",
    "train_tokens",
    "ppl",
    "reference_ppl",
    "ratio",
    "ratio_ci_low",
    "ratio_ci_high",
    "percent_difference",
    "percent_difference_ci_low",
    "percent_difference_ci_high",
]
"""Columns of :func:`ratio_table` after the point keys."""


def ratio_table(
    points: pd.DataFrame,
    point_boot: np.ndarray,
    reference_variant: str,
    reference: str = REFERENCE_MODEL,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Each model's test PPL relative to ``reference`` (cvfp) at the same size.

    The reference point is ``(reference, reference_variant, same context_dim, same
    samples)``; a model without a context dimension (``context_dim`` 0, the n-gram) is
    compared with the reference at every context_dim.  ``ratio = PPL_model / PPL_ref =
    exp(L_model − L_ref)`` on the data and on every bootstrap resample (same resampled
    conversations for both, so the interval carries their correlation).

    Returns:
        One row per (point, reference point): the point's keys, ``reference_context_dim``,
        ``train_tokens``, ``ppl``, ``reference_ppl``, ``ratio``, ``ratio_ci_low/high``,
        ``percent_difference`` = 100·(ratio − 1) and its ``_ci_low/high``.
    """
    index = _point_index(points)
    ref_dims = sorted(
        points.loc[(points["model"] == reference) & (points["variant"] == reference_variant), "context_dim"].unique()
    )
    rows = []
    for i, p in points.iterrows():
        if p["model"] == reference and p["variant"] == reference_variant:
            continue
        dims = ref_dims if p["context_dim"] == 0 else [p["context_dim"]]
        for dim in dims:
            j = index.get((reference, reference_variant, dim, p["samples"]))
            if j is None:
                continue
            log_ratio = point_boot[:, i] - point_boot[:, j]
            lo, hi = percentile_interval(log_ratio, confidence)
            ratio = math.exp(p["test_loss"] - points.loc[j, "test_loss"])
            rows.append(
                {
                    **{k: p[k] for k in POINT_KEYS},
                    "reference_context_dim": dim,
                    "train_tokens": p.get("train_tokens"),
                    "ppl": math.exp(p["test_loss"]),
                    "reference_ppl": math.exp(points.loc[j, "test_loss"]),
                    "ratio": ratio,
                    "ratio_ci_low": math.exp(lo),
                    "ratio_ci_high": math.exp(hi),
                    "percent_difference": 100 * (ratio - 1),
                    "percent_difference_ci_low": 100 * (math.exp(lo) - 1),
                    "percent_difference_ci_high": 100 * (math.exp(hi) - 1),
                }
            )
    table = pd.DataFrame(rows, columns=[*POINT_KEYS, *RATIO_COLUMNS])
    return sort_models(table, [*POINT_KEYS, "reference_context_dim"]) if len(table) else table


# ----------------------------------------------------------------------------- paired exponents
def paired_alpha_difference(
    tokens_a: np.ndarray,
    loss_a: np.ndarray,
    boot_a: np.ndarray | None,
    tokens_b: np.ndarray,
    loss_b: np.ndarray,
    boot_b: np.ndarray | None,
    confidence: float = 0.95,
) -> dict[str, Any] | None:
    """``Δα = α_a − α_b`` of two configurations' power laws, fitted on their common sizes.

    Both slopes are least-squares lines of ``ln PPL`` on ``ln T`` over the training sizes
    the two share (so a missing size changes neither's range alone).  The slope is linear
    in the data, so on every bootstrap replicate ``Δα*(b)`` is the slope of
    ``boot_a[b] − boot_b[b]``: the replicates share their seed and conversation draws
    (:mod:`newllm.uncertainty`), so the interval carries the correlation of the two
    configurations, as the PPL ratios do (docs/method.md §8.6, §11).

    Args:
        tokens_a, loss_a: ``[n_a]`` training tokens and test loss (nats) of ``a``'s points.
        boot_a: ``[B, n_a]`` their bootstrap losses, or ``None``.
        tokens_b, loss_b, boot_b: the same for ``b`` (``boot_b`` ``[B, n_b]``).

    Returns:
        ``n_points``, ``tokens_min``, ``tokens_max`` (the common sizes), ``alpha_a``,
        ``alpha_b``, ``delta_alpha``, ``delta_alpha_boot_se``, ``delta_alpha_ci_low/high``
        (percentile; NaN without both bootstraps) and ``clear_difference`` (the interval
        excludes 0; ``None`` without one); ``None`` with fewer than 2 common sizes.
    """
    common, ia, ib = np.intersect1d(np.asarray(tokens_a, float), np.asarray(tokens_b, float), return_indices=True)
    if common.size < 2:
        return None
    x = np.log(common)
    alpha_a = float(ols_lines(x, np.asarray(loss_a, float)[ia])[1])
    alpha_b = float(ols_lines(x, np.asarray(loss_b, float)[ib])[1])
    se = lo = hi = math.nan
    if boot_a is not None and boot_b is not None:
        replicates = ols_lines(x, np.asarray(boot_a, float)[:, ia] - np.asarray(boot_b, float)[:, ib])[1]  # [B]
        lo, hi = (float(v) for v in percentile_interval(replicates, confidence))
        se = float(np.nanstd(replicates, ddof=1))
    return {
        "n_points": int(common.size),
        "tokens_min": float(common[0]),
        "tokens_max": float(common[-1]),
        "alpha_a": alpha_a,
        "alpha_b": alpha_b,
        "delta_alpha": alpha_a - alpha_b,
        "delta_alpha_boot_se": se,
        "delta_alpha_ci_low": lo,
        "delta_alpha_ci_high": hi,
        "clear_difference": bool(lo > 0 or hi < 0) if np.isfinite([lo, hi]).all() else None,
    }


ALPHA_DIFFERENCE_COLUMNS = [
    "reference_model",
    "reference_context_dim",
    "n_points",
    "tokens_min",
    "tokens_max",
    "alpha",
    "reference_alpha",
    "delta_alpha",
    "delta_alpha_boot_se",
    "delta_alpha_ci_low",
    "delta_alpha_ci_high",
    "clear_difference",
]
"""Columns of :func:`alpha_differences` after the configuration keys."""


def _config_curve(points: pd.DataFrame, point_boot: np.ndarray | None, idx: np.ndarray, tokens: str) -> tuple:
    """``(tokens [n], test loss [n], boot [B, n] or None)`` of the points ``idx``."""
    boot = None if point_boot is None else np.asarray(point_boot)[:, idx]
    return points[tokens].to_numpy(float)[idx], points["test_loss"].to_numpy(float)[idx], boot


def alpha_differences(
    points: pd.DataFrame,
    point_boot: np.ndarray | None,
    reference_variant: str,
    reference: str = REFERENCE_MODEL,
    confidence: float = 0.95,
    tokens: str = "train_tokens",
) -> pd.DataFrame:
    """Each configuration's scaling exponent against ``reference``'s, paired by replicate.

    The reference configuration is ``(reference, reference_variant, same context_dim)``; a
    model without a context dimension (``context_dim`` 0) is compared with the reference
    at every context_dim, as in :func:`ratio_table`.  ``delta_alpha = α_model − α_reference``
    (:func:`paired_alpha_difference`, common sizes only): negative = the model's PPL falls
    faster with data than the reference's.

    Returns:
        One row per (configuration, reference configuration) with >= 2 common sizes: the
        configuration keys and :data:`ALPHA_DIFFERENCE_COLUMNS` (``alpha`` the model's,
        ``reference_alpha`` the reference's, both on the common sizes).
    """
    points = points.reset_index(drop=True)
    configs = points.groupby(CONFIG_KEYS, sort=True).indices
    ref_dims = sorted(dim for model, variant, dim in configs if model == reference and variant == reference_variant)
    rows = []
    for (model, variant, dim), idx in configs.items():
        if model == reference and variant == reference_variant:
            continue
        for ref_dim in ref_dims if dim == 0 else [dim]:
            ref_idx = configs.get((reference, reference_variant, ref_dim))
            if ref_idx is None:
                continue
            curve, ref_curve = _config_curve(points, point_boot, idx, tokens), _config_curve(points, point_boot, ref_idx, tokens)
            diff = paired_alpha_difference(*curve, *ref_curve, confidence=confidence)
            if diff is None:
                continue
            alphas = {"alpha": diff.pop("alpha_a"), "reference_alpha": diff.pop("alpha_b")}
            keys = {"model": model, "variant": variant, "context_dim": dim}
            rows.append(keys | {"reference_model": reference, "reference_context_dim": ref_dim} | alphas | diff)
    table = pd.DataFrame(rows, columns=[*CONFIG_KEYS, *ALPHA_DIFFERENCE_COLUMNS])
    return sort_models(table, [*CONFIG_KEYS, "reference_context_dim"]) if len(table) else table


# ----------------------------------------------------------------------------- matched comparisons
def _log_interpolation_weights(x: np.ndarray, v: float) -> np.ndarray:
    """Weights ``[n]`` such that ``weights @ y`` is ``y`` linearly interpolated in ``ln x`` at
    ``v`` (points with equal ``x`` averaged)."""
    lx = np.log(x)
    order = np.argsort(lx, kind="stable")
    ux, inverse = np.unique(lx[order], return_inverse=True)  # average duplicate x
    weights = np.zeros((ux.size, x.size))
    weights[inverse, order] = 1.0
    weights /= weights.sum(axis=1, keepdims=True)
    return np.array([np.interp(math.log(v), ux, np.eye(ux.size)[k]) for k in range(ux.size)]) @ weights  # [n]


def matched_values(
    curves: Mapping[Any, tuple[np.ndarray, np.ndarray, np.ndarray | None]], tolerance: float = PARAMETER_TOLERANCE
) -> tuple[float, dict[Any, dict[str, Any]]]:
    """Loss of several curves at one common abscissa (parameters or training FLOPs).

    Each curve is ``(x [n] > 0, loss [n], boot [B, n] or None)``.  A curve *covers* a value
    ``v`` when ``v`` lies within its range and it has >= 2 distinct x (then its loss is
    linearly interpolated in ``ln x``, on the data and on every resample), or when one of
    its points is within ``tolerance`` of ``v`` in relative terms (then that point is used;
    the nearest if several).  The common value ``x*`` is the curve abscissa covered by the
    most curves, the larger on ties: the largest budget the most models reached, without
    extrapolating any curve.  Curves with no positive finite x are ignored.

    Returns:
        ``(x*, {key: {"loss", "boot" ([B] or None), "how": "interpolated" | "within 10 %"
        | "not covered"}})`` (``x*`` NaN when no curve is usable).
    """
    usable = {}
    for key, (x, loss, boot) in curves.items():
        x = np.asarray(x, dtype=float)
        ok = np.isfinite(x) & (x > 0)
        if ok.any():
            usable[key] = (
                x[ok],
                np.asarray(loss, dtype=float)[ok],
                None if boot is None else np.asarray(boot, dtype=float)[:, ok],
            )
    if not usable:
        return math.nan, {key: {"loss": math.nan, "boot": None, "how": "not covered"} for key in curves}

    def cover(x, v):
        if np.unique(x).size >= 2 and x.min() * (1 - 1e-12) <= v <= x.max() * (1 + 1e-12):
            return "interpolated"
        if (np.abs(np.log(x / v)) <= math.log(1 + tolerance)).any():
            return f"within {tolerance:.0%}".replace("%", " %")
        return None

    candidates = sorted({float(v) for x, _, _ in usable.values() for v in x})
    score = [(sum(cover(x, v) is not None for x, _, _ in usable.values()), v) for v in candidates]
    x_star = max(score)[1]
    out = {}
    for key in curves:
        if key not in usable:
            out[key] = {"loss": math.nan, "boot": None, "how": "not covered"}
            continue
        x, loss, boot = usable[key]
        how = cover(x, x_star)
        if how is None:
            out[key] = {"loss": math.nan, "boot": None, "how": "not covered"}
        elif how == "interpolated":
            basis = _log_interpolation_weights(x, x_star)
            out[key] = {"loss": float(basis @ loss), "boot": None if boot is None else boot @ basis, "how": how}
        else:
            i = int(np.argmin(np.abs(np.log(x / x_star))))
            out[key] = {"loss": float(loss[i]), "boot": None if boot is None else boot[:, i], "how": how}
    return x_star, out


COMPARISON_SETTINGS = ["num_input_tokens", "num_layers", "ffn_layers", "activation", "diversity", "dist_reg_weight"]
"""Run settings a comparison row copies (where the runs have them)."""

COMPARISON_FIT_COLUMNS = [
    "alpha",
    "alpha_stderr",
    "alpha_ci_low",
    "alpha_ci_high",
    "alpha_boot_ci_low",
    "alpha_boot_ci_high",
    "A",
    "r2",
    "E",
    "beta",
    "preferred_form",
]
"""Scaling-fit columns a comparison row copies (NaN without a fit)."""


def _loss_curves(points: pd.DataFrame, point_boot: np.ndarray | None, by: list[str], x: str) -> dict[Any, tuple]:
    """Per group of ``points`` (reset index), ``(x values, test loss, boot [B, n] or None)``
    for :func:`matched_values`; groups without column ``x`` are left out."""
    curves = {}
    for key, idx in points.groupby(by, sort=True).indices.items():
        g = points.iloc[idx]
        if x in g:
            curves[key] = (
                g[x].to_numpy(dtype=float),
                g["test_loss"].to_numpy(dtype=float),
                None if point_boot is None else point_boot[:, points.index[idx]],
            )
    return curves


def _largest_size_columns(g: pd.DataFrame, config_runs: pd.DataFrame) -> dict[str, Any]:
    """A configuration's numbers at its largest size (``g`` = its points sorted by size)."""
    big = g.iloc[-1]
    big_runs = config_runs[config_runs["samples"] == big["samples"]]
    row = dict(
        n_seeds=int(g["n_seeds"].max()),
        samples_largest=int(big["samples"]),
        train_tokens_largest=big.get("train_tokens"),
        test_ppl_largest=big["test_ppl"],
        test_ppl_largest_ci_low=big.get("test_ppl_ci_low"),
        test_ppl_largest_ci_high=big.get("test_ppl_ci_high"),
        test_accuracy_largest=big.get("test_accuracy"),
        dev_ppl_largest=math.exp(big["dev_loss"]) if "dev_loss" in big else math.nan,
        parameters=big.get("parameters"),
        train_flops_largest=big.get("train_flops"),
    )
    for c in ("dev_er_pct", "train_er_pct"):
        row[c] = big_runs[c].mean() if c in big_runs and big_runs[c].notna().any() else math.nan
    row["phase1_iterations"] = config_runs["phase1_iterations"].mean() if "phase1_iterations" in config_runs else math.nan
    return row


def _matched_columns(prefix: str, star: float, value: dict[str, Any] | None, confidence: float) -> dict[str, Any]:
    """``matched_{prefix}``, ``ppl_at_matched_{prefix}`` [CI] and ``{prefix}_match`` of one
    :func:`matched_values` entry (``None``: not covered)."""
    value = value or {"loss": math.nan, "boot": None, "how": "not covered"}
    lo, hi = percentile_interval(value["boot"], confidence) if value["boot"] is not None else (math.nan, math.nan)
    return {
        f"matched_{prefix}": star,
        f"ppl_at_matched_{prefix}": math.exp(value["loss"]),
        f"ppl_at_matched_{prefix}_ci_low": math.exp(lo),
        f"ppl_at_matched_{prefix}_ci_high": math.exp(hi),
        f"{prefix}_match": value["how"],
    }


def comparison_table(
    runs: pd.DataFrame, points: pd.DataFrame, point_boot: np.ndarray | None, fits: pd.DataFrame, confidence: float = 0.95
) -> pd.DataFrame:
    """One row per configuration (model × variant × context_dim): settings, scaling fit and
    the numbers at the largest size, and PPL at matched parameters and FLOPs.

    Matched parameters: per (model, variant), the seed-mean test loss at the study's
    largest size against ``ln parameters`` across its context_dims, read at the common
    parameter count of :func:`matched_values`.  Matched FLOPs: per configuration, test loss
    against ``ln train_flops`` across sizes, read at the common FLOP budget.  Both with
    bootstrap intervals; ``…_match`` says how each value was obtained.  (PPL per million
    parameters is gone: it rewards more parameters at equal PPL.)

    Columns: keys, settings (``num_input_tokens``, ``num_layers``, ``ffn_layers``,
    ``activation``, ``diversity``, ``dist_reg_weight`` where known), ``n_seeds``,
    ``alpha``, ``alpha_stderr``, ``alpha_ci_low/high`` (OLS t), ``alpha_boot_ci_low/high``,
    ``A``, ``r2``, ``E``, ``beta``, ``preferred_form``, ``samples_largest``,
    ``train_tokens_largest``, ``test_ppl_largest`` [CI], ``test_accuracy_largest``,
    ``dev_ppl_largest``, ``parameters``, ``train_flops_largest``, ``dev_er_pct``,
    ``train_er_pct`` (largest size, seed mean), ``phase1_iterations`` (mean),
    ``matched_parameters``, ``ppl_at_matched_parameters`` [CI], ``parameters_match``,
    ``matched_flops``, ``ppl_at_matched_flops`` [CI], ``flops_match``, ``undertrained_runs``.
    """
    points = points.reset_index(drop=True)
    top = points[points["samples"] == points["samples"].max()]
    f_star, at_flops = matched_values(_loss_curves(points, point_boot, CONFIG_KEYS, "train_flops"))
    p_star, at_params = matched_values(_loss_curves(top, point_boot, ["model", "variant"], "parameters"))
    rows = []
    for key, idx in points.groupby(CONFIG_KEYS, sort=True).indices.items():
        model, variant, dim = key
        config_runs = runs[(runs["model"] == model) & (runs["variant"] == variant) & (runs["context_dim"] == dim)]
        fit = fits[(fits["model"] == model) & (fits["variant"] == variant) & (fits["context_dim"] == dim)]
        fit = fit.iloc[0] if len(fit) else pd.Series(dtype=object)
        row = {"model": model, "variant": variant, "context_dim": dim}
        row.update({s: config_runs[s].iloc[0] for s in COMPARISON_SETTINGS if s in config_runs and config_runs[s].notna().any()})
        row.update({c: fit.get(c, math.nan) for c in COMPARISON_FIT_COLUMNS})
        row.update(_largest_size_columns(points.iloc[idx].sort_values("samples"), config_runs))
        row.update(_matched_columns("parameters", p_star, at_params.get((model, variant)), confidence))
        row.update(_matched_columns("flops", f_star, at_flops.get(key), confidence))
        row["undertrained_runs"] = int(config_runs["undertrained"].sum()) if "undertrained" in config_runs else 0
        rows.append(row)
    return sort_models(pd.DataFrame(rows), CONFIG_KEYS)
