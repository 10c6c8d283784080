"""Scaling-law fits (docs/method.md §8.1, §8.2).  No torch import.

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

**Choosing a form.**  Both forms model the same response ``L`` with Gaussian errors, so
their information criteria are comparable; with ``K`` estimated parameters (the mean
parameters plus σ²: 3 for the power law, 4 for the loss form)

    AIC  = n ln(RSS/n) + 2K,   BIC = n ln(RSS/n) + K ln n,
    AICc = AIC + 2K(K + 1)/(n − K − 1)                       (Hurvich & Tsai 1989),

AICc undefined for ``n ≤ K + 1``.  A scaling study has five to ten sizes, where plain AIC
favours the larger model; the preferred form is the one with the lower AICc, no
preference (``"neither"``) when the two differ by less than 2 (Burnham & Anderson 2002,
§2.6), and ``"too_few_points"`` when the loss form's AICc is undefined (fewer than
:data:`MIN_POINTS_AICC` sizes).  AIC and BIC and their preferences are reported beside it.
The loss form needs ``n ≥ 4`` points (one residual degree of freedom).

**Extrapolations** go at most one decade beyond the data: to each multiple of
:data:`EXTRAPOLATE_MULTIPLES` (2× and 10×) of the configuration's own largest training
size, from both forms side by side.  Bootstrap intervals (percentile, 95 %) come from
refitting every test-set resample of :mod:`newllm.uncertainty`; they carry the test-set
(and seed) noise of the points, not the misfit of the form.  For the power law the OLS
prediction interval ``ŷ* ± t_{n−2} · s · sqrt(1 + 1/n + (x* − x̄)² / S_xx)`` (the misfit
of a new point) is given beside it.  When the two forms' bootstrap intervals do not
overlap the forms *disagree*: the choice of form, which neither interval covers, decides
the prediction, and neither should be quoted alone.
"""

from newllm.scaling.fits import (
    EXTRAPOLATE_MULTIPLES,
    EXTRAPOLATION_COLUMNS,
    FIT_KEYS,
    MODEL_FIT_COLUMNS,
    fit_points,
    fit_scaling_group,
    fit_table,
    model_fit_table,
    multiple_tag,
)
from newllm.scaling.forms import (
    AIC_TIE,
    BETA_BOUNDS,
    MIN_POINTS_AICC,
    MIN_POINTS_LOSS_FORM,
    TOO_FEW_POINTS,
    corrected_aic,
    criteria_columns,
    fit_loss_form,
    fit_loss_form_batch,
    fit_power_law,
    information_criteria,
    intervals_disagree,
    loss_form_predict,
    ols_lines,
    power_law_prediction_interval,
    predict_ppl,
    preferred_form,
)

__all__ = [
    "AIC_TIE",
    "BETA_BOUNDS",
    "EXTRAPOLATE_MULTIPLES",
    "EXTRAPOLATION_COLUMNS",
    "FIT_KEYS",
    "MIN_POINTS_AICC",
    "MIN_POINTS_LOSS_FORM",
    "MODEL_FIT_COLUMNS",
    "TOO_FEW_POINTS",
    "corrected_aic",
    "criteria_columns",
    "fit_loss_form",
    "fit_loss_form_batch",
    "fit_points",
    "fit_power_law",
    "fit_scaling_group",
    "fit_table",
    "information_criteria",
    "intervals_disagree",
    "loss_form_predict",
    "model_fit_table",
    "multiple_tag",
    "ols_lines",
    "power_law_prediction_interval",
    "predict_ppl",
    "preferred_form",
]
