"""Loading helpers shared by the training rules (I/O at the edges, models stay file-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from newllm.checkpoint import CheckpointSpec, fingerprint
from newllm.data import read_stream
from newllm.io import write_csv, write_json
from newllm.model import ContextBlock, ModelConfig, TokenBlock, TokenInput, build_blocks
from newllm.runtime import get_logger, load_weights, provenance, resolve_device, resolve_precision, seed_everything
from newllm.study import RunId

CACHE_IN_MEMORY_BYTES = 4 << 30
"""Context caches up to this size (bytes) are read into memory; larger ones are memory-mapped."""


def start_run(smk: Any) -> tuple[dict[str, Any], str, Any, torch.device, TokenInput]:
    """Common start of a per-run rule: params, run name, logger, seeded device, token input.

    Args:
        smk: the ``snakemake`` object of a rule whose ``params.run`` comes from
            ``run_params`` (rules/common.smk) and whose input has ``embeddings``.

    Returns:
        ``(params, name, logger, device, token_input)``.
    """
    params, name, log, device = _start(smk)
    token_input = load_token_input(smk.input.embeddings, params["model"]["num_input_tokens"], device)
    return params, name, log, device, token_input


def _start(smk: Any) -> tuple[dict[str, Any], str, Any, torch.device]:
    """Params, run label (:attr:`newllm.study.RunId.label`), logger and seeded device."""
    params = smk.params.run
    log = get_logger(smk.log[0])
    seed_everything(params["seed"], smk.threads)
    return params, RunId.from_mapping(params["run"]).label, log, resolve_device(params["device"])


def start_lm_run(smk: Any, splits: tuple[str, ...]) -> tuple[dict[str, Any], str, Any, torch.device, torch.Tensor, list]:
    """Common start of a rule that trains a standalone language model on the frozen
    embeddings (the neural baselines, the LSTM that lstm_states reads).

    Args:
        smk: the ``snakemake`` object (``params.run`` as in :func:`start_run`; input
            ``embeddings`` and one token stream per name in ``splits``).
        splits: input names of the token streams to load, e.g. ``("train", "dev")``.

    Returns:
        ``(params, label, logger, device, embeddings [V, d_e] float32, [stream [n] int64 per split])``.
    """
    params, label, log, device = _start(smk)
    embeddings = load_weights(smk.input.embeddings)["embeddings"].float().to(device)
    return params, label, log, device, embeddings, [load_stream(getattr(smk.input, s), device) for s in splits]


def run_precision(params: dict[str, Any], device: torch.device, embed_dim: int) -> str:
    """The run's compute precision, ``fp32`` or ``bf16``: config ``precision`` (``auto``
    when the params carry none) resolved for ``device`` and the ``embed_dim`` (d_e) of
    the tied head by :func:`newllm.runtime.resolve_precision`."""
    return resolve_precision(params.get("precision", "auto"), device, embed_dim)


def build_model(
    params: dict[str, Any], token_input: TokenInput, device: torch.device, context_weights: str | Path | None = None
) -> tuple[ContextBlock, TokenBlock]:
    """The run's ContextBlock and TokenBlock from its resolved config (one factory for
    every script): initialised per docs/method.md §3 from ``torch.manual_seed(params["seed"])``, the
    ContextBlock loaded from ``context_weights`` when given, both on ``device``; the
    TokenBlock's dropout is ``params["phase2"]["dropout"]``."""
    torch.manual_seed(params["seed"])
    config = ModelConfig.from_dict(params["model"], token_input.embed_dim)
    context_block, token_block = build_blocks(config, params["phase2"]["dropout"])
    if context_weights is not None:
        context_block.load_state_dict(load_weights(context_weights))
    return context_block.to(device), token_block.to(device)


def _named(entries: Any) -> dict[str, Any]:
    """A rule's named ``input``/``params`` (Snakemake's Namedlist, or a namespace when a
    script runs without Snakemake) as a dict."""
    return dict(entries.items()) if hasattr(entries, "items") else dict(vars(entries))


def run_checkpoint(smk: Any, output_path: str | Path, every: int) -> CheckpointSpec:
    """The resumable checkpoint of a training job.

    Its fingerprint covers every param of the rule but the checkpoint folder — the run's
    resolved config, other settings it reads (e.g. ``baselines``), the rule's code hash
    (``params.code``: the ``newllm`` modules the job runs, newllm.provenance) — and the size
    and modification time of every input file, so changed settings, changed code or
    rewritten inputs never resume.  (``stat``, not a hash: context caches reach GBs, and
    token streams are already hash-checked when read.)

    Where: with ``params.checkpoints`` (the study's checkpoint folder, an output of the
    ``checkpoint_store`` rule, so ``snakemake --delete-all-output`` removes it) at
    ``{checkpoints}/{run}/{phase}/checkpoint.safetensors``, where ``{run}/{phase}`` is the
    output folder's path below ``results/{study}/runs/`` (below ``results/{study}/`` for an
    output outside ``runs/``, e.g. ``tuning/...`` for a tuning trial, so a trial and the run it
    tunes never share a checkpoint); otherwise, or for an output outside ``results/{study}/``,
    beside ``output_path``.
    """
    inputs = {name: (Path(path).stat().st_size, Path(path).stat().st_mtime_ns) for name, path in _named(smk.input).items()}
    params = _named(smk.params)
    settings = {k: v for k, v in params.items() if k != "checkpoints"}  # run config, code hash, e.g. baselines
    parts = [settings, inputs]
    folder = Path(output_path).parent
    store = params.get("checkpoints")
    if store is not None and folder.is_relative_to(Path(store).parent):
        below = folder.relative_to(Path(store).parent)
        folder = Path(store) / (below.relative_to("runs") if below.parts[0] == "runs" else below)
    return CheckpointSpec(folder / "checkpoint.safetensors", fingerprint(*parts), every)


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
        DataError: the file is missing, truncated or not a ``[n, L, d_c]`` float32 array.
    """
    from newllm.data import DataError

    try:
        mapped = np.load(path, mmap_mode="c")
    except (OSError, ValueError) as err:
        raise DataError(f"context cache {path} is unreadable or truncated ({err}); delete it and rerun export_contexts") from err
    if mapped.ndim != 3 or mapped.dtype != np.float32:
        raise DataError(f"context cache {path} has shape {mapped.shape} and dtype {mapped.dtype}, expected [n, L, d_c] float32")
    if mapped.nbytes <= CACHE_IN_MEMORY_BYTES:
        return torch.from_numpy(np.ascontiguousarray(mapped)).to(device)
    return mapped


def write_run_outputs(
    metrics_path: str | Path,
    history_path: str | Path,
    params: dict[str, Any],
    summary: dict[str, Any],
    history: list[dict[str, Any]],
    device: torch.device,
    **extra: Any,
) -> None:
    """Write a run's metrics JSON (resolved config, summary, provenance) and history CSV."""
    write_csv(history_path, pd.DataFrame(history))
    write_json(
        metrics_path,
        {
            "run": params["run"],
            "config": params,
            **extra,
            "summary": summary,
            "provenance": provenance(device),
            "history": history,
        },
    )
