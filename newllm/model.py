"""New-LLM model (docs/method.md §3): token input, ContextBlock, TokenBlock (E-wiring), tied head.

Notation: ``d_c`` = context_dim, ``d_e`` = embed_dim, ``N_in`` = num_input_tokens,
``L`` = num_layers, ``V`` = vocabulary size (50,257), ``B`` = tokens in a batch.

Modules know nothing about files, Snakemake or logging; the frozen embedding matrix is
passed in as a tensor and never becomes a trained parameter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from newllm.config_fields import ModelFields

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


@dataclass(frozen=True)
class ModelConfig(ModelFields):
    """The shape of both blocks (docs/method.md §3): one config for ContextBlock and TokenBlock.

    ``num_input_tokens``, ``num_layers``, ``ffn_layers`` and ``activation`` are the fields
    of the schema's ``model`` section (:class:`newllm.config_fields.ModelFields`, generated
    from it; keyword-only); ``context_dim`` is the run's wildcard and ``embed_dim`` the
    width of the frozen embeddings, so neither has a default.

    Raises:
        ValueError: a dimension or count below 1, ``ffn_layers`` not 1 or 2, or an
        ``activation`` not in :data:`ACTIVATIONS`, naming the bad value.
    """

    context_dim: int
    embed_dim: int

    def __post_init__(self) -> None:
        _check_positive(
            context_dim=self.context_dim,
            embed_dim=self.embed_dim,
            num_input_tokens=self.num_input_tokens,
            num_layers=self.num_layers,
        )
        if self.ffn_layers not in (1, 2):
            raise ValueError(f"ffn_layers must be 1 or 2, got {self.ffn_layers}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")

    @property
    def token_input_dim(self) -> int:
        """``N_in · d_e``: the width of ``x̃_t``."""
        return self.num_input_tokens * self.embed_dim

    @classmethod
    def from_dict(cls, model_cfg: dict[str, Any], embed_dim: int) -> ModelConfig:
        """From a run's resolved ``model`` section (``context_dim``, ``num_input_tokens``,
        ``num_layers``, ``ffn_layers``, ``activation``; other keys are ignored) and
        ``embed_dim``.  Raises ``KeyError`` for a missing key."""
        keys = ("context_dim", "num_input_tokens", "num_layers", "ffn_layers")
        return cls(embed_dim=int(embed_dim), activation=model_cfg["activation"], **{k: int(model_cfg[k]) for k in keys})


class TokenInput(nn.Module):
    """Frozen token embeddings -> ``x̃_t = [x_{t-N_in+1}; …; x_t]`` (docs/method.md §3).

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
        # instead of every gathered batch of every sweep
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
    """``act(W[z] + b)`` (1 layer) or ``act(W2 act(W1 z + b1) + b2)`` with hidden 4·in (docs/method.md §3)."""

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
    """``c' = LayerNorm(R(c) + FFN([c; x̃]))``, ``R`` identity (docs/method.md §3).

    Shapes: ``c`` ``[B, d_c]``, ``x̃`` ``[B, N_in·d_e]`` -> ``[B, d_c]``.
    """

    def __init__(self, context_dim: int, token_input_dim: int, ffn_layers: int = 1, activation: str = "gelu") -> None:
        super().__init__()
        self.ffn = FFN(context_dim + token_input_dim, context_dim, ffn_layers, activation)
        self.norm = nn.LayerNorm(context_dim)

    def forward(self, context: Tensor, token_input: Tensor) -> Tensor:
        return self.norm(context + self.ffn(torch.cat([context, token_input], dim=-1)))


class _LayerStack(nn.Module):
    """What both blocks share: their :class:`ModelConfig` and ``L`` layers in order."""

    def __init__(self, config: ModelConfig, layers: Iterable[nn.Module]) -> None:
        super().__init__()
        self.config = config
        self.context_dim = config.context_dim
        self.layers = nn.ModuleList(layers)

    @property
    def num_layers(self) -> int:
        return len(self.layers)


