"""Study-level analyses: expected values from hand computation, identities and Monte-Carlo."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from newllm.analysis import (
    ALPHA_DIFFERENCE_COLUMNS,
    NO_P_VALUES,
    alpha_differences,
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
    tag_history,
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


def _phase1_record(num_layers: int, ffn_layers: int, **summary) -> dict:
    """A cvfp run's phase1/metrics.json: N_in 2, 17 iterations stopped by val_er, plus ``summary``."""
    return {
        "config": {
            "model": {"num_input_tokens": 2, "num_layers": num_layers, "ffn_layers": ffn_layers, "activation": "gelu"},
            "phase1": {"dist_reg_weight": 0.9, "diversity": "mcdl"},
        },
        "summary": {"iterations": 17, "stopped_by": "val_er", **summary},
    }


def test_run_rows_maps_every_model_and_merges_cvfp_files():
    d = "results/s/runs"
    cvfp = f"{d}/cvfp/base/samples20_ctx16_seed1"
    metrics = {
        f"{cvfp}/phase2/metrics.json": _metrics("cvfp", seed=1),
        f"{d}/ngram/base/samples20_ctx0_seed0/lm/metrics.json": _metrics("ngram"),
    }
    phase1 = {f"{cvfp}/phase1/metrics.json": _phase1_record(num_layers=1, ffn_layers=1)}
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
    from newllm.plots import errorbars, format_count, plot_ppl_ratio, plot_scaling, plot_sliding_alpha

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
    np.testing.assert_array_equal(errorbars(np.array([1.0, 2.0]), [np.nan, 1.5], [np.nan, 2.5]), [[np.nan, 0.5], [np.nan, 0.5]])
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


# ----------------------------------------------------------------------------- runs table, every column
def test_run_rows_copies_every_phase1_cache_and_diagnostics_field():
    d = "results/s/runs"
    cvfp = f"{d}/cvfp/base/samples20_ctx16_seed1"
    summary = dict(SUMMARY, undertrained=0, context_block_parameters=111, token_block_parameters=222)
    metrics = {
        f"{d}/cvfp/base/samples40_ctx16_seed0/phase2/metrics.json": _metrics("cvfp"),
        f"{cvfp}/phase2/metrics.json": {"run": {"model": "cvfp", "seed": "1", "samples": 20}, "summary": summary},
        f"{d}/mystery/base/samples10_ctx16_seed0/lm/metrics.json": _metrics("mystery"),
        f"{d}/lstm/base/samples10_ctx16_seed0/lm/metrics.json": _metrics("lstm"),
    }
    phase1 = {
        f"{cvfp}/phase1/metrics.json": _phase1_record(
            num_layers=3,
            ffn_layers=4,
            final_cvfp_loss=0.01,
            final_diversity_loss=-0.5,
            train_convergence_rate=0.93,
            train_convergence=0.91,
            val_convergence_rate=0.83,  # written before the validation -> dev rename
            val_convergence=0.81,
            seconds=12.5,
            tokens_per_s=1000.0,
        )
    }
    caches = {
        f"{cvfp}/context_cache/cache.json": {
            "method": "jacobi",
            "train": {"effective_rank": 12.0, "effective_rank_pct": 75.0, "converged": True},
            "dev": {"effective_rank": 11.0, "effective_rank_pct": 68.75, "converged": False},
        }
    }
    criteria = [{"name": "max_abs_diff", "value": 1e-6, "passed": True}, {"name": "cosine", "value": 0.5, "passed": False}]
    diagnostics = {
        f"{cvfp}/diagnostics/phase1_diagnostics.json": {
            "identity_check": {"passed": False, "criteria": criteria},
            "cvfp_convergence_check": {"verdict": "converged", "slope": -0.1, "std": 0.02},
            "quality": {"band": "good", "overfitting_suspected": True},
            "train_effective_rank_pct": 75.0,
            "val_effective_rank_pct": 68.75,
            "train_convergence": 0.91,
            "val_convergence": 0.81,
            "final_cvfp_loss": 0.01,
            "iterations": 17,
        }
    }
    runs, diag = run_rows(metrics, phase1, caches, diagnostics)
    # study order, then samples; an unknown model last
    assert list(zip(runs["model"], runs["samples"])) == [("cvfp", 20), ("cvfp", 40), ("lstm", 10), ("mystery", 10)]
    row = runs.iloc[0].to_dict()
    expected = {
        "seed": 1,
        "undertrained": False,
        "context_block_parameters": 111,
        "token_block_parameters": 222,
        "num_input_tokens": 2,
        "num_layers": 3,
        "ffn_layers": 4,
        "activation": "gelu",
        "dist_reg_weight": 0.9,
        "diversity": "mcdl",
        "phase1_iterations": 17,
        "phase1_stopped_by": "val_er",
        "phase1_final_cvfp_loss": 0.01,
        "phase1_final_diversity_loss": -0.5,
        "train_convergence_rate": 0.93,
        "train_convergence": 0.91,
        "dev_convergence_rate": 0.83,
        "dev_convergence": 0.81,
        "phase1_seconds": 12.5,
        "phase1_tokens_per_s": 1000.0,
        "cache_method": "jacobi",
        "cache_converged": False,  # dev did not converge
        "train_er": 12.0,
        "train_er_pct": 75.0,
        "dev_er": 11.0,
        "dev_er_pct": 68.75,
        "train_dev_er_gap_pct": 6.25,
        "identity_check": "FAIL",
        "cvfp_verdict": "converged",
        "quality_band": "good",
    }
    assert {k: row[k] for k in expected} == expected
    assert runs["undertrained"].dtype == bool and runs["undertrained"].tolist() == [False, True, True, True]  # 0 -> False
    assert len(diag) == 1
    assert diag.iloc[0].to_dict() == {
        "model": "cvfp",
        "variant": "base",
        "samples": 20,
        "context_dim": 16,
        "seed": 1,
        "train_er_pct": 75.0,
        "dev_er_pct": 68.75,
        "train_convergence": 0.91,
        "dev_convergence": 0.81,
        "final_cvfp_loss": 0.01,
        "iterations": 17,
        "identity_check": "FAIL",
        "max_abs_diff": 1e-6,
        "cosine": 0.5,
        "max_abs_diff_passed": True,
        "cosine_passed": False,
        "cvfp_verdict": "converged",
        "cvfp_slope": -0.1,
        "cvfp_std": 0.02,
        "quality_band": "good",
        "overfitting_suspected": True,
    }
    # the current key names read the same; a cache without "converged" flags counts as converged
    new_p1 = {k: {**v, "summary": {"dev_convergence_rate": 0.7, "dev_convergence": 0.6}} for k, v in phase1.items()}
    passed = {k: {**v, "identity_check": {**v["identity_check"], "passed": True}} for k, v in diagnostics.items()}
    plain = {k: {"train": {"effective_rank_pct": 70.0}, "dev": {"effective_rank_pct": 60.0}} for k in caches}
    row = run_rows(metrics, new_p1, plain, passed)[0].iloc[0]
    assert (row["dev_convergence_rate"], row["dev_convergence"], row["identity_check"]) == (0.7, 0.6, "PASS")
    assert row["cache_converged"] == True and row["train_dev_er_gap_pct"] == 10.0  # noqa: E712
    # a cache with only one effective rank has no gap
    half = {k: {"train": {"effective_rank_pct": 70.0}} for k in caches}
    assert "train_dev_er_gap_pct" not in run_rows(metrics, None, half)[0]
    # the diagnostics file's current key names; a phase1 file without config, a cache with only dev
    renamed = {
        k: {**v, "dev_effective_rank_pct": 61.0, "dev_convergence": 0.71, "val_effective_rank_pct": 1.0, "val_convergence": 1.0}
        for k, v in diagnostics.items()
    }
    bare_p1 = {k: {"summary": {"iterations": 5}} for k in phase1}
    dev_only = {k: {"dev": {"effective_rank_pct": 60.0, "converged": True}, "train": {"converged": False}} for k in caches}
    runs, diag = run_rows(metrics, bare_p1, dev_only, renamed)
    assert (diag.iloc[0]["dev_er_pct"], diag.iloc[0]["dev_convergence"]) == (61.0, 0.71)
    row = runs.iloc[0]
    assert row["phase1_iterations"] == 5 and pd.isna(row["num_layers"]) and row["cache_converged"] == False  # noqa: E712
    no_train = {k: {"dev": {"effective_rank_pct": 60.0}} for k in caches}
    assert run_rows(metrics, None, no_train)[0].iloc[0]["dev_er_pct"] == 60.0


