"""Training checkpoints: one ``safetensors`` file, written atomically, never unpickled.

A checkpoint holds tensors (model, optimizer state, RNG state, carried contexts, best
weights) and a JSON ``state`` (iteration/epoch, history, counters) in the file's
metadata, plus a ``fingerprint`` of the run's config and inputs: a checkpoint made for
other settings or data is ignored, never resumed.  Resuming restores every piece of
state that the next step reads, so a killed and resumed run ends with exactly the same
numbers as an uninterrupted one (tested).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch

from newllm.io import atomic_path


def fingerprint(*parts: Any) -> str:
    """SHA-256 of the JSON of ``parts`` (config dicts, input hashes)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def optimizer_to_tensors(
    optimizer: torch.optim.Optimizer, prefix: str = "optimizer"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into named tensors and a JSON-able remainder."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, dict[str, Any]] = {}
    for idx, entries in sd["state"].items():
        state[str(idx)] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{idx}.{key}"] = value
                state[str(idx)][key] = "__tensor__"
            else:
                state[str(idx)][key] = value
    return tensors, {"param_groups": sd["param_groups"], "state": state}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str = "optimizer"
) -> None:
    """Inverse of :func:`optimizer_to_tensors`: load the state into ``optimizer``."""
    state = {
        int(idx): {k: tensors[f"{prefix}.{idx}.{k}"] if v == "__tensor__" else v for k, v in entries.items()}
        for idx, entries in meta["state"].items()
    }
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], state: dict[str, Any], fingerprint_: str) -> None:
    """Write tensors + JSON state atomically to ``path`` (``.safetensors``)."""
    from safetensors.torch import save_file

    with atomic_path(path, ".safetensors") as tmp:
        save_file(
            {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()},
            str(tmp),
            metadata={"state": json.dumps(state), "fingerprint": fingerprint_},
        )


def load_checkpoint(
    path: str | Path, fingerprint_: str, device: torch.device | str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The checkpoint at ``path`` if it exists and matches ``fingerprint_``, else ``None``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            meta = handle.metadata() or {}
            if meta.get("fingerprint") != fingerprint_:
                return None
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception:  # a damaged checkpoint is never resumed; the run starts over
        return None
    return tensors, json.loads(meta["state"])


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{prefix.key: tensor}``."""
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries under ``prefix.``, with the prefix removed."""
    p = prefix + "."
    return {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}


class CheckpointSpec:
    """Where and how often a trainer checkpoints: ``path`` (``.safetensors``), the run's
    ``fingerprint``, ``every`` iterations/evaluations, and ``on_save`` (called with the
    number of records after each save — the kill/resume tests inject their fault here)."""

    def __init__(
        self, path: str | Path, fingerprint_: str, every: int = 1, on_save: "Callable[[int], None] | None" = None
    ) -> None:
        if every < 1:
            raise ValueError(f"checkpoint interval must be >= 1, got {every}")
        self.path, self.fingerprint, self.every, self.on_save = Path(path), fingerprint_, every, on_save


class TrainState:
    """Everything a trainer needs to resume: model, optimizer, stop rule, history, extras.

    One checkpoint layout for every trainer (Phase 1, Phase 2, the baselines): tensors
    ``model.*``, ``optimizer.*``, ``best.*`` (the stop rule's best state, if any) and the
    trainer's extra tensors (RNG states, carried contexts); JSON state ``counters`` (the
    trainer's own), ``history``, ``stopper`` and the optimizer's non-tensor state.

    Args:
        model: the module being trained.
        optimizer: its optimizer.
        stopper: a stop rule with ``state_dict``/``load_state_dict`` and ``best_state``.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, stopper: Any) -> None:
        self.model, self.optimizer, self.stopper = model, optimizer, stopper
        self.history: list[dict[str, Any]] = []
        self.extra_tensors: dict[str, torch.Tensor] = {}

    def save(self, spec: "CheckpointSpec", counters: dict[str, Any], extra_tensors: dict[str, torch.Tensor]) -> None:
        """Write the checkpoint atomically, then call ``spec.on_save(len(history))``."""
        opt_tensors, opt_meta = optimizer_to_tensors(self.optimizer)
        tensors = {**prefixed("model", self.model.state_dict()), **opt_tensors, **extra_tensors}
        if self.stopper.best_state is not None:
            tensors.update(prefixed("best", self.stopper.best_state))
        state = {
            "counters": counters,
            "history": self.history,
            "stopper": self.stopper.state_dict(),
            "optimizer": opt_meta,
            "extra": sorted(extra_tensors),
        }
        save_checkpoint(spec.path, tensors, state, spec.fingerprint)
        if spec.on_save is not None:
            spec.on_save(len(self.history))

    def load(self, spec: "CheckpointSpec | None") -> dict[str, Any] | None:
        """Restore from a matching checkpoint; returns its ``counters`` or ``None``."""
        loaded = load_checkpoint(spec.path, spec.fingerprint) if spec else None
        if not loaded:
            return None
        tensors, state = loaded
        device = next(self.model.parameters()).device
        self.model.load_state_dict(unprefixed("model", tensors))
        optimizer_from_tensors(self.optimizer, tensors, state["optimizer"])
        self.stopper.load_state_dict(state["stopper"])
        best = unprefixed("best", tensors)
        self.stopper.best_state = {k: v.to(device) for k, v in best.items()} or None
        self.history = state["history"]
        self.extra_tensors = {k: tensors[k] for k in state["extra"]}
        return state["counters"]
