import math

import pytest
import torch

from newllm.losses import cvfp_loss, mcdl_loss, nuc_loss, odcm_loss, phase1_loss, sdl_loss, wmse_loss


def test_cvfp_is_raw_mse_and_detaches_previous():
    c = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    prev = torch.tensor([[0.0, 2.0], [3.0, 2.0]], requires_grad=True)
    loss = cvfp_loss(c, prev)
    assert loss.item() == pytest.approx((1 + 0 + 0 + 4) / 4)
    loss.backward()
    assert prev.grad is None
    # raw, not normalised: scaled vectors with equal directions still differ
    assert cvfp_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.5)


def test_mcdl_hand_computed():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    # mean (1, 1); every row deviates by (±1, ±1): ‖X − μ‖_F = sqrt(8); / n = 4
    assert mcdl_loss(x).item() == pytest.approx(-math.sqrt(8) / 4)


def test_odcm_hand_computed():
    x = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    # unbiased variance per column = 2, covariance = 2
    var_term = max(0.0, 1 - math.sqrt(2 + 1e-4))
    cov_term = 0.04 * (2 * 2.0**2) / 2
    assert odcm_loss(x).item() == pytest.approx(var_term + cov_term, rel=1e-6)
    # collapsed batch: variance term is 1 - sqrt(1e-4)
    assert odcm_loss(torch.ones(5, 3)).item() == pytest.approx(1 - 0.01, rel=1e-6)


def test_sdl_and_nuc_known_values():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    # centred already; singular values sqrt(2), sqrt(2): entropy ln 2, nuclear norm 2 sqrt(2)
    assert sdl_loss(x).item() == pytest.approx(-math.log(2), rel=1e-5)
    assert nuc_loss(x).item() == pytest.approx(-2 * math.sqrt(2) / 4, rel=1e-5)


def test_phase1_loss_weights_the_terms():
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    prev = torch.zeros(2, 2)
    total, cvfp, div = phase1_loss(c, prev, dist_reg_weight=0.9)
    assert cvfp.item() == pytest.approx(0.5)
    assert div.item() == pytest.approx(-1.0 / 2)  # ‖X-μ‖_F = 1, n = 2
    assert total.item() == pytest.approx(0.1 * 0.5 + 0.9 * -0.5)
    with pytest.raises(KeyError, match="vicreg"):
        phase1_loss(c, prev, 0.9, "vicreg")


def test_wmse_hand_computed():
    x = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    # Cov = [[2, 2], [2, 2]]; Cov - I = [[1, 2], [2, 1]]; mean of squares = 10 / 4
    assert wmse_loss(x).item() == pytest.approx(2.5)
    white = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]]) * (3 / 4) ** 0.5
    assert wmse_loss(white).item() == pytest.approx(0.0, abs=1e-6)


def _noisy(scale):
    """A 7 × 3 batch with column means far from 0 and unequal, small spread (``scale``):
    centring, the n − 1 estimator and the axis of every mean all change the value."""
    gen = torch.Generator().manual_seed(11)
    return torch.tensor([5.0, -2.0, 0.5]) + scale * torch.randn(7, 3, generator=gen, dtype=torch.float64).float()


def test_diversity_losses_equal_their_formulas_on_noisy_uncentred_data():
    import numpy as np

    for scale in (0.05, 0.3, 2.0):  # below and above the ODCM hinge sqrt(var) = 1, Σσ below and above 1
        x = _noisy(scale)
        a = x.double().numpy()
        n, d = a.shape
        centred = a - a.mean(axis=0)
        sigma = np.linalg.svd(centred, compute_uv=False)
        cov = centred.T @ centred / (n - 1)
        var = np.diag(cov)
        odcm = np.maximum(0.0, 1 - np.sqrt(var + 1e-4)).mean() + 0.04 * ((cov**2).sum() - (var**2).sum()) / d
        p = sigma / sigma.sum()
        assert mcdl_loss(x).item() == pytest.approx(-np.sqrt((centred**2).sum()) / n, rel=1e-5)
        assert nuc_loss(x).item() == pytest.approx(-sigma.sum() / n, rel=1e-5)
        assert sdl_loss(x).item() == pytest.approx((p * np.log(p)).sum(), rel=1e-4)
        assert odcm_loss(x).item() == pytest.approx(odcm, rel=1e-5)
        assert wmse_loss(x).item() == pytest.approx(((cov - np.eye(d)) ** 2).mean(), rel=1e-5)
        assert wmse_loss(x.double()).item() == pytest.approx(((cov - np.eye(d)) ** 2).mean(), rel=1e-9)


def test_diversity_losses_stay_on_the_input_device():
    # the meta device stands in for a GPU: a tensor created on the CPU inside a loss fails there
    x = torch.empty(6, 4, device="meta")
    for loss in (mcdl_loss, odcm_loss, wmse_loss):
        assert loss(x).device.type == "meta"
