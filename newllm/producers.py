"""Context producers: what makes the context cache that Phase 2's TokenBlock reads, for
every context source of the model catalogue (docs/method.md §6, §10).

A producer maps a token stream ``[n]`` to a cache ``[n, L, d_c]`` whose row ``i`` is the
context after processing token ``i`` (from a zero context before token 0), plus what the
solve reports.  ``phase1``/``untrained``: the ContextBlock's fixed point (any registered
solver); ``reset``: the trained ContextBlock on a zero previous context, ``F(0, x̃_i)``;
``lm_states``: the hidden states of the LSTM language model of rule state_producer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from newllm.baselines.models import LSTMLM
from newllm.context_cache import solve_cache, truncated_history_cache
from newllm.model import count_parameters
from newllm.pipeline import build_model
from newllm.runtime import load_weights

Producer = Callable[[Tensor], tuple[Tensor, dict[str, Any]]]
"""``stream [n] int64 -> (cache [n, L, d_c] float32, info)``."""


def context_producer(
    source: str, params: dict[str, Any], token_input, device: torch.device, weights: str | Path, cache_cfg: dict[str, Any]
) -> tuple[Producer, int]:
    """The producer of a context ``source`` (newllm.study.CONTEXT_SOURCES, all but
    ``zero``) and the trainable parameters that make its contexts.

    Args:
        params: the run's params (``run_params`` of rules/common.smk).
        token_input: the run's :class:`newllm.model.TokenInput`.
        weights: the ContextBlock's Phase 1 weights, or the state producer's LSTM weights.
        cache_cfg: config ``context_cache`` (solver ``method``, ``max_sweeps``, ``tolerance``).

    Raises:
        ValueError: an unknown or cache-less ``source``.
    """
    batch = params["phase1"]["batch_size"]
    if source == "lm_states":
        lstm = LSTMLM(token_input.weight, params["run"]["context_dim"])
        lstm.load_state_dict(load_weights(weights, device))
        lstm.to(device).eval()
        info = {"method": "lstm_states", "converged": True}
        return lambda stream: (lstm.stream_states(stream), dict(info)), count_parameters(lstm.lstm)
    if source not in ("phase1", "untrained", "reset"):
        raise ValueError(f"context source {source!r} has no cache; allowed: phase1, untrained, reset, lm_states")
    block, _ = build_model(params, token_input, device, context_weights=weights)
    block.eval()
    if source == "reset":
        return lambda stream: truncated_history_cache(block, token_input, stream, 1, batch), count_parameters(block)
    method, sweeps, tol = cache_cfg["method"], cache_cfg["max_sweeps"], cache_cfg["tolerance"]
    return lambda stream: solve_cache(block, token_input, stream, method, sweeps, tol, batch), count_parameters(block)
