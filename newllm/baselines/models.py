"""Neural baselines with CVFP's frozen embeddings and tied head: LSTM and Transformer LMs.

Both read ``x_t = LayerNorm(E[token_t])`` (no affine, as :class:`newllm.model.TokenInput`)
and end with the same readout as CVFP's TokenBlock: a Linear to ``d_e`` followed by a
LayerNorm(``d_e``) (with affine), whose output ``h`` ``[.., d_e]`` meets the frozen,
tied head ``logits = h @ Eᵀ`` (no bias).  ``forward`` returns ``h``; the trainer applies
the head through :class:`newllm.head.TiedCrossEntropy` so ``[tokens, V]`` logits are
never materialised.  Notation: ``V`` = 50,257, ``d_e`` = embed_dim, ``B`` = sequences,
``T`` = time steps.

Sizes are chosen so trainable parameters match the CVFP run's ContextBlock + TokenBlock
(:func:`cvfp_parameter_target`) within a tolerance (:func:`match_lstm`,
:func:`match_transformer`); parameter counts come from closed forms that a test checks
against :func:`newllm.model.count_parameters` of the built modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from newllm.model import ModelConfig, build_blocks, count_parameters


def embed(embeddings: Tensor, tokens: Tensor) -> Tensor:
    """``LayerNorm(E[tokens])`` without affine parameters: ``[B, T]`` -> ``[B, T, d_e]``."""
    return F.layer_norm(embeddings[tokens], (embeddings.shape[1],))


class Readout(nn.Sequential):
    """``LayerNorm(W h + b)``: model width -> ``d_e`` for the tied head (as CVFP's TokenLayer ends)."""

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__(nn.Linear(in_dim, embed_dim), nn.LayerNorm(embed_dim))


# ---------------------------------------------------------------------------- LSTM


class LSTMLM(nn.Module):
    """1-layer LSTM LM: ``x_t`` -> LSTM(hidden ``H``) -> dropout -> Readout -> ``h_t`` ``[d_e]``.

    Trained with truncated BPTT (the trainer carries ``state`` across consecutive
    windows and detaches it between them); evaluated over a whole stream in one pass,
    so every token is predicted from the full history before it.

    Args:
        embeddings: ``[V, d_e]`` frozen matrix (a buffer, never trained).
        hidden_size: ``H`` ≥ 1.
        dropout: on the LSTM output during training.

    Raises:
        ValueError: ``hidden_size < 1`` or embeddings not 2-D.
    """

    def __init__(self, embeddings: Tensor, hidden_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        _check_embeddings(embeddings)
        if hidden_size < 1:
            raise ValueError(f"LSTM hidden_size must be >= 1, got {hidden_size}")
        embed_dim = embeddings.shape[1]
        self.register_buffer("embeddings", embeddings.detach().float(), persistent=False)
        self.hidden_size = hidden_size
        self.lstm = nn.LSTM(embed_dim, hidden_size, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.readout = Readout(hidden_size, embed_dim)

    def forward(self, tokens: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``tokens`` ``[B, T]`` int64, ``state`` ``(h, c)`` each ``[1, B, H]`` or None (zeros).

        Returns:
            ``(h [B, T, d_e], new state)``.
        """
        x = embed(self.embeddings, tokens)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN has no bf16 LSTM primitive on every CPU: the recurrence runs in fp32
            with torch.autocast("cpu", enabled=False):
                out, state = self.lstm(x.float(), state)  # [B, T, H]
        else:
            out, state = self.lstm(x, state)  # [B, T, H]
        return self.readout(self.dropout(out)), state

    @torch.no_grad()
    def stream_hidden(self, stream: Tensor) -> Tensor:
        """Readout for every target of one stream, ``[n]`` -> ``[n-1, d_e]`` (one sequential pass)."""
        hidden, _ = self(stream[None, :-1])
        return hidden[0]

    @torch.no_grad()
    def stream_states(self, stream: Tensor) -> Tensor:
        """The LSTM's hidden state after each token of one stream, from a zero state before
        token 0: ``[n]`` -> ``[n, 1, H]`` float32, laid out as a context cache (row ``i`` is
        the state after processing token ``i``; docs/method.md §6, §10)."""
        out, _ = self.lstm(embed(self.embeddings, stream[None, :]))  # [1, n, H]
        return out[0, :, None, :].float().contiguous()

    @staticmethod
    def parameter_count(embed_dim: int, hidden_size: int) -> int:
        """``4H(d_e + H) + 8H`` (LSTM, two bias vectors as in torch) ``+ H·d_e + d_e + 2·d_e`` (readout)."""
        H, d = hidden_size, embed_dim
        return 4 * H * (d + H) + 8 * H + H * d + d + 2 * d


# ---------------------------------------------------------------------------- Transformer


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (nanoGPT): ``[B, T, W]`` -> ``[B, T, W]``."""

    def __init__(self, width: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.num_heads = num_heads
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        B, T, W = x.shape
        q, k, v = self.qkv(x).split(W, dim=2)
        q, k, v = (t.view(B, T, self.num_heads, W // self.num_heads).transpose(1, 2) for t in (q, k, v))  # [B, nh, T, hd]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, W))


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))`` with MLP ``W -> 4W -> W`` (GELU)."""

    def __init__(self, width: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, num_heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


@dataclass(frozen=True)
class TransformerConfig:
    """The Transformer baseline's shape: ``width`` ``W`` (chosen by :func:`match_transformer`)
    and config ``baselines.transformer``, whose defaults live in the schema alone (the two
    defaults here are the schema's too: no dropout, and ``eval_stride`` ``None`` =
    ``block_size // 2``, at least 1; see :attr:`stride`).

    Raises:
        ValueError: ``width``, ``num_layers``, ``num_heads`` or ``block_size`` < 1, ``width``
        not divisible by ``num_heads``, or ``eval_stride`` outside ``1..block_size``,
        naming the bad value.
    """

    width: int
    num_layers: int
    num_heads: int
    block_size: int
    dropout: float = 0.0
    eval_stride: int | None = None

    def __post_init__(self) -> None:
        for name in ("width", "num_layers", "num_heads", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"transformer {name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.num_heads:
            raise ValueError(f"transformer width {self.width} is not divisible by num_heads {self.num_heads}")
        if not 1 <= self.stride <= self.block_size:
            raise ValueError(f"eval_stride must be in 1..block_size={self.block_size}, got {self.eval_stride}")

    @property
    def stride(self) -> int:
        """The evaluation stride in tokens: ``eval_stride``, or ``max(1, block_size // 2)``."""
        return self.eval_stride or max(1, self.block_size // 2)


class TransformerLM(nn.Module):
    """Small causal Transformer LM (nanoGPT-style) over a fixed window of ``block_size`` tokens.

    ``x_t`` -> Linear ``d_e -> W`` (only when ``W != d_e``) + learned position embedding
    ``[block_size, W]`` -> ``num_layers`` pre-LN blocks -> Readout (Linear ``W -> d_e`` +
    LayerNorm, which also plays nanoGPT's final LayerNorm) -> ``h_t``.  Init as nanoGPT:
    Linear and position weights ``N(0, 0.02²)``, zero biases, residual projections
    ``N(0, (0.02/√(2L))²)``.

    Evaluation (:meth:`stream_hidden`) slides the window over the stream with stride
    ``eval_stride``: the first window scores all its positions, each later one only the
    positions not scored before, so every target after the first ``block_size`` has at
    least ``block_size - eval_stride`` tokens of context (stride ``block_size // 2`` by
    default: 2× the forward compute of non-overlapping windows, far fewer short contexts).

    Args:
        embeddings: ``[V, d_e]`` frozen matrix (a buffer, never trained).
        config: width, depth, heads, window, dropout and evaluation stride.

    Raises:
        ValueError: embeddings not 2-D (bad sizes are refused by :class:`TransformerConfig`).
    """

    def __init__(self, embeddings: Tensor, config: TransformerConfig) -> None:
        super().__init__()
        _check_embeddings(embeddings)
        width, num_layers, block_size, dropout = config.width, config.num_layers, config.block_size, config.dropout
        embed_dim = embeddings.shape[1]
        self.register_buffer("embeddings", embeddings.detach().float(), persistent=False)
        self.config = config
        self.width, self.block_size, self.eval_stride = width, block_size, config.stride
        self.input = nn.Identity() if width == embed_dim else nn.Linear(embed_dim, width)
        self.position = nn.Embedding(block_size, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(width, config.num_heads, dropout) for _ in range(num_layers))
        self.readout = Readout(width, embed_dim)
        self.apply(_nanogpt_init)
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * num_layers))

    def forward(self, tokens: Tensor, state: None = None) -> tuple[Tensor, None]:
        """``tokens`` ``[B, T]`` with ``T ≤ block_size`` -> ``(h [B, T, d_e], None)`` (no carried state)."""
        T = tokens.shape[1]
        if T > self.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.block_size}")
        x = self.input(embed(self.embeddings, tokens)) + self.position(torch.arange(T, device=tokens.device))
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.readout(x), None

    @torch.no_grad()
    def stream_hidden(self, stream: Tensor, windows_per_batch: int = 64) -> Tensor:
        """Readout for every target of one stream, ``[n]`` -> ``[n-1, d_e]`` (sliding window)."""
        inputs = stream[:-1]
        M, T = inputs.shape[0], min(self.block_size, stream.shape[0] - 1)
        starts = list(range(0, max(M - T, 0) + 1, self.eval_stride))
        if starts[-1] + T < M:
            starts.append(M - T)
        out = torch.empty(M, self.embeddings.shape[1], device=stream.device)
        scored_end = 0
        for b in range(0, len(starts), windows_per_batch):
            batch_starts = starts[b : b + windows_per_batch]
            windows = torch.stack([inputs[s : s + T] for s in batch_starts])  # [nW, T]
            hidden, _ = self(windows)  # [nW, T, d_e]
            for row, s in enumerate(batch_starts):
                out[scored_end : s + T] = hidden[row, scored_end - s :]
                scored_end = s + T
        return out

    @staticmethod
    def parameter_count(embed_dim: int, width: int, num_layers: int, block_size: int) -> int:
        """``[d_e·W + W if W ≠ d_e]`` (input) ``+ block_size·W`` (positions)
        ``+ L·(12W² + 13W)`` (blocks) ``+ W·d_e + d_e + 2·d_e`` (readout)."""
        W, d = width, embed_dim
        return (0 if W == d else d * W + W) + block_size * W + num_layers * (12 * W * W + 13 * W) + W * d + 3 * d


def _nanogpt_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, 0.0, 0.02)


def _check_embeddings(embeddings: Tensor) -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [V, d_e], got shape {tuple(embeddings.shape)}")


# ---------------------------------------------------------------------------- sizing


def cvfp_parameter_target(model_cfg: dict, embed_dim: int) -> int:
    """Trainable parameters of the CVFP run's ContextBlock + TokenBlock (docs/method.md §3).

    ``model_cfg`` is the run's resolved ``model`` section (``context_dim``,
    ``num_input_tokens``, ``num_layers``, ``ffn_layers``, ``activation``).
    """
    with torch.device("meta"):
        context_block, token_block = build_blocks(ModelConfig.from_dict(model_cfg, embed_dim))
    return count_parameters(context_block) + count_parameters(token_block)


@dataclass(frozen=True)
class SizeMatch:
    """A chosen size, its trainable parameters and the relative gap to the target."""

    size: int
    parameters: int
    target: int

    @property
    def relative_gap(self) -> float:
        return self.parameters / self.target - 1.0


def _closest(target: int, candidates, count, tolerance: float, what: str) -> SizeMatch:
    if target < 1:
        raise ValueError(f"parameter target must be >= 1, got {target}")
    best = min((SizeMatch(s, count(s), target) for s in candidates), key=lambda m: abs(m.relative_gap))
    if abs(best.relative_gap) > tolerance:
        raise ValueError(
            f"no {what} size matches {target} trainable parameters within {tolerance:.0%}: closest is "
            f"{best.size} with {best.parameters} ({best.relative_gap:+.1%}); change the baseline settings or the tolerance"
        )
    return best


def match_lstm(target: int, embed_dim: int, tolerance: float = 0.1) -> SizeMatch:
    """LSTM hidden size whose parameter count is closest to ``target`` (ties: the smaller).

    Raises:
        ValueError: the closest size misses ``target`` by more than ``tolerance`` (relative).
    """
    upper = int(math.isqrt(max(target, 1))) + 2  # 4H² alone exceeds target beyond this
    return _closest(target, range(1, upper + 1), lambda h: LSTMLM.parameter_count(embed_dim, h), tolerance, "LSTM hidden")


def match_transformer(
    target: int, embed_dim: int, num_layers: int, num_heads: int, block_size: int, tolerance: float = 0.1
) -> SizeMatch:
    """Transformer width (a multiple of ``num_heads``) closest to ``target`` parameters.

    Raises:
        ValueError: the closest width misses ``target`` by more than ``tolerance``.
    """
    upper = int(math.isqrt(max(target // (12 * num_layers), 1))) + num_heads + 1
    widths = range(num_heads, upper + num_heads, num_heads)
    return _closest(
        target,
        widths,
        lambda w: TransformerLM.parameter_count(embed_dim, w, num_layers, block_size),
        tolerance,
        "Transformer width",
    )


SEQ_LEN_KEY = {"lstm": "bptt", "mingru": "bptt", "transformer": "block_size"}
"""The ``baselines.<model>`` key that sets a neural baseline's training window ``seq_len``."""