def test_run_rows_edge_cases_and_tag_history():
    runs, diag = run_rows({})
    assert len(runs) == 0 and list(runs.columns) == ["model", "variant", "samples", "context_dim", "seed", *SUMMARY]
    assert len(diag) == 0 and list(diag.columns) == ["model", "variant", "samples", "context_dim", "seed"]
    path = "results/s/runs/lstm/base/samples20_ctx16_seed0/lm/metrics.json"
    with pytest.raises(ValueError, match="two metrics files"):
        run_rows({path: _metrics("lstm"), "other/" + path: _metrics("lstm")})
    history = tag_history(pd.DataFrame({"step": [1, 2], "loss": [3.0, 2.5]}), path)
    assert list(history.columns) == ["model", "variant", "samples", "context_dim", "seed", "step", "loss"]
    assert history.iloc[1].tolist() == ["lstm", "base", 20, 16, 0, 2, 2.5]
    assert run_key("runs/a/b/samples1_ctx2_seed3")["seed"] == 3  # the run directory itself
    with pytest.raises(ValueError):
        run_key("runs/a/b/samples1_ctx2_seed3x/metrics.json")


# ----------------------------------------------------------------------------- verdict text
def _verdict_dict(**changes):
    v = {
        "reference_model": "cvfp",
        "reference_variant": "base",
        "available": True,
        "confidence": 0.9,
        "test_set": {},
        "resamples": None,
        "seeds": 3,
        "samples": 20,
        "train_tokens": 12345.0,
        "reference_context_dim": 16,
        "reference_ppl": 100.04,
        "reference_ppl_ci": [None, None],
        "comparisons": [
            {"model": "lstm", "context_dim": 16, "percent": -12.04, "percent_ci": [-16.2, -8.1]},
            {"model": "ngram", "context_dim": 0, "percent": 5.0, "percent_ci": [2.0, 8.0]},
            {"model": "transformer", "context_dim": 16, "percent": -1.0, "percent_ci": [-2.0, 0.0]},
            {"model": "untrained_context", "context_dim": 16, "percent": 1.0, "percent_ci": [0.0, 3.0]},
            {"model": "no_context", "context_dim": 16, "percent": -3.0, "percent_ci": [None, None]},
        ],
        "best_baseline": {"model": "transformer", "outcome": "inconclusive", "percent": -1.0, "percent_ci": [-2.0, 0.0]},
        "alphas": [
            {
                "model": "cvfp",
                "alpha": -0.31234,
                "alpha_ci": [-0.4, -0.2],
                "interval": "bootstrap",
                "preferred_form": "loss_form",
            },
            {"model": "lstm", "alpha": -0.2, "alpha_ci": [None, None], "interval": "ols_t", "preferred_form": "power_law"},
        ],
        "undertrained": [{"model": "cvfp", "undertrained": 0, "runs": 3}],
        "head_reference": None,
    }
    return v | changes


def test_verdict_markdown_every_sentence_by_hand():
    # an interval touching 0 is no clear difference; a missing interval says so
    assert verdict_markdown(_verdict_dict()) == (
        "# Verdict\n\n"
        "At 12,345 training tokens (20 conversations), CVFP (base, 16-d, chosen on dev) has test PPL 100.0 [n/a].\n"
        "Its test PPL is 12.0 % [8.1, 16.2] below lstm (16-d); 5.0 % [2.0, 8.0] above ngram; "
        "within [-2.0 %, +0.0 %] of transformer (16-d) (no clear difference); "
        "within [+0.0 %, +3.0 %] of untrained_context (16-d) (no clear difference); "
        "3.0 % below no_context (16-d) (no interval).\n"
        "CVFP cannot be told apart from the best baseline, transformer (chosen on dev loss): "
        "within [-2.0 %, +0.0 %] of transformer (no clear difference).\n"
        "Scaling exponent α of PPL = A·T^α (more negative = more gain from data; bootstrap intervals): "
        "cvfp -0.312 [-0.400, -0.200]; lstm -0.200 [n/a] (OLS t).\n"
        "For cvfp the loss form L = E + B·T^(−β) fits better than the power law (AICc lower by >= 2): their log-log "
        "curve bends, so α depends on the size range (see sliding_alpha.csv and model_fits.csv).\n"
        "No run was undertrained: every trained model stopped by early stopping on dev loss.\n\n"
        "Intervals: 90 % percentile bootstrap over the ? test conversations (? target tokens, ? resamples, the same "
        "resamples for every model) and over the 3 training seeds per point.\n"
    )
    head = {
        "source": "bigram",
        "train_tokens": 464000,
        "test_ppl": 96.0,
        "interval": "paired bootstrap",
        "models": {
            "lstm": {"percent": -10.0, "percent_ci": [-12.0, -8.0], "place": "below"},
            "cvfp": {"percent": -4.0, "percent_ci": [-5.0, -3.0], "place": "below"},
        },
    }
    v = _verdict_dict(
        reference_model="lstm",
        train_tokens=None,
        reference_ppl_ci=[90.04, 110.06],
        comparisons=[],
        best_baseline={"model": "ngram", "outcome": "beats", "percent": -12.04, "percent_ci": [-16.2, -8.1]},
        alphas=[],
        head_reference=head,
        undertrained=[
            {"model": "cvfp", "undertrained": 0, "runs": 3},
            {"model": "ngram", "undertrained": 1, "runs": 2},
            {"model": "transformer", "undertrained": 2, "runs": 2},
        ],
        confidence=0.95,
        test_set={"conversations": 50, "targets": 9000},
        resamples=1000,
        seeds=1,
    )
    assert verdict_markdown(v) == (
        "# Verdict\n\n"
        "At ? training tokens (20 conversations), lstm (base, 16-d, chosen on dev) has test PPL 100.0 [90.0, 110.1].\n"
        "lstm beats the best baseline, ngram (chosen on dev loss): 12.0 % [8.1, 16.2] below ngram.\n"
        "Frozen-head reference: the stand-in embeddings' own bigram LM, trained on 464,000 tokens of the embedding slice "
        "(none of the study's training sets), has test PPL 96.0 on the same test tokens. Against it (paired bootstrap): "
        "lstm 10.0 % [8.0, 12.0] below it; cvfp 4.0 % [3.0, 5.0] below it. Every model gets below it.\n"
        "Undertrained (stopped by max_steps, not by early stopping): ngram 1/2 runs, transformer 2/2 runs; "
        "their PPL is an upper bound.\n\n"
        "Intervals: 95 % percentile bootstrap over the 50 test conversations (9000 target tokens, 1000 resamples, the "
        "same resamples for every model); one training seed, so seed-to-seed variation is not included.\n"
    )
    head["train_tokens"] = None
    head["models"]["cvfp"] = {"percent": 4.0, "percent_ci": [None, None], "place": "above"}
    text = verdict_markdown(v | {"best_baseline": None, "seeds": None})
    assert "trained on 0 tokens" in text and "cvfp 4.0 % above it (no interval)." in text
    assert "Not clearly below it: cvfp — at this size they learn nothing measurable" in text and "best baseline" not in text
    assert "one training seed" in text
    assert verdict_markdown({"reference_model": "cvfp", "reason": "no cvfp runs in this study"}) == (
        "# Verdict\n\nNo verdict: no cvfp runs in this study.\n"
    )


def test_verdict_html_escapes_and_drops_blank_lines():
    page = verdict_html("# A <b>\n\nx & y\n  \nlast\n")
    assert page.startswith('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Verdict</title>')
    assert page.endswith("</head>\n<body>\n<h2>A &lt;b&gt;</h2>\n<p>x &amp; y</p>\n<p>last</p>\n</body></html>\n")


