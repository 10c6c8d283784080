"""The two scaling forms and their comparison (docs/method.md §8.1, §8.2).  No torch import.

:func:`fit_power_law` (OLS in log-log space), :func:`fit_loss_form` and
:func:`fit_loss_form_batch` (bounded least squares, profiled over β, vectorised over
resamples), and the information criteria that choose between them (AIC, AICc, BIC).
See :mod:`newllm.scaling` for the method.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
from scipy import optimize, stats

BETA_BOUNDS = (1e-3, 3.0)
"""Bounds of the loss-form exponent β (a fit at a bound is flagged)."""
MIN_POINTS_LOSS_FORM = 4
MIN_POINTS_AICC = 6
"""Sizes the loss form's AICc needs: ``n > K + 1`` with ``K = 4``."""
AIC_TIE = 2.0
"""|ΔAICc| (or |ΔAIC|, |ΔBIC|) below this: neither form is preferred."""
TOO_FEW_POINTS = "too_few_points"
"""The preferred form when AICc cannot compare the forms (fewer than :data:`MIN_POINTS_AICC` sizes)."""


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


def corrected_aic(rss: float, n: int, k: int) -> float:
    """AICc of a least-squares fit with ``k`` mean parameters (Hurvich & Tsai 1989):
    ``AIC + 2K(K + 1)/(n − K − 1)`` with ``K = k + 1`` (σ² counted, as in
    :func:`information_criteria`); NaN when ``n ≤ K + 1`` (undefined: too few points)."""
    big_k = k + 1
    if n <= big_k + 1 or not np.isfinite(rss):
        return math.nan
    return information_criteria(rss, n, k)[0] + 2 * big_k * (big_k + 1) / (n - big_k - 1)


def preferred_form(power_ic: float, loss_ic: float, tie: float = AIC_TIE) -> str:
    """``"power_law"``, ``"loss_form"`` or ``"neither"`` (|Δ| < ``tie`` or undefined)."""
    if not (np.isfinite(power_ic) and np.isfinite(loss_ic)) or abs(power_ic - loss_ic) < tie:
        return "neither"
    return "power_law" if power_ic < loss_ic else "loss_form"


def intervals_disagree(low_a: float, high_a: float, low_b: float, high_b: float) -> bool | None:
    """Whether two intervals are disjoint (``None`` when either is undefined)."""
    if not np.isfinite([low_a, high_a, low_b, high_b]).all():
        return None
    return bool(high_a < low_b or high_b < low_a)


def criteria_columns(n: int, rss_power: float, rss_loss: float) -> dict[str, Any]:
    """AIC, AICc, BIC of both forms on ``n`` points, their differences (loss − power) and the
    preferred form by each (by AICc ``too_few_points`` below :data:`MIN_POINTS_AICC` sizes)."""
    aic_p, bic_p = information_criteria(rss_power, n, 2) if n >= 3 else (math.nan, math.nan)
    aic_l, bic_l = information_criteria(rss_loss, n, 3) if n >= MIN_POINTS_LOSS_FORM else (math.nan, math.nan)
    aicc_p, aicc_l = corrected_aic(rss_power, n, 2), corrected_aic(rss_loss, n, 3)
    return {
        "aic_power_law": aic_p,
        "aic_loss_form": aic_l,
        "aicc_power_law": aicc_p,
        "aicc_loss_form": aicc_l,
        "bic_power_law": bic_p,
        "bic_loss_form": bic_l,
        "delta_aic": aic_l - aic_p,
        "delta_aicc": aicc_l - aicc_p,
        "preferred_form": preferred_form(aicc_p, aicc_l) if n >= MIN_POINTS_AICC else TOO_FEW_POINTS,
        "preferred_form_aic": preferred_form(aic_p, aic_l),
        "preferred_form_bic": preferred_form(bic_p, bic_l),
    }
