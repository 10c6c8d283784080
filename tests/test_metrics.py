import math

import pytest
import torch

from newllm.metrics import convergence_counts, effective_rank, format_rate


def test_effective_rank_known_answers():
    assert effective_rank(torch.eye(7)) == pytest.approx(7.0)
    assert effective_rank(torch.ones(20, 5)) == pytest.approx(1.0)
    # singular values (3, 1): p = (3/4, 1/4), ER = exp(H(p))
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(math.exp(h))
    assert effective_rank(torch.zeros(4, 3)) == 0.0


def test_effective_rank_samples_rows_reproducibly():
    x = torch.randn(30_000, 16)
    a, b = effective_rank(x, seed=1), effective_rank(x, seed=1)
    assert a == b
    assert 14 < a <= 16
    with pytest.raises(ValueError):
        effective_rank(torch.zeros(0, 3))


def test_convergence_counts_threshold_on_mean_squared_change():
    prev = torch.zeros(3, 2)
    new = torch.tensor([[0.1, 0.1], [0.3, 0.0], [0.2, 0.2]])  # per-token: 0.01, 0.045, 0.04
    assert convergence_counts(new, prev, 0.03) == (1, 3)
    assert format_rate(1741, 6400) == "27.2 % (1741/6400)"
    assert format_rate(0, 6400) == "0.0 % (0/6400)"


def test_effective_rank_of_a_scaled_down_or_rank_deficient_matrix():
    # Σσ < 1 is a matrix like any other (only an all-zero one has ER 0), and a zero
    # singular value contributes nothing (0 · log 0 = 0), not NaN
    assert effective_rank(0.1 * torch.eye(3)) == pytest.approx(3.0)
    assert effective_rank(torch.diag(torch.tensor([2.0, 0.0]))) == pytest.approx(1.0)
    assert effective_rank(torch.tensor([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])) == pytest.approx(1.0)


def test_effective_rank_subsamples_rows_not_columns_with_the_default_seed():
    # 50 rows of 8 columns, max_rows 20: the ER of the 20 rows torch.randperm(seed 0) picks
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(3)) * torch.linspace(0.1, 3.0, 8)
    rows = torch.randperm(50, generator=torch.Generator().manual_seed(0))[:20]
    sigma = torch.linalg.svdvals(x[rows].double())
    p = sigma / sigma.sum()
    expected = math.exp(-float((p * p.log()).sum()))
    assert effective_rank(x, max_rows=20) == pytest.approx(expected, rel=1e-12)
    assert effective_rank(x, max_rows=20) != pytest.approx(effective_rank(x), rel=1e-3)  # the sample matters here
    assert effective_rank(x, max_rows=20, seed=5) != pytest.approx(expected, rel=1e-6)


def test_convergence_counts_default_threshold_is_strict():
    prev = torch.zeros(4, 2)
    # per-token mean squared change: 0.25 (exactly the threshold: not converged), 0.0625, 0.5, 0.02
    new = torch.tensor([[0.5, 0.5], [0.25, 0.25], [1.0, 0.0], [0.2, 0.0]])
    assert convergence_counts(new, prev, 0.25) == (2, 4)
    assert convergence_counts(new, prev) == (1, 4)  # default threshold 0.03 (docs/method.md §4)


def test_format_rate_of_one_token():
    assert format_rate(1, 1) == "100.0 % (1/1)" and format_rate(0, 0) == "0.0 % (0/0)"