def test_verdict_without_reference_runs_and_with_several_seeds():
    points, boot, fits, runs = _verdict_inputs()
    lstm_only = points[points["model"] == "lstm"]
    v = verdict(lstm_only, boot[:, lstm_only.index], fits, runs, "base")
    assert v == {
        "reference_model": "cvfp",
        "reference_variant": "base",
        "confidence": 0.95,
        "test_set": {},
        "resamples": None,
        "seeds": 1,
        "available": False,
        "reason": "no cvfp runs in this study",
    }
    points["n_seeds"] = [3, 2] * 6
    v = verdict(points, boot, fits, runs, "base", reference="lstm", confidence=0.9)
    assert v["seeds"] == 3 and v["reference_context_dim"] == 16 and v["reference_ppl"] == pytest.approx(80.0)
    assert v["train_tokens"] == 20000 and v["reference_ppl_ci"] == pytest.approx([72.0, 88.0])
    comps = {c["model"]: c for c in v["comparisons"]}
    assert list(comps) == ["cvfp", "no_context", "ngram", "transformer"]  # study order, the reference left out
    # cvfp at lstm's context_dim (16), though its 32-d configuration has the better test PPL
    assert comps["cvfp"]["context_dim"] == 16 and comps["cvfp"]["percent"] == pytest.approx(100 * (80 / 100 - 1))
    assert comps["cvfp"]["ppl"] == pytest.approx(100.0) and comps["cvfp"]["ppl_ci"] == pytest.approx([90.0, 110.0])
    assert comps["cvfp"]["dev_loss"] == pytest.approx(4.0) and comps["cvfp"]["variant"] == "base"
    assert v["best_baseline"] == {
        "model": "transformer",
        "context_dim": 16,
        "chosen_on": "dev loss",
        "outcome": "loses",
        "percent": pytest.approx(100 * (80 / 70 - 1)),
        "percent_ci": pytest.approx([100 * (80 / 70 - 1)] * 2),
    }
    assert [u for u in v["undertrained"]] == [
        {"model": "cvfp", "undertrained": 0, "runs": 1},
        {"model": "lstm", "undertrained": 1, "runs": 2},
    ]
    alpha = v["alphas"][0]
    assert alpha == {
        "model": "lstm",
        "variant": "base",
        "context_dim": 16,
        "alpha": pytest.approx(-0.4),
        "alpha_ci": pytest.approx([-0.41, -0.39]),
        "interval": "bootstrap",
        "preferred_form": "power_law",
        "n_points": 2,
    }
    # without a bootstrap interval: the OLS t interval
    fits["alpha_boot_ci_low"] = np.nan
    fits["alpha_ci_low"], fits["alpha_ci_high"] = fits["alpha"] - 0.05, fits["alpha"] + 0.05
    alpha = verdict(points, boot, fits, runs, "base")["alphas"][0]
    assert alpha["interval"] == "ols_t" and alpha["alpha_ci"] == pytest.approx([-0.15, -0.05])


def test_best_baseline_ignores_controls_and_missing_dev_loss():
    points, boot, fits, runs = _verdict_inputs()
    points.loc[points["model"] == "lstm", "dev_loss"] = np.nan  # no dev loss: chosen last
    v = verdict(points, boot, fits, runs, "base")
    assert v["best_baseline"]["model"] == "transformer"  # dev 3.5 < ngram's 6.0; no_context (dev 5) is no baseline
    assert v["best_baseline"]["percent"] == pytest.approx(100 * (100 / 70 - 1))
    assert {c["model"]: c["dev_loss"] for c in v["comparisons"]}["lstm"] is None
    controls = points[~points["model"].isin(["lstm", "transformer", "ngram"])]
    assert verdict(controls, boot[:, controls.index], fits, runs, "base")["best_baseline"] is None


def test_head_reference_unpaired_when_the_head_resamples_do_not_match():
    points, boot, fits, runs = _verdict_inputs()
    head = {"source": "bigram", "test_ppl": "115", "train_tokens": "464000", "test_tokens": 9000}
    v = verdict(points, boot, fits, runs, "base", head_reference=head, head_boot=np.zeros(7))
    h = v["head_reference"]
    assert h["interval"] == "the model's own interval" and h["test_ppl"] == 115.0
    assert (h["source"], h["train_tokens"], h["test_tokens"]) == ("bigram", 464000.0, 9000.0)
    assert list(h["models"]) == ["cvfp", "no_context", "ngram", "lstm", "transformer"]
    assert h["models"]["lstm"]["ppl"] == pytest.approx(80.0) and h["models"]["lstm"]["place"] == "below"
    assert h["models"]["ngram"]["percent_ci"] == pytest.approx([100 * (144 / 115 - 1), 100 * (176 / 115 - 1)])
    # no interval at all: placed by the point value
    no_ci = points.drop(columns=["test_ppl_ci_low"])
    models = verdict(no_ci, boot, fits, runs, "base", head_reference=head)["head_reference"]["models"]
    assert models["no_context"]["percent_ci"] == [None, None] and models["no_context"]["place"] == "above"
    assert models["cvfp"]["place"] == "below"
    assert verdict(points, boot, fits, runs, "base", head_reference={"test_ppl": float("nan")})["head_reference"] is None


# ----------------------------------------------------------------------------- sliding windows, more
def test_window_fits_steps_and_refuses_too_small_windows():
    x = np.arange(7.0)
    y = np.array([[0.0, 1.0, 2.5, 2.9, 4.2, 5.0, 6.1], [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]])
    fit = window_fits(x, y, 3, 2)
    assert fit["start"].tolist() == [0, 2, 4]
    # window 1 covers x = 2, 3, 4: c = (-1, 0, 1)/2; intercept from the means
    np.testing.assert_allclose(fit["weights"][1], [0, 0, -0.5, 0, 0.5, 0, 0])
    np.testing.assert_allclose(fit["alpha"][:, 1], [(4.2 - 2.5) / 2, 0.0])
    np.testing.assert_allclose(fit["intercept"][:, 1], [(2.5 + 2.9 + 4.2) / 3 - 0.85 * 3, 2 / 3])
    resid = np.array([2.5, 2.9, 4.2]) - (3.2 - 0.85 * 3) - 0.85 * np.array([2.0, 3.0, 4.0])
    assert fit["rss"][0, 1] == pytest.approx((resid**2).sum())
    assert fit["rss"][1, 1] == pytest.approx(2 * (1 / 3) ** 2 + (2 / 3) ** 2)  # flat: residuals about the mean 2/3
    assert fit["alpha_stderr"][0, 1] == pytest.approx(math.sqrt((resid**2).sum() / 1 / 2))  # dof 1, S_xx 2
    # windows 1 and 2 share x = 4: c_2 − c_1 = (0, 0, 0.5, 0, −1, 0, 0.5), pooled σ̂² = (RSS_1 + RSS_2)/2
    diff = np.array([0, 0, 0.5, 0, -1, 0, 0.5])
    np.testing.assert_allclose(fit["weights"][2] - fit["weights"][1], diff)
    sigma2 = (fit["rss"][:, 1] + fit["rss"][:, 2]) / 2
    np.testing.assert_allclose(fit["delta_alpha_stderr"][:, 2], np.sqrt(sigma2 * (diff**2).sum()))
    np.testing.assert_allclose(fit["delta_alpha"][:, 2], fit["alpha"][:, 2] - fit["alpha"][:, 1])
    assert np.isnan(fit["delta_alpha"][:, 0]).all() and np.isnan(fit["delta_alpha_stderr"][:, 0]).all()
    single = window_fits(x[:3], y[:, :3], 3)
    assert single["start"].tolist() == [0] and np.isnan(single["delta_alpha_stderr"]).all()
    for window, step in ((2, 1), (3, 0)):
        with pytest.raises(ValueError, match="window must be >= 3"):
            window_fits(x, y, window, step)


