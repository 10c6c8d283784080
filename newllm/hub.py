"""Hugging Face hub downloads, done by local rules on the submit host (no torch import).

Compute nodes of many clusters have no internet.  So the workflow runs every job with
``HF_HUB_OFFLINE=1`` (set in ``rules/common.smk``), and the few things that come from the
hub are fetched beforehand by local rules, like pypsa-eur's ``retrieve_*`` rules:

* ``retrieve_corpus`` (corpus ``source: hub``): :func:`retrieve_corpus_rows` reads the rows
  the study uses into one local parquet file, streaming ``max_samples`` rows with
  ``take`` (reading 20,000 rows does not download 200,000);
* ``retrieve_gpt2`` (embeddings ``source: gpt2`` from a hub id): :func:`retrieve_checkpoint`
  puts the checkpoint into the Hugging Face cache (``HF_HOME``), where the
  ``token_embeddings`` job finds it offline;
* the ``tokenizer`` rule (``tokenizer: hub:<repo>``) is a local rule too.

Whether the local rules may go online is the user's own setting: ``HF_HUB_OFFLINE`` or
``HF_DATASETS_OFFLINE`` set to a true value when Snakemake starts means "use the cache
only" (:func:`record_hub_access`, :func:`restore_hub_access`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, MutableMapping

from newllm.io import atomic_path

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
"""Environment variables that put ``huggingface_hub`` / ``datasets`` into offline mode."""
ACCESS_VARIABLE = "NEWLLM_HUB_ONLINE"
"""Carries the user's choice ("1" online, "0" cache only) past the jobs' forced offline mode."""
CHECKPOINT_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json"]
"""Files of a hub checkpoint that ``AutoModel.from_pretrained`` needs (weights as safetensors)."""
_TRUE = {"1", "ON", "YES", "TRUE"}


class HubError(RuntimeError):
    """A hub download failed or the cache lacks what an offline run needs."""


def record_hub_access(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Remember whether the user allows hub access, then switch every job offline.

    Called once per Snakemake process at DAG-construction time.  The user's choice is
    kept in :data:`ACCESS_VARIABLE` (set only if absent, so jobs that re-read the
    Snakefile keep the first value); :data:`OFFLINE_VARIABLES` become ``"1"``.

    Returns:
        ``True`` when the local retrieve rules may download.
    """
    if ACCESS_VARIABLE not in environ:
        offline = any(environ.get(name, "").strip().upper() in _TRUE for name in OFFLINE_VARIABLES)
        environ[ACCESS_VARIABLE] = "0" if offline else "1"
    for name in OFFLINE_VARIABLES:
        environ[name] = "1"
    return environ[ACCESS_VARIABLE] == "1"


def restore_hub_access(environ: MutableMapping[str, str] = os.environ) -> bool:
    """In a local retrieve job, undo the forced offline mode unless the user asked for it.

    Must run before ``huggingface_hub`` or ``datasets`` is imported (they read the
    variables once, at import).

    Returns:
        ``True`` when the job may download (``False``: cache only).
    """
    online = environ.get(ACCESS_VARIABLE, "1") == "1"
    for name in OFFLINE_VARIABLES:
        environ[name] = "0" if online else "1"
    return online


def retrieve_corpus_rows(corpus: dict[str, Any], dest: str | Path, online: bool) -> dict[str, Any]:
    """Write the rows of a hub corpus that a study reads to one parquet file.

    Online with ``corpus.max_samples`` set, the split is streamed and cut with ``take``, so
    only about that many rows are downloaded.  Otherwise the split goes through the
    ``datasets`` cache (``HF_HOME``; offline, it must already be there) and the first
    ``max_samples`` rows are kept.  Rows keep the source order, as
    :func:`newllm.data.build_corpus_cache` reads them.

    Args:
        corpus: the ``corpus`` config section with ``source: hub``, ``path`` (repo id),
            ``split`` and optional ``max_samples`` and ``revision`` (None: the main branch).
        dest: the parquet file to write (atomically).
        online: whether the hub may be contacted.

    Returns:
        ``{"repo_id", "split", "rows", "streamed", "revision", "resolved_revision"}``:
        the requested revision and the commit it resolved to (None offline, where the
        cache's copy is read), for the log and the study's provenance.

    Raises:
        HubError: the download failed, or offline and the split is not in the cache.
    """
    import datasets

    repo, split, limit = corpus["path"], corpus.get("split", "train"), corpus.get("max_samples")
    revision = corpus.get("revision")
    streamed = bool(online and limit)
    try:
        if streamed:
            stream = datasets.load_dataset(repo, split=split, streaming=True, revision=revision).take(int(limit))
            rows = datasets.Dataset.from_list(list(stream))
        else:
            rows = datasets.load_dataset(repo, split=split, revision=revision)
            if limit:
                rows = rows.select(range(min(len(rows), int(limit))))
    except Exception as err:  # network, authentication, or a cache miss offline
        hint = (
            ""
            if online
            else " (offline: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE was set when Snakemake started, so only the "
            "Hugging Face cache under HF_HOME is read; run once with hub access, or fill that cache)"
        )
        raise HubError(f"could not read {repo!r} split {split!r} from the hub{hint}: {err}") from err
    with atomic_path(dest, ".parquet") as tmp:
        rows.to_parquet(str(tmp))
    resolved = resolved_revision(repo, revision, "dataset") if online else None
    return {
        "repo_id": repo,
        "split": split,
        "rows": len(rows),
        "streamed": streamed,
        "revision": revision,
        "resolved_revision": resolved,
    }


def resolved_revision(repo_id: str, revision: str | None, repo_type: str) -> str | None:
    """The commit sha a hub ``revision`` (None: the main branch) of ``repo_id`` resolves to,
    or None when the hub cannot be asked (the error is not fatal: the data were read)."""
    from huggingface_hub import HfApi

    try:
        return HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type).sha
    except Exception:  # no network or no permission: the provenance says unknown
        return None


def retrieve_checkpoint(repo_id: str, online: bool, revision: str | None = None) -> dict[str, Any]:
    """Put a hub checkpoint's config and safetensors weights into the Hugging Face cache.

    Args:
        repo_id: e.g. ``openai-community/gpt2``.
        online: whether the hub may be contacted (else the cache must hold it).
        revision: a commit sha, tag or branch (None: the main branch).

    Returns:
        ``{"repo_id", "snapshot_dir", "files", "revision", "resolved_revision"}``;
        ``snapshot_dir`` is inside ``HF_HOME`` and named by the commit it resolved to.

    Raises:
        HubError: the download failed or the cache lacks the checkpoint.
    """
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(repo_id, revision=revision, allow_patterns=CHECKPOINT_PATTERNS, local_files_only=not online)
        )
    except Exception as err:
        raise HubError(
            f"could not get checkpoint {repo_id!r} {'from the hub' if online else 'from the Hugging Face cache (offline)'}: {err}"
        ) from err
    files = sorted(p.name for p in folder.iterdir())
    if not any(name.endswith(".safetensors") for name in files):
        raise HubError(f"checkpoint {repo_id!r} has no safetensors weights (files: {files})")
    info = {"repo_id": repo_id, "snapshot_dir": str(folder), "files": files, "revision": revision}
    return info | {"resolved_revision": folder.name}  # the cache names a snapshot by its commit
