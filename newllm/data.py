"""Corpus loading, token caches, the validation split and training sets (docs/method.md §2).

A corpus is a list of *samples* (one conversation each).  Every source goes through one
code path, :func:`load_corpus_dataset`, which returns a ``datasets.Dataset``: a hub
dataset such as ``HuggingFaceH4/ultrachat_200k`` from the parquet file of the rows the
``retrieve_corpus`` rule fetched (newllm.hub), local files through the ``json`` /
``parquet`` / ``csv`` builders, and the embedded ``chitchat-dataset`` as
``Dataset.from_list`` of its single JSON object converted into UltraChat-schema rows
(``prompt_id``, ``messages: [{role, content}]``).  A sample's text is its message contents joined with
``"\\n"`` (no role tags).

Token files are uint16 ``.npy`` (GPT-2 ids < 65,536) so training can memory-map them;
each comes with a JSON manifest that records its SHA-256, checked on every read.

This module does not import torch: it is also used at DAG-construction time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from newllm.io import read_json, sha256_file, write_json, write_npy
from newllm.tokenizer import EOT_ID, VOCAB_SIZE

TOKEN_DTYPE = np.uint16


class DataError(ValueError):
    """A corpus, split or token cache that cannot serve the requested study."""


# --------------------------------------------------------------------------- sources
def chitchat_json_path() -> Path:
    """Path of ``dataset.json`` inside the installed ``chitchat_dataset`` package.

    Raises:
        DataError: the package is not installed.
    """
    import importlib.util

    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or spec.origin is None:
        raise DataError("package 'chitchat-dataset' is not installed (pip install chitchat-dataset)")
    path = Path(spec.origin).parent / "dataset.json"
    if not path.is_file():
        raise DataError(f"chitchat_dataset has no dataset.json at {path}")
    return path


def chitchat_to_rows(json_path: str | Path) -> list[dict[str, Any]]:
    """Convert chitchat's ``{conversation id: {messages: [[utterance, ...], ...]}}`` to rows.

    Each utterance becomes one message ``{"role", "content"}``; the first sender of a
    conversation is ``user``, the other ``assistant`` (UltraChat's schema).  Empty
    utterances are dropped.

    Returns:
        ``[{"prompt_id": str, "messages": [{"role": str, "content": str}, ...]}, ...]``
        in the file's order.
    """
    raw = json.loads(Path(json_path).read_text())
    rows = []
    for conv_id, conv in raw.items():
        first_sender = None
        messages = []
        for turn in conv["messages"]:
            for utterance in turn:
                text = utterance.get("text", "").strip()
                if not text:
                    continue
                first_sender = first_sender or utterance.get("sender")
                role = "user" if utterance.get("sender") == first_sender else "assistant"
                messages.append({"role": role, "content": text})
        rows.append({"prompt_id": str(conv_id), "messages": messages})
    return rows


def load_corpus_dataset(corpus: dict[str, Any], staging_dir: str | Path, hub_rows: str | Path | None = None):
    """Load a corpus as a ``datasets.Dataset``.

    Args:
        corpus: the ``corpus`` config section: ``source`` is ``chitchat_dataset``,
            ``hub`` (``path`` = repo id, ``split``) or ``local`` (``path`` = file or
            list of files, ``data_format`` = json/parquet/csv, ``split``).
        staging_dir: scratch folder for the ``datasets`` cache of local files.
        hub_rows: for ``source: hub``, the parquet file the ``retrieve_corpus`` rule wrote
            (newllm.hub), read offline; without it the split is loaded from the hub or
            the Hugging Face cache.

    Returns:
        The rows in source order.  chitchat becomes ``Dataset.from_list`` of
        :func:`chitchat_to_rows` (no staging file).

    Raises:
        DataError: unknown source, or a local path that does not exist.
    """
    import datasets

    staging_dir = Path(staging_dir)
    staging_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = str(staging_dir / "hf_datasets_cache")
    source = corpus["source"]
    if source == "chitchat_dataset":
        return datasets.Dataset.from_list(chitchat_to_rows(chitchat_json_path()))
    if source == "local":
        files = corpus["path"] if isinstance(corpus["path"], list) else [corpus["path"]]
        for f in files:
            if not Path(f).exists():
                raise DataError(f"corpus.path {f!r} does not exist (corpus.source: local)")
        return datasets.load_dataset(
            corpus.get("data_format", "json"),
            data_files=files,
            split=corpus.get("split", "train"),
            cache_dir=cache_dir,
        )
    if source == "hub":
        if hub_rows is not None:
            return datasets.load_dataset("parquet", data_files=str(hub_rows), split="train", cache_dir=cache_dir)
        return datasets.load_dataset(corpus["path"], split=corpus["split"])
    raise DataError(f"corpus.source {source!r} is not one of chitchat_dataset, hub, local")


def sample_text(row: dict[str, Any], messages_field: str = "messages", text_field: str | None = None) -> str:
    """A sample's text: ``row[text_field]``, or its message contents joined with ``"\\n"``."""
    if text_field:
        return str(row[text_field])
    return "\n".join(str(m["content"]) for m in row[messages_field])


def count_source_samples(corpus: dict[str, Any]) -> int | None:
    """Cheap count of samples in a local source (for DAG-time checks), before
    deduplication and ``max_samples``: JSON-lines lines, parquet rows from the file
    metadata; ``None`` when unknown (hub, csv).

    Raises:
        DataError: a local path does not exist.
    """
    if corpus["source"] == "chitchat_dataset":
        return len(json.loads(chitchat_json_path().read_text()))
    if corpus["source"] == "local":
        files = corpus["path"] if isinstance(corpus["path"], list) else [corpus["path"]]
        data_format = corpus.get("data_format", "json")
        total = 0
        for f in files:
            if not Path(f).exists():
                raise DataError(f"corpus.path {f!r} does not exist (corpus.source: local)")
            if data_format == "parquet":
                import pyarrow.parquet as pq

                total += pq.ParquetFile(f).metadata.num_rows
            elif data_format == "json":
                with open(f) as handle:
                    total += sum(1 for line in handle if line.strip())
            else:
                return None
        return total
    return None


# --------------------------------------------------------------------------- token cache
class CorpusTally:
    """What :func:`build_corpus_cache` has kept and dropped so far: sample ids and token
    arrays in source order, the texts seen (exact deduplication) and the counts."""

    def __init__(self, id_field: str, messages_field: str, text_field: str | None) -> None:
        self.id_field, self.messages_field, self.text_field = id_field, messages_field, text_field
        self.ids: list[str] = []
        self.pieces: list[np.ndarray] = []
        self.seen: set[str] = set()
        self.dropped_empty = self.dropped_duplicates = self.rows_read = 0

    def new_texts(self, rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
        """``(texts, ids)`` of the rows to keep: not empty, not a copy of an earlier text."""
        texts, batch_ids = [], []
        for i, row in enumerate(rows):
            text = sample_text(row, self.messages_field, self.text_field)
            if not text.strip():
                self.dropped_empty += 1
                continue
            if text in self.seen:
                self.dropped_duplicates += 1
                continue
            self.seen.add(text)
            texts.append(text)
            batch_ids.append(str(row[self.id_field]) if self.id_field in row else str(self.rows_read + i))
        return texts, batch_ids

    def add_batch(self, batch: dict[str, list], tokenizer) -> int:
        """Tokenize a column batch's kept rows; returns the rows read."""
        columns = list(batch)
        rows = [dict(zip(columns, values)) for values in zip(*(batch[c] for c in columns))]
        texts, batch_ids = self.new_texts(rows)
        if texts:
            for token_ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
                self.pieces.append(np.asarray(token_ids, dtype=TOKEN_DTYPE))
            self.ids.extend(batch_ids)
        self.rows_read += len(rows)
        return len(rows)


def write_corpus_cache(out_dir: Path, tally: CorpusTally, extra_manifest: dict[str, Any] | None) -> dict[str, Any]:
    """Write ``tokens.npy`` (all samples concatenated), ``offsets.npy`` (``[num_samples + 1]``
    sample starts) and ``manifest.json``; returns the manifest."""
    counts = np.array([len(p) for p in tally.pieces], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    tokens = np.concatenate(tally.pieces) if tally.pieces else np.zeros(0, dtype=TOKEN_DTYPE)
    write_npy(out_dir / "tokens.npy", tokens)
    write_npy(out_dir / "offsets.npy", offsets)
    manifest = {
        "num_samples": len(tally.ids),
        "num_tokens": int(tokens.size),
        "rows_read": tally.rows_read,
        "dropped_empty": tally.dropped_empty,
        "dropped_duplicates": tally.dropped_duplicates,
        "sample_ids": tally.ids,
        "token_counts": counts.tolist(),
        "files": {
            "tokens.npy": sha256_file(out_dir / "tokens.npy"),
            "offsets.npy": sha256_file(out_dir / "offsets.npy"),
        },
        **(extra_manifest or {}),
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def build_corpus_cache(
    dataset,
    tokenizer,
    out_dir: str | Path,
    *,
    id_field: str = "prompt_id",
    messages_field: str = "messages",
    text_field: str | None = None,
    max_samples: int | None = None,
    batch_size: int = 1000,
    progress: Any = None,
    extra_manifest: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Tokenize every sample once and write ``tokens.npy``, ``offsets.npy``, ``manifest.json``.

    Samples with empty text and exact duplicates of an earlier sample's text are dropped
    (counted in the manifest), so validation can never hold a copy of a training sample.

    Args:
        dataset: a ``datasets.Dataset`` or ``IterableDataset`` (a streamed one is read
            once, never downloaded whole) of rows with ``id_field`` and
            ``messages_field`` (or ``text_field``); read with ``iter(batch_size=...)``.
        tokenizer: a GPT-2 ``PreTrainedTokenizerFast``; no truncation.
        out_dir: destination folder.
        max_samples: read at most this many rows of the source (in source order, ``take``).
        batch_size: rows tokenized per call.
        progress: optional ``tqdm`` instance advanced per batch.
        extra_manifest: more entries for the manifest (e.g. corpus config, tokenizer hashes).

    Returns:
        The manifest: ``num_samples``, ``num_tokens``, ``sample_ids``, ``token_counts``,
        ``dropped_empty``, ``dropped_duplicates``, file SHA-256s.
    """
    out_dir = Path(out_dir)
    if max_samples is not None:
        limit = int(max_samples) if not hasattr(dataset, "__len__") else min(int(max_samples), len(dataset))
        dataset = dataset.take(limit)  # the first rows in source order
    tally = CorpusTally(id_field, messages_field, text_field)
    for batch in dataset.iter(batch_size=batch_size):
        rows = tally.add_batch(batch, tokenizer)
        if progress is not None:
            progress.update(rows)
    return write_corpus_cache(out_dir, tally, extra_manifest)


def load_corpus_cache(
    cache_dir: str | Path, corpus: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read ``tokens.npy`` (memory-mapped), ``offsets.npy`` and the manifest, verifying hashes.

    Args:
        cache_dir: the folder ``cache_corpus`` wrote.
        corpus: the ``corpus`` config the caller expects; when given, the cache must have
            been built from exactly these settings (the manifest records them).  Snakemake
            reruns ``cache_corpus`` when they change; this guards against a cache that was
            not rebuilt (metadata wiped, ``--rerun-triggers mtime``, a copied folder).

    Raises:
        DataError: a file is missing or its SHA-256 differs from the manifest, or the cache
            was built from other corpus settings (naming each differing key).
    """
    cache_dir = Path(cache_dir)
    manifest = read_json(cache_dir / "manifest.json")
    verify_files(cache_dir, manifest["files"])
    if corpus is not None and manifest.get("corpus") != corpus:
        built = manifest.get("corpus") or {}
        keys = sorted(k for k in set(built) | set(corpus) if built.get(k) != corpus.get(k))
        differ = [f"{k}: {built.get(k)!r} in the cache, {corpus.get(k)!r} in the config" for k in keys]
        raise DataError(
            f"the token cache in {cache_dir} was built from other corpus settings ({'; '.join(differ)}); "
            f"rerun cache_corpus (snakemake --forcerun cache_corpus)"
        )
    tokens = np.load(cache_dir / "tokens.npy", mmap_mode="r")
    offsets = np.load(cache_dir / "offsets.npy")
    return tokens, offsets, manifest


def verify_files(folder: str | Path, expected: dict[str, str]) -> None:
    """Check each ``name -> sha256`` in ``expected`` against the file in ``folder``.

    Raises:
        DataError: naming the file that is missing or whose hash differs.
    """
    for name, digest in expected.items():
        path = Path(folder) / name
        if not path.is_file():
            raise DataError(f"token cache file {path} is missing")
        actual = sha256_file(path)
        if actual != digest:
            raise DataError(
                f"token cache file {path} has SHA-256 {actual[:16]}…, its manifest records "
                f"{digest[:16]}…: the file was corrupted or edited; delete it and rerun"
            )


# --------------------------------------------------------------------------- splits
HELDOUT_SPLITS = ("dev", "test", "embedding")
"""Held-out splits, in permutation order, before the training pool."""


def split_samples(num_samples: int, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Seeded split of sample indices into held-out sets and an ordered training pool.

    One permutation of ``range(num_samples)`` (seeded by ``validation.seed``, not the
    training seed): its first ``sizes["dev"]`` entries are the dev set (every selection:
    early stopping, best epoch, stop rules), the next ``sizes["test"]`` the test set
    (every reported number), the next ``sizes["embedding"]`` (may be 0) the slice the
    stand-in embeddings are trained on, and the rest the training pool, from which each
    training seed draws its nested training sets (:func:`training_order`).  All are
    pairwise disjoint by construction (docs/method.md §2).

    Args:
        sizes: ``{"dev": int >= 1, "test": int >= 1, "embedding": int >= 0}``.

    Returns:
        ``{"dev", "test", "embedding", "pool"}`` -> int64 index arrays.

    Raises:
        DataError: a size out of range, or too few samples to leave a training pool.
    """
    for name in HELDOUT_SPLITS:
        minimum = 0 if name == "embedding" else 1
        if int(sizes.get(name, 0)) < minimum:
            raise DataError(f"{name} split size {sizes.get(name)} must be >= {minimum}")
    held = sum(int(sizes.get(name, 0)) for name in HELDOUT_SPLITS)
    if num_samples <= held:
        raise DataError(
            f"corpus has {num_samples} samples; dev {sizes['dev']} + test {sizes['test']} + embedding "
            f"{sizes.get('embedding', 0)} = {held} leave none for training"
        )
    order = np.random.default_rng(seed).permutation(num_samples).astype(np.int64)
    out, start = {}, 0
    for name in HELDOUT_SPLITS:
        out[name] = order[start : start + int(sizes.get(name, 0))]
        start += int(sizes.get(name, 0))
    out["pool"] = order[start:]
    return out


def sample_ends(tokens_per_sample: Sequence[int]) -> list[int]:
    """Exclusive end of each sample's own tokens in a stream built by :func:`token_stream`.

    Sample k's tokens span ``[end[k-1] + 1, end[k])`` (``end[-1] = -1``); position
    ``end[k]`` holds the ``<|endoftext|>`` separator after it (none after the last), so
    ``stream[:end[k]]`` is exactly the first k+1 samples (the nested training sets).
    """
    counts = np.asarray(tokens_per_sample, dtype=np.int64)
    return (np.cumsum(counts) + np.arange(counts.size)).tolist()


def target_conversations(sample_end: Sequence[int], num_tokens: int) -> np.ndarray:
    """Conversation index of every next-token target of a stream: ``[num_tokens - 1]`` int64.

    Target ``t`` (predicting ``stream[t + 1]``) belongs to the sample holding position
    ``t + 1``; the separator after sample k (position ``end[k]``) counts as sample k's
    (predicting the end of a conversation is part of modelling it).  Used to aggregate
    per-token NLL per conversation for the test-set bootstrap.
    """
    return np.searchsorted(np.asarray(sample_end), np.arange(1, num_tokens), side="left")


def training_order(num_samples: int, seed: int) -> np.ndarray:
    """The training seed's order of the training pool: a permutation of ``range(num_samples)``
    drawn from ``numpy.random.default_rng(seed)``.  A seed's training set of N samples is
    the first N in this order, so sizes are nested within a seed, and different seeds
    train on different conversations; dev and test never depend on it (docs/method.md §2.3).

    Raises:
        DataError: ``num_samples`` < 0 or ``seed`` < 0.
    """
    if num_samples < 0 or seed < 0:
        raise DataError(f"training_order needs num_samples >= 0 and seed >= 0, got {num_samples} and {seed}")
    return np.random.default_rng(seed).permutation(num_samples)


def stream_subset(stream: np.ndarray, sample_end: Sequence[int], indices: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    """The samples ``indices`` of a stream built by :func:`token_stream` (their tokens
    located by its ``sample_end``, see :func:`sample_ends`), concatenated in that order with
    ``<|endoftext|>`` between them.

    Returns:
        ``(stream [n] uint16, sample_end of the new stream)``.

    Raises:
        DataError: an index outside ``range(len(sample_end))``.
    """
    ends = np.asarray(sample_end, dtype=np.int64)
    idx = np.asarray(indices, dtype=np.int64)
    bad = idx[(idx < 0) | (idx >= ends.size)]
    if bad.size:
        raise DataError(f"sample index {int(bad[0])} outside the stream's {ends.size} samples; allowed: 0..{ends.size - 1}")
    starts = np.concatenate([[0], ends[:-1] + 1])
    offsets = np.zeros(idx.size + 1, dtype=np.int64)
    parts = [np.asarray(stream[starts[i] : ends[i]]) for i in idx]
    offsets[1:] = np.cumsum([part.size for part in parts])
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=TOKEN_DTYPE)
    return token_stream(flat, offsets, range(idx.size)), sample_ends(np.diff(offsets))


def token_stream(tokens: np.ndarray, offsets: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    """Concatenate the given samples into one stream, separated by ``<|endoftext|>``.

    Returns:
        uint16 array of ``sum(len(sample)) + len(indices) - 1`` token ids.
    """
    parts: list[np.ndarray] = []
    for k, i in enumerate(indices):
        if k:
            parts.append(np.array([EOT_ID], dtype=TOKEN_DTYPE))
        parts.append(np.asarray(tokens[offsets[i] : offsets[i + 1]], dtype=TOKEN_DTYPE))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=TOKEN_DTYPE)


def write_stream(path: str | Path, stream: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    """Write a token stream ``.npy`` and its ``.json`` manifest (with the stream's SHA-256)."""
    path = Path(path)
    write_npy(path, stream.astype(TOKEN_DTYPE))
    meta = {**meta, "num_tokens": int(stream.size), "sha256": sha256_file(path)}
    write_json(path.with_suffix(".json"), meta)
    return meta


def read_stream(path: str | Path) -> np.ndarray:
    """Memory-map a token stream written by :func:`write_stream`, verifying its SHA-256.

    Raises:
        DataError: missing manifest, hash mismatch, or ids outside the GPT-2 vocabulary.
    """
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise DataError(f"token stream {path} has no manifest {meta_path}")
    verify_files(path.parent, {path.name: read_json(meta_path)["sha256"]})
    stream = np.load(path, mmap_mode="r")
    if stream.size and int(stream.max()) >= VOCAB_SIZE:
        raise DataError(f"token stream {path} holds id {int(stream.max())} >= vocab {VOCAB_SIZE}")
    return stream


def check_disjoint(
    train_ids: Sequence[str], heldout_ids: Sequence[str], what: str = "training set", heldout: str = "the held-out sets"
) -> None:
    """Refuse a set that shares samples with a held-out set.

    Raises:
        DataError: naming how many and which (up to 5) sample ids overlap.
    """
    overlap = sorted(set(train_ids) & set(heldout_ids))
    if overlap:
        raise DataError(
            f"{what} shares {len(overlap)} samples with {heldout} (e.g. {overlap[:5]}); "
            "held-out samples must be in no training set"
        )


def validation_coverage(train_stream: np.ndarray, validation_stream: np.ndarray) -> dict[str, Any]:
    """How much of the validation stream uses token ids never seen in the training stream.

    Returns:
        ``unseen_tokens`` (validation positions whose id is absent from training),
        ``unseen_fraction``, ``unseen_types`` (distinct such ids), ``validation_tokens``.
    """
    seen = np.zeros(VOCAB_SIZE, dtype=bool)
    seen[np.asarray(train_stream, dtype=np.int64)] = True
    val = np.asarray(validation_stream, dtype=np.int64)
    unseen_mask = ~seen[val]
    return {
        "validation_tokens": int(val.size),
        "unseen_tokens": int(unseen_mask.sum()),
        "unseen_fraction": float(unseen_mask.mean()) if val.size else 0.0,
        "unseen_types": int(np.unique(val[unseen_mask]).size),
    }
