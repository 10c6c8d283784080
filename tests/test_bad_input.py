"""Bad input gets a clear error naming the problem (issue: fault tolerance)."""

import copy

import numpy as np
import pytest
import torch
import yaml

from newllm.config import ConfigError, check_config, load_schema
from newllm.data import DataError, check_disjoint
from newllm.pipeline import load_context_cache
from newllm.runtime import resolve_device


def test_a_held_out_set_overlapping_training_is_refused():
    check_disjoint(["a", "b"], ["c"])
    with pytest.raises(DataError, match=r"training set samples2 shares 1 samples with the test set \(e.g. \['b'\]\)"):
        check_disjoint(["a", "b"], ["b", "c"], "training set samples2", "the test set")


def test_truncated_context_cache_is_named(tmp_path):
    path = tmp_path / "train.npy"
    np.save(path, np.zeros((100, 1, 8), dtype=np.float32))
    assert load_context_cache(path, torch.device("cpu")).shape == (100, 1, 8)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="train.npy is unreadable or truncated"):
        load_context_cache(path, torch.device("cpu"))
    np.save(path, np.zeros((10, 8), dtype=np.float64))
    with pytest.raises(DataError, match="expected \\[n, L, d_c\\] float32"):
        load_context_cache(path, torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda():
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(RuntimeError, match="'cuda' requested but CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="'tpu' is not one of"):
        resolve_device("tpu")


def test_empty_or_too_small_corpus(repo, tmp_path):
    schema = load_schema(repo / "config" / "schema.yaml")
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = copy.deepcopy(config)
    cfg["corpus"] = {"name": "empty", "source": "local", "path": str(empty)}
    with pytest.raises(ConfigError, match="leaves 0 samples"):
        check_config(cfg, schema)
    small = tmp_path / "small.jsonl"
    small.write_text(
        "".join('{"prompt_id": "%d", "messages": [{"role": "user", "content": "hi %d"}]}\n' % (i, i) for i in range(60))
    )
    cfg["corpus"] = {"name": "small", "source": "local", "path": str(small)}
    cfg["validation"] = {**cfg["validation"], "dev_samples": 10, "test_samples": 20, "embedding_samples": 10}
    with pytest.raises(
        ConfigError,
        match=r"sample_sizes \[40, 80, 160\] exceed the training pool.*leaves 20 samples.*after 40 held-out.*allowed: 1\.\.20",
    ):
        check_config(cfg, schema)
