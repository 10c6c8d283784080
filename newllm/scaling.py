"""Scaling-law fits (SPEC §8, issue 9).  No torch import.

Two forms are fitted to the same points ``(T_i, L_i)``: training tokens and test loss in
nats per token (``L = ln PPL``; seeds are averaged in loss space before fitting, see
:mod:`newllm.uncertainty`).

- **Power law** ``PPL = A · T^α``, i.e. the line ``L = ln A + α ln T``, by ordinary least
  squares (the source used ``scipy.stats.linregress``).  Its 95 % interval for α uses
  Student's t with ``n − 2`` degrees of freedom (:func:`fit_power_law`).
- **Loss form** ``L(T) = E + B · T^(−β)`` (Kaplan et al. 2020, Hoffmann et al. 2022 eq. 2
  in one variable) by bounded least squares, ``E ≥ 0``, ``B ≥ 0``,
  ``β ∈ BETA_BOUNDS``.  For fixed β the model is linear in ``(E, B)``, so the fit
  profiles β over a log grid (the non-negative 2-parameter least squares has a closed
  form: the interior solution, or the better of the two clipped faces ``E = 0`` /
  ``B = 0``), refines β by golden-section search, and for the point estimate polishes
  with ``scipy.optimize.curve_fit`` (trust-region, bounded), which also gives asymptotic
  standard errors.  The profile is vectorised over bootstrap resamples.

Both forms model the same response ``L`` with Gaussian errors, so their AIC
``n ln(RSS/n) + 2(k+1)`` and BIC ``n ln(RSS/n) + (k+1) ln n`` (k mean parameters, +1 for
σ²) are comparable; a difference below 2 is reported as no preference (burnham &
anderson 2002, §2.6).  The loss form needs ``n ≥ 4`` points (one residual degree of
freedom).

Bootstrap intervals (percentile, 95 %) come from refitting every test-set resample of
:mod:`newllm.uncertainty`; they carry the test-set (and seed) noise of the points, not
the misfit of the form.  For the power-law extrapolations the OLS prediction interval
``ŷ* ± t_{n−2} · s · sqrt(1 + 1/n + (x* − x̄)² / S_xx)`` (the misfit of a new point) is
given beside the bootstrap interval.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
from scipy import optimize, stats

from newllm.uncertainty import percentile_interval

EXTRAPOLATE_TOKENS = (1_000_000, 10_000_000)
BETA_BOUNDS = (1e-3, 3.0)
"""Bounds of the loss-form exponent β (a fit at a bound is flagged)."""
MIN_POINTS_LOSS_FORM = 4
AIC_TIE = 2.0
"""|ΔAIC| below this: neither form is preferred."""


def fit_power_law(tokens: Sequence[float], ppl: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Fit ``PPL = A · tokens^α`` in log-log space by OLS.

    Args:
        tokens: training tokens per point (> 0).
        ppl: perplexity per point (> 0).
        confidence: level of the α interval.

    Returns:
        ``alpha``, ``A``, ``r2``, ``alpha_stderr`` (``s / sqrt(S_xx)``, ``s² = RSS/(n−2)``),
        ``alpha_ci_low``, ``alpha_ci_high`` (``α ± t_{n−2} · SE``; NaN when ``n < 3``: no
        degrees of freedom), ``rss`` (in ``ln PPL``), ``n_points``, ``tokens_min``,
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
    lx, ly = np.log(x), np.log(y)
    res = stats.linregress(lx, ly)
    n = x.size
    rss = float(((ly - res.intercept - res.slope * lx) ** 2).sum())
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
        "rss": rss,
        "n_points": int(n),
        "tokens_min": float(x.min()),
        "tokens_max": float(x.max()),
    }


def predict_ppl(fit: dict[str, float], tokens: float) -> float:
    """``A · tokens^α`` from a :func:`fit_power_law` result."""
    return fit["A"] * tokens ** fit["alpha"]


def ols_lines(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares lines ``y ≈ a + b·x`` for many responses at once.

    Args:
        x: ``[n]`` regressor (e.g. ln tokens).
        y: ``[..., n]`` responses.

    Returns:
        ``(intercept [...], slope [...])``; slope = ``c @ y`` with the OLS weights
        ``c_i = (x_i − x̄)/S_xx``.
    """
    x = np.asarray(x, dtype=float)
    c = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
    y = np.asarray(y, dtype=float)
    slope = y @ c
    return y.mean(axis=-1) - slope * x.mean(), slope


