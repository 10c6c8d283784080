"""minGRU language model: a recurrence linear in its state, trained in parallel over time.

Source: Feng, Tung, Ahmed, Bengio & Hajimirsadeghi (2024), "Were RNNs All We Needed?",
arXiv:2410.01201, §3.1 (minGRU) and Appendix B (log-space form); the scan is Heinsen
(2023), "Efficient Parallelization of a Ubiquitous Sequential Computation",
arXiv:2311.06281.  One minGRU layer with input ``x_t`` and hidden size ``H`` computes

    z_t  = sigmoid(W_z x_t + b_z)                 (update gate, no dependence on h)
    h̃_t  = g(W_h x_t + b_h)                      (candidate; g(v) = v + 0.5 if v >= 0 else sigmoid(v))
    h_t  = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t

i.e. ``h_t = a_t h_{t-1} + b_t`` with ``a_t = 1 - z_t ∈ (0, 1)`` and ``b_t = z_t h̃_t > 0``,
both functions of the input alone, so the whole sequence is one first-order linear
recurrence that :func:`parallel_scan_log` solves with a cumulative sum and a
``logcumsumexp`` (``O(T)`` work, ``O(log T)`` depth) and exact gradients through
autograd.  ``g`` keeps ``h̃ > 0`` so ``log b_t = log z_t + log g(·)`` exists: it is
computed as ``logsigmoid(k)`` and ``log_g`` without ever forming ``b_t``, and
``log a_t = logsigmoid(-k)`` (``1 - sigmoid(k) = sigmoid(-k)``).  ``logsigmoid`` is
used rather than the paper's ``-softplus``: torch's ``softplus`` turns linear beyond
20, an error of up to ``e^-20 ≈ 2e-9``.

The LM (:class:`MinGRULM`) follows :class:`newllm.baselines.models.LSTMLM` exactly:
frozen embeddings read as ``LayerNorm(E[token])``, a recurrent core, dropout, the
shared :class:`~newllm.baselines.models.Readout` to ``d_e`` and the frozen tied head
applied by the trainer; ``forward(tokens, state) -> (h [B, T, d_e], state)`` with a
tuple state carried (detached) across truncated-BPTT windows, ``stream_hidden`` for
evaluation and a closed-form ``parameter_count`` that :func:`match_mingru` sizes to a
target.  Notation: ``B`` sequences, ``T`` time steps, ``H`` hidden size, ``d_e``
embed_dim, ``L`` layers.

Why not the ``minGRU-pytorch`` package (PyPI, MIT, 0.2.1, lucidrains): its minGRU is
~60 lines of plain torch and runs on torch 2.13/CPU (its parallel and step paths agree
to 4e-7 in float32), but (1) it declares ``einops`` as a requirement, and neither it nor
``einops`` is in this project's dependencies or constraints, for code of the size of
this module; (2) its projections have no bias (the paper writes ``Linear``), its scan
takes the initial state only as a prepended ``log h0``, it has no chunked scan for long
streams, and shapes and numerics are undocumented; (3) it is a single author's 0.x API
(16 releases so far) with no stability promise.  The formulas here are the paper's
Appendix B ones, written to the conventions of :mod:`newllm.baselines.models`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from newllm.baselines.models import Readout, SizeMatch, _check_embeddings, _closest, embed

# ---------------------------------------------------------------------------- scan


def parallel_scan_log(log_coeffs: Tensor, log_values: Tensor, h0: Tensor | None = None) -> Tensor:
    """Solve ``h_t = a_t · h_{t-1} + b_t`` for all ``t`` at once, from ``log a`` and ``log b``.

    Heinsen (2023) scan along dim 1: with ``a*_t = Σ_{s≤t} log a_s`` (cumsum),
    ``h_t = exp(a*_t) · h0 + exp(a*_t + logcumsumexp_t(log b - a*))``.  The second term
    is the paper's Appendix B expression (there ``h0`` is folded in by prepending
    ``log h0`` to ``log b``); adding ``h0`` linearly instead allows ``h0 = 0`` or of
    either sign and gives ``h0`` an ordinary gradient.  Differentiable in all inputs.

    Precision: the result carries a relative rounding error of about
    ``eps · max_t |a*_t|`` (``a*`` and the log-sum-exp cancel in the exponent), i.e.
    it grows with ``T · mean |log a|``; :class:`MinGRULayer` therefore scans in chunks
    of ``chunk_size`` steps.

    Args:
        log_coeffs: ``log a`` ``[B, T, H]`` (any trailing shape ``[B, T, *]``), finite;
            ``a ∈ (0, 1]`` keeps the recurrence stable but is not required.
        log_values: ``log b`` of the same shape (``b > 0``; ``-inf`` means ``b = 0``).
        h0: ``[B, *]`` state before step 1, or ``None`` (zeros).

    Returns:
        ``h`` ``[B, T, *]``, same dtype as the inputs.

    Raises:
        ValueError: shapes that differ, or fewer than 2 dimensions.
    """
    if log_coeffs.shape != log_values.shape or log_coeffs.ndim < 2:
        raise ValueError(
            f"log_coeffs and log_values must share one [B, T, ...] shape, got {tuple(log_coeffs.shape)} "
            f"and {tuple(log_values.shape)}"
        )
    a_star = log_coeffs.cumsum(dim=1)  # [B, T, *]
    h = torch.exp(a_star + torch.logcumsumexp(log_values - a_star, dim=1))
    if h0 is not None:
        h = h + torch.exp(a_star) * h0.unsqueeze(1)
    return h


def g(x: Tensor) -> Tensor:
    """The paper's positive activation: ``x + 0.5`` for ``x ≥ 0``, ``sigmoid(x)`` below (continuous, > 0)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: Tensor) -> Tensor:
    """``log g(x)`` without forming ``g``: ``log(x + 0.5)`` for ``x ≥ 0``, ``logsigmoid(x)`` below.

    Both branches are evaluated on finite arguments (``relu`` keeps the log's argument
    ≥ 0.5), so ``torch.where`` passes no NaN into the gradient.
    """
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), F.logsigmoid(x))


