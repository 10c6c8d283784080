"""The model catalogue and run identity (newllm.study), the training seeds' data, and the
reset / truncated-history context caches."""

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from newllm import study
from newllm.context_cache import solve_cache, truncated_history_cache
from newllm.data import DataError, sample_ends, stream_subset, token_stream, training_order
from newllm.model import ModelConfig, TokenInput, build_blocks
from newllm.study import ModelEntry, RunId


def test_run_id_round_trips_through_its_folder():
    run = RunId("reset_context", "tok2", 40, 64, 2)
    assert run.folder == "runs/reset_context/tok2/samples40_ctx64_seed2"
    assert run.label == "reset_context/tok2/samples40_ctx64_seed2"
    assert RunId.parse(f"results/s/{run.folder}/phase2/metrics.json") == run
    assert RunId.parse(f"results/s/{run.folder}") == run
    assert run.with_model("cvfp") == RunId("cvfp", "tok2", 40, 64, 2)
    with pytest.raises(ValueError, match="not inside a run directory"):
        RunId.parse("results/s/runs/cvfp/base/samples40_ctx64_seed2x/metrics.json")


def test_catalogue_entries_are_checked_and_unique():
    with pytest.raises(ValueError, match="family 'rnn'; allowed: context, lm, count"):
        ModelEntry("x", "rnn", "baseline", "?", "x", "#000000", "o")
    with pytest.raises(ValueError, match="context source is required"):
        ModelEntry("x", "context", "control", "?", "x", "#000000", "o")
    with pytest.raises(ValueError, match="context 'magic'; allowed"):
        ModelEntry("x", "context", "control", "?", "x", "#000000", "o", context="magic")
    with pytest.raises(ValueError, match="already registered"):
        study.register_model(study.get_model("cvfp"))
    with pytest.raises(KeyError, match="unknown model 'gpt5'; registered: cvfp"):
        study.get_model("gpt5")


def test_every_model_has_its_own_colour_and_marker():
    styles = [(e.color, e.marker) for e in study.CATALOGUE.values()]
    assert len({c for c, _ in styles}) == len(styles) and len({m for _, m in styles}) == len(styles)
    assert study.model_names(role="reference") == ("cvfp",)
    assert study.model_names(["lstm", "cvfp", "ngram"], family=("lm", "count")) == ("ngram", "lstm")


def test_study_runs_follow_the_catalogue():
    runs = study.study_runs(["ngram", "cvfp", "lstm"], ["base", "tok2"], [20, 10], [64, 32], [0, 1])
    assert runs[0] == RunId("cvfp", "base", 10, 32, 0)
    assert sum(r.model == "cvfp" for r in runs) == 2 * 2 * 2 * 2  # every variant
    assert sum(r.model == "lstm" for r in runs) == 2 * 2 * 2  # first variant only
    assert {r.context_dim for r in runs if r.model == "ngram"} == {0}
    assert {r.seed for r in runs if r.model == "ngram"} == {0, 1}  # seeds change its training data


# ------------------------------------------------------------------- training seeds' data
def _pool(sizes):
    tokens = np.arange(sum(sizes), dtype=np.uint16) % 1000 + 1
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return token_stream(tokens, offsets, range(len(sizes))), sample_ends(sizes), tokens, offsets


def test_a_seed_draws_nested_training_sets_and_seeds_differ():
    order0, order1 = training_order(50, 0), training_order(50, 1)
    assert sorted(order0) == list(range(50)) and not np.array_equal(order0, order1)
    assert np.array_equal(order0, training_order(50, 0))  # reproducible
    small, large = set(order0[:10]), set(order0[:20])
    assert small <= large  # nested within a seed
    assert set(order1[:10]) != small  # composition changes with the seed
    with pytest.raises(DataError, match="seed >= 0"):
        training_order(5, -1)


def test_stream_subset_is_the_stream_of_those_samples():
    sizes = [3, 5, 2, 4]
    stream, ends, tokens, offsets = _pool(sizes)
    sub, sub_ends = stream_subset(stream, ends, [2, 0, 3])
    assert np.array_equal(sub, token_stream(tokens, offsets, [2, 0, 3]))
    assert sub_ends == sample_ends([2, 3, 4])
    with pytest.raises(DataError, match="sample index 4 outside the stream's 4 samples"):
        stream_subset(stream, ends, [0, 4])


