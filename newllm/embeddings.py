"""Frozen token embeddings (docs/method.md §2): ``[V, d_e]`` float32 from one of four sources.

Downstream every model reads ``x_t = LN(E[token_t])`` (no affine) as its frozen input and
uses ``logits = h @ Eᵀ`` (no bias) as its frozen, tied output head (``newllm.model``), so
``E`` must be a good *output* embedding as well as an input one.

- ``bigram`` (the offline default): the tied input/output embedding of a small
  log-bilinear language model (Mnih & Hinton 2007) with tied embeddings (Press & Wolf
  2017), trained on the embedding slice only (a pool of conversations disjoint from every
  training set and from dev/test)::

      p(w_{t+1} = v | w_t) = softmax_v( E_v · h(w_t) ),
      h(w) = LN_{γ,β}( W · LN(E_w) + b )

  ``f = LN_{γ,β}(W · + b)`` is a Linear ``d_e -> d_e`` followed by a LayerNorm *with*
  gain ``γ`` and bias ``β``: exactly the last operation of every downstream TokenLayer,
  so ``E`` is trained for the head it will serve.  Full softmax cross-entropy, AdamW
  (decoupled weight decay on ``E`` and ``W``: the model overfits a 0.5M-token slice
  within about one epoch without it), early stopping on a held-out part of the slice,
  deterministic per seed (see :func:`train_bigram_model`).
- ``word2vec``: gensim's Word2Vec (skip-gram) trained on the same slice.  Ids never seen
  get seeded Gaussian rows of the same per-element scale.
- ``gpt2``: GPT-2's pretrained ``wte`` (the source's choice) from a checkpoint (hub id or
  local directory) through ``transformers``; ``d_e`` is the checkpoint's ``n_embd``.
- ``random``: seeded Gaussian rows.

**Row scale.**  The input ``LN(E_w)`` ignores the scale of a row, but the head's logits
are proportional to it: the scale is the head's temperature.  ``word2vec`` and ``random``
matrices have no meaningful scale and are rescaled so their mean row L2 norm is
``row_norm``.  ``bigram`` rows are never rescaled: their norms are learned (frequent,
predictable tokens get longer rows).  The one degree of freedom that is not identified
— a global factor traded between ``E`` and the head's LayerNorm gain ``γ`` — is folded
into ``E`` (``E ← E · rms(γ)``), which leaves the model's input and output unchanged and
makes a downstream head whose LayerNorm gain starts at 1 start at the trained
temperature.  ``row_norm`` does not apply to ``bigram``.

The ``bigram`` model, its training and the head fit that scores every source live in
:mod:`newllm.bigram`.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from newllm.tokenizer import EOT_ID, VOCAB_SIZE

SOURCES = ("bigram", "word2vec", "gpt2", "random")
"""Embedding sources offered by the ``embeddings.source`` config key."""


def check_embedding_config(source: str, embed_dim: Any) -> None:
    """Validate ``source`` and ``embed_dim`` before any work is done.

    Raises:
        ValueError: ``source`` is not one of :data:`SOURCES`, or ``embed_dim`` is not a
            positive integer (``gpt2`` ignores ``embed_dim``).
    """
    if source not in SOURCES:
        raise ValueError(f"embeddings.source {source!r} is not one of {', '.join(SOURCES)}")
    if source != "gpt2" and (isinstance(embed_dim, bool) or not isinstance(embed_dim, (int, np.integer)) or embed_dim < 1):
        raise ValueError(f"embeddings.embed_dim must be a positive integer for source {source!r}, got {embed_dim!r}")


# --------------------------------------------------------------------------- gpt2, word2vec, random
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
        stream: ``[n]`` token ids of the embedding slice (never dev/test/training).
        embed_dim: ``d_e``.

    Returns:
        ``([V, d_e] float32, info)`` with ``covered_types`` (ids with a trained vector).

    Raises:
        ValueError: bad ``embed_dim``.
    """
    from gensim.models import Word2Vec

    check_embedding_config("word2vec", embed_dim)
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
    """Seeded N(0, 1) ``[V, d_e]`` float32 (rescale with :func:`rescale_rows`).

    Raises:
        ValueError: bad ``embed_dim``.
    """
    check_embedding_config("random", embed_dim)
    return np.random.default_rng(seed).normal(size=(VOCAB_SIZE, embed_dim)).astype(np.float32)


def rescale_rows(matrix: np.ndarray, row_norm: float) -> np.ndarray:
    """Scale the whole matrix so its mean row L2 norm is ``row_norm`` (directions kept)."""
    mean_norm = float(np.linalg.norm(matrix, axis=1).mean())
    return (matrix * (row_norm / mean_norm)).astype(np.float32)
