"""Shared fixtures.  All tests are offline: set HF_HUB_OFFLINE so nothing reaches the hub."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