def power_law_prediction_interval(
    tokens: Sequence[float], ppl: Sequence[float], target: float, confidence: float = 0.95
) -> tuple[float, float]:
    """OLS prediction interval of the PPL of a new point at ``target`` tokens:
    ``exp(ŷ* ± t_{n−2} s sqrt(1 + 1/n + (x* − x̄)²/S_xx))`` with ``x = ln T``,
    ``y = ln PPL`` (NaN for ``n < 3``)."""
    x, y = np.log(np.asarray(tokens, float)), np.log(np.asarray(ppl, float))
    n = x.size
    if n < 3:
        return math.nan, math.nan
    a, b = ols_lines(x, y)
    s = math.sqrt(float(((y - a - b * x) ** 2).sum()) / (n - 2))
    xs = math.log(target)
    half = (
        stats.t.ppf(0.5 + confidence / 2, n - 2) * s * math.sqrt(1 + 1 / n + (xs - x.mean()) ** 2 / ((x - x.mean()) ** 2).sum())
    )
    centre = a + b * xs
    return math.exp(centre - half), math.exp(centre + half)


# ----------------------------------------------------------------------------- loss form
def _nonneg_line(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """min over ``E ≥ 0, B ≥ 0`` of ``‖y − E − B x‖²``, broadcast over leading axes.

    ``x``: ``[..., n]``, ``y``: ``[..., n]`` (broadcastable).  Convex in (E, B), so the
    optimum is the unconstrained one when feasible, else the better of the two faces'
    clipped 1-D optima (KKT).  Returns ``(E, B, rss)``.
    """
    n = x.shape[-1]
    xm, ym = x.mean(-1), y.mean(-1)
    sxx = ((x - xm[..., None]) ** 2).sum(-1)
    sxy = ((x - xm[..., None]) * (y - ym[..., None])).sum(-1)
    syy = ((y - ym[..., None]) ** 2).sum(-1)
    y2 = (y**2).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        b_int = np.where(sxx > 0, sxy / sxx, 0.0)
    e_int = ym - b_int * xm
    rss_int = np.where(sxx > 0, syy - b_int * sxy, syy)
    xy, xx = (x * y).sum(-1), (x**2).sum(-1)
    b_face = np.maximum(0.0, xy / xx)  # E = 0
    rss_b = y2 - 2 * b_face * xy + b_face**2 * xx
    e_face = np.maximum(0.0, ym)  # B = 0
    rss_e = y2 - 2 * e_face * ym * n + n * e_face**2
    interior = (b_int >= 0) & (e_int >= 0)
    use_b = ~interior & (rss_b <= rss_e)
    e = np.where(interior, e_int, np.where(use_b, 0.0, e_face))
    b = np.where(interior, b_int, np.where(use_b, b_face, 0.0))
    rss = np.where(interior, rss_int, np.where(use_b, rss_b, rss_e))
    return e, b, np.maximum(rss, 0.0)


def fit_loss_form_batch(
    tokens: Sequence[float], losses: np.ndarray, bounds: tuple[float, float] = BETA_BOUNDS, grid: int = 241, iterations: int = 48
) -> dict[str, np.ndarray]:
    """Fit ``L = E + B·T^(−β)`` (``E, B ≥ 0``, β in ``bounds``) to many loss vectors at once.

    Args:
        tokens: ``[n]`` training tokens.
        losses: ``[R, n]`` (or ``[n]``) losses in nats, one fit per row.
        grid: log-spaced β values profiled before the golden-section refinement.

    Returns:
        ``E``, ``B``, ``beta``, ``rss`` as ``[R]`` arrays (B in the units of ``T^β``).
    """
    t = np.asarray(tokens, dtype=float)
    y = np.atleast_2d(np.asarray(losses, dtype=float))
    t_ref = math.exp(np.log(t).mean())  # conditioning: x = (T/T_ref)^(-β) is O(1)
    lt = np.log(t / t_ref)
    u_grid = np.linspace(math.log(bounds[0]), math.log(bounds[1]), grid)
    x_grid = np.exp(-np.exp(u_grid)[:, None] * lt[None, :])  # [M, n]
    _, _, rss = _nonneg_line(x_grid[None, :, :], y[:, None, :])  # [R, M]
    j = rss.argmin(axis=1)
    lo = u_grid[np.maximum(j - 1, 0)]
    hi = u_grid[np.minimum(j + 1, grid - 1)]

    def profile(u):  # [R] -> rss [R]
        return _nonneg_line(np.exp(-np.exp(u)[:, None] * lt[None, :]), y)[2]

    g = (math.sqrt(5) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = profile(c), profile(d)
    for _ in range(iterations):
        left = fc < fd  # minimum in [lo, d]: d becomes hi, c is kept as the new d
        hi = np.where(left, d, hi)
        lo = np.where(left, lo, c)
        kept, f_kept = np.where(left, c, d), np.where(left, fc, fd)
        new = np.where(left, hi - g * (hi - lo), lo + g * (hi - lo))
        f_new = profile(new)
        c, fc = np.where(left, new, kept), np.where(left, f_new, f_kept)
        d, fd = np.where(left, kept, new), np.where(left, f_kept, f_new)
    u = (lo + hi) / 2
    # never worse than the best grid point
    u = np.where(profile(u) <= rss[np.arange(len(j)), j], u, u_grid[j])
    beta = np.exp(u)
    e, b_ref, rss_final = _nonneg_line(np.exp(-beta[:, None] * lt[None, :]), y)
    return {"E": e, "B": b_ref * t_ref**beta, "beta": beta, "rss": rss_final}


def fit_loss_form(
    tokens: Sequence[float], losses: Sequence[float], bounds: tuple[float, float] = BETA_BOUNDS
) -> dict[str, float]:
    """Fit ``L(T) = E + B·T^(−β)`` to one set of points (nats), bounded.

    The profile fit of :func:`fit_loss_form_batch` is polished with bounded
    ``scipy.optimize.curve_fit`` (kept only if it does not increase the RSS), which also
    gives the asymptotic standard errors (``pcov`` scaled by ``RSS/(n−3)``; NaN at a bound).

    Returns:
        ``E``, ``B``, ``beta``, ``rss``, ``E_stderr``, ``beta_stderr``, ``beta_at_bound``,
        ``E_at_bound`` (E below 10⁻⁶ of the mean loss: at its bound 0), ``n_points``.

    Raises:
        ValueError: fewer than :data:`MIN_POINTS_LOSS_FORM` points, mismatched lengths,
            or non-positive tokens.
    """
    t = np.asarray(tokens, dtype=float)
    y = np.asarray(losses, dtype=float)
    if t.shape != y.shape or t.size < MIN_POINTS_LOSS_FORM:
        raise ValueError(f"the loss form has 3 parameters: need >= {MIN_POINTS_LOSS_FORM} points, got {t.size}")
    if (t <= 0).any() or not np.isfinite(np.r_[t, y]).all():
        raise ValueError("tokens must be > 0 and losses finite")
    start = {k: float(v[0]) for k, v in fit_loss_form_batch(t, y[None, :], bounds).items()}
    t_ref = math.exp(np.log(t).mean())
    best = dict(start)
    e_se = beta_se = math.nan

    def model(tt, e, b, beta):
        return e + b * (tt / t_ref) ** (-beta)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p0 = [start["E"], start["B"] / t_ref ** start["beta"], start["beta"]]
            lower, upper = [0.0, 0.0, bounds[0]], [np.inf, np.inf, bounds[1]]
            p0 = np.clip(p0, np.array(lower) + 1e-12, np.array(upper) - 1e-12)
            popt, pcov = optimize.curve_fit(model, t, y, p0=p0, bounds=(lower, upper), method="trf", maxfev=5000)
        rss = float(((y - model(t, *popt)) ** 2).sum())
        if rss <= start["rss"] * (1 + 1e-9) + 1e-30:
            best = {"E": float(popt[0]), "B": float(popt[1] * t_ref ** popt[2]), "beta": float(popt[2]), "rss": rss}
        if np.isfinite(pcov).all():
            e_se, beta_se = float(math.sqrt(max(pcov[0, 0], 0))), float(math.sqrt(max(pcov[2, 2], 0)))
    except (RuntimeError, ValueError):
        pass  # keep the profile solution
    at_beta_bound = bool(np.isclose(best["beta"], bounds, rtol=1e-3).any())
    at_e_bound = bool(best["E"] <= 1e-6 * float(np.abs(y).mean()))  # E = 0 up to the solver's precision
    if at_beta_bound or at_e_bound:
        e_se = beta_se = math.nan  # asymptotic SEs mean nothing at a bound
    return best | {
        "E_stderr": e_se,
        "beta_stderr": beta_se,
        "beta_at_bound": at_beta_bound,
        "E_at_bound": at_e_bound,
        "n_points": int(t.size),
    }


def loss_form_predict(fit: dict, tokens: float | np.ndarray) -> np.ndarray | float:
    """``E + B·T^(−β)`` (nats) from a loss-form fit (scalars or ``[R]`` arrays with ``tokens [G]``)."""
    e, b, beta = (np.asarray(fit[k], dtype=float) for k in ("E", "B", "beta"))
    t = np.asarray(tokens, dtype=float)
    if e.ndim == 0:
        return e + b * t ** (-beta)
    return e[:, None] + b[:, None] * t[None, :] ** (-beta[:, None])


def information_criteria(rss: float, n: int, k: int) -> tuple[float, float]:
    """Gaussian ``(AIC, BIC)`` of a least-squares fit with ``k`` mean parameters:
    ``n ln(RSS/n) + 2(k+1)`` and ``n ln(RSS/n) + (k+1) ln n`` (σ² counted).  A zero RSS
    is floored at ``n·1e-30`` (an exact fit: −∞ in theory)."""
    ll = n * math.log(max(rss, n * 1e-30) / n)
    return ll + 2 * (k + 1), ll + (k + 1) * math.log(n)


def preferred_form(power_ic: float, loss_ic: float, tie: float = AIC_TIE) -> str:
    """``"power_law"``, ``"loss_form"`` or ``"neither"`` (|Δ| < ``tie`` or undefined)."""
    if not (np.isfinite(power_ic) and np.isfinite(loss_ic)) or abs(power_ic - loss_ic) < tie:
        return "neither"
    return "power_law" if power_ic < loss_ic else "loss_form"


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


def _extrapolation_columns(
    row: dict,
    t: np.ndarray,
    y: np.ndarray,
    target: float,
    boot_lines: tuple | None,
    lf: dict,
    lf_boot: dict | None,
    confidence: float,
) -> dict[str, float]:
    """``ppl_at_{T}`` (+ bootstrap CI, OLS prediction interval) and ``ppl_at_{T}_loss_form``
    (+ bootstrap CI) for one target ``T``; ``boot_lines`` = ``(a [B], alpha [B])`` or ``None``."""
    tag = _token_tag(target)
    out = {f"ppl_at_{tag}": predict_ppl(row, target)}
    if boot_lines is not None:
        a_b, alpha_b = boot_lines
        lo, hi = percentile_interval(np.exp(a_b + alpha_b * math.log(target)), confidence)
    else:
        lo, hi = math.nan, math.nan
    out[f"ppl_at_{tag}_ci_low"], out[f"ppl_at_{tag}_ci_high"] = float(lo), float(hi)
    out[f"ppl_at_{tag}_pi_low"], out[f"ppl_at_{tag}_pi_high"] = power_law_prediction_interval(t, np.exp(y), target, confidence)
    out[f"ppl_at_{tag}_loss_form"] = (
        float(math.exp(loss_form_predict(lf, target))) if t.size >= MIN_POINTS_LOSS_FORM else math.nan
    )
    if lf_boot is not None:
        lo, hi = percentile_interval(np.exp(loss_form_predict(lf_boot, np.array([target]))[:, 0]), confidence)
    else:
        lo, hi = math.nan, math.nan
    out[f"ppl_at_{tag}_loss_form_ci_low"], out[f"ppl_at_{tag}_loss_form_ci_high"] = float(lo), float(hi)
    return out


# ----------------------------------------------------------------------------- one group
def fit_scaling_group(
    tokens: Sequence[float],
    losses: Sequence[float],
    boot: np.ndarray | None = None,
    confidence: float = 0.95,
    extrapolate: Sequence[float] = EXTRAPOLATE_TOKENS,
) -> dict:
    """Both forms on one configuration's points, with bootstrap intervals.

    Args:
        tokens: ``[n]`` training tokens per point.
        losses: ``[n]`` test loss per point (nats; seeds already averaged).
        boot: ``[B, n]`` the points' losses on each bootstrap resample, or ``None``
            (then no bootstrap columns: NaN).
        extrapolate: token counts to predict at.

    Returns:
        A flat dict: the :func:`fit_power_law` columns; ``alpha_boot_se``,
        ``alpha_boot_ci_low/high``; loss form ``E``, ``B``, ``beta`` (+ ``_stderr``,
        ``_ci_low/high``), ``beta_at_bound``, ``E_at_bound``; ``aic_power_law``,
        ``aic_loss_form``, ``bic_power_law``, ``bic_loss_form``, ``delta_aic`` (loss − power),
        ``preferred_form`` (AIC), ``preferred_form_bic``; per target T (``1M``, ``10M``):
        ``ppl_at_{T}`` (+ ``_ci_low/high`` bootstrap, ``_pi_low/high`` OLS prediction
        interval) and ``ppl_at_{T}_loss_form`` (+ ``_ci_low/high``).
    """
    t = np.asarray(tokens, dtype=float)
    y = np.asarray(losses, dtype=float)
    order = np.argsort(t)
    t, y = t[order], y[order]
    boot = None if boot is None else np.asarray(boot, dtype=float)[:, order]
    row = fit_power_law(t, np.exp(y), confidence)
    n = t.size
    boot_lines = None
    if boot is not None:
        boot_lines = ols_lines(np.log(t), boot)  # (a [B], alpha [B])
        lo, hi = percentile_interval(boot_lines[1], confidence)
        row.update(
            alpha_boot_se=float(np.nanstd(boot_lines[1], ddof=1)), alpha_boot_ci_low=float(lo), alpha_boot_ci_high=float(hi)
        )
    else:
        row.update(alpha_boot_se=math.nan, alpha_boot_ci_low=math.nan, alpha_boot_ci_high=math.nan)
    aic_p, bic_p = information_criteria(row["rss"], n, 2) if n >= 3 else (math.nan, math.nan)
    lf, lf_boot, lf_columns = _loss_form_columns(t, y, boot, confidence)
    aic_l, bic_l = information_criteria(lf["rss"], n, 3) if n >= MIN_POINTS_LOSS_FORM else (math.nan, math.nan)
    row.update(lf_columns)
    row.update(
        aic_power_law=aic_p,
        aic_loss_form=aic_l,
        bic_power_law=bic_p,
        bic_loss_form=bic_l,
        delta_aic=aic_l - aic_p,
        preferred_form=preferred_form(aic_p, aic_l),
        preferred_form_bic=preferred_form(bic_p, bic_l),
    )
    for target in extrapolate:
        row.update(_extrapolation_columns(row, t, y, target, boot_lines, lf, lf_boot, confidence))
    row["_boot"] = {"a": boot_lines[0], "alpha": boot_lines[1], "loss_form": lf_boot} if boot is not None else None
    return row


def _token_tag(tokens: float) -> str:
    """1_000_000 -> "1M", 10_000_000 -> "10M", 50_000 -> "50k"."""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if tokens >= scale and tokens % scale == 0:
            return f"{int(tokens // scale)}{unit}"
    return str(int(tokens))


# ----------------------------------------------------------------------------- tables
FIT_KEYS = ["model", "variant", "context_dim"]


def _extrapolation_rows(keys: dict, row: dict, extrapolate: Sequence[float]) -> list[dict]:
    """One row per (form, target) of a group's fit: ``ppl``, ``ci_low/high``,
    ``pi_low/high`` (power law only) and ``extrapolation`` (beyond the largest size)."""
    rows = []
    for target in extrapolate:
        tag = _token_tag(target)
        beyond = bool(target > row["tokens_max"])
        for form, suffix, pi in (("power_law", "", True), ("loss_form", "_loss_form", False)):
            rows.append(
                keys
                | {
                    "form": form,
                    "tokens": target,
                    "ppl": row[f"ppl_at_{tag}{suffix}"],
                    "ci_low": row[f"ppl_at_{tag}{suffix}_ci_low"],
                    "ci_high": row[f"ppl_at_{tag}{suffix}_ci_high"],
                    "pi_low": row[f"ppl_at_{tag}_pi_low"] if pi else math.nan,
                    "pi_high": row[f"ppl_at_{tag}_pi_high"] if pi else math.nan,
                    "extrapolation": beyond,
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
    keys: dict, row: dict, b: dict | None, extrapolate: Sequence[float], curve_points: int, confidence: float
) -> list[dict]:
    """Both forms' fitted PPL with bootstrap bands on a log grid from the smallest size to
    the last extrapolation target (the loss form only where it was fitted)."""
    t_max = row["tokens_max"]
    grid = np.geomspace(row["tokens_min"], max([t_max, *extrapolate]), curve_points)
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
    points,
    point_boot: np.ndarray | None,
    group_by: Sequence[str] = FIT_KEYS,
    tokens: str = "train_tokens",
    loss: str = "test_loss",
    confidence: float = 0.95,
    extrapolate: Sequence[float] = EXTRAPOLATE_TOKENS,
    curve_points: int = 60,
):
    """Fit both forms per group of scaling points, with bootstrap intervals.

    Args:
        points: ``pandas.DataFrame``, one row per (group, size) with ``tokens`` and
            ``loss`` (seed-mean test loss, nats); optional ``undertrained_runs`` and
            ``runs`` counts.
        point_boot: ``[B, P]`` bootstrap losses of the points (row order of ``points``).
        curve_points: grid size of the fitted curve per group (data range to the last
            extrapolation target).

    Returns:
        ``(fits, extrapolations, curves)`` DataFrames: ``fits`` one row per group (group
        keys, :func:`fit_scaling_group` columns, ``undertrained_points`` = sizes with at
        least one undertrained run, ``undertrained_runs``); ``extrapolations`` one row per
        (group, form, target) with ``ppl``, ``ci_low``, ``ci_high``, ``pi_low``, ``pi_high``
        and ``extrapolation`` (target beyond the largest fitted size); ``curves`` one row per
        (group, form, grid token count) with the fitted PPL and its bootstrap band and
        ``extrapolation``.  Groups with fewer than 2 sizes are skipped.
    """
    import pandas as pd

    fits, extrap, curves = [], [], []
    points = points.reset_index(drop=True)
    for key, idx in points.groupby(list(group_by), sort=True).indices.items():
        keys = dict(zip(group_by, key if isinstance(key, tuple) else (key,)))
        group = points.iloc[idx]
        if group[tokens].nunique() < 2:
            continue
        boot = None if point_boot is None else np.asarray(point_boot)[:, idx]
        row = fit_scaling_group(group[tokens].to_numpy(), group[loss].to_numpy(), boot, confidence, extrapolate)
        b = row.pop("_boot")
        if "undertrained_runs" in group:
            row["undertrained_points"] = int((group["undertrained_runs"] > 0).sum())
            row["undertrained_runs"] = int(group["undertrained_runs"].sum())
        fits.append(keys | row)
        extrap += _extrapolation_rows(keys, row, extrapolate)
        curves += _fitted_curves(keys, row, b, extrapolate, curve_points, confidence)
    return pd.DataFrame(fits), pd.DataFrame(extrap), pd.DataFrame(curves)


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
    "delta_aic",
    "preferred_form",
    "preferred_form_bic",
    "n_points",
    "undertrained_points",
]


def model_fit_table(fits):
    """The per-model summary of a :func:`fit_points` table: group keys, α [bootstrap CI],
    its OLS SE, R², E [CI], β [CI], ΔAIC, the preferred form and undertrained points."""
    keys = [c for c in FIT_KEYS if c in fits.columns]
    return fits[keys + [c for c in MODEL_FIT_COLUMNS if c in fits.columns]].copy()


def fit_table(runs, group_by: list[str], tokens: str = "train_tokens", ppl: str = "val_ppl"):
    """One fit row per group of a runs table (no bootstrap), with extrapolated PPL.

    Used by ``newllm-fit`` on external tables: rows of a group are the points (no seed
    averaging).  Columns: the group keys and the :func:`fit_scaling_group` columns (the
    bootstrap ones NaN); ``ppl_at_1M`` / ``ppl_at_10M`` = ``A·T^α`` at 10⁶ / 10⁷ tokens.

    Raises:
        ValueError: a group with a non-positive PPL or fewer than 2 distinct sizes.
    """
    import pandas as pd

    rows = []
    for keys, group in runs.groupby(group_by, sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        values = group[ppl].to_numpy(dtype=float)
        if (values <= 0).any():
            raise ValueError(f"group {keys}: perplexity must be > 0")
        row = fit_scaling_group(group[tokens].to_numpy(dtype=float), np.log(values))
        row.pop("_boot")
        rows.append(dict(zip(group_by, keys)) | row)
    return pd.DataFrame(rows)
