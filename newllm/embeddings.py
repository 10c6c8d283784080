"""Frozen token embeddings (SPEC §2): ``gpt2``, ``word2vec`` or ``random``, ``[V, d_e]`` float32.

- ``gpt2``: GPT-2's pretrained ``wte`` from a checkpoint (hub id or local directory)
  through ``transformers``; ``d_e`` is the checkpoint's ``n_embd`` (768 for GPT-2).
- ``word2vec``: the offline stand-in, gensim's Word2Vec (skip-gram) trained on the GPT-2
  token ids of the training pool, never on validation.  Ids never seen in the pool get
  seeded Gaussian rows of the same per-element scale.
- ``random``: seeded Gaussian rows.

``word2vec`` and ``random`` matrices are rescaled so their mean row L2 norm is
``row_norm`` (GPT-2's ``wte`` has row norms of a few units); ``gpt2`` is kept as is.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from newllm.tokenizer import EOT_ID, VOCAB_SIZE


def gpt2_embeddings(checkpoint: str) -> np.ndarray:
    """The input embedding matrix (``wte``) of a GPT-2 checkpoint, ``[V, n_embd]``.

    Args:
        checkpoint: hub repo id (e.g. ``openai-community/gpt2``) or a local directory
            written by ``save_pretrained``.

    Raises:
        ValueError: the checkpoint's vocabulary is not GPT-2's 50,257 tokens.
    """
    from transformers import AutoModel

    model = AutoModel.from_pretrained(checkpoint)
    weight = model.get_input_embeddings().weight.detach().float().cpu().numpy()
    if weight.shape[0] != VOCAB_SIZE:
        raise ValueError(f"checkpoint {checkpoint!r} has vocabulary {weight.shape[0]}, expected {VOCAB_SIZE}")
    return np.ascontiguousarray(weight)


def _stable_hash(text: str) -> int:
    # gensim seeds each word's initial vector from hashfxn(word + seed); Python's hash()
    # is salted per process, so a fixed hash makes Word2Vec reproducible.
    return zlib.crc32(text.encode())


def word2vec_embeddings(
    stream: np.ndarray,
    embed_dim: int,
    seed: int,
    *,
    epochs: int = 5,
    window: int = 5,
    min_count: int = 1,
    negative: int = 5,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Train Word2Vec (skip-gram, negative sampling) on a token stream's GPT-2 ids.

    The stream is split into sentences at ``<|endoftext|>`` (which ends each sentence,
    so the separator gets a vector too).  One worker thread, for reproducibility.

    Args:
        stream: ``[n]`` token ids of the training pool (never validation).
        embed_dim: ``d_e``.

    Returns:
        ``([V, d_e] float32, info)`` with ``covered_types`` (ids with a trained vector).
    """
    from gensim.models import Word2Vec

    ids = np.asarray(stream, dtype=np.int64)
    cuts = np.flatnonzero(ids == EOT_ID)
    sentences = [[str(t) for t in part] for part in np.split(ids, cuts + 1) if part.size]
    model = Word2Vec(
        sentences=sentences,
        vector_size=embed_dim,
        window=window,
        min_count=min_count,
        sg=1,
        negative=negative,
        epochs=epochs,
        seed=seed,
        workers=1,
        hashfxn=_stable_hash,
    )
    trained = model.wv.vectors.astype(np.float32)
    scale = float(trained.std()) or 1.0
    matrix = np.random.default_rng(seed).normal(0.0, scale, size=(VOCAB_SIZE, embed_dim)).astype(np.float32)
    keys = np.array([int(k) for k in model.wv.index_to_key], dtype=np.int64)
    matrix[keys] = trained
    return matrix, {"covered_types": int(keys.size), "sentences": len(sentences), "epochs": epochs, "window": window}


def random_embeddings(embed_dim: int, seed: int) -> np.ndarray:
    """Seeded N(0, 1) ``[V, d_e]`` float32 (rescale with :func:`rescale_rows`)."""
    return np.random.default_rng(seed).normal(size=(VOCAB_SIZE, embed_dim)).astype(np.float32)


def rescale_rows(matrix: np.ndarray, row_norm: float) -> np.ndarray:
    """Scale the whole matrix so its mean row L2 norm is ``row_norm`` (directions kept)."""
    mean_norm = float(np.linalg.norm(matrix, axis=1).mean())
    return (matrix * (row_norm / mean_norm)).astype(np.float32)
