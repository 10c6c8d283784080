"""Fixed-point solvers for the ContextBlock recurrence over one token stream (docs/method.md §4, §6).

The map and the solver are kept apart, as in torchdeq (``solver/fp_iter.py``: a solver is
``solve(f, x0, max_iter, tol) -> (x, stats)``; ``solver/__init__.py``: a registry looked up
by name; ``solver/stat.py``: a statistics record).

**The map.**  :class:`StreamMap` is the ContextBlock ``F`` applied along one token stream:
``step(c_{i-1}, i) = F(c_{i-1}, x̃_i)``, all ``L`` layer outputs, no gradient.  The
fixed point every solver looks for is the sequential recurrence

    c_i = F(c_{i-1}, x̃_i)[-1],   c_{-1} = 0,

and every solver returns ``outputs [n, L, d_c]`` with ``outputs[i] = F(c_{i-1}, x̃_i)``:
token ``i``'s layer outputs *after processing token i* — exactly the context cache rows of
docs/method.md §6 (no shift; row ``i`` has seen tokens ``0 … i`` only).

**The solvers** (registry :data:`SOLVERS`, :func:`get_solver`), all
``solve(stream_map, *, init=None, max_iter, tol, ...) -> (outputs, SolverStats)``:

- ``jacobi``: ``C^k_i = F(C^{k-1}_{i-1}, x̃_i)`` for all ``i`` at once (docs/method.md §4's parallel
  sweep) from ``C^0 = 0`` or a warm start ``init``.  After ``k`` sweeps positions
  ``i < k`` are exact, whatever the start.
- ``sequential``: the exact token-by-token recurrence, one pass (docs/method.md §6's source loop).
- ``shooting``: multiple shooting.  The stream is cut into ``K`` chunks of ``T`` tokens
  advanced in lockstep as one batch of ``K`` (sequential inside each chunk: ``T`` batched
  steps, ``n`` map evaluations per full round).  Chunk ``k`` starts from its boundary
  context ``b_k``: ``b_0 = c_{-1} = 0``; in round 1 ``b_k = init[k·T - 1]``, or the end
  of a *burn-in* (the ``burn_in`` tokens before the chunk run from the zero context: the
  map forgets its start); from round 2 on, the last context chunk ``k-1`` reached in the
  previous round.  Only chunks whose boundary moved by ``mean_d δ² >`` ``skip_below``
  (default float32 rounding noise, :data:`ROUNDING_NOISE`) are re-run; a kept chunk's
  outputs stand.  It is Jacobi over chunks: after ``r`` rounds chunks ``0 … r-1`` are
  exact.  A trained map forgets within a few hundred tokens, so one or two rounds
  suffice.  If a round's largest boundary move is more than half the previous round's
  (:data:`STALL_FACTOR`: the map does not forget, e.g. an expansive untrained block) or ``max_iter`` rounds
  pass, the stream after the last consistent chunk is finished sequentially from that
  chunk's last context, so the result is always the exact recurrence.

**Residual** (the same for every method): after each sweep/round ``k``,

    residual = max_i mean_d (C^k_i - C^{k-1}_i)²

over the final-layer contexts of all ``n`` tokens (``C^0`` = the start: zeros or
``init``); a solver stops, ``converged = True``, once ``residual < tol``.  Units: squared
context units (the contexts are LayerNorm outputs, O(1) per coordinate), so
``tol = 1e-5`` is an RMS change of about 3e-3 per coordinate.  ``sequential`` is exact
by construction and reports one sweep with residual 0.  ``shooting`` counts a chunk it
does not re-run with its boundary move; it also stops, converged, when no chunk needs
re-running (residual = the largest boundary move, ≤ ``skip_below``), and after a
sequential finish (residual = the largest boundary move of the consistent prefix).

Results agree with ``sequential`` up to float32 rounding (a few 1e-6 for a trained
block, ``benchmarks/context_cache.py``).  For an expansive map rounding differences grow
along the stream, so no two float implementations of the recurrence agree there.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from newllm.model import ContextBlock, TokenInput

INPUT_CACHE_MAX_ELEMENTS = 1 << 28
"""Precompute every token's ``x̃`` once per :class:`StreamMap` (``n · N_in·d_e`` floats)
up to this many elements (1 GiB of float32); above it, windows are embedded per call."""

STEP_INPUT_TOKENS = 1 << 16
"""Token windows :meth:`StreamMap.run_chunks` gathers at once (bounds its extra memory)."""

DEFAULT_CHUNK_SIZE = 512
"""Tokens per shooting chunk (chosen by ``benchmarks/context_cache.py`` on a 2-core CPU)."""

DEFAULT_BURN_IN = 256
"""Tokens run from the zero context before each shooting chunk to guess its boundary."""

ROUNDING_NOISE = 1e-12
"""``mean_d δ²`` below which a shooting boundary move is float32 rounding noise (contexts
are LayerNorm outputs, O(1) per coordinate, float32 resolution ~1e-7): such a chunk is
not re-run."""

STALL_FACTOR = 0.5
"""A shooting round must shrink the largest boundary move to at most this fraction of the
previous one (the burn-in's move away from the zero context counts as round 0); a larger
move means the map is not forgetting, and the rest is solved sequentially."""


@dataclass
class SolverStats:
    """What a solver reports (torchdeq's ``SolverStat``, as a typed record).

    Attributes:
        method: registry name (``jacobi``, ``sequential``, ``shooting``).
        sweeps: sweeps over the stream (Jacobi sweeps, shooting rounds; 1 for sequential).
        residual: ``max_i mean_d (C^k_i - C^{k-1}_i)²`` of the last sweep (see the module
            docstring); 0 for ``sequential``.
        converged: ``residual < tol`` (always ``True`` for ``sequential``).
        seconds: wall time of the solve.
        tokens: stream length ``n``.
        tol: the tolerance the solve ran with.
        warm_start: whether the solve started from ``init`` (``sequential`` ignores it).
        chunks: shooting chunks ``K`` advanced in lockstep (1 for sequential, ``n`` for
            Jacobi, where every token is its own chunk of one).
        chunk_size: tokens per chunk ``T`` (``ceil(n / K)``).
        evaluations: token steps of the map actually run (sweeps · n for Jacobi, n for
            sequential, the re-run chunks' tokens summed over rounds for shooting): the
            machine-independent cost.
        sequential_tokens: tokens shooting finished sequentially after its rounds stalled.
    """

    method: str
    sweeps: int
    residual: float
    converged: bool
    seconds: float
    tokens: int
    tol: float
    warm_start: bool = False
    chunks: int = 1
    chunk_size: int = 1
    evaluations: int = 0
    sequential_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (for ``meta.json`` files and logs)."""
        return asdict(self)


def embed_windows(token_input: TokenInput, stream: Tensor, max_elements: int) -> Tensor | None:
    """Every position's window ``x̃`` of ``stream`` (``[n]`` int64), ``[n, N_in·d_e]``
    float32, embedded once without gradient (the embeddings are frozen), or ``None`` when
    ``n · N_in·d_e`` exceeds ``max_elements`` (callers then embed per batch)."""
    if stream.shape[0] * token_input.output_dim > max_elements:
        return None
    with torch.no_grad():
        return token_input(stream, torch.arange(stream.shape[0], device=stream.device))


class StreamMap:
    """The ContextBlock as a map over one token stream (docs/method.md §3, §4): no gradient.

    Args:
        block: the ContextBlock ``F`` (``L`` layers, ``d_c`` = ``block.context_dim``).
        token_input: gives ``x̃_i`` (``[B, N_in·d_e]``) for stream positions.
        stream: ``[n]`` int64 token ids; its device is the device of every tensor here.
        batch_size: tokens per batch of a Jacobi sweep (memory bound only).

    Raises:
        ValueError: ``stream`` not 1-D or empty, or ``batch_size < 1``.
    """

    def __init__(self, block: ContextBlock, token_input: TokenInput, stream: Tensor, batch_size: int = 4096) -> None:
        if stream.ndim != 1 or stream.shape[0] == 0:
            raise ValueError(f"stream must be a non-empty 1-D tensor of token ids, got shape {tuple(stream.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.block, self.token_input, self.stream, self.batch_size = block, token_input, stream, batch_size
        self._inputs: Tensor | None = None

    @property
    def n(self) -> int:
        """Tokens in the stream."""
        return self.stream.shape[0]

    @property
    def num_layers(self) -> int:
        return self.block.num_layers

    @property
    def context_dim(self) -> int:
        return self.block.context_dim

    @property
    def device(self) -> torch.device:
        return self.stream.device

    def inputs(self, positions: Tensor) -> Tensor:
        """``x̃`` at ``positions`` (``[B]`` int64) -> ``[B, N_in·d_e]`` float32.

        All ``n`` windows are embedded once on first use when they fit
        :data:`INPUT_CACHE_MAX_ELEMENTS`; later calls gather rows.
        """
        if self._inputs is None:
            self._inputs = embed_windows(self.token_input, self.stream, INPUT_CACHE_MAX_ELEMENTS)
        if self._inputs is not None:
            return self._inputs[positions]
        with torch.no_grad():
            return self.token_input(self.stream, positions)

    def step(self, prev_contexts: Tensor, positions: Tensor) -> Tensor:
        """``F(c_{i-1}, x̃_i)`` for a batch: ``prev_contexts [B, d_c]``, ``positions [B]`` -> ``[B, L, d_c]``."""
        with torch.no_grad():
            return self.block(prev_contexts, self.inputs(positions))

    def zeros(self) -> Tensor:
        """``[n, L, d_c]`` zeros on the stream's device (an output buffer)."""
        return torch.zeros(self.n, self.num_layers, self.context_dim, device=self.device)

    def sweep(self, contexts: Tensor, out: Tensor | None = None) -> Tensor:
        """One Jacobi sweep: ``out[i] = F(C_{i-1}, x̃_i)`` for every ``i``, ``C_{-1} = 0``.

        Args:
            contexts: ``[n, d_c]`` the current iterate ``C`` (final-layer contexts).
            out: optional ``[n, L, d_c]`` buffer to write into (must not alias ``contexts``).

        Returns:
            ``[n, L, d_c]``; ``[:, -1]`` is the next iterate.
        """
        out = self.zeros() if out is None else out
        for start in range(0, self.n, self.batch_size):
            end = min(start + self.batch_size, self.n)
            if start == 0:  # token 0 reads c_{-1} = 0
                prev = torch.cat([contexts.new_zeros(1, self.context_dim), contexts[: end - 1]])
            else:
                prev = contexts[start - 1 : end - 1]
            out[start:end] = self._step_range(prev, start, end)
        return out

    def _step_range(self, prev_contexts: Tensor, start: int, end: int) -> Tensor:
        """:meth:`step` for the consecutive positions ``start..end-1``: a slice of the
        embedded windows instead of a gather when they are cached."""
        if self._inputs is None:
            return self.step(prev_contexts, torch.arange(start, end, device=self.device))
        with torch.no_grad():
            return self.block(prev_contexts, self._inputs[start:end])

    def run_chunks(self, starts: Tensor, length: int, first: Tensor, out: Tensor) -> None:
        """Advance ``K`` chunks in lockstep, sequentially inside each (multiple shooting).

        Chunk ``k`` covers positions ``starts[k] … starts[k] + length - 1`` and starts from
        the context ``first[k]``: ``c = first[k]``, then ``y_t = F(c, x̃_{starts[k]+t})``,
        ``c = y_t[-1]``.  Positions at or past ``n`` (a ragged last chunk) read the last
        token's window; the caller discards them.  Windows are gathered chunk-major for
        up to :data:`STEP_INPUT_TOKENS` tokens at a time, so each step is one block call.

        Args:
            starts: ``[K]`` int64 first position of each chunk.
            length: ``T`` steps.
            first: ``[K, d_c]`` context before each chunk's first token.
            out: ``[K, T, L, d_c]`` buffer receiving every step's layer outputs.
        """
        K = starts.shape[0]
        context = first
        segment = max(1, STEP_INPUT_TOKENS // K)  # steps whose windows are gathered at once
        with torch.no_grad():
            for t0 in range(0, length, segment):
                steps = torch.arange(t0, min(t0 + segment, length), device=self.device)
                positions = (starts[:, None] + steps).clamp(max=self.n - 1)  # [K, S]
                inputs = self.inputs(positions.reshape(-1)).view(K, steps.shape[0], -1)  # [K, S, N_in·d_e]
                out[:, t0 : t0 + steps.shape[0]] = unroll(self.block, inputs, context)
                context = out[:, t0 + steps.shape[0] - 1, -1]


def unroll(block: ContextBlock, inputs: Tensor, context: Tensor, *, truncate: bool = False) -> Tensor:
    """The recurrence of docs/method.md §3 over ``P`` independent rows, one step at a time:
    ``y_t = F(c_{t-1}, x̃_t)``, ``c_t = y_t[-1]`` (the sequential solver's inner loop; the
    repetition study trains through it).

    Args:
        block: the ContextBlock ``F``.
        inputs: ``[P, T, N_in·d_e]`` windows ``x̃_t`` of each row.
        context: ``[P, d_c]`` the context before each row's first step.
        truncate: feed ``c_{t-1}.detach()``, so gradients reach ``F`` through one step
            only (CVFP's one-step gradient; the repetition study).

    Returns:
        ``[P, T, L, d_c]``: every step's layer outputs (``[:, :, -1]`` the contexts).
    """
    outputs = []
    for t in range(inputs.shape[1]):
        y = block(context.detach() if truncate else context, inputs[:, t])  # [P, L, d_c]
        outputs.append(y)
        context = y[:, -1]
    return torch.stack(outputs, dim=1)


def fixed_point_residual(stream_map: StreamMap, outputs: Tensor) -> float:
    """How far ``outputs`` are from satisfying the recurrence (torchdeq's ``‖f(z) - z‖``).

    ``max_i mean_{l,d} (F(c_{i-1}, x̃_i) - outputs[i])²`` with ``c_{i-1} = outputs[i-1, -1]``
    (``c_{-1} = 0``), over all layers: one Jacobi sweep applied to the solution.  About
    float32 rounding (~1e-13) for an exact solution, even for an expansive map where
    solutions computed in different orders disagree.

    Args:
        outputs: ``[n, L, d_c]`` a solver's outputs.
    """
    swept = stream_map.sweep(outputs[:, -1])
    return float((swept - outputs).pow(2).mean(dim=(1, 2)).max())


def _check_init(stream_map: StreamMap, init: Tensor | None) -> Tensor | None:
    """Warm start as ``[n, d_c]`` final-layer contexts (``[n, L, d_c]`` is reduced to ``[:, -1]``)."""
    if init is None:
        return None
    if init.ndim == 3:
        init = init[:, -1]
    if tuple(init.shape) != (stream_map.n, stream_map.context_dim):
        raise ValueError(
            f"init must be [n, d_c] = [{stream_map.n}, {stream_map.context_dim}] (or [n, L, d_c]), got {tuple(init.shape)}"
        )
    return init.to(stream_map.device, torch.float32)


def _residual(new: Tensor, old: Tensor) -> float:
    """``max_i mean_d (new_i - old_i)²`` for ``[n, d_c]`` tensors (see the module docstring)."""
    return float((new - old).pow(2).mean(dim=-1).max())


def _check_budget(max_iter: int, tol: float) -> None:
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")


def solve_jacobi(
    stream_map: StreamMap, *, init: Tensor | None = None, max_iter: int = 400, tol: float = 1e-5
) -> tuple[Tensor, SolverStats]:
    """Jacobi sweeps ``C^k_i = F(C^{k-1}_{i-1}, x̃_i)`` until the residual is below ``tol`` (docs/method.md §4).

    Args:
        stream_map: the map.
        init: warm start ``C^0`` (``[n, d_c]`` or ``[n, L, d_c]``, e.g. Phase 1's final
            contexts); ``None`` = zeros.
        max_iter: most sweeps.
        tol: stop once ``max_i mean_d (C^k_i - C^{k-1}_i)² < tol``.

    Returns:
        ``(outputs [n, L, d_c], stats)``: the last sweep's layer outputs
        (``outputs[:, -1] = C^k``), exact for positions ``< k``.

    Raises:
        ValueError: ``init`` of the wrong shape, ``max_iter < 1`` or ``tol < 0``.
    """
    _check_budget(max_iter, tol)
    t0 = time.perf_counter()
    warm = _check_init(stream_map, init)
    contexts = warm if warm is not None else torch.zeros(stream_map.n, stream_map.context_dim, device=stream_map.device)
    buffers = [stream_map.zeros(), stream_map.zeros()]
    residual, sweeps = math.inf, 0
    for sweeps in range(1, max_iter + 1):
        out = stream_map.sweep(contexts, buffers[sweeps % 2])
        residual = _residual(out[:, -1], contexts)
        contexts = out[:, -1]
        if residual < tol:
            break
    n = stream_map.n
    stats = SolverStats(
        "jacobi", sweeps, residual, residual < tol, time.perf_counter() - t0, n, tol,
        warm_start=warm is not None, chunks=n, chunk_size=1, evaluations=sweeps * n,
    )  # fmt: skip
    return out, stats


def solve_sequential(
    stream_map: StreamMap, *, init: Tensor | None = None, max_iter: int = 1, tol: float = 0.0
) -> tuple[Tensor, SolverStats]:
    """The exact recurrence ``c_i = F(c_{i-1}, x̃_i)``, ``c_{-1} = 0``, one token at a time (docs/method.md §6).

    ``init``, ``max_iter`` and ``tol`` are accepted for a uniform signature and ignored
    (one pass is exact).

    Returns:
        ``(outputs [n, L, d_c], stats)`` with ``sweeps = 1``, ``residual = 0``.
    """
    t0 = time.perf_counter()
    n = stream_map.n
    out = stream_map.zeros()
    first = torch.zeros(1, stream_map.context_dim, device=stream_map.device)
    stream_map.run_chunks(torch.zeros(1, dtype=torch.long, device=stream_map.device), n, first, out.unsqueeze(0))
    stats = SolverStats(
        "sequential", 1, 0.0, True, time.perf_counter() - t0, n, tol,
        warm_start=False, chunks=1, chunk_size=n, evaluations=n,
    )  # fmt: skip
    return out, stats


def solve_shooting(
    stream_map: StreamMap,
    *,
    init: Tensor | None = None,
    max_iter: int = 100,
    tol: float = 1e-5,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    burn_in: int = DEFAULT_BURN_IN,
    skip_below: float = ROUNDING_NOISE,
    fallback: bool = True,
) -> tuple[Tensor, SolverStats]:
    """Multiple shooting: ``K = ceil(n / chunk_size)`` chunks advanced in lockstep (module docstring).

    Args:
        stream_map: the map.
        init: warm start (``[n, d_c]`` or ``[n, L, d_c]``): round-1 boundaries
            ``init[k·T - 1]`` and ``C^0`` of the first residual; ``None`` = zeros, with
            round-1 boundaries from the burn-in.
        max_iter: most rounds.
        tol: residual tolerance.
        chunk_size: tokens per chunk ``T`` (clipped to ``n``).
        burn_in: tokens run from the zero context before each chunk to guess its round-1
            boundary (clipped to ``T``; 0 = zero boundaries; unused with ``init``).
        skip_below: a chunk is re-run only if its boundary moved by more than this
            ``mean_d δ²`` (absolute; 0 = any move).
        fallback: when the rounds stall or run out, solve the stream after the last
            consistent chunk sequentially (exact); else end with ``converged=False``.

    Returns:
        ``(outputs [n, L, d_c], stats)``; ``sweeps`` = rounds run, ``chunks = K``,
        ``evaluations`` counts burn-in, re-run and sequentially finished tokens,
        ``sequential_tokens`` the latter.

    Raises:
        ValueError: ``chunk_size < 1``, ``burn_in < 0``, ``skip_below < 0``, ``init`` of
            the wrong shape, ``max_iter < 1`` or ``tol < 0``.
    """
    _check_budget(max_iter, tol)
    if chunk_size < 1 or burn_in < 0 or not skip_below >= 0:
        raise ValueError(f"need chunk_size >= 1, burn_in >= 0, skip_below >= 0; got {chunk_size}, {burn_in}, {skip_below}")
    t0 = time.perf_counter()
    chunks = _Chunks(stream_map, min(chunk_size, stream_map.n), _check_init(stream_map, init), burn_in)
    rounds, residual, converged = chunks.iterate(max_iter, tol, skip_below, fallback)
    stats = SolverStats(
        "shooting", rounds, residual, converged, time.perf_counter() - t0, stream_map.n, tol,
        warm_start=init is not None, chunks=chunks.K, chunk_size=chunks.T,
        evaluations=chunks.evaluations, sequential_tokens=chunks.sequential_tokens,
    )  # fmt: skip
    return chunks.outputs(), stats


class _Chunks:
    """State of :func:`solve_shooting`: ``K`` chunks of ``T`` tokens, their boundary
    contexts ``first [K, d_c]`` (the ones their current outputs came from), outputs
    ``out [K, T, L, d_c]`` (the ragged tail past ``n`` is padding), the chunks to re-run."""

    def __init__(self, stream_map: StreamMap, T: int, warm: Tensor | None, burn_in: int) -> None:
        n, L, d_c, device = stream_map.n, stream_map.num_layers, stream_map.context_dim, stream_map.device
        self.map, self.T, self.K = stream_map, T, -(-n // T)
        self.starts = torch.arange(self.K, device=device) * T
        self.inside = (self.starts[:, None] + torch.arange(T, device=device)) < n  # [K, T]
        self.out = torch.zeros(self.K, T, L, d_c, device=device)  # C^0 = 0 ...
        self.first = torch.zeros(self.K, d_c, device=device)
        self.active = torch.arange(self.K, device=device)
        self.kept_move, self.evaluations, self.sequential_tokens = 0.0, 0, 0
        self.largest_move = math.inf  # largest boundary move so far (the burn-in's move away from 0)
        if warm is not None:  # ... or C^0 = init
            self.out.view(self.K * T, L, d_c)[:n, -1] = warm
            self.first[1:] = warm[self.starts[1:] - 1]
        elif burn_in > 0 and self.K > 1:
            W = min(burn_in, T)
            tail = torch.empty(self.K - 1, W, L, d_c, device=device)
            stream_map.run_chunks(self.starts[1:] - W, W, self.first[1:], tail)
            self.first[1:] = tail[:, -1, -1]
            self.evaluations += (self.K - 1) * W
            self.largest_move = float(self.first.pow(2).mean(dim=-1).max())

    def iterate(self, max_iter: int, tol: float, skip_below: float, fallback: bool) -> tuple[int, float, bool]:
        """Shooting rounds until the residual is below ``tol``, no chunk needs re-running,
        or a round stalls / ``max_iter`` rounds pass (then, with ``fallback``, the sequential
        finish).  Returns ``(rounds, residual, converged)``."""
        residual, converged = math.inf, False
        rounds = 0
        for rounds in range(1, max_iter + 1):
            residual = self.run_round()
            if residual < tol:
                converged = True
                break
            move = self.correct_boundaries(skip_below)
            if self.active.numel() == 0:  # another round would re-run nothing
                residual, converged = self.kept_move, True
                break
            if float(move.max()) > STALL_FACTOR * self.largest_move or rounds == max_iter:
                if fallback:
                    residual, converged = self.finish_sequentially(move, skip_below), True
                break
            self.largest_move = float(move.max())
        return rounds, residual, converged

    def run_round(self) -> float:
        """Re-run the active chunks; returns the round's residual."""
        active = self.active
        new = torch.empty(active.shape[0], *self.out.shape[1:], device=self.out.device)
        self.map.run_chunks(self.starts[active], self.T, self.first[active], new)
        self.evaluations += int(self.inside[active].sum())
        change = (new[:, :, -1] - self.out[active, :, -1]).pow(2).mean(dim=-1) * self.inside[active]  # [K_a, T]
        self.out[active] = new
        return max(float(change.max()), self.kept_move)

    def correct_boundaries(self, skip_below: float) -> Tensor:
        """``b_k`` = last context of chunk ``k-1``; marks chunks that moved for re-running.

        Returns:
            ``[K]`` each boundary's move ``mean_d δ²``.
        """
        boundaries = torch.cat([self.first[:1], self.out[:-1, -1, -1]])
        move = (boundaries - self.first).pow(2).mean(dim=-1)
        rerun = move > skip_below
        self.kept_move = float(move[~rerun].max()) if not rerun.all() else 0.0
        self.first = torch.where(rerun[:, None], boundaries, self.first)
        self.active = rerun.nonzero().squeeze(1)
        return move

    def finish_sequentially(self, move: Tensor, skip_below: float) -> float:
        """Solve from the first chunk whose boundary moved, sequentially; returns the
        largest boundary move of the consistent chunks before it."""
        j = int((move > skip_below).nonzero()[0, 0])
        L, d_c = self.out.shape[2:]
        flat = self.out.view(self.K * self.T, L, d_c)
        tail = self.map.n - j * self.T
        self.map.run_chunks(self.starts[j : j + 1], tail, self.out[j - 1 : j, -1, -1], flat[j * self.T : self.map.n].unsqueeze(0))
        self.evaluations += tail
        self.sequential_tokens = tail
        return float(move[:j].max())

    def outputs(self) -> Tensor:
        """``[n, L, d_c]`` in stream order."""
        return self.out.view(self.K * self.T, *self.out.shape[2:])[: self.map.n]


Solver = Callable[..., tuple[Tensor, SolverStats]]

SOLVERS: dict[str, Solver] = {
    "jacobi": solve_jacobi,
    "sequential": solve_sequential,
    "shooting": solve_shooting,
}
"""Registry of context solvers by name (torchdeq ``solver/__init__.py``)."""


def get_solver(name: str) -> Solver:
    """The solver registered as ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown context solver {name!r}; choose one of {sorted(SOLVERS)}") from None
