"""Loading helpers shared by the training rules (I/O at the edges, models stay file-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from newllm.data import read_stream
from newllm.io import write_csv, write_json
from newllm.model import TokenInput
from newllm.runtime import load_weights, provenance

CACHE_IN_MEMORY_BYTES = 4 << 30
"""Context caches up to this size (bytes) are read into memory; larger ones are memory-mapped."""


def load_token_input(embeddings_path: str | Path, num_input_tokens: int, device: torch.device) -> TokenInput:
    """The frozen ``[V, d_e]`` embeddings from a ``safetensors`` file as a :class:`TokenInput`."""
    return TokenInput(load_weights(embeddings_path)["embeddings"], num_input_tokens).to(device)


def load_stream(path: str | Path, device: torch.device) -> torch.Tensor:
    """A verified token stream as ``[n]`` int64 on ``device``."""
    return torch.from_numpy(np.asarray(read_stream(path), dtype=np.int64)).to(device)


def load_context_cache(path: str | Path, device: torch.device) -> np.ndarray | torch.Tensor:
    """A ``[n, L, d_c]`` float32 context cache: a tensor on ``device`` when it fits
    :data:`CACHE_IN_MEMORY_BYTES`, else a copy-on-write memory map gathered per batch.

    Raises:
        ValueError: the file is truncated (numpy cannot map the shape its header states).
    """
    mapped = np.load(path, mmap_mode="c")
    if mapped.nbytes <= CACHE_IN_MEMORY_BYTES:
        return torch.from_numpy(np.ascontiguousarray(mapped)).to(device)
    return mapped


def write_run_outputs(metrics_path: str | Path, history_path: str | Path, params: dict[str, Any], summary: dict[str, Any],
                      history: list[dict[str, Any]], device: torch.device, **extra: Any) -> None:
    """Write a run's metrics JSON (resolved config, summary, provenance) and history CSV."""
    write_csv(history_path, pd.DataFrame(history))
    write_json(metrics_path, {"run": params["run"], "config": params, **extra, "summary": summary,
                              "provenance": provenance(device), "history": history})
