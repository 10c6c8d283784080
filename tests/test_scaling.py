import numpy as np
import pandas as pd
import pytest

from newllm.scaling import fit_power_law, fit_table, predict_ppl


def test_recovers_alpha_and_a_exactly():
    tokens = np.array([6e4, 1.2e5, 2.4e5, 4.8e5, 9.6e5])
    ppl = 1.07e5 * tokens**-0.476
    fit = fit_power_law(tokens, ppl)
    assert fit["alpha"] == pytest.approx(-0.476, abs=1e-12)
    assert fit["A"] == pytest.approx(1.07e5, rel=1e-9)
    assert fit["r2"] == pytest.approx(1.0)
    assert fit["alpha_stderr"] == pytest.approx(0.0, abs=1e-6)
    assert predict_ppl(fit, 1e6) == pytest.approx(1.07e5 * 1e6**-0.476)


def test_confidence_interval_matches_t_distribution():
    rng = np.random.default_rng(0)
    tokens = np.geomspace(1e4, 1e6, 8)
    ppl = 2e5 * tokens**-0.5 * np.exp(rng.normal(0, 0.05, tokens.size))
    fit = fit_power_law(tokens, ppl)
    from scipy import stats

    half = stats.t.ppf(0.975, 6) * fit["alpha_stderr"]
    assert fit["alpha_ci_low"] == pytest.approx(fit["alpha"] - half)
    assert fit["alpha_ci_low"] < -0.5 < fit["alpha_ci_high"]


def test_two_points_have_no_interval_and_bad_input_raises():
    fit = fit_power_law([1e3, 1e4], [100.0, 50.0])
    assert np.isnan(fit["alpha_ci_low"]) and fit["alpha"] == pytest.approx(np.log10(0.5))
    with pytest.raises(ValueError):
        fit_power_law([1e3], [10.0])
    with pytest.raises(ValueError):
        fit_power_law([1e3, 1e4], [10.0, -1.0])
    with pytest.raises(ValueError):
        fit_power_law([1e3, 1e3], [10.0, 9.0])


def test_fit_table_groups_runs():
    tokens = np.array([1e4, 2e4, 4e4])
    runs = pd.DataFrame({
        "variant": ["base"] * 6,
        "context_dim": [64] * 3 + [128] * 3,
        "train_tokens": np.r_[tokens, tokens],
        "val_ppl": np.r_[1e4 * tokens**-0.3, 2e4 * tokens**-0.4],
    })
    table = fit_table(runs, ["variant", "context_dim"]).set_index("context_dim")
    assert table.loc[64, "alpha"] == pytest.approx(-0.3)
    assert table.loc[128, "A"] == pytest.approx(2e4)
    assert table.loc[128, "ppl_at_1M"] == pytest.approx(2e4 * 1e6**-0.4)


def test_fit_command_on_an_external_table(tmp_path, capsys):
    from newllm.cli import fit_main

    # SPEC §10, v3 per size (samples -> train tokens, val PPL)
    table = tmp_path / "published.csv"
    pd.DataFrame({
        "config": ["1L 768d 2tok (v3)"] * 5,
        "tokens": [62891, 122795, 240132, 473429, 948524],
        "ppl": [591.7, 400.3, 296.8, 211.0, 168.0],
    }).to_csv(table, index=False)
    assert fit_main([str(table), "--output", str(tmp_path / "fits.csv")]) == 0
    fit = pd.read_csv(tmp_path / "fits.csv").iloc[0]
    assert fit["alpha"] == pytest.approx(-0.466, abs=0.005)  # the source's reported α
    assert fit["r2"] == pytest.approx(0.992, abs=0.002)
    assert "1L 768d 2tok (v3)" in capsys.readouterr().out
    assert fit_main([str(table), "--ppl", "perplexity"]) == 2
    assert fit_main([str(table), "--window", "4"]) == 0
    out = capsys.readouterr().out
    assert "sliding windows of 4 sizes" in out and out.count("1L 768d 2tok (v3)") == 3  # fit + 2 windows
