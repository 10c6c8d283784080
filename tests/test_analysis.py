import math

import numpy as np
import pandas as pd
import pytest

from newllm.analysis import comparison_table, prediction_analysis, sliding_window_fits
from newllm.scaling import fit_table


def test_sliding_windows_recover_alpha_per_window():
    # a broken power law: α = -0.5 up to 4e4 tokens, then -0.2 (continuous at the break)
    tokens = np.array([1e4, 2e4, 4e4, 8e4, 1.6e5])
    ppl = np.where(tokens <= 4e4, 1e4 * tokens**-0.5, 1e4 * 4e4**-0.5 * (tokens / 4e4) ** -0.2)
    runs = pd.DataFrame({"config": "x", "train_tokens": tokens, "val_ppl": ppl})
    windows = sliding_window_fits(runs, ["config"], window=3, step=1)
    assert list(windows["window"]) == [0, 1, 2]
    assert windows["alpha"].iloc[0] == pytest.approx(-0.5)
    assert windows["alpha"].iloc[2] == pytest.approx(-0.2)
    assert windows["delta_alpha"].iloc[2] == pytest.approx(windows["alpha"].iloc[2] - windows["alpha"].iloc[1])
    assert math.isnan(windows["delta_alpha"].iloc[0])
    assert windows["tokens_min"].iloc[1] == 2e4 and windows["tokens_max"].iloc[1] == 8e4
    assert len(sliding_window_fits(runs, ["config"], window=2, step=2)) == 2
    with pytest.raises(ValueError):
        sliding_window_fits(runs, ["config"], window=1)


def _runs():
    rng = np.random.default_rng(0)
    rows = []
    for variant, er_shift in (("base", 0.0), ("tok2", 5.0)):
        for dim in (64, 128):
            for k, tokens in enumerate([1e4, 2e4, 4e4, 8e4]):
                er = 60 + er_shift + dim / 64 + rng.normal(0, 2)
                rows.append({
                    "variant": variant, "context_dim": dim, "samples": 25 * 2**k, "train_tokens": tokens,
                    # known relation: ln PPL = -0.4 ln tokens - 0.02 ER + 11
                    "val_ppl": math.exp(-0.4 * math.log(tokens) - 0.02 * er + 11),
                    "val_er_pct": er, "train_er_pct": er + 1, "train_val_er_gap_pct": 1.0,
                    "phase1_iterations": 60, "val_accuracy": 0.1 + k / 100,
                    "num_input_tokens": 1 if variant == "base" else 2, "num_layers": 1, "ffn_layers": 1,
                    "activation": "gelu", "diversity": "mcdl", "dist_reg_weight": 0.9,
                    "context_block_parameters": dim * 100, "token_block_parameters": 5000,
                })
    return pd.DataFrame(rows)


def test_prediction_recovers_a_known_relation():
    result = prediction_analysis(_runs())
    ll = result["log_linear"]
    assert ll["alpha"] == pytest.approx(-0.4, abs=1e-9)
    assert ll["beta"] == pytest.approx(-0.02, abs=1e-9)
    assert ll["gamma"] == pytest.approx(11, abs=1e-7)
    assert ll["r2"] == pytest.approx(1.0)
    corr = {c["predictor"]: c for c in result["correlations"]}
    assert math.isnan(corr["phase1_iterations"]["pearson_r"])  # constant column: undefined, not 0
    assert -1 <= corr["val_er_pct"]["spearman_rho"] <= 1 and 0 <= corr["val_er_pct"]["pearson_p"] <= 1
    lin = result["linear"]
    runs = _runs()
    from scipy import stats

    ref = stats.linregress(runs["val_er_pct"], runs["val_ppl"])
    assert lin["b"] == pytest.approx(ref.slope) and lin["a"] == pytest.approx(ref.intercept)


def test_comparison_table_one_row_per_configuration():
    runs = _runs()
    table = comparison_table(runs, fit_table(runs, ["variant", "context_dim"]))
    assert len(table) == 4
    row = table[(table["variant"] == "tok2") & (table["context_dim"] == 128)].iloc[0]
    group = runs[(runs["variant"] == "tok2") & (runs["context_dim"] == 128)]
    assert row["best_val_ppl"] == group["val_ppl"].min()
    assert row["parameters"] == 128 * 100 + 5000
    assert row["ppl_per_million_parameters"] == pytest.approx(row["best_val_ppl"] / (row["parameters"] / 1e6))
    assert row["num_input_tokens"] == 2
