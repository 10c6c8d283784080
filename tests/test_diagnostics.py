import pytest
import torch

from newllm.diagnostics import convergence_passes, convergence_verdict, identity_check, quality_band
from newllm.model import ContextBlock, TokenInput, init_weights


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
    assert result["verdict"] == verdict
    assert result["std"] == pytest.approx(torch.tensor(series, dtype=torch.float64).std(unbiased=False).item())


def test_convergence_verdict_rejects_short_or_nan():
    with pytest.raises(ValueError):
        convergence_verdict([0.1])
    with pytest.raises(ValueError):
        convergence_verdict([0.1, float("nan")])


def test_convergence_passes_reach_zero_for_a_short_stream():
    torch.manual_seed(0)
    token_input = TokenInput(torch.randn(20, 4))
    block = ContextBlock(6, 4)
    init_weights(block)
    stream = torch.randint(0, 20, (5,))
    series = convergence_passes(block, token_input, stream, passes=8)
    assert len(series) == 7
    assert series[-1] == 0.0  # after n = 5 sweeps a 5-token stream is exact (Jacobi)
    assert convergence_verdict(series)["verdict"] in ("CONVERGING", "CONVERGED")


def test_quality_band_thresholds():
    assert quality_band(81, 82)["band"] == "good"
    assert quality_band(77.5, 78)["band"] == "fair"
    assert quality_band(70, 70)["band"] == "revisit"
    assert quality_band(70, 76)["overfitting_suspected"] and not quality_band(70, 74)["overfitting_suspected"]


def test_memory_probe_matches_the_exact_recurrence_on_the_whole_perturbed_stream():
    from newllm.diagnostics import memory_probe
    from newllm.model import ContextBlock, TokenInput, init_weights
    from newllm.phase1 import solve_cache

    torch.manual_seed(0)
    token_input = TokenInput(torch.randn(30, 5), 1)
    block = ContextBlock(6, 5)
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
