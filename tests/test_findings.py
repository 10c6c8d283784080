"""The verdict's opening (newllm.analysis.findings): history gain, head gains, claims."""

import numpy as np
import pandas as pd

from newllm.analysis.findings import (
    claim_context_dim,
    claim_er_predicts,
    claim_fixed_point,
    claim_history,
    claim_input_tokens,
    claim_seed_alpha,
    findings_markdown,
    head_gains,
    head_markdown,
    history_gains,
)


def _paired(gains):
    return pd.DataFrame(
        [
            {
                "comparison": "history",
                "model": "cvfp",
                "variant": "base",
                "context_dim": 64,
                "samples": n,
                "baseline": "reset_context",
                "baseline_context_dim": 64,
                "gain": g,
                "gain_ci_low": lo,
                "gain_ci_high": hi,
                "ppl_ratio": float(np.exp(g)),
            }
            for n, (g, lo, hi) in gains.items()
        ]
    )


POINTS = pd.DataFrame(
    [{"model": "cvfp", "variant": "base", "context_dim": 64, "samples": n, "train_tokens": 500.0 * n} for n in (10, 20)]
)


def test_history_gain_is_clear_only_when_its_interval_excludes_zero():
    history = history_gains(_paired({10: (0.01, -0.002, 0.02), 20: (0.03, 0.01, 0.05)}), POINTS)
    assert [h["clear"] for h in history] == [0, 1] and history[1]["train_tokens"] == 10000.0
    assert claim_history(history)["status"] == "supported"
    assert claim_history(history_gains(_paired({20: (-0.03, -0.05, -0.01)}), POINTS))["status"] == "contradicted"
    assert claim_history(history_gains(_paired({20: (0.0, -0.01, 0.01)}), POINTS))["status"] == "inconclusive"
    assert claim_history([])["status"] == "not tested here"
    text = findings_markdown({"history": history, "memory": None, "head_gains": []})
    assert "Interval above 0 at 1 of 2 points (conversations: 20)." in text and "| base | 64 | 20 | 10,000 | +0.0300 |" in text


def test_head_gains_list_the_sizes_clearly_above_and_below():
    points = pd.DataFrame(
        [
            {
                "model": "lstm",
                "variant": "base",
                "context_dim": 64,
                "samples": n,
                "gain_over_head": g,
                "gain_over_head_ci_low": lo,
                "gain_over_head_ci_high": hi,
            }
            for n, g, lo, hi in ((10, -0.1, -0.2, -0.05), (20, 0.0, -0.1, 0.1), (40, 0.2, 0.1, 0.3))
        ]
    )
    (entry,) = head_gains(points)
    assert entry["above"] == [40] and entry["below"] == [10] and entry["largest"] == 40 and entry["ci"] == [0.1, 0.3]
    (line,) = head_markdown([entry])[3:]
    expected = "- LSTM: clearly above the head at 1 of 3 sizes (40 conversations), clearly below at 10; at 40: "
    assert line == expected + "+0.2000 [+0.1000, +0.3000]"
    (never,) = head_markdown(head_gains(points[points["samples"] < 40]))[3:]
    assert never.startswith("- LSTM: clearly above the head at 0 of 2 sizes, clearly below at 10; at 20:"), never


def _fits(rows):
    return pd.DataFrame(
        [
            {"model": "cvfp", "variant": "base", "context_dim": d, "alpha": a, "alpha_boot_ci_low": lo, "alpha_boot_ci_high": hi}
            for d, a, lo, hi in rows
        ]
    )


def test_context_dim_and_seed_alpha_claims_by_hand():
    worse = _fits([(32, -0.30, -0.32, -0.28), (128, -0.20, -0.22, -0.18)])
    assert claim_context_dim(worse, "base")["status"] == "supported"
    better = _fits([(32, -0.20, -0.22, -0.18), (128, -0.30, -0.32, -0.28)])
    assert claim_context_dim(better, "base")["status"] == "contradicted"
    assert claim_context_dim(_fits([(64, -0.2, -0.3, -0.1)]), "base")["status"] == "not tested here"
    chat = {"corpus": {"name": "chitchat"}, "embeddings": {"source": "bigram"}}
    assert claim_seed_alpha(worse, chat, "base")["status"] == "not tested here"
    ultra = {"corpus": {"name": "ultrachat_200k"}, "embeddings": {"source": "gpt2"}}
    assert claim_seed_alpha(_fits([(768, -0.5, -0.52, -0.48)]), ultra, "base")["status"] == "supported"
    assert claim_seed_alpha(_fits([(768, -0.2, -0.25, -0.15)]), ultra, "base")["status"] == "contradicted"


def test_fixed_point_and_er_claims_by_hand():
    runs = pd.DataFrame({"model": ["cvfp", "cvfp"], "cache_converged": [True, True], "train_convergence_rate": [0.9, 1.0]})
    claim = claim_fixed_point(runs)
    assert claim["status"] == "supported" and "2/2 cache solves" in claim["evidence"] and "95.0 %" in claim["evidence"]
    assert claim_fixed_point(runs.assign(cache_converged=[True, False]))["status"] == "contradicted"
    row = {
        "predictor": "dev_er_pct",
        "partial_r": -0.6,
        "partial_r_ci_low": -0.8,
        "partial_r_ci_high": -0.3,
        "n_eff": 12.0,
        "n_configurations": 1,
        "config_r": np.nan,
    }
    ppl, alpha = claim_er_predicts(pd.DataFrame([row]))
    assert ppl["status"] == "supported" and alpha["status"] == "not tested here"
    ppl, _ = claim_er_predicts(pd.DataFrame([{**row, "partial_r": 0.1, "partial_r_ci_low": -0.2, "partial_r_ci_high": 0.4}]))
    assert ppl["status"] == "inconclusive"


def test_input_tokens_claim_uses_the_paired_difference():
    runs = pd.DataFrame({"model": ["cvfp", "cvfp"], "variant": ["base", "tok2"], "num_input_tokens": [1, 2]})
    points = pd.DataFrame(
        [
            {"model": "cvfp", "variant": v, "context_dim": 64, "samples": 20, "test_loss": loss}
            for v, loss in (("base", 5.0), ("tok2", 4.9))
        ]
    )
    losses = np.array([[5.0, 4.9], [5.1, 5.0], [4.9, 4.8]])  # tok2 better by 0.1 on every replicate
    claim = claim_input_tokens(runs, points, losses)
    assert claim["status"] == "supported" and "+0.1000 nats" in claim["evidence"]
    assert claim_input_tokens(runs.iloc[:1], points, losses)["status"] == "not tested here"
