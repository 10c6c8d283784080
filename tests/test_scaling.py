"""Scaling fits: expected values derived by hand or from the formulas, not from the code."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from newllm.scaling import (
    EXTRAPOLATION_COLUMNS,
    MIN_POINTS_AICC,
    TOO_FEW_POINTS,
    corrected_aic,
    criteria_columns,
    fit_loss_form,
    fit_loss_form_batch,
    fit_points,
    fit_power_law,
    fit_scaling_group,
    fit_table,
    information_criteria,
    intervals_disagree,
    multiple_tag,
    power_law_prediction_interval,
    predict_ppl,
    preferred_form,
)
from newllm.scaling.fits import _extrapolation_rows
from newllm.scaling.forms import _nonneg_line


def test_recovers_alpha_and_a_exactly():
    tokens = np.array([6e4, 1.2e5, 2.4e5, 4.8e5, 9.6e5])
    ppl = 1.07e5 * tokens**-0.476
    fit = fit_power_law(tokens, ppl)
    assert fit["alpha"] == pytest.approx(-0.476, abs=1e-12)
    assert fit["A"] == pytest.approx(1.07e5, rel=1e-9)
    assert fit["r2"] == pytest.approx(1.0)
    assert predict_ppl(fit, 1e6) == pytest.approx(1.07e5 * 1e6**-0.476)


def test_three_point_fit_by_hand():
    # x = ln T = 0, 1, 2; y = ln PPL = 1, 0, 0.5: x̄ = 1, ȳ = 0.5, S_xx = 2, S_xy = -0.5
    # α = -0.25, ln A = 0.75, fitted 0.75, 0.5, 0.25, residuals 0.25, -0.5, 0.25, RSS = 0.375
    # SE = sqrt(RSS/(n-2) / S_xx) = sqrt(0.1875); R² = 1 - 0.375/0.5 = 0.25
    fit = fit_power_law(np.exp([0.0, 1.0, 2.0]), np.exp([1.0, 0.0, 0.5]))
    assert fit["alpha"] == pytest.approx(-0.25)
    assert fit["A"] == pytest.approx(math.exp(0.75))
    assert fit["rss"] == pytest.approx(0.375)
    assert fit["alpha_stderr"] == pytest.approx(math.sqrt(0.1875))
    assert fit["r2"] == pytest.approx(0.25)
    half = 12.706204736 * math.sqrt(0.1875)  # t_{0.975, 1}
    assert fit["alpha_ci_low"] == pytest.approx(-0.25 - half, rel=1e-8)
    assert fit["alpha_ci_high"] == pytest.approx(-0.25 + half, rel=1e-8)
    # prediction interval at x* = 3: centre 0.75 - 0.75 = 0, s = sqrt(0.375),
    # half = t · s · sqrt(1 + 1/3 + (3 - 1)²/2)
    lo, hi = power_law_prediction_interval(np.exp([0.0, 1.0, 2.0]), np.exp([1.0, 0.0, 0.5]), math.exp(3.0))
    half = 12.706204736 * math.sqrt(0.375) * math.sqrt(1 + 1 / 3 + 2)
    assert math.log(lo) == pytest.approx(-half, rel=1e-8) and math.log(hi) == pytest.approx(half, rel=1e-8)


def test_confidence_interval_and_stderr_on_noisy_data():
    rng = np.random.default_rng(0)
    tokens = np.geomspace(1e4, 1e6, 8)
    ppl = 2e5 * tokens**-0.5 * np.exp(rng.normal(0, 0.05, tokens.size))
    fit = fit_power_law(tokens, ppl)
    x, y = np.log(tokens), np.log(ppl)
    sxx = ((x - x.mean()) ** 2).sum()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / sxx
    rss = ((y - y.mean() - slope * (x - x.mean())) ** 2).sum()
    se = math.sqrt(rss / 6 / sxx)
    assert fit["alpha"] == pytest.approx(slope) and fit["alpha_stderr"] == pytest.approx(se) and se > 0.005
    half = stats.t.ppf(0.975, 6) * se
    assert fit["alpha_ci_low"] == pytest.approx(slope - half)
    assert fit["alpha_ci_high"] == pytest.approx(slope + half)


def test_two_points_have_no_interval_and_bad_input_raises():
    fit = fit_power_law([1e3, 1e4], [100.0, 50.0])
    assert np.isnan(fit["alpha_ci_low"]) and np.isnan(fit["alpha_ci_high"]) and fit["alpha"] == pytest.approx(np.log10(0.5))
    with pytest.raises(ValueError):
        fit_power_law([1e3], [10.0])
    with pytest.raises(ValueError):
        fit_power_law([1e3, 1e4], [10.0, -1.0])
    with pytest.raises(ValueError):
        fit_power_law([1e3, 1e3], [10.0, 9.0])


def test_nonnegative_line_picks_the_feasible_kkt_point():
    x = np.array([1.0, 2.0, 3.0])
    # increasing data: the unconstrained fit y = 0 + 1·x is feasible
    e, b, rss = _nonneg_line(x, np.array([1.0, 2.0, 3.0]))
    assert (float(e), float(b), float(rss)) == pytest.approx((0.0, 1.0, 0.0), abs=1e-12)
    # decreasing data: the unconstrained slope -1 is infeasible; face B = 0 gives E = 2, RSS = 2;
    # face E = 0 gives B = x·y/x·x = 10/14, RSS = 14 - 2·(10/14)·10 + (10/14)²·14 = 6.857; B = 0 wins
    e, b, rss = _nonneg_line(x, np.array([3.0, 2.0, 1.0]))
    assert (float(e), float(b), float(rss)) == pytest.approx((2.0, 0.0, 2.0))
    # negative intercept needed: y = -1 + 2x -> face E = 0 (B = x·y/x·x = 22/14, RSS = 35 - 22²/14 = 0.4286)
    # beats face B = 0 (E = 3, RSS = 8)
    e, b, rss = _nonneg_line(x, np.array([1.0, 3.0, 5.0]))
    assert float(e) == 0.0 and float(b) == pytest.approx(22 / 14)
    assert float(rss) == pytest.approx(35 - 22**2 / 14)


def test_loss_form_recovers_its_parameters_and_flags_bounds():
    tokens = np.geomspace(5e3, 5e5, 6)
    fit = fit_loss_form(tokens, 2.0 + 50.0 * tokens**-0.3)
    assert (fit["E"], fit["B"], fit["beta"]) == pytest.approx((2.0, 50.0, 0.3), rel=1e-6)
    assert not fit["beta_at_bound"] and not fit["E_at_bound"]
    # no irreducible term: E sits at its bound 0, SEs undefined there
    fit = fit_loss_form(tokens, 5.0 * tokens**-0.2)
    assert fit["E_at_bound"] and fit["E"] == pytest.approx(0.0, abs=1e-6)
    assert (fit["B"], fit["beta"]) == pytest.approx((5.0, 0.2), rel=1e-5)
    assert math.isnan(fit["E_stderr"])
    with pytest.raises(ValueError, match=">= 4 points"):
        fit_loss_form(tokens[:3], np.ones(3))


def test_profile_fit_is_never_worse_than_multistart_curve_fit():
    rng = np.random.default_rng(1)
    tokens = np.geomspace(5e3, 2e5, 5)
    true = 2.5 + 40.0 * tokens**-0.35
    losses = true + rng.normal(0, 0.03, (30, tokens.size))
    batch = fit_loss_form_batch(tokens, losses)

    def model(t, e, b, beta):
        return e + b * t ** (-beta)

    for i, y in enumerate(losses):
        best = math.inf
        for beta0 in (0.05, 0.2, 0.5, 1.0, 2.0):
            try:
                popt, _ = optimize.curve_fit(
                    model,
                    tokens,
                    y,
                    p0=[1.0, 10.0 * 1e4**beta0, beta0],
                    bounds=([0, 0, 1e-3], [np.inf, np.inf, 3.0]),
                    maxfev=20000,
                )
                best = min(best, float(((y - model(tokens, *popt)) ** 2).sum()))
            except RuntimeError:
                pass
        assert batch["rss"][i] <= best * (1 + 1e-5) + 1e-12
        pred = batch["E"][i] + batch["B"][i] * tokens ** (-batch["beta"][i])
        assert float(((y - pred) ** 2).sum()) == pytest.approx(batch["rss"][i], rel=1e-9, abs=1e-15)


def test_information_criteria_by_hand():
    aic, bic = information_criteria(rss=0.5, n=5, k=2)
    assert aic == pytest.approx(5 * math.log(0.1) + 6)
    assert bic == pytest.approx(5 * math.log(0.1) + 3 * math.log(5))
    assert preferred_form(-10.0, -11.9) == "neither"  # |Δ| < 2
    assert preferred_form(-10.0, -12.5) == "loss_form" and preferred_form(-12.5, -10.0) == "power_law"


def test_corrected_aic_by_hand():
    # power law (k = 2, K = 3) on 5 points: AIC = 5 ln(0.5/5) + 6, correction 2·3·4/(5 − 3 − 1) = 24
    assert corrected_aic(rss=0.5, n=5, k=2) == pytest.approx(5 * math.log(0.1) + 6 + 24)
    # loss form (k = 3, K = 4) on 6 points: AIC = 6 ln(0.06/6) + 8, correction 2·4·5/(6 − 4 − 1) = 40
    assert corrected_aic(rss=0.06, n=6, k=3) == pytest.approx(6 * math.log(0.01) + 8 + 40)
    # n <= K + 1: undefined
    assert math.isnan(corrected_aic(rss=0.5, n=4, k=2)) and math.isnan(corrected_aic(rss=0.06, n=5, k=3))
    assert math.isnan(corrected_aic(rss=math.nan, n=8, k=3))  # no loss-form fit
    assert MIN_POINTS_AICC == 6


def test_aicc_undoes_a_preference_that_plain_aic_gives_the_larger_form():
    # n = 6, RSS 1 (power law) and 0.01 (loss form): ΔAIC = 6 ln(0.01) + 2 = −25.6 prefers the
    # loss form; the corrections are 12 (K = 3) and 40 (K = 4), so ΔAICc = −25.6 + 28 = +2.4
    # prefers the power law
    c = criteria_columns(6, 1.0, 0.01)
    assert c["delta_aic"] == pytest.approx(6 * math.log(0.01) + 2)
    assert c["delta_aicc"] == pytest.approx(6 * math.log(0.01) + 2 + 28)
    assert (c["preferred_form"], c["preferred_form_aic"]) == ("power_law", "loss_form")
    assert c["aicc_power_law"] == pytest.approx(6 * math.log(1 / 6) + 6 + 12)
    # RSS e^-5 for the loss form: ΔAICc = 6·(−5) + 2 + 28 = 0, no preference; below 6 points:
    # too few points, whatever AIC says
    assert criteria_columns(6, 1.0, math.exp(-5.0))["preferred_form"] == "neither"
    five = criteria_columns(5, 1.0, 0.001)
    assert five["preferred_form"] == TOO_FEW_POINTS and five["preferred_form_aic"] == "loss_form"
    assert math.isnan(five["aicc_loss_form"]) and np.isfinite(five["aicc_power_law"])


def test_aic_prefers_the_loss_form_on_curved_data_and_not_on_a_line():
    rng = np.random.default_rng(2)
    tokens = np.geomspace(2e3, 2e6, 7)
    curved = fit_scaling_group(tokens, 2.0 + 60.0 * tokens**-0.5 + rng.normal(0, 0.005, 7))
    assert curved["preferred_form"] == "loss_form" and curved["delta_aicc"] < -10
    assert curved["delta_aic"] == pytest.approx(
        7 * math.log(curved["rss_loss_form"] / 7) + 8 - (7 * math.log(curved["rss"] / 7) + 6)
    )
    # 7 points: corrections 2·4·5/2 = 20 (loss form) and 2·3·4/3 = 8 (power law)
    assert curved["delta_aicc"] == pytest.approx(curved["delta_aic"] + 20 - 8)
    line = fit_scaling_group(tokens, 9.0 - 0.3 * np.log(tokens) + rng.normal(0, 0.005, 7))
    # a power law in PPL is a line in ln PPL: the loss form (E >= 0) fits it far worse
    assert line["preferred_form"] == "power_law" and line["delta_aicc"] > 10
    assert line["delta_aic"] == pytest.approx(7 * math.log(line["rss_loss_form"] / 7) + 8 - (7 * math.log(line["rss"] / 7) + 6))
    assert line["preferred_form_aic"] == "power_law" and curved["preferred_form_aic"] == "loss_form"


def test_bootstrap_intervals_are_percentiles_of_the_refits():
    # every resample is an exact line with a known slope: the bootstrap α interval must be
    # the percentiles of those slopes, and the extrapolation to 10× the largest size (1.6M
    # tokens) the percentiles of a + α ln 1.6e6
    rng = np.random.default_rng(3)
    tokens = np.geomspace(1e4, 1.6e5, 5)
    x = np.log(tokens)
    slopes, intercepts = rng.normal(-0.4, 0.02, 500), rng.normal(8.0, 0.05, 500)
    boot = intercepts[:, None] + slopes[:, None] * x[None, :]
    row = fit_scaling_group(tokens, 8.0 - 0.4 * x, boot)
    assert row["alpha_boot_ci_low"] == pytest.approx(np.percentile(slopes, 2.5))
    assert row["alpha_boot_ci_high"] == pytest.approx(np.percentile(slopes, 97.5))
    assert row["alpha_boot_se"] == pytest.approx(slopes.std(ddof=1))
    at_10x = np.exp(intercepts + slopes * math.log(1.6e6))
    assert row["tokens_at_10x"] == pytest.approx(1.6e6) and row["tokens_at_2x"] == pytest.approx(3.2e5)
    assert row["ppl_at_10x_ci_low"] == pytest.approx(np.percentile(at_10x, 2.5))
    assert row["ppl_at_10x_ci_high"] == pytest.approx(np.percentile(at_10x, 97.5))
    assert row["ppl_at_10x"] == pytest.approx(math.exp(8.0 - 0.4 * math.log(1.6e6)))


def test_fit_points_tables_mark_extrapolation_and_undertrained_points():
    tokens = np.array([1e4, 2e4, 4e4, 8e4])
    rows = []
    for model, alpha in (("cvfp", -0.3), ("lstm", -0.4)):
        for i, t in enumerate(tokens):
            rows.append(
                {
                    "model": model,
                    "variant": "base",
                    "context_dim": 16,
                    "samples": 10 * 2**i,
                    "train_tokens": t,
                    "test_loss": 9.0 + alpha * math.log(t),
                    "undertrained_runs": int(model == "lstm" and i >= 2),
                }
            )
    rows.append(
        {
            "model": "ngram",
            "variant": "base",
            "context_dim": 0,
            "samples": 10,
            "train_tokens": 1e4,
            "test_loss": 7.0,
            "undertrained_runs": 0,
        }
    )  # one size: no fit
    points = pd.DataFrame(rows)
    boot = np.tile(points["test_loss"].to_numpy(), (50, 1))
    fits, extrap, curves = fit_points(points, boot)
    assert list(fits["model"]) == ["cvfp", "lstm"]
    lstm = fits.set_index("model").loc["lstm"]
    assert lstm["alpha"] == pytest.approx(-0.4) and lstm["undertrained_points"] == 2 and lstm["undertrained_runs"] == 2
    assert fits.set_index("model").loc["cvfp", "undertrained_points"] == 0
    # one row per (group, multiple), both forms side by side, at 2× and 10× the largest size
    assert list(extrap.columns) == ["model", "variant", "context_dim", *EXTRAPOLATION_COLUMNS]
    assert list(zip(extrap["model"], extrap["multiple"])) == [("cvfp", 2.0), ("cvfp", 10.0), ("lstm", 2.0), ("lstm", 10.0)]
    assert extrap["tokens"].tolist() == [1.6e5, 8e5] * 2 and (extrap["tokens_max"] == 8e4).all()
    assert extrap["power_law_ppl"].iloc[1] == pytest.approx(math.exp(9.0 - 0.3 * math.log(8e5)))
    cvfp = curves[(curves["model"] == "cvfp") & (curves["form"] == "power_law")]
    assert (cvfp["extrapolation"] == (cvfp["tokens"] > 8e4)).all() and cvfp["tokens"].max() == pytest.approx(8e5)
    assert np.allclose(np.log(cvfp["ppl"]), 9.0 - 0.3 * np.log(cvfp["tokens"]))


SIZES = np.array([1e4, 2e4, 4e4])


def _two_group_runs(context_dims: tuple[int, int], ppl_first, ppl_second) -> pd.DataFrame:
    """Runs of one variant at two context_dims, each at the three :data:`SIZES`."""
    return pd.DataFrame(
        {
            "variant": ["base"] * 6,
            "context_dim": [context_dims[0]] * 3 + [context_dims[1]] * 3,
            "train_tokens": np.r_[SIZES, SIZES],
            "val_ppl": np.r_[ppl_first, ppl_second],
        }
    )


def test_fit_table_groups_runs():
    tokens = SIZES
    runs = _two_group_runs((64, 128), 1e4 * tokens**-0.3, 2e4 * tokens**-0.4)
    table = fit_table(runs, ["variant", "context_dim"]).set_index("context_dim")
    assert table.loc[64, "alpha"] == pytest.approx(-0.3)
    assert table.loc[128, "A"] == pytest.approx(2e4)
    assert table.loc[128, "ppl_at_10x"] == pytest.approx(2e4 * 4e5**-0.4) and table.loc[128, "tokens_at_10x"] == 4e5
    assert np.isnan(table.loc[128, "E"])  # 3 sizes: the 3-parameter loss form is not fitted


def test_fit_command_on_an_external_table(tmp_path, capsys):
    from newllm.cli import fit_main

    # the source study's reported v3 run per size (samples -> train tokens, val PPL)
    table = tmp_path / "published.csv"
    pd.DataFrame(
        {
            "config": ["1L 768d 2tok (v3)"] * 5,
            "tokens": [62891, 122795, 240132, 473429, 948524],
            "ppl": [591.7, 400.3, 296.8, 211.0, 168.0],
        }
    ).to_csv(table, index=False)
    assert fit_main([str(table), "--output", str(tmp_path / "fits.csv")]) == 0
    fit = pd.read_csv(tmp_path / "fits.csv").iloc[0]
    assert fit["alpha"] == pytest.approx(-0.466, abs=0.005)  # the source's reported α
    assert fit["r2"] == pytest.approx(0.992, abs=0.002)
    assert fit["preferred_form_aic"] == preferred_form(fit["aic_power_law"], fit["aic_loss_form"]) and np.isfinite(fit["E"])
    assert fit["delta_aic"] == pytest.approx(fit["aic_loss_form"] - fit["aic_power_law"])
    assert fit["preferred_form"] == TOO_FEW_POINTS  # 5 sizes: the loss form's AICc is undefined
    assert "1L 768d 2tok (v3)" in capsys.readouterr().out
    assert fit_main([str(table), "--ppl", "perplexity"]) == 2
    assert fit_main([str(table), "--window", "4"]) == 0
    out = capsys.readouterr().out
    assert "sliding windows of 4 sizes" in out and out.count("1L 768d 2tok (v3)") == 3  # fit + 2 windows
    assert fit_main([str(table), "--window", "3"]) == 2  # < 4 sizes: no degrees of freedom for the SE of Δα


def test_prediction_interval_equals_the_textbook_formula_on_noisy_data():
    from newllm.scaling import power_law_prediction_interval

    rng = np.random.default_rng(8)
    tokens = np.geomspace(1e4, 1e6, 6)
    ppl = np.exp(8.0 - 0.3 * np.log(tokens) + rng.normal(0, 0.05, 6))
    x, y = np.log(tokens), np.log(ppl)
    slope, intercept = np.polyfit(x, y, 1)
    s = math.sqrt(((y - intercept - slope * x) ** 2).sum() / 4)
    xs = math.log(1e7)
    half = stats.t.ppf(0.975, 4) * s * math.sqrt(1 + 1 / 6 + (xs - x.mean()) ** 2 / ((x - x.mean()) ** 2).sum())
    low, high = power_law_prediction_interval(tokens, ppl, 1e7)
    assert (low, high) == pytest.approx((math.exp(intercept + slope * xs - half), math.exp(intercept + slope * xs + half)))
    assert all(math.isnan(v) for v in power_law_prediction_interval(tokens[:2], ppl[:2], 1e7))


def test_loss_form_prediction_by_hand():
    from newllm.scaling import loss_form_predict

    assert loss_form_predict({"E": 1.0, "B": 2.0, "beta": 0.5}, 4.0) == pytest.approx(1.0 + 2.0 / 2.0)
    batch = {"E": np.array([1.0, 0.0]), "B": np.array([2.0, 8.0]), "beta": np.array([0.5, 1.0])}
    np.testing.assert_allclose(loss_form_predict(batch, np.array([4.0, 16.0])), [[2.0, 1.5], [2.0, 0.5]])


def test_preferred_form_at_its_boundaries():
    assert preferred_form(math.nan, 1.0) == "neither" and preferred_form(1.0, math.inf) == "neither"
    assert preferred_form(0.0, 2.0) == "power_law" and preferred_form(2.0, 0.0) == "loss_form"  # |Δ| = 2 is no tie
    assert preferred_form(1.0, 1.0, tie=0.0) == "loss_form"  # only a lower power-law IC prefers it


def test_multiple_tags_and_disjoint_intervals():
    assert [multiple_tag(m) for m in (2, 10.0, 1.5, 2.5)] == ["2x", "10x", "1.5x", "2.5x"]
    assert intervals_disagree(1.0, 2.0, 2.5, 3.0) is True and intervals_disagree(2.5, 3.0, 1.0, 2.0) is True
    assert intervals_disagree(1.0, 2.0, 2.0, 3.0) is False  # touching intervals overlap
    assert intervals_disagree(1.0, 3.0, 1.5, 2.0) is False
    assert intervals_disagree(1.0, math.nan, 1.5, 2.0) is None


def test_extrapolation_rows_put_both_forms_side_by_side():
    row = {"tokens_max": 1e5, "preferred_form": "neither"}
    for tag, target, disagree in (("2x", 2e5, False), ("10x", 1e6, True)):
        row |= {f"tokens_at_{tag}": target, f"forms_disagree_at_{tag}": disagree}
        for suffix, base in (("", 10.0), ("_loss_form", 20.0)):
            row |= {
                f"ppl_at_{tag}{suffix}": base,
                f"ppl_at_{tag}{suffix}_ci_low": base - 1,
                f"ppl_at_{tag}{suffix}_ci_high": base + 1,
            }
        row |= {f"ppl_at_{tag}_pi_low": 5.0, f"ppl_at_{tag}_pi_high": 15.0}
    rows = _extrapolation_rows({"model": "m"}, row, [2.0, 10.0])
    assert [(r["multiple"], r["tokens"], r["forms_disagree"]) for r in rows] == [(2.0, 2e5, False), (10.0, 1e6, True)]
    assert rows[0] == {
        "model": "m",
        "multiple": 2.0,
        "tokens": 2e5,
        "tokens_max": 1e5,
        "power_law_ppl": 10.0,
        "power_law_ci_low": 9.0,
        "power_law_ci_high": 11.0,
        "power_law_pi_low": 5.0,
        "power_law_pi_high": 15.0,
        "loss_form_ppl": 20.0,
        "loss_form_ci_low": 19.0,
        "loss_form_ci_high": 21.0,
        "forms_disagree": False,
        "preferred_form": "neither",
    }
    assert list(rows[0]) == ["model", *EXTRAPOLATION_COLUMNS]


def test_the_forms_disagree_when_their_bootstrap_intervals_are_disjoint():
    # exact points of a bending curve L = 2 + 60·T^(-1/2) and resamples with a little noise:
    # the power law, a straight line in ln PPL, overshoots the gain at 10× by far more than
    # either interval; at 2× the two are still close together
    rng = np.random.default_rng(11)
    tokens = np.geomspace(1e4, 3.2e5, 6)
    losses = 2.0 + 60.0 * tokens**-0.5
    boot = losses[None, :] + rng.normal(0, 0.002, (200, 6))
    row = fit_scaling_group(tokens, losses, boot)
    at = "ppl_at_10x"
    assert row["tokens_at_10x"] == pytest.approx(3.2e6)
    assert row[f"{at}_loss_form"] == pytest.approx(math.exp(2.0 + 60.0 / math.sqrt(3.2e6)), rel=1e-6)
    assert row[f"{at}_ci_high"] < row[f"{at}_loss_form_ci_low"] and row["forms_disagree_at_10x"] is True
    assert row["forms_disagree_at_2x"] == intervals_disagree(
        row["ppl_at_2x_ci_low"], row["ppl_at_2x_ci_high"], row["ppl_at_2x_loss_form_ci_low"], row["ppl_at_2x_loss_form_ci_high"]
    )
    assert fit_scaling_group(tokens, losses)["forms_disagree_at_10x"] is None  # no bootstrap: no intervals to compare


def test_information_criteria_of_a_group_at_the_minimum_sizes():
    from newllm.scaling import information_criteria

    rng = np.random.default_rng(3)
    for n in (3, 4):
        tokens = np.geomspace(1e4, 1e6, n)
        losses = 2.0 + 60.0 * tokens**-0.5 + rng.normal(0, 0.01, n)
        fit = fit_scaling_group(tokens, losses)
        aic_p, bic_p = information_criteria(fit["rss"], n, 2)
        assert (fit["aic_power_law"], fit["bic_power_law"]) == pytest.approx((aic_p, bic_p))
        if n == 4:  # the loss form needs 4 sizes
            aic_l, bic_l = information_criteria(fit["rss_loss_form"], n, 3)
            assert (fit["aic_loss_form"], fit["bic_loss_form"]) == pytest.approx((aic_l, bic_l))
            assert fit["preferred_form_bic"] == preferred_form(bic_p, bic_l)
        else:
            assert (
                math.isnan(fit["aic_loss_form"]) and math.isnan(fit["bic_loss_form"]) and fit["preferred_form_bic"] == "neither"
            )
        # no bootstrap: the bootstrap columns are NaN, not missing
        assert all(math.isnan(fit[c]) for c in ("alpha_boot_se", "alpha_boot_ci_low", "alpha_boot_ci_high"))


@pytest.mark.parametrize("e_true", [2.0, 0.3])  # 0.3: an irreducible loss below 1 nat
def test_loss_form_standard_errors_are_the_asymptotic_formula_at_the_optimum(e_true):
    from newllm.scaling import fit_loss_form

    rng = np.random.default_rng(6)
    tokens = np.geomspace(1e3, 1e6, 8)
    losses = e_true + 30.0 * tokens**-0.4 + rng.normal(0, 0.01, 8)
    fit = fit_loss_form(tokens, losses)
    assert not fit["beta_at_bound"] and not fit["E_at_bound"] and fit["n_points"] == 8
    e, b, beta = fit["E"], fit["B"], fit["beta"]
    resid = losses - (e + b * tokens**-beta)
    assert fit["rss"] == pytest.approx(float(resid @ resid), rel=1e-9)
    # the gradient of the RSS vanishes at the optimum (no parameter at a bound)
    jac = np.column_stack([np.ones(8), tokens**-beta, -b * tokens**-beta * np.log(tokens)])
    np.testing.assert_allclose(jac.T @ resid, 0.0, atol=1e-6 * np.abs(jac).max())
    # cov = (JᵀJ)⁻¹ RSS/(n − 3); SE(E) and SE(β) do not depend on how B is parameterised
    cov = np.linalg.inv(jac.T @ jac) * float(resid @ resid) / 5
    assert fit["E_stderr"] == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-2)
    assert fit["beta_stderr"] == pytest.approx(math.sqrt(cov[2, 2]), rel=1e-2)


def test_a_group_fit_at_another_confidence_uses_it_everywhere():
    # 80 %: percentiles 10 and 90 of the refits, t quantile 0.9, loss-form intervals too
    rng = np.random.default_rng(3)
    tokens = np.geomspace(1e4, 1.6e5, 5)
    x = np.log(tokens)
    losses = 8.0 - 0.4 * x + rng.normal(0, 0.01, 5)
    slopes, intercepts = rng.normal(-0.4, 0.02, 400), rng.normal(8.0, 0.05, 400)
    boot = intercepts[:, None] + slopes[:, None] * x[None, :] + rng.normal(0, 0.01, (400, 5))
    row = fit_scaling_group(tokens, losses, boot, confidence=0.8)
    wide = fit_scaling_group(tokens, losses, boot)
    refit = np.polyfit(x, boot.T, 1)[0]
    assert row["alpha_boot_ci_low"] == pytest.approx(np.percentile(refit, 10))
    assert row["alpha_boot_ci_high"] == pytest.approx(np.percentile(refit, 90))
    half = row["alpha_ci_high"] - row["alpha"]
    assert half == pytest.approx(stats.t.ppf(0.9, 3) * row["alpha_stderr"])
    at_10x = np.exp(np.polyfit(x, boot.T, 1)[1] + refit * math.log(1.6e6))  # 10× the largest size
    assert row["ppl_at_10x_ci_low"] == pytest.approx(np.percentile(at_10x, 10), rel=1e-6)
    from newllm.scaling import loss_form_predict, power_law_prediction_interval

    assert row["ppl_at_10x_pi_low"] == pytest.approx(power_law_prediction_interval(tokens, np.exp(losses), 1.6e6, 0.8)[0])
    assert row["ppl_at_10x_pi_low"] > wide["ppl_at_10x_pi_low"]  # a narrower interval
    lf = row["_boot"]["loss_form"]  # the loss-form refits of the resamples
    assert row["beta_ci_low"] == pytest.approx(np.nanpercentile(lf["beta"], 10))
    at_10x_lf = np.exp(loss_form_predict(lf, np.array([1.6e6]))[:, 0])
    assert row["ppl_at_10x_loss_form_ci_high"] == pytest.approx(np.nanpercentile(at_10x_lf, 90))


def test_fitted_curves_and_their_bands_on_the_grid():
    # one configuration of 5 sizes with noisy bootstrap resamples: the curve grid runs from
    # the smallest size to the last multiple of the largest size (curve_points log-spaced,
    # plus the largest size);
    # bands are the percentiles of the refitted lines (power law) and loss forms
    from newllm.scaling import loss_form_predict

    rng = np.random.default_rng(9)
    tokens = np.geomspace(1e4, 1.6e5, 5)
    x = np.log(tokens)
    losses = 2.0 + 40.0 * tokens**-0.3 + rng.normal(0, 0.01, 5)
    boot = losses[None, :] + rng.normal(0, 0.02, (60, 5))
    points = pd.DataFrame({"model": "cvfp", "variant": "base", "context_dim": 8, "train_tokens": tokens, "test_loss": losses})
    fits, _, curves = fit_points(points, boot, curve_points=7, multiples=[6.25], confidence=0.9)  # to 1e6 tokens
    assert len(fits) == 1
    row = fit_scaling_group(tokens, losses, boot, 0.9, [6.25])
    power = curves[curves["form"] == "power_law"]
    grid = np.unique(np.r_[np.geomspace(1e4, 1e6, 7), 1.6e5])
    np.testing.assert_allclose(power["tokens"], grid)
    np.testing.assert_allclose(np.log(power["ppl"]), math.log(row["A"]) + row["alpha"] * np.log(grid), rtol=1e-9)
    intercepts_slopes = np.polyfit(x, boot.T, 1)  # [2, B]
    lines = intercepts_slopes[1][:, None] + intercepts_slopes[0][:, None] * np.log(grid)[None, :]
    np.testing.assert_allclose(np.log(power["ci_low"]), np.percentile(lines, 5, axis=0), rtol=1e-6)
    np.testing.assert_allclose(np.log(power["ci_high"]), np.percentile(lines, 95, axis=0), rtol=1e-6)
    assert power["extrapolation"].tolist() == [bool(g > 1.6e5) for g in grid]
    loss_form = curves[curves["form"] == "loss_form"]
    centre = loss_form_predict({k: row[k] for k in ("E", "B", "beta")}, grid)
    np.testing.assert_allclose(np.log(loss_form["ppl"]), centre, rtol=1e-6)
    band = loss_form_predict(row["_boot"]["loss_form"], grid)
    np.testing.assert_allclose(np.log(loss_form["ci_high"]), np.nanpercentile(band, 95, axis=0), rtol=1e-6)
    # without a bootstrap the bands are NaN, the curves are still there
    _, _, bare = fit_points(points, None, curve_points=7, multiples=[6.25])
    assert set(bare["form"]) == {"power_law", "loss_form"} and bare["ci_low"].isna().all() and bare["ci_high"].isna().all()


def test_loss_form_input_checks_and_a_token_count_of_one():
    losses = [3.0, 2.5, 2.2, 2.0]
    with pytest.raises(ValueError, match="tokens must be > 0"):
        fit_loss_form([0.0, 10.0, 100.0, 1000.0], losses)
    with pytest.raises(ValueError, match="tokens must be > 0"):
        fit_loss_form([1.0, 10.0, 100.0, 1000.0], [3.0, math.nan, 2.2, 2.0])
    # T = 1 is a valid count: L = 1 + 2·T^(-1/2) through T = 1, 4, 16, 64 (L = 3, 2, 1.5, 1.25)
    fit = fit_loss_form([1.0, 4.0, 16.0, 64.0], [3.0, 2.0, 1.5, 1.25])
    assert (fit["E"], fit["B"], fit["beta"]) == pytest.approx((1.0, 2.0, 0.5), rel=1e-6)


def test_loss_form_honours_narrower_beta_bounds():
    # the data's β = 0.3 lies below the bounds [0.5, 1]: the RSS grows with β beyond 0.3, so the
    # fit sits at β = 0.5 with the least-squares (E, B) of that β (both positive here)
    tokens = np.geomspace(1e3, 1e6, 6)
    losses = 2.0 + 50.0 * tokens**-0.3
    fit = fit_loss_form(tokens, losses, bounds=(0.5, 1.0))
    assert fit["beta"] == pytest.approx(0.5, rel=1e-6) and fit["beta_at_bound"]
    design = np.column_stack([np.ones(6), tokens**-0.5])
    (e, b), *_ = np.linalg.lstsq(design, losses, rcond=None)
    assert e > 0 and b > 0
    assert (fit["E"], fit["B"]) == pytest.approx((e, b), rel=1e-5)
    assert fit["rss"] == pytest.approx(float(((losses - design @ [e, b]) ** 2).sum()), rel=1e-6)
    assert math.isnan(fit["E_stderr"]) and math.isnan(fit["beta_stderr"])


def test_loss_form_extrapolation_and_criteria_at_the_smallest_sizes():
    # exact points of L = 2 + 60·T^(-1/2) up to 10⁶ tokens: with 4 sizes the loss form is
    # recovered, so its PPL at 2× and 10× the largest size is exp(2 + 60/sqrt(2e6)) and
    # exp(2 + 60/sqrt(1e7)); with 2 or 3 sizes it is not fitted (NaN), and with 2 sizes the
    # power law has no residual degree of freedom, so no AIC/BIC either; AICc needs 6 sizes
    for n in (2, 3, 4):
        tokens = np.geomspace(1e4, 1e6, n)
        row = fit_scaling_group(tokens, 2.0 + 60.0 * tokens**-0.5)
        assert (row["tokens_at_2x"], row["tokens_at_10x"]) == pytest.approx((2e6, 1e7))
        if n == 4:
            assert row["ppl_at_2x_loss_form"] == pytest.approx(math.exp(2.0 + 60.0 / math.sqrt(2e6)), rel=1e-6)
            assert row["ppl_at_10x_loss_form"] == pytest.approx(math.exp(2.0 + 60.0 / math.sqrt(1e7)), rel=1e-6)
        else:
            assert math.isnan(row["ppl_at_2x_loss_form"]) and math.isnan(row["ppl_at_10x_loss_form"])
        assert row["preferred_form"] == TOO_FEW_POINTS and math.isnan(row["delta_aicc"])
        if n == 2:
            assert all(math.isnan(row[c]) for c in ("aic_power_law", "bic_power_law", "delta_aic"))
            assert row["preferred_form_aic"] == "neither" and row["preferred_form_bic"] == "neither"
        else:
            assert np.isfinite(row["aic_power_law"]) and np.isfinite(row["bic_power_law"])


def test_fit_points_sorts_groups_keeps_two_size_groups_and_uses_the_targets():
    # rows arrive unsorted; the one-size group sorts first and is skipped without ending the
    # loop; a group of 2 sizes gets the power law (no loss form); one multiple, 2.5× each
    # group's largest size (cvfp: 2·10⁵ tokens, lstm: 5·10⁴)
    rows = [{"model": "lstm", "train_tokens": t, "test_loss": 9.0 - 0.4 * math.log(t)} for t in (2e4, 1e4)]
    rows += [{"model": "cvfp", "train_tokens": t, "test_loss": 9.0 - 0.3 * math.log(t)} for t in (8e4, 1e4, 4e4, 2e4)]
    rows += [{"model": "bigram", "train_tokens": 1e4, "test_loss": 7.0}]
    points = pd.DataFrame(rows)
    fits, extrap, curves = fit_points(points, None, group_by=["model"], multiples=[2.5])
    assert list(fits["model"]) == ["cvfp", "lstm"]
    fits = fits.set_index("model")
    assert fits.loc["lstm", "alpha"] == pytest.approx(-0.4) and fits.loc["cvfp", "alpha"] == pytest.approx(-0.3)
    assert fits.loc["lstm", "n_points"] == 2 and math.isnan(fits.loc["lstm", "E"])
    assert fits.loc["cvfp", "ppl_at_2.5x"] == pytest.approx(math.exp(9.0 - 0.3 * math.log(2e5)))
    # one row per (group, multiple), for every group
    assert list(extrap["model"]) == ["cvfp", "lstm"] and extrap["tokens"].tolist() == [2e5, 5e4]
    lstm_row = extrap.set_index("model").loc["lstm"]
    assert lstm_row["power_law_ppl"] == pytest.approx(math.exp(9.0 - 0.4 * math.log(5e4)))
    assert math.isnan(lstm_row["loss_form_ppl"]) and lstm_row["forms_disagree"] is None
    # default curve: 60 log-spaced points from the smallest size to the multiple, plus the largest size
    assert set(curves.groupby(["model", "form"]).size().items()) == {
        (("cvfp", "power_law"), 61),
        (("cvfp", "loss_form"), 61),
        (("lstm", "power_law"), 61),
    }


def test_fit_table_sorts_groups_and_checks_each_ppl():
    tokens = SIZES
    runs = _two_group_runs((128, 64), 4e4 / tokens, 1e4 * tokens**-0.3)  # 4, 2, 1: a PPL of 1 is a perfect model
    table = fit_table(runs, ["variant", "context_dim"])
    assert list(table["context_dim"]) == [64, 128]
    assert table["alpha"].tolist() == pytest.approx([-0.3, -1.0]) and table["A"].iloc[1] == pytest.approx(4e4)
    runs.loc[5, "val_ppl"] = 0.0
    with pytest.raises(ValueError, match=r"group \('base', 64\): perplexity must be > 0"):
        fit_table(runs, ["variant", "context_dim"])


def test_power_law_rejects_zero_counts_and_has_no_stderr_from_two_points():
    with pytest.raises(ValueError, match="finite and > 0"):
        fit_power_law([0.0, 1e3, 1e4], [30.0, 20.0, 10.0])
    with pytest.raises(ValueError, match="finite and > 0"):
        fit_power_law([1e2, 1e3, 1e4], [30.0, 0.0, 10.0])
    with pytest.raises(ValueError, match="equal length"):
        fit_power_law([1e2, 1e3, 1e4], [30.0, 20.0])
    # two points: an exact line, no residual degree of freedom for a standard error
    fit = fit_power_law([1e3, 1e4], [100.0, 50.0])
    assert math.isnan(fit["alpha_stderr"]) and fit["rss"] == pytest.approx(0.0, abs=1e-20) and fit["n_points"] == 2


def test_nonnegative_line_cases_near_the_bounds_and_row_by_row():
    x = np.array([1.0, 2.0, 3.0])
    # y = 0.5 + x: the interior optimum has 0 < E < 1
    e, b, rss = _nonneg_line(x, 0.5 + x)
    assert (float(e), float(b), float(rss)) == pytest.approx((0.5, 1.0, 0.0), abs=1e-12)
    # y = -0.5 + 0.7x: E < 0 is infeasible; face E = 0: B = x·y/x·x = 6.8/14 < 1,
    # RSS = 3.41 - 6.8²/14 = 0.1071 beats face B = 0 (E = 0.9, RSS = S_yy = 0.98)
    e, b, rss = _nonneg_line(x, np.array([0.2, 0.9, 1.6]))
    assert float(e) == 0.0 and float(b) == pytest.approx(6.8 / 14) and float(rss) == pytest.approx(3.41 - 6.8**2 / 14)
    # y = 1.2 - 0.3x: B < 0 is infeasible; face B = 0: E = ȳ = 0.6 < 1, RSS = S_yy = 0.18
    # beats face E = 0 (B = 3/14, RSS = 1.26 - 9/14 = 0.617)
    e, b, rss = _nonneg_line(x, np.array([0.9, 0.6, 0.3]))
    assert (float(e), float(b), float(rss)) == pytest.approx((0.6, 0.0, 0.18))
    # broadcast over leading axes: the same as one row at a time, for x and y both batched
    xs = np.array([[1.0, 2.0, 3.0], [1.0, 4.0, 9.0]])
    ys = np.array([[0.2, 0.9, 1.6], [0.9, 0.6, 0.3]])
    batched = _nonneg_line(xs, ys)
    for i in range(2):
        np.testing.assert_allclose([v[i] for v in batched], _nonneg_line(xs[i], ys[i]), rtol=1e-12, atol=1e-15)


def test_nonnegative_line_with_a_constant_regressor_fits_the_mean_quietly():
    # x = (T/T_ref)^(-β) = 1 when every token count is T_ref: no slope to fit (B = 0), E = ȳ
    import warnings

    y = np.array([2.0, 3.0, 4.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e, b, rss = _nonneg_line(np.ones(3), y)
    assert (float(e), float(b), float(rss)) == pytest.approx((3.0, 0.0, 2.0))


def test_model_fit_table_keeps_the_keys_and_summary_columns_in_order():
    from newllm.scaling import MODEL_FIT_COLUMNS, model_fit_table

    tokens = np.geomspace(1e4, 8e4, 4)
    points = pd.DataFrame(
        {
            "model": "cvfp",
            "variant": "base",
            "context_dim": 16,
            "train_tokens": tokens,
            "test_loss": 2.0 + 40.0 * tokens**-0.3,
            "undertrained_runs": [1, 0, 0, 0],
        }
    )
    fits, _, _ = fit_points(points, None)
    table = model_fit_table(fits)
    assert list(table.columns) == ["model", "variant", "context_dim", *MODEL_FIT_COLUMNS]
    assert table.iloc[0]["undertrained_points"] == 1 and table.iloc[0]["n_points"] == 4
    # without variant / context_dim / undertrained counts: only the columns there
    fits, _, _ = fit_points(points.drop(columns="undertrained_runs"), None, group_by=["model"])
    assert list(model_fit_table(fits).columns) == ["model", *MODEL_FIT_COLUMNS[:-1]]


def test_loss_form_flags_a_decay_faster_than_the_upper_beta_bound():
    # L = 2 + 10¹²·T^(-4): β = 4 lies above BETA_BOUNDS[1] = 3; the RSS falls with β up to the
    # bound, so the fit sits at β = 3 (flagged, no standard errors)
    tokens = np.geomspace(1e3, 1e5, 5)
    losses = 2.0 + 1e12 * tokens**-4.0
    fit = fit_loss_form(tokens, losses)
    assert fit["beta"] == pytest.approx(3.0, rel=1e-6) and fit["beta_at_bound"] and not fit["E_at_bound"]
    assert math.isnan(fit["E_stderr"]) and math.isnan(fit["beta_stderr"])
    batch = fit_loss_form_batch(tokens, losses)
    assert batch["beta"][0] == pytest.approx(3.0, rel=1e-6)
    design = np.column_stack([np.ones(5), tokens**-3.0])  # least squares of (E, B) at β = 3
    (e, b), *_ = np.linalg.lstsq(design, losses, rcond=None)
    assert (fit["E"], fit["B"]) == pytest.approx((e, b), rel=1e-6)
