"""The context cache (docs/method.md §6): every token's context under a frozen ContextBlock,
solved by any solver of :mod:`newllm.solvers`, and the truncated-history caches of the
controls (contexts that see only the last ``k`` tokens, docs/method.md §10).

A no-grad solve iterates the map ``F`` over the stream (torchdeq's split of map and
solver); a solve that misses its tolerance is replaced by the exact sequential recurrence,
never returned as is.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Sequence

from torch import Tensor

from newllm.model import ContextBlock, TokenInput
from newllm.solvers import StreamMap, get_solver, solve_sequential


def solve_cache(
    block: ContextBlock,
    token_input: TokenInput,
    stream: Tensor,
    method: str = "shooting",
    max_sweeps: int = 400,
    tolerance: float = 1e-5,
    batch_size: int = 4096,
    init: Tensor | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """The context cache of docs/method.md §6 for one stream: ``[n, L, d_c]`` with
    ``cache[i] = F(c_{i-1}, x̃_i)`` for every layer (``c_{-1} = 0``), and solver statistics.

    Any solver of :data:`newllm.solvers.SOLVERS` (``shooting``, ``jacobi``,
    ``sequential``), optionally warm-started from ``init`` (e.g. Phase 1's final
    contexts).  A solve that does not reach ``tolerance`` is never returned as is: the
    exact sequential recurrence is run instead and ``info["fallback_from"]`` records the
    failed attempt.

    Returns:
        ``(cache [n, L, d_c], info)``, ``info`` = :class:`newllm.solvers.SolverStats` as a dict.

    Raises:
        ValueError: an unknown ``method`` (naming the registered ones).
    """
    stream_map = StreamMap(block, token_input, stream, batch_size)
    outputs, stats = get_solver(method)(stream_map, init=init, max_iter=max_sweeps, tol=tolerance)
    info = stats.as_dict()
    if not stats.converged:
        outputs, exact = solve_sequential(stream_map)
        info = {**exact.as_dict(), "fallback_from": info}
    return outputs, info


def truncated_history_caches(
    block: ContextBlock, token_input: TokenInput, stream: Tensor, histories: Sequence[int], batch_size: int = 4096
) -> Iterator[tuple[int, Tensor]]:
    """Contexts that see only the last ``k`` tokens, for each ``k`` of ``histories``
    (ascending): yields ``(k, cache [n, L, d_c])`` whose row ``i`` is the recurrence started
    from a zero context at token ``i - k + 1``, ``c^(k)_i = F(c^(k-1)_{i-1}, x̃_i)``,
    ``c^(0) = 0`` (docs/method.md §10).

    ``k`` Jacobi sweeps from the zero iterate compute exactly this (after ``k`` sweeps,
    position ``i`` has read tokens ``i-k+1 … i`` and a zero context before them), so one
    pass of ``max(histories)`` sweeps serves every ``k``; ``k = 1`` is the reset context
    ``F(0, x̃_i)`` of the ``reset_context`` control, and ``k`` ≥ the stream length is the
    full cache of :func:`solve_cache`.  A yielded cache is overwritten by the next
    iteration: copy it to keep it.

    Raises:
        ValueError: a ``k < 1`` or ``histories`` not strictly ascending.
    """
    histories = [int(k) for k in histories]
    if not histories or histories[0] < 1 or any(b <= a for a, b in zip(histories, histories[1:])):
        raise ValueError(f"histories must be strictly ascending token counts >= 1, got {histories}")
    stream_map = StreamMap(block, token_input, stream, batch_size)
    outputs, buffer = stream_map.zeros(), stream_map.zeros()
    done = 0
    for k in histories:
        while done < min(k, stream_map.n):
            buffer = stream_map.sweep(outputs[:, -1], out=buffer)
            outputs, buffer = buffer, outputs
            done += 1
        yield k, outputs


def truncated_history_cache(
    block: ContextBlock, token_input: TokenInput, stream: Tensor, history: int, batch_size: int = 4096
) -> tuple[Tensor, dict[str, Any]]:
    """One cache of :func:`truncated_history_caches`: contexts of the last ``history``
    tokens, ``[n, L, d_c]`` (``history = 1``: the reset context ``F(0, x̃_i)``).

    Returns:
        ``(cache [n, L, d_c], info)``, ``info`` with ``method`` ("truncated"), ``history``,
        ``sweeps``, ``tokens`` and ``seconds``.

    Raises:
        ValueError: ``history < 1``.
    """
    if history < 1:
        raise ValueError(f"history must be >= 1 token, got {history}")
    start = time.perf_counter()
    ((_, outputs),) = truncated_history_caches(block, token_input, stream, [history], batch_size)
    n = stream.shape[0]
    info = {"method": "truncated", "history": int(history), "sweeps": min(history, n), "tokens": n}
    info["seconds"] = time.perf_counter() - start
    return outputs, info


def fallback_message(info: dict[str, Any]) -> str | None:
    """The warning for a :func:`solve_cache` result that fell back to the sequential
    recurrence (its ``info["fallback_from"]``), or ``None`` when the first solve converged."""
    failed = info.get("fallback_from")
    if failed is None:
        return None
    return (
        f"{failed['method']} did not reach tolerance {failed['tol']:.1e} in {failed['sweeps']} sweeps "
        f"(residual {failed['residual']:.2e}): solved sequentially"
    )