# ----------------------------------------------------------------- reset / truncated history
@pytest.fixture
def block_and_input():
    torch.manual_seed(3)
    embeddings = torch.randn(50, 8)
    token_input = TokenInput(embeddings, num_input_tokens=2)
    settings = {"num_layers": 2, "context_dim": 12, "num_input_tokens": 2, "ffn_layers": 1, "activation": "gelu"}
    block, _ = build_blocks(ModelConfig.from_dict(settings, 8))
    return block.eval(), token_input, torch.randint(0, 50, (37,))


def test_reset_cache_is_F_of_a_zero_context_row_by_row(block_and_input):
    block, token_input, stream = block_and_input
    cache, info = truncated_history_cache(block, token_input, stream, history=1, batch_size=7)
    positions = torch.arange(stream.shape[0])
    with torch.no_grad():
        direct = block(torch.zeros(stream.shape[0], block.context_dim), token_input(stream, positions))
    assert cache.shape == direct.shape == (37, 2, 12) and info["sweeps"] == 1
    torch.testing.assert_close(cache, direct, rtol=0, atol=1e-6)  # same arithmetic, batched differently


def test_history_k_reads_exactly_the_last_k_tokens(block_and_input):
    block, token_input, stream = block_and_input
    k, i = 4, 20
    cache, _ = truncated_history_cache(block, token_input, stream, history=k, batch_size=5)
    c = torch.zeros(1, block.context_dim)
    with torch.no_grad():  # the recurrence from a zero context at token i-k+1
        for t in range(i - k + 1, i + 1):
            out = block(c, token_input(stream, torch.tensor([t])))
            c = out[:, -1]
    torch.testing.assert_close(cache[i], out[0], rtol=0, atol=1e-5)


def test_history_longer_than_the_stream_is_the_full_cache(block_and_input):
    block, token_input, stream = block_and_input
    full, _ = solve_cache(block, token_input, stream, "sequential")
    truncated, info = truncated_history_cache(block, token_input, stream, history=1000)
    assert info["sweeps"] == stream.shape[0]
    torch.testing.assert_close(truncated, full, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="history must be >= 1"):
        truncated_history_cache(block, token_input, stream, history=0)


# --------------------------------------------------------------- one registration, one model
TOY = """
register_model(
    ModelEntry(
        name="zero_producer",
        family="context",
        role="control",
        context="zero",
        label="zero producer",
        color="#F0E442",
        marker="*",
        answers="A context producer that returns zeros, registered by a test.",
    )
)
"""


@pytest.mark.slow
def test_a_registered_model_is_planned_with_no_other_edit(repo, tmp_path):
    """A copy of the workflow whose catalogue gains one entry plans that model's Phase 2
    jobs and feeds them to the runs table, with no edit anywhere else."""
    work = tmp_path / "workflow"
    work.mkdir()
    for name in ("Snakefile", "rules", "config", "newllm", "workflow_scripts", "report", "envs", "profiles"):
        src = repo / name
        (shutil.copytree if src.is_dir() else shutil.copy)(
            src, work / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if src.is_dir() else {})
        )
    with open(work / "newllm" / "study.py", "a") as f:
        f.write(TOY)
    cfg = yaml.safe_load((repo / "config" / "test.yaml").read_text())
    cfg["models"] = ["cvfp", "zero_producer", "lstm"]
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "-p",
            "--configfile",
            str(tmp_path / "toy.yaml"),
            "--directory",
            str(tmp_path / "run"),
            f"results/{cfg['study']}/tables/runs.csv",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    planned = re.findall(r"output: (\S*runs/zero_producer/\S*/phase2/token_block\.safetensors)", out.stdout)
    assert len(planned) == len(cfg["sample_sizes"]) * len(cfg["seeds"])  # first variant only
    assert "runs/zero_producer/base/samples6_ctx16_seed0/phase2/metrics.json" in out.stdout
    assert "runs/zero_producer" not in "".join(re.findall(r"rule export_contexts:.*?\n\n", out.stdout, re.S))
