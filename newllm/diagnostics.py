"""Phase 1 diagnostics (SPEC §5): collapse check, CVFP convergence check, quality band.

Every check reports each criterion's value, its threshold and pass/fail, so a failed
check is shown in the tables and report, never hidden.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from newllm.model import ContextBlock, TokenInput
from newllm.phase1 import jacobi_sweep

MIN_CONTEXT_NORM = 0.1
MAX_TOKEN_COSINE = 0.95
MIN_DISTANCE_FROM_MEAN = 0.1
SLOPE_TOLERANCE = 0.001
STD_TOLERANCE = 0.01


def identity_check(contexts: Tensor, token_inputs: Tensor | None = None) -> dict[str, Any]:
    """Is the ContextBlock (near) the identity, or collapsed?  (SPEC §5)

    Criteria: mean ``‖c‖ > 0.1`` (not the zero map); mean ``cos(c_t, x_t) < 0.95``
    (not copying the token embedding; only when ``context_dim == embed_dim``, else
    ``None`` = not applicable); mean ``‖c - mean(c)‖ > 0.1`` (no global attractor).

    Args:
        contexts: ``[n, d_c]`` contexts produced at each token.
        token_inputs: ``[n, d_e]`` the (normalised) embedding of the token each context
            was produced at, or ``None``.

    Returns:
        ``{"criteria": [{name, value, threshold, passed}, ...], "passed": bool}``.
    """
    contexts = contexts.double()
    criteria = [
        {"name": "mean_context_norm", "value": float(contexts.norm(dim=1).mean()), "threshold": f"> {MIN_CONTEXT_NORM}"},
        {"name": "mean_distance_from_mean_context", "value": float((contexts - contexts.mean(0)).norm(dim=1).mean()),
         "threshold": f"> {MIN_DISTANCE_FROM_MEAN}"},
    ]
    criteria[0]["passed"] = criteria[0]["value"] > MIN_CONTEXT_NORM
    criteria[1]["passed"] = criteria[1]["value"] > MIN_DISTANCE_FROM_MEAN
    cosine: dict[str, Any] = {"name": "mean_cosine_to_token_embedding", "threshold": f"< {MAX_TOKEN_COSINE}"}
    if token_inputs is not None and token_inputs.shape == contexts.shape:
        cosine["value"] = float(torch.nn.functional.cosine_similarity(contexts, token_inputs.double(), dim=1).mean())
        cosine["passed"] = cosine["value"] < MAX_TOKEN_COSINE
    else:
        cosine.update(value=None, passed=None, note="not applicable: context_dim differs from embed_dim")
    criteria.insert(1, cosine)
    return {"criteria": criteria, "passed": all(c["passed"] is not False for c in criteria)}


def convergence_verdict(mse_series: Sequence[float]) -> dict[str, Any]:
    """Verdict on the MSE between consecutive passes (SPEC §5).

    A least-squares line through ``(pass, MSE)``: CONVERGING if slope < −0.001;
    CONVERGED if |slope| < 0.001 and std < 0.01; DIVERGING if slope > 0.001; else
    UNSTABLE.  Needs ≥ 2 values.

    Returns:
        ``{"mse": [...], "slope", "std", "verdict"}``.

    Raises:
        ValueError: fewer than 2 values, or a non-finite value.
    """
    y = np.asarray(mse_series, dtype=float)
    if y.size < 2 or not np.isfinite(y).all():
        raise ValueError(f"need >= 2 finite MSE values, got {list(y)}")
    slope = float(stats.linregress(np.arange(1, y.size + 1), y).slope)
    std = float(y.std())
    if slope < -SLOPE_TOLERANCE:
        verdict = "CONVERGING"
    elif abs(slope) < SLOPE_TOLERANCE and std < STD_TOLERANCE:
        verdict = "CONVERGED"
    elif slope > SLOPE_TOLERANCE:
        verdict = "DIVERGING"
    else:
        verdict = "UNSTABLE"
    return {"mse": y.tolist(), "slope": slope, "std": std, "verdict": verdict}


def convergence_passes(block: ContextBlock, token_input: TokenInput, stream: Tensor, passes: int, batch_size: int = 4096) -> list[float]:
    """Repeated passes over ``stream`` carrying the context over (Jacobi sweeps from the
    zero context); returns ``MSE(C^p, C^{p-1})`` for ``p = 2 … passes`` (the first pass
    is measured against the arbitrary zero start, so it is left out)."""
    contexts = torch.zeros(stream.shape[0], block.context_dim, device=stream.device)
    series = []
    for p in range(1, passes + 1):
        new = jacobi_sweep(block, token_input, stream, contexts, batch_size)
        if p > 1:
            series.append(float((new - contexts).pow(2).mean()))
        contexts = new
    return series


def quality_band(val_er_pct: float, train_er_pct: float) -> dict[str, Any]:
    """SPEC §5 bands: val ER > 80 % good, 75–80 % fair, < 75 % revisit settings;
    a train − val ER gap above 5 points suggests over-fitting."""
    band = "good" if val_er_pct > 80 else "fair" if val_er_pct >= 75 else "revisit"
    gap = train_er_pct - val_er_pct
    return {"band": band, "val_er_pct": val_er_pct, "train_val_er_gap_pct": gap, "overfitting_suspected": bool(gap > 5)}