def test_sliding_windows_per_group_with_bootstrap_intervals():
    tokens = np.array([1e4, 2e4, 4e4, 8e4, 1.6e5])
    rows = []
    for variant, alpha in (("b", -0.3), ("a", -0.5)):
        for t in tokens[::-1]:  # unsorted input
            rows.append({"model": "cvfp", "variant": variant, "train_tokens": t, "test_ppl": 2e3 * t**alpha})
    points = pd.DataFrame(rows)
    boot = np.log(points["test_ppl"].to_numpy()) + np.random.default_rng(3).normal(0, 0.05, (500, len(points)))
    windows = sliding_window_fits(points, ["model", "variant"], window=4, boot=boot, confidence=0.9)
    assert list(windows.columns[:2]) == ["model", "variant"] and list(windows["variant"]) == ["a", "a", "b", "b"]
    a = windows[windows["variant"] == "a"].reset_index(drop=True)
    assert a["alpha"].tolist() == pytest.approx([-0.5, -0.5]) and a["A"].tolist() == pytest.approx([2e3, 2e3])
    assert a["r2"].tolist() == pytest.approx([1.0, 1.0]) and a["tokens_min"].tolist() == [1e4, 2e4]
    assert a["delta_alpha"].iloc[1] == pytest.approx(0.0, abs=1e-12) and a["shared_points"].tolist() == [0, 3]
    # the bootstrap columns from the same resamples, sorted by tokens like the data
    idx = points.index[points["variant"] == "a"].to_numpy()[::-1]
    bfit = window_fits(np.log(tokens), boot[:, idx], 4)
    d = bfit["alpha"][:, 1] - bfit["alpha"][:, 0]
    assert a["alpha_ci_low"].iloc[0] == pytest.approx(np.percentile(bfit["alpha"][:, 0], 5))
    assert a["alpha_ci_high"].iloc[1] == pytest.approx(np.percentile(bfit["alpha"][:, 1], 95))
    assert a["delta_alpha_boot_se"].iloc[1] == pytest.approx(d.std(ddof=1))
    assert a["delta_alpha_ci_low"].iloc[1] == pytest.approx(np.percentile(d, 5))
    assert a["delta_alpha_ci_high"].iloc[1] == pytest.approx(np.percentile(d, 95))
    assert math.isnan(a["delta_alpha_boot_se"].iloc[0]) and math.isnan(a["delta_alpha_ci_low"].iloc[0])
    assert a["alpha_ci_low"].iloc[0] < -0.5 < a["alpha_ci_high"].iloc[0]
    stepped = sliding_window_fits(points, ["variant"], window=4, step=5, min_points=4)
    assert stepped["shared_points"].tolist() == [0, 0] and math.isnan(stepped["alpha_ci_low"].iloc[0])
    assert len(sliding_window_fits(points, ["variant"], window=3, min_points=3)) == 6
    with pytest.raises(ValueError, match="step >= 1"):
        sliding_window_fits(points, ["variant"], window=4, step=0)


# ----------------------------------------------------------------------------- points tables, more
def test_ratio_table_pairs_every_point_with_its_reference_by_hand():
    keys = [
        ("lstm", "base", 16, 20, 3.0),
        ("cvfp", "base", 16, 10, 3.5),
        ("cvfp", "base", 32, 10, 3.4),
        ("ngram", "base", 0, 10, 4.0),
        ("cvfp", "base", 16, 20, 2.9),
        ("lstm", "base", 64, 10, 3.3),  # no cvfp at 64-d: no row
        ("cvfp", "tok2", 16, 10, 3.6),  # another cvfp variant is compared like any model
    ]
    points = pd.DataFrame(keys, columns=["model", "variant", "context_dim", "samples", "test_loss"])
    points["train_tokens"] = points["samples"] * 1000
    boot = points["test_loss"].to_numpy() + np.random.default_rng(4).normal(0, 0.1, (400, len(points)))
    table = ratio_table(points, boot, "base", confidence=0.8)
    got = list(zip(table["model"], table["variant"], table["context_dim"], table["samples"], table["reference_context_dim"]))
    assert got == [
        ("cvfp", "tok2", 16, 10, 16),
        ("ngram", "base", 0, 10, 16),
        ("ngram", "base", 0, 10, 32),
        ("lstm", "base", 16, 20, 16),
    ]
    assert table["ratio"].tolist() == pytest.approx(np.exp([0.1, 0.5, 0.6, 0.1]).tolist())
    assert table["ppl"].tolist() == pytest.approx(np.exp([3.6, 4.0, 4.0, 3.0]).tolist())
    assert table["reference_ppl"].tolist() == pytest.approx(np.exp([3.5, 3.5, 3.4, 2.9]).tolist())
    assert table["train_tokens"].tolist() == [10000, 10000, 10000, 20000]
    d = boot[:, 3] - boot[:, 2]  # ngram against cvfp 32-d
    lo, hi = np.percentile(d, [10, 90])
    row = table.iloc[2]
    assert (row["ratio_ci_low"], row["ratio_ci_high"]) == pytest.approx((math.exp(lo), math.exp(hi)))
    assert row["percent_difference"] == pytest.approx(100 * (math.exp(0.6) - 1))
    assert row["percent_difference_ci_low"] == pytest.approx(100 * (math.exp(lo) - 1))
    assert row["percent_difference_ci_high"] == pytest.approx(100 * (math.exp(hi) - 1))
    only_reference = ratio_table(points.iloc[[1, 2]].reset_index(drop=True), boot[:, [1, 2]], "base")
    assert len(only_reference) == 0 and list(only_reference.columns[-3:]) == [
        "percent_difference",
        "percent_difference_ci_low",
        "percent_difference_ci_high",
    ]


def test_baselines_table_keeps_a_measured_dev_ppl_and_sorts_by_every_key():
    points = _points([3.0, 3.1, 3.2], dims=[32, 16, 16], samples=[10, 20, 10], dev_ppl=[1.0, 2.0, 3.0], dev_loss=[9.0] * 3)
    table = baselines_table(points)
    assert list(zip(table["context_dim"], table["samples"])) == [(16, 10), (16, 20), (32, 10)]
    assert table["dev_ppl"].tolist() == [3.0, 2.0, 1.0] and "dev_loss" not in table
    assert list(table.columns) == ["model", "variant", "context_dim", "samples", "n_seeds", "test_ppl", "test_loss", "dev_ppl"]


def test_matched_values_coverage_ties_duplicates_and_bootstrap():
    boot_b = np.array([[3.0, 2.0], [4.0, 2.0]])
    curves = {
        "A": ([1.0, 10.0], [3.0, 2.0], None),
        "B": ([5.0, 20.0], [3.0, 2.0], boot_b),
        "C": ([100.0], [1.0], None),
        "D": ([np.nan, -1.0], [1.0, 1.0], None),
    }
    # 5 and 10 are covered by A and B: the larger wins
    x_star, values = matched_values(curves)
    assert x_star == 10.0 and values["A"]["loss"] == pytest.approx(2.0)
    w = math.log(10 / 5) / math.log(20 / 5)
    assert values["B"]["loss"] == pytest.approx(3.0 - w) and values["B"]["how"] == "interpolated"
    np.testing.assert_allclose(values["B"]["boot"], [3.0 - w, 4.0 - 2 * w])
    assert values["C"] == {"loss": pytest.approx(math.nan, nan_ok=True), "boot": None, "how": "not covered"}
    assert values["D"]["how"] == "not covered" and math.isnan(values["D"]["loss"]) and values["A"]["boot"] is None
    # repeated x are averaged before interpolating: D at 1 is (3.0 + 3.2)/2, at 2 halfway in ln x to 4
    x_star, values = matched_values({"D": ([1.0, 4.0, 1.0], [3.0, 2.0, 3.2], None), "E": ([2.0], [9.0], None)})
    assert x_star == 2.0 and values["D"]["loss"] == pytest.approx(2.55) and values["E"]["loss"] == 9.0
    # outside the range but within the tolerance: the nearest point, with its resamples
    boot_h = np.array([[1.0, 2.0], [3.0, 4.0]])
    x_star, values = matched_values(
        {"H": ([100.0, 105.0, 0.0], [2.0, 1.0, 7.0], np.c_[boot_h, [9, 9]]), "I": ([112.0], [5.0], None)}
    )
    assert x_star == 112.0 and values["H"]["how"] == "within 10 %" and values["H"]["loss"] == 1.0
    np.testing.assert_array_equal(values["H"]["boot"], [2.0, 4.0])
    x_star, values = matched_values({"F": ([100.0], [2.0], None), "G": ([140.0], [3.0], None)}, tolerance=0.5)
    assert x_star == 140.0 and values["F"] == {"loss": 2.0, "boot": None, "how": "within 50 %"}
    x_star, values = matched_values({"F": ([100.0], [2.0], None), "G": ([140.0], [3.0], None)})
    assert x_star == 140.0 and values["F"]["how"] == "not covered"  # 40 % apart: one curve each, the larger
    x_star, values = matched_values({"K": ([np.nan], [1.0], None)})
    assert math.isnan(x_star) and values["K"]["how"] == "not covered" and math.isnan(values["K"]["loss"])


