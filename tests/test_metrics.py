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
