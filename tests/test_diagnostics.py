import numpy as np
import pytest
import torch

from newllm.diagnostics import convergence_passes, convergence_verdict, identity_check, quality_band
from newllm.model import ContextBlock, ModelConfig, TokenInput, init_weights


def _criterion(result, name):
    return next(c for c in result["criteria"] if c["name"] == name)


def test_identity_check_on_constructed_cases():
    healthy = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    result = identity_check(healthy, torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    assert result["passed"]
    assert _criterion(result, "mean_context_norm")["value"] == pytest.approx(1.0)
    assert _criterion(result, "mean_cosine_to_token_embedding")["value"] == pytest.approx(0.0)
    # copying the token embedding: cosine 1
    copy = identity_check(healthy, healthy.clone())
    assert not copy["passed"] and _criterion(copy, "mean_cosine_to_token_embedding")["passed"] is False
    # global attractor: every context the same vector
    attractor = identity_check(torch.ones(5, 2) * 3.0)
    assert not attractor["passed"]
    assert _criterion(attractor, "mean_distance_from_mean_context")["value"] == pytest.approx(0.0)
    assert _criterion(attractor, "mean_context_norm")["passed"] is True  # each criterion judges its own value
    assert _criterion(attractor, "mean_cosine_to_token_embedding")["passed"] is None  # n/a without embeddings
    # zero map
    assert not identity_check(torch.zeros(4, 2))["passed"]


@pytest.mark.parametrize(
    "series,verdict",
    [
        ([0.5, 0.4, 0.3, 0.2, 0.1], "CONVERGING"),
        ([0.001, 0.001, 0.0012, 0.0009, 0.001], "CONVERGED"),
        ([0.1, 0.2, 0.3, 0.4], "DIVERGING"),
        ([0.05, 0.0, 0.05, 0.05, 0.0, 0.05], "UNSTABLE"),  # slope exactly 0, std 0.024 > 0.01
    ],
)
def test_convergence_verdict(series, verdict):
    result = convergence_verdict(series)
    assert result["verdict"] == verdict and result["mse"] == series
    assert result["slope"] == pytest.approx(np.polyfit(np.arange(1, len(series) + 1), series, 1)[0], abs=1e-12)
    assert result["std"] == pytest.approx(torch.tensor(series, dtype=torch.float64).std(unbiased=False).item())


def test_convergence_verdict_rejects_short_or_nan():
    with pytest.raises(ValueError):
        convergence_verdict([0.1])
    with pytest.raises(ValueError):
        convergence_verdict([0.1, float("nan")])


def test_convergence_passes_reach_zero_for_a_short_stream():
    torch.manual_seed(0)
    token_input = TokenInput(torch.randn(20, 4))
    block = ContextBlock(ModelConfig(6, 4))
    init_weights(block)
    stream = torch.randint(0, 20, (5,))
    series = convergence_passes(block, token_input, stream, passes=8)
    # by hand: sweep p computes every context from sweep p - 1's (zeros before the first)
    contexts, expected = torch.zeros(5, 6), []
    with torch.no_grad():
        for p in range(1, 9):
            prev = torch.cat([torch.zeros(1, 6), contexts[:-1]])
            new = torch.stack([block(prev[i : i + 1], token_input(stream, torch.tensor([i])))[0, -1] for i in range(5)])
            if p > 1:
                expected.append(float((new - contexts).pow(2).mean()))
            contexts = new
    assert series == pytest.approx(expected, rel=1e-5, abs=1e-12)
    # after n = 5 sweeps a 5-token stream is exact (Jacobi): MSE(C^6, C^5) onwards is 0
    assert all(v > 0 for v in series[:4]) and series[4:] == [0.0, 0.0, 0.0]
    result = convergence_verdict(series)
    assert result["slope"] == pytest.approx(np.polyfit(np.arange(1, 8), series, 1)[0]) and result["slope"] < -0.001
    assert result["verdict"] == "CONVERGING"


def test_quality_band_thresholds():
    assert quality_band(81, 82)["band"] == "good"
    assert quality_band(77.5, 78)["band"] == "fair"
    assert quality_band(70, 70)["band"] == "revisit"
    assert quality_band(70, 76)["overfitting_suspected"] and not quality_band(70, 74)["overfitting_suspected"]


def test_memory_probe_matches_the_exact_recurrence_on_the_whole_perturbed_stream():
    from newllm.context_cache import solve_cache
    from newllm.diagnostics import memory_probe
    from newllm.model import ContextBlock, ModelConfig, TokenInput, init_weights

    torch.manual_seed(0)
    token_input = TokenInput(torch.randn(30, 5), 1)
    block = ContextBlock(ModelConfig(6, 5))
    init_weights(block)
    stream = torch.randint(0, 30, (40,))
    probe = memory_probe(block, token_input, stream, max_lag=6, num_positions=1, seed=3)
    # brute force: the same position and replacements, the recurrence run from token 0
    gen = torch.Generator().manual_seed(3)
    i = int(torch.randint(7, 40, (1,), generator=gen))
    replacement = stream[torch.randint(0, 40, (1, 6), generator=gen)][0]
    clean, _ = solve_cache(block, token_input, stream, "sequential")
    for k in range(1, 7):
        token = int(replacement[k - 1])
        if token == int(stream[i - k]):
            token = (token + 1) % 30
        changed = stream.clone()
        changed[i - k] = token
        perturbed, _ = solve_cache(block, token_input, changed, "sequential")
        expected = float((perturbed[i, -1] - clean[i, -1]).norm())
        assert probe["effect"][k - 1] == pytest.approx(expected, rel=1e-4, abs=1e-6), k
    assert probe["relative"][0] == 1.0
    assert probe["lags"] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="more than max_lag"):
        memory_probe(block, token_input, stream[:7], max_lag=6)


