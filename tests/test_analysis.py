"""Study-level analyses: expected values from hand computation, identities and Monte-Carlo."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from newllm.analysis import (
    baselines_table,
    comparison_table,
    effective_n,
    fisher_interval,
    intraclass_correlation,
    matched_values,
    prediction_analysis,
    ratio_table,
    run_key,
    run_rows,
    sliding_window_fits,
    verdict,
    verdict_html,
    verdict_markdown,
    window_fits,
)
from newllm.scaling import fit_points

# ----------------------------------------------------------------------------- runs table
SUMMARY = dict(
    train_tokens=1000,
    dev_loss=5.0,
    dev_ppl=math.exp(5.0),
    dev_accuracy=0.1,
    test_loss=5.1,
    test_ppl=math.exp(5.1),
    test_accuracy=0.11,
    test_tokens=99,
    parameters=1234,
    train_flops=6e9,
    train_seconds=2.5,
    steps=300,
    best_step=200,
    stopped_by="max_steps",
    undertrained=True,
)


def _metrics(model, **run):
    return {"run": {"model": model, **run}, "summary": dict(SUMMARY)}


def test_run_key_parses_the_contract_directory():
    assert run_key("results/s/runs/untrained_context/tok2/samples40_ctx64_seed2/phase2/metrics.json") == {
        "model": "untrained_context",
        "variant": "tok2",
        "samples": 40,
        "context_dim": 64,
        "seed": 2,
    }
    with pytest.raises(ValueError, match="not inside a run directory"):
        run_key("results/s/tables/runs.csv")


def test_run_rows_maps_every_model_and_merges_cvfp_files():
    d = "results/s/runs"
    cvfp = f"{d}/cvfp/base/samples20_ctx16_seed1"
    metrics = {
        f"{cvfp}/phase2/metrics.json": _metrics("cvfp", seed=1),
        f"{d}/ngram/base/samples20_ctx0_seed0/lm/metrics.json": _metrics("ngram"),
    }
    phase1 = {
        f"{cvfp}/phase1/metrics.json": {
            "config": {
                "model": {"num_input_tokens": 2, "num_layers": 1, "ffn_layers": 1, "activation": "gelu"},
                "phase1": {"dist_reg_weight": 0.9, "diversity": "mcdl"},
            },
            "summary": {"iterations": 17, "stopped_by": "val_er"},
        }
    }
    caches = {
        f"{cvfp}/context_cache/cache.json": {
            "method": "jacobi",
            "train": {"effective_rank": 12.0, "effective_rank_pct": 75.0},
            "dev": {"effective_rank": 11.0, "effective_rank_pct": 68.75},
        }
    }
    runs, diagnostics = run_rows(metrics, phase1, caches)
    assert list(runs["model"]) == ["cvfp", "ngram"]  # study order
    row = runs.iloc[0]
    assert (row["variant"], row["samples"], row["context_dim"], row["seed"]) == ("base", 20, 16, 1)
    assert row["test_loss"] == 5.1 and row["parameters"] == 1234 and bool(row["undertrained"]) is True
    assert row["phase1_iterations"] == 17 and row["num_input_tokens"] == 2
    assert row["dev_er_pct"] == 68.75 and row["train_dev_er_gap_pct"] == pytest.approx(75.0 - 68.75)
    assert math.isnan(runs.iloc[1]["dev_er_pct"]) and len(diagnostics) == 0
    # a cache written before the validation -> dev rename reads the same
    old = {k: {"train": v["train"], "validation": v["dev"]} for k, v in caches.items()}
    assert run_rows(metrics, phase1, old)[0].iloc[0]["dev_er_pct"] == 68.75


def test_run_rows_refuses_contract_violations():
    path = "results/s/runs/lstm/base/samples20_ctx16_seed0/lm/metrics.json"
    broken = _metrics("lstm")
    del broken["summary"]["train_flops"]
    with pytest.raises(ValueError, match="train_flops"):
        run_rows({path: broken})
    with pytest.raises(ValueError, match="lies in the directory"):
        run_rows({path: _metrics("transformer")})


# ----------------------------------------------------------------------------- sliding windows
def test_sliding_windows_recover_alpha_per_window():
    # a broken power law: α = -0.5 up to 8e4 tokens (4 sizes), then -0.2 (continuous at the break)
    tokens = np.array([1e4, 2e4, 4e4, 8e4, 1.6e5, 3.2e5, 6.4e5])
    ppl = np.where(tokens <= 8e4, 1e4 * tokens**-0.5, 1e4 * 8e4**-0.5 * (tokens / 8e4) ** -0.2)
    points = pd.DataFrame({"config": "x", "train_tokens": tokens, "test_ppl": ppl})
    windows = sliding_window_fits(points, ["config"], window=4, step=1)
    assert list(windows["window"]) == [0, 1, 2, 3] and (windows["n_points"] == 4).all()
    assert list(windows["shared_points"]) == [0, 3, 3, 3]
    assert windows["alpha"].iloc[0] == pytest.approx(-0.5)
    assert windows["alpha"].iloc[3] == pytest.approx(-0.2)
    assert windows["delta_alpha"].iloc[2] == pytest.approx(windows["alpha"].iloc[2] - windows["alpha"].iloc[1])
    assert math.isnan(windows["delta_alpha"].iloc[0])
    assert windows["tokens_min"].iloc[1] == 2e4 and windows["tokens_max"].iloc[1] == 1.6e5
    assert len(sliding_window_fits(points, ["config"], window=4, step=3)) == 2
    assert len(sliding_window_fits(points.iloc[:3], ["config"], window=4)) == 0  # too few sizes: no window
    with pytest.raises(ValueError, match=">= 4"):
        sliding_window_fits(points, ["config"], window=3)


def test_window_standard_errors_by_hand():
    # 5 equally spaced x, windows of 4: c_0 = (-1.5, -0.5, 0.5, 1.5, 0)/5, c_1 = (0, -1.5, -0.5, 0.5, 1.5)/5
    x = np.arange(5.0)
    y = np.array([0.0, 1.1, 1.9, 3.2, 3.9])
    fit = window_fits(x, y, 4, 1)
    c0, c1 = np.array([-1.5, -0.5, 0.5, 1.5, 0]) / 5, np.array([0, -1.5, -0.5, 0.5, 1.5]) / 5
    np.testing.assert_allclose(fit["weights"], [c0, c1])
    assert fit["alpha"][0] == pytest.approx(c0 @ y) and fit["alpha"][1] == pytest.approx(c1 @ y)
    rss = []
    for w, c in enumerate((c0, c1)):
        part = slice(w, w + 4)
        resid = y[part] - y[part].mean() - (c @ y) * (x[part] - x[part].mean())
        rss.append((resid**2).sum())
        assert fit["alpha_stderr"][w] == pytest.approx(math.sqrt(rss[-1] / 2 / 5))  # S_xx = 5
    sigma2 = (rss[0] + rss[1]) / 4
    assert fit["delta_alpha_stderr"][1] == pytest.approx(math.sqrt(sigma2 * ((c1 - c0) ** 2).sum()))


def test_delta_alpha_standard_error_matches_monte_carlo_and_beats_the_independent_formula():
    rng = np.random.default_rng(0)
    x = np.log(1e4 * 2.0 ** np.arange(6))
    sigma = 0.05
    y = 9.0 - 0.4 * x + rng.normal(0, sigma, (20000, x.size))
    fit = window_fits(x, y, 4, 1)
    delta = fit["delta_alpha"][:, 1]
    empirical = delta.var()
    exact = sigma**2 * ((fit["weights"][1] - fit["weights"][0]) ** 2).sum()
    assert empirical == pytest.approx(exact, rel=0.03)
    assert (fit["delta_alpha_stderr"][:, 1] ** 2).mean() == pytest.approx(empirical, rel=0.03)  # σ̂² is unbiased
    independent = (fit["alpha_stderr"][:, 0] ** 2 + fit["alpha_stderr"][:, 1] ** 2).mean()
    # overlapping by 3 of 4 equally spaced points: c_0·c_1 = ‖c‖²/4, so the independent formula
    # overstates the variance by ‖c_0‖² + ‖c_1‖² over ‖c_1 − c_0‖² = 0.4 / 0.3
    assert independent / empirical == pytest.approx(4 / 3, rel=0.04)


# ----------------------------------------------------------------------------- points tables
def _points(losses, models=None, dims=None, samples=None, **extra):
    n = len(losses)
    frame = pd.DataFrame(
        {
            "model": models or ["cvfp"] * n,
            "variant": "base",
            "context_dim": dims or [16] * n,
            "samples": samples or [10] * n,
            "test_loss": losses,
            **extra,
        }
    )
    frame["test_ppl"] = np.exp(frame["test_loss"])
    frame["n_seeds"] = 1
    return frame


def test_ratio_table_uses_the_shared_resamples():
    points = _points([3.0, 3.2, 3.5], models=["cvfp", "lstm", "ngram"], dims=[16, 16, 0], train_tokens=[1e4] * 3)
    rng = np.random.default_rng(1)
    common = rng.normal(0, 0.1, (400, 1))  # the test set's difficulty, shared by every model
    own = rng.normal(0, 0.01, (400, 3))
    boot = points["test_loss"].to_numpy() + common + own
    table = ratio_table(points, boot, "base").set_index("model")
    assert set(table.index) == {"lstm", "ngram"}
    assert table.loc["lstm", "ratio"] == pytest.approx(math.exp(0.2))
    d = boot[:, 1] - boot[:, 0]
    assert table.loc["lstm", "ratio_ci_low"] == pytest.approx(math.exp(np.percentile(d, 2.5)))
    assert table.loc["lstm", "percent_difference"] == pytest.approx(100 * (math.exp(0.2) - 1))
    # the shared difficulty cancels: the ratio's interval is ~10x narrower than each PPL's
    assert math.log(table.loc["lstm", "ratio_ci_high"] / table.loc["lstm", "ratio_ci_low"]) < 0.1
    assert table.loc["ngram", "reference_context_dim"] == 16  # no context_dim: compared at every cvfp dim


def test_baselines_table_lists_every_model_in_study_order():
    points = _points(
        [3.0, 3.1, 3.2, 3.3],
        models=["transformer", "cvfp", "ngram", "no_context"],
        dims=[16, 16, 0, 16],
        dev_loss=[3.0, 3.1, 3.2, 3.3],
    )
    table = baselines_table(points)
    assert list(table["model"]) == ["cvfp", "no_context", "ngram", "transformer"]
    assert table["dev_ppl"].tolist() == pytest.approx(np.exp([3.1, 3.3, 3.2, 3.0]).tolist())


def test_matched_values_by_hand():
    # A covers 1..9 GFLOP, B 2..18: values covered by both are 2, 3, 6, 9 -> the largest, 9
    curves = {
        "A": (np.array([1.0, 3.0, 9.0]), np.array([3.0, 2.6, 2.2]), None),
        "B": (np.array([2.0, 6.0, 18.0]), np.array([3.1, 2.7, 2.3]), None),
    }
    x_star, values = matched_values(curves)
    assert x_star == 9.0
    assert values["A"]["loss"] == pytest.approx(2.2) and values["A"]["how"] == "interpolated"
    w = math.log(9 / 6) / math.log(18 / 6)  # linear in ln x between 6 and 18
    assert values["B"]["loss"] == pytest.approx(2.7 + w * (2.3 - 2.7))
    # single configurations: within 10 % counts as matched, 60 % away does not
    x_star, values = matched_values(
        {"cvfp": ([50_000.0], [3.0], None), "lstm": ([52_000.0], [2.9], None), "ngram": ([80_000.0], [3.5], None)}
    )
    assert x_star == 52_000.0 and values["cvfp"]["how"] == "within 10 %" and values["ngram"]["how"] == "not covered"
    assert math.isnan(values["ngram"]["loss"])


def test_comparison_table_carries_alpha_uncertainty_and_matched_ppl():
    rows, tokens = [], np.array([1e4, 2e4, 4e4, 8e4])
    for model, alpha, params, flop_factor in (("cvfp", -0.3, 5000, 1.0), ("lstm", -0.35, 5200, 3.0)):
        for i, t in enumerate(tokens):
            rows.append(
                {
                    "model": model,
                    "variant": "base",
                    "context_dim": 16,
                    "samples": 10 * 2**i,
                    "train_tokens": t,
                    "test_loss": 9.0 + alpha * math.log(t),
                    "dev_loss": 9.0 + alpha * math.log(t),
                    "n_seeds": 1,
                    "parameters": params,
                    "train_flops": 6 * params * t * flop_factor,
                    "test_accuracy": 0.1,
                }
            )
    points = pd.DataFrame(rows)
    points["test_ppl"] = np.exp(points["test_loss"])
    boot = points["test_loss"].to_numpy() + np.random.default_rng(2).normal(0, 0.01, (200, len(points)))
    fits, _, _ = fit_points(points, boot)
    runs = points.assign(seed=0, undertrained=False)
    table = comparison_table(runs, points, boot, fits).set_index("model")
    assert "ppl_per_million_parameters" not in table
    for column in ("alpha_stderr", "alpha_ci_low", "alpha_ci_high", "alpha_boot_ci_low", "alpha_boot_ci_high"):
        assert table.loc["cvfp", column] == pytest.approx(fits.set_index("model").loc["cvfp", column])
    # FLOPs: cvfp spans 3e8..2.4e9, lstm 9.36e8..7.5e9; the largest value both reach is cvfp's
    # 2.4e9, where lstm is interpolated between its 2nd and 3rd sizes (linear in ln FLOPs)
    f_star = 6 * 5000 * 8e4
    assert table.loc["cvfp", "matched_flops"] == pytest.approx(f_star)
    f = 6 * 5200 * 3 * np.array([2e4, 4e4])
    w = math.log(f_star / f[0]) / math.log(f[1] / f[0])
    expected = (9 - 0.35 * math.log(2e4)) * (1 - w) + (9 - 0.35 * math.log(4e4)) * w
    assert table.loc["lstm", "ppl_at_matched_flops"] == pytest.approx(math.exp(expected))
    assert table.loc["cvfp", "ppl_at_matched_flops"] == pytest.approx(math.exp(9 - 0.3 * math.log(8e4)))
    # parameters: 5000 vs 5200 (4 % apart): both matched at the larger, read as measured
    assert table.loc["cvfp", "matched_parameters"] == 5200 and table.loc["cvfp", "parameters_match"] == "within 10 %"
    assert table.loc["lstm", "ppl_at_matched_parameters"] == pytest.approx(math.exp(9 - 0.35 * math.log(8e4)))


# ----------------------------------------------------------------------------- prediction
def test_intraclass_correlation_and_fisher_interval_by_hand():
    # clusters a: 1, 3; b: 5, 7 -> MSB = 16, MSW = 2, m0 = 2: ICC = (16 - 2)/(16 + 2)
    assert intraclass_correlation(np.array([1.0, 3.0, 5.0, 7.0]), np.array(["a", "a", "b", "b"])) == pytest.approx(14 / 18)
    # equal cluster means: no between-cluster variance -> 0
    assert intraclass_correlation(np.array([1.0, 3.0, 3.0, 1.0]), np.array(["a", "a", "b", "b"])) == 0.0
    lo, hi = fisher_interval(0.5, 28, controlled=1)  # half-width 1.959964 / sqrt(24) on atanh
    assert lo == pytest.approx(math.tanh(math.atanh(0.5) - 1.959964 / math.sqrt(24)), rel=1e-6)
    assert hi == pytest.approx(math.tanh(math.atanh(0.5) + 1.959964 / math.sqrt(24)), rel=1e-6)
    assert math.isnan(fisher_interval(0.5, 4, controlled=1)[0])


def test_effective_n_runs_from_clusters_to_runs():
    clusters = np.repeat(["a", "b", "c", "d"], 5)
    cluster_level = np.repeat([1.0, 2.0, 4.0, 3.0], 5)  # x and y constant within a cluster: ICC 1
    assert effective_n(cluster_level, cluster_level * 2, clusters) == pytest.approx(4.0)
    within = np.tile([1.0, 2.0, 3.0, 4.0, 5.0], 4)  # identical cluster means: ICC 0
    assert effective_n(within, within, clusters) == pytest.approx(20.0)


def _runs():
    rng = np.random.default_rng(0)
    rows = []
    for variant, er_shift in (("base", 0.0), ("tok2", 5.0)):
        for dim in (64, 128):
            for k, tokens in enumerate([1e4, 2e4, 4e4, 8e4]):
                for seed in (0, 1):
                    er = 60 + er_shift + dim / 64 + rng.normal(0, 2)
                    rows.append(
                        {
                            "model": "cvfp",
                            "variant": variant,
                            "context_dim": dim,
                            "samples": 25 * 2**k,
                            "seed": seed,
                            "train_tokens": tokens,
                            # known relation: ln PPL = -0.4 ln tokens - 0.02 ER + 11
                            "test_loss": -0.4 * math.log(tokens) - 0.02 * er + 11,
                            "dev_er_pct": er,
                            "train_er_pct": er + 1,
                            "train_dev_er_gap_pct": 1.0,
                            "phase1_iterations": 60,
                        }
                    )
    frame = pd.DataFrame(rows)
    frame["test_ppl"] = np.exp(frame["test_loss"])
    return frame


def test_prediction_recovers_a_known_relation():
    runs = _runs()
    result = prediction_analysis(runs)
    ll = result["log_linear"]
    assert (ll["alpha"], ll["beta"], ll["gamma"]) == pytest.approx((-0.4, -0.02, 11), abs=1e-7)
    assert ll["r2"] == pytest.approx(1.0) and ll["n_clusters"] == 4
    corr = {c["predictor"]: c for c in result["correlations"]}
    er = corr["dev_er_pct"]
    # with ln tokens partialled out, y = -0.02·ER exactly: the within-size correlation is -1,
    # while pooled over sizes the size effect dilutes it
    assert er["partial_r"] == pytest.approx(-1.0, abs=1e-9)
    from scipy import stats

    x, y = runs["dev_er_pct"].to_numpy(), runs["test_loss"].to_numpy()
    assert er["pearson_r"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12) and -0.6 < er["pearson_r"] < 0.0
    assert er["spearman_rho"] == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    # |partial r| = 1: the Fisher interval is undefined, the effective n is Kish's formula
    assert math.isnan(er["partial_r_ci_low"]) and math.isnan(er["partial_r_ci_high"])
    design = np.column_stack([np.ones(32), np.log(runs["train_tokens"])])
    xr = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    yr = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    clusters = (runs["variant"] + runs["context_dim"].astype(str)).to_numpy()
    assert er["n_eff"] == pytest.approx(effective_n(xr, yr, clusters), rel=1e-9) and 4 <= er["n_eff"] < 32
    means = pd.DataFrame({"c": clusters, "x": x, "y": yr}).groupby("c").mean()
    assert er["config_r"] == pytest.approx(np.corrcoef(means["x"], means["y"])[0, 1], abs=1e-9)
    assert er["n_runs"] == 32 and er["n_configurations"] == 4
    assert math.isnan(corr["phase1_iterations"]["partial_r"])  # constant column: undefined, not 0
    assert not any("p_value" in k or k.endswith("_p") for k in er) and "not independent" in er["note"]
    ref = stats.linregress(runs["dev_er_pct"], runs["test_ppl"])
    assert result["linear"]["b"] == pytest.approx(ref.slope) and result["linear"]["a"] == pytest.approx(ref.intercept)


def test_partial_correlation_equals_the_textbook_formula_on_noisy_data():
    runs = _runs()
    runs["test_loss"] += np.random.default_rng(5).normal(0, 0.05, len(runs))
    er = {c["predictor"]: c for c in prediction_analysis(runs)["correlations"]}["dev_er_pct"]
    x, y, z = runs["dev_er_pct"], runs["test_loss"], np.log(runs["train_tokens"])
    r = np.corrcoef([x, y, z])
    textbook = (r[0, 1] - r[0, 2] * r[1, 2]) / math.sqrt((1 - r[0, 2] ** 2) * (1 - r[1, 2] ** 2))
    assert er["partial_r"] == pytest.approx(textbook)
    assert er["partial_r_ci_low"] < er["partial_r"] < er["partial_r_ci_high"]


# ----------------------------------------------------------------------------- verdict
def _verdict_inputs():
    # at the largest size: cvfp 16-d (dev-best) PPL 100; cvfp 32-d has the better test PPL but a
    # worse dev loss, so it must not be chosen.  lstm is dev-best of the baselines although the
    # transformer is better on test.
    entries = [
        ("cvfp", 16, 100.0, 4.0),
        ("cvfp", 32, 90.0, 4.5),
        ("no_context", 16, 125.0, 5.0),
        ("lstm", 16, 80.0, 3.0),
        ("transformer", 16, 70.0, 3.5),
        ("ngram", 0, 160.0, 6.0),
    ]
    rows = []
    for model, dim, ppl, dev in entries:
        for samples, shrink in ((10, 2.0), (20, 1.0)):
            rows.append(
                {
                    "model": model,
                    "variant": "base",
                    "context_dim": dim,
                    "samples": samples,
                    "train_tokens": samples * 1000,
                    "test_loss": math.log(ppl * shrink),
                    "dev_loss": dev + math.log(shrink),
                    "n_seeds": 1,
                }
            )
    points = pd.DataFrame(rows)
    points["test_ppl"] = np.exp(points["test_loss"])
    points["test_ppl_ci_low"], points["test_ppl_ci_high"] = points["test_ppl"] * 0.9, points["test_ppl"] * 1.1
    # a test-set effect shared by every model: differences between models are exact
    boot = points["test_loss"].to_numpy() + np.random.default_rng(0).normal(0, 0.1, (300, 1))
    fits = pd.DataFrame(
        [
            {
                "model": m,
                "variant": "base",
                "context_dim": d,
                "alpha": -0.1 * (i + 1),
                "alpha_boot_ci_low": -0.1 * (i + 1) - 0.01,
                "alpha_boot_ci_high": -0.1 * (i + 1) + 0.01,
                "alpha_ci_low": np.nan,
                "alpha_ci_high": np.nan,
                "preferred_form": "power_law",
                "n_points": 2,
            }
            for i, (m, d, _, _) in enumerate(entries)
        ]
    )
    runs = pd.DataFrame({"model": ["cvfp", "lstm", "lstm"], "undertrained": [False, True, False]})
    return points, boot, fits, runs


def test_verdict_is_computed_from_the_numbers_with_dev_selection():
    points, boot, fits, runs = _verdict_inputs()
    v = verdict(points, boot, fits, runs, "base", test_set={"conversations": 50, "targets": 9000}, resamples=300)
    assert v["reference_context_dim"] == 16 and v["samples"] == 20 and v["reference_ppl"] == pytest.approx(100.0)
    comps = {c["model"]: c for c in v["comparisons"]}
    assert comps["no_context"]["percent"] == pytest.approx(-20.0)  # 100/125 - 1
    assert comps["no_context"]["percent_ci"] == pytest.approx([-20.0, -20.0])
    assert comps["lstm"]["percent"] == pytest.approx(25.0)  # 100/80 - 1
    assert comps["ngram"]["context_dim"] == 0 and comps["ngram"]["percent"] == pytest.approx(-37.5)
    assert v["best_baseline"]["model"] == "lstm" and v["best_baseline"]["outcome"] == "loses"
    assert [a["model"] for a in v["alphas"]] == ["cvfp", "no_context", "ngram", "lstm", "transformer"]
    assert v["alphas"][0]["alpha"] == pytest.approx(-0.1)  # the dev-chosen 16-d fit, not the 32-d one
    text = verdict_markdown(v)
    assert "test PPL 100.0 [90.0, 110.0]" in text
    assert "20.0 % [20.0, 20.0] below no_context (16-d)" in text and "25.0 % [25.0, 25.0] above lstm (16-d)" in text
    assert "does not beat the best baseline, lstm" in text and "lstm 1/2 runs" in text
    assert "50 test conversations" in text and "one training seed" in text
    assert "<h2>Verdict</h2>" in verdict_html(text)
    json.dumps(v, allow_nan=False)  # JSON-ready


def test_verdict_says_beats_only_when_the_whole_interval_is_below_zero():
    points, boot, fits, runs = _verdict_inputs()
    points.loc[points["model"].isin(["lstm", "transformer", "ngram"]), "test_loss"] += math.log(2.0)  # baselines 2x worse
    boot = points["test_loss"].to_numpy() + np.random.default_rng(0).normal(0, 0.1, (300, 1))
    v = verdict(points, boot, fits, runs, "base")
    assert v["best_baseline"]["outcome"] == "beats" and v["best_baseline"]["percent"] == pytest.approx(100 * (100 / 160 - 1))
    noisy = boot + np.random.default_rng(1).normal(0, 0.5, boot.shape)  # independent noise swamps the gap
    assert verdict(points, noisy, fits, runs, "base")["best_baseline"]["outcome"] == "inconclusive"


def test_verdict_places_every_model_against_the_frozen_heads_own_lm():
    points, boot, fits, runs = _verdict_inputs()
    head = {"source": "bigram", "test_ppl": 115.0, "train_tokens": 464000, "test_tokens": 9000}
    # unpaired: intervals are ±10 % of PPL: cvfp [90, 110] and lstm [72, 88] lie below 115,
    # no_context [112.5, 137.5] straddles it, ngram (160) lies above
    v = verdict(points, boot, fits, runs, "base", head_reference=head)
    models = v["head_reference"]["models"]
    assert {m: r["place"] for m, r in models.items()} == {
        "cvfp": "below",
        "no_context": "within",
        "ngram": "above",
        "lstm": "below",
        "transformer": models["transformer"]["place"],
    }
    assert models["cvfp"]["percent"] == pytest.approx(100 * (100 / 115 - 1))
    assert models["cvfp"]["percent_ci"] == pytest.approx([100 * (90 / 115 - 1), 100 * (110 / 115 - 1)])
    assert v["head_reference"]["interval"] == "the model's own interval"
    # paired: the head shares the test-set effect of every resample (boot's common noise),
    # so the difference is exact and no_context's 8.7 % above the head is clearly above
    head_boot = math.log(115.0) + (boot[:, 0] - boot[0, 0] + (boot[0, 0] - points.loc[0, "test_loss"]))
    v = verdict(points, boot, fits, runs, "base", head_reference=head, head_boot=head_boot)
    models = v["head_reference"]["models"]
    assert v["head_reference"]["interval"] == "paired bootstrap"
    assert models["no_context"]["place"] == "above" and models["no_context"]["percent"] == pytest.approx(100 * (125 / 115 - 1))
    assert models["no_context"]["percent_ci"] == pytest.approx([100 * (125 / 115 - 1)] * 2, abs=1e-6)
    text = verdict_markdown(v)
    assert "own bigram LM, trained on 464,000 tokens" in text and "test PPL 115.0" in text
    assert "paired bootstrap" in text and "cvfp 13.0 % [13.0, 13.0] below it" in text
    assert "Not clearly below it: no_context, ngram" in text
    assert verdict(points, boot, fits, runs, "base")["head_reference"] is None  # no LM of its own: no line
    assert "Frozen-head" not in verdict_markdown(verdict(points, boot, fits, runs, "base", head_reference={"source": "gpt2"}))


# ----------------------------------------------------------------------------- figures
def test_phase1_overview_draws_one_line_per_size_whatever_the_study(tmp_path):
    """30 runs (2 models x 3 context_dims x 5 sizes) and a second seed: the overview shows
    the 5 cvfp runs at the largest context_dim (every run has its own figure: the e2e test)."""
    from newllm.plots import plot_phase1_curves

    rows = [
        {"model": m, "variant": "base", "context_dim": d, "samples": n, "seed": seed, "iteration": it, "cvfp_loss": 1.0 / it}
        for m in ("untrained_context", "cvfp")
        for d in (768, 1537, 1200)
        for n in (50, 100, 200, 400, 800)
        for seed in (1, 0)
        for it in (1, 2, 3)
    ]
    labels = plot_phase1_curves(pd.DataFrame(rows), tmp_path / "overview.png")
    assert labels == [f"{n} samples" for n in (50, 100, 200, 400, 800)]
    assert "cvfp, 1537-d" in (tmp_path / "overview.svg").read_text() and "seed 0" in (tmp_path / "overview.svg").read_text()


def test_figures_show_every_model_and_write_svg(tmp_path):
    from newllm.plots import _errorbars, format_count, plot_ppl_ratio, plot_scaling, plot_sliding_alpha

    rows = []
    for model, dim, offset in (("cvfp", 16, 0.0), ("no_context", 16, 0.2), ("ngram", 0, 0.4), ("lstm", 16, -0.1)):
        for i, t in enumerate([1e4, 2e4, 4e4, 8e4]):
            loss = 9 - 0.3 * math.log(t) + offset
            rows.append(
                {
                    "model": model,
                    "variant": "base",
                    "context_dim": dim,
                    "samples": 10 * 2**i,
                    "train_tokens": t,
                    "test_loss": loss,
                    "test_ppl": math.exp(loss),
                    "test_ppl_ci_low": math.exp(loss - 0.05),
                    "test_ppl_ci_high": math.exp(loss + 0.05),
                    "undertrained_runs": int(model == "lstm" and i == 3),
                }
            )
    points = pd.DataFrame(rows)
    boot = points["test_loss"].to_numpy() + np.random.default_rng(0).normal(0, 0.02, (100, len(points)))
    fits, _, curves = fit_points(points, boot)
    labels = plot_scaling(points, fits, curves, tmp_path / "scaling.png")
    assert {label.split(" ")[0].rstrip(":") for label in labels} == {"cvfp", "no_context", "ngram", "lstm"}
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG" and (
        tmp_path / "scaling.svg"
    ).read_text().lstrip().startswith("<?xml")
    with_head = plot_scaling(points, fits, curves, tmp_path / "head.png", head_reference={"source": "bigram", "test_ppl": 150.0})
    assert with_head == labels + ["frozen head's own bigram LM (embedding slice only)"]
    ratio_labels = plot_ppl_ratio(ratio_table(points, boot, "base"), tmp_path / "ratio.png")
    assert {label.split(" ")[0] for label in ratio_labels} == {"no_context", "ngram", "lstm"}
    assert (tmp_path / "ratio.svg").exists()
    # a window without an interval gets no bar: NaN, never a zero-length bar
    np.testing.assert_array_equal(_errorbars(np.array([1.0, 2.0]), [np.nan, 1.5], [np.nan, 2.5]), [[np.nan, 0.5], [np.nan, 0.5]])
    windows = pd.DataFrame(
        {
            "model": "cvfp",
            "variant": "base",
            "context_dim": 16,
            "tokens_min": [1e4, 2e4],
            "tokens_max": [4e4, 8e4],
            "alpha": [-0.3, -0.25],
            "alpha_stderr": [np.nan, np.nan],
            "alpha_ci_low": np.nan,
            "alpha_ci_high": np.nan,
        }
    )
    plot_sliding_alpha(windows, tmp_path / "sliding.png")
    assert (tmp_path / "sliding.svg").exists()
    assert [format_count(v) for v in (500, 2e4, 1e6, 1.5e6, 3e9)] == ["500", "20k", "1M", "1.5M", "3G"]
