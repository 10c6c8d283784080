"""Study-level analyses over the tidy tables (SPEC §8, issue 9).  No torch import.

- :func:`run_rows`: one tidy row per run from its metrics files (collect_runs).
- :func:`window_fits`, :func:`sliding_window_fits`: α in windows of consecutive sizes, the
  change between windows with a standard error that accounts for shared points.
- :func:`baselines_table`, :func:`ratio_table`: every model per size, and its PPL
  relative to ``cvfp``, with bootstrap intervals.
- :func:`matched_values`, :func:`comparison_table`: one row per configuration, with PPL
  at matched parameters and at matched training FLOPs.
- :func:`prediction_analysis`: do Phase 1 metrics predict test PPL?
- :func:`verdict`, :func:`verdict_markdown`: the report's opening lines, from the numbers.

Scaling points are the seed means of :func:`newllm.uncertainty.seed_mean_points`; their
bootstrap matrix ``point_boot [B, P]`` follows the row order of the points table.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from newllm import study
from newllm.scaling import fit_power_law
from newllm.study import RUN_KEYS, model_rank
from newllm.uncertainty import percentile_interval

REFERENCE_MODEL = study.model_names(role="reference")[0]
"""The model every comparison is made against (the catalogue's reference, cvfp)."""
CONFIG_KEYS = ["model", "variant", "context_dim"]
POINT_KEYS = ["model", "variant", "context_dim", "samples"]
SUMMARY_COLUMNS = (
    "train_tokens",
    "dev_loss",
    "dev_ppl",
    "dev_accuracy",
    "test_loss",
    "test_ppl",
    "test_accuracy",
    "test_tokens",
    "parameters",
    "train_flops",
    "train_seconds",
    "steps",
    "best_step",
    "stopped_by",
    "undertrained",
)
"""Summary keys every run's final ``metrics.json`` carries (team contract)."""
PREDICTORS = ("dev_er_pct", "train_er_pct", "train_dev_er_gap_pct", "phase1_iterations")
"""Phase 1 metrics related to test PPL in :func:`prediction_analysis`."""
MIN_WINDOW_POINTS = 4
"""A window fit needs >= 4 sizes: 2 residual degrees of freedom for its standard error."""
PARAMETER_TOLERANCE = 0.10
"""A single configuration counts as parameter- (or FLOP-) matched within 10 %."""

def sort_models(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """``frame`` sorted by model (study order), then by the other ``keys``."""
    rank = frame["model"].map(model_rank)
    return (
        frame.assign(_rank=rank)
        .sort_values(["_rank", *[k for k in keys if k != "model"]])
        .drop(columns="_rank")
        .reset_index(drop=True)
    )


# ----------------------------------------------------------------------------- runs table
def run_key(path: str | Path) -> dict[str, Any]:
    """The run identity ``{model, variant, samples, context_dim, seed}`` of a file inside a
    run directory (:meth:`newllm.study.RunId.parse`).

    Raises:
        ValueError: the path is not inside a run directory.
    """
    return study.RunId.parse(path).as_dict()


def _first(mapping: Mapping[str, Any] | None, *names: str, default: Any = None) -> Any:
    """The first of ``names`` present in ``mapping`` (files written before and after the
    validation → dev rename both read)."""
    for name in names:
        if mapping and name in mapping:
            return mapping[name]
    return default


def run_rows(
    metrics: Mapping[str, dict],
    phase1: Mapping[str, dict] | None = None,
    caches: Mapping[str, dict] | None = None,
    diagnostics: Mapping[str, dict] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tidy runs table and the Phase 1 diagnostics table.

    Args:
        metrics: final-stage ``metrics.json`` per path, one per run (every model).
        phase1, caches, diagnostics: ``phase1/metrics.json``, ``context_cache/cache.json``
            and ``diagnostics/phase1_diagnostics.json`` per path, for the runs that have
            them (the CVFP family); matched to runs by the run directory in the path.

    Returns:
        ``(runs, diagnostics)``.  ``runs``: one row per run sorted by model and keys, the
        identity (:data:`RUN_KEYS`), the contract's :data:`SUMMARY_COLUMNS`, and where
        available the CVFP settings, Phase 1 summary, Effective Rank of train and dev
        contexts (``train_er``, ``dev_er``, ``…_pct``, ``train_dev_er_gap_pct`` = train −
        dev, in points of % of context_dim), Phase 2 block parameters and the diagnostics
        verdicts.  ``diagnostics``: one row per run with a diagnostics file.

    Raises:
        ValueError: a metrics file lacks a contract summary key, names a different run than
            its path, or two files name the same run.
    """
    extras: dict[tuple, dict[str, Any]] = {}
    for source, files in (("phase1", phase1), ("cache", caches), ("diagnostics", diagnostics)):
        for path, data in (files or {}).items():
            extras.setdefault(tuple(run_key(path).values()), {})[source] = data
    rows, diag_rows, seen = [], [], set()
    for path, data in metrics.items():
        key = run_key(path)
        identity = tuple(key.values())
        if identity in seen:
            raise ValueError(f"two metrics files for run {key}")
        seen.add(identity)
        recorded = data.get("run", {})
        for k, v in key.items():
            if k in recorded and str(recorded[k]) != str(v):
                raise ValueError(f"{path}: metrics.json names {k}={recorded[k]!r} but lies in the directory of {k}={v!r}")
        summary = data.get("summary", {})
        missing = [c for c in SUMMARY_COLUMNS if c not in summary]
        if missing:
            raise ValueError(
                f"{path}: summary lacks {missing} (team contract: every run's metrics.json carries {list(SUMMARY_COLUMNS)})"
            )
        row = key | {c: summary[c] for c in SUMMARY_COLUMNS}
        row["undertrained"] = bool(row["undertrained"])
        for c in ("context_block_parameters", "token_block_parameters"):
            if c in summary:
                row[c] = summary[c]
        row.update(_cvfp_columns(extras.get(identity, {})))
        rows.append(row)
        diag = extras.get(identity, {}).get("diagnostics")
        if diag is not None:
            diag_rows.append(key | _diagnostic_columns(diag))
    runs = sort_models(pd.DataFrame(rows), RUN_KEYS) if rows else pd.DataFrame(columns=RUN_KEYS + list(SUMMARY_COLUMNS))
    diag_table = sort_models(pd.DataFrame(diag_rows), RUN_KEYS) if diag_rows else pd.DataFrame(columns=RUN_KEYS)
    return runs, diag_table


def _cvfp_columns(extra: dict[str, dict]) -> dict[str, Any]:
    """Phase 1, cache and diagnostics columns of one CVFP-family run (empty when absent)."""
    out: dict[str, Any] = {}
    p1, cache, diag = extra.get("phase1"), extra.get("cache"), extra.get("diagnostics")
    if p1 is not None:
        cfg, s1 = p1.get("config", {}), p1.get("summary", {})
        model_cfg, p1_cfg = cfg.get("model", {}), cfg.get("phase1", {})
        out.update({k: model_cfg.get(k) for k in ("num_input_tokens", "num_layers", "ffn_layers", "activation")})
        out.update(dist_reg_weight=p1_cfg.get("dist_reg_weight"), diversity=p1_cfg.get("diversity"))
        out.update(
            phase1_iterations=s1.get("iterations"),
            phase1_stopped_by=s1.get("stopped_by"),
            phase1_final_cvfp_loss=s1.get("final_cvfp_loss"),
            phase1_final_diversity_loss=s1.get("final_diversity_loss"),
            train_convergence_rate=s1.get("train_convergence_rate"),
            train_convergence=s1.get("train_convergence"),
            dev_convergence_rate=_first(s1, "dev_convergence_rate", "val_convergence_rate"),
            dev_convergence=_first(s1, "dev_convergence", "val_convergence"),
            phase1_seconds=s1.get("seconds"),
            phase1_tokens_per_s=s1.get("tokens_per_s"),
        )
    if cache is not None:
        train, dev = cache.get("train", {}), _first(cache, "dev", "validation", default={})
        out.update(
            cache_method=cache.get("method"),
            cache_converged=bool(train.get("converged", True) and dev.get("converged", True)),
            train_er=train.get("effective_rank"),
            train_er_pct=train.get("effective_rank_pct"),
            dev_er=dev.get("effective_rank"),
            dev_er_pct=dev.get("effective_rank_pct"),
        )
        if out["train_er_pct"] is not None and out["dev_er_pct"] is not None:
            out["train_dev_er_gap_pct"] = out["train_er_pct"] - out["dev_er_pct"]
    if diag is not None:
        out.update(
            identity_check="PASS" if diag["identity_check"]["passed"] else "FAIL",
            cvfp_verdict=diag["cvfp_convergence_check"]["verdict"],
            quality_band=diag["quality"]["band"],
        )
    return out


def _diagnostic_columns(diag: dict) -> dict[str, Any]:
    checks = {c["name"]: c["value"] for c in diag["identity_check"]["criteria"]}
    checks.update({f"{c['name']}_passed": c["passed"] for c in diag["identity_check"]["criteria"]})
    return {
        "train_er_pct": diag.get("train_effective_rank_pct"),
        "dev_er_pct": _first(diag, "dev_effective_rank_pct", "val_effective_rank_pct"),
        "train_convergence": diag.get("train_convergence"),
        "dev_convergence": _first(diag, "dev_convergence", "val_convergence"),
        "final_cvfp_loss": diag.get("final_cvfp_loss"),
        "iterations": diag.get("iterations"),
        "identity_check": "PASS" if diag["identity_check"]["passed"] else "FAIL",
        **checks,
        "cvfp_verdict": diag["cvfp_convergence_check"]["verdict"],
        "cvfp_slope": diag["cvfp_convergence_check"]["slope"],
        "cvfp_std": diag["cvfp_convergence_check"]["std"],
        "quality_band": diag["quality"]["band"],
        "overfitting_suspected": diag["quality"]["overfitting_suspected"],
    }


def tag_history(frame: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """A run's history table with its identity columns (:data:`RUN_KEYS`) in front."""
    frame = frame.copy()
    for k, v in reversed(list(run_key(path).items())):
        frame.insert(0, k, v)
    return frame


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
    """Relate Phase 1 metrics to test perplexity (SPEC §8, issue 9).

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


# ----------------------------------------------------------------------------- verdict
def _dev_choice(points: pd.DataFrame, mask: pd.Series, prefer_dim: int | None = None) -> int | None:
    """Row of the configuration chosen among ``points[mask]``: the one with ``prefer_dim``
    if present, else the lowest seed-mean dev loss (selection on dev, never on test)."""
    cand = points[mask]
    if not len(cand):
        return None
    if prefer_dim is not None and (cand["context_dim"] == prefer_dim).any():
        cand = cand[cand["context_dim"] == prefer_dim]
    if "dev_loss" in cand and cand["dev_loss"].notna().any():
        return int(cand["dev_loss"].idxmin())
    return int(cand.index[0])


def _verdict_comparisons(
    points: pd.DataFrame, point_boot: np.ndarray, at: pd.Series, ref_i: int, others: list[str], confidence: float
) -> list[dict[str, Any]]:
    """Each other model at the largest size (``at``), at the reference's context_dim when it
    has it, else its lowest-dev configuration: PPL and ``percent = 100·(PPL_ref/PPL_model − 1)``
    with a bootstrap interval."""
    ref = points.loc[ref_i]
    comparisons = []
    for model in others:
        i = _dev_choice(points, at & (points["model"] == model), prefer_dim=int(ref["context_dim"]))
        if i is None:
            continue
        p = points.loc[i]
        d = point_boot[:, ref_i] - point_boot[:, i]  # ln(PPL_ref / PPL_model) per resample
        lo, hi = percentile_interval(d, confidence)
        pct = 100 * (math.exp(ref["test_loss"] - p["test_loss"]) - 1)
        comparisons.append(
            {
                "model": model,
                "variant": p["variant"],
                "context_dim": int(p["context_dim"]),
                "ppl": _num(p["test_ppl"]),
                "ppl_ci": [_num(p.get("test_ppl_ci_low")), _num(p.get("test_ppl_ci_high"))],
                "percent": pct,
                "percent_ci": [100 * (math.exp(lo) - 1), 100 * (math.exp(hi) - 1)],
                "dev_loss": _num(p.get("dev_loss")),
                "index": int(i),
            }
        )
    return comparisons


def _best_baseline(comparisons: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The baseline (a catalogue model of role ``baseline``) with the lowest dev loss and whether the reference
    beats it (whole interval below 0), loses (above) or is inconclusive; ``None`` without one."""
    baselines = [c for c in comparisons if c["model"] in study.model_names(role="baseline")]
    if not baselines:
        return None
    best = min(baselines, key=lambda c: c["dev_loss"] if c["dev_loss"] is not None else math.inf)
    lo, hi = best["percent_ci"]
    outcome = "beats" if hi < 0 else "loses" if lo > 0 else "inconclusive"
    return {
        "model": best["model"],
        "context_dim": best["context_dim"],
        "chosen_on": "dev loss",
        "outcome": outcome,
        "percent": best["percent"],
        "percent_ci": best["percent_ci"],
    }


def _alpha_entry(fits: pd.DataFrame, model: str, variant: str | None, dim: int | None) -> dict[str, Any] | None:
    """α [CI] of one configuration's scaling fit (bootstrap percentile interval, else OLS t);
    ``None`` when it has no fit."""
    f = (
        fits[(fits["model"] == model) & (fits["variant"] == variant) & (fits["context_dim"] == dim)]
        if dim is not None
        else fits.iloc[:0]
    )
    if not len(f):
        return None
    f = f.iloc[0]
    boot_ci = [_num(f.get("alpha_boot_ci_low")), _num(f.get("alpha_boot_ci_high"))]
    ci, kind = (
        (boot_ci, "bootstrap") if None not in boot_ci else ([_num(f.get("alpha_ci_low")), _num(f.get("alpha_ci_high"))], "ols_t")
    )
    return {
        "model": model,
        "variant": variant,
        "context_dim": dim,
        "alpha": _num(f["alpha"]),
        "alpha_ci": ci,
        "interval": kind,
        "preferred_form": f.get("preferred_form"),
        "n_points": int(f["n_points"]),
    }


def _verdict_alphas(
    fits: pd.DataFrame, reference: str, reference_variant: str, reference_dim: int, others: list[str], comparisons: list[dict]
) -> list[dict[str, Any]]:
    """α [CI] of the reference configuration and of each compared model's configuration."""
    alphas = []
    for model in [reference, *others]:
        compared = next((c for c in comparisons if c["model"] == model), None)
        if model == reference:
            dim, variant = reference_dim, reference_variant
        else:
            dim, variant = (compared["context_dim"], compared["variant"]) if compared else (None, None)
        entry = _alpha_entry(fits, model, variant, dim)
        if entry is not None:
            alphas.append(entry)
    return alphas


def _undertrained_by_model(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Per model (study order): runs that ended on their budget, and all runs."""
    under = []
    for model in sorted(runs["model"].unique(), key=model_rank):
        r = runs[runs["model"] == model]
        under.append({"model": model, "undertrained": int(r["undertrained"].astype(bool).sum()), "runs": int(len(r))})
    return under


def verdict(
    points: pd.DataFrame,
    point_boot: np.ndarray,
    fits: pd.DataFrame,
    runs: pd.DataFrame,
    reference_variant: str,
    reference: str = REFERENCE_MODEL,
    confidence: float = 0.95,
    test_set: Mapping[str, Any] | None = None,
    resamples: int | None = None,
    head_reference: Mapping[str, Any] | None = None,
    head_boot: np.ndarray | None = None,
) -> dict[str, Any]:
    """The numbers behind the report's opening lines.

    At the study's largest size: the reference configuration is ``reference`` with
    ``reference_variant`` at the context_dim with the lowest dev loss; every other model is
    taken at the same context_dim when it has it (parameter-matched baselines), else at its
    lowest-dev configuration.  For each: ``percent = 100·(PPL_ref/PPL_model − 1)`` with a
    bootstrap interval (negative = the reference is better).  The best baseline
    (role ``baseline`` in the catalogue) is the one with the lowest dev loss; the reference *beats* it when
    the whole interval is below 0, *loses* when above, else *inconclusive*.  Also α [CI] per
    model (bootstrap percentile interval; the OLS t interval when there is no bootstrap)
    and the undertrained runs per model.

    ``head_reference`` (the stand-in embeddings' metadata, ``token_embeddings.json``): when
    the embeddings come from a language model of their own (``source: bigram``) with a
    ``test_ppl`` on the same test tokens, every model at the largest size is compared with
    it: ``percent = 100·(PPL_model/PPL_head − 1)``, with a paired bootstrap interval when
    ``head_boot`` (``[B]`` head test loss on the same resamples as ``point_boot``) is
    given, else the model's own PPL interval against the head's point value; *below* /
    *above* when the whole interval is, else *within*.  That LM saw only the embedding
    slice, none of the study's training sets: a model not below it has learned nothing
    measurable beyond what the frozen head already carries.

    Returns:
        A JSON-ready dict (``None`` for undefined numbers).
    """
    points = points.reset_index(drop=True)
    largest = int(points.loc[points["model"] == reference, "samples"].max()) if (points["model"] == reference).any() else None
    out: dict[str, Any] = {
        "reference_model": reference,
        "reference_variant": reference_variant,
        "confidence": confidence,
        "test_set": dict(test_set or {}),
        "resamples": resamples,
        "seeds": int(points["n_seeds"].max()) if "n_seeds" in points and len(points) else None,
    }
    if largest is None:
        out.update(available=False, reason=f"no {reference} runs in this study")
        return out
    at = points["samples"] == largest
    ref_i = _dev_choice(points, at & (points["model"] == reference) & (points["variant"] == reference_variant))
    ref = points.loc[ref_i]
    out.update(
        available=True,
        samples=largest,
        train_tokens=_num(ref.get("train_tokens")),
        reference_context_dim=int(ref["context_dim"]),
        reference_ppl=_num(ref["test_ppl"]),
        reference_ppl_ci=[_num(ref.get("test_ppl_ci_low")), _num(ref.get("test_ppl_ci_high"))],
    )
    others = [m for m in sorted(points["model"].unique(), key=model_rank) if m != reference]
    out["comparisons"] = _verdict_comparisons(points, point_boot, at, ref_i, others, confidence)
    out["best_baseline"] = _best_baseline(out["comparisons"])
    out["alphas"] = _verdict_alphas(fits, reference, reference_variant, int(ref["context_dim"]), others, out["comparisons"])
    out["undertrained"] = _undertrained_by_model(runs)
    out["head_reference"] = _head_reference(head_reference, head_boot, points, point_boot, ref_i, out, confidence)
    return out


def _head_reference(
    meta: Mapping[str, Any] | None,
    head_boot: np.ndarray | None,
    points: pd.DataFrame,
    point_boot: np.ndarray,
    ref_i: int,
    out: Mapping[str, Any],
    confidence: float,
) -> dict[str, Any] | None:
    """Each model at the largest size against the frozen head's own LM (see :func:`verdict`);
    ``None`` when the embeddings have no LM of their own."""
    if not meta or _num(meta.get("test_ppl")) is None:
        return None
    ppl = float(meta["test_ppl"])
    paired = head_boot is not None and np.size(head_boot) == point_boot.shape[0]
    rows = [(out["reference_model"], ref_i)] + [(c["model"], c["index"]) for c in out["comparisons"]]
    models = {}
    for model, i in rows:
        value = float(points.loc[i, "test_ppl"])
        if paired:
            lo, hi = percentile_interval(point_boot[:, i] - np.asarray(head_boot), confidence)
            ci = [100 * (math.exp(lo) - 1), 100 * (math.exp(hi) - 1)]
        else:
            low, high = _num(points.loc[i].get("test_ppl_ci_low")), _num(points.loc[i].get("test_ppl_ci_high"))
            ci = [None, None] if low is None or high is None else [100 * (low / ppl - 1), 100 * (high / ppl - 1)]
        pct = 100 * (value / ppl - 1)
        lo_pct, hi_pct = (pct, pct) if None in ci else ci
        where = "below" if hi_pct < 0 else "above" if lo_pct > 0 else "within"
        models[model] = {"ppl": value, "percent": pct, "percent_ci": ci, "place": where}
    return {
        "source": meta.get("source"),
        "test_ppl": ppl,
        "train_tokens": _num(meta.get("train_tokens")),
        "test_tokens": _num(meta.get("test_tokens")),
        "interval": "paired bootstrap" if paired else "the model's own interval",
        "models": models,
    }


def _num(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _pct_phrase(pct: float, ci: Sequence[float | None], other: str) -> str:
    """ "12.0 % [8.1, 16.2] below X" / "… above X" / "within [−2.0 %, +3.1 %] of X (no clear
    difference)" when the interval contains 0."""
    lo, hi = ci
    if lo is None or hi is None:
        word = "below" if pct < 0 else "above"
        return f"{abs(pct):.1f} % {word} {other} (no interval)"
    if hi < 0:
        return f"{abs(pct):.1f} % [{abs(hi):.1f}, {abs(lo):.1f}] below {other}"
    if lo > 0:
        return f"{pct:.1f} % [{lo:.1f}, {hi:.1f}] above {other}"
    return f"within [{lo:+.1f} %, {hi:+.1f} %] of {other} (no clear difference)"


def _fmt_ci(ci: Sequence[float | None], digits: int = 3) -> str:
    return "[n/a]" if None in ci else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _comparison_lines(v: Mapping[str, Any], name: str) -> list[str]:
    """The verdict's paired comparisons: against every model, then against the best baseline."""
    lines = []
    if v["comparisons"]:
        parts = [
            _pct_phrase(c["percent"], c["percent_ci"], f"{c['model']}" + (f" ({c['context_dim']}-d)" if c["context_dim"] else ""))
            for c in v["comparisons"]
        ]
        lines.append("Its test PPL is " + "; ".join(parts) + ".")
    best = v.get("best_baseline")
    if best:
        text = {"beats": "beats", "loses": "does not beat", "inconclusive": "cannot be told apart from"}[best["outcome"]]
        lines.append(
            f"{name} {text} the best baseline, {best['model']} (chosen on dev loss): "
            f"{_pct_phrase(best['percent'], best['percent_ci'], best['model'])}."
        )
    return lines


def _alpha_lines(alphas: list[Mapping[str, Any]]) -> list[str]:
    """The verdict's scaling exponents with intervals, and which models' curves bend."""
    if not alphas:
        return []
    lines = [
        "Scaling exponent α of PPL = A·T^α (more negative = more gain from data; bootstrap intervals): "
        + "; ".join(
            f"{a['model']} {a['alpha']:.3f} {_fmt_ci(a['alpha_ci'])}" + ("" if a["interval"] == "bootstrap" else " (OLS t)")
            for a in alphas
        )
        + "."
    ]
    curved = [a["model"] for a in alphas if a.get("preferred_form") == "loss_form"]
    if curved:
        lines.append(
            f"For {', '.join(curved)} the loss form L = E + B·T^(−β) fits better than the power law (AIC lower by >= 2): "
            "their log-log curve bends, so α depends on the size range (see sliding_alpha.csv and model_fits.csv)."
        )
    return lines


def _training_line(undertrained: list[Mapping[str, Any]]) -> str:
    """Which models had runs stopped by ``max_steps`` (their PPL an upper bound), or none."""
    under = [u for u in undertrained if u["undertrained"]]
    if not under:
        return "No run was undertrained: every trained model stopped by early stopping on dev loss."
    return (
        "Undertrained (stopped by max_steps, not by early stopping): "
        + ", ".join(f"{u['model']} {u['undertrained']}/{u['runs']} runs" for u in under)
        + "; their PPL is an upper bound."
    )


def _interval_line(v: Mapping[str, Any]) -> str:
    """How the verdict's intervals were made: bootstrap over test conversations (and seeds)."""
    conf = f"{v['confidence']:.0%}".replace("%", " %")
    ts = v.get("test_set") or {}
    seeds = v.get("seeds")
    return (
        f"Intervals: {conf} percentile bootstrap over the {ts.get('conversations', '?')} test conversations "
        f"({ts.get('targets', '?')} target tokens, {v.get('resamples') or '?'} resamples, the same resamples for every model)"
        + (
            f" and over the {seeds} training seeds per point."
            if seeds and seeds > 1
            else "; one training seed, so seed-to-seed variation is not included."
        )
    )


def verdict_markdown(v: Mapping[str, Any]) -> str:
    """The verdict as a few Markdown lines, every number taken from :func:`verdict`:
    headline, paired comparisons, scaling exponents, the frozen head, training, intervals."""
    name = v["reference_model"].upper() if v["reference_model"] == "cvfp" else v["reference_model"]
    if not v.get("available"):
        return f"# Verdict\n\nNo verdict: {v.get('reason')}.\n"
    tokens = f"{v['train_tokens']:,.0f}" if v.get("train_tokens") is not None else "?"
    lines = [
        "# Verdict",
        "",
        f"At {tokens} training tokens ({v['samples']} conversations), {name} ({v['reference_variant']}, "
        f"{v['reference_context_dim']}-d, chosen on dev) has test PPL {v['reference_ppl']:.1f} "
        f"{_fmt_ci(v['reference_ppl_ci'], 1)}.",
        *_comparison_lines(v, name),
        *_alpha_lines(v.get("alphas") or []),
    ]
    if v.get("head_reference"):
        lines.append(_head_reference_line(v["head_reference"]))
    lines += [_training_line(v.get("undertrained", [])), "", _interval_line(v)]
    return "\n".join(lines) + "\n"


def _head_reference_line(head: Mapping[str, Any]) -> str:
    """The verdict's sentence on the frozen head's own LM (:func:`_head_reference`'s numbers)."""
    phrases = [_pct_phrase(m["percent"], m["percent_ci"], "it") for m in head["models"].values()]
    not_below = [name for name, m in head["models"].items() if m["place"] != "below"]
    return (
        f"Frozen-head reference: the stand-in embeddings' own {head['source']} LM, trained on "
        f"{head['train_tokens'] or 0:,.0f} tokens of the embedding slice (none of the study's training sets), "
        f"has test PPL {head['test_ppl']:.1f} on the same test tokens. Against it ({head['interval']}): "
        + "; ".join(f"{name} {phrase}" for name, phrase in zip(head["models"], phrases))
        + "."
        + (
            f" Not clearly below it: {', '.join(not_below)} — at this size they learn nothing measurable "
            "beyond what the frozen head already carries."
            if not_below
            else " Every model gets below it."
        )
    )


def verdict_html(markdown: str) -> str:
    """A standalone HTML page of :func:`verdict_markdown`'s text (the report shows HTML
    inline; Markdown would only be a download)."""
    import html

    body = []
    for line in markdown.strip().splitlines():
        if line.startswith("# "):
            body.append(f"<h2>{html.escape(line[2:])}</h2>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Verdict</title>'
        "<style>body{font-family:sans-serif;max-width:60em;margin:1em auto;line-height:1.45}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