class ContextBlock(_LayerStack):
    """The recurrent map ``c_t = F(c_{t-1}, x̃_t)`` of ``L`` ContextLayers (docs/method.md §3).

    Layer 0 reads the previous token's final context; layer ``l > 0`` reads layer
    ``l-1``'s output; every layer reads ``x̃_t``.  All per-layer outputs are returned
    because the TokenBlock is E-wired to them.

    Args:
        config: the blocks' shape; ``d_c`` = ``config.context_dim``, input
            ``config.token_input_dim`` = ``N_in·d_e``, ``config.num_layers`` layers.
    """

    def __init__(self, config: ModelConfig) -> None:
        layer = (config.context_dim, config.token_input_dim, config.ffn_layers, config.activation)
        super().__init__(config, (ContextLayer(*layer) for _ in range(config.num_layers)))

    def forward(self, context: Tensor, token_input: Tensor) -> Tensor:
        """Args: ``context`` ``[B, d_c]``, ``token_input`` ``[B, N_in·d_e]``.

        Returns:
            ``[B, L, d_c]``; ``[:, -1]`` is the new context ``c_t``.
        """
        outputs = []
        for layer in self.layers:
            context = layer(context, token_input)
            outputs.append(context)
        if len(outputs) == 1:  # a view, not a copy: the common one-layer map, Phase 1's hot loop
            return context.unsqueeze(1)
        return torch.stack(outputs, dim=1)


class TokenLayer(nn.Module):
    """``h' = LayerNorm(R(h) + Dropout(FFN([c^(l); h])))``, ``R`` a Linear when sizes differ
    (docs/method.md §3); the dropout acts in training mode only (rate 0: the identity)."""

    def __init__(
        self, context_dim: int, in_dim: int, out_dim: int, ffn_layers: int = 1, activation: str = "gelu", dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.residual = nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim)
        self.ffn = FFN(context_dim + in_dim, out_dim, ffn_layers, activation)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, context: Tensor, hidden: Tensor) -> Tensor:
        return self.norm(self.residual(hidden) + self.dropout(self.ffn(torch.cat([context, hidden], dim=-1))))


class TokenBlock(_LayerStack):
    """``L`` TokenLayers, E-wired: layer ``l`` reads ContextBlock layer ``l``'s output (docs/method.md §3).

    ``h_0 = x̃_t`` (``N_in·d_e``); every layer outputs ``d_e`` so the tied head applies.

    Args:
        config: the blocks' shape (the same :class:`ModelConfig` as the ContextBlock's).
        dropout: each layer's dropout rate on its FFN output (Phase 2's ``dropout``; no
            parameters, so the weights do not depend on it).
    """

    def __init__(self, config: ModelConfig, dropout: float = 0.0) -> None:
        dims = [config.token_input_dim] + [config.embed_dim] * config.num_layers
        layer = (config.ffn_layers, config.activation, dropout)
        super().__init__(config, (TokenLayer(config.context_dim, *dims[i : i + 2], *layer) for i in range(config.num_layers)))

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
    """docs/method.md §3 init: Linear weights ~ N(0, 0.1²), biases ~ N(0, 0.01²); uses torch's global RNG."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, 0.0, 0.1)
            if sub.bias is not None:
                nn.init.normal_(sub.bias, 0.0, 0.01)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (frozen buffers such as embeddings excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def build_blocks(config: ModelConfig, dropout: float = 0.0) -> tuple[ContextBlock, TokenBlock]:
    """The one factory of both blocks, initialised per docs/method.md §3: ContextBlock first, then
    TokenBlock (with Phase 2's ``dropout`` rate), from torch's global RNG (call
    ``torch.manual_seed`` first for a reproducible init).  A run's dict config goes through
    :meth:`ModelConfig.from_dict`."""
    context_block, token_block = ContextBlock(config), TokenBlock(config, dropout)
    init_weights(context_block)
    init_weights(token_block)
    return context_block, token_block


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
