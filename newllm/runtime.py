"""Run-time helpers at the edges: device choice, seeding, provenance, logging, safetensors."""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from newllm.io import atomic_path


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cpu``; ``cuda`` / ``cuda:N``.

    Raises:
        RuntimeError: CUDA requested but not available on this machine.
        ValueError: a name that is none of those.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available here; use 'auto' or 'cpu'")
        return torch.device(name)
    raise ValueError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed torch's global RNG and fix the thread count (same machine ⇒ same numbers)."""
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(int(threads))
    torch.use_deterministic_algorithms(True, warn_only=True)


def provenance(device: torch.device) -> dict[str, Any]:
    """Package versions, device, Python and git revision, stored next to each run's metrics."""
    versions = {}
    for pkg in ("newllm", "torch", "transformers", "datasets", "numpy", "scipy", "gensim", "snakemake"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = None
    info = {
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "git_revision": rev,
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def get_logger(log_path: str | Path | None, name: str = "newllm") -> logging.Logger:
    """A logger writing to ``log_path`` (stderr when ``None``), one format for every rule."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers: list[logging.Handler] = [logging.FileHandler(log_path, mode="w")]
    else:
        handlers = [logging.StreamHandler(sys.stderr)]
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    logger.propagate = False
    return logger


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor], metadata_: dict[str, str] | None = None) -> None:
    """Save tensors with ``safetensors``, atomically."""
    from safetensors.torch import save_file

    with atomic_path(path, ".safetensors") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata_)


def load_weights(path: str | Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Load a ``safetensors`` file (never unpickles)."""
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device))


def progress_stream(logger: logging.Logger):
    """The log file's stream (for ``tqdm(file=...)``), so progress bars land in the rule's log."""
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.stream
    return sys.stderr