def test_comparison_table_largest_size_columns_and_run_settings():
    pts = [
        (16, 10, 1e4, 4.0, 4.1, 5000, 1.0e9, 2),
        (16, 20, 2e4, 3.5, 3.6, 5000, 2.0e9, 2),
        (32, 10, 1e4, 4.2, 4.3, 9000, 1.8e9, 1),
        (32, 20, 2e4, 3.4, 3.3, 9000, 3.6e9, 1),
    ]
    cols = ["context_dim", "samples", "train_tokens", "test_loss", "dev_loss", "parameters", "train_flops", "n_seeds"]
    points = pd.DataFrame(pts, columns=cols).assign(model="cvfp", variant="base").iloc[::-1]
    points["test_ppl"] = np.exp(points["test_loss"])
    runs = pd.DataFrame(
        {
            "model": "cvfp",
            "variant": "base",
            "context_dim": [16, 16, 16, 16, 32, 32],
            "samples": [10, 10, 20, 20, 10, 20],
            "dev_er_pct": [50.0, 52.0, 60.0, 64.0, 70.0, np.nan],
            "train_er_pct": [55.0, 57.0, 65.0, 69.0, 75.0, np.nan],
            "phase1_iterations": [10, 20, 30, 40, 50, 60],
            "num_layers": [3, 3, 3, 3, 5, 5],
            "activation": [None] * 4 + ["gelu"] * 2,
            "undertrained": [True, False, True, True, False, False],
        }
    )
    fits = pd.DataFrame({"model": ["cvfp"], "variant": ["base"], "context_dim": [32], "alpha": [-0.3], "r2": [0.9]})
    table = comparison_table(runs, points, None, fits)
    assert table["context_dim"].tolist() == [16, 32]
    small, big = table.iloc[0], table.iloc[1]
    assert (small["n_seeds"], small["samples_largest"], small["train_tokens_largest"]) == (2, 20, 2e4)
    assert small["test_ppl_largest"] == pytest.approx(math.exp(3.5)) and small["dev_ppl_largest"] == pytest.approx(math.exp(3.6))
    assert (small["parameters"], small["train_flops_largest"], small["num_layers"]) == (5000, 2e9, 3)
    assert (small["dev_er_pct"], small["train_er_pct"], small["phase1_iterations"]) == (62.0, 67.0, 25.0)
    assert small["undertrained_runs"] == 3 and big["undertrained_runs"] == 0 and big["activation"] == "gelu"
    assert "activation" not in small or pd.isna(small["activation"])
    assert math.isnan(big["dev_er_pct"]) and big["phase1_iterations"] == 55.0  # the largest size has no ER
    assert math.isnan(small["alpha"]) and (big["alpha"], big["r2"]) == (-0.3, 0.9) and math.isnan(big["E"])
    # parameters at the largest size: 5000 and 9000 on one (model, variant) curve -> 9000, as measured
    assert (small["matched_parameters"], big["parameters_match"]) == (9000, "interpolated")
    assert small["ppl_at_matched_parameters"] == pytest.approx(math.exp(3.4))
    assert math.isnan(small["ppl_at_matched_parameters_ci_low"]) and math.isnan(small["ppl_at_matched_parameters_ci_high"])
    # FLOPs: 1.8e9 and 2e9 are covered by both configurations; at 2e9 the 32-d one is interpolated
    w = math.log(2.0 / 1.8) / math.log(2.0)
    assert small["matched_flops"] == 2e9 and small["ppl_at_matched_flops"] == pytest.approx(math.exp(3.5))
    assert big["ppl_at_matched_flops"] == pytest.approx(math.exp(4.2 - 0.8 * w)) and big["flops_match"] == "interpolated"
    bare = comparison_table(runs.drop(columns=["phase1_iterations", "undertrained"]), points.drop(columns="dev_loss"), None, fits)
    assert math.isnan(bare["dev_ppl_largest"].iloc[0]) and math.isnan(bare["phase1_iterations"].iloc[0])
    assert bare["undertrained_runs"].tolist() == [0, 0]


# ----------------------------------------------------------------------------- prediction, more
def test_intraclass_correlation_unbalanced_and_undefined_cases():
    # a: 1, 3; b: 5, 7, 9 -> MSB = 30, MSW = 10/3, m0 = (5 - 13/5)/1 = 2.4: ICC = (80/3)/(104/3)
    values, clusters = np.array([1.0, 3.0, 5.0, 7.0, 9.0]), np.array(["a", "a", "b", "b", "b"])
    assert intraclass_correlation(values, clusters) == pytest.approx(10 / 13)
    # effective n by hand: 5 / (1 + (2.5 - 1)·ICC_x·ICC_y), y = 2x + 1 has the same ICC
    assert effective_n(values, 2 * values + 1, clusters) == pytest.approx(5 / (1 + 1.5 * (10 / 13) ** 2))
    assert intraclass_correlation(np.array([1.0, 1.0, 5.0, 5.0]), np.array([0, 0, 1, 1])) == 1.0  # no within variance
    assert math.isnan(intraclass_correlation(values, np.zeros(5)))  # one cluster
    assert math.isnan(intraclass_correlation(values, np.arange(5)))  # every cluster a single run
    assert math.isnan(intraclass_correlation(np.full(4, 2.0), np.array([0, 0, 1, 1])))  # no variance at all
    # one singleton cluster among pairs: a: 1, 3; b: 5, 7; c: 11 (grand mean 5.4) -> m0 = (5 - 9/5)/2 = 1.6
    msb, msw = (2 * 3.4**2 + 2 * 0.6**2 + 5.6**2) / 2, 4 / 2
    got = intraclass_correlation(np.array([1.0, 3.0, 5.0, 7.0, 11.0]), np.array([0, 0, 1, 1, 2]))
    assert got == pytest.approx((msb - msw) / (msb + 0.6 * msw))
    assert effective_n(values, values, np.zeros(5)) == 5.0  # ICC undefined: independent runs
    assert effective_n(values, np.full(5, 2.0), clusters) == 5.0  # undefined for one of the two is enough


def test_fisher_interval_other_confidence_and_undefined_cases():
    lo, hi = fisher_interval(-0.3, 19, confidence=0.9)  # dof 16: half-width 1.644854 / 4
    assert (lo, hi) == pytest.approx((math.tanh(math.atanh(-0.3) - 1.644854 / 4), math.tanh(math.atanh(-0.3) + 1.644854 / 4)))
    lo, hi = fisher_interval(0.2, 3.25)  # dof 0.25: still defined
    assert lo == pytest.approx(math.tanh(math.atanh(0.2) - 1.959964 * 2), rel=1e-6)
    for r, n_eff in ((math.nan, 30), (1.0, 30), (-1.0, 30), (0.5, 3)):
        assert all(math.isnan(v) for v in fisher_interval(r, n_eff))


def _log_linear_runs(n_per_cluster=2, clusters=4, seed=6):
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(clusters):
        for k in range(n_per_cluster):
            tokens = 1e4 * 2 ** (k + c % 2)
            er = 50 + 3 * c + rng.normal(0, 1)
            loss = -0.3 * math.log(tokens) - 0.01 * er + 8 + rng.normal(0, 0.05) + 0.03 * c
            rows.append(
                {"variant": "base", "context_dim": 16 * (c + 1), "train_tokens": tokens, "dev_er_pct": er, "test_loss": loss}
            )
    return pd.DataFrame(rows)


