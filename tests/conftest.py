"""Shared fixtures.  All tests are offline: set HF_HUB_OFFLINE so nothing reaches the hub."""

import os
import random
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
TEST_SEED = int(os.environ.get("NEWLLM_TEST_SEED", "0"))
"""The seed every test starts from (0; set NEWLLM_TEST_SEED to see whether a test passes
only by its draw)."""


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def e2e(repo, tmp_path_factory):
    """Run the whole DAG on config/test.yaml once per session (real chat data, tiny sizes):
    tests/test_workflow.py checks its outputs, tests/test_slurm.py compares a SLURM run with it."""
    workdir = tmp_path_factory.mktemp("e2e")
    args = ["--cores", "2", "--configfile", "config/test.yaml", "--directory", str(workdir)]
    result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=repo, capture_output=True, text=True, timeout=2400)
    assert result.returncode == 0, f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return workdir, workdir / "results" / "test"


def seed_of(item: pytest.Item) -> int:
    """The seed of one test: TEST_SEED, or under pytest-randomly (``-p randomly
    --randomly-seed=N``) N + crc32(nodeid), the value that plugin seeds ``random`` and numpy
    with while the test runs, so torch follows the same seed."""
    randomly = getattr(item.config.option, "randomly_seed", None)
    if isinstance(randomly, int):
        return (randomly + zlib.crc32(item.nodeid.encode())) % 2**32
    return TEST_SEED


@pytest.fixture(autouse=True)
def _seed_and_threads(request):
    """Every test starts from a fixed state of torch's, numpy's legacy global and
    ``random``'s RNGs, whichever tests ran before it and in which order; torch runs on
    one thread."""
    seed = seed_of(request.node)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    yield
