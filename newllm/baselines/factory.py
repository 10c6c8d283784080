"""One factory for the neural baselines: a catalogue model name -> a parameter-matched
module (docs/method.md §10).  Separate from the model modules so each of them can use the
shared sizing helpers of :mod:`newllm.baselines.models` without an import cycle."""

from __future__ import annotations

from torch import Tensor, nn

from newllm.baselines.mingru import MinGRULM, match_mingru
from newllm.baselines.models import (
    LSTMLM,
    SEQ_LEN_KEY,
    SizeMatch,
    TransformerConfig,
    TransformerLM,
    match_lstm,
    match_transformer,
)

STATEFUL = frozenset({"lstm", "mingru"})
"""Recurrent baselines: truncated BPTT with the state carried across windows."""

SIZE_NAME = {"lstm": "hidden_size", "mingru": "hidden_size", "transformer": "width"}
"""What the matched size of each baseline is (a summary key)."""


def build_baseline(name: str, embeddings: Tensor, settings: dict, target: int, tolerance: float) -> tuple[nn.Module, SizeMatch]:
    """The neural baseline ``name`` (``lstm``, ``mingru`` or ``transformer``, config
    ``baselines.<name>``) sized to ``target`` trainable parameters, initialised with torch's
    global RNG (seed it first).

    Returns:
        ``(model, SizeMatch)``.

    Raises:
        ValueError: an unknown ``name``, or no size within ``tolerance`` of ``target``.
    """
    if name not in SEQ_LEN_KEY:
        raise ValueError(f"neural baselines are {sorted(SEQ_LEN_KEY)}, got model {name!r}")
    d_e = embeddings.shape[1]
    if name == "lstm":
        size = match_lstm(target, d_e, tolerance)
        return LSTMLM(embeddings, size.size, settings["dropout"]), size
    if name == "mingru":
        size = match_mingru(target, d_e, tolerance, num_layers=settings["num_layers"])
        return MinGRULM(embeddings, size.size, settings["dropout"], num_layers=settings["num_layers"]), size
    size = match_transformer(target, d_e, settings["num_layers"], 1, settings["block_size"], tolerance)
    keys = ("num_layers", "block_size", "dropout", "eval_stride")
    heads = attention_heads(size.size, settings["num_heads"])
    model = TransformerLM(embeddings, TransformerConfig(size.size, num_heads=heads, **{k: settings[k] for k in keys}))
    return model, size


MIN_HEAD_WIDTH = 16
"""Narrowest attention head the Transformer baseline uses (features per head)."""


def attention_heads(width: int, most: int, min_width: int = MIN_HEAD_WIDTH) -> int:
    """The most heads, up to ``most``, that split ``width`` evenly into heads at least
    ``min_width`` wide; 1 when none does (the parameter count does not depend on it)."""
    return max((h for h in range(1, most + 1) if width % h == 0 and width // h >= min_width), default=1)
