"""Phase 1 diagnostics (docs/method.md §5): collapse check, CVFP convergence check, quality band.

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
"""Times √d_c: a LayerNorm output has norm ≈ √d_c, so an absolute 0.1 would always pass."""
MAX_TOKEN_COSINE = 0.95
MIN_DISTANCE_FROM_MEAN = 0.1
"""Times √d_c, like :data:`MIN_CONTEXT_NORM`."""
SLOPE_TOLERANCE = 0.001
STD_TOLERANCE = 0.01


def identity_check(contexts: Tensor, token_inputs: Tensor | None = None) -> dict[str, Any]:
    """Is the ContextBlock (near) the identity, or collapsed?  (docs/method.md §5)

    Criteria (thresholds scale with ``√d_c``, the norm of a LayerNorm output):
    mean ``‖c‖ > 0.1·√d_c`` (not the zero map); mean ``cos(c_t, x_t) < 0.95`` (not
    copying the token embedding; only when ``context_dim == embed_dim``, else ``None`` =
    not applicable); mean ``‖c - mean(c)‖ > 0.1·√d_c`` (no global attractor).

    Args:
        contexts: ``[n, d_c]`` contexts produced at each token.
        token_inputs: ``[n, d_e]`` the (normalised) embedding of the token each context
            was produced at, or ``None``.

    Returns:
        ``{"criteria": [{name, value, threshold, passed}, ...], "passed": bool}``; each
        criterion carries its measured value beside its threshold.
    """
    contexts = contexts.double()
    scale = contexts.shape[1] ** 0.5
    norm_min, spread_min = MIN_CONTEXT_NORM * scale, MIN_DISTANCE_FROM_MEAN * scale
    criteria = [
        {"name": "mean_context_norm", "value": float(contexts.norm(dim=1).mean()), "threshold": f"> {norm_min:.4g}"},
        {
            "name": "mean_distance_from_mean_context",
            "value": float((contexts - contexts.mean(0)).norm(dim=1).mean()),
            "threshold": f"> {spread_min:.4g}",
        },
    ]
    criteria[0]["passed"] = criteria[0]["value"] > norm_min
    criteria[1]["passed"] = criteria[1]["value"] > spread_min
    cosine: dict[str, Any] = {"name": "mean_cosine_to_token_embedding", "threshold": f"< {MAX_TOKEN_COSINE}"}
    if token_inputs is not None and token_inputs.shape == contexts.shape:
        cosine["value"] = float(torch.nn.functional.cosine_similarity(contexts, token_inputs.double(), dim=1).mean())
        cosine["passed"] = cosine["value"] < MAX_TOKEN_COSINE
    else:
        cosine.update(value=None, passed=None, note="not applicable: context_dim differs from embed_dim")
    criteria.insert(1, cosine)
    return {"criteria": criteria, "passed": all(c["passed"] is not False for c in criteria)}


def convergence_verdict(mse_series: Sequence[float]) -> dict[str, Any]:
    """Verdict on the MSE between consecutive passes (docs/method.md §5).

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


def convergence_passes(
    block: ContextBlock, token_input: TokenInput, stream: Tensor, passes: int, batch_size: int = 4096
) -> list[float]:
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
    """docs/method.md §5 bands: val ER > 80 % good, 75–80 % fair, < 75 % revisit settings;
    a train − val ER gap above 5 points suggests over-fitting."""
    band = "good" if val_er_pct > 80 else "fair" if val_er_pct >= 75 else "revisit"
    gap = train_er_pct - val_er_pct
    return {"band": band, "val_er_pct": val_er_pct, "train_val_er_gap_pct": gap, "overfitting_suspected": bool(gap > 5)}


def decay_lag(relative: Sequence[float], fraction: float) -> int | None:
    """The first lag ``k`` (1-based) whose relative effect is below ``fraction``; ``None``
    when none is within the probed lags."""
    return next((k + 1 for k, r in enumerate(relative) if r < fraction), None)


def memory_probe(
    block: ContextBlock, token_input: TokenInput, stream: Tensor, max_lag: int = 64, num_positions: int = 128, seed: int = 0
) -> dict[str, Any]:
    """How far back a context remembers (docs/method.md §4: after k Jacobi sweeps a
    context depends only on about the last k tokens).

    For ``num_positions`` seeded positions ``i`` (with ``i > max_lag``) and every lag
    ``k = 1 … max_lag``, the token at ``i − k`` is replaced by another token (seeded, drawn
    from the stream) and the exact sequential recurrence is run from ``c_{i−max_lag−1}``
    (itself the exact context, solved from the start of the stream) to ``i``; the effect
    is ``‖c_i(perturbed) − c_i(clean)‖₂`` of the final layer, averaged over positions.

    Returns:
        ``{"lags": [1..K], "effect": [K] mean L2 change, "relative": [K] effect/effect[0],
        "lag_below_10pct", "lag_below_1pct"}`` (the first lag whose effect is below 10 % /
        1 % of the lag-1 effect; ``None`` when it never is within ``max_lag``),
        ``positions`` and ``max_lag``.

    Raises:
        ValueError: the stream is too short for ``max_lag`` (needs ``> max_lag + 1`` tokens).
    """
    n = stream.shape[0]
    if n <= max_lag + 1:
        raise ValueError(f"memory probe needs more than max_lag + 1 = {max_lag + 1} tokens, got {n}")
    from newllm.solvers import StreamMap, solve_sequential

    gen = torch.Generator().manual_seed(seed)
    device = stream.device
    positions = torch.randint(max_lag + 1, n, (num_positions,), generator=gen).to(device)  # [P]
    with torch.no_grad():
        exact, _ = solve_sequential(StreamMap(block, token_input, stream[: int(positions.max()) + 1]))
        window = positions[:, None] + torch.arange(-max_lag, 1, device=device)[None, :]  # [P, K+1], oldest first
        clean = stream[window]  # [P, K+1]
        # K perturbed copies + 1 clean copy of every window: [P, K+1 (copy), K+1 (time)]
        tokens = clean[:, None, :].repeat(1, max_lag + 1, 1)
        replacement = stream[torch.randint(0, n, (num_positions, max_lag), generator=gen).to(device)]
        same = replacement == clean[:, :-1].flip(1)  # lag k hits time index max_lag - k
        replacement = torch.where(same, (replacement + 1) % token_input.weight.shape[0], replacement)
        for k in range(1, max_lag + 1):
            tokens[:, k - 1, max_lag - k] = replacement[:, k - 1]
        flat = tokens.reshape(-1, max_lag + 1)  # [P·(K+1), K+1]
        start = positions - max_lag - 1  # exact context before the window
        context = exact[start, -1].repeat_interleave(max_lag + 1, dim=0)  # [P·(K+1), d_c]
        x = token_input.rows(flat)  # [P·(K+1), K+1, N_in·d_e]; windows of N_in > 1 start inside the row
        for t in range(max_lag + 1):
            context = block(context, x[:, t])[:, -1]
        final = context.view(num_positions, max_lag + 1, -1)
        effect = (final[:, :-1] - final[:, -1:]).norm(dim=-1).double().mean(0)  # [K]
    relative = (effect / effect[0]).tolist() if float(effect[0]) > 0 else [0.0] * max_lag
    return {
        "lags": list(range(1, max_lag + 1)),
        "effect": effect.tolist(),
        "relative": relative,
        "lag_below_10pct": decay_lag(relative, 0.10),
        "lag_below_1pct": decay_lag(relative, 0.01),
        "positions": num_positions,
        "max_lag": max_lag,
    }