def test_log_linear_fit_standard_errors_by_the_textbook_formulas():
    runs = _log_linear_runs()
    ll = prediction_analysis(runs, predictors=[])["log_linear"]
    X = np.column_stack([np.log(runs["train_tokens"]), runs["dev_er_pct"], np.ones(len(runs))])
    y = runs["test_loss"].to_numpy()
    coef = np.linalg.solve(X.T @ X, X.T @ y)  # normal equations
    e = y - X @ coef
    n, k, g = 8, 3, 4
    bread = np.linalg.inv(X.T @ X)
    ols = np.sqrt(np.diag(e @ e / (n - k) * bread))
    meat = np.zeros((3, 3))
    for c in runs["context_dim"].unique():
        s = X[runs["context_dim"] == c].T @ e[runs["context_dim"] == c]
        meat += np.outer(s, s)
    cr1 = np.sqrt(np.diag(g / (g - 1) * (n - 1) / (n - k) * bread @ meat @ bread))
    for i, name in enumerate(("alpha", "beta", "gamma")):
        assert ll[name] == pytest.approx(coef[i], rel=1e-8)
        assert ll[f"{name}_stderr"] == pytest.approx(ols[i], rel=1e-8)
        assert ll[f"{name}_cluster_stderr"] == pytest.approx(cr1[i], rel=1e-8)
    assert ll["r2"] == pytest.approx(1 - e @ e / ((y - y.mean()) ** 2).sum()) and 0 < ll["r2"] < 1
    assert (ll["n"], ll["n_clusters"]) == (8, 4)
    # one cluster: OLS errors but no cluster-robust ones; a constant ER or <= 3 runs: nothing
    one = prediction_analysis(runs, predictors=[], cluster_by=["variant"])["log_linear"]
    assert one["alpha_stderr"] == pytest.approx(ols[0]) and math.isnan(one["alpha_cluster_stderr"]) and one["n_clusters"] == 1
    for broken in (runs.assign(dev_er_pct=60.0), runs.iloc[:3], runs.assign(dev_er_pct=[np.nan] + [60.0] * 7)):
        ll = prediction_analysis(broken, predictors=[])["log_linear"]
        assert all(math.isnan(ll[key]) for key in ("alpha", "beta_stderr", "gamma_cluster_stderr", "r2"))
        assert ll["n"] == len(broken)


def test_linear_fit_and_correlations_on_partial_data():
    runs = _log_linear_runs()
    result = prediction_analysis(
        runs.drop(columns="test_loss").assign(test_ppl=np.exp(runs["test_loss"])), predictors=["dev_er_pct"]
    )
    ref = prediction_analysis(runs, predictors=["dev_er_pct"])
    assert result["log_linear"]["alpha"] == pytest.approx(ref["log_linear"]["alpha"])  # ln test_ppl when no test_loss
    fit = stats.linregress(runs["dev_er_pct"], np.exp(runs["test_loss"]))
    lin = ref["linear"]
    assert (lin["a"], lin["b"], lin["r2"], lin["n"]) == pytest.approx((fit.intercept, fit.slope, fit.rvalue**2, 8))
    assert ref["er_column"] == "dev_er_pct"
    for broken in (runs.iloc[:2], runs.assign(dev_er_pct=60.0), runs.assign(dev_er_pct=[np.nan] + [60.0, 61.0] * 3 + [62.0])):
        lin = prediction_analysis(broken, predictors=[])["linear"]
        assert math.isnan(lin["a"]) and math.isnan(lin["b"]) and math.isnan(lin["r2"]) and lin["n"] == len(broken)
    three = prediction_analysis(runs.iloc[:3], predictors=[])["linear"]
    assert np.isfinite(three["b"])  # 3 runs with 2 distinct ER suffice for a line
    # a predictor with missing values: counted runs and correlations over the finite ones only
    x = runs["dev_er_pct"].to_numpy().copy()
    x[[0, 5]] = np.nan
    row = prediction_analysis(runs.assign(gap=x), predictors=["gap", "absent"])["correlations"]
    ok = np.isfinite(x)
    assert row[0]["n_runs"] == 6 and row[0]["pearson_r"] == pytest.approx(np.corrcoef(x[ok], runs["test_loss"][ok])[0, 1])
    assert row[0]["spearman_rho"] == pytest.approx(stats.spearmanr(x[ok], runs["test_loss"][ok])[0])
    assert row[0]["n_configurations"] == 4 and np.isfinite(row[0]["partial_r"]) and np.isfinite(row[0]["config_r"])
    assert row[1]["predictor"] == "absent" and row[1]["n_runs"] == 0 and math.isnan(row[1]["pearson_r"])
    assert math.isnan(row[1]["partial_r"]) and math.isnan(row[1]["n_eff"]) and row[1]["n_configurations"] == 0
    # 3 runs: a correlation, but too few for a partial one; 2 runs: none at all
    three = prediction_analysis(runs.iloc[:3], predictors=["dev_er_pct"])["correlations"][0]
    assert np.isfinite(three["pearson_r"]) and math.isnan(three["partial_r"]) and math.isnan(three["partial_r_ci_low"])
    assert three["spearman_rho"] == pytest.approx(stats.spearmanr(runs["dev_er_pct"][:3], runs["test_loss"][:3])[0])
    two = prediction_analysis(runs.iloc[:2], predictors=["dev_er_pct"])["correlations"][0]
    assert math.isnan(two["pearson_r"]) and math.isnan(two["spearman_rho"])


def test_matched_values_range_edges_and_the_tolerance_boundary():
    # a curve's own smallest x counts as inside its range (interpolated), a value below it does not
    x_star, values = matched_values({"A": ([1.0, 10.0], [3.0, 2.0], None), "B": ([10.0, 20.0], [2.5, 2.0], None)})
    assert x_star == 10.0 and values["B"] == {"loss": 2.5, "boot": None, "how": "interpolated"}
    x_star, values = matched_values(
        {"K": ([np.nan], [1.0], None), "P": ([1.0, 2.0], [3.0, 2.0], None), "Q": ([10.0, 20.0], [1, 0], None)}
    )
    assert x_star == 20.0 and values["P"] == {"loss": pytest.approx(math.nan, nan_ok=True), "boot": None, "how": "not covered"}
    assert values["K"] == values["P"] and values["Q"]["loss"] == 0.0
    # x = 0 is no budget: the curve is a single point, matched only within the tolerance
    x_star, values = matched_values({"A": ([0.0, 4.0], [9.0, 3.0], None), "B": ([2.0], [4.0], None)})
    assert x_star == 4.0 and values["A"]["how"] == "within 10 %" and values["B"]["how"] == "not covered"
    # exactly 10 % apart is within 10 %
    x_star, values = matched_values({"F": ([100.0], [2.0], None), "G": ([110.0], [3.0], None)})
    assert x_star == 110.0 and values["F"] == {"loss": 2.0, "boot": None, "how": "within 10 %"}
    assert matched_values({"K": ([0.0], [1.0], None)})[1] == {
        "K": {"loss": pytest.approx(math.nan, nan_ok=True), "boot": None, "how": "not covered"}
    }