# ---------------------------------------------------------------------------- layer


class MinGRULayer(nn.Module):
    """One minGRU layer (Feng et al. 2024, §3.1, log-space form of Appendix B.3.1).

    ``x`` ``[B, T, in_dim]`` -> ``h`` ``[B, T, H]`` through one ``Linear(in_dim, 2H)``
    (with bias) that yields the candidate pre-activation and the gate pre-activation.
    ``h`` stays positive whenever ``h0 ≥ 0``.  The log-space arithmetic runs in at least
    float32 (also under a bf16 autocast); the output has that dtype.

    Args:
        in_dim: input width ≥ 1.
        hidden_size: ``H`` ≥ 1.
        chunk_size: the scan runs over consecutive chunks of at most this many steps,
            carrying the state between them (exactly the same recurrence; bounds the
            rounding error of :func:`parallel_scan_log`, ~``eps · chunk_size · |log a|``:
            in float32 at initialisation, about 1e-5 relative with 128 against 8e-5 for
            one unchunked scan of 1024 steps).

    Raises:
        ValueError: ``in_dim``, ``hidden_size`` or ``chunk_size`` < 1.
    """

    def __init__(self, in_dim: int, hidden_size: int, chunk_size: int = 128) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden_size", hidden_size), ("chunk_size", chunk_size)):
            if value < 1:
                raise ValueError(f"minGRU {name} must be >= 1, got {value}")
        self.in_dim, self.hidden_size, self.chunk_size = in_dim, hidden_size, chunk_size
        self.proj = nn.Linear(in_dim, 2 * hidden_size)  # -> [candidate | gate]

    def _preactivations(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.proj(x)
        out = out.to(torch.promote_types(out.dtype, torch.float32))
        candidate, gate = out.chunk(2, dim=-1)
        return candidate, gate

    def forward(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Parallel (log-space scan) pass over ``x`` ``[B, T, in_dim]`` from ``h0`` ``[B, H]`` (``None``: zeros).

        Returns:
            ``(h [B, T, H], h_last [B, H])``; ``h_last = h[:, -1]`` is the state to carry
            into the next window.

        Raises:
            ValueError: ``x`` not ``[B, T ≥ 1, in_dim]``, or ``h0`` not ``[B, H]``.
        """
        self._check(x, h0)
        candidate, gate = self._preactivations(x)  # [B, T, H] each
        log_coeffs = F.logsigmoid(-gate)  # log(1 - z)
        log_values = F.logsigmoid(gate) + log_g(candidate)  # log z + log h̃
        state = h0.to(log_coeffs.dtype) if h0 is not None else None
        parts = []
        for s in range(0, x.shape[1], self.chunk_size):
            part = parallel_scan_log(log_coeffs[:, s : s + self.chunk_size], log_values[:, s : s + self.chunk_size], state)
            parts.append(part)
            state = part[:, -1]
        h = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return h, state

    def step(self, x_t: Tensor, h_prev: Tensor | None = None) -> Tensor:
        """One step in ordinary space: ``(1 - z) ⊙ h_prev + z ⊙ g(h̃)``, ``[B, in_dim]`` -> ``[B, H]``.

        ``h_prev`` ``[B, H]`` or ``None`` (zeros).  For inference one token at a time and
        as the reference that :meth:`forward` must reproduce.
        """
        candidate, gate = self._preactivations(x_t)
        z = torch.sigmoid(gate)
        h_new = z * g(candidate)
        return h_new if h_prev is None else (1 - z) * h_prev.to(h_new.dtype) + h_new

    def sequential(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`forward` computed by a Python loop over :meth:`step` (reference; ``T`` steps deep).

        Returns:
            ``(h [B, T, H], h_last [B, H])``.
        """
        self._check(x, h0)
        h, out = h0, []
        for t in range(x.shape[1]):
            h = self.step(x[:, t], h)
            out.append(h)
        return torch.stack(out, dim=1), h

    def _check(self, x: Tensor, h0: Tensor | None) -> None:
        if x.ndim != 3 or x.shape[1] < 1 or x.shape[2] != self.in_dim:
            raise ValueError(f"minGRU input must be [B, T >= 1, {self.in_dim}], got {tuple(x.shape)}")
        if h0 is not None and tuple(h0.shape) != (x.shape[0], self.hidden_size):
            raise ValueError(f"minGRU h0 must be [{x.shape[0]}, {self.hidden_size}], got {tuple(h0.shape)}")

    @staticmethod
    def parameter_count(in_dim: int, hidden_size: int) -> int:
        """``2H·in_dim + 2H`` (one Linear to candidate and gate, with bias)."""
        return 2 * hidden_size * in_dim + 2 * hidden_size


# ---------------------------------------------------------------------------- LM


class MinGRULM(nn.Module):
    """minGRU LM: ``x_t`` -> ``L`` minGRU layers (hidden ``H``) -> dropout -> Readout -> ``h_t`` ``[d_e]``.

    Layer 1 maps the embedding ``x_t = LayerNorm(E[token_t])`` (``d_e``) to ``H``, as
    the LSTM does; each further layer is a pre-LN residual block
    ``u <- u + dropout(minGRU_ℓ(LayerNorm(u)))`` (``H -> H``), so every minGRU layer
    reads a layer-normalised input and ``num_layers = 1`` is :class:`LSTMLM` with the
    LSTM replaced by one minGRU layer.  The paper's language-modelling experiments
    stack minGRU layers in residual blocks in the same spirit; we do not add their
    other block components (e.g. an MLP after each recurrence) so that the parameters
    all sit in the recurrence and the model stays comparable with the 1-layer LSTM
    baseline.  Init: torch defaults (as :class:`LSTMLM`).

    Trained with truncated BPTT exactly as the LSTM (the trainer carries ``state``
    across windows and detaches it); evaluated over a whole stream with the state
    carried, so every token is predicted from the full history before it.

    Args:
        embeddings: ``[V, d_e]`` frozen matrix (a float32 buffer, never trained, not saved).
        hidden_size: ``H`` ≥ 1.
        dropout: on each layer's output during training.
        num_layers: ``L`` ≥ 1.
        chunk_size: scan chunk of every layer (:class:`MinGRULayer`).

    Raises:
        ValueError: ``hidden_size``, ``num_layers`` or ``chunk_size`` < 1, or embeddings not 2-D.
    """

    def __init__(
        self, embeddings: Tensor, hidden_size: int, dropout: float = 0.0, num_layers: int = 1, chunk_size: int = 128
    ) -> None:
        super().__init__()
        _check_embeddings(embeddings)
        if hidden_size < 1:
            raise ValueError(f"minGRU hidden_size must be >= 1, got {hidden_size}")
        if num_layers < 1:
            raise ValueError(f"minGRU num_layers must be >= 1, got {num_layers}")
        embed_dim = embeddings.shape[1]
        self.register_buffer("embeddings", embeddings.detach().float(), persistent=False)
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.layers = nn.ModuleList(
            MinGRULayer(embed_dim if i == 0 else hidden_size, hidden_size, chunk_size) for i in range(num_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size) for _ in range(num_layers - 1))  # before layers 2..L
        self.dropout = nn.Dropout(dropout)
        self.readout = Readout(hidden_size, embed_dim)

    def forward(self, tokens: Tensor, state: tuple[Tensor] | None = None) -> tuple[Tensor, tuple[Tensor]]:
        """``tokens`` ``[B, T]`` int64, ``state`` ``(h,)`` with ``h`` ``[L, B, H]`` or None (zeros).

        The state is a 1-tuple so that the trainer's detaching and checkpointing of the
        LSTM's ``(h, c)`` apply unchanged.

        Returns:
            ``(h [B, T, d_e], new state (h_last [L, B, H],))``; the state is float32
            (at least), also under autocast.
        """
        h0 = [None] * self.num_layers if state is None else state[0].unbind(0)
        u, last = None, []
        for i, layer in enumerate(self.layers):
            if i == 0:
                u, h_last = layer(embed(self.embeddings, tokens), h0[0])  # [B, T, H]
                u = self.dropout(u)
            else:
                out, h_last = layer(self.norms[i - 1](u), h0[i])
                u = u + self.dropout(out)
            last.append(h_last)
        return self.readout(u), (torch.stack(last),)

    @torch.no_grad()
    def stream_hidden(self, stream: Tensor, window: int = 4096) -> Tensor:
        """Readout for every target of one stream, ``[n]`` -> ``[n-1, d_e]``.

        One sequential pass, run as consecutive windows of ``window`` tokens with the
        state carried (the same numbers as one call on the whole stream up to rounding,
        without ``[n, H]`` activations per layer in memory).
        """
        inputs = stream[:-1]
        out, state = [], None
        for s in range(0, inputs.shape[0], window):
            hidden, state = self(inputs[None, s : s + window], state)
            out.append(hidden[0])
        return torch.cat(out)

    @staticmethod
    def parameter_count(embed_dim: int, hidden_size: int, num_layers: int = 1) -> int:
        """``2H·d_e + 2H`` (layer 1) ``+ (L-1)·(2H² + 4H)`` (LayerNorm + minGRU per further
        layer) ``+ H·d_e + d_e + 2·d_e`` (readout)."""
        H, d = hidden_size, embed_dim
        return MinGRULayer.parameter_count(d, H) + (num_layers - 1) * (2 * H + MinGRULayer.parameter_count(H, H)) + H * d + 3 * d


def match_mingru(target: int, embed_dim: int, tolerance: float = 0.1, *, num_layers: int = 1) -> SizeMatch:
    """minGRU hidden size whose :meth:`MinGRULM.parameter_count` is closest to ``target`` (ties: the smaller).

    At equal parameters the minGRU is much wider than the LSTM (``≈ 3H·d_e`` against
    ``4H² + 5H·d_e`` for one layer), which costs little: its recurrence is elementwise.

    Raises:
        ValueError: ``embed_dim`` or ``num_layers`` < 1, ``target`` < 1, or the closest
            size misses ``target`` by more than ``tolerance`` (relative); the message
            names the target.
    """
    if embed_dim < 1 or num_layers < 1:
        raise ValueError(f"embed_dim and num_layers must be >= 1, got {embed_dim} and {num_layers}")
    upper = max(target, 1) // (3 * embed_dim) + 2  # the count exceeds 3H·d_e: beyond this it exceeds target
    if num_layers > 1:
        upper = min(upper, math.isqrt(max(target, 1) // (2 * (num_layers - 1))) + 2)  # (L-1)·2H² alone
    return _closest(
        target,
        range(1, upper + 1),
        lambda h: MinGRULM.parameter_count(embed_dim, h, num_layers),
        tolerance,
        "minGRU hidden",
    )
