"""Metrics shared by every caller: Effective Rank, convergence rate, perplexity, test scores.

One function per metric (docs/method.md §5: the source's two Effective Rank code paths disagreed
by 2–20×).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

ER_MAX_ROWS = 10_000
"""Rows sampled for Effective Rank (docs/method.md §5: ≥ 10k tokens, or all)."""


def effective_rank(x: Tensor, max_rows: int = ER_MAX_ROWS, seed: int = 0) -> float:
    """Effective Rank of an ``[n, d]`` matrix (Roy & Vetterli 2007; docs/method.md §5).

    SVD of up to ``max_rows`` rows (a seeded uniform sample without replacement when
    ``n > max_rows``), uncentred; ``p = σ/Σσ``; ``ER = exp(-Σ p log p)``.  Computed in
    float64.  Range ``[1, min(n, d)]``; 0.0 for an all-zero matrix.

    Raises:
        ValueError: ``x`` is not 2-D or has no rows.
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"effective_rank needs a non-empty [n, d] matrix, got shape {tuple(x.shape)}")
    if x.shape[0] > max_rows:
        gen = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(x.shape[0], generator=gen)[:max_rows].to(x.device)]
    sigma = torch.linalg.svdvals(x.detach().double())
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def convergence_counts(contexts: Tensor, previous: Tensor, threshold: float = 0.03) -> tuple[int, int]:
    """Tokens whose context moved less than ``threshold`` between iterations (docs/method.md §4).

    A token converged when ``mean_d (C^k_i - C^{k-1}_i)² < threshold``.
    Shapes ``[n, d]`` each.

    Returns:
        ``(converged, total)`` token counts.
    """
    diff = contexts - previous
    per_token = diff.mul_(diff).mean(dim=-1)  # in place: one [n, d] temporary
    return int((per_token < threshold).sum()), int(per_token.numel())


def format_rate(converged: int, total: int) -> str:
    """``'27.2 % (1741/6400)'``: a rate with its counts, as every report shows it."""
    return f"{100.0 * converged / max(total, 1):.1f} % ({converged}/{total})"


def perplexity(mean_nll: float) -> float:
    """``exp`` of a token-weighted mean negative log-likelihood in nats."""
    return math.exp(mean_nll)


def test_scores(test_eval: dict[str, Any] | None) -> dict[str, Any]:
    """``test_loss`` (nats), ``test_ppl``, ``test_accuracy`` and ``test_tokens`` of an
    evaluation's result (:func:`newllm.phase2.evaluate`, :func:`newllm.baselines.training.evaluate_stream`);
    none for ``None`` (a tuning trial)."""
    if test_eval is None:
        return {}
    return {
        key: test_eval[name]
        for key, name in (("test_loss", "loss"), ("test_ppl", "ppl"), ("test_accuracy", "accuracy"), ("test_tokens", "tokens"))
    }