def test_comparison_table_largest_of_three_sizes_and_bootstrap_intervals():
    points = pd.DataFrame(
        {
            "model": ["cvfp"] * 3 + ["lstm"],
            "variant": "base",
            "context_dim": 16,
            "samples": [30, 10, 20, 10],
            "test_loss": [3.0, 4.0, 3.5, 3.8],
            "test_accuracy": [0.3, 0.1, 0.2, 0.15],
            "parameters": 5000,
            "train_flops": [3e9, 1e9, 2e9, 1e9],
            "n_seeds": 1,
        }
    )
    points["test_ppl"] = np.exp(points["test_loss"])
    points["test_ppl_ci_low"], points["test_ppl_ci_high"] = points["test_ppl"] - 1, points["test_ppl"] + 1
    boot = points["test_loss"].to_numpy() + np.random.default_rng(7).normal(0, 0.1, (300, 4))
    runs = points[["model", "variant", "context_dim", "samples"]]
    fits = pd.DataFrame(columns=["model", "variant", "context_dim"])
    table = comparison_table(runs, points, boot, fits, confidence=0.8).set_index("model")
    cvfp = table.loc["cvfp"]
    assert (cvfp["samples_largest"], cvfp["test_accuracy_largest"]) == (30, 0.3)
    assert (cvfp["test_ppl_largest_ci_low"], cvfp["test_ppl_largest_ci_high"]) == pytest.approx(
        (math.exp(3) - 1, math.exp(3) + 1)
    )
    # parameters at the largest size (30 samples): the lstm has none -> not covered
    assert cvfp["parameters_match"] == "within 10 %" and cvfp["matched_parameters"] == 5000
    lo, hi = np.percentile(boot[:, 0], [10, 90])
    assert (cvfp["ppl_at_matched_parameters_ci_low"], cvfp["ppl_at_matched_parameters_ci_high"]) == pytest.approx(
        (math.exp(lo), math.exp(hi))
    )
    lstm = table.loc["lstm"]
    assert lstm["parameters_match"] == "not covered" and math.isnan(lstm["ppl_at_matched_parameters"])
    assert math.isnan(lstm["ppl_at_matched_parameters_ci_low"]) and lstm["matched_parameters"] == 5000
    # FLOPs: 1e9 is covered by both (cvfp at its smallest size), 2e9 and 3e9 by cvfp only... the most curves win
    assert cvfp["matched_flops"] == 1e9 and lstm["flops_match"] == "within 10 %"
    lo, hi = np.percentile(boot[:, 3], [10, 90])
    assert (lstm["ppl_at_matched_flops_ci_low"], lstm["ppl_at_matched_flops_ci_high"]) == pytest.approx(
        (math.exp(lo), math.exp(hi))
    )
    assert cvfp["ppl_at_matched_flops"] == pytest.approx(math.exp(4.0))


def test_sliding_window_bootstrap_follows_the_step_and_default_confidence():
    tokens = 1e4 * 2.0 ** np.arange(6)
    points = pd.DataFrame({"g": "x", "train_tokens": tokens, "test_ppl": 50 * tokens**-0.2})
    boot = np.log(points["test_ppl"].to_numpy()) + np.random.default_rng(8).normal(0, 0.05, (400, 6))
    windows = sliding_window_fits(points, ["g"], window=4, step=2, boot=boot)
    assert len(windows) == 2 and windows["shared_points"].tolist() == [0, 2]
    bfit = window_fits(np.log(tokens), boot, 4, 2)
    d = bfit["alpha"][:, 1] - bfit["alpha"][:, 0]
    assert windows["alpha_ci_high"].iloc[1] == pytest.approx(np.percentile(bfit["alpha"][:, 1], 97.5))
    assert windows["delta_alpha_ci_low"].iloc[1] == pytest.approx(np.percentile(d, 2.5))


def test_prediction_analysis_note_and_a_missing_er_column():
    runs = _log_linear_runs()
    result = prediction_analysis(runs, predictors=[], er="absent")
    assert result["note"] == NO_P_VALUES and result["er_column"] == "absent" and result["correlations"] == []
    assert math.isnan(result["linear"]["b"]) and math.isnan(result["log_linear"]["alpha"]) and result["linear"]["n"] == 8


