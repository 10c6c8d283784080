"""File helpers: atomic writes, hashing, JSON.  No torch import (used at DAG time).

Every output of the pipeline is written to a temporary file in the destination folder
and then renamed over the target (``os.replace`` is atomic on POSIX), so a killed job
never leaves a truncated file that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    ``suffix`` keeps a file extension some writers insist on (e.g. ``.npy``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs follow the umask
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically.  NaN/Inf are refused (``ValueError``)."""
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, allow_nan=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a ``.npy`` file atomically (memory-mappable with ``np.load(mmap_mode='r')``)."""
    with atomic_path(path, ".npy") as tmp:
        np.save(tmp, array, allow_pickle=False)


def write_csv(path: str | os.PathLike, frame: Any) -> None:
    """Write a ``pandas.DataFrame`` as CSV (no index), atomically."""
    with atomic_path(path, ".csv") as tmp:
        frame.to_csv(tmp, index=False)


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file (``hashlib.file_digest``, read in chunks)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