def test_decay_lag_is_the_first_lag_below_the_fraction():
    from newllm.diagnostics import decay_lag

    relative = [1.0, 0.5, 0.09, 0.2, 0.02, 0.005]  # not monotone: the first crossing counts
    assert decay_lag(relative, 0.10) == 3 and decay_lag(relative, 0.01) == 6
    assert decay_lag(relative, 0.001) is None


def test_collapse_thresholds_scale_with_the_square_root_of_context_dim():
    # a LayerNorm output has norm sqrt(d_c): 64-d contexts of norm 0.5 are near zero
    d = 64
    small = torch.randn(100, d)
    small = 0.5 * small / small.norm(dim=1, keepdim=True)
    result = identity_check(small)
    norm = next(c for c in result["criteria"] if c["name"] == "mean_context_norm")
    assert norm["value"] == pytest.approx(0.5) and norm["threshold"] == "> 0.8" and norm["passed"] is False
    assert result["passed"] is False
    healthy = torch.nn.functional.layer_norm(torch.randn(100, d), (d,))
    assert identity_check(healthy)["passed"] is True


def test_identity_check_values_thresholds_and_strict_passes():
    # d_c = 4: thresholds 0.1·√4 = 0.2; rows (±0.2, 0, 0, 0): mean norm and mean distance
    # from the mean context are exactly 0.2, which does not pass (strictly greater)
    edge = torch.tensor([[0.2, 0.0, 0.0, 0.0], [-0.2, 0.0, 0.0, 0.0]], dtype=torch.float64)
    result = identity_check(edge)
    assert [c["name"] for c in result["criteria"]] == [
        "mean_context_norm",
        "mean_cosine_to_token_embedding",
        "mean_distance_from_mean_context",
    ]
    norm, cosine, spread = result["criteria"]
    assert norm == {"name": "mean_context_norm", "value": 0.2, "threshold": "> 0.2", "passed": False}
    assert spread == {"name": "mean_distance_from_mean_context", "value": 0.2, "threshold": "> 0.2", "passed": False}
    assert cosine["value"] is None and cosine["passed"] is None and cosine["note"].startswith("not applicable")
    assert cosine["threshold"] == "< 0.95" and result["passed"] is False
    # uncentred rows of unequal norm: mean of the row norms, distances from the column mean
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    result = identity_check(x)
    mean = x.mean(0)
    assert result["criteria"][0]["value"] == pytest.approx((5 + 1 + 2) / 3)
    assert result["criteria"][2]["value"] == pytest.approx(sum(float((r - mean).norm()) for r in x) / 3)
    assert result["criteria"][0]["passed"] and result["criteria"][2]["passed"] and result["passed"]
    # a mean cosine of exactly 0.95 (1, 1, 1, 0.8) is copying: the criterion is strict
    contexts = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [4.0, 3.0]])
    tokens = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    cosine = identity_check(contexts, tokens)["criteria"][1]
    assert cosine["value"] == 0.95 and cosine["passed"] is False


def test_convergence_verdict_boundaries_are_strict():
    # slope exactly ∓0.001 is neither converging/diverging nor flat: UNSTABLE.  Two points
    # (0, ±0.001) make every step of the least-squares slope exact (means, deviations and
    # products are halvings of 0.001, x deviations ±0.5), so the slope is the float 0.001
    down, up = convergence_verdict([0.001, 0.0]), convergence_verdict([0.0, 0.001])
    assert (down["slope"], up["slope"]) == (-0.001, 0.001)
    assert down["verdict"] == "UNSTABLE" and up["verdict"] == "UNSTABLE"
    # flat (slope 0) but std exactly 0.01: not converged
    flat = convergence_verdict([0.02, 0.0, 0.0, 0.02])
    assert abs(flat["slope"]) < 1e-15 and flat["std"] == 0.01 and flat["verdict"] == "UNSTABLE"
    assert convergence_verdict([0.001, 0.001])["verdict"] == "CONVERGED"  # two values suffice


def test_quality_band_boundaries():
    assert quality_band(80, 80) == {"band": "fair", "val_er_pct": 80, "train_val_er_gap_pct": 0, "overfitting_suspected": False}
    assert quality_band(75, 70)["band"] == "fair" and quality_band(75.5, 70)["band"] == "fair"
    assert quality_band(74.9, 70)["band"] == "revisit"
    assert quality_band(70, 75)["train_val_er_gap_pct"] == 5 and not quality_band(70, 75)["overfitting_suspected"]