# ----------------------------------------------------------------------------- paired exponents
def _exponent_points():
    """Exact power laws: cvfp base at 16-d (α = −0.3) and 32-d (−0.35), cvfp tok2 (−0.25),
    lstm (−0.4, with a fifth size off its line), the n-gram (−0.2, 3 sizes), the transformer
    (1 size)."""
    spec = [
        ("lstm", "base", 16, -0.4, [1e4, 2e4, 4e4, 8e4, 1.6e5]),
        ("cvfp", "base", 16, -0.3, [1e4, 2e4, 4e4, 8e4]),
        ("cvfp", "base", 32, -0.35, [1e4, 2e4, 4e4, 8e4]),
        ("ngram", "base", 0, -0.2, [1e4, 2e4, 4e4]),
        ("cvfp", "tok2", 16, -0.25, [1e4, 2e4, 4e4, 8e4]),
        ("transformer", "base", 16, -0.5, [1e4]),
    ]
    rows = [
        {
            "model": model,
            "variant": variant,
            "context_dim": dim,
            "samples": int(t // 1000),
            "train_tokens": t,
            "test_loss": 9.0 + alpha * math.log(t) + (0.5 if t > 1e5 else 0.0),  # lstm's fifth size bends
        }
        for model, variant, dim, alpha, tokens in spec
        for t in tokens
    ]
    return pd.DataFrame(rows)


def test_alpha_differences_pair_every_configuration_with_the_reference_on_common_sizes():
    points = _exponent_points()
    shared = np.random.default_rng(12).normal(0, 0.1, (300, 1))  # a test-set effect shared by every point
    boot = points["test_loss"].to_numpy() + shared
    table = alpha_differences(points, boot, "base")
    assert list(table.columns) == ["model", "variant", "context_dim", *ALPHA_DIFFERENCE_COLUMNS]
    got = list(zip(table["model"], table["variant"], table["context_dim"], table["reference_context_dim"]))
    # catalogue order; the n-gram against every cvfp context_dim; the transformer (one size) has no slope
    assert got == [("cvfp", "tok2", 16, 16), ("ngram", "base", 0, 16), ("ngram", "base", 0, 32), ("lstm", "base", 16, 16)]
    assert table["delta_alpha"].tolist() == pytest.approx([0.05, 0.1, 0.15, -0.1])
    assert table["n_points"].tolist() == [4, 3, 3, 4] and table["tokens_max"].tolist() == [8e4, 4e4, 4e4, 8e4]
    lstm = table.iloc[3]
    assert (lstm["alpha"], lstm["reference_alpha"]) == pytest.approx((-0.4, -0.3))  # lstm's fifth size left out
    # the shared effect cancels in every replicate: a zero-width interval, clearly away from 0
    assert (lstm["delta_alpha_ci_low"], lstm["delta_alpha_ci_high"]) == pytest.approx((-0.1, -0.1))
    assert table["clear_difference"].tolist() == [True] * 4 and (table["reference_model"] == "cvfp").all()
    # independent noise per point: the interval is the percentile interval of the refitted slopes' differences
    noisy = boot + np.random.default_rng(13).normal(0, 0.05, boot.shape)
    lstm = alpha_differences(points, noisy, "base", confidence=0.9).iloc[3]
    x = np.log([1e4, 2e4, 4e4, 8e4])
    lstm_cols, cvfp_cols = [0, 1, 2, 3], [5, 6, 7, 8]
    d = np.polyfit(x, noisy[:, lstm_cols].T, 1)[0] - np.polyfit(x, noisy[:, cvfp_cols].T, 1)[0]
    assert (lstm["delta_alpha_ci_low"], lstm["delta_alpha_ci_high"]) == pytest.approx(tuple(np.percentile(d, [5, 95])))
    assert lstm["delta_alpha_boot_se"] == pytest.approx(d.std(ddof=1)) and lstm["delta_alpha"] == pytest.approx(-0.1)
    # without a bootstrap: the point values, no interval, no verdict on the difference
    bare = alpha_differences(points, None, "base")
    assert bare["delta_alpha_ci_low"].isna().all() and bare["clear_difference"].isna().all()
    assert len(alpha_differences(points[points["model"] != "cvfp"], None, "base")) == 0


def test_verdict_gives_the_paired_alpha_difference_and_both_extrapolations():
    points, boot, _, runs = _verdict_inputs()
    small_lstm = (points["model"] == "lstm") & (points["samples"] == 10)
    points.loc[small_lstm, "test_loss"] = math.log(80.0 * 3)  # lstm: α = −ln 3/ln 2; every other model −1
    points["test_ppl"] = np.exp(points["test_loss"])
    boot = points["test_loss"].to_numpy() + np.random.default_rng(0).normal(0, 0.1, (300, 1))
    fits, _, _ = fit_points(points, boot)
    v = verdict(points, boot, fits, runs, "base")
    diffs = {d["model"]: d for d in v["alpha_differences"]}
    assert list(diffs) == ["no_context", "ngram", "lstm", "transformer"]
    # cvfp − lstm = −1 + ln 3/ln 2 = ln 1.5/ln 2, exactly on every replicate (the shared effect cancels)
    assert diffs["lstm"]["delta_alpha"] == pytest.approx(math.log(1.5) / math.log(2))
    assert diffs["lstm"]["delta_alpha_ci"] == pytest.approx([math.log(1.5) / math.log(2)] * 2)
    assert diffs["lstm"]["clear_difference"] is True and diffs["lstm"]["n_points"] == 2
    assert diffs["no_context"]["delta_alpha"] == pytest.approx(0.0, abs=1e-9)
    # 10× cvfp's largest size (20,000 tokens): PPL 100·(2e5/2e4)^(−1) = 10 by the power law; two
    # sizes: no loss form, so no disagreement either
    extrap = {e["model"]: e for e in v["extrapolations"]}
    assert extrap["cvfp"]["tokens"] == pytest.approx(2e5) and extrap["cvfp"]["power_law"][0] == pytest.approx(10.0)
    assert extrap["cvfp"]["loss_form"] == [None, None, None] and extrap["cvfp"]["forms_disagree"] is None
    assert extrap["cvfp"]["preferred_form"] == "too_few_points" and extrap["cvfp"]["multiple"] == 10.0
    text = verdict_markdown(v)
    assert "α_cvfp − α_model on their common sizes" in text and "lstm +0.585 [+0.585, +0.585]" in text
    assert "cvfp 10.0 [" in text and "(power law; too few sizes for the loss form)" in text
    assert "AICc cannot choose between the two forms for cvfp, no_context, ngram, lstm, transformer" in text
    json.dumps(v, allow_nan=False)  # JSON-ready


def test_verdict_markdown_exponent_differences_and_extrapolations_by_hand():
    diffs = [
        {"model": "lstm", "delta_alpha": 0.05, "delta_alpha_ci": [-0.02, 0.12], "clear_difference": False},
        {"model": "transformer", "delta_alpha": -0.1, "delta_alpha_ci": [-0.15, -0.05], "clear_difference": True},
        {"model": "ngram", "delta_alpha": 0.2, "delta_alpha_ci": [None, None], "clear_difference": None},
    ]

    def extrap(model, power, loss, disagree, preferred="neither"):
        return {
            "model": model,
            "multiple": 10.0,
            "power_law": power,
            "loss_form": loss,
            "forms_disagree": disagree,
            "preferred_form": preferred,
        }

    extrapolations = [
        extrap("cvfp", [50.0, 48.0, 52.0], [60.0, 58.0, 62.0], True, "loss_form"),
        extrap("lstm", [45.0, 43.0, 47.0], [46.0, 44.0, 49.0], False, "power_law"),
        extrap("transformer", [41.0, 40.0, 42.0], [40.0, 39.0, 41.0], False, "loss_form"),
        extrap("no_context", [70.0, 69.0, 71.0], [71.0, 69.5, 72.0], False),
        extrap("ngram", [80.0, None, None], [90.0, None, None], None),
        extrap("untrained_context", [75.0, 74.0, 76.0], [None, None, None], None, "too_few_points"),
    ]
    alphas = [{"model": "lstm", "alpha": -0.2, "alpha_ci": [None, None], "interval": "ols_t", "preferred_form": "too_few_points"}]
    text = verdict_markdown(_verdict_dict(alphas=alphas, alpha_differences=diffs, extrapolations=extrapolations))
    lines = text.splitlines()
    assert (
        "AICc cannot choose between the two forms for lstm: too few points (the loss form's AICc needs at least 6 "
        "sizes), so neither form is preferred."
    ) in lines
    assert (
        "Paired difference of the exponents, α_cvfp − α_model on their common sizes (the same resamples for both; "
        "negative = cvfp's PPL falls faster with data): lstm +0.050 [-0.020, +0.120] (no clear difference); "
        "transformer -0.100 [-0.150, -0.050]; ngram +0.200 [n/a]."
    ) in lines
    assert (
        "Extrapolated test PPL at 10× each model's largest training size (beyond the data, so the form decides; "
        "bootstrap intervals): cvfp: the two forms disagree, power law 50.0 [48.0, 52.0] against loss form 60.0 "
        "[58.0, 62.0]; lstm 45.0 [43.0, 47.0] (power law, preferred by AICc; the loss form's 46.0 [44.0, 49.0] "
        "overlaps it); transformer 40.0 [39.0, 41.0] (loss form, preferred by AICc; the power law's 41.0 "
        "[40.0, 42.0] overlaps it); no_context 70.0 [69.0, 71.0] (power law; the loss form's 71.0 [69.5, 72.0] "
        "overlaps it); ngram power law 80.0 [n/a], loss form 90.0 [n/a] (no intervals to compare); "
        "untrained_context 75.0 [74.0, 76.0] (power law; too few sizes for the loss form)."
    ) in lines
    # a disagreeing model is never quoted with one form alone
    cvfp_part = next(line for line in lines if line.startswith("Extrapolated")).split("intervals): ")[1].split("; ")[0]
    assert cvfp_part == ("cvfp: the two forms disagree, power law 50.0 [48.0, 52.0] against loss form 60.0 [58.0, 62.0]")


# ----------------------------------------------------------------------------- the scaling figure
def test_scaling_figure_stays_near_the_data_and_draws_the_preferred_form(tmp_path, monkeypatch):
    from newllm import plots
    from newllm.study import model_style

    tokens = np.geomspace(1e4, 6.4e5, 7)
    rng = np.random.default_rng(14)
    rows = []
    for model, loss in (
        ("cvfp", 2.0 + 60.0 * tokens**-0.5),
        ("lstm", 9.0 - 0.3 * np.log(tokens)),
        ("ngram", 8.0 - 0.2 * np.log(tokens)),
    ):
        for t, value in zip(tokens, loss + rng.normal(0, 0.003, 7)):
            dim = 0 if model == "ngram" else 16
            rows.append(
                {
                    "model": model,
                    "variant": "base",
                    "context_dim": dim,
                    "samples": int(t // 1000),
                    "train_tokens": t,
                    "test_loss": value,
                }
            )
    points = pd.DataFrame(rows)
    points["test_ppl"] = np.exp(points["test_loss"])
    boot = points["test_loss"].to_numpy() + rng.normal(0, 0.003, (100, len(points)))
    fits, _, curves = fit_points(points, boot)
    preferred = fits.set_index("model")["preferred_form"]
    assert (preferred["cvfp"], preferred["lstm"]) == ("loss_form", "power_law")  # 7 sizes: AICc can choose
    assert curves["tokens"].max() == pytest.approx(6.4e6)  # the curves table stops at 10× the data
    figures = []
    monkeypatch.setattr("newllm.plots.scaling.save_figure", lambda fig, path: figures.append(fig))
    labels = plots.plot_scaling(points, fits, curves, tmp_path / "scaling.png")
    ax = figures[0].axes[0]
    lo, hi = ax.get_xlim()
    assert lo <= 1e4 and 6.4e5 < hi <= 1.5 * 6.4e5  # the axis stops near the data, not at 10×
    drawn = [line for line in ax.get_lines() if len(line.get_xdata())]
    assert max(max(line.get_xdata()) for line in drawn) <= hi * (1 + 1e-9)
    # cvfp: the loss form's curve, solid over the data; lstm: the power law's
    for model, form in (("cvfp", "loss_form"), ("lstm", "power_law")):
        style = model_style(model)
        solid = [line for line in drawn if line.get_color() == style["color"] and line.get_linestyle() == "-"]
        assert len(solid) == 1
        c = curves[(curves["model"] == model) & (curves["form"] == form) & ~curves["extrapolation"]].sort_values("tokens")
        np.testing.assert_allclose(solid[0].get_ydata(), c["ppl"], rtol=1e-12)
    # every model in its catalogue colour and marker
    for model in ("cvfp", "lstm", "ngram"):
        style = model_style(model)
        markers = {line.get_marker() for line in drawn if line.get_color() == style["color"] and line.get_linestyle() == "None"}
        assert markers == {style["marker"]}
    assert [label.split(":")[0] for label in labels] == ["cvfp 16-d", "ngram", "lstm 16-d"]
    assert labels[0].endswith("(loss form)") and not labels[2].endswith("(loss form)")
