"""New-LLM model (SPEC §3): token input, ContextBlock, TokenBlock (E-wiring), tied head.

Notation: ``d_c`` = context_dim, ``d_e`` = embed_dim, ``N_in`` = num_input_tokens,
``L`` = num_layers, ``V`` = vocabulary size (50,257), ``B`` = tokens in a batch.

Modules know nothing about files, Snakemake or logging; the frozen embedding matrix is
passed in as a tensor and never becomes a trained parameter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class TokenInput(nn.Module):
    """Frozen token embeddings -> ``x̃_t = [x_{t-N_in+1}; …; x_t]`` (SPEC §3).

    ``x_t = LayerNorm(E[token_t])`` (``embed_norm``, no affine parameters: the embedding
    is frozen, so its normalisation carries nothing to train).  Windows are oldest first
    and zero-padded before the start of the stream.

    Args:
        embeddings: ``[V, d_e]`` frozen embedding matrix (a buffer, not a parameter).
        num_input_tokens: ``N_in`` ≥ 1.

    Raises:
        ValueError: ``num_input_tokens < 1`` or embeddings not 2-D.
    """

    def __init__(self, embeddings: Tensor, num_input_tokens: int = 1) -> None:
        super().__init__()
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be [V, d_e], got shape {tuple(embeddings.shape)}")
        if num_input_tokens < 1:
            raise ValueError(f"num_input_tokens must be >= 1, got {num_input_tokens}")
        self.register_buffer("weight", embeddings.detach().float(), persistent=False)
        # x = LayerNorm(E[token]) is a per-row function: normalise the table once per run
        # instead of every gathered batch of every sweep (issue 10, Phase 1 target)
        self.register_buffer("normed", F.layer_norm(self.weight, (self.weight.shape[1],)), persistent=False)
        self.num_input_tokens = num_input_tokens
        self.register_buffer("window_offsets", torch.arange(num_input_tokens - 1, -1, -1), persistent=False)

    @property
    def embed_dim(self) -> int:
        return self.weight.shape[1]

    @property
    def output_dim(self) -> int:
        """``N_in · d_e``."""
        return self.num_input_tokens * self.embed_dim

    def forward(self, stream: Tensor, positions: Tensor) -> Tensor:
        """Embed the windows ending at ``positions`` of ``stream``.

        Args:
            stream: ``[n]`` int64 token ids of the whole stream.
            positions: ``[B]`` int64 positions into ``stream``.

        Returns:
            ``[B, N_in·d_e]`` float32.
        """
        idx = positions[:, None] - self.window_offsets[None, :]  # [B, N_in], oldest first
        valid = (idx >= 0).unsqueeze(-1)
        x = self.normed[stream[idx.clamp(min=0)]]  # [B, N_in, d_e]
        return (x * valid).reshape(positions.shape[0], self.output_dim)

    def rows(self, sequences: Tensor) -> Tensor:
        """Windows within each row of a batch of independent sequences.

        Args:
            sequences: ``[P, T]`` int64 token ids; each row is its own stream.

        Returns:
            ``[P, T, N_in·d_e]``, zero-padded before each row's start.
        """
        P, T = sequences.shape
        flat = sequences.reshape(-1)
        x = self(flat, torch.arange(P * T, device=sequences.device)).view(P, T, self.num_input_tokens, self.embed_dim)
        t = torch.arange(T, device=sequences.device)[:, None]
        inside = (t - self.window_offsets[None, :] >= 0).unsqueeze(-1)  # [T, N_in, 1]: slot within this row
        return (x * inside).reshape(P, T, self.output_dim)


class FFN(nn.Sequential):
    """``act(W[z] + b)`` (1 layer) or ``act(W2 act(W1 z + b1) + b2)`` with hidden 4·in (SPEC §3)."""

    def __init__(self, in_dim: int, out_dim: int, num_layers: int = 1, activation: str = "gelu") -> None:
        if num_layers not in (1, 2):
            raise ValueError(f"ffn_layers must be 1 or 2, got {num_layers}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
        act = ACTIVATIONS[activation]
        if num_layers == 1:
            super().__init__(nn.Linear(in_dim, out_dim), act())
        else:
            super().__init__(nn.Linear(in_dim, 4 * in_dim), act(), nn.Linear(4 * in_dim, out_dim), act())


class ContextLayer(nn.Module):
    """``c' = LayerNorm(R(c) + FFN([c; x̃]))``, ``R`` identity (SPEC §3).

    Shapes: ``c`` ``[B, d_c]``, ``x̃`` ``[B, N_in·d_e]`` -> ``[B, d_c]``.
    """

    def __init__(self, context_dim: int, token_input_dim: int, ffn_layers: int = 1, activation: str = "gelu") -> None:
        super().__init__()
        self.ffn = FFN(context_dim + token_input_dim, context_dim, ffn_layers, activation)
        self.norm = nn.LayerNorm(context_dim)

    def forward(self, context: Tensor, token_input: Tensor) -> Tensor:
        return self.norm(context + self.ffn(torch.cat([context, token_input], dim=-1)))


class ContextBlock(nn.Module):
    """The recurrent map ``c_t = F(c_{t-1}, x̃_t)`` of ``L`` ContextLayers (SPEC §3).

    Layer 0 reads the previous token's final context; layer ``l > 0`` reads layer
    ``l-1``'s output; every layer reads ``x̃_t``.  All per-layer outputs are returned
    because the TokenBlock is E-wired to them.

    Raises:
        ValueError: a non-positive dimension or ``num_layers < 1``.
    """

    def __init__(
        self,
        context_dim: int,
        token_input_dim: int,
        num_layers: int = 1,
        ffn_layers: int = 1,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        _check_positive(context_dim=context_dim, token_input_dim=token_input_dim, num_layers=num_layers)
        self.context_dim = context_dim
        self.layers = nn.ModuleList(ContextLayer(context_dim, token_input_dim, ffn_layers, activation) for _ in range(num_layers))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, context: Tensor, token_input: Tensor) -> Tensor:
        """Args: ``context`` ``[B, d_c]``, ``token_input`` ``[B, N_in·d_e]``.

        Returns:
            ``[B, L, d_c]``; ``[:, -1]`` is the new context ``c_t``.
        """
        outputs = []
        for layer in self.layers:
            context = layer(context, token_input)
            outputs.append(context)
        return torch.stack(outputs, dim=1)


class TokenLayer(nn.Module):
    """``h' = LayerNorm(R(h) + FFN([c^(l); h]))``, ``R`` a Linear when sizes differ (SPEC §3)."""

    def __init__(self, context_dim: int, in_dim: int, out_dim: int, ffn_layers: int = 1, activation: str = "gelu") -> None:
        super().__init__()
        self.residual = nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim)
        self.ffn = FFN(context_dim + in_dim, out_dim, ffn_layers, activation)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, context: Tensor, hidden: Tensor) -> Tensor:
        return self.norm(self.residual(hidden) + self.ffn(torch.cat([context, hidden], dim=-1)))


