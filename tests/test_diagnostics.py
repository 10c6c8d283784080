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
