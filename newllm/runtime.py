"""Run-time helpers at the edges: device choice, seeding, provenance, logging, safetensors."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from newllm.io import atomic_path

ACCELERATORS = ("cuda", "mps")
"""Accelerator types ``device: auto`` uses (via ``torch.accelerator``); others are untested."""
CUBLAS_WORKSPACE = ":4096:8"
"""``CUBLAS_WORKSPACE_CONFIG`` that makes cuBLAS matrix products deterministic (CUDA docs)."""
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""Compute precisions of config ``precision`` (besides ``auto``) and their matmul dtype."""
CODE_PATHS = ("Snakefile", "rules/", "workflow_scripts/", "newllm/", "config/", "envs/")
"""Project paths whose untracked files make a checkout count as dirty."""


def resolve_device(name: str) -> torch.device:
    """The compute device of a job.

    ``auto`` -> the current ``torch.accelerator`` when it is CUDA or Apple ``mps``, else
    the CPU; ``cpu``; ``cuda`` / ``cuda:N``; ``mps``.  On ``mps``, operations that torch
    has no MPS kernel for fail unless ``PYTORCH_ENABLE_MPS_FALLBACK=1`` runs them on the CPU.

    Raises:
        RuntimeError: CUDA or MPS requested but not available on this machine.
        ValueError: a name that is none of those.
    """
    if name == "auto":
        if torch.accelerator.is_available():
            accelerator = torch.accelerator.current_accelerator()
            if accelerator is not None and accelerator.type in ACCELERATORS:
                return torch.device(accelerator.type)
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available here; use 'auto' or 'cpu'")
        return torch.device(name)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise RuntimeError("device 'mps' requested but Apple MPS is not available here; use 'auto' or 'cpu'")
        return torch.device("mps")
    raise ValueError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N, mps")


def resolve_precision(name: str, device: torch.device, embed_dim: int | None = None) -> str:
    """The compute precision of a job: ``fp32`` or ``bf16``.

    ``auto`` -> what measures fastest on ``device`` at equal results: ``bf16`` on CUDA,
    ``fp32`` on the CPU and on ``mps`` (untested there).  On an H200 (torch 2.11) a whole
    Phase 2 step at batch 1,024 ran 2.33x / 1.41x the fp32 rate at d_e 768 / 256, with the
    first step's loss within 1.2e-5 of fp32's (benchmarks/throughput.py ``--precision``).
    On the 2-core AVX512-BF16 CPU of docs/performance.md a whole Phase 2 step in
    bf16 ran 0.52x / 0.92x / 0.93x the fp32 rate at d_e 64 / 256 / 768 although its two
    vocabulary matmuls alone ran 1.2x / 1.8x / 2.6x: the fp32 <-> bf16 passes over the
    ``[chunk, V]`` logits cost what the matmuls save (benchmarks/throughput.py
    ``--precision``).  ``embed_dim`` is accepted for a width-dependent rule and unused.

    ``bf16`` computes matrix products in bfloat16 (``torch.autocast``
    and the tied head's two vocabulary matmuls) with fp32 accumulation, log-sum-exp,
    losses, optimizer state and weights; ``fp32`` never enters an autocast region, so its
    numbers are those of a build without this option.

    Raises:
        ValueError: a name that is none of ``auto``, ``fp32``, ``bf16``.
    """
    if name == "auto":
        if device.type == "cuda":
            return "bf16"
        return "fp32"
    if name not in PRECISIONS:
        raise ValueError(f"precision {name!r} is not one of auto, {', '.join(PRECISIONS)}")
    return name


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast(device.type, dtype=torch.bfloat16)`` for ``bf16``; for ``fp32`` a
    context that does nothing (no autocast region is entered, so fp32 results stay
    bit-identical to code without it)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def _initialise_cpu_math() -> None:
    """Call torch's vectorised float math (``exp``, ``log``, ``sqrt``, ``tanh``) once, on
    one thread, before any multi-threaded use.

    Measured on the x86 MKL build of torch 2.13 with two threads: the first such call in a
    process, when it follows a matrix product and runs on several threads, gives
    last-bit differences in some elements in about one process in four (every later call
    is reproducible).  A killed and resumed Phase 2 job makes its first dev evaluation at
    a different step than the uninterrupted one, so that one call changed a reported dev
    PPL in the 9th significant digit.  One small single-threaded call first removes it.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.linspace(0.5, 2.0, 64)
    x.exp().log().sqrt().tanh()
    torch.set_num_threads(threads)


HEAP_KEEP_BYTES = 1 << 30
"""Blocks below this many bytes come from glibc's heap, and freed heap memory is kept
(:func:`keep_freed_memory`)."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h> mallopt parameters
_heap_keep_bytes: int | None = None