class TokenBlock(nn.Module):
    """``L`` TokenLayers, E-wired: layer ``l`` reads ContextBlock layer ``l``'s output (SPEC §3).

    ``h_0 = x̃_t`` (``N_in·d_e``); every layer outputs ``d_e`` so the tied head applies.
    """

    def __init__(
        self,
        context_dim: int,
        token_input_dim: int,
        embed_dim: int,
        num_layers: int = 1,
        ffn_layers: int = 1,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        _check_positive(context_dim=context_dim, token_input_dim=token_input_dim, embed_dim=embed_dim, num_layers=num_layers)
        dims = [token_input_dim] + [embed_dim] * num_layers
        self.context_dim = context_dim
        self.layers = nn.ModuleList(
            TokenLayer(context_dim, dims[i], dims[i + 1], ffn_layers, activation) for i in range(num_layers)
        )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, contexts: Tensor, token_input: Tensor) -> Tensor:
        """Args: ``contexts`` ``[B, L, d_c]`` (ContextBlock layer outputs), ``token_input`` ``[B, N_in·d_e]``.

        Returns:
            ``[B, d_e]``.
        """
        hidden = token_input
        for depth, layer in enumerate(self.layers):
            hidden = layer(contexts[:, depth], hidden)
        return hidden


def tied_logits(hidden: Tensor, embeddings: Tensor) -> Tensor:
    """Output head tied to the frozen embeddings, no bias: ``[B, d_e] @ [V, d_e]ᵀ -> [B, V]``."""
    return hidden @ embeddings.t()


def init_weights(module: nn.Module) -> None:
    """SPEC §3 init: Linear weights ~ N(0, 0.1²), biases ~ N(0, 0.01²); uses torch's global RNG."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, 0.0, 0.1)
            if sub.bias is not None:
                nn.init.normal_(sub.bias, 0.0, 0.01)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (frozen buffers such as embeddings excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def build_blocks(model_cfg: dict, embed_dim: int) -> tuple[ContextBlock, TokenBlock]:
    """Build both blocks from a resolved ``model`` config section (initialised per SPEC §3).

    Keys: ``context_dim``, ``num_input_tokens``, ``num_layers``, ``ffn_layers``,
    ``activation``.  Call ``torch.manual_seed`` first for a reproducible init.
    """
    token_input_dim = int(model_cfg["num_input_tokens"]) * embed_dim
    kwargs = dict(
        num_layers=int(model_cfg["num_layers"]),
        ffn_layers=int(model_cfg["ffn_layers"]),
        activation=model_cfg["activation"],
    )
    context_block = ContextBlock(int(model_cfg["context_dim"]), token_input_dim, **kwargs)
    token_block = TokenBlock(int(model_cfg["context_dim"]), token_input_dim, embed_dim, **kwargs)
    init_weights(context_block)
    init_weights(token_block)
    return context_block, token_block


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
