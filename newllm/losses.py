"""Phase 1 losses (docs/method.md §4): the raw-MSE CVFP term and the diversity losses.

``X`` is an ``[n, d]`` batch of context vectors; ``μ`` its column mean.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def cvfp_loss(contexts: Tensor, previous: Tensor) -> Tensor:
    """Fixed-point loss ``MSE(C^k, C^{k-1})`` on raw vectors; ``previous`` is detached.

    Never normalise the vectors first: matching directions only was a real bug of the
    source (0 % convergence, docs/method.md §4).  Shapes ``[n, d]`` -> scalar (mean over n·d).
    """
    return F.mse_loss(contexts, previous.detach())


def mcdl_loss(x: Tensor) -> Tensor:
    """MCDL (mean-centred distance): ``-‖X - 1μᵀ‖_F / n`` (docs/method.md §4).  ``[n, d]`` -> scalar."""
    return -torch.linalg.matrix_norm(x - x.mean(dim=0, keepdim=True), ord="fro") / x.shape[0]


def odcm_loss(x: Tensor, cov_weight: float = 0.04, eps: float = 1e-4) -> Tensor:
    """ODCM (VICReg-like): ``mean_j relu(1 - sqrt(var_j + eps)) + w·Σ_{i≠j} Cov_ij² / d``.

    Variance and covariance use the unbiased (n-1) estimator, as VICReg does
    (Bardes et al. 2022).  ``[n, d]`` -> scalar; needs n ≥ 2.
    """
    n, d = x.shape
    centred = x - x.mean(dim=0, keepdim=True)
    var = centred.pow(2).sum(dim=0) / (n - 1)
    variance_term = F.relu(1.0 - torch.sqrt(var + eps)).mean()
    cov = centred.t() @ centred / (n - 1)
    off_diagonal = cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()
    return variance_term + cov_weight * off_diagonal / d


def sdl_loss(x: Tensor) -> Tensor:
    """SDL: ``-H(σ/Σσ)``, the negative entropy of the centred batch's singular values."""
    sigma = torch.linalg.svdvals(x - x.mean(dim=0, keepdim=True))
    p = sigma / sigma.sum().clamp_min(1e-12)
    return (p * torch.log(p.clamp_min(1e-12))).sum()


def nuc_loss(x: Tensor) -> Tensor:
    """NUC: ``-‖X - 1μᵀ‖_* / n`` (nuclear norm of the centred batch)."""
    return -torch.linalg.matrix_norm(x - x.mean(dim=0, keepdim=True), ord="nuc") / x.shape[0]


def wmse_loss(x: Tensor) -> Tensor:
    """WMSE (whitening MSE): ``mean_ij (Cov(X) - I)_ij²``, pushing the batch towards
    decorrelated, unit-variance features (the whitening target of W-MSE, Ermolov et al.
    2021).  docs/method.md §4 names WMSE without a formula; this is the whitening reading of it.
    ``[n, d]`` -> scalar; needs n ≥ 2.
    """
    n, d = x.shape
    centred = x - x.mean(dim=0, keepdim=True)
    cov = centred.t() @ centred / (n - 1)
    return (cov - torch.eye(d, device=x.device, dtype=x.dtype)).pow(2).mean()


DIVERSITY_LOSSES: dict[str, Callable[[Tensor], Tensor]] = {
    "mcdl": mcdl_loss,
    "odcm": odcm_loss,
    "sdl": sdl_loss,
    "nuc": nuc_loss,
    "wmse": wmse_loss,
}
"""Diversity losses by config name (``phase1.diversity``)."""


def phase1_loss(
    contexts: Tensor, previous: Tensor, dist_reg_weight: float, diversity: str = "mcdl"
) -> tuple[Tensor, Tensor, Tensor]:
    """``L = (1 - w)·MSE(C^k, C^{k-1}) + w·D(C^k)`` (docs/method.md §4).

    Returns:
        ``(total, cvfp, diversity)`` scalars.

    Raises:
        KeyError: unknown ``diversity`` name.
    """
    if diversity not in DIVERSITY_LOSSES:
        raise KeyError(f"diversity {diversity!r} is not one of {sorted(DIVERSITY_LOSSES)}")
    cvfp = cvfp_loss(contexts, previous)
    div = DIVERSITY_LOSSES[diversity](contexts)
    return (1.0 - dist_reg_weight) * cvfp + dist_reg_weight * div, cvfp, div