def keep_freed_memory(limit_bytes: int = HEAP_KEEP_BYTES) -> int | None:
    """Ask glibc's ``malloc`` to serve blocks below ``limit_bytes`` from its heap and to keep
    freed heap memory instead of handing it back to the kernel (``mallopt``
    ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``, malloc(3)).

    By default glibc maps every block above a threshold that stops growing at 32 MiB afresh
    with ``mmap`` and unmaps it when freed, so each new tensor of that size is zero-filled
    page by page again: a Phase 1 sweep at 84k tokens allocates two ``[n, d_c]`` tensors
    (21 MiB at d_c 64, 43 MiB at 128) and took ~21,000 page faults per sweep at 128.  With
    this setting a sweep took none, and a training iteration ran 1.08-1.11x (d_c 64) and
    1.13-1.21x (d_c 128) as fast on one thread with the same losses (
    README, Performance).  The cost is a resident size that does not shrink below the
    job's peak, which a training job reaches anyway.  The kernels and values are the same:
    torch aligns every CPU block to 64 bytes either way.

    Returns:
        the byte limit set (``limit_bytes``, at most ``2**31 - 1``: mallopt takes an int)
        when both settings were taken, else the one set before (``None`` if none), e.g.
        ``None`` where there is no glibc (macOS, musl; nothing changes there).
    """
    global _heap_keep_bytes
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    value = min(int(limit_bytes), 2**31 - 1)
    if mallopt(_M_MMAP_THRESHOLD, value) and mallopt(_M_TRIM_THRESHOLD, value):
        _heap_keep_bytes = value
    return _heap_keep_bytes


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed torch's RNGs (CPU and every accelerator), fix the thread count and ask for
    deterministic kernels; freed memory stays in the heap (:func:`keep_freed_memory`).

    On the CPU the same config, seed, thread count and machine give bit-identical
    results.  On CUDA, cuBLAS gets a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``, set
    here before the first CUDA matrix product unless the user set it), cuDNN autotuning
    is off, and torch uses deterministic algorithms where it has them; an operation
    without one warns rather than stopping the run (``warn_only``), so GPU reruns are
    usually but not guaranteed bit-identical (README, "Reproducibility").
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.manual_seed(seed)
    keep_freed_memory()
    _initialise_cpu_math()
    if threads:
        torch.set_num_threads(int(threads))
    torch.backends.cudnn.benchmark = False
    use_deterministic_algorithms()


def use_deterministic_algorithms() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without importing
    TorchInductor when nothing compiles.

    The public call imports ``torch._inductor.config`` only to set its ``deterministic``
    flag, which no eager kernel reads; that import takes 2–3 s on a slow CPU, paid by every
    job.  When the inductor is not loaded, the same process-wide switch is set through
    ``torch._C`` directly (what the public call does after its import); when it is loaded
    (something compiled), or the private setter is missing in this torch, the public call
    runs.  Either way ``torch.are_deterministic_algorithms_enabled()`` is then true and
    ``torch.is_deterministic_algorithms_warn_only_enabled()`` true (tested).
    """
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)


def git_state(root: str | Path | None = None) -> dict[str, Any]:
    """Git revision of the project checkout that holds this ``newllm`` package.

    ``git -C <root>`` runs in the project folder, not in the job's working directory, so
    a run under ``snakemake --directory`` still records the project's revision.

    Args:
        root: project folder; default the parent of the ``newllm`` package.

    Returns:
        ``{"revision": sha or None, "dirty": bool or None}``: ``None`` when git is
        missing or the package is not tracked in a checkout there (an installed copy).
        ``dirty`` is true when a tracked file differs from the revision or an untracked
        file lies in the workflow's code (:data:`CODE_PATHS`).
    """
    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True).stdout

    try:
        git("ls-files", "--error-unmatch", "newllm/__init__.py")
        revision = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain=v1", "--untracked-files=all").splitlines()
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    dirty = any(not line.startswith("??") or line[3:].startswith(CODE_PATHS) for line in status if line.strip())
    return {"revision": revision, "dirty": dirty}


def provenance(device: torch.device) -> dict[str, Any]:
    """Package versions, device, Python and the project's git revision (:func:`git_state`),
    stored next to each run's metrics."""
    versions = {}
    for pkg in ("newllm", "torch", "transformers", "datasets", "numpy", "scipy", "gensim", "snakemake"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    git = git_state()
    info = {
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "malloc_heap_keep_bytes": _heap_keep_bytes,
        "git_revision": git["revision"],
        "git_dirty": git["dirty"],
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