def test_decay_lag_needs_strictly_below():
    from newllm.diagnostics import decay_lag

    assert decay_lag([1.0, 0.1, 0.05], 0.1) == 3


def _probe_setup(d_c=6, d_e=5, vocab=30):
    torch.manual_seed(0)
    token_input = TokenInput(torch.randn(vocab, d_e), 1)
    block = ContextBlock(ModelConfig(d_c, d_e))
    init_weights(block)
    return block, token_input


def test_memory_probe_replaces_a_token_equal_to_the_original_by_the_next_id():
    # a constant stream: every drawn replacement equals the original token 4, so each
    # becomes (4 + 1) mod V = 5; brute force with 5 at i - k
    from newllm.context_cache import solve_cache
    from newllm.diagnostics import memory_probe

    block, token_input = _probe_setup()
    stream = torch.full((12,), 4)
    probe = memory_probe(block, token_input, stream, max_lag=3, num_positions=2, seed=1)
    clean, _ = solve_cache(block, token_input, stream, "sequential")
    positions = torch.randint(4, 12, (2,), generator=torch.Generator().manual_seed(1))
    for k in range(1, 4):
        effects = []
        for i in positions.tolist():
            changed = stream.clone()
            changed[i - k] = 5
            perturbed, _ = solve_cache(block, token_input, changed, "sequential")
            effects.append(float((perturbed[i, -1] - clean[i, -1]).norm()))
        assert probe["effect"][k - 1] == pytest.approx(sum(effects) / 2, rel=1e-4, abs=1e-7), k
    assert probe["relative"] == pytest.approx([e / probe["effect"][0] for e in probe["effect"]])
    assert probe["lag_below_10pct"] == decay_lag_of(probe["relative"], 0.10)
    assert probe["lag_below_1pct"] == decay_lag_of(probe["relative"], 0.01)
    assert (probe["positions"], probe["max_lag"]) == (2, 3)
    assert memory_probe(block, token_input, stream[:5], max_lag=3)["lags"] == [1, 2, 3]  # max_lag + 2 tokens suffice


def decay_lag_of(relative, fraction):
    return next((k + 1 for k, r in enumerate(relative) if r < fraction), None)


def test_memory_probe_of_a_block_that_ignores_its_tokens_reports_zero_effect():
    from newllm.context_cache import solve_cache
    from newllm.diagnostics import memory_probe

    block, token_input = _probe_setup()
    with torch.no_grad():
        block.layers[0].ffn[0].weight[:, 6:] = 0.0  # the columns that read x̃
    stream = torch.randint(0, 30, (20,), generator=torch.Generator().manual_seed(0))
    probe = memory_probe(block, token_input, stream, max_lag=4, num_positions=3)
    # Zero in exact arithmetic, but the K + 1 copies of a window are rows of one batch and
    # the matmul may sum rows at different batch positions in different orders: each of the
    # max_lag + 1 steps rounds every coordinate by a few ulps of the context (LayerNorm
    # output, norm ≈ √d_c ≈ 2.4; seen: 3.3e-7).  A block that reads its tokens moves the
    # context by ~0.2 per lag (test_memory_probe_defaults' block), 10⁴ times this bound.
    clean, _ = solve_cache(block, token_input, stream, "sequential")
    rounding = 8 * (4 + 1) * torch.finfo(torch.float32).eps * float(clean[:, -1].norm(dim=-1).max())
    assert max(probe["effect"]) <= rounding
    assert probe["lags"] == [1, 2, 3, 4]


def test_memory_probe_of_a_block_that_ignores_its_inputs_reports_exactly_zero_effect():
    """All FFN weights zero: every product is an exact 0, so every copy of a window computes
    the same bits whatever its batch position; effect exactly 0, relative all 0 (no division
    by a zero lag-1 effect) and both decay lags 1."""
    from newllm.diagnostics import memory_probe

    block, token_input = _probe_setup()
    with torch.no_grad():
        block.layers[0].ffn[0].weight.zero_()
    stream = torch.randint(0, 30, (20,), generator=torch.Generator().manual_seed(0))
    probe = memory_probe(block, token_input, stream, max_lag=4, num_positions=3)
    assert probe["effect"] == [0.0] * 4 and probe["relative"] == [0.0] * 4
    assert probe["lag_below_10pct"] == 1 and probe["lag_below_1pct"] == 1


def test_memory_probe_defaults():
    from newllm.diagnostics import memory_probe

    block, token_input = _probe_setup()
    stream = torch.randint(0, 30, (70,), generator=torch.Generator().manual_seed(2))
    probe = memory_probe(block, token_input, stream)
    assert (probe["max_lag"], probe["positions"], len(probe["effect"])) == (64, 128, 64)
    assert probe["effect"] == memory_probe(block, token_input, stream, max_lag=64, num_positions=128, seed=0)["effect"]
